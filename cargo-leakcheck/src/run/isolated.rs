//! One test, alone in its own process, judged at its exit.
//!
//! Lifecycle: [`spawn`](super::spawn) `<binary> <name> --exact --nocapture
//! --test-threads=1` under the exit probe; [`watch`](super::watch) it until
//! it is gone (snapshot at `exit_group`, settled for up to the grace; what it
//! left alive reported, then terminated); [`judge`](super::judge) it; and,
//! for a test with leakcheck's code inside that leaked, run it once more to
//! explain where its leaks were made.

use std::io;

use leakcheck::{Leak, Outcome, TestRecord};

use super::context::Settle;
use super::context::{RunContext, Waker};
use super::spawn::Launch;
use super::{judge, spawn, watch};
use crate::list::TestCase;

/// libtest's arguments to run `case` alone, as `cargo leakcheck` does.
/// A target that does not speak libtest runs whole, with no arguments.
pub(crate) fn libtest_args(context: &RunContext, case: &TestCase) -> Vec<String> {
    if !case.binary.libtest {
        return Vec::new();
    }
    let mut args = vec![case.name.clone(), "--exact".into(), "--nocapture".into(), "--test-threads=1".into()];
    args.extend(context.test_args.iter().cloned());
    args
}

/// Runs `case` (its binary with `args`) and judges it. `None` when the run
/// was interrupted under it.
///
/// A test checked in-process (`#[leakcheck::test]`) that leaked is run once
/// more with `LEAKCHECK_EXPLAIN=record`, which records where its leaks were
/// created; those sites go to the first run's leaks, whose verdict stands.
/// A plain test whose heap leaked under the heap runtime is run once more
/// with full allocation stacks, for the sites of its heap leaks.
///
/// With [`Settle::SkipLasting`] the returned flag says whether the exit
/// snapshot skipped settling for lasting shapes (see [`Settle`]).
pub(crate) fn run_test(
    context: &RunContext,
    waker: &Waker,
    case: &TestCase,
    args: &[String],
    settle: Settle,
) -> io::Result<Option<(TestRecord, bool)>> {
    let Some((mut record, checked_in_process, hurried)) = run_once(context, waker, case, args, Launch::Check, settle)?
    else {
        return Ok(None);
    };
    if let Some(alone) = without_heap_if_it_failed_preloaded(context, waker, case, args, settle, &record)? {
        record = alone;
    }
    // Files have no recorder yet: they alone are not worth a re-run.
    let explainable = context.explain
        && record.leaks.iter().any(|leak| !matches!(leak, Leak::File { .. }))
        && record.outcome != Outcome::TimedOut;
    let heap = record.leaks.iter().any(|leak| matches!(leak, Leak::Heap { .. }));
    if explainable && (checked_in_process || heap) {
        let launch = if checked_in_process { Launch::Explain { heap } } else { Launch::ExplainHeap };
        if let Ok(Some((explained, _, _))) = run_once(context, waker, case, args, launch, Settle::Full) {
            if checked_in_process {
                leakcheck::sites::attach(&mut record.leaks, &explained.leaks);
            } else {
                take_heap_sites(&mut record.leaks, explained.leaks);
            }
        }
    }
    // A plain #[test] has no stacks; the line of its body naming a leak is
    // the next best thing.
    if context.explain && !record.leaks.is_empty() {
        crate::mentions::attach(&mut record, &case.binary.cwd);
    }
    Ok(Some((record, hurried)))
}

/// A test that failed or timed out with the heap runtime preloaded is run
/// once more without it (the runtime slows a process and changes its
/// memory layout): when it then does not fail, that verdict is the test's,
/// with its heap unchecked and a note saying why. `None`: the first verdict
/// stands.
fn without_heap_if_it_failed_preloaded(
    context: &RunContext,
    waker: &Waker,
    case: &TestCase,
    args: &[String],
    settle: Settle,
    record: &TestRecord,
) -> io::Result<Option<TestRecord>> {
    if !spawn::preloads(context, case, Launch::Check) || !matches!(record.outcome, Outcome::Failed | Outcome::TimedOut)
    {
        return Ok(None);
    }
    let Some((mut alone, _, _)) = run_once(context, waker, case, args, Launch::CheckWithoutHeap, settle)? else {
        return Ok(None);
    };
    if matches!(alone.outcome, Outcome::Failed | Outcome::TimedOut) {
        return Ok(None);
    }
    let note = format!(
        "{} only with the heap runtime preloaded; run again without it, this is its verdict (heap not checked)",
        if record.outcome == Outcome::TimedOut { "timed out" } else { "failed" }
    );
    eprintln!("        Heap {} {}: {note}", case.binary.id, case.name);
    alone.message = Some(note);
    if !alone.unchecked.iter().any(|kind| kind == "heap") {
        alone.unchecked.push("heap".into());
    }
    Ok(Some(alone))
}

/// The heap runtime's groups of an explain re-run carry allocation stacks;
/// the first run's (which recorded almost none) carry only totals. When the
/// re-run leaked heap too, its groups replace the first run's; the verdict,
/// made by the first run, stands.
fn take_heap_sites(leaks: &mut Vec<Leak>, explained: Vec<Leak>) {
    let explained: Vec<Leak> = explained.into_iter().filter(|leak| matches!(leak, Leak::Heap { .. })).collect();
    if explained.is_empty() {
        return;
    }
    leaks.retain(|leak| !matches!(leak, Leak::Heap { .. }));
    leaks.extend(explained);
}

/// One run of `case`; with it, whether a `#[leakcheck::test]` checked it
/// from inside, and whether its settling was hurried. `None` when the run
/// was interrupted before the test finished.
fn run_once(
    context: &RunContext,
    waker: &Waker,
    case: &TestCase,
    args: &[String],
    launch: Launch,
    settle: Settle,
) -> io::Result<Option<(TestRecord, bool, bool)>> {
    let mut process = spawn::start(context, waker, case, args, launch)?;
    process.settle = settle;
    let ended = watch::watch(context, waker, case, &mut process);
    if context.supervisor.interrupted().is_some() && !ended.timed_out && ended.exit_view.is_none() {
        return Ok(None);
    }
    let hurried = ended.exit_view.as_ref().is_some_and(|view| view.hurried);
    let (record, checked_in_process) = judge::record(context, case, process, ended);
    Ok(Some((record, checked_in_process, hurried)))
}
