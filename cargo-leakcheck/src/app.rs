//! The stages in order: metadata, build, list, run, report.

use std::io::Write;

use leakcheck::Summary;

use crate::cli::{self, LeakcheckArgs, MessageFormat};
use crate::errors::{exit_code, RunError};
use crate::list::{self, Selection};
use crate::plan::{self, Plan};
use crate::run::{self, ExitFilter, RunContext, Supervisor};
use crate::{baseline, cargo, report};

/// Runs the command and returns the exit code; errors are printed once, here.
pub(crate) fn main() -> u8 {
    // Before any thread exists, so that every thread inherits the mask.
    if let Err(error) = run::block_signals() {
        eprintln!("error: cargo-leakcheck could not block signals: {error}");
        return exit_code::TOOL_ERROR;
    }
    let args = cli::parse();
    match std::env::var("CARGO_TERM_COLOR").as_deref() {
        Ok("always") => anstream::ColorChoice::Always.write_global(),
        Ok("never") => anstream::ColorChoice::Never.write_global(),
        _ => {}
    }
    if let Err(error) = run::stop_fd_inheritance() {
        eprintln!("warning: could not mark inherited fds close-on-exec ({error}); tests may see them as leaks");
    }
    let supervisor = Supervisor::start();
    let result = match &args {
        cli::Invocation::Run(args) => try_main(args, supervisor),
        cli::Invocation::Wrap(args) => crate::wrap::wrap(args, supervisor),
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

fn try_main(args: &LeakcheckArgs, supervisor: &'static Supervisor) -> Result<u8, RunError> {
    let metadata = cargo::metadata(args)?;
    cargo::check_packages(args, &metadata)?;
    let plan = plan::make(args, metadata.workspace_root.as_std_path())?;
    let binaries = cargo::build_tests(args, &metadata, supervisor)?;
    let selection = Selection::new(args.filter.as_deref(), &args.test_args);
    let mut cases = list::list_tests(binaries, &selection, args.verbose)?;
    if cases.is_empty() {
        return Err(match selection.describe_filter() {
            Some(filter) => RunError::NothingMatched { filter },
            None => RunError::NoTests,
        });
    }
    if let Some(partition) = args.partition {
        cases = partition.select(cases);
    }
    if args.list {
        let listing: String = cases
            .iter()
            .map(|case| format!("{} {}{}\n", case.binary.id, case.name, if case.ignored { " (ignored)" } else { "" }))
            .collect();
        print_stdout(&listing);
        return Ok(exit_code::SUCCESS);
    }

    let filter = (!args.no_probe).then(ExitFilter::new);
    let scratch =
        Scratch::create().map_err(|source| RunError::Setup { what: "create its scratch directory", source })?;
    let Plan { grace, timeout, jobs, fail_fast, repeat, policy, config } = plan;
    let context = RunContext {
        supervisor,
        filter,
        grace,
        timeout,
        test_args: selection.ignored_mode.iter().cloned().collect(),
        probe_refused: Default::default(),
        scratch: scratch.path().to_owned(),
        policy,
        repeat,
        explain: !args.no_explain,
        fork_per_test: args.fork_per_test,
    };
    supervisor.begin_test_phase().map_err(|source| RunError::Setup { what: "become a child subreaper", source })?;
    if args.no_probe {
        eprintln!(
            "warning: the exit probe is off (--no-probe): only processes left running are checked, not fds or threads"
        );
    }
    if let Some(runs) = repeat {
        eprintln!(
            "        Note --repeat {runs} applies to #[leakcheck::test] and leakcheck::main!() tests; \
             other tests run once (there is no code of ours in them to repeat them)"
        );
    }
    if let Some(config) = &config {
        eprintln!("      Config {} (profile {})", config.display(), args.profile);
    }
    let runnable = cases.iter().filter(|case| !case.ignored).count();
    let binaries = binary_count(&cases);
    eprintln!(
        "    Starting {runnable} {} across {binaries} {} ({} ignored), {jobs} at a time",
        plural(runnable, "test", "tests"),
        plural(binaries, "binary", "binaries"),
        cases.len() - runnable
    );

    let progress = report::Progress::start(cases.len(), args.message_format == MessageFormat::Human);
    let mut warned = false;
    let result = run::run_all(&context, &cases, &selection.list_args, jobs, fail_fast, |record| {
        if let (Some(error), false) = (context.probe_refused.get(), warned) {
            warned = true;
            progress.suspend(|| {
                eprintln!(
                    "warning: the exit probe is unavailable ({error}); only processes left running are checked, not fds or threads"
                )
            });
        }
        let line = report::progress_line(record);
        progress.suspend(|| print_progress(args.message_format, &line));
        progress.advance();
    });
    progress.finish();

    for stray in supervisor.end_test_phase() {
        eprintln!(
            "warning: killed `{}` (pid {}): a process left by some test that could not be told which one",
            stray.cmdline, stray.pid
        );
    }
    let interrupted = supervisor.interrupted();
    let summary = Summary::from_records(&result.records, result.not_run, result.duration_ms, interrupted.is_some());
    let failed = result.records.iter().any(|record| match record.outcome {
        // A run that writes a baseline accepts today's leaks.
        leakcheck::Outcome::Leaked => args.write_baseline.is_none(),
        outcome => outcome.is_failure(),
    });
    let human = report::final_report(&result.records, &summary);
    let notes = report::policy_notes(&context.policy, &result.records);
    let json = report::json_report(result.records.clone(), summary);
    match args.message_format {
        MessageFormat::Human => print_stdout(&format!("{notes}{human}")),
        MessageFormat::Json => {
            anstream::eprint!("{notes}{human}");
            print_stdout(&format!("{json}\n"));
        }
    }
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|value| value == "true") {
        let annotations = report::annotations(&result.records);
        match args.message_format {
            MessageFormat::Human => print_stdout(&annotations),
            MessageFormat::Json => eprint!("{annotations}"),
        }
    }
    let write = |path: &std::path::PathBuf, contents: &str| {
        report::write_atomically(path, contents.as_bytes())
            .map_err(|source| RunError::WriteReport { path: path.clone(), source })
    };
    if let Some(path) = &args.report_json {
        write(path, &format!("{json}\n"))?;
    }
    if let Some(path) = &args.junit {
        write(path, &report::junit_report(&result.records, result.duration_ms))?;
    }
    if let Some(path) = &args.write_baseline {
        write(path, &baseline::render(&result.records))?;
        eprintln!("    Baseline {} written", path.display());
    }
    if let Some(signal) = interrupted {
        eprintln!("error: interrupted by {signal}; running tests and their processes were killed");
        return Ok(exit_code::INTERRUPTED);
    }
    Ok(if failed { exit_code::TESTS_FAILED } else { exit_code::SUCCESS })
}

fn binary_count(cases: &[list::TestCase]) -> usize {
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

fn print_progress(format: MessageFormat, line: &str) {
    match format {
        MessageFormat::Human => print_stdout(&format!("{line}\n")),
        MessageFormat::Json => anstream::eprintln!("{line}"),
    }
}

/// Writes to stdout (colours stripped where they do not belong); a closed
/// stdout (`| head`) is not an error worth a panic.
fn print_stdout(text: &str) {
    let mut stdout = anstream::stdout().lock();
    if stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_err() {
        // The reader went away; the exit code still tells the result.
    }
}

/// A private temporary directory, removed when the run ends.
#[derive(Debug)]
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn create() -> std::io::Result<Scratch> {
        let path = std::env::temp_dir().join(format!("cargo-leakcheck-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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
