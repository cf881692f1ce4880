//! Telling process-wide singletons from per-test leaks.
//!
//! A library may make a resource once per process and keep it: tokio's
//! signal driver (a unix socket pair), rayon's global pool, a self-pipe. Run
//! one test per process and every test that touches it "leaks" it. Run the
//! tests that leak the same *shape* of resource (kind plus normalised
//! identity, see [`shape_of`]) **together** in one process and count: a
//! singleton is left once however many tests touched it; a per-test leak
//! grows with the number of tests.
//!
//! For each shape shared by two or more leaking tests of a binary, the group
//! of those tests runs together (`NAME... --exact --test-threads=1`, the same
//! exit probe). If the group leaves no more of the shape than the *smallest*
//! count any member left alone, every member's leaks of that shape are one
//! shared thing: singletons. Otherwise the group is split (first by the count
//! each member left alone, then in halves, in name order) and the parts are
//! tried again, so two different singletons of one shape and per-test leaks
//! of that shape come apart. Each shape has a budget of group runs that grows
//! with the log of its tests, never with their number; a part left over
//! keeps its per-test verdicts. A group whose run fails, times out or cannot
//! be probed is inconclusive: its tests keep their verdicts.
//!
//! Soundness: a test is cleared only by a group run that shows its leaks of
//! that shape were shared; a test that also leaks more of the shape than the
//! singleton accounts for (its own socket pair next to tokio's) keeps the
//! surplus, the highest-numbered fds (or newest threads, children) first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use leakcheck::{Leak, Outcome, TestRecord};

use super::context::{RunContext, Settle, Waker};
use super::{spawn, watch};
use crate::list::TestCase;
use leakcheck::shape::{shape_counts, shape_of, take_by_shape};

/// A record held back from the report until its binary's singletons are known.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) index: usize,
    pub(super) record: TestRecord,
    /// Its settling skipped lasting shapes (see `watch::Settle`).
    pub(super) hurried: bool,
}

/// Whether `record` has a leak that could be a singleton: the test passed
/// apart from its leaks, and some leak is of a kind the plan detects.
pub(super) fn is_candidate(context: &RunContext, record: &TestRecord) -> bool {
    record.outcome == Outcome::Leaked && record.leaks.iter().any(|leak| detected(context, leak))
}

fn kind_index(leak: &Leak) -> Option<usize> {
    match leak {
        Leak::Fd { .. } => Some(0),
        Leak::Thread { .. } => Some(1),
        Leak::Child { .. } => Some(2),
        Leak::Heap { .. } => None,
    }
}

/// Group runs at most per shape: 4 per halving level, 4·(1 + log2(tests)).
fn budget(tests: usize) -> usize {
    4 * (1 + (usize::BITS - tests.max(1).leading_zeros()) as usize)
}

/// Per test and shape: how many of its instances are a singleton's.
pub(super) type Shared = BTreeMap<String, usize>;

/// What the group runs showed of one held test.
#[derive(Debug, Default, Clone)]
pub(super) struct Finding {
    /// Instances of each shape that are a singleton's.
    pub(super) shared: Shared,
    /// Shapes whose every instance the test left also in a group run, where
    /// it had the rest of the group's run and the grace to go away: lasting,
    /// so a hurried verdict on them needs no confirmation.
    pub(super) lasting: BTreeSet<String>,
}

/// Runs the group runs for the held records of one binary; returns, for
/// each, how many of its leaks of each shape are shown to be singletons
/// (see [`move_singletons`]).
pub(super) fn resolve(
    context: &RunContext,
    waker: &Waker,
    cases: &[TestCase],
    held: &[Held],
    serial: &AtomicUsize,
    jobs: usize,
) -> Vec<Finding> {
    let Some(first) = held.first() else { return Vec::new() };
    let binary = cases[first.index].binary.clone();
    let mut runner = GroupRunner { context, waker, binary, serial, runs: HashMap::new() };
    // Each test's counts per shape, alone.
    let alone: Vec<BTreeMap<String, usize>> = held
        .iter()
        .map(|held| {
            let name = held.record.name.as_str();
            let leaks: Vec<Leak> = held.record.leaks.iter().filter(|leak| detected(context, leak)).cloned().collect();
            shape_counts(&leaks, &[name])
        })
        .collect();
    let mut shapes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (member, counts) in alone.iter().enumerate() {
        for shape in counts.keys() {
            shapes.entry(shape.as_str()).or_default().push(member);
        }
    }
    // Per test and shape: how many instances are the singleton's.
    let mut findings: Vec<Finding> = vec![Finding::default(); held.len()];
    let names: Vec<&str> = held.iter().map(|held| held.record.name.as_str()).collect();
    for (shape, members) in shapes {
        if members.len() < 2 {
            continue;
        }
        let mut search = ShapeSearch {
            shape,
            alone: &alone,
            names: &names,
            budget: budget(members.len()),
            lasting: Vec::new(),
            excluded: BTreeSet::new(),
        };
        for (member, count) in search.resolve(&mut runner, members, jobs) {
            findings[member].shared.insert(shape.to_owned(), count);
        }
        for member in search.lasting {
            findings[member].lasting.insert(shape.to_owned());
        }
    }
    findings
}

/// The group runs of one shape.
struct ShapeSearch<'a> {
    shape: &'a str,
    /// Each held test's counts per shape, alone.
    alone: &'a [BTreeMap<String, usize>],
    names: &'a [&'a str],
    /// Group runs left for this shape.
    budget: usize,
    /// Members shown to share nothing of this shape with the others of a
    /// group run (it left the sum of their counts): their instances lasted.
    lasting: Vec<usize>,
    /// Members that failed in a group run: left out of the next ones.
    excluded: BTreeSet<usize>,
}

impl ShapeSearch<'_> {
    fn count(&self, member: usize) -> usize {
        self.alone[member].get(self.shape).copied().unwrap_or(0)
    }

    /// What the members left together (`None`: inconclusive or no budget).
    /// Runs `members` together (less any that failed in an earlier group
    /// run: a test that cannot share a process keeps its verdict, and is
    /// left out of the retry); returns the members run and what they left.
    fn run(&mut self, runner: &mut GroupRunner<'_>, members: &[usize], least: usize) -> Option<(Vec<usize>, usize)> {
        loop {
            let group: Vec<usize> = members.iter().copied().filter(|member| !self.excluded.contains(member)).collect();
            if group.len() < least || self.budget == 0 {
                return None;
            }
            self.budget -= 1;
            let names: Vec<&str> = group.iter().map(|&member| self.names[member]).collect();
            match runner.run(&names) {
                GroupRun::Left(left) => return Some((group, left.get(self.shape).copied().unwrap_or(0))),
                GroupRun::Failed(failing) => {
                    let before = self.excluded.len();
                    self.excluded.extend(
                        group.iter().copied().filter(|&member| failing.contains(&self.names[member].to_owned())),
                    );
                    if self.excluded.len() == before {
                        return None;
                    }
                }
                GroupRun::Inconclusive(_) => return None,
            }
        }
    }

    /// The members shown to share a singleton, with how many of their
    /// instances are the singleton's.
    ///
    /// First, groups that leave no more than their smallest member alone
    /// are singleton groups (split and retried otherwise). Then each member
    /// left over is tried with one member of each singleton group (its
    /// reference): a part that adds nothing to the reference's count shares
    /// its singleton; a part that adds all its own count shares nothing with
    /// it; anything between is split.
    fn resolve(&mut self, runner: &mut GroupRunner<'_>, members: Vec<usize>, jobs: usize) -> Vec<(usize, usize)> {
        let mut cleared: Vec<(usize, usize)> = Vec::new();
        let mut references: Vec<(usize, usize)> = Vec::new();
        let mut work = vec![members.clone()];
        // A group run costs the sum of its tests' times, in one process:
        // with more than one job, the first groups are `jobs` parts of the
        // members, run at once (each can show the singleton by itself).
        if jobs > 1 && members.len() >= 2 * jobs {
            let size = members.len().div_ceil(jobs);
            work = members.chunks(size).map(<[usize]>::to_vec).collect();
            let names: Vec<Vec<&str>> =
                work.iter().map(|part| part.iter().map(|&member| self.names[member]).collect()).collect();
            runner.prefetch(&names, jobs);
        }
        while let Some(group) = work.pop() {
            let Some((group, left)) = self.run(runner, &group, 2) else { continue };
            let smallest = group.iter().map(|&member| self.count(member)).min().unwrap_or(0);
            let sum: usize = group.iter().map(|&member| self.count(member)).sum();
            if left >= sum {
                // Nothing of the shape shared within the group: no split
                // can find a singleton here (the references may, below).
                self.lasting.extend(&group);
            } else if left > smallest {
                work.extend(split(&group, |member| self.count(member)));
            } else if left > 0 {
                cleared.extend(group.iter().map(|&member| (member, left.min(self.count(member)))));
                references.push((group[0], left));
            }
        }
        for (reference, singleton) in references {
            let unresolved: Vec<usize> = members
                .iter()
                .copied()
                .filter(|member| cleared.iter().all(|(done, _)| done != member) && !self.excluded.contains(member))
                .collect();
            let mut work = vec![unresolved];
            while let Some(part) = work.pop() {
                if part.is_empty() {
                    continue;
                }
                let mut group = part.clone();
                group.push(reference);
                group.sort_unstable();
                let Some((group, left)) = self.run(runner, &group, 2) else { continue };
                if !group.contains(&reference) {
                    break;
                }
                let part: Vec<usize> = group.into_iter().filter(|&member| member != reference).collect();
                let own: usize = part.iter().map(|&member| self.count(member)).sum();
                if left <= singleton {
                    cleared.extend(part.iter().map(|&member| (member, singleton.min(self.count(member)))));
                } else if left >= singleton + own {
                    self.lasting.extend(&part);
                } else if part.len() > 1 {
                    let (first, second) = part.split_at(part.len() / 2);
                    work.extend([first.to_vec(), second.to_vec()]);
                }
            }
        }
        cleared
    }
}

fn detected(context: &RunContext, leak: &Leak) -> bool {
    kind_index(leak).is_some_and(|kind| context.detect_singletons[kind])
}

/// The parts to try next: members with the smallest count apart from the
/// others when counts differ, else two halves in name order.
fn split(group: &[usize], count: impl Fn(usize) -> usize) -> Vec<Vec<usize>> {
    let smallest = group.iter().map(|&member| count(member)).min().unwrap_or(0);
    let (low, high): (Vec<usize>, Vec<usize>) = group.iter().partition(|&&member| count(member) == smallest);
    if !low.is_empty() && !high.is_empty() {
        return vec![low, high];
    }
    let (left, right) = group.split_at(group.len() / 2);
    vec![left.to_vec(), right.to_vec()]
}

/// Moves `shared` instances of each shape (the lowest fds, oldest threads
/// and children: made first, as a library's start-up makes them) from the
/// record's leaks to its singletons.
pub(super) fn move_singletons(record: &mut TestRecord, shared: &Shared) {
    if shared.is_empty() {
        return;
    }
    let name = record.name.clone();
    let (singletons, own) = take_by_shape(std::mem::take(&mut record.leaks), shared, &[&name]);
    record.singletons.extend(singletons);
    record.leaks = own;
    if record.leaks.is_empty() && record.outcome == Outcome::Leaked {
        record.outcome = Outcome::Passed;
        record.output = None;
    }
}

/// Whether every leak left in `record` is of a shape the group runs showed
/// lasting for it.
pub(super) fn all_lasting(record: &TestRecord, finding: &Finding) -> bool {
    record
        .leaks
        .iter()
        .all(|leak| shape_of(leak, &[&record.name]).is_some_and(|shape| finding.lasting.contains(&shape)))
}

/// Runs groups of one binary's tests together, each group once.
struct GroupRunner<'a> {
    context: &'a RunContext,
    waker: &'a Waker,
    binary: Arc<crate::cargo::TestBinary>,
    /// Serial numbers for the group runs' markers, after the tests' own.
    serial: &'a AtomicUsize,
    /// Member names -> what the run showed.
    runs: HashMap<Vec<String>, GroupRun>,
}

/// What one group run showed.
#[derive(Debug, Clone)]
enum GroupRun {
    /// It passed: instances of each shape left at its exit.
    Left(BTreeMap<String, usize>),
    /// These tests failed in it (libtest's `test NAME ... FAILED` lines).
    Failed(Vec<String>),
    /// It timed out, was interrupted, crashed or could not be probed: why.
    Inconclusive(String),
}

impl GroupRunner<'_> {
    /// What the tests `names` left, run together; `None` when the run
    /// failed, timed out, was interrupted or could not be probed.
    fn run(&mut self, names: &[&str]) -> GroupRun {
        let key: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        if let Some(known) = self.runs.get(&key) {
            return known.clone();
        }
        let result = self.run_once(names);
        self.runs.insert(key, result.clone());
        result
    }

    fn site(&self) -> GroupSite<'_> {
        GroupSite { context: self.context, binary: &self.binary, serial: self.serial }
    }

    fn run_once(&mut self, names: &[&str]) -> GroupRun {
        run_group(self.site(), self.waker, names)
    }

    /// Runs the groups `groups` at once, `jobs` at a time, and keeps what
    /// each showed for [`GroupRunner::run`].
    fn prefetch(&mut self, groups: &[Vec<&str>], jobs: usize) {
        let site = self.site();
        let known = |names: &Vec<&str>| {
            self.runs.contains_key(&names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>())
        };
        let groups: Vec<Vec<&str>> = groups.iter().filter(|names| !known(names)).cloned().collect();
        let groups = &groups;
        let next = AtomicUsize::new(0);
        let results = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..jobs.min(groups.len()) {
                scope.spawn(|| {
                    let Ok(waker) = Waker::new() else { return };
                    while let Some(names) = groups.get(next.fetch_add(1, Ordering::SeqCst)) {
                        let result = run_group(site, &waker, names);
                        results.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((names.clone(), result));
                    }
                });
            }
        });
        for (names, result) in results.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            let key: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
            self.runs.insert(key, result);
        }
    }
}

/// What every group run of one binary shares.
#[derive(Debug, Clone, Copy)]
struct GroupSite<'a> {
    context: &'a RunContext,
    binary: &'a Arc<crate::cargo::TestBinary>,
    /// Serial numbers for the group runs' markers, after the tests' own.
    serial: &'a AtomicUsize,
}

/// One group run: the tests `names` of `binary` together in one process,
/// `--test-threads=1`, under the exit probe, settled with the whole grace.
fn run_group(site: GroupSite<'_>, waker: &Waker, names: &[&str]) -> GroupRun {
    let started = std::time::Instant::now();
    let result = run_group_once(site, waker, names);
    let GroupSite { context, binary, .. } = site;
    // Inconclusive is a fallback (the leaks stay leaks): always said.
    let inconclusive = matches!(result, GroupRun::Inconclusive(_)) && context.supervisor.interrupted().is_none();
    if context.verbose || inconclusive {
        let what = match &result {
            GroupRun::Left(left) => {
                let shapes: Vec<String> = left.iter().map(|(shape, count)| format!("{count} x `{shape}`")).collect();
                format!("left {}", if shapes.is_empty() { "nothing".to_owned() } else { shapes.join(", ") })
            }
            GroupRun::Failed(failing) => format!("{} failed (left out of the next group)", failing.join(", ")),
            GroupRun::Inconclusive(why) => {
                format!("inconclusive: {why}; their shared shapes are judged as each test's own leaks")
            }
        };
        eprintln!(
            "       Group {}: {} tests together: {what} ({:.3}s)",
            binary.id,
            names.len(),
            started.elapsed().as_secs_f64()
        );
    }
    result
}

fn run_group_once(site: GroupSite<'_>, waker: &Waker, names: &[&str]) -> GroupRun {
    let GroupSite { context, binary, serial } = site;
    if context.supervisor.interrupted().is_some() {
        return GroupRun::Inconclusive("interrupted".into());
    }
    let case = TestCase {
        binary: binary.clone(),
        name: format!("{} tests together", names.len()),
        ignored: false,
        serial: serial.fetch_add(1, Ordering::SeqCst),
    };
    let mut args: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    args.extend(["--exact", "--nocapture", "--test-threads=1"].map(String::from));
    args.extend(context.test_args.iter().cloned());
    let mut process = match spawn::start(context, waker, &case, &args, spawn::Launch::Group) {
        Ok(process) => process,
        Err(error) => return GroupRun::Inconclusive(format!("could not run ({error})")),
    };
    process.settle = Settle::Full;
    let ended = watch::watch(context, waker, &case, &mut process);
    let finished = ended.exit_view.as_ref().is_some_and(|view| view.by_main_thread);
    let _ = std::fs::remove_file(&process.record_file);
    if ended.timed_out {
        return GroupRun::Inconclusive(format!("ran past the --timeout of {:?}", context.timeout));
    }
    if ended.exit_view.is_none() {
        return GroupRun::Inconclusive(format!("no exit snapshot ({})", ended_how(ended.status)));
    }
    if ended.status == super::reaper::ExitStatus::Code(101) {
        let failing = failed_tests(&process.stdout.into_text(), names);
        return if failing.is_empty() {
            GroupRun::Inconclusive("it failed, and libtest named no failing test".into())
        } else {
            GroupRun::Failed(failing)
        };
    }
    if !finished || ended.status != super::reaper::ExitStatus::Code(0) {
        return GroupRun::Inconclusive(format!("libtest did not finish ({})", ended_how(ended.status)));
    }
    GroupRun::Left(shape_counts(&ended.leaks, names))
}

fn ended_how(status: super::reaper::ExitStatus) -> String {
    match status {
        super::reaper::ExitStatus::Code(code) => format!("status {code}"),
        super::reaper::ExitStatus::Signal(signal) => format!("killed by {signal}"),
    }
}

/// The tests of `names` that libtest's output says failed: its closing
/// `failures:` list (one indented name a line), or `test NAME ... FAILED`.
fn failed_tests(output: &str, names: &[&str]) -> Vec<String> {
    let listed = output.rsplit_once("\nfailures:\n").map_or("", |(_, list)| list);
    let mut failing: Vec<String> = listed
        .lines()
        .map_while(|line| line.strip_prefix("    "))
        .chain(output.lines().filter_map(|line| line.strip_prefix("test ")?.strip_suffix(" ... FAILED")))
        .filter(|name| names.contains(name))
        .map(str::to_owned)
        .collect();
    failing.sort();
    failing.dedup();
    failing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(fd: i32, target: &str, detail: &str) -> Leak {
        Leak::Fd { fd, target: target.into(), detail: detail.into(), sites: vec![] }
    }

    #[test]
    fn failing_members_are_read_from_libtests_closing_list() {
        let output = "running 3 tests\ntest a ... ok\ntest b ... thread panicked\nFAILED\n\nfailures:\n\n---- b stdout ----\n\n\nfailures:\n    b\n    c\n\ntest result: FAILED.";
        assert_eq!(failed_tests(output, &["a", "b", "c"]), ["b", "c"]);
        assert_eq!(failed_tests("test x ... FAILED\n", &["x"]), ["x"]);
    }

    #[test]
    fn a_group_splits_by_count_then_in_halves() {
        let counts = [2, 2, 4, 2];
        assert_eq!(split(&[0, 1, 2, 3], |member| counts[member]), vec![vec![0, 1, 3], vec![2]]);
        assert_eq!(split(&[0, 1, 3], |member| counts[member]), vec![vec![0], vec![1, 3]]);
    }

    #[test]
    fn only_the_shared_instances_move_and_the_test_keeps_its_own() {
        let mut record = TestRecord::new("bin", "t", Outcome::Leaked);
        record.leaks = vec![
            fd(7, "socket:[3]", "unix stream (connected, unnamed)"),
            fd(5, "socket:[1]", "unix stream (connected, unnamed)"),
            fd(6, "socket:[2]", "unix stream (connected, unnamed)"),
            fd(8, "/tmp/x", "regular file"),
        ];
        let shared = BTreeMap::from([("fd unix stream".to_owned(), 2)]);
        move_singletons(&mut record, &shared);
        let fds = |leaks: &[Leak]| -> Vec<i32> {
            leaks.iter().filter_map(|leak| if let Leak::Fd { fd, .. } = leak { Some(*fd) } else { None }).collect()
        };
        assert_eq!(fds(&record.singletons), [5, 6]);
        assert_eq!(fds(&record.leaks), [7, 8]);
        assert_eq!(record.outcome, Outcome::Leaked);
    }

    #[test]
    fn a_test_whose_only_leaks_are_singletons_passes() {
        let mut record = TestRecord::new("bin", "t", Outcome::Leaked);
        record.leaks = vec![fd(5, "socket:[1]", "unix stream (connected, unnamed)")];
        move_singletons(&mut record, &BTreeMap::from([("fd unix stream".to_owned(), 1)]));
        assert_eq!(record.outcome, Outcome::Passed);
        assert!(record.leaks.is_empty());
    }

    #[test]
    fn the_budget_grows_with_the_log_of_the_tests() {
        assert_eq!(budget(2), 12);
        assert_eq!(budget(300), 40);
        assert!(budget(100_000) < 80);
    }
}
