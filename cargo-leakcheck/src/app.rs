//! The stages in order: metadata, build, list, run, report. [`try_main`]
//! reads as that pipeline; each stage is a function below it or a module of
//! its own.

use leakcheck::{Outcome, Summary};

use crate::cargo::{self, TestBinary};
use crate::cli::{self, LeakcheckArgs, MessageFormat};
use crate::errors::{exit_code, RunError};
use crate::heap::HeapCheck;
use crate::list::{self, Selection, TestCase};
use crate::plan::{self, HeapMode, Plan};
use crate::report::{self, print_stdout, Finished, Outputs};
use crate::run::{self, ExitFilter, RunContext, RunResult, Supervisor};

/// Runs the command and returns the exit code; errors are printed once, here.
pub(crate) fn main() -> u8 {
    // Before any thread exists, so that every thread inherits the mask.
    if let Err(error) = run::block_signals() {
        eprintln!("error: cargo-leakcheck could not block signals: {error}");
        return exit_code::TOOL_ERROR;
    }
    let args = cli::parse();
    let color = match &args {
        cli::Invocation::Run(args) => args.color.clone(),
        _ => None,
    };
    match color.or_else(|| std::env::var("CARGO_TERM_COLOR").ok()).as_deref() {
        Some("always") => anstream::ColorChoice::Always.write_global(),
        Some("never") => anstream::ColorChoice::Never.write_global(),
        _ => {}
    }
    // Still single-threaded: the guardian is forked before any thread starts.
    let guarded = !matches!(args, cli::Invocation::Merge(_));
    if let Some(Err(error)) = guarded.then(crate::guardian::start) {
        eprintln!(
            "warning: cargo-leakcheck could not start its guardian ({error}): if it is killed, its tests live on"
        );
    }
    if let Err(error) = run::stop_fd_inheritance() {
        eprintln!("warning: could not mark inherited fds close-on-exec ({error}); tests may see them as leaks");
    }
    let supervisor = Supervisor::start();
    if let Some(guardian) = crate::guardian::pid() {
        supervisor.spare(guardian);
    }
    let result = match &args {
        cli::Invocation::Run(args) => try_main(args, supervisor),
        cli::Invocation::Wrap(args) => crate::wrap::wrap(args, supervisor),
        cli::Invocation::Merge(args) => crate::merge::merge(args),
    };
    if std::env::var_os("LEAKCHECK_REPORT_OWN_USAGE").is_some() {
        report_own_usage();
    }
    match result {
        Ok(code) => code,
        Err(error) => {
            let mut message = format!("error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!("\n  caused by: {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            error.exit_code()
        }
    }
}

/// The pipeline: ask cargo, build, list, run, report.
fn try_main(args: &LeakcheckArgs, supervisor: &'static Supervisor) -> Result<u8, RunError> {
    let build = args.cargo_selection();
    let metadata = cargo::metadata(&build)?;
    cargo::check_packages(&build, &metadata)?;
    cargo::check_targets(&build, &metadata)?;
    cargo::check_target(&build)?;
    let plan = plan::make(args, metadata.workspace_root.as_std_path())?;
    let binaries = cargo::build_tests(&build, &metadata, supervisor)?;
    let selection = Selection::new(args.filter.as_deref(), &args.test_args);
    let cases = select_tests(args, binaries, &selection)?;
    if args.list {
        print_listing(&cases);
        return Ok(exit_code::SUCCESS);
    }
    // Private (0700, random name, created exclusively), removed on drop.
    let scratch = tempfile::Builder::new()
        .prefix("cargo-leakcheck-")
        .tempdir()
        .map_err(|source| RunError::Setup { what: "create its scratch directory", source })?;
    crate::guardian::remove_if_we_die(scratch.path());
    let (heap, heap_missing) = match heap_check(plan.heap, &cases)? {
        Ok(heap) => (heap, None),
        Err(reason) => (None, Some(reason)),
    };
    let mut context_and_settings = run_context(args, plan, heap, &selection, supervisor, scratch.path());
    context_and_settings.0.heap_missing = heap_missing.is_some();
    let (context, settings) = context_and_settings;
    supervisor.begin_test_phase().map_err(|source| RunError::Setup { what: "become a child subreaper", source })?;
    announce(args, &settings, &cases);
    announce_heap(context.heap.as_ref(), heap_missing.as_deref(), &cases);
    let (result, record_error) = run_tests(args, &context, &cases, &selection, &settings);
    report_strays(supervisor);
    let interrupted = supervisor.interrupted();
    let summary = Summary::from_records(&result.records, result.not_run, result.duration_ms, interrupted.is_some());
    let finished =
        Finished { records: &result.records, summary, duration_ms: result.duration_ms, policy: &context.policy };
    outputs(args).write(finished)?;
    // A record missing from the directory would be a test missing from the
    // merged gate: the run fails instead.
    if let Some((dir, source)) = record_error {
        return Err(RunError::WriteReport { path: dir, source });
    }
    if let Some(signal) = interrupted {
        eprintln!("error: interrupted by {signal}; running tests and their processes were killed");
        return Ok(exit_code::INTERRUPTED);
    }
    Ok(if run_failed(args, &result) { exit_code::TESTS_FAILED } else { exit_code::SUCCESS })
}

/// Lists the built binaries' tests, applies the filters and the partition.
fn select_tests(
    args: &LeakcheckArgs,
    binaries: Vec<TestBinary>,
    selection: &Selection,
) -> Result<Vec<TestCase>, RunError> {
    let mut cases = list::list_tests(binaries, selection, args.verbose)?;
    if cases.is_empty() {
        return Err(match selection.describe_filter() {
            Some(filter) => RunError::NothingMatched { filter },
            None => RunError::NoTests,
        });
    }
    if let Some(partition) = args.partition {
        cases = partition.select(cases, |case| format!("{} {}", case.binary.id, case.name));
    }
    Ok(cases)
}

/// `--list`: one line per selected test.
fn print_listing(cases: &[TestCase]) {
    let listing: String = cases
        .iter()
        .map(|case| format!("{} {}{}\n", case.binary.id, case.name, if case.ignored { " (ignored)" } else { "" }))
        .collect();
    print_stdout(&listing);
}

/// What the scheduler needs beyond the context.
#[derive(Debug)]
struct Settings {
    jobs: usize,
    fail_fast: bool,
    repeat: Option<u32>,
    config: Option<std::path::PathBuf>,
}

/// With `--heap`: the runtime, and which selected binaries it cannot check.
/// Binaries of `leakcheck::main!()` check their heap themselves.
/// `Err(reason)` inside `Ok`: the default check found no runtime (said
/// once; the tests are `not checked: heap`).
fn heap_check(mode: HeapMode, cases: &[TestCase]) -> Result<Result<Option<HeapCheck>, String>, RunError> {
    if mode == HeapMode::Off || cases.iter().all(|case| case.binary.harness) {
        return Ok(Ok(None));
    }
    // A runtime named in the environment, or the check asked for, must be there.
    let named = std::env::var_os(crate::heap::runtime::RUNTIME_ENV).is_some_and(|value| !value.is_empty());
    let runtime = match crate::heap::runtime::find() {
        Ok(runtime) => runtime,
        Err(reason) if mode == HeapMode::Required || named => {
            return Err(RunError::UsageMessage(format!("the heap check: {reason}")))
        }
        Err(reason) => return Ok(Err(reason)),
    };
    let executables = cases.iter().filter(|case| !case.binary.harness).map(|case| case.binary.executable.as_path());
    Ok(Ok(Some(HeapCheck::new(runtime, executables))))
}

/// The plan, turned into what every test run reads.
fn run_context(
    args: &LeakcheckArgs,
    plan: Plan,
    heap: Option<HeapCheck>,
    selection: &Selection,
    supervisor: &'static Supervisor,
    scratch: &std::path::Path,
) -> (RunContext, Settings) {
    let Plan { grace, timeout, jobs, fail_fast, isolate, repeat, policy, detect_singletons, config, heap: _ } = plan;
    let context = RunContext {
        supervisor,
        filter: (!args.no_probe).then(ExitFilter::new),
        grace,
        timeout,
        test_args: selection.ignored_mode.iter().cloned().collect(),
        probe_refused: Default::default(),
        scratch: scratch.to_owned(),
        policy,
        repeat,
        explain: !args.no_explain,
        isolate,
        fork_per_test: args.fork_per_test,
        verbose: args.verbose,
        detect_singletons,
        heap,
        heap_missing: false,
        lasting: Default::default(),
    };
    (context, Settings { jobs, fail_fast, repeat, config })
}

/// The notes and the "Starting" line before the first test.
fn announce(args: &LeakcheckArgs, settings: &Settings, cases: &[TestCase]) {
    if args.no_probe {
        eprintln!(
            "warning: the exit probe is off (--no-probe): only processes left running are checked, not fds or threads"
        );
    }
    if let Some(runs) = settings.repeat {
        eprintln!(
            "        Note --repeat {runs} applies to #[leakcheck::test] and leakcheck::main!() tests; \
             other tests run once (there is no code of ours in them to repeat them)"
        );
    }
    if let Some(config) = &settings.config {
        eprintln!("      Config {} (profile {})", config.display(), args.profile);
    }
    let runnable = cases.iter().filter(|case| !case.ignored).count();
    let binaries = binary_count(cases);
    eprintln!(
        "    Starting {runnable} {} across {binaries} {} ({} ignored), {} at a time",
        plural(runnable, "test", "tests"),
        plural(binaries, "binary", "binaries"),
        cases.len() - runnable,
        settings.jobs
    );
}

/// Says once that the heap is checked, by which runtime, and once per
/// binary it cannot check, why (its tests then say `not checked: heap`).
fn announce_heap(heap: Option<&HeapCheck>, missing: Option<&str>, cases: &[TestCase]) {
    if let Some(reason) = missing {
        eprintln!("        Note heap of plain tests not checked: {reason}");
    }
    let Some(heap) = heap else { return };
    eprintln!("        Heap checked by LeakSanitizer ({})", heap.runtime().display());
    for (executable, reason) in heap.unsupported_binaries() {
        let id = cases.iter().find(|case| case.binary.executable == executable).map(|case| case.binary.id.as_str());
        eprintln!("        Note heap not checked in {}: {reason}", id.unwrap_or(&executable.to_string_lossy()));
    }
}

/// Runs every test, printing a progress line as each one ends and, with
/// `LEAKCHECK_RECORDS_DIR`, writing its record there (with the first error
/// writing one, if any).
fn run_tests(
    args: &LeakcheckArgs,
    context: &RunContext,
    cases: &[TestCase],
    selection: &Selection,
    settings: &Settings,
) -> (RunResult, Option<(std::path::PathBuf, std::io::Error)>) {
    let progress = report::Progress::start(cases.len(), args.message_format == MessageFormat::Human);
    let mut warned = false;
    let mut heap_warned = false;
    let records_dir = leakcheck::records_dir::records_dir();
    let mut record_error = None;
    let result = run::run_all(context, cases, &selection.list_args, settings.jobs, settings.fail_fast, |record| {
        if let (Some(error), false) = (context.probe_refused.get(), warned) {
            warned = true;
            progress.suspend(|| {
                eprintln!(
                    "warning: the exit probe is unavailable ({error}); only processes left running are checked, not fds or threads"
                )
            });
        }
        if let (Some(failure), false) = (context.heap.as_ref().and_then(|heap| heap.failure()), heap_warned) {
            heap_warned = true;
            progress.suspend(|| eprintln!("warning: {failure}; such tests are `not checked: heap`"));
        }
        if let (Some(dir), None) = (&records_dir, &record_error) {
            record_error = leakcheck::records_dir::write(dir, record).err().map(|error| (dir.clone(), error));
        }
        let line = report::progress_line(record);
        progress.suspend(|| match args.message_format {
            MessageFormat::Human => print_stdout(&format!("{line}\n")),
            MessageFormat::Json => anstream::eprintln!("{line}"),
        });
        progress.advance();
    });
    progress.finish();
    (result, record_error)
}

/// Processes left by some test that could not be told which one: killed.
fn report_strays(supervisor: &Supervisor) {
    for stray in supervisor.end_test_phase() {
        eprintln!(
            "warning: killed `{}` (pid {}): a process left by some test that could not be told which one",
            stray.cmdline, stray.pid
        );
    }
}

fn outputs(args: &LeakcheckArgs) -> Outputs {
    Outputs {
        json_on_stdout: args.message_format == MessageFormat::Json,
        report_json: args.report_json.clone(),
        junit: args.junit.clone(),
        write_baseline: args.write_baseline.clone(),
        github_annotations: std::env::var("GITHUB_ACTIONS").is_ok_and(|value| value == "true"),
    }
}

/// Whether the run ends with [`exit_code::TESTS_FAILED`].
fn run_failed(args: &LeakcheckArgs, result: &RunResult) -> bool {
    result.records.iter().any(|record| match record.outcome {
        // A run that writes a baseline accepts today's leaks.
        Outcome::Leaked => args.write_baseline.is_none(),
        outcome => outcome.is_failure(),
    })
}

fn binary_count(cases: &[TestCase]) -> usize {
    let mut ids: Vec<&str> = cases.iter().map(|case| case.binary.id.as_str()).collect();
    ids.dedup();
    ids.len()
}

fn plural<'a>(count: usize, one: &'a str, many: &'a str) -> &'a str {
    if count == 1 {
        one
    } else {
        many
    }
}

/// For the benchmark script: this process's own peak memory and CPU time
/// (a rusage of the tree would include cargo and the tests).
fn report_own_usage() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status.lines().find_map(|line| line.strip_prefix("VmHWM:")).unwrap_or("?").trim().to_owned();
    // SAFETY: getrusage writes into a zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    eprintln!(
        "cargo-leakcheck peak RSS: {peak}; own CPU time: {:.3} s",
        seconds(usage.ru_utime) + seconds(usage.ru_stime)
    );
}
