//! The JSON report (`--message-format json`): the contract documented in the
//! README and on the types of `leakcheck::record`.

use leakcheck::record::REPORT_VERSION;
use leakcheck::{Report, Summary, TestRecord};

/// The report as one line of JSON.
pub(crate) fn json_report(records: Vec<TestRecord>, summary: Summary) -> String {
    let report = Report { version: REPORT_VERSION, summary, tests: records };
    serde_json::to_string(&report).expect("records always serialize")
}

/// Writes `contents` to `path` through a temporary file in the same
/// directory and a rename, so a reader sees the old file or the whole new
/// one, never a part.
pub(crate) fn write_atomically(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let temporary = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}
