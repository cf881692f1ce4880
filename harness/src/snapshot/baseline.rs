//! What a process legitimately held before a test.

use std::collections::{BTreeMap, BTreeSet};

use super::types::{FdKey, Snapshot};

/// What a process held before the test: anything else at the end is a leak.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baseline {
    /// fd number -> what it refers to.
    pub fds: BTreeMap<i32, FdKey>,
    /// Thread ids with their start times (a reused tid is another thread).
    pub threads: BTreeSet<(i32, u64)>,
    /// Child pids with their start times (a reused pid is another process).
    pub children: BTreeSet<(i32, u64)>,
}

impl Baseline {
    /// Everything in `snapshot` is part of the baseline.
    pub fn of(snapshot: &Snapshot) -> Baseline {
        Baseline {
            fds: snapshot.fds.iter().map(|entry| (entry.fd, entry.key)).collect(),
            threads: snapshot.threads.iter().map(|thread| (thread.tid, thread.start_time)).collect(),
            children: snapshot.children.iter().map(|child| (child.pid, child.start_time)).collect(),
        }
    }

    /// Counts thread `tid` of process `pid` (as alive now) as part of the baseline.
    pub fn add_thread(&mut self, pid: i32, tid: i32) {
        self.threads.insert((tid, super::stat::thread_start_time(pid, tid)));
    }
}
