//! The JSON report (`--message-format json`): the contract documented in the
//! README and on the types of `leakcheck::record`.

use leakcheck::record::REPORT_VERSION;
use leakcheck::{Report, Summary, TestRecord};

/// The report as one line of JSON. Each leak also carries its `hint` (how to
/// fix that kind), which is derived, not stored in the record.
pub(crate) fn json_report(records: Vec<TestRecord>, summary: Summary) -> String {
    let mut hints = Vec::new();
    for record in &records {
        hints.push(record.leaks.iter().map(|leak| leak.hint()).collect::<Vec<_>>());
    }
    let report = Report { version: REPORT_VERSION, summary, tests: records };
    let mut value = serde_json::to_value(&report).expect("records always serialize");
    if let Some(tests) = value.get_mut("tests").and_then(|tests| tests.as_array_mut()) {
        for (test, hints) in tests.iter_mut().zip(hints) {
            if let Some(leaks) = test.get_mut("leaks").and_then(|leaks| leaks.as_array_mut()) {
                for (leak, hint) in leaks.iter_mut().zip(hints) {
                    if let Some(object) = leak.as_object_mut() {
                        object.insert("hint".to_owned(), hint.into());
                    }
                }
            }
        }
    }
    let singletons: Vec<serde_json::Value> = super::singletons(&report.tests)
        .into_iter()
        .map(|singleton| {
            serde_json::json!({
                "binary": singleton.binary,
                "kind": singleton.example.kind(),
                "shape": singleton.shape,
                "instances": singleton.instances,
                "tests": singleton.tests.len(),
                "example": singleton.example,
            })
        })
        .collect();
    if let Some(object) = value.as_object_mut() {
        object.insert("singletons".to_owned(), singletons.into());
    }
    value.to_string()
}
