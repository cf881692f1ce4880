//! The batch engine: a libtest binary's tests run several to a process,
//! one after another, each judged at its own boundaries (see
//! [`super::boundary`]), `jobs` batches at a time.
//!
//! A batch gives only clean passes: a test that passed with nothing left
//! behind (and, with the heap check, in a process whose heap runtime found
//! no leak at its exit) is final. Every other test, and every test a batch
//! could not vouch for, runs again alone in a fresh process, the reference
//! engine, whose verdict counts: a leak, a failure, a crash, a timeout, a
//! test that depends on what ran before it. So a batch can make a run
//! faster, never change a verdict.
//!
//! A crash or a timeout ends its batch; the batch's tests that had not
//! started go on in a new process. Each test's time limit counts from its
//! own start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leakcheck::{Outcome, TestRecord};

use super::boundary::{self, BatchEnded, TestEnd, Until};
use super::context::{RunContext, Waker};
use super::reaper::ExitStatus;
use super::spawn::Launch;
use crate::cargo::TestBinary;
use crate::list::TestCase;

/// Most tests in one batch: a batch's names are its command line, and
/// smaller batches spread slow tests over the workers.
const MOST_PER_BATCH: usize = 64;

/// Batches per worker, where there are tests and workers enough: test times are not
/// known beforehand, and a worker that drew the slow tests must not be
/// the one the run waits for (threadpool's suite: two batches of sleeping
/// tests, one twice the other).
const BATCHES_PER_WORKER: usize = 4;

/// Fewest tests in a batch that is one of several: each batch is a
/// process to start (with the heap runtime, to load).
const LEAST_PER_BATCH: usize = 4;

/// What one batch process showed of each test it ran to its result, in
/// the order they ran: by case index, the instances of each shape
/// ([`leakcheck::shape`]) the test left at its end (none when clean).
/// Creation evidence for [`super::singleton`]: a test that left nothing,
/// after another left a shape, found it there.
pub(super) type Made = Vec<(usize, BTreeMap<String, usize>)>;

/// What the batches gave.
pub(super) struct Batched {
    /// By case index, the records of the tests that passed clean. The
    /// others are left to the one-process-per-test engine.
    pub(super) clean: Vec<Option<TestRecord>>,
    /// What each batch process showed.
    pub(super) made: Vec<Made>,
    /// Tests that failed in a batch, each with the test that ran just
    /// before it there (see [`note_order_dependence`]).
    pub(super) failed: Vec<(usize, Option<usize>)>,
}

/// Runs every libtest test of `cases` in batches.
pub(super) fn run(context: &RunContext, cases: &[TestCase], jobs: usize, next_serial: &AtomicUsize) -> Batched {
    if let Some(heap) = &context.heap {
        // A target run whole, or one on libtest-mimic, is not batched:
        // checked preloaded, alone.
        for case in cases.iter().filter(|case| !case.binary.harness && !case.binary.std_harness) {
            heap.check_each_test_of(&case.binary.executable);
        }
    }
    let batches = plan(cases, jobs);
    let next = AtomicUsize::new(0);
    let clean: Mutex<Vec<(usize, TestRecord)>> = Mutex::new(Vec::new());
    let made: Mutex<Vec<Made>> = Mutex::new(Vec::new());
    let failed: Mutex<Vec<(usize, Option<usize>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for worker in 0..jobs.max(1).min(batches.len()) {
            let (batches, next, clean, made, failed) = (&batches, &next, &clean, &made, &failed);
            std::thread::Builder::new()
                .name(format!("leakcheck-batch-{worker}"))
                .spawn_scoped(scope, move || {
                    let Ok(waker) = Waker::new() else { return };
                    while let Some(batch) = batches.get(next.fetch_add(1, Ordering::SeqCst)) {
                        if context.supervisor.interrupted().is_some() {
                            return;
                        }
                        let seen = run_batch(context, &waker, cases, batch, next_serial);
                        clean.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(seen.clean);
                        made.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(seen.made);
                        failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(seen.failed);
                    }
                })
                .expect("a batch worker thread starts");
        }
    });
    let mut records = vec![None; cases.len()];
    for (index, record) in clean.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
        records[index] = Some(record);
    }
    Batched {
        clean: records,
        made: made.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()),
        failed: failed.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()),
    }
}

/// One line for each test that failed in a batch and passed alone: it
/// depends on what ran before it (the lone run's verdict is its verdict).
pub(super) fn note_order_dependence(
    cases: &[TestCase],
    failed: &[(usize, Option<usize>)],
    alone: &[Option<TestRecord>],
) {
    for &(case, before) in failed {
        // Only a pass tells: a `#[leakcheck::test]` fails for its own
        // leak in a batch as alone, and a test re-run without the heap
        // runtime (unchecked: heap) failed in its batch for the runtime.
        let Some(record) = &alone[case] else { continue };
        if record.outcome != Outcome::Passed || record.unchecked.iter().any(|kind| kind == "heap") {
            continue;
        }
        let after = before.map_or("as the first test of its process".to_owned(), |before| {
            format!("after {}", leakcheck::record::escape_control(&cases[before].name))
        });
        eprintln!(
            "        Order {} {}: failed in its batch ({after}), {} alone: it depends on what ran before it; the lone run's verdict counts",
            record.binary,
            leakcheck::record::escape_control(&record.name),
            record.outcome.as_str()
        );
    }
}

/// The batches: each binary's runnable tests dealt round-robin (libtest
/// sorts by name, and slow tests tend to share a prefix) into enough
/// batches that every worker has [`BATCHES_PER_WORKER`] (none under
/// [`LEAST_PER_BATCH`] tests, none over [`MOST_PER_BATCH`]); biggest first.
fn plan(cases: &[TestCase], jobs: usize) -> Vec<Vec<usize>> {
    let mut by_binary: Vec<(&Arc<TestBinary>, Vec<usize>)> = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        if !case.binary.std_harness || case.ignored {
            continue;
        }
        match by_binary.iter_mut().find(|(binary, _)| binary.executable == case.binary.executable) {
            Some((_, indices)) => indices.push(index),
            None => by_binary.push((&case.binary, vec![index])),
        }
    }
    let total: usize = by_binary.iter().map(|(_, indices)| indices.len()).sum();
    let mut batches = Vec::new();
    for (_, indices) in by_binary {
        let n = indices.len();
        let share = (n * jobs.max(1)).div_ceil(total.max(1));
        // One worker waits for every batch anyway.
        let spread = if jobs > 1 { (share * BATCHES_PER_WORKER).min(n.div_ceil(LEAST_PER_BATCH)) } else { 1 };
        let count = n.div_ceil(MOST_PER_BATCH).max(share).max(spread).clamp(1, n);
        for first in 0..count {
            batches.push(indices.iter().copied().skip(first).step_by(count).collect::<Vec<usize>>());
        }
    }
    batches.sort_by_key(|batch| std::cmp::Reverse(batch.len()));
    batches
}

/// One test as a batch ran it.
struct Ran {
    /// Its index in the cases.
    case: usize,
    end: TestEnd,
    /// The heap runtime vouched for its process (or the heap is not checked).
    heap_clean: bool,
}

impl Ran {
    fn passed_clean(&self) -> bool {
        matches!(self.end, TestEnd::Clean { .. }) && self.heap_clean
    }
}

/// Runs one batch; returns the clean records.
///
/// A resource a library makes once and keeps is left behind by the first
/// test that needs it, not by the tests after it, which find it there at
/// their start. Singleton detection needs a second test leaving it (see
/// [`super::singleton`]), so a batch in which a test was not clean runs
/// again, from that test on, without the tests that were not clean: a
/// singleton they made is then made by the next test that needs it, which
/// is not clean in turn and goes alone too.
fn run_batch(
    context: &RunContext,
    waker: &Waker,
    cases: &[TestCase],
    batch: &[usize],
    next_serial: &AtomicUsize,
) -> Seen {
    let binary = &cases[batch[0]].binary;
    let started = Instant::now();
    let first = run_in_order(context, waker, cases, batch, next_serial, None, |tests, ended| {
        heap_verdict(context, binary, tests, ended)
    });
    let heap_covered = first.ran.iter().filter(|ran| ran.heap_clean).count();
    if let (Some(heap), true) = (&context.heap, heap_covered < batch.len()) {
        heap.check_each_test_of(&binary.executable);
    }
    let mut clean: Vec<&Ran> = first.ran.iter().filter(|ran| ran.passed_clean()).collect();
    // What the tests that were not clean left (of the kinds singleton
    // detection looks at): what the run again must see made once more.
    let wanted: BTreeSet<String> = first.made.iter().flatten().flat_map(|(_, shapes)| shapes.keys().cloned()).collect();
    let (mut made, mut failed) = (first.made, first.failed);
    let first_unclean = first.ran.iter().position(|ran| ran.end == TestEnd::NotClean);
    let again: Vec<usize> = first_unclean
        .map(|at| first.ran[at..].iter().filter(|ran| ran.passed_clean()).map(|ran| ran.case).collect())
        .unwrap_or_default();
    if !again.is_empty() && !wanted.is_empty() && context.supervisor.interrupted().is_none() {
        // It ends once every shape wanted was made again, or after a
        // quarter of the batch's time: a leak of the test's own is never
        // made again, and the run again must not double a slow suite.
        let budget = (started.elapsed() / 4).max(Duration::from_secs(1));
        let until = Until { deadline: Instant::now() + budget, wanted: &wanted };
        let rerun = run_in_order(context, waker, cases, &again, next_serial, Some(&until), |_, _| true);
        made.extend(rerun.made);
        failed.extend(rerun.failed);
        let not_clean = |case: usize| {
            rerun.cut.contains(&case) || rerun.ran.iter().any(|ran| ran.case == case && !ran.passed_clean())
        };
        let before = clean.len();
        clean.retain(|ran| !not_clean(ran.case));
        if context.verbose {
            eprintln!(
                "        Batch {}: {} of {} again without the {} not clean ({}): {} not clean now (singletons' next makers)",
                binary.id,
                rerun.ran.len(),
                count_tests(again.len()),
                first.ran.iter().filter(|ran| !ran.passed_clean()).count(),
                if rerun.stopped_early { "stopped once all it left was made again, or at its time budget" } else { "to the end" },
                before - clean.len()
            );
        }
    }
    let clean =
        clean.into_iter().map(|ran| (ran.case, clean_record(context, &cases[ran.case], ran_duration(ran)))).collect();
    Seen { clean, made, failed }
}

/// What one batch gave: its clean records, by case index, and what
/// [`InOrder`] saw of its processes.
struct Seen {
    clean: Vec<(usize, TestRecord)>,
    made: Vec<Made>,
    failed: Vec<(usize, Option<usize>)>,
}

fn ran_duration(ran: &Ran) -> std::time::Duration {
    match ran.end {
        TestEnd::Clean { duration } => duration,
        TestEnd::NotClean => std::time::Duration::ZERO,
    }
}

/// What [`run_in_order`] saw.
struct InOrder {
    /// Each test that reached its result, in the order they ran.
    ran: Vec<Ran>,
    /// What each process showed.
    made: Vec<Made>,
    /// Tests libtest reported failing, each with the test that ran just
    /// before it in its process.
    failed: Vec<(usize, Option<usize>)>,
    /// Tests running when their process crashed or timed out.
    cut: Vec<usize>,
    /// Ended by `until`.
    stopped_early: bool,
}

/// Runs `tests` in one process (and, after a crash or a timeout, the tests
/// not yet started in new ones), until `until` says so if given.
/// `heap_clean` judges each process's heap report.
fn run_in_order(
    context: &RunContext,
    waker: &Waker,
    cases: &[TestCase],
    tests: &[usize],
    next_serial: &AtomicUsize,
    until: Option<&Until>,
    heap_clean: impl Fn(usize, &BatchEnded) -> bool,
) -> InOrder {
    let binary = &cases[tests[0]].binary;
    let mut seen =
        InOrder { ran: Vec::new(), made: Vec::new(), failed: Vec::new(), cut: Vec::new(), stopped_early: false };
    let mut todo: Vec<usize> = tests.to_vec();
    while !todo.is_empty() && context.supervisor.interrupted().is_none() {
        let names: Vec<&str> = todo.iter().map(|&index| cases[index].name.as_str()).collect();
        let serial = next_serial.fetch_add(1, Ordering::SeqCst);
        // Not watched (not started, or no probe): every test runs alone.
        let Ok(ended) = boundary::run_together(context, waker, binary, &names, serial, Launch::Batch, until) else {
            break;
        };
        let heap_clean = heap_clean(names.len(), &ended);
        seen.ran.extend(ended.ended.iter().map(|&(at, end)| Ran { case: todo[at], end, heap_clean }));
        let left = |at: usize| ended.left.iter().find(|(left, _)| *left == at).map(|(_, shapes)| shapes.clone());
        // A test that failed (or whose end could not be read) shows nothing.
        let made = |&(at, end): &(usize, TestEnd)| match end {
            TestEnd::Clean { .. } => Some((todo[at], BTreeMap::new())),
            TestEnd::NotClean => left(at).map(|shapes| (todo[at], shapes)),
        };
        seen.made.push(ended.ended.iter().filter_map(made).collect());
        for (position, &(at, _)) in ended.ended.iter().enumerate() {
            if ended.failed.contains(&at) {
                let before = position.checked_sub(1).map(|before| todo[ended.ended[before].0]);
                seen.failed.push((todo[at], before));
            }
        }
        if ended.stopped {
            seen.stopped_early = true;
            break;
        }
        seen.cut.extend(ended.cut.map(|at| todo[at]));
        // libtest finished, or the process ran no test: what it did not run
        // is run alone. Else (a crash, a timeout) the rest go on.
        if ended.finished || (ended.ended.is_empty() && ended.cut.is_none()) {
            break;
        }
        let done = |at: usize| ended.cut == Some(at) || ended.ended.iter().any(|&(ended, _)| ended == at);
        todo = (0..todo.len()).filter(|&at| !done(at)).map(|at| todo[at]).collect();
        if context.verbose {
            eprintln!(
                "        Batch {}: {}; {} go on in a new process",
                binary.id,
                if ended.timed_out { "a test ran past --timeout" } else { "the process ended in a test" },
                count_tests(todo.len())
            );
        }
    }
    seen
}

/// Whether the heap runtime vouches for the batch's clean tests: not
/// preloaded (heap not checked, or not checkable), or a whole run with no
/// leak. Otherwise each test of the binary is checked alone, preloaded,
/// and a run that could not tell says so in one line.
fn heap_verdict(context: &RunContext, binary: &TestBinary, count: usize, ended: &BatchEnded) -> bool {
    let tests = count_tests(count);
    let (Some(report), Some(heap)) = (&ended.heap, &context.heap) else { return true };
    let whole = ended.finished && !ended.timed_out && matches!(ended.status, ExitStatus::Code(0 | 101));
    let why = match report {
        Some(leaks) if whole && leaks.is_empty() => {
            if context.verbose {
                eprintln!("        Heap {} ({tests} in a batch): no heap leak", binary.id);
            }
            return true;
        }
        Some(leaks) if whole => {
            if context.verbose {
                eprintln!(
                    "        Heap {} ({tests} in a batch): {} leaked, heap checked test by test",
                    binary.id,
                    leaks.len()
                );
            }
            heap.check_each_test_of(&binary.executable);
            return false;
        }
        Some(_) if ended.timed_out => format!("a test ran past the --timeout of {:?}", context.timeout),
        Some(_) => match ended.status {
            ExitStatus::Signal(signal) => format!("killed by {signal}, before the runtime's exit check"),
            ExitStatus::Code(code) => format!("ended early (status {code}), before the runtime's exit check"),
        },
        None => "the runtime could not check the process".into(),
    };
    // A fallback is always said, with its cost: one line.
    eprintln!(
        "        Heap {} ({tests} in a batch): {why}; its tests are checked alone, preloaded (about 20 ms more \
         per test)",
        binary.id
    );
    heap.check_each_test_of(&binary.executable);
    false
}

/// "1 test", "2 tests".
fn count_tests(count: usize) -> String {
    format!("{count} test{}", if count == 1 { "" } else { "s" })
}

/// The record of a test that passed clean in a batch.
fn clean_record(context: &RunContext, case: &TestCase, duration: std::time::Duration) -> TestRecord {
    let mut record = TestRecord::new(case.binary.id.clone(), case.name.clone(), Outcome::Passed);
    record.duration_ms = duration.as_millis() as u64;
    let heap_unsupported = context.heap_missing
        || context.heap.as_ref().is_some_and(|heap| heap.unsupported(&case.binary.executable).is_some());
    if heap_unsupported {
        record.unchecked.push("heap".to_owned());
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases(binaries: &[(&str, usize)]) -> Vec<TestCase> {
        let mut cases = Vec::new();
        for (id, count) in binaries {
            let binary = Arc::new(TestBinary {
                id: (*id).into(),
                executable: format!("/bin/{id}").into(),
                cwd: "/".into(),
                env: Vec::new(),
                harness: false,
                libtest: true,
                std_harness: true,
            });
            for n in 0..*count {
                cases.push(TestCase { binary: binary.clone(), name: format!("t{n:03}"), ignored: false, serial: 0 });
            }
        }
        cases
    }

    #[test]
    fn every_runnable_test_is_in_exactly_one_batch_and_batches_are_dealt_round_robin() {
        let cases = cases(&[("a", 200), ("b", 3)]);
        let batches = plan(&cases, 2);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..203).collect::<Vec<_>>());
        assert!(batches.iter().all(|batch| batch.len() <= MOST_PER_BATCH));
        // 200 tests: 8 batches of 25 (4 for each worker), each every 8th
        // test; 3 tests: one.
        assert_eq!(batches[0][..3], [0, 8, 16]);
        assert!(batches.windows(2).all(|pair| pair[0].len() >= pair[1].len()));
        assert_eq!(batches.len(), 9);
    }

    #[test]
    fn a_small_suite_still_gives_each_worker_a_batch() {
        let four = cases(&[("a", 4)]);
        assert_eq!(plan(&four, 2), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(plan(&four[..1], 2), vec![vec![0]]);
        // 21 tests: 6 batches, none under 4 tests but the remainder's.
        let sizes: Vec<usize> = plan(&cases(&[("a", 21)]), 2).iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4, 4, 3, 3, 3]);
    }
}
