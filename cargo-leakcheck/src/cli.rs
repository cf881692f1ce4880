//! The command line, in cargo's subcommand shape: `cargo leakcheck [OPTIONS]`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::cargo::CargoSelection;
use crate::duration::{parse_duration, parse_positive_duration};
use crate::partition::Partition;

const AFTER_HELP: &str = "\
How it works:
  Builds the tests like `cargo test --no-run` and lists every test of every
  test binary. A libtest binary's tests run in batches, one after another in
  one process (--test-threads=1), each stopped at its start and at its end (a
  seccomp user-notification probe on libtest's own writes): its open file
  descriptors, threads, child processes and temp dir are compared with what
  it started with. A test that passed with nothing left behind passes. Every other test
  (a leak, a failure, a crash, a timeout) runs again alone, in a fresh process
  stopped at exit_group, and that verdict counts: anything left behind fails
  it and is named. Processes a test leaves running are reported, then killed,
  so nothing outlives the run. --isolate runs every test alone.

Exit codes:
    0  every test passed and nothing leaked
    1  cargo-leakcheck could not do its job (a test binary it cannot list, I/O)
    2  bad usage or configuration (no Cargo.toml, unknown package, bad flag)
    4  no test was selected (the filter matched nothing, or there are no tests)
  100  some test failed, leaked or timed out
  101  the build failed
  130  interrupted by SIGINT, SIGTERM or SIGHUP (running tests were killed)

Configuration (.config/leakcheck.toml; flags win over the file):
  [profile.default]        grace, timeout, jobs, fail-fast, repeat,
                           check-heap = true (--heap) or false (--no-heap),
                           isolate = true (--isolate: one process per test),
                           kinds = { fd, thread, child, heap, file }:
                             \"fail\" (default), \"warn\" or \"off\"
                           singletons = { fd, thread, child }: \"pass\" or \"fail\"
                             (default: fd and thread \"pass\", child \"fail\")
  [profile.ci]             the same keys; unset ones fall back to profile.default
  [[allow]]                kind, target | name | cmdline | bytes/site | path, tests, max, reason (required);
                           detail (fd), waiting-in (thread); name = \"(unnamed)\" for unnamed threads

Process-wide singletons:
  What a library makes once per process and keeps (tokio's signal socket pair,
  a global thread pool, a self-pipe) is told apart from per-test leaks by
  running the tests that leak it together in one process and counting what
  each makes (a singleton is made once; a per-test leak by every test): it
  passes, and is listed once under Singletons. The only test of its binary
  leaking a shape is judged by what the package's other binaries showed.
  --fail-singletons makes it fail instead.

Files:
  Every test process gets TMPDIR pointing at a private directory of its own.
  What a test leaves in it (a kept NamedTempFile, a forgotten TempDir, a
  socket file left bound) fails the test as a `file` leak, named by its path
  under $TMPDIR; the directory is removed after the test whatever is in it.
  A file the test is seen making elsewhere (/tmp/x.db, the package dir) and
  leaves is one too, by its absolute path, and is not removed. An empty
  directory is a warning. kinds = { file = \"off\" } turns both off (the tests
  get the caller's TMPDIR).

Heap:
  Plain tests have no allocator of ours inside: LeakSanitizer's runtime (GCC's
  libasan, or clang's) is preloaded, and a test fails for memory left
  unreachable at its exit, named with its bytes and the line that allocated
  it. Memory still reachable (a cache, a static, a thread-local) is not a leak.
  Batches run with the runtime: a batch that leaks nothing vouches for its
  tests' heap; only a binary whose batch leaks (or cannot tell) has each test
  checked alone (about 15 ms more per test). With --isolate, each binary's
  tests first run together under the runtime, once, to the same end.
  On by default when a runtime is found (if none is, said once); --no-heap
  turns it off. A binary with its own #[global_allocator], static or musl, or
  already built with a sanitizer, is named once, and its tests say `not
  checked: heap`.

Environment:
  LEAKCHECK_NO_PROBE=1   same as --no-probe
  LEAKCHECK_HEAP=1       same as --heap (the check required)
  LEAKCHECK_HEAP_RUNTIME=PATH   the leak-checking runtime to preload (libasan.so)
  LEAKCHECK_PROFILE      same as --profile
  GITHUB_ACTIONS=true    also print GitHub annotations for failing tests
  NO_COLOR, CARGO_TERM_COLOR=always|never|auto   colours";

/// `cargo`'s view: `cargo leakcheck ...` runs `cargo-leakcheck leakcheck ...`.
#[derive(Debug, Parser)]
#[command(name = "cargo", bin_name = "cargo", disable_help_subcommand = true)]
pub(crate) enum CargoCli {
    /// Run the tests one per process and fail each test that leaks fds, threads or child processes.
    Leakcheck(LeakcheckArgs),
}

/// Run a crate's tests one per process and fail each test that leaks file
/// descriptors, threads or child processes.
#[derive(Debug, Args)]
#[command(version, after_help = AFTER_HELP, next_display_order = None)]
pub(crate) struct LeakcheckArgs {
    /// Run only the tests whose name contains TESTNAME (libtest's filter)
    #[arg(value_name = "TESTNAME")]
    pub(crate) filter: Option<String>,

    /// Arguments for the test binaries, after `--`: --exact, --skip PATTERN, --ignored, --include-ignored
    #[arg(last = true, value_name = "ARGS")]
    pub(crate) test_args: Vec<String>,

    /// Path to Cargo.toml
    #[arg(long, value_name = "PATH", help_heading = "Package Selection")]
    pub(crate) manifest_path: Option<PathBuf>,

    /// Package to test (repeatable)
    #[arg(short, long = "package", value_name = "SPEC", help_heading = "Package Selection")]
    pub(crate) packages: Vec<String>,

    /// Test every package of the workspace
    #[arg(long, help_heading = "Package Selection")]
    pub(crate) workspace: bool,

    /// Exclude a package from --workspace (repeatable)
    #[arg(long, value_name = "SPEC", requires = "workspace", help_heading = "Package Selection")]
    pub(crate) exclude: Vec<String>,

    /// Test only this package's library
    #[arg(long, help_heading = "Target Selection")]
    pub(crate) lib: bool,

    /// Test only the binary NAME's unit tests (repeatable)
    #[arg(long = "bin", value_name = "NAME", help_heading = "Target Selection")]
    pub(crate) bins: Vec<String>,

    /// Test all binaries' unit tests
    #[arg(long = "bins", help_heading = "Target Selection")]
    pub(crate) all_bins: bool,

    /// Test only the integration test NAME (repeatable)
    #[arg(long = "test", value_name = "NAME", help_heading = "Target Selection")]
    pub(crate) tests: Vec<String>,

    /// Test all integration tests
    #[arg(long = "tests", help_heading = "Target Selection")]
    pub(crate) all_tests: bool,

    /// Features to activate, space or comma separated (repeatable)
    #[arg(short = 'F', long, value_name = "FEATURES", help_heading = "Feature Selection")]
    pub(crate) features: Vec<String>,

    /// Activate all features
    #[arg(long, help_heading = "Feature Selection")]
    pub(crate) all_features: bool,

    /// Do not activate the `default` feature
    #[arg(long, help_heading = "Feature Selection")]
    pub(crate) no_default_features: bool,

    /// Build in release mode
    #[arg(long, help_heading = "Compilation Options")]
    pub(crate) release: bool,

    /// Build for this target triple (it must be this machine's: the tests run here)
    #[arg(long, value_name = "TRIPLE", help_heading = "Compilation Options")]
    pub(crate) target: Option<String>,

    /// Unstable (nightly-only) flags to cargo, as `cargo -Z FLAG` (repeatable)
    #[arg(short = 'Z', value_name = "FLAG", help_heading = "Compilation Options")]
    pub(crate) unstable_flags: Vec<String>,

    /// Coloring of cargo's and cargo-leakcheck's output: auto, always, never
    #[arg(long, value_name = "WHEN", value_parser = ["auto", "always", "never"], help_heading = "Reporting")]
    pub(crate) color: Option<String>,

    /// Assert that Cargo.lock will remain unchanged (passed to cargo)
    #[arg(long, help_heading = "Manifest Options")]
    pub(crate) locked: bool,

    /// Run without accessing the network (passed to cargo)
    #[arg(long, help_heading = "Manifest Options")]
    pub(crate) offline: bool,

    /// Equivalent to --locked and --offline (passed to cargo)
    #[arg(long, help_heading = "Manifest Options")]
    pub(crate) frozen: bool,

    /// Directory for all generated artifacts
    #[arg(long, value_name = "DIRECTORY", help_heading = "Compilation Options")]
    pub(crate) target_dir: Option<PathBuf>,

    /// Run every test even after one failed or leaked (default: stop starting new tests)
    #[arg(long, help_heading = "Run Options")]
    pub(crate) no_fail_fast: bool,

    /// Number of tests to run at once [default: number of CPUs]
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..), help_heading = "Run Options")]
    pub(crate) jobs: Option<u16>,

    /// Kill a test (and every process it started) after this long: 90s, 500ms, 2m [default: 120s]
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, help_heading = "Run Options")]
    pub(crate) timeout: Option<Duration>,

    /// How long a leak may take to go away by itself before it counts (a thread
    /// already exiting, a child being reaped). Clean tests never wait for it [default: 200ms]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Run Options")]
    pub(crate) grace: Option<Duration>,

    /// Repeat mode for #[leakcheck::test] and leakcheck::main!() tests: a
    /// warm-up run, then N measured runs in the same process; a kind leaks
    /// only if it grew on every measured run (one-time initialisation passes)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Run Options")]
    pub(crate) repeat: Option<u32>,

    /// Run only shard K of N: `hash:K/N` (by a hash of the test's name: stable
    /// as tests are added) or `slice:K/N` (every Nth test in list order; also `count:K/N`, as in nextest)
    #[arg(long, value_name = "PARTITION", value_parser = Partition::parse, help_heading = "Run Options")]
    pub(crate) partition: Option<Partition>,

    /// Print the tests this run would take (after filters and --partition), and run none
    #[arg(long, help_heading = "Run Options")]
    pub(crate) list: bool,

    /// cargo-leakcheck's configuration file [default: .config/leakcheck.toml in the workspace root, if present]
    #[arg(long, value_name = "PATH", help_heading = "Configuration")]
    pub(crate) config_file: Option<PathBuf>,

    /// Override a cargo configuration value, KEY=VALUE or a cargo config file (passed to cargo, repeatable)
    #[arg(long = "config", value_name = "KEY=VALUE|PATH", help_heading = "Configuration")]
    pub(crate) cargo_config: Vec<String>,

    /// Profile of the configuration file to use (`default`, `ci`, or one of yours)
    #[arg(
        long,
        value_name = "NAME",
        env = "LEAKCHECK_PROFILE",
        default_value = "default",
        help_heading = "Configuration"
    )]
    pub(crate) profile: String,

    /// Fail only on leaks that are not in this baseline file; report the entries that no longer leak
    #[arg(long, value_name = "PATH", conflicts_with = "write_baseline", help_heading = "Configuration")]
    pub(crate) baseline: Option<PathBuf>,

    /// Write every leak of this run to a baseline file (leaks then do not fail the run)
    #[arg(long, value_name = "PATH", help_heading = "Configuration")]
    pub(crate) write_baseline: Option<PathBuf>,

    /// Do not re-run a leaking #[leakcheck::test] or leakcheck::main!() test to find where its leaks were created
    #[arg(long, help_heading = "Run Options")]
    pub(crate) no_explain: bool,

    /// One fresh process per test, no batches (profile key `isolate = true`):
    /// for suites whose tests cannot share a process. By default a libtest
    /// binary's tests run in batches, each judged at its own start and end,
    /// and only a test that is not a clean pass there runs alone
    #[arg(long, help_heading = "Run Options")]
    pub(crate) isolate: bool,

    /// Batches even where the configuration says `isolate = true`
    #[arg(long, conflicts_with = "isolate", help_heading = "Run Options")]
    pub(crate) batch: bool,

    /// leakcheck::main!() targets: fork a fresh process for every test (by default a child whose test passed clean runs the next one)
    #[arg(long, help_heading = "Run Options")]
    pub(crate) fork_per_test: bool,

    /// Do not tell process-wide singletons (tokio's signal socket pair, a
    /// global thread pool, a self-pipe) from per-test leaks: every test that
    /// touches one fails for it (each test then runs alone: only a process
    /// of its own shows every test that touches a singleton)
    #[arg(long, help_heading = "Run Options")]
    pub(crate) fail_singletons: bool,

    /// Do not use the exit probe: check only the processes a test leaves running
    #[arg(long, env = "LEAKCHECK_NO_PROBE", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue, help_heading = "Run Options")]
    pub(crate) no_probe: bool,

    /// Require the heap check (on by default when a LeakSanitizer runtime is
    /// found): an error when none is (GCC's libasan, clang's, or
    /// LEAKCHECK_HEAP_RUNTIME=PATH)
    #[arg(long, env = "LEAKCHECK_HEAP", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue, overrides_with = "no_heap", help_heading = "Run Options")]
    pub(crate) heap: bool,

    /// Do not check the heap of plain tests (overrides --heap and LEAKCHECK_HEAP)
    #[arg(long, overrides_with = "heap", help_heading = "Run Options")]
    pub(crate) no_heap: bool,

    /// Output format: human lines and tables, or one JSON report on stdout
    #[arg(long, value_name = "FMT", value_enum, default_value_t = MessageFormat::Human, help_heading = "Reporting")]
    pub(crate) message_format: MessageFormat,

    /// Write a JUnit XML report to PATH (leaks and output in each failure)
    #[arg(long, value_name = "PATH", help_heading = "Reporting")]
    pub(crate) junit: Option<PathBuf>,

    /// Also write the JSON report to PATH (atomically: a reader never sees half a file)
    #[arg(long, value_name = "PATH", help_heading = "Reporting")]
    pub(crate) report_json: Option<PathBuf>,

    /// Print the commands cargo-leakcheck runs
    #[arg(short, long, help_heading = "Reporting")]
    pub(crate) verbose: bool,
}

/// `--message-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MessageFormat {
    /// One line per test, captured output of failures, a table of leaks
    Human,
    /// The JSON report (see the README) on stdout; progress lines go to stderr
    Json,
}

impl LeakcheckArgs {
    /// The part of the command line cargo itself is given.
    pub(crate) fn cargo_selection(&self) -> CargoSelection {
        CargoSelection {
            manifest_path: self.manifest_path.clone(),
            packages: self.packages.clone(),
            workspace: self.workspace,
            exclude: self.exclude.clone(),
            lib: self.lib,
            bins: self.bins.clone(),
            all_bins: self.all_bins,
            tests: self.tests.clone(),
            all_tests: self.all_tests,
            features: self.features.clone(),
            all_features: self.all_features,
            no_default_features: self.no_default_features,
            release: self.release,
            locked: self.locked,
            offline: self.offline,
            frozen: self.frozen,
            target_dir: self.target_dir.clone(),
            target: self.target.clone(),
            cargo_config: self.cargo_config.clone(),
            unstable_flags: self.unstable_flags.clone(),
            color: self.color.clone(),
            verbose: self.verbose,
        }
    }
}

/// `cargo leakcheck wrap`: one test command under the exit probe and the
/// subreaper, for use as a nextest wrapper script.
#[derive(Debug, Parser)]
#[command(
    name = "cargo leakcheck wrap",
    bin_name = "cargo leakcheck wrap",
    about = "Run one test command under the leak checks: a wrapper script for cargo nextest",
    after_help = "In .config/nextest.toml (nextest 0.9.98 or later):

  experimental = [\"wrapper-scripts\"]

  [scripts.wrapper.leakcheck]
  command = 'cargo-leakcheck wrap --'

  [[profile.default.scripts]]
  filter = 'all()'
  run-wrapper = 'leakcheck'

The test's output is passed through; leaks are printed on stderr. Exit code:
the test's own when it failed, 100 when it passed but leaked, else 0."
)]
pub(crate) struct WrapArgs {
    /// How long a leak may take to go away by itself before it counts [default: 200ms]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) grace: Option<Duration>,

    /// Kill the test (and every process it started) after this long [default: 120s]
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub(crate) timeout: Option<Duration>,

    /// Do not use the exit probe: check only the processes the test leaves running
    #[arg(long, env = "LEAKCHECK_NO_PROBE", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub(crate) no_probe: bool,

    /// Check the heap of the test too: preload LeakSanitizer's runtime
    /// (GCC's libasan or clang's, or LEAKCHECK_HEAP_RUNTIME=PATH) into the
    /// test process and fail the test when it leaves memory unreachable.
    /// Costs about 15 ms per test here (no filter run: one test per call);
    /// an error when no runtime is found
    #[arg(long, env = "LEAKCHECK_HEAP", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub(crate) heap: bool,

    /// The test binary and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

/// `cargo leakcheck merge PATH...`: shards combined into one run's outputs.
#[derive(Debug, Parser)]
#[command(
    name = "cargo leakcheck merge",
    about = "Merge the reports of several runs (shards) into the outputs and exit code of one run",
    after_help = "PATH is a JSON report (--report-json, or --message-format json's stdout) or a
records directory (LEAKCHECK_RECORDS_DIR=DIR, written by cargo leakcheck, its
nextest wrapper and #[leakcheck::test] under any runner). Inputs are checked:
a file that does not parse, a report whose summary disagrees with its tests, a
record half written, an empty directory, or a test recorded twice is an error
(exit 2), never a pass.

Exit code: 0 when every test passed, 100 when one failed, leaked, timed out
or was not run, 2 for unreadable or inconsistent inputs."
)]
pub(crate) struct MergeArgs {
    /// Output format: human lines and tables, or one JSON report on stdout
    #[arg(long, value_name = "FMT", value_enum, default_value_t = MessageFormat::Human)]
    pub(crate) message_format: MessageFormat,

    /// Write a JUnit XML report to PATH
    #[arg(long, value_name = "PATH")]
    pub(crate) junit: Option<PathBuf>,

    /// Also write the merged JSON report to PATH
    #[arg(long, value_name = "PATH")]
    pub(crate) report_json: Option<PathBuf>,

    /// Fail only on leaks that are not in this baseline file
    #[arg(long, value_name = "PATH", conflicts_with = "write_baseline")]
    pub(crate) baseline: Option<PathBuf>,

    /// Write every leak of the merged run to a baseline file at PATH
    #[arg(long, value_name = "PATH")]
    pub(crate) write_baseline: Option<PathBuf>,

    /// JSON reports and records directories
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,
}

/// What was asked.
#[derive(Debug)]
pub(crate) enum Invocation {
    Run(Box<LeakcheckArgs>),
    Wrap(WrapArgs),
    Merge(MergeArgs),
}

/// Parses the process arguments. Accepts both `cargo leakcheck ...` (cargo
/// passes `leakcheck` as the first argument) and `cargo-leakcheck ...`.
/// `wrap` as the first word selects the nextest wrapper, `merge` the merge
/// of shards (a test filter that is literally `wrap` or `merge` can be given
/// after `--`).
pub(crate) fn parse() -> Invocation {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_none_or(|arg| arg != "leakcheck") {
        args.insert(1, "leakcheck".into());
    }
    if args.get(2).is_some_and(|arg| arg == "wrap") {
        let rest = args.split_off(3);
        return Invocation::Wrap(WrapArgs::parse_from(std::iter::once("cargo leakcheck wrap".into()).chain(rest)));
    }
    if args.get(2).is_some_and(|arg| arg == "merge") {
        let rest = args.split_off(3);
        return Invocation::Merge(MergeArgs::parse_from(std::iter::once("cargo leakcheck merge".into()).chain(rest)));
    }
    let CargoCli::Leakcheck(args) = CargoCli::parse_from(args);
    Invocation::Run(Box::new(args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        CargoCli::command().debug_assert();
    }
}
