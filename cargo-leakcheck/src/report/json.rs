//! The JSON report (`--message-format json`): the contract documented in the
//! README and on the types of `leakcheck::record`.

use leakcheck::record::REPORT_VERSION;
use leakcheck::{Report, Summary, TestRecord};

/// The report as one line of JSON.
pub(crate) fn json_report(records: Vec<TestRecord>, summary: Summary) -> String {
    let report = Report { version: REPORT_VERSION, summary, tests: records };
    serde_json::to_string(&report).expect("records always serialize")
}
