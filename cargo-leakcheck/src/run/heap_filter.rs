//! The heap check's filter: before the tests run one per process, each test
//! binary runs all its selected tests together, once, in one process with
//! the leak-checking runtime preloaded. LeakSanitizer reports only memory
//! nothing points to any more, so a binary whose run together leaves no
//! report has no test that leaks heap: its tests then run without the
//! runtime (it costs about 20 ms per process). A binary whose run together
//! reports a leak, or cannot tell (a test aborted, the run timed out, the
//! runtime failed), has every test checked on its own, preloaded, so each
//! leak is told to its test with the test's own stack.
//!
//! Cost: one process per binary, running its tests back to back (a test
//! that takes 10 ms alone takes about 10 ms there too), `jobs` binaries at
//! a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::context::{RunContext, Settle, Waker};
use super::spawn::{self, Launch};
use super::watch;
use crate::cargo::TestBinary;
use crate::list::TestCase;

/// Runs the filter of every binary the heap check covers, `jobs` at a time,
/// and tells the heap check which binaries need their tests preloaded one
/// by one.
pub(super) fn run(context: &RunContext, cases: &[TestCase], jobs: usize, next_serial: &AtomicUsize) {
    let Some(heap) = context.heap.as_ref() else { return };
    let mut binaries: Vec<(Arc<TestBinary>, Vec<&str>)> = Vec::new();
    for case in cases.iter().filter(|case| !case.binary.harness && !case.ignored) {
        if heap.unsupported(&case.binary.executable).is_some() {
            continue;
        }
        match binaries.iter_mut().find(|(binary, _)| binary.executable == case.binary.executable) {
            Some((_, names)) => names.push(&case.name),
            None => binaries.push((case.binary.clone(), vec![&case.name])),
        }
    }
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(binaries.len()) {
            scope.spawn(|| {
                let Ok(waker) = Waker::new() else { return };
                while let Some((binary, names)) = binaries.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if context.supervisor.interrupted().is_some() {
                        return;
                    }
                    let serial = next_serial.fetch_add(1, Ordering::SeqCst);
                    let clean = run_together(context, &waker, binary, names, serial);
                    if context.verbose {
                        let verdict = if clean { "no heap leak" } else { "heap checked test by test" };
                        eprintln!("        Heap {} ({} tests together): {verdict}", binary.id, names.len());
                    }
                    if !clean {
                        heap.check_each_test_of(&binary.executable);
                    }
                }
            });
        }
    });
}

/// Whether `names` of `binary`, run together under the runtime, left no
/// heap leak, and the run was whole enough to say so.
fn run_together(context: &RunContext, waker: &Waker, binary: &Arc<TestBinary>, names: &[&str], serial: usize) -> bool {
    let case = TestCase {
        binary: binary.clone(),
        name: format!("{} tests together (heap)", names.len()),
        ignored: false,
        serial,
    };
    let mut args: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    // `--nocapture`, as in the per-test runs: with libtest capturing output,
    // a `#[leakcheck::test]` would isolate itself in yet another process.
    args.extend(["--exact", "--nocapture", "--test-threads=1"].map(String::from));
    args.extend(context.test_args.iter().cloned());
    let Ok(mut process) = spawn::start(context, waker, &case, &args, Launch::HeapFilter) else { return false };
    process.settle = Settle::Full;
    let ended = watch::watch(context, waker, &case, &mut process);
    let _ = std::fs::remove_file(&process.record_file);
    let (Some(prefix), Some(heap)) = (&process.heap_log, &context.heap) else { return false };
    let leaks = heap.leaks_of(prefix, process.pid, &binary.cwd);
    // libtest returned from main (its tests may have failed: their memory
    // was still checked at the exit); a crash, a timeout or an early exit
    // leaves no whole report.
    let finished = match &ended.exit_view {
        Some(view) => view.by_main_thread,
        None => process.stdout.contains(b"\ntest result: "),
    };
    let whole = !ended.timed_out && finished && matches!(ended.status, super::reaper::ExitStatus::Code(0 | 101));
    whole && leaks.is_some_and(|leaks| leaks.is_empty())
}
