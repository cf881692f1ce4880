//! Judging one ended test process: its exit status, what the probe saw, the
//! in-process verdict of a `#[leakcheck::test]` when there is one, and the
//! record that goes to the reporters.

use std::time::Duration;

use leakcheck::record::InProcessReport;
use leakcheck::{Leak, Outcome, TestRecord};

use super::context::RunContext;
use super::reaper::ExitStatus;
use super::spawn::TestProcess;
use super::watch::Ended;
use crate::list::TestCase;

/// The record of one run of `case`; with it, whether a `#[leakcheck::test]`
/// checked it from inside.
pub(super) fn record(context: &RunContext, case: &TestCase, process: TestProcess, ended: Ended) -> (TestRecord, bool) {
    let Ended { status, duration, timed_out, exit_view, mut leaks, files } = ended;
    let (files, mut warnings) = leakcheck::temp_dir::split_empty_dirs(files);
    // libtest finished when its main thread returned from `main` (the probe
    // saw who called exit_group); without the probe, its closing line says
    // so (absent if the test closed stdout: then it reads as a failure).
    let finished = match &exit_view {
        Some(view) => view.by_main_thread,
        // A target that is not libtest prints no summary: its exit says.
        None => !case.binary.libtest || process.stdout.contains(b"\ntest result: ok."),
    };
    let in_process = read_in_process_report(&process.record_file);
    // The heap runtime's report, unless leakcheck's allocator checked the
    // heap from inside (its verdict then knows the heap better).
    let in_process_heap = in_process.as_ref().is_some_and(|report| !report.unchecked.iter().any(|kind| kind == "heap"));
    let heap_report = match (&process.heap_log, &context.heap) {
        (Some(prefix), Some(heap)) => Some(heap.leaks_of(prefix, process.pid, &case.binary.cwd)),
        _ => None,
    };
    let heap_failed = matches!(heap_report, Some(None)) && !in_process_heap;
    let heap_leaks = if in_process_heap { Vec::new() } else { heap_report.flatten().unwrap_or_default() };
    let mut unchecked = Vec::new();
    let mut allowed = Vec::new();
    let mut singletons = Vec::new();
    let (outcome, message) = match &in_process {
        // A `#[leakcheck::test]` checked the test from inside: its verdict
        // knows the heap and the test's allow rules. Only processes left
        // alive after the exit, which it could not see, are added.
        Some(report) => {
            let known: Vec<i32> =
                report.leaks.iter().chain(report.allowed.iter().map(|a| &a.leak)).filter_map(child_pid).collect();
            let orphans: Vec<Leak> = leaks
                .drain(..)
                .filter(|leak| matches!(leak, Leak::Child { orphaned: true, .. }))
                .filter(|leak| child_pid(leak).is_none_or(|pid| !known.contains(&pid)))
                .collect();
            leaks = report.leaks.clone();
            leaks.extend(orphans);
            leaks.extend(heap_leaks);
            let (own_files, own_warnings) = files_beside(report, files, &mut warnings);
            leaks.extend(own_files);
            warnings = own_warnings;
            allowed = report.allowed.clone();
            unchecked = report.unchecked.clone();
            if process.heap_log.is_some() {
                unchecked.retain(|kind| kind != "heap");
            }
            singletons = report.singletons.clone();
            let failed_by_leak_only = report.body_passed && status == ExitStatus::Code(101) && !report.leaks.is_empty();
            if failed_by_leak_only || (report.body_passed && status == ExitStatus::Code(0)) {
                judge(ExitStatus::Code(0), timed_out, true, &leaks, context.timeout)
            } else {
                judge(status, timed_out, finished, &leaks, context.timeout)
            }
        }
        None => {
            leaks.extend(heap_leaks);
            leaks.extend(files);
            judge(status, timed_out, finished, &leaks, context.timeout)
        }
    };
    let (outcome, message) = unless_replaced((outcome, message), exit_view.as_ref());
    if in_process.is_none() && process.listener.is_none() {
        unchecked.extend(["fd".to_owned(), "thread".to_owned()]);
    }
    let heap_unsupported = context.heap_missing
        || context.heap.as_ref().is_some_and(|heap| heap.unsupported(&case.binary.executable).is_some());
    if (heap_unsupported || heap_failed) && !in_process_heap && !unchecked.iter().any(|kind| kind == "heap") {
        unchecked.push("heap".to_owned());
    }
    let output = (outcome != Outcome::Passed).then(|| {
        let mut text = process.stdout.into_text();
        text.push_str(&process.stderr.into_text());
        text
    });
    let closed_fds = match &in_process {
        Some(report) => report.closed_fds.clone(),
        None => exit_view.as_ref().map(|view| view.closed.clone()).unwrap_or_default(),
    };
    let record = TestRecord {
        binary: case.binary.id.clone(),
        name: case.name.clone(),
        outcome,
        duration_ms: duration.as_millis() as u64,
        message,
        leaks,
        unchecked,
        allowed,
        warnings,
        singletons,
        closed_fds,
        output,
    };
    (record, in_process.is_some())
}

/// A test that exec'd another program never finished: whatever ended with
/// status 0 was not libtest.
fn unless_replaced(
    (outcome, message): (Outcome, Option<String>),
    exit_view: Option<&super::watch::ExitView>,
) -> (Outcome, Option<String>) {
    match exit_view.and_then(|view| view.replaced_by.as_deref()) {
        Some(program) if !outcome.is_failure() => (
            Outcome::Failed,
            Some(format!("the test process replaced itself with `{program}` (exec) before the test finished")),
        ),
        _ => (outcome, message),
    }
}

/// What the tool adds to a `#[leakcheck::test]`'s own verdict of the
/// files the test left, and the record's warnings. A check that listed its
/// temp dir itself (`files_checked`) knows those; what the probe saw it
/// make elsewhere (absolute paths) it could not see.
fn files_beside(report: &InProcessReport, files: Vec<Leak>, warnings: &mut Vec<Leak>) -> (Vec<Leak>, Vec<Leak>) {
    if report.files_checked {
        let outside = files.into_iter().filter(|leak| matches!(leak, Leak::File { path, .. } if path.starts_with('/')));
        (outside.collect(), report.warnings.clone())
    } else {
        let mut all = std::mem::take(warnings);
        all.extend(report.warnings.iter().cloned());
        (files, all)
    }
}

fn read_in_process_report(path: &std::path::Path) -> Option<InProcessReport> {
    let bytes = std::fs::read(path).ok()?;
    let _ = std::fs::remove_file(path);
    serde_json::from_slice(&bytes).ok()
}

fn child_pid(leak: &Leak) -> Option<i32> {
    match leak {
        Leak::Child { pid, .. } => Some(*pid),
        _ => None,
    }
}

/// The outcome of a test from how its process ended.
fn judge(
    status: ExitStatus,
    timed_out: bool,
    finished: bool,
    leaks: &[Leak],
    timeout: Duration,
) -> (Outcome, Option<String>) {
    if timed_out {
        return (
            Outcome::TimedOut,
            Some(format!("ran past the time limit of {}s and was killed", timeout.as_secs_f64())),
        );
    }
    match status {
        ExitStatus::Code(0) if finished => (if leaks.is_empty() { Outcome::Passed } else { Outcome::Leaked }, None),
        ExitStatus::Code(0) => (
            Outcome::Failed,
            Some("the test process exited with status 0 before the test finished (std::process::exit?)".into()),
        ),
        ExitStatus::Code(101) => (Outcome::Failed, Some("the test failed (exit status 101)".into())),
        ExitStatus::Code(code) => (Outcome::Failed, Some(format!("the test process exited with status {code}"))),
        ExitStatus::Signal(signal) => {
            (Outcome::Failed, Some(format!("the test process was killed by signal {signal}")))
        }
    }
}
