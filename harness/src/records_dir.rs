//! Records from anywhere: with `LEAKCHECK_RECORDS_DIR=DIR` set, each test
//! record (from `cargo leakcheck`, its nextest wrapper, or a
//! `#[leakcheck::test]` under another runner) is written to DIR, one file per
//! test, for `cargo leakcheck merge` to combine shards into one report.
//!
//! A file appears whole or not at all: it is written under a temporary name
//! (`.partial-*`, created exclusively with a random name) and then renamed to
//! its final, also unique, name `record-*.json` without replacing anything.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::{TestRecord, REPORT_VERSION};

/// The variable naming the directory.
pub const RECORDS_DIR_ENV: &str = "LEAKCHECK_RECORDS_DIR";

/// Final names start with this and end in `.json`.
pub const RECORD_PREFIX: &str = "record-";
/// Files still being written start with this.
pub const PARTIAL_PREFIX: &str = ".partial-";

/// One file of a records directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordFile {
    /// Always [`REPORT_VERSION`].
    pub version: u32,
    /// The test's record, as in the JSON report's `tests`.
    pub record: TestRecord,
}

/// The directory `LEAKCHECK_RECORDS_DIR` names, if set and not empty.
pub fn records_dir() -> Option<PathBuf> {
    std::env::var_os(RECORDS_DIR_ENV).filter(|dir| !dir.is_empty()).map(PathBuf::from)
}

/// Writes `record` into `dir` (created if missing) as a new file; returns
/// its path.
pub fn write(dir: &Path, record: &TestRecord) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let file = RecordFile { version: REPORT_VERSION, record: record.clone() };
    let json = serde_json::to_vec(&file).map_err(io::Error::other)?;
    let mut partial = tempfile::Builder::new().prefix(PARTIAL_PREFIX).suffix(".json").tempfile_in(dir)?;
    partial.write_all(&json)?;
    partial.as_file().sync_all()?;
    let stem = format!("{RECORD_PREFIX}{}-", readable(&format!("{}-{}", record.binary, record.name)));
    // A unique final name: reserve it exclusively, then rename over the
    // reservation (our own empty file), so no other file is ever replaced.
    let reserved = tempfile::Builder::new().prefix(&stem).suffix(".json").tempfile_in(dir)?;
    let (_, path) = reserved.keep().map_err(|error| error.error)?;
    partial.persist(&path).map_err(|error| error.error)?;
    Ok(path)
}

/// The id of the test binary `executable` as cargo leakcheck and nextest
/// write it: nextest's own when nextest runs it, else `package` for a
/// package's unit tests and `package::target` for an integration test
/// (cargo sets `CARGO_PKG_NAME` when it runs tests), else the target name
/// (the file name without cargo's `-<hash>`).
pub fn binary_id(executable: &Path) -> String {
    if let Some(id) = std::env::var("NEXTEST_BINARY_ID").ok().filter(|id| !id.is_empty()) {
        return id;
    }
    let file = executable.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let target = match file.rsplit_once('-') {
        Some((stem, hash)) if hash.len() == 16 && hash.bytes().all(|byte| byte.is_ascii_hexdigit()) => stem.to_owned(),
        _ => file,
    };
    match std::env::var("CARGO_PKG_NAME") {
        Ok(package) if package.replace('-', "_") == target => package,
        Ok(package) => format!("{package}::{target}"),
        Err(_) => target,
    }
}

/// A test's name as part of a file name: letters, digits, `-`, `_`, `.`;
/// anything else `_`, at most 80 bytes.
fn readable(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .take(80)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Outcome;

    #[test]
    fn each_record_is_a_whole_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let record = TestRecord::new("pkg::bin", "mod::test/odd name", Outcome::Passed);
        let first = write(dir.path(), &record).unwrap();
        let second = write(dir.path(), &record).unwrap();
        assert_ne!(first, second);
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("record-pkg__bin-mod__test_odd_name-") && name.ends_with(".json"), "{name}");
        let back: RecordFile = serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
        assert_eq!(back, RecordFile { version: REPORT_VERSION, record });
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no partial file is left: {names:?}");
    }
}
