//! Two snapshots -> what was left behind, and settling.
//!
//! A [`Baseline`] is what the process legitimately held before the test; a
//! [`Delta`] is what it holds beyond that. [`settle`] re-reads with a short
//! backoff while a delta is non-empty, so a thread that is already exiting is
//! not called a leak; a clean test returns from the first read and pays nothing.

use std::io;
use std::time::{Duration, Instant};

use crate::record::Leak;
pub use crate::snapshot::Baseline;
use crate::snapshot::{state_name, FdEntry, ProcessInfo, Snapshot, ThreadEntry};

/// What a snapshot holds beyond its baseline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// fds whose number is new, or whose number now points at something else.
    pub fds: Vec<FdEntry>,
    /// Live threads not in the baseline.
    pub threads: Vec<ThreadEntry>,
    /// Children (running or zombie) not in the baseline.
    pub children: Vec<ProcessInfo>,
    /// fds of the baseline that are closed now: the code closed something
    /// it did not open (not a leak; waiting does not change it).
    pub closed: Vec<i32>,
}

impl Delta {
    /// Compares `snapshot` with `baseline`; reads the link target of each
    /// fd that is new or now refers to something else.
    pub fn between(baseline: &Baseline, snapshot: Snapshot) -> Delta {
        let pid = snapshot.pid;
        // Snapshot fds are sorted by number.
        let closed = baseline
            .fds
            .keys()
            .copied()
            .filter(|fd| snapshot.fds.binary_search_by_key(fd, |entry| entry.fd).is_err())
            .collect();
        let fds = snapshot
            .fds
            .into_iter()
            .filter(|entry| baseline.fds.get(&entry.fd) != Some(&entry.key))
            .map(|mut entry| {
                if entry.target.is_empty() {
                    entry.target = link_target(pid, entry.fd);
                }
                entry
            })
            .collect();
        let threads = snapshot
            .threads
            .into_iter()
            .filter(|thread| !baseline.threads.contains(&(thread.tid, thread.start_time)))
            .collect();
        let children = snapshot
            .children
            .into_iter()
            .filter(|child| !baseline.children.contains(&(child.pid, child.start_time)))
            .collect();
        Delta { fds, threads, children, closed }
    }

    /// True when nothing was left behind (closed fds do not count).
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty() && self.threads.is_empty() && self.children.is_empty()
    }

    /// Names every leak of process `pid`. Call it while the process still
    /// exists: socket addresses are read from its network namespace.
    #[cfg(target_os = "linux")]
    pub fn into_leaks(self, pid: i32) -> Vec<Leak> {
        let mut tables = crate::snapshot::SocketTables::of(pid);
        let fds = self.fds.into_iter().map(|entry| Leak::Fd {
            fd: entry.fd,
            detail: crate::snapshot::describe_fd_with(&mut tables, entry.fd, &entry.target),
            target: entry.target,
            sites: Vec::new(),
        });
        let threads = self.threads.into_iter().map(|thread| Leak::Thread {
            tid: thread.tid,
            waiting_in: crate::snapshot::wchan(pid, thread.tid),
            name: thread.name,
            state: state_name(thread.state).to_owned(),
            unnamed: false,
            sites: Vec::new(),
        });
        let children = self.children.into_iter().map(|child| child_leak(child, false));
        fds.chain(threads).chain(children).collect()
    }
}

#[cfg(target_os = "linux")]
fn link_target(pid: i32, fd: i32) -> String {
    crate::snapshot::fd_target(pid, fd)
}

#[cfg(not(target_os = "linux"))]
fn link_target(_pid: i32, _fd: i32) -> String {
    String::new()
}

/// Marks the leaked threads that carry the name of the test thread (they
/// were never named: Linux gives a new thread its creator's name, cut to 15
/// bytes).
pub fn mark_unnamed_threads(leaks: &mut [Leak], test_thread_name: &str) {
    let inherited = crate::shape::comm_of(test_thread_name);
    for leak in leaks {
        if let Leak::Thread { name, unnamed, .. } = leak {
            *unnamed = !inherited.is_empty() && *name == inherited;
        }
    }
}

/// A leaked process as a [`Leak`]; `orphaned` when it was not the test's own child.
pub fn child_leak(child: ProcessInfo, orphaned: bool) -> Leak {
    Leak::Child {
        pid: child.pid,
        cmdline: child.cmdline,
        state: state_name(child.state).to_owned(),
        orphaned,
        age_ms: crate::snapshot::age_ms(child.start_time),
        sites: Vec::new(),
    }
}

/// Re-reads the delta with a growing pause (1 ms, 2 ms, 4 ms ...) while it is
/// non-empty, until it is empty or `grace` has passed; returns the last delta.
///
/// An empty first delta returns at once: clean tests pay no settling time.
pub fn settle(grace: Duration, read: impl FnMut() -> io::Result<Delta>) -> io::Result<Delta> {
    settle_until(grace, read, Delta::is_empty)
}

/// Like [`settle`], but stops as soon as `done` accepts the delta (for
/// example when every leak left is allowed: waiting would change nothing).
pub fn settle_until(
    grace: Duration,
    mut read: impl FnMut() -> io::Result<Delta>,
    done: impl Fn(&Delta) -> bool,
) -> io::Result<Delta> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let delta = read()?;
        let elapsed = start.elapsed();
        if delta.is_empty() || done(&delta) || elapsed >= grace {
            return Ok(delta);
        }
        std::thread::sleep(pause.min(grace - elapsed));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::FdKey;

    fn fd(fd: i32, ino: u64, target: &str) -> FdEntry {
        FdEntry { fd, key: FdKey { dev: 1, ino }, target: target.into() }
    }

    #[test]
    fn an_fd_is_new_by_number_or_by_what_it_refers_to() {
        let before = Snapshot { fds: vec![fd(0, 10, "/dev/null"), fd(1, 11, "pipe:[1]")], ..Snapshot::default() };
        let after = Snapshot {
            fds: vec![fd(0, 10, "/dev/null"), fd(1, 12, "/tmp/x"), fd(5, 13, "socket:[9]")],
            ..Snapshot::default()
        };
        let delta = Delta::between(&Baseline::of(&before), after);
        assert_eq!(delta.fds, vec![fd(1, 12, "/tmp/x"), fd(5, 13, "socket:[9]")]);
    }

    #[test]
    fn settle_returns_at_once_when_clean_and_waits_out_a_leak() {
        let mut reads = 0;
        let start = Instant::now();
        let delta = settle(Duration::from_secs(5), || {
            reads += 1;
            Ok(Delta::default())
        })
        .unwrap();
        assert!(delta.is_empty());
        assert_eq!(reads, 1);
        assert!(start.elapsed() < Duration::from_secs(1));

        let leaky = Delta { fds: vec![fd(3, 14, "/tmp/y")], ..Delta::default() };
        let start = Instant::now();
        let delta = settle(Duration::from_millis(40), || Ok(leaky.clone())).unwrap();
        assert_eq!(delta, leaky);
        assert!(start.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn settle_stops_once_the_leak_resolves() {
        let mut reads = 0;
        let delta = settle(Duration::from_secs(5), || {
            reads += 1;
            let threads = if reads < 3 {
                vec![ThreadEntry { tid: 9, name: "exiting".into(), state: 'S', start_time: 1 }]
            } else {
                vec![]
            };
            Ok(Delta { threads, ..Delta::default() })
        })
        .unwrap();
        assert!(delta.is_empty());
        assert_eq!(reads, 3);
    }
}
