//! Telling process-wide singletons from per-test leaks.
//!
//! A library may make a resource once per process and keep it: tokio's
//! signal driver (a unix socket pair), rayon's global pool, a self-pipe. Run
//! one test per process and every test that touches it "leaks" it. Run the
//! tests that leak the same *shape* of resource (kind plus normalised
//! identity, see [`shape_of`]) **together** in one process and count what
//! each makes: a singleton is made once however many tests touched it (the
//! later ones find it there); a per-test leak is made by every test, however
//! many of its instances go away later (a pool's workers exiting 30 s after
//! its test would read as one survivor at the process's exit).
//!
//! What a test made is what it left at its own end, seen at libtest's
//! boundaries as in a batch ([`boundary`]). Batches show it first
//! ([`super::batch::Made`]): where two or more of the tests leaking a shape
//! ran in one batch process and made together no more of it than the
//! smallest count alone, they found it there, a singleton, with no group
//! run. For each shape still open and shared by two or more leaking tests
//! of a binary, the group of those tests runs together (`NAME... --exact
//! --test-threads=1`). If the group makes no more of the shape than the
//! *smallest* count any member left alone, every member's leaks of that
//! shape are one shared thing: singletons. Otherwise the group is split
//! (first by the count each member left alone, then in halves, in name
//! order) and the parts are tried again, so two different singletons of one
//! shape and per-test leaks of that shape come apart. Each shape has a
//! budget of group runs that grows with the log of its tests, never with
//! their number; a part left over keeps its per-test verdicts. A group
//! whose run fails, times out or cannot be probed is inconclusive: its
//! tests keep their verdicts.
//!
//! Soundness: a test is cleared only by a run that shows its leaks of
//! that shape were shared; a test that also leaks more of the shape than the
//! singleton accounts for (its own socket pair next to tokio's) keeps the
//! surplus, the highest-numbered fds (or newest threads, children) first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use leakcheck::{Leak, Outcome, TestRecord};

use super::batch::Made;
use super::context::{RunContext, Waker};
use super::{boundary, spawn};
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
    record.outcome == Outcome::Leaked && record.leaks.iter().any(|leak| context.detects_singletons_of(leak))
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
    /// Shapes whose every instance the test made also in a group run and
    /// left at its exit, where it had the rest of the group's run and the
    /// grace to go away: lasting, so a hurried verdict on them needs no
    /// confirmation.
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
    made: &[Made],
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
            let leaks: Vec<Leak> =
                held.record.leaks.iter().filter(|leak| context.detects_singletons_of(leak)).cloned().collect();
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
        let count = |member: usize| alone[member].get(shape).copied().unwrap_or(0);
        let seed = from_batches(made, shape, &members, |member| held[member].index, count);
        let mut search = ShapeSearch {
            shape,
            alone: &alone,
            names: &names,
            budget: budget(members.len()),
            lasting: Vec::new(),
            excluded: BTreeSet::new(),
        };
        for (member, count) in search.resolve(&mut runner, members, seed, jobs) {
            findings[member].shared.insert(shape.to_owned(), count);
        }
        for member in search.lasting {
            findings[member].lasting.insert(shape.to_owned());
        }
    }
    findings
}

/// What the batches showed of one shape, as a group run shows it: each
/// batch process in which two or more `members` passed is a group run of
/// them, each making what it left at its own end. Members that together
/// made no more than the smallest count alone found the thing there: one
/// shared thing, cleared, and a reference for the others. (What else a
/// batch shows is not used: its tests are dealt round-robin, which keeps
/// the tests that share a singleton apart.)
fn from_batches(
    made: &[Made],
    shape: &str,
    members: &[usize],
    case_of: impl Fn(usize) -> usize,
    count: impl Fn(usize) -> usize,
) -> Seed {
    let mut seed = Seed::default();
    for process in made {
        let group: Vec<(usize, usize)> = process
            .iter()
            .filter_map(|(case, shapes)| {
                let member = members.iter().copied().find(|&member| case_of(member) == *case)?;
                Some((member, shapes.get(shape).copied().unwrap_or(0)))
            })
            .filter(|&(member, _)| seed.cleared.iter().all(|&(done, _)| done != member))
            .collect();
        let left: usize = group.iter().map(|&(_, made)| made).sum();
        let smallest = group.iter().map(|&(member, _)| count(member)).min().unwrap_or(0);
        if group.len() >= 2 && left > 0 && left <= smallest {
            seed.cleared.extend(group.iter().map(|&(member, _)| (member, left.min(count(member)))));
            seed.references.push((group[0].0, left));
        }
    }
    seed
}

/// What the search of one shape starts from.
#[derive(Debug, Default)]
struct Seed {
    /// Members shown to share a singleton, with their instances of it.
    cleared: Vec<(usize, usize)>,
    /// One member of each such group, with the singleton's instances.
    references: Vec<(usize, usize)>,
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

    /// Runs `members` together (less any that failed in an earlier group
    /// run: a test that cannot share a process keeps its verdict, and is
    /// left out of the retry); returns the members run, how many of the
    /// shape they made, and how many of those were left at the exit.
    /// `None`: inconclusive or no budget.
    fn run(
        &mut self,
        runner: &mut GroupRunner<'_>,
        members: &[usize],
        least: usize,
    ) -> Option<(Vec<usize>, usize, usize)> {
        loop {
            let group: Vec<usize> = members.iter().copied().filter(|member| !self.excluded.contains(member)).collect();
            if group.len() < least || self.budget == 0 {
                return None;
            }
            self.budget -= 1;
            let names: Vec<&str> = group.iter().map(|&member| self.names[member]).collect();
            match runner.run(&names) {
                GroupRun::Passed { made, survived } => {
                    let of_shape = |counts: &BTreeMap<String, usize>| counts.get(self.shape).copied().unwrap_or(0);
                    return Some((group, of_shape(&made), of_shape(&survived)));
                }
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
    fn resolve(
        &mut self,
        runner: &mut GroupRunner<'_>,
        members: Vec<usize>,
        seed: Seed,
        jobs: usize,
    ) -> Vec<(usize, usize)> {
        let Seed { mut cleared, mut references } = seed;
        let open: Vec<usize> =
            members.iter().copied().filter(|member| cleared.iter().all(|(done, _)| done != member)).collect();
        let mut work = vec![open.clone()];
        // A group run costs the sum of its tests' times, in one process:
        // with more than one job, the first groups are `jobs` parts of the
        // members, run at once (each can show the singleton by itself).
        if jobs > 1 && open.len() >= 2 * jobs {
            let size = open.len().div_ceil(jobs);
            work = open.chunks(size).map(<[usize]>::to_vec).collect();
            let names: Vec<Vec<&str>> =
                work.iter().map(|part| part.iter().map(|&member| self.names[member]).collect()).collect();
            runner.prefetch(&names, jobs);
        }
        while let Some(group) = work.pop() {
            let Some((group, left, survived)) = self.run(runner, &group, 2) else { continue };
            let smallest = group.iter().map(|&member| self.count(member)).min().unwrap_or(0);
            let sum: usize = group.iter().map(|&member| self.count(member)).sum();
            if left >= sum {
                // Nothing of the shape shared within the group: no split
                // can find a singleton here (the references may, below).
                if survived >= sum {
                    self.lasting.extend(&group);
                }
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
                let Some((group, left, survived)) = self.run(runner, &group, 2) else { continue };
                if !group.contains(&reference) {
                    break;
                }
                let part: Vec<usize> = group.into_iter().filter(|&member| member != reference).collect();
                let own: usize = part.iter().map(|&member| self.count(member)).sum();
                if left <= singleton {
                    cleared.extend(part.iter().map(|&member| (member, singleton.min(self.count(member)))));
                } else if left >= singleton + own {
                    if survived >= singleton + own {
                        self.lasting.extend(&part);
                    }
                } else if part.len() > 1 {
                    let (first, second) = part.split_at(part.len() / 2);
                    work.extend([first.to_vec(), second.to_vec()]);
                }
            }
        }
        cleared
    }
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
    /// It passed: instances of each shape its tests made (left at their
    /// own ends, summed), and of those, the ones at its exit.
    Passed { made: BTreeMap<String, usize>, survived: BTreeMap<String, usize> },
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
            GroupRun::Passed { made, survived } => {
                let counts = |counts: &BTreeMap<String, usize>| {
                    let shapes: Vec<String> =
                        counts.iter().map(|(shape, count)| format!("{count} x `{shape}`")).collect();
                    if shapes.is_empty() {
                        "nothing".to_owned()
                    } else {
                        shapes.join(", ")
                    }
                };
                format!("made {}; at its exit {}", counts(made), counts(survived))
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
    let serial = serial.fetch_add(1, Ordering::SeqCst);
    let ended = match boundary::run_together(context, waker, binary, names, serial, spawn::Launch::Group, None) {
        Ok(ended) => ended,
        Err(why) => return GroupRun::Inconclusive(why),
    };
    if ended.timed_out {
        return GroupRun::Inconclusive(format!("ran past the --timeout of {:?}", context.timeout));
    }
    if ended.cut.is_some() {
        return GroupRun::Inconclusive(format!("it ended in a test ({})", ended_how(ended.status)));
    }
    if ended.ended.len() != names.len() {
        return GroupRun::Inconclusive(format!("{} of its {} tests were seen ending", ended.ended.len(), names.len()));
    }
    if !ended.failed.is_empty() {
        return GroupRun::Failed(ended.failed.iter().map(|&at| names[at].to_owned()).collect());
    }
    if !ended.finished || ended.status != super::reaper::ExitStatus::Code(0) {
        return GroupRun::Inconclusive(format!("libtest did not finish ({})", ended_how(ended.status)));
    }
    let Some(survived) = ended.survivors else {
        return GroupRun::Inconclusive("no exit snapshot".into());
    };
    // What each test made: what it left at its own end, whether or not it
    // went away later in the run.
    let mut made = BTreeMap::new();
    for (shape, count) in ended.left.iter().flat_map(|(_, shapes)| shapes) {
        *made.entry(shape.clone()).or_insert(0) += count;
    }
    GroupRun::Passed { made, survived }
}

fn ended_how(status: super::reaper::ExitStatus) -> String {
    match status {
        super::reaper::ExitStatus::Code(code) => format!("status {code}"),
        super::reaper::ExitStatus::Signal(signal) => format!("killed by {signal}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(fd: i32, target: &str, detail: &str) -> Leak {
        Leak::Fd { fd, target: target.into(), detail: detail.into(), sites: vec![] }
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
