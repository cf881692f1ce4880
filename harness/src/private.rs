//! Items the macros expand to. Not a public API: no stability promise.

use std::panic::resume_unwind;
use std::sync::Once;

pub use linkme;

/// Bytes `leakcheck::main!()` embeds in a harness binary; `cargo leakcheck`
/// looks for them to know it may run the binary whole and read its records.
pub const HARNESS_MARKER: [u8; 32] = *b"leakcheck:harness-protocol:v1:\0\0";
use crate::guard::{combine_runs, Guard};
use crate::isolation::{isolation, Isolation};
pub use crate::options::{Allow, Kind, Options};
use crate::record::{AllowedLeak, InProcessReport};
use crate::sites::Explain;

pub use crate::registry::{ShouldPanic, TestDef};

/// Every `#[leakcheck::test]` of the binary.
#[linkme::distributed_slice]
pub static TESTS: [TestDef];

/// The registration of the attribute test whose body is `body`.
fn registration(body: fn() -> Result<(), String>) -> Option<&'static TestDef> {
    TESTS.iter().find(|def| std::ptr::fn_addr_eq(def.run, body))
}

/// Entry point of `leakcheck::main!()`: the fork server over [`TESTS`].
pub fn harness_main() -> std::process::ExitCode {
    crate::fork_server::harness_main(&TESTS)
}

/// What a test function may return, as libtest accepts it.
pub trait IntoTestResult {
    /// `Err` with a message when the value means failure.
    fn into_test_result(self) -> Result<(), String>;
}

impl IntoTestResult for () {
    fn into_test_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: std::fmt::Debug> IntoTestResult for Result<(), E> {
    fn into_test_result(self) -> Result<(), String> {
        self.map_err(|error| format!("Error: {error:?}"))
    }
}

static SHARED_NOTE: Once = Once::new();

/// Runs a `#[leakcheck::test]` under the default libtest harness: checked
/// in place when the test is alone in its process; when other tests may run
/// beside it (or libtest captures its output), run again alone in a fresh
/// process and checked there (see `crate::self_isolation`).
///
/// The body runs on a fresh thread (named like the test's) that is joined
/// before the check, so the test thread's thread-locals are gone by then, as
/// they are in the harness. A failure or a leak panics, as libtest expects.
pub fn run_test(options: &Options, body: fn() -> Result<(), String>) {
    // Other tests run beside this one, or libtest captures its output (a
    // buffer that grows on the heap as it prints): run it alone in a fresh
    // process, output not captured there, and check it there.
    let started = std::time::Instant::now();
    let mode = isolation();
    if mode == Isolation::Shared || (mode == Isolation::SingleThreaded && crate::isolation::output_captured()) {
        let name = std::thread::current().name().map(str::to_owned);
        match name.as_deref().and_then(crate::self_isolation::run_alone) {
            Some(isolated) => return conclude_isolated(isolated, body, started),
            None => {
                SHARED_NOTE.call_once(|| {
                    // Straight to fd 2: libtest captures eprintln! of passing tests.
                    let _ = std::io::Write::write_all(
                        &mut std::io::stderr(),
                        b"note: leakcheck: leak checks are off in this process: the test could not be run \
                          again alone in a process of its own.\n",
                    );
                });
                return finish_body(body());
            }
        }
    }
    // Spawning a thread initialises std's lazy thread state on first use
    // (the main thread's handle, stack-size settings); do that before the
    // baseline so it is not counted as the test's.
    let _ = std::thread::spawn(|| ()).join();
    wait_until_main_thread_sleeps();
    // The temp dir, when it is this process's own (see crate::temp_dir).
    let files_before = crate::temp_dir::private_listing();
    let runs = options.repeat_runs();
    // Repeat mode: a first, unmeasured run does the one-time initialisation.
    if runs > 0 {
        let warm_up = run_on_fresh_thread(body);
        if !matches!(warm_up, Ok(Ok(()))) {
            return finish_outcome(warm_up);
        }
    }
    let mut findings = Vec::new();
    let mut outcome = Ok(Ok(()));
    // cargo leakcheck's explain re-run: one measured run, recording sites.
    let explain = crate::sites::explain_mode();
    let record_now = matches!(explain, Explain::ThisRun { .. });
    let record_heap = matches!(explain, Explain::ThisRun { heap: true });
    let runs = if record_now { runs.min(1) } else { runs };
    // cargo leakcheck's first run already settled; the re-run does not.
    let settled = Options { grace_ms: Some(0), ..*options };
    let options = if record_now { &settled } else { options };
    for _ in 0..runs.max(1) {
        let recorder = record_now.then(|| crate::sites::Recorder::start(record_heap));
        let guard = match Guard::start() {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("note: leakcheck: could not read /proc/self ({error}); this test is not checked");
                return finish_body(body());
            }
        };
        outcome = run_on_fresh_thread(body);
        let panicked = outcome.is_err();
        let finding = if panicked { guard.finish_after_panic(options) } else { guard.finish(options) };
        match finding {
            Ok(mut finding) => {
                if let Some(recorder) = recorder {
                    recorder.finish(&mut finding.judgement.leaks);
                }
                findings.push(finding)
            }
            Err(error) => {
                eprintln!("note: leakcheck: could not read /proc/self ({error}); this test is not checked");
                return finish_outcome(outcome);
            }
        }
        if !matches!(outcome, Ok(Ok(()))) {
            break;
        }
    }
    let (mut finding, warnings) =
        if runs > 0 { combine_runs(findings) } else { (findings.pop().unwrap_or_default(), Vec::new()) };
    // A leak of the first run in this process may be a singleton the test
    // only made because it ran first (see crate::one_time).
    let mut singletons = Vec::new();
    if runs == 0
        && !record_now
        && matches!(outcome, Ok(Ok(())))
        && crate::one_time::worth_a_second_run(&finding.judgement.leaks)
    {
        singletons = separate_one_time(body, options, &mut finding.judgement.leaks);
    }
    // LEAKCHECK_EXPLAIN=1 (under nextest or cargo test): the verdict stands;
    // a leaking test runs once more, recording, to find its sites.
    if explain == Explain::AfterALeak && matches!(outcome, Ok(Ok(()))) && !finding.judgement.leaks.is_empty() {
        explain_after_leak(body, options, &mut finding.judgement.leaks);
    }
    let mut warnings = warnings;
    if let Some(before) = files_before {
        warnings.extend(add_files_left(&before, options, &mut finding));
    }
    report_verdict(outcome, &finding, &warnings, &singletons, (body, started))
}

/// Adds what the test left in its private temp dir since `before`, judged
/// by its options, to `finding`; its fds' paths there named by `$TMPDIR`.
/// Returns the empty directories: warnings (see
/// [`crate::temp_dir::split_empty_dirs`]).
fn add_files_left(
    before: &crate::temp_dir::Listing,
    options: &Options,
    finding: &mut crate::guard::Finding,
) -> Vec<crate::Leak> {
    let dir = std::env::temp_dir();
    let (judged, empty) = crate::temp_dir::judge_left(&dir, before, options, &mut finding.judgement.leaks);
    finding.judgement.leaks.extend(judged.leaks);
    finding.judgement.allowed.extend(judged.allowed);
    empty
}

/// Tells the verdict: warnings and singletons as notes, the record to
/// `cargo leakcheck` when it runs the test, and a leak as the test's
/// failure (a panic, as libtest expects).
fn report_verdict(
    outcome: std::thread::Result<Result<(), String>>,
    finding: &crate::guard::Finding,
    warnings: &[crate::Leak],
    singletons: &[crate::Leak],
    (body, started): (fn() -> Result<(), String>, std::time::Instant),
) {
    if !warnings.is_empty() {
        eprintln!("warning: leakcheck: leaked in some measured runs only (oscillating):");
        for leak in warnings {
            eprintln!("  - {}", leak.describe());
        }
    }
    let body_passed = matches!(outcome, Ok(Ok(())));
    let report = InProcessReport {
        body_passed,
        leaks: finding.judgement.leaks.clone(),
        allowed: finding
            .judgement
            .allowed
            .iter()
            .map(|(leak, reason)| AllowedLeak { leak: leak.clone(), reason: (*reason).to_owned() })
            .collect(),
        unchecked: finding.unchecked.clone(),
        closed_fds: finding.closed_fds.clone(),
        singletons: singletons.to_vec(),
        warnings: warnings.to_vec(),
        // run_test looked at the temp dir exactly when it is private.
        files_checked: crate::temp_dir::is_private(),
        failure: match &outcome {
            Ok(Err(message)) => Some(message.clone()),
            Err(payload) => Some(crate::panic_text::payload_text(payload.as_ref())),
            Ok(Ok(())) => None,
        },
    };
    tell_cargo_leakcheck(&report);
    crate::own_record::write_if_asked(&report, registration(body), started);
    // Under cargo leakcheck (or a self-isolating parent), the record says it.
    if std::env::var_os(crate::env_names::RECORD_FILE).is_none() {
        print_notes(singletons, &finding.unchecked);
    }
    let leaks = &finding.judgement.leaks;
    if body_passed && !leaks.is_empty() {
        panic!("{}", crate::record::describe_leaks(leaks));
    }
    if !leaks.is_empty() {
        eprintln!("{}", crate::record::describe_leaks(leaks));
    }
    finish_outcome(outcome)
}

/// The first run leaked: runs `body` once more and moves what that second
/// run does not leave again out of `leaks`, returning it (the one-time
/// leaks). A second run that fails or cannot be checked moves nothing.
fn separate_one_time(
    body: fn() -> Result<(), String>,
    options: &Options,
    leaks: &mut Vec<crate::Leak>,
) -> Vec<crate::Leak> {
    let Ok(guard) = Guard::start() else { return Vec::new() };
    let second = run_on_fresh_thread(body);
    if !matches!(second, Ok(Ok(()))) {
        return Vec::new();
    }
    let Ok(second) = guard.finish(options) else { return Vec::new() };
    crate::one_time::end_children(&second.judgement.leaks);
    let name = std::thread::current().name().unwrap_or_default().to_owned();
    let (own, once) = crate::one_time::split(std::mem::take(leaks), &second.judgement.leaks, &name);
    *leaks = own;
    once
}

/// Runs `body` once more, recording where its leaks are created, and gives
/// those sites to the first run's `leaks` (whose verdict stands).
fn explain_after_leak(body: fn() -> Result<(), String>, options: &Options, leaks: &mut [crate::Leak]) {
    let heap = leaks.iter().any(|leak| matches!(leak, crate::Leak::Heap { .. }));
    let recorder = crate::sites::Recorder::start(heap);
    if let Ok(guard) = Guard::start() {
        let rerun = run_on_fresh_thread(body);
        let panicked = rerun.is_err();
        let rerun = if panicked { guard.finish_after_panic(options) } else { guard.finish(options) };
        if let Ok(mut rerun) = rerun {
            recorder.finish(&mut rerun.judgement.leaks);
            crate::sites::attach(leaks, &rerun.judgement.leaks);
        }
    }
}

/// The parent's verdict on a test that ran alone in a fresh process: pass,
/// or fail with the body's own failure or with the leak report. The failure
/// is raised with `resume_unwind`: no panic location in leakcheck's code,
/// and `#[should_panic(expected = ...)]` sees the body's message.
fn conclude_isolated(
    isolated: crate::self_isolation::Isolated,
    body: fn() -> Result<(), String>,
    started: std::time::Instant,
) {
    let report = match isolated {
        crate::self_isolation::Isolated::Report(report) => report,
        crate::self_isolation::Isolated::NoReport(why) => {
            eprintln!("{why}");
            let failed = InProcessReport { failure: Some(why.clone()), ..InProcessReport::default() };
            crate::own_record::write_if_asked(&failed, registration(body), started);
            resume_unwind(Box::new(why));
        }
    };
    crate::own_record::write_if_asked(&report, registration(body), started);
    print_notes(&report.singletons, &report.unchecked);
    if let Some(failure) = report.failure {
        resume_unwind(Box::new(failure));
    }
    if !report.leaks.is_empty() {
        let message = crate::record::describe_leaks(&report.leaks);
        eprintln!("{message}");
        resume_unwind(Box::new(message));
    }
}

/// The notes of a verdict that are not failures: singletons, and kinds that
/// could not be checked (the heap without `leakcheck::Alloc`).
fn print_notes(singletons: &[crate::Leak], unchecked: &[String]) {
    if !singletons.is_empty() {
        eprintln!("note: leakcheck: made once per process (a second run did not leave them again), not counted:");
        for leak in singletons {
            eprintln!("  - {}", leak.describe());
        }
    }
    if !unchecked.is_empty() {
        eprintln!("note: leakcheck: not checked: {}", unchecked.join(", "));
    }
}

/// libtest's main thread books a timeout entry for the test (a small
/// allocation) just after starting it, then sleeps until the test ends. Wait
/// (a few milliseconds at most) until it sleeps, so the entry is in the
/// baseline rather than counted as the test's heap.
fn wait_until_main_thread_sleeps() {
    let pid = std::process::id();
    let stat_path = format!("/proc/self/task/{pid}/stat");
    let sleeping = || {
        std::fs::read_to_string(&stat_path)
            .ok()
            .and_then(|stat| stat.rsplit(')').next().and_then(|rest| rest.trim_start().chars().next()))
            .is_some_and(|state| state == 'S' || state == 'D')
    };
    for _ in 0..100 {
        if sleeping() {
            std::thread::sleep(std::time::Duration::from_micros(100));
            if sleeping() {
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// Runs `body` on a fresh thread named like the current one (joined, so its
/// thread-locals are gone before any check).
fn run_on_fresh_thread(body: fn() -> Result<(), String>) -> std::thread::Result<Result<(), String>> {
    let mut thread = std::thread::Builder::new();
    if let Some(name) = std::thread::current().name() {
        thread = thread.name(name.to_owned());
    }
    match thread.spawn(body) {
        Ok(handle) => handle.join(),
        Err(error) => Ok(Err(format!("leakcheck could not start the test thread: {error}"))),
    }
}

fn finish_body(result: Result<(), String>) {
    if let Err(message) = result {
        panic!("{message}");
    }
}

fn finish_outcome(outcome: std::thread::Result<Result<(), String>>) {
    match outcome {
        Ok(result) => finish_body(result),
        Err(panic) => resume_unwind(panic),
    }
}

/// Under `cargo leakcheck`, hands over the in-process verdict (it knows the
/// heap and the allow rules, which the outside view does not).
fn tell_cargo_leakcheck(report: &InProcessReport) {
    if let Some(path) = std::env::var_os(crate::env_names::RECORD_FILE) {
        if let Ok(json) = serde_json::to_vec(report) {
            let _ = std::fs::write(path, json);
        }
    }
}
