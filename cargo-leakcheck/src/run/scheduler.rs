//! Running the selected tests, up to `jobs` at a time, reporting each record
//! as soon as its test ends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use leakcheck::{Outcome, TestRecord};

use super::batch::Made;
use super::context::Settle;
use super::context::{RunContext, Waker};
use super::harness_client::run_harness;
use super::isolated::{libtest_args, run_test};
use super::siblings::Siblings;
use super::singleton::{self, Held};
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
/// per test themselves, `jobs` at a time), then libtest binaries' tests in
/// batches (unless `--isolate`), then every test not passed clean there
/// runs in a process of its own. With `fail_fast`, no new test starts after the first
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
    let stop = AtomicBool::new(false);
    let next_serial = AtomicUsize::new(cases.len());
    let judged = Judged::default();
    let run = Run { context, cases, jobs, fail_fast, stop: &stop, next_serial: &next_serial, judged: &judged };
    run.harness_binaries(list_args, &mut slots, &mut on_record);
    // Without singleton detection every test touching a singleton fails
    // for it, which only a process per test shows.
    let (mut made, mut failed_in_batches) = (Vec::new(), Vec::new());
    if context.isolate || context.filter.is_none() || !context.detect_singletons[..2].contains(&true) {
        super::heap_filter::run(context, cases, jobs, &next_serial);
    } else {
        // Clean passes in batches are final; the rest run one per process,
        // and what the batches saw made helps tell their singletons.
        let batched = super::batch::run(context, cases, jobs, &next_serial);
        made = batched.made;
        failed_in_batches = batched.failed;
        for (index, record) in batched.clean.into_iter().enumerate() {
            if let Some(mut record) = record {
                context.policy.apply(&mut record);
                on_record(&record);
                slots[index] = Some(record);
            }
        }
    }
    run.one_process_each(&mut slots, &made, &mut on_record);
    super::batch::note_order_dependence(cases, &failed_in_batches, &slots);
    let records: Vec<TestRecord> = slots.into_iter().flatten().collect();
    RunResult { not_run: cases.len() - records.len(), records, duration_ms: started.elapsed().as_millis() as u64 }
}

/// What a worker hands back for one test.
enum Finished {
    /// The record, final.
    Final(usize, TestRecord),
    /// A record whose leaks may be singletons: judged after the group runs.
    Held(Held),
}

/// One scheduling of the selected tests.
struct Run<'a> {
    context: &'a RunContext,
    cases: &'a [TestCase],
    jobs: usize,
    fail_fast: bool,
    /// Set after the first failure under fail-fast: no new test starts.
    stop: &'a AtomicBool,
    /// Serial numbers of group runs (after the tests' own), naming their processes.
    next_serial: &'a AtomicUsize,
    /// How many binaries (of the one-process-per-test kind, in order) are judged.
    judged: &'a Judged,
}

/// A count of judged binaries that workers can wait on.
#[derive(Debug, Default)]
struct Judged {
    count: std::sync::Mutex<usize>,
    changed: std::sync::Condvar,
}

impl Judged {
    fn add_one(&self) {
        *self.count.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
        self.changed.notify_all();
    }

    /// Waits until `count` binaries are judged, or `give_up` says to stop.
    fn wait_for(&self, count: usize, give_up: impl Fn() -> bool) {
        let mut judged = self.count.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while *judged < count && !give_up() {
            let wait = self.changed.wait_timeout(judged, std::time::Duration::from_millis(50));
            judged = wait.unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
    }
}

impl Run<'_> {
    /// How many binaries come before the one at `position` of `process_cases`.
    fn binary_rank(&self, process_cases: &[usize], position: usize) -> usize {
        let id = |at: usize| self.cases[process_cases[at]].binary.id.as_str();
        (1..=position).filter(|&at| id(at) != id(at - 1)).count()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.context.supervisor.interrupted().is_some()
    }

    /// Harness binaries, one at a time, each with all the parallelism.
    fn harness_binaries(
        &self,
        list_args: &[String],
        slots: &mut [Option<TestRecord>],
        on_record: &mut dyn FnMut(&TestRecord),
    ) {
        let (context, cases) = (self.context, self.cases);
        // Every record passes the configuration's policy before anyone (or the
        // fail-fast decision) sees it.
        let mut report = |record: &mut TestRecord| {
            context.policy.apply(record);
            on_record(record);
        };
        let waker = Waker::new().expect("a pipe for the harness client");
        let mut harness_ids: Vec<&str> =
            cases.iter().filter(|case| case.binary.harness).map(|c| c.binary.id.as_str()).collect();
        harness_ids.dedup();
        for id in harness_ids {
            if self.stopped() {
                break;
            }
            let mut to_run = Vec::new();
            for index in (0..cases.len()).filter(|&index| cases[index].binary.id == id) {
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
            let records = match run_harness(context, &waker, &run_cases, list_args, self.jobs, &mut report) {
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
                if self.fail_fast && record.as_ref().is_some_and(|record| record.outcome.is_failure()) {
                    self.stop.store(true, Ordering::SeqCst);
                }
                slots[index] = record;
            }
        }
    }

    /// Every other test: one process each, `jobs` workers.
    fn one_process_each(
        &self,
        slots: &mut [Option<TestRecord>],
        made: &[Made],
        on_record: &mut dyn FnMut(&TestRecord),
    ) {
        let process_cases: Vec<usize> = (0..self.cases.len())
            .filter(|&index| !self.cases[index].binary.harness && slots[index].is_none())
            .collect();
        let next = AtomicUsize::new(0);
        let (sender, receiver) = mpsc::channel::<Finished>();
        let mut held: Vec<Held> = Vec::new();
        let mut siblings = Siblings::new(self.fail_fast);
        // Tests of each binary still to end: a binary's held records are
        // judged when its last test ends, so fail-fast can stop the next.
        let mut remaining: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for &index in &process_cases {
            *remaining.entry(self.cases[index].binary.id.as_str()).or_insert(0) += 1;
        }
        std::thread::scope(|scope| {
            for worker in 0..self.jobs.max(1) {
                let sender = sender.clone();
                let (next, process_cases) = (&next, &process_cases);
                std::thread::Builder::new()
                    .name(format!("leakcheck-worker-{worker}"))
                    .spawn_scoped(scope, move || self.worker(process_cases, next, &sender))
                    .expect("a worker thread starts");
            }
            drop(sender);
            for finished in receiver {
                let index = match finished {
                    Finished::Final(index, record) => {
                        on_record(&record);
                        slots[index] = Some(record);
                        index
                    }
                    Finished::Held(record) => {
                        held.push(record);
                        held[held.len() - 1].index
                    }
                };
                let binary = self.cases[index].binary.id.as_str();
                let left = remaining.entry(binary).or_insert(1);
                *left -= 1;
                if *left == 0 {
                    let (done, rest) = held.drain(..).partition(|record| record.record.binary == binary);
                    held = rest;
                    let resolved = self.resolve_singletons(done, made);
                    self.report_resolved(siblings.learn(self.context, resolved), slots, on_record);
                    self.judged.add_one();
                }
            }
        });
        // Binaries the run stopped in the middle of.
        let resolved = self.resolve_singletons(held, made);
        self.report_resolved(siblings.learn(self.context, resolved), slots, on_record);
        self.report_resolved(siblings.finish(), slots, on_record);
    }

    /// Reports judged records; under fail-fast a failing one stops the run.
    fn report_resolved(
        &self,
        resolved: Vec<Held>,
        slots: &mut [Option<TestRecord>],
        on_record: &mut dyn FnMut(&TestRecord),
    ) {
        for record in resolved {
            if self.fail_fast && record.record.outcome.is_failure() {
                self.stop.store(true, Ordering::SeqCst);
            }
            on_record(&record.record);
            slots[record.index] = Some(record.record);
        }
    }

    /// The held records with their singletons moved out of their leaks,
    /// binary by binary. A hurried record that still fails is confirmed by
    /// a run with the whole grace, whose verdict counts.
    fn resolve_singletons(&self, mut held: Vec<Held>, made: &[Made]) -> Vec<Held> {
        let context = self.context;
        if held.is_empty() {
            return held;
        }
        let waker = Waker::new().expect("a pipe for the singleton runs");
        held.sort_by_key(|record| record.index);
        let mut by_binary: Vec<Vec<Held>> = Vec::new();
        for record in held {
            match by_binary.iter_mut().find(|group| group[0].record.binary == record.record.binary) {
                Some(group) => group.push(record),
                None => by_binary.push(vec![record]),
            }
        }
        let mut resolved = Vec::new();
        let mut to_confirm = Vec::new();
        for group in by_binary {
            let findings = singleton::resolve(context, &waker, self.cases, &group, made, self.next_serial, self.jobs);
            for (mut record, finding) in group.into_iter().zip(findings) {
                singleton::move_singletons(&mut record.record, &finding.shared);
                if record.hurried
                    && record.record.outcome.is_failure()
                    && !singleton::all_lasting(&record.record, &finding)
                {
                    to_confirm.push((resolved.len(), finding.shared));
                }
                resolved.push(record);
            }
        }
        self.confirm(&mut resolved, to_confirm);
        resolved
    }

    /// Runs again, `jobs` at a time and with the whole grace, the tests
    /// whose settling was hurried and that still fail; their verdicts count.
    fn confirm(&self, resolved: &mut [Held], to_confirm: Vec<(usize, singleton::Shared)>) {
        let context = self.context;
        let next = AtomicUsize::new(0);
        let confirmed: std::sync::Mutex<Vec<(usize, TestRecord)>> = Default::default();
        let (cases, resolved_view, to_confirm) = (self.cases, &*resolved, &to_confirm);
        std::thread::scope(|scope| {
            for _ in 0..self.jobs.max(1).min(to_confirm.len()) {
                scope.spawn(|| {
                    let waker = Waker::new().expect("a pipe for the worker");
                    while let Some((slot, shared)) = to_confirm.get(next.fetch_add(1, Ordering::SeqCst)) {
                        if context.supervisor.interrupted().is_some() {
                            return;
                        }
                        let case = &cases[resolved_view[*slot].index];
                        let args = libtest_args(context, case);
                        if let Ok(Some((mut record, _))) = run_test(context, &waker, case, &args, Settle::Full) {
                            context.policy.apply(&mut record);
                            singleton::move_singletons(&mut record, shared);
                            confirmed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((*slot, record));
                        }
                    }
                });
            }
        });
        for (slot, record) in confirmed.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            resolved[slot].record = record;
        }
    }

    /// One worker: takes the next test until none is left (or the run stopped).
    fn worker(&self, process_cases: &[usize], next: &AtomicUsize, sender: &mpsc::Sender<Finished>) {
        let context = self.context;
        let waker = Waker::new().expect("a pipe for the worker");
        let settle = if context.detect_singletons.contains(&true) { Settle::SkipLasting } else { Settle::Full };
        loop {
            if self.stopped() {
                return;
            }
            let position = next.fetch_add(1, Ordering::SeqCst);
            let Some(&index) = process_cases.get(position) else { return };
            let case = &self.cases[index];
            // Under fail-fast, a binary's first test waits until the binaries
            // before it are judged (their singletons told apart): a leak
            // there stops the run before this one starts.
            if self.fail_fast && position > 0 && self.cases[process_cases[position - 1]].binary.id != case.binary.id {
                self.judged.wait_for(self.binary_rank(process_cases, position), || self.stopped());
                if self.stopped() {
                    return;
                }
            }
            let record = if case.ignored {
                Some((ignored_record(case), false))
            } else {
                match run_test(context, &waker, case, &libtest_args(context, case), settle) {
                    Ok(record) => record,
                    Err(error) => Some((tool_error_record(case, &error), false)),
                }
            };
            if let Some((mut record, hurried)) = record {
                context.policy.apply(&mut record);
                // A leak that may be a singleton is judged after the group runs.
                if singleton::is_candidate(context, &record) {
                    if sender.send(Finished::Held(Held { index, record, hurried })).is_err() {
                        return;
                    }
                    continue;
                }
                // Decided here, not by the receiver: the next test must not
                // start after a failure.
                if self.fail_fast && record.outcome.is_failure() {
                    self.stop.store(true, Ordering::SeqCst);
                }
                if sender.send(Finished::Final(index, record)).is_err() {
                    return;
                }
            }
        }
    }
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
