//! `cargo leakcheck wrap -- <test binary> <args>`: one test command under
//! the exit probe and the subreaper, as a nextest wrapper script. Output is
//! passed through after the test ends; leaks are printed on stderr.

use std::io::Write;
use std::sync::Arc;

use leakcheck::Outcome;

use crate::cargo::TestBinary;
use crate::cli::WrapArgs;
use crate::errors::{exit_code, RunError};
use crate::list::TestCase;
use crate::plan::{DEFAULT_GRACE, DEFAULT_TIMEOUT};
use crate::policy::Policy;
use crate::report;
use crate::run::{run_test, ExitFilter, RunContext, Settle, Supervisor, Waker};

pub(crate) fn wrap(args: &WrapArgs, supervisor: &'static Supervisor) -> Result<u8, RunError> {
    let program = std::path::PathBuf::from(&args.command[0]);
    let name = args.command[1..].iter().find(|arg| !arg.starts_with('-')).cloned().unwrap_or_default();
    // nextest names the binary as we do (`leaky::leaks`); its file name alone
    // loses the package.
    let id = leakcheck::records_dir::binary_id(&program);
    let binary = TestBinary {
        id,
        executable: program,
        cwd: std::env::current_dir()
            .map_err(|source| RunError::Setup { what: "read the working directory", source })?,
        env: Vec::new(),
        harness: false,
        // nextest runs what it listed with libtest's arguments.
        libtest: true,
        std_harness: true,
    };
    let case = TestCase { binary: Arc::new(binary), name, ignored: false, serial: 0 };
    // Private (0700, random name, created exclusively), removed on drop.
    let scratch = tempfile::Builder::new()
        .prefix("cargo-leakcheck-wrap-")
        .tempdir()
        .map_err(|source| RunError::Setup { what: "create its scratch directory", source })?;
    crate::guardian::remove_if_we_die(scratch.path());
    let heap = match args.heap {
        true => {
            let runtime =
                crate::heap::runtime::find().map_err(|reason| RunError::UsageMessage(format!("--heap: {reason}")))?;
            let checked = crate::heap::HeapCheck::new(runtime, std::iter::once(case.binary.executable.as_path()));
            // One test per invocation: nothing to filter with.
            checked.check_each_test_of(&case.binary.executable);
            if let Some(reason) = checked.unsupported(&case.binary.executable) {
                eprintln!("note: heap not checked: {reason}");
            }
            Some(checked)
        }
        false => None,
    };
    let context = RunContext {
        supervisor,
        filter: (!args.no_probe).then(ExitFilter::new),
        grace: args.grace.unwrap_or(DEFAULT_GRACE),
        timeout: args.timeout.unwrap_or(DEFAULT_TIMEOUT),
        test_args: Vec::new(),
        probe_refused: Default::default(),
        scratch: scratch.path().to_owned(),
        policy: Policy::default(),
        repeat: None,
        explain: true,
        isolate: true,
        fork_per_test: false,
        // One test per invocation: nothing to compare it with.
        detect_singletons: [false; 3],
        verbose: false,
        heap,
        heap_missing: false,
        lasting: Default::default(),
    };
    supervisor.begin_test_phase().map_err(|source| RunError::Setup { what: "become a child subreaper", source })?;
    let waker = Waker::new().map_err(|source| RunError::Setup { what: "create a pipe", source })?;
    let record = run_test(&context, &waker, &case, &args.command[1..], Settle::Full)
        .map(|judged| judged.map(|(record, _)| record));
    for stray in supervisor.end_test_phase() {
        eprintln!("warning: killed `{}` (pid {}): left running by the test", stray.cmdline, stray.pid);
    }
    drop(scratch);
    let record = record.map_err(|source| RunError::Setup { what: "run the test", source })?;
    let Some(record) = record else {
        return Ok(exit_code::INTERRUPTED);
    };
    if let Some(dir) = leakcheck::records_dir::records_dir() {
        leakcheck::records_dir::write(&dir, &record).map_err(|source| RunError::WriteReport { path: dir, source })?;
    }
    // The test's own output, whole when it did not pass (nextest shows it then).
    if let Some(output) = &record.output {
        let _ = std::io::stdout().write_all(output.as_bytes());
    }
    if let Some(failure) = context.heap.as_ref().and_then(|heap| heap.failure()) {
        eprintln!("warning: {failure}; the heap was not checked");
    }
    if let Some(error) = context.probe_refused.get() {
        eprintln!("warning: the exit probe is unavailable ({error}); only processes left running are checked");
    }
    if !record.leaks.is_empty() {
        anstream::eprintln!("{}", report::progress_line(&record));
    }
    Ok(match record.outcome {
        Outcome::Passed | Outcome::Ignored => exit_code::SUCCESS,
        Outcome::Leaked => exit_code::TESTS_FAILED,
        Outcome::Failed | Outcome::TimedOut => exit_status_of(&record).unwrap_or(exit_code::TESTS_FAILED),
    })
}

/// The test's own exit code when its message gives one (`exit status 101`).
fn exit_status_of(record: &leakcheck::TestRecord) -> Option<u8> {
    let message = record.message.as_deref()?;
    let digits: String = message.split("status ").nth(1)?.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|code| *code != 0)
}
