//! `--junit PATH`: JUnit XML (quick-junit), one suite per test binary.

use std::collections::BTreeMap;
use std::time::Duration;

use leakcheck::{Outcome, TestRecord};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

/// The JUnit XML of a run.
pub(crate) fn junit_report(records: &[TestRecord], duration_ms: u64) -> String {
    let mut suites: BTreeMap<&str, TestSuite> = BTreeMap::new();
    for record in records {
        let suite = suites.entry(record.binary.as_str()).or_insert_with(|| TestSuite::new(record.binary.clone()));
        let status = match record.outcome {
            Outcome::Passed => TestCaseStatus::success(),
            Outcome::Ignored => TestCaseStatus::skipped(),
            outcome => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                let message = match outcome {
                    Outcome::Leaked => format!("leaked {}", leak_summary(record)),
                    _ => record.message.clone().unwrap_or_else(|| outcome.as_str().to_owned()),
                };
                status.set_type(outcome.as_str()).set_message(message).set_description(description(record));
                status
            }
        };
        let mut case = TestCase::new(record.name.clone(), status);
        case.set_classname(record.binary.clone()).set_time(Duration::from_millis(record.duration_ms));
        suite.add_test_case(case);
    }
    let mut report = Report::new("cargo-leakcheck");
    report.set_time(Duration::from_millis(duration_ms)).add_test_suites(suites.into_values());
    report.to_string().expect("a JUnit report always serializes")
}

/// "2 fds, 1 thread".
fn leak_summary(record: &TestRecord) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for leak in &record.leaks {
        match counts.iter_mut().find(|(kind, _)| *kind == leak.kind()) {
            Some((_, count)) => *count += 1,
            None => counts.push((leak.kind(), 1)),
        }
    }
    counts.iter().map(|(kind, count)| format!("{count} {kind}")).collect::<Vec<_>>().join(", ")
}

fn description(record: &TestRecord) -> String {
    let mut text = String::new();
    if let Some(message) = &record.message {
        text.push_str(message);
        text.push('\n');
    }
    for leak in &record.leaks {
        text.push_str(&format!("leaked {}\n", leak.describe()));
        for site in leak.sites() {
            text.push_str(&format!("  {}\n", site.describe()));
        }
    }
    if let Some(output) = &record.output {
        text.push_str("\n--- output ---\n");
        text.push_str(output);
    }
    text
}
