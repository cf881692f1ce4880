//! GitHub Actions annotations (when `GITHUB_ACTIONS=true`): one `::error`
//! workflow command per test that failed, leaked or timed out.

use leakcheck::{Outcome, TestRecord};

/// The annotation lines of a run.
pub(crate) fn annotations(records: &[TestRecord]) -> String {
    let mut out = String::new();
    for record in records.iter().filter(|record| record.outcome.is_failure()) {
        let what = match record.outcome {
            Outcome::Leaked => "leaked",
            Outcome::TimedOut => "timed out",
            _ => "failed",
        };
        let title = format!("{} {} {what}", record.binary, record.name);
        let mut message = record.message.clone().unwrap_or_default();
        for leak in &record.leaks {
            if !message.is_empty() {
                message.push('\n');
            }
            message.push_str(&format!("leaked {}", leak.describe()));
        }
        out.push_str(&format!("::error title={}::{}\n", escape_property(&title), escape_data(&message)));
    }
    out
}

/// Escapes a workflow command's message.
fn escape_data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a workflow command's property value.
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_escape_newlines_and_separators() {
        let record = TestRecord {
            binary: "pkg::it".into(),
            name: "a::b".into(),
            outcome: Outcome::Leaked,
            duration_ms: 1,
            message: None,
            leaks: vec![
                leakcheck::Leak::Thread {
                    tid: 3,
                    name: "flusher".into(),
                    state: "sleeping".into(),
                    unnamed: false,
                    waiting_in: None,
                    sites: vec![],
                },
                leakcheck::Leak::Heap { bytes: 100, blocks: 1, sites: vec![] },
            ],
            unchecked: vec![],
            allowed: vec![],
            warnings: vec![],
            closed_fds: vec![],
            output: None,
        };
        assert_eq!(
            annotations(&[record]),
            "::error title=pkg%3A%3Ait a%3A%3Ab leaked::leaked thread \"flusher\" (tid 3, sleeping)%0Aleaked heap: 100 bytes in 1 block\n"
        );
    }
}
