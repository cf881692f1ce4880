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
        if !case.binary.libtest {
            // One test, run whole: no filter to run it with others; it is
            // its own run together.
            heap.check_each_test_of(&case.binary.executable);
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
                    let together = run_together(context, &waker, binary, names, serial);
                    match &together {
                        // A fallback is always said, with its cost: one line.
                        Together::Inconclusive(why) => eprintln!(
                            "        Heap {} ({} tests together): {why}; each test is checked alone, preloaded \
                             (about 20 ms more per test)",
                            binary.id,
                            names.len()
                        ),
                        Together::Clean if context.verbose => {
                            eprintln!("        Heap {} ({} tests together): no heap leak", binary.id, names.len())
                        }
                        Together::Leaked if context.verbose => eprintln!(
                            "        Heap {} ({} tests together): heap checked test by test",
                            binary.id,
                            names.len()
                        ),
                        Together::Clean | Together::Leaked => {}
                    }
                    if !matches!(together, Together::Clean) {
                        heap.check_each_test_of(&binary.executable);
                    }
                }
            });
        }
    });
}

/// What a binary's tests run together under the runtime said.
enum Together {
    /// No heap leak, and the run was whole enough to say so.
    Clean,
    /// Some heap leaked: which test is found by running each alone.
    Leaked,
    /// It cannot tell, and why.
    Inconclusive(String),
}

/// Runs `names` of `binary` together under the runtime.
fn run_together(
    context: &RunContext,
    waker: &Waker,
    binary: &Arc<TestBinary>,
    names: &[&str],
    serial: usize,
) -> Together {
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
    let mut process = match spawn::start(context, waker, &case, &args, Launch::HeapFilter) {
        Ok(process) => process,
        Err(error) => return Together::Inconclusive(format!("could not run ({error})")),
    };
    process.settle = Settle::Full;
    let ended = watch::watch(context, waker, &case, &mut process);
    let _ = std::fs::remove_file(&process.record_file);
    let (Some(prefix), Some(heap)) = (&process.heap_log, &context.heap) else {
        return Together::Inconclusive("the runtime was not preloaded".into());
    };
    let leaks = heap.leaks_of(prefix, process.pid, &binary.cwd);
    // libtest returned from main (its tests may have failed: their memory
    // was still checked at the exit); a crash, a timeout or an early exit
    // leaves no whole report.
    let finished = match &ended.exit_view {
        Some(view) => view.by_main_thread,
        None => process.stdout.contains(b"\ntest result: "),
    };
    let status = ended.status;
    if ended.timed_out {
        return Together::Inconclusive(format!("ran past the --timeout of {:?}", context.timeout));
    }
    if !finished || !matches!(status, super::reaper::ExitStatus::Code(0 | 101)) {
        let how = match status {
            super::reaper::ExitStatus::Signal(signal) => format!("killed by {signal}"),
            super::reaper::ExitStatus::Code(code) => format!("ended early (status {code})"),
        };
        return Together::Inconclusive(format!("{how}, before the runtime's exit check"));
    }
    match leaks {
        Some(leaks) if leaks.is_empty() => Together::Clean,
        Some(_) => Together::Leaked,
        None => Together::Inconclusive("the runtime could not check the process".into()),
    }
}
