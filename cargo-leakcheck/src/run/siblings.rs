//! Singletons a test has no peer to be told by.
//!
//! Singleton detection ([`super::singleton`]) needs two tests of one binary
//! leaking a shape. The only test of its binary that leaks it (a one-test
//! integration binary touching tokio's signal pair, async-std's runtime, a
//! crate's reactor) has nothing to be run with, and would fail for a thing
//! it cannot close. When the package's other binaries showed that shape to
//! be a singleton (by what their tests made, see there), the same library
//! makes it the same way here: up to as many instances as the singleton has
//! there are moved to the test's singletons, and one line says so, naming
//! the binary that showed it. What the test leaks beyond that count stays
//! its own.
//!
//! Such records are reported once every binary is judged (a sibling may
//! end later), or at once under fail-fast, with what is known by then.

use std::collections::BTreeMap;

use leakcheck::shape::{shape_counts, shape_of};
use leakcheck::TestRecord;

use super::singleton::{self, Held};
use super::RunContext;

/// What the run learnt of each package's singletons, and the records
/// waiting for it.
#[derive(Debug, Default)]
pub(super) struct Siblings {
    proven: Proven,
    /// Judge a record at once with what is known (fail-fast: the run must
    /// know its failures as they come), rather than at the end.
    at_once: bool,
    /// Leaking records with shapes no other test of their binary leaks,
    /// with their instances of each.
    waiting: Vec<(Held, BTreeMap<String, usize>)>,
}

/// Package -> shape -> (instances of the singleton, the binary that showed
/// it).
type Proven = BTreeMap<String, BTreeMap<String, (usize, String)>>;

/// The package of a binary id (`pkg`, `pkg::integration`, `pkg::bin/name`).
fn package_of(binary: &str) -> &str {
    binary.split_once("::").map_or(binary, |(package, _)| package)
}

impl Siblings {
    pub(super) fn new(at_once: bool) -> Self {
        Siblings { at_once, ..Siblings::default() }
    }

    /// Learns the singletons of each of `resolved` (judged); returns the
    /// ones that need not wait: those that pass, and those whose every
    /// leak has a shape another record of its binary among them left.
    pub(super) fn learn(&mut self, context: &RunContext, resolved: Vec<Held>) -> Vec<Held> {
        let alone: Vec<BTreeMap<String, usize>> = resolved
            .iter()
            .map(|held| {
                let peers: Vec<&TestRecord> =
                    resolved.iter().map(|peer| &peer.record).filter(|peer| peer.binary == held.record.binary).collect();
                peerless(context, &held.record, &peers)
            })
            .collect();
        let mut ready = Vec::new();
        for (held, alone) in resolved.into_iter().zip(alone) {
            let record = &held.record;
            let known = self.proven.entry(package_of(&record.binary).to_owned()).or_default();
            for (shape, count) in shape_counts(&record.singletons, &[&record.name]) {
                let entry = known.entry(shape).or_insert((0, record.binary.clone()));
                entry.0 = entry.0.max(count);
            }
            if !record.outcome.is_failure() || alone.is_empty() {
                ready.push(held);
            } else if self.at_once {
                ready.push(judge(&self.proven, held, &alone));
            } else {
                self.waiting.push((held, alone));
            }
        }
        ready
    }

    /// The waiting records, judged by what their siblings showed.
    pub(super) fn finish(self) -> Vec<Held> {
        self.waiting.into_iter().map(|(held, alone)| judge(&self.proven, held, &alone)).collect()
    }
}

/// `held` with the instances of its peerless shapes (`alone`) that a
/// sibling binary showed to be a singleton moved to its singletons.
fn judge(proven: &Proven, mut held: Held, alone: &BTreeMap<String, usize>) -> Held {
    let known = proven.get(package_of(&held.record.binary));
    let mut shared = singleton::Shared::new();
    let mut from = Vec::new();
    for (shape, count) in alone {
        let Some((instances, binary)) = known.and_then(|known| known.get(shape)) else { continue };
        if *binary == held.record.binary {
            continue;
        }
        shared.insert(shape.clone(), (*count).min(*instances));
        from.push(format!("`{shape}`, a singleton of {binary}"));
    }
    if !shared.is_empty() {
        singleton::move_singletons(&mut held.record, &shared);
        eprintln!(
            "        Singleton {} {}: the only test of its binary leaking {}: judged one here too",
            held.record.binary,
            held.record.name,
            from.join(", ")
        );
    }
    held
}

/// The detected shapes `record` leaks that none of `peers` (other records
/// of its binary) leaked or shared, with its count of each.
fn peerless(context: &RunContext, record: &TestRecord, peers: &[&TestRecord]) -> BTreeMap<String, usize> {
    let leaks: Vec<_> = record.leaks.iter().filter(|leak| context.detects_singletons_of(leak)).cloned().collect();
    let mut own = shape_counts(&leaks, &[&record.name]);
    for peer in peers.iter().filter(|peer| peer.name != record.name) {
        for leak in peer.leaks.iter().chain(&peer.singletons) {
            if let Some(shape) = shape_of(leak, &[&peer.name]) {
                own.remove(&shape);
            }
        }
    }
    own
}
