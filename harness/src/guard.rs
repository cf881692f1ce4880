//! Checking a piece of code in-process: snapshot `/proc/self` and the heap
//! before, run it, compare after.
//!
//! The check is only meaningful when nothing else runs in the process at the
//! same time (see [`crate::isolation`]); `#[leakcheck::test]` and the
//! harness take care of that.

use std::io;

use crate::alloc::{heap_usage, HeapUsage};
use crate::diff::{mark_unnamed_threads, settle_until, Baseline, Delta};
use crate::options::{Judgement, Kind, Options};
use crate::record::Leak;
use crate::snapshot;

/// A baseline taken by [`Guard::start`]; [`Guard::finish`] compares with it.
#[derive(Debug)]
pub struct Guard {
    pid: i32,
    baseline: Baseline,
    heap: Option<HeapUsage>,
    /// Name of the thread the checked code runs on: threads it starts
    /// without a name carry it.
    test_thread: Option<String>,
}

/// What [`Guard::finish`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finding {
    /// Failing and allowed leaks.
    pub judgement: Judgement,
    /// Kinds that could not be checked (`heap` without [`crate::Alloc`]).
    pub unchecked: Vec<String>,
    /// fds of the baseline that the checked code closed.
    pub closed_fds: Vec<i32>,
}

impl Guard {
    /// Takes the baseline: every fd, thread and child of this process, and
    /// the live heap. The heap is read last, so the baseline's own memory is
    /// part of it.
    pub fn start() -> io::Result<Guard> {
        Guard::start_with(std::thread::current().name().map(str::to_owned))
    }

    /// Like [`Guard::start`], for code that runs on another thread, named
    /// `test_thread` (threads it starts without a name carry that name).
    pub fn start_for_thread(test_thread: &str) -> io::Result<Guard> {
        Guard::start_with(Some(test_thread.to_owned()))
    }

    fn start_with(test_thread: Option<String>) -> io::Result<Guard> {
        let pid = std::process::id() as i32;
        let baseline = Baseline::of(&snapshot::take(pid)?);
        // Last, so everything the guard itself holds is in the baseline.
        let heap = heap_usage();
        Ok(Guard { pid, baseline, heap, test_thread })
    }

    /// Compares the process with the baseline, settling for up to the
    /// options' grace, and applies the options' allow rules.
    pub fn finish(self, options: &Options) -> io::Result<Finding> {
        self.compare(options, true)
    }

    /// Like [`Guard::finish`] for code that panicked: the heap is not judged
    /// (a panic fills std's process-wide backtrace and symbol caches, memory
    /// that is not the test's to free) and is listed as unchecked.
    pub fn finish_after_panic(self, options: &Options) -> io::Result<Finding> {
        self.compare(options, false)
    }

    fn compare(self, options: &Options, judge_heap: bool) -> io::Result<Finding> {
        let grace = options.grace();
        let mut leaks = Vec::new();
        let mut unchecked = Vec::new();
        // Heap first, before this function allocates anything it keeps.
        let heap = if judge_heap { self.heap } else { None };
        match (heap, options.checks(Kind::Heap)) {
            (Some(before), true) => {
                let start = std::time::Instant::now();
                let mut pause = std::time::Duration::from_millis(1);
                let grown = loop {
                    let now = heap_usage().unwrap_or(before);
                    let grown = (now.bytes - before.bytes, now.blocks - before.blocks);
                    if (grown.0 <= 0 && grown.1 <= 0) || start.elapsed() >= grace {
                        break grown;
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                };
                if grown.0 > 0 || grown.1 > 0 {
                    leaks.push(Leak::Heap {
                        bytes: grown.0.max(0) as u64,
                        blocks: grown.1.max(0) as u64,
                        indirect: false,
                        sites: Vec::new(),
                    });
                }
            }
            (None, true) => unchecked.push("heap".to_owned()),
            (_, false) => {}
        }
        // Leaks the options allow will not go away by waiting: stop then.
        let pid = self.pid;
        let all_allowed = |delta: &Delta| options.judge(delta.clone().into_leaks(pid)).leaks.is_empty();
        let take = || snapshot::take_since(pid, Some(&self.baseline));
        let delta = settle_until(grace, || Ok(Delta::between(&self.baseline, take()?)), all_allowed)?;
        let closed_fds = delta.closed.clone();
        let mut found = delta.into_leaks(self.pid);
        if let Some(name) = &self.test_thread {
            mark_unnamed_threads(&mut found, name);
        }
        leaks.splice(0..0, found);
        Ok(Finding { judgement: options.judge(leaks), unchecked, closed_fds })
    }
}

/// Repeat mode's verdict over the measured runs (CPython regrtest's rule): a
/// kind leaks only if every run leaked it (reported from the last run);
/// a kind that leaked in some runs only oscillates, and comes back as
/// warnings.
pub fn combine_runs(findings: Vec<Finding>) -> (Finding, Vec<Leak>) {
    let runs = findings.len();
    let mut combined = Finding::default();
    let mut warnings = Vec::new();
    for kind in [Kind::Fd, Kind::Thread, Kind::Child, Kind::Heap] {
        let of_kind = |finding: &Finding| -> Vec<Leak> {
            finding.judgement.leaks.iter().filter(|leak| leak.leak_kind() == kind).cloned().collect()
        };
        let leaking_runs = findings.iter().filter(|finding| !of_kind(finding).is_empty()).count();
        let last = findings.iter().rev().map(of_kind).find(|leaks| !leaks.is_empty()).unwrap_or_default();
        if leaking_runs == runs && runs > 0 {
            combined.judgement.leaks.extend(last);
        } else {
            warnings.extend(last);
        }
    }
    if let Some(last) = findings.last() {
        combined.judgement.allowed = last.judgement.allowed.clone();
        combined.closed_fds = last.closed_fds.clone();
    }
    for finding in &findings {
        for kind in &finding.unchecked {
            if !combined.unchecked.contains(kind) {
                combined.unchecked.push(kind.clone());
            }
        }
    }
    (combined, warnings)
}

/// Runs `body` between a baseline and a check with default options.
///
/// For code that cannot use `#[leakcheck::test]`. Only meaningful when no
/// other test runs in the process at the same time.
///
/// ```no_run
/// let (value, finding) = leakcheck::check(|| 2 + 2).unwrap();
/// assert_eq!(value, 4);
/// assert!(finding.judgement.leaks.is_empty(), "{:?}", finding.judgement.leaks);
/// ```
pub fn check<R>(body: impl FnOnce() -> R) -> io::Result<(R, Finding)> {
    let guard = Guard::start()?;
    let value = body();
    let finding = guard.finish(&Options::default())?;
    Ok((value, finding))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(leaks: Vec<Leak>) -> Finding {
        Finding { judgement: Judgement { leaks, allowed: vec![] }, unchecked: vec![], closed_fds: vec![] }
    }

    #[test]
    fn a_kind_leaks_in_repeat_mode_only_if_every_run_leaked_it() {
        let fd =
            |n: i32| Leak::Fd { fd: n, target: "/dev/null".into(), detail: "character device".into(), sites: vec![] };
        let heap = Leak::Heap { bytes: 64, blocks: 1, indirect: false, sites: vec![] };
        let (combined, warnings) =
            combine_runs(vec![finding(vec![fd(3), heap.clone()]), finding(vec![fd(4)]), finding(vec![fd(5)])]);
        assert_eq!(combined.judgement.leaks, vec![fd(5)], "grew on every run: reported from the last");
        assert_eq!(warnings, vec![heap], "grew once only: oscillating, a warning");
        let (clean, warnings) = combine_runs(vec![finding(vec![]), finding(vec![])]);
        assert!(clean.judgement.leaks.is_empty() && warnings.is_empty());
    }
}
