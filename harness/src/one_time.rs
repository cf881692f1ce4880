//! In-process singleton rule: what a test leaks only the first time it runs
//! in a process is made once per process (tokio's signal socket pair and
//! its registry, a lazily started pool, a self-pipe), not by each run.
//!
//! When a test's first run in a process leaked, it runs once more in the
//! same process and is checked again. Of each shape of leak (see
//! [`crate::shape`]), the instances the second run does not leave again are
//! one-time: singletons, reported apart and not failing the test. The
//! heap's leak is one-time when the second run leaks no heap at all. A
//! child is always the test's own (the second run may have reaped it). A
//! second run that fails keeps every leak the test's own. Repeat mode
//! (`--repeat`) has its own rule and does not use this one.

use std::collections::BTreeMap;

use crate::record::Leak;
use crate::shape::{shape_counts, take_by_shape};

/// Splits `first` into the test's own leaks and the one-time ones, by the
/// leaks of a second run in the same process; `test_thread` is the name of
/// the test's thread (inherited by threads it does not name).
pub(crate) fn split(first: Vec<Leak>, second: &[Leak], test_thread: &str) -> (Vec<Leak>, Vec<Leak>) {
    let threads = [test_thread];
    let again = shape_counts(second, &threads);
    // One-time instances per shape: those the second run did not leave
    // again. A child the second run did not leave again may have been
    // reaped by it (a runtime reaping orphaned children): never one-time.
    let countable: Vec<Leak> = first.iter().filter(|leak| !matches!(leak, Leak::Child { .. })).cloned().collect();
    let one_time: BTreeMap<String, usize> = shape_counts(&countable, &threads)
        .into_iter()
        .map(|(shape, count)| {
            let again = again.get(&shape).copied().unwrap_or(0);
            (shape, count.saturating_sub(again))
        })
        .collect();
    let (mut once, rest) = take_by_shape(first, &one_time, &threads);
    let heap_again = second.iter().any(|leak| matches!(leak, Leak::Heap { .. }));
    let (heap, own): (Vec<Leak>, Vec<Leak>) =
        rest.into_iter().partition(|leak| matches!(leak, Leak::Heap { .. }) && !heap_again);
    once.extend(heap);
    (own, once)
}

/// Whether the first run's `leaks` are worth a second run: some fd, thread
/// or heap leak (a test that only leaves children is not run twice: its
/// second run's processes would be more to clean up than to learn from).
pub(crate) fn worth_a_second_run(leaks: &[Leak]) -> bool {
    leaks.iter().any(|leak| !matches!(leak, Leak::Child { .. }))
}

/// Ends the children the second run left (they are this process's own), so
/// they are not counted again as orphans once the test's process is gone.
pub(crate) fn end_children(second: &[Leak]) {
    for leak in second {
        if let Leak::Child { pid, orphaned: false, .. } = leak {
            // SAFETY: kill and waitpid on a child of this process that the
            // second run started and left; a pid already reaped just fails.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
                libc::waitpid(*pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(fd: i32) -> Leak {
        Leak::Fd {
            fd,
            target: format!("socket:[{fd}0]"),
            detail: "unix stream (connected, unnamed)".into(),
            sites: vec![],
        }
    }

    fn heap(bytes: u64) -> Leak {
        Leak::Heap { bytes, blocks: 1, indirect: false, sites: vec![] }
    }

    #[test]
    fn what_the_second_run_does_not_leave_again_is_one_time() {
        let (own, once) = split(vec![socket(3), socket(4), heap(512)], &[], "t");
        assert!(own.is_empty());
        assert_eq!(once.len(), 3);
    }

    #[test]
    fn a_per_run_leak_stays_the_tests_own_next_to_a_singleton() {
        // tokio's pair (fds 3, 4) once, the test's own pair (5, 6) each run.
        let (own, once) = split(vec![socket(3), socket(4), socket(5), socket(6)], &[socket(7), socket(8)], "t");
        assert_eq!(once, [socket(3), socket(4)]);
        assert_eq!(own, [socket(5), socket(6)]);
    }

    #[test]
    fn a_heap_leak_left_again_is_kept() {
        let (own, once) = split(vec![heap(4096)], &[heap(4096)], "t");
        assert_eq!((own.len(), once.len()), (1, 0));
    }

    #[test]
    fn a_child_is_always_the_tests_own() {
        let child = Leak::Child {
            pid: 7,
            cmdline: "cat".into(),
            state: "sleeping".into(),
            orphaned: false,
            age_ms: None,
            sites: vec![],
        };
        let (own, once) = split(vec![child.clone()], &[], "t");
        assert_eq!((own, once), (vec![child], vec![]));
    }
}
