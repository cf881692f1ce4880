//! When a forked child may run another test instead of exiting.
//!
//! A fork per test costs its page faults: `fork` does not copy the page
//! tables of the program's code, so every child faults in again whatever it
//! runs (about 130 faults, most of a clean test's cost; measured with `perf`
//! on 1,000 trivial tests). So a child whose test passed and left the
//! process as it found it takes the next test. "As it found it" means:
//! - the check found nothing: no fd, thread, child or heap byte left, none
//!   allowed, no baseline fd closed, nothing unchecked but the heap of a
//!   target without [`crate::Alloc`];
//! - the test did not panic (a panic fills std's caches and may poison locks);
//! - the environment, working directory and umask are unchanged;
//! - it reaped no child process (one of its children may have left an
//!   orphan, which only the group check after the child's exit can see), and
//!   `SIGCHLD` is not ignored (children would be reaped unseen).
//!
//! A leaking or failing test ends its child, so the next test starts from a
//! fresh fork. A resource-creating one-time initialisation (a lazy static
//! holding a thread, fd or heap; tokio's signal socket pair) is a singleton,
//! not a leak (see [`crate::one_time`]): the child is reused, and the
//! singleton is part of every later test's baseline. What carries over
//! from one clean test to the next is plain static data (a counter, a flag),
//! as in `cargo test`, where all tests share one process.
//! `LEAKCHECK_FORK_PER_TEST=1` (`cargo leakcheck --fork-per-test`) turns
//! this off: every test then gets a fresh fork.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use crate::record::{Outcome, TestRecord};

/// Turns reuse off when set to anything but `0`.
pub const FORK_PER_TEST_ENV: &str = "LEAKCHECK_FORK_PER_TEST";

/// The per-test marker variable, set by the child itself before each test
/// (so not a change the test made).
const MARKER_VAR: &str = crate::env_names::TEST_ID;

/// Whether children may be reused (the default).
pub(crate) fn enabled() -> bool {
    std::env::var_os(FORK_PER_TEST_ENV).is_none_or(|value| value == "0")
}

/// Whether `record` (of a test that did not panic) leaves nothing that
/// could change the next test's verdict.
pub(crate) fn record_is_clean(record: &TestRecord) -> bool {
    record.outcome == Outcome::Passed
        && record.leaks.is_empty()
        && record.allowed.is_empty()
        && record.warnings.is_empty()
        && record.closed_fds.is_empty()
        && record.unchecked.iter().all(|kind| kind == "heap")
}

/// The process-wide settings a test could change without leaking anything.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProcessState {
    environment: u64,
    cwd: Option<PathBuf>,
    umask: libc::mode_t,
    sigchld_ignored: bool,
    reaped_children: (i64, i64, i64, i64),
}

impl ProcessState {
    /// Reads the state. Only called between tests, when the child is
    /// single-threaded (the test thread was joined).
    pub(crate) fn read() -> ProcessState {
        let mut hasher = DefaultHasher::new();
        for (key, value) in std::env::vars_os().filter(|(key, _)| key != MARKER_VAR) {
            (key, value).hash(&mut hasher);
        }
        // SAFETY: umask cannot fail; the old mask is put back at once, and
        // no other thread runs that could create a file in between.
        let umask = unsafe {
            let umask = libc::umask(0o022);
            libc::umask(umask);
            umask
        };
        // SAFETY: sigaction with a null new action only reads the current one
        // into a zeroed struct we own; getrusage writes into one we own.
        let (sigchld_ignored, reaped_children) = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut action);
            let ignored = action.sa_sigaction == libc::SIG_IGN || action.sa_flags & libc::SA_NOCLDWAIT != 0;
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
            // Any reaped child adds at least a page fault.
            let reaped =
                (usage.ru_minflt, usage.ru_majflt, usage.ru_utime.tv_usec + usage.ru_stime.tv_usec, usage.ru_nvcsw);
            (ignored, reaped)
        };
        ProcessState {
            environment: hasher.finish(),
            cwd: std::env::current_dir().ok(),
            umask,
            sigchld_ignored,
            reaped_children,
        }
    }

    /// Whether a child in this state, unchanged since `before`, may run
    /// another test.
    pub(crate) fn allows_reuse_since(&self, before: &ProcessState) -> bool {
        self == before && !self.sigchld_ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Leak;

    #[test]
    fn only_a_clean_pass_leaves_the_process_reusable() {
        let clean = TestRecord::new("bin", "t", Outcome::Passed);
        assert!(record_is_clean(&clean));
        let heap_unmeasured = TestRecord { unchecked: vec!["heap".into()], ..clean.clone() };
        assert!(record_is_clean(&heap_unmeasured));
        let unreadable = TestRecord { unchecked: vec!["fd".into(), "heap".into()], ..clean.clone() };
        assert!(!record_is_clean(&unreadable));
        let closed = TestRecord { closed_fds: vec![0], ..clean.clone() };
        assert!(!record_is_clean(&closed));
        let leaked = TestRecord {
            leaks: vec![Leak::Heap { bytes: 8, blocks: 1, indirect: false, sites: vec![] }],
            ..TestRecord::new("bin", "t", Outcome::Leaked)
        };
        assert!(!record_is_clean(&leaked));
        assert!(!record_is_clean(&TestRecord::new("bin", "t", Outcome::Failed)));
    }

    #[test]
    fn a_reaped_child_or_a_changed_environment_ends_reuse() {
        // Other tests of this binary run meanwhile, so only changes are
        // asserted: an unchanged state could be changed by them.
        let before = ProcessState::read();
        std::process::Command::new("true").status().unwrap();
        assert!(!ProcessState::read().allows_reuse_since(&before), "a reaped child");
        let before = ProcessState::read();
        // SAFETY: this test binary's other tests do not read this variable.
        unsafe { std::env::set_var("LEAKCHECK_REUSE_SELFTEST", "1") };
        let changed = !ProcessState::read().allows_reuse_since(&before);
        // SAFETY: as above.
        unsafe { std::env::remove_var("LEAKCHECK_REUSE_SELFTEST") };
        assert!(changed, "a new variable");
    }
}
