//! Running the selected tests, up to `jobs` at a time, reporting each record
//! as soon as its test ends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use leakcheck::{Outcome, TestRecord};

use super::harness_client::run_harness;
use super::isolated::{libtest_args, run_test, RunContext, Waker};
use crate::list::TestCase;

/// What a run produced.
#[derive(Debug)]
pub(crate) struct RunResult {
    /// One record per test that ended (ignored ones included), in listing order.
    pub(crate) records: Vec<TestRecord>,
    /// Tests never started (fail-fast stop or interruption).
    pub(crate) not_run: usize,
    /// Wall time of the whole test phase.
    pub(crate) duration_ms: u64,
}

/// Runs `cases` with `jobs` at a time; `on_record` sees each record as it
/// ends. Binaries built with `leakcheck::main!()` run whole first (they fork
/// per test themselves, `jobs` at a time), then every other test runs in a
/// process of its own. With `fail_fast`, no new test starts after the first
/// failing one.
pub(crate) fn run_all(
    context: &RunContext,
    cases: &[TestCase],
    list_args: &[String],
    jobs: usize,
    fail_fast: bool,
    mut on_record: impl FnMut(&TestRecord),
) -> RunResult {
    let started = Instant::now();
    let mut slots: Vec<Option<TestRecord>> = vec![None; cases.len()];
    // Every record passes the configuration's policy before anyone (or the
    // fail-fast decision) sees it.
    let mut report = |record: &mut TestRecord| {
        context.policy.apply(record);
        on_record(record);
    };
    let stop = AtomicBool::new(false);

    // Harness binaries, one at a time, each with all the parallelism.
    let waker = Waker::new().expect("a pipe for the harness client");
    let mut harness_ids: Vec<&str> =
        cases.iter().filter(|case| case.binary.harness).map(|c| c.binary.id.as_str()).collect();
    harness_ids.dedup();
    for id in harness_ids {
        if stop.load(Ordering::SeqCst) || context.supervisor.interrupted().is_some() {
            break;
        }
        let indices: Vec<usize> = (0..cases.len()).filter(|&index| cases[index].binary.id == id).collect();
        let mut to_run = Vec::new();
        for &index in &indices {
            if cases[index].ignored {
                let mut record = ignored_record(&cases[index]);
                report(&mut record);
                slots[index] = Some(record);
            } else {
                to_run.push(index);
            }
        }
        if to_run.is_empty() {
            continue;
        }
        let run_cases: Vec<&TestCase> = to_run.iter().map(|&index| &cases[index]).collect();
        let records = match run_harness(context, &waker, &run_cases, list_args, jobs, &mut report) {
            Ok(records) => records,
            Err(error) => run_cases
                .iter()
                .map(|case| {
                    let mut record = tool_error_record(case, &error);
                    report(&mut record);
                    Some(record)
                })
                .collect(),
        };
        for (index, record) in to_run.into_iter().zip(records) {
            if fail_fast && record.as_ref().is_some_and(|record| record.outcome.is_failure()) {
                stop.store(true, Ordering::SeqCst);
            }
            slots[index] = record;
        }
    }

    // Every other test: one process each, `jobs` workers.
    let process_cases: Vec<usize> = (0..cases.len()).filter(|&index| !cases[index].binary.harness).collect();
    let next = AtomicUsize::new(0);
    let (sender, receiver) = mpsc::channel::<(usize, TestRecord)>();
    std::thread::scope(|scope| {
        for worker in 0..jobs.max(1) {
            let sender = sender.clone();
            let (next, stop, process_cases) = (&next, &stop, &process_cases);
            std::thread::Builder::new()
                .name(format!("leakcheck-worker-{worker}"))
                .spawn_scoped(scope, move || {
                    let waker = Waker::new().expect("a pipe for the worker");
                    loop {
                        if stop.load(Ordering::SeqCst) || context.supervisor.interrupted().is_some() {
                            return;
                        }
                        let Some(&index) = process_cases.get(next.fetch_add(1, Ordering::SeqCst)) else { return };
                        let case = &cases[index];
                        let record = if case.ignored {
                            Some(ignored_record(case))
                        } else {
                            match run_test(context, &waker, case, &libtest_args(context, case)) {
                                Ok(record) => record,
                                Err(error) => Some(tool_error_record(case, &error)),
                            }
                        };
                        if let Some(mut record) = record {
                            context.policy.apply(&mut record);
                            // Decided here, not by the receiver: the next
                            // test must not start after a failure.
                            if fail_fast && record.outcome.is_failure() {
                                stop.store(true, Ordering::SeqCst);
                            }
                            if sender.send((index, record)).is_err() {
                                return;
                            }
                        }
                    }
                })
                .expect("a worker thread starts");
        }
        drop(sender);
        for (index, record) in receiver {
            on_record(&record);
            slots[index] = Some(record);
        }
    });

    let records: Vec<TestRecord> = slots.into_iter().flatten().collect();
    RunResult { not_run: cases.len() - records.len(), records, duration_ms: started.elapsed().as_millis() as u64 }
}

fn ignored_record(case: &TestCase) -> TestRecord {
    TestRecord::new(case.binary.id.clone(), case.name.clone(), Outcome::Ignored)
}

fn tool_error_record(case: &TestCase, error: &std::io::Error) -> TestRecord {
    TestRecord {
        message: Some(format!("cargo-leakcheck could not run this test: {error}")),
        outcome: Outcome::Failed,
        ..ignored_record(case)
    }
}
