//! A `#[leakcheck::test]` under a runner that keeps no records of ours
//! (`cargo test`, `cargo nextest run` without the wrapper) writes its own
//! record to `LEAKCHECK_RECORDS_DIR` when that is set, so the attribute's
//! verdicts reach `cargo leakcheck merge` from any runner. Under `cargo
//! leakcheck` or its wrapper (`LEAKCHECK_RECORD_FILE` set) the runner
//! writes the record, once.

use std::time::Instant;

use crate::record::{InProcessReport, Outcome, TestRecord};
use crate::registry::{ShouldPanic, TestDef};

/// Writes the record of the test registered as `def` (every attribute test
/// has a registration: it knows its libtest name and its #[should_panic]),
/// when asked to.
pub(crate) fn write_if_asked(report: &InProcessReport, def: Option<&TestDef>, started: Instant) {
    if std::env::var_os(crate::env_names::RECORD_FILE).is_some() {
        return;
    }
    let (Some(dir), Some(def)) = (crate::records_dir::records_dir(), def) else { return };
    let exe = std::env::current_exe().unwrap_or_default();
    let record = record_of(report, def, crate::records_dir::binary_id(&exe), started.elapsed().as_millis() as u64);
    if let Err(error) = crate::records_dir::write(&dir, &record) {
        // Straight to fd 2: libtest captures the output of passing tests.
        let note = format!(
            "error: leakcheck: could not write the record of {} to {} ({error}): the merged report will miss it\n",
            record.name,
            dir.display()
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes());
    }
}

/// The record libtest's verdict implies: a body that failed passes when
/// the test should panic (with the expected text).
fn record_of(report: &InProcessReport, def: &TestDef, binary: String, duration_ms: u64) -> TestRecord {
    let failure = report.failure.as_deref();
    let expected_failure = match (def.should_panic, failure) {
        (ShouldPanic::No, _) | (_, None) => false,
        (ShouldPanic::Yes, Some(_)) => true,
        (ShouldPanic::WithMessage(expected), Some(message)) => message.contains(expected),
    };
    let (outcome, message) = match (report.body_passed, def.should_panic, expected_failure) {
        (true, ShouldPanic::No, _) | (false, _, true) => {
            (if report.leaks.is_empty() { Outcome::Passed } else { Outcome::Leaked }, None)
        }
        (true, _, _) => (Outcome::Failed, Some("the test did not panic as #[should_panic] expects".to_owned())),
        (false, _, false) => (Outcome::Failed, failure.map(str::to_owned)),
    };
    let mut record = TestRecord::new(binary, def.full_name(), outcome);
    record.duration_ms = duration_ms;
    record.message = message;
    record.leaks = report.leaks.clone();
    record.allowed = report.allowed.clone();
    record.unchecked = report.unchecked.clone();
    record.singletons = report.singletons.clone();
    record.closed_fds = report.closed_fds.clone();
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;

    fn def(should_panic: ShouldPanic) -> TestDef {
        TestDef {
            module_path: "suite::net",
            name: "opens",
            run: || Ok(()),
            ignore: None,
            should_panic,
            options: Options { allow: &[], skip: &[], grace_ms: None, repeat: None },
        }
    }

    fn report(body_passed: bool, failure: Option<&str>, leaks: usize) -> InProcessReport {
        InProcessReport {
            body_passed,
            leaks: vec![crate::Leak::Heap { bytes: 8, blocks: 1, indirect: false, sites: vec![] }; leaks],
            failure: failure.map(str::to_owned),
            ..InProcessReport::default()
        }
    }

    #[test]
    fn outcomes_follow_libtest_and_should_panic() {
        let outcome =
            |report: InProcessReport, should: ShouldPanic| record_of(&report, &def(should), "p::t".into(), 1).outcome;
        assert_eq!(outcome(report(true, None, 0), ShouldPanic::No), Outcome::Passed);
        assert_eq!(outcome(report(true, None, 1), ShouldPanic::No), Outcome::Leaked);
        assert_eq!(outcome(report(false, Some("boom"), 0), ShouldPanic::No), Outcome::Failed);
        assert_eq!(outcome(report(false, Some("boom"), 0), ShouldPanic::Yes), Outcome::Passed);
        assert_eq!(outcome(report(false, Some("boom"), 0), ShouldPanic::WithMessage("bo")), Outcome::Passed);
        assert_eq!(outcome(report(false, Some("boom"), 0), ShouldPanic::WithMessage("zz")), Outcome::Failed);
        assert_eq!(outcome(report(true, None, 0), ShouldPanic::Yes), Outcome::Failed);
        let record = record_of(&report(true, None, 0), &def(ShouldPanic::No), "p::t".into(), 3);
        assert_eq!((record.binary.as_str(), record.name.as_str(), record.duration_ms), ("p::t", "net::opens", 3));
    }
}
