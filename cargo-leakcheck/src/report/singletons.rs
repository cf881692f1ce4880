//! The process-wide singletons of a run, each listed once: which binary,
//! what shape, how many instances, and the tests that share it.

use std::fmt::Write;

use leakcheck::{Leak, TestRecord};

use leakcheck::shape::shape_of;

/// One singleton of one test binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Singleton<'a> {
    pub(crate) binary: &'a str,
    pub(crate) shape: String,
    /// Instances of it a test process holds.
    pub(crate) instances: usize,
    /// The tests that touched it, in run order.
    pub(crate) tests: Vec<&'a str>,
    /// One instance, as a test saw it.
    pub(crate) example: &'a Leak,
}

/// Every singleton of `records`, in the order first seen.
pub(crate) fn singletons(records: &[TestRecord]) -> Vec<Singleton<'_>> {
    let mut found: Vec<Singleton<'_>> = Vec::new();
    for record in records {
        // Per shape: its count and one example. Not split by fd number: a
        // singleton's fd number shifts with what the test opened before it
        // (one reactor listed "in 12 tests" and again "in 3 tests"). Two
        // singletons of one shape read as one line of 2 instances until
        // creation sites tell them apart.
        let mut per_shape: Vec<(String, usize, &Leak)> = Vec::new();
        for leak in &record.singletons {
            let Some(shape) = shape_of(leak, &[&record.name]) else { continue };
            match per_shape.iter_mut().find(|(known, ..)| *known == shape) {
                Some((_, count, _)) => *count += 1,
                None => per_shape.push((shape, 1, leak)),
            }
        }
        for (shape, count, example) in per_shape {
            match found.iter_mut().find(|s| s.binary == record.binary && s.shape == shape) {
                Some(singleton) => {
                    singleton.instances = singleton.instances.max(count);
                    singleton.tests.push(&record.name);
                }
                None => found.push(Singleton {
                    binary: &record.binary,
                    shape,
                    instances: count,
                    tests: vec![&record.name],
                    example,
                }),
            }
        }
    }
    found
}

/// The human section: one line per singleton (empty when there is none).
pub(crate) fn singleton_section(records: &[TestRecord]) -> String {
    let found = singletons(records);
    if found.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nSingletons (made once per process by a library and kept; shared by the tests that touch them, \
         so not a leak of any of them; --fail-singletons fails them):\n",
    );
    for singleton in &found {
        let shown: Vec<&str> = singleton.tests.iter().take(3).copied().collect();
        let more = singleton.tests.len().saturating_sub(shown.len());
        let _ = writeln!(
            out,
            "  {} {}: {} x {}, e.g. {}; in {} {} ({}{})",
            singleton.binary,
            singleton.example.kind(),
            singleton.instances,
            singleton
                .shape
                .split_once(' ')
                .map_or(singleton.shape.as_str(), |(_, what)| what)
                .split(" @")
                .next()
                .unwrap_or_default(),
            singleton.example.describe(),
            singleton.tests.len(),
            if singleton.tests.len() == 1 { "test" } else { "tests" },
            shown.join(", "),
            if more > 0 { format!(", and {more} more") } else { String::new() }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakcheck::Outcome;

    fn pair_of(name: &str) -> TestRecord {
        let socket = |fd: i32| Leak::Fd {
            fd,
            target: format!("socket:[{fd}00]"),
            detail: "unix stream (connected, unnamed)".into(),
            sites: vec![],
        };
        let mut record = TestRecord::new("pkg", name, Outcome::Passed);
        record.singletons = vec![socket(5), socket(6)];
        record
    }

    #[test]
    fn a_singleton_shared_by_many_tests_is_listed_once() {
        let records = [pair_of("a"), pair_of("b"), pair_of("c"), pair_of("d")];
        let found = singletons(&records);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].instances, found[0].tests.len()), (2, 4));
        let section = singleton_section(&records);
        assert!(section.contains("pkg fd: 2 x unix stream, e.g. fd 5 -> socket:[500]"), "{section}");
        assert!(section.contains("in 4 tests (a, b, c, and 1 more)"), "{section}");
    }
}
