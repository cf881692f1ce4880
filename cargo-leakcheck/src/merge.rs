//! `cargo leakcheck merge PATH...`: shards' JSON reports (`--report-json`)
//! and records directories (`LEAKCHECK_RECORDS_DIR`) combined into the
//! outputs of one run (human report, JSON, JUnit, annotations, baselines)
//! and its exit code.
//!
//! What is read is validated, never trusted: a file that does not parse, a
//! report whose summary disagrees with its tests, a record whose outcome
//! disagrees with its leaks, a record half written, an empty directory and a
//! test recorded twice are each an error (exit 2) naming the file, so a lost
//! or forged shard cannot turn into a pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use leakcheck::record::REPORT_VERSION;
use leakcheck::records_dir::{RecordFile, PARTIAL_PREFIX, RECORD_PREFIX};
use leakcheck::{Outcome, Report, Summary, TestRecord};

use crate::baseline::Baseline;
use crate::cli::{MergeArgs, MessageFormat};
use crate::errors::{exit_code, RunError};
use crate::policy::Policy;
use crate::report::{Finished, Outputs};

/// Records read so far, by (binary, test), with the file each came from.
type Seen = BTreeMap<(String, String), PathBuf>;

/// What the inputs hold together.
#[derive(Debug, Default)]
struct Merged {
    records: Vec<TestRecord>,
    seen: Seen,
    not_run: usize,
    /// The longest shard (shards run side by side).
    duration_ms: u64,
}

pub(crate) fn merge(args: &MergeArgs) -> Result<u8, RunError> {
    let mut merged = Merged::default();
    for path in &args.paths {
        if path.is_dir() {
            read_records_dir(path, &mut merged)?;
        } else {
            read_report(path, &mut merged)?;
        }
    }
    let baseline = args.baseline.as_deref().map(Baseline::load).transpose()?;
    let policy = Policy::new([None; 5], Vec::new(), baseline);
    if args.baseline.is_some() {
        for record in &mut merged.records {
            policy.apply(record);
        }
    }
    // Each test's line, as the runs printed it, then the run's report.
    for record in &merged.records {
        let line = crate::report::progress_line(record);
        match args.message_format {
            MessageFormat::Human => crate::report::print_stdout(&format!("{line}\n")),
            MessageFormat::Json => anstream::eprintln!("{line}"),
        }
    }
    let summary = Summary::from_records(&merged.records, merged.not_run, merged.duration_ms, false);
    let failed = merged.records.iter().any(|record| match record.outcome {
        Outcome::Leaked => args.write_baseline.is_none(),
        outcome => outcome.is_failure(),
    }) || merged.not_run > 0;
    let outputs = Outputs {
        json_on_stdout: args.message_format == MessageFormat::Json,
        report_json: args.report_json.clone(),
        junit: args.junit.clone(),
        write_baseline: args.write_baseline.clone(),
        github_annotations: std::env::var("GITHUB_ACTIONS").is_ok_and(|value| value == "true"),
    };
    outputs.write(Finished { records: &merged.records, summary, duration_ms: merged.duration_ms, policy: &policy })?;
    Ok(if failed { exit_code::TESTS_FAILED } else { exit_code::SUCCESS })
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> RunError {
    RunError::UsageMessage(format!("cannot merge {}: {what}", path.display()))
}

/// A JSON report of `cargo leakcheck --report-json` (or `--message-format json`).
fn read_report(path: &Path, merged: &mut Merged) -> Result<(), RunError> {
    let text = crate::input::read_text(path).map_err(|error| invalid(path, error))?;
    let report: Report =
        serde_json::from_str(&text).map_err(|error| invalid(path, format!("not a JSON report ({error})")))?;
    if report.version != REPORT_VERSION {
        return Err(invalid(
            path,
            format!("report version {} (this cargo-leakcheck reads {REPORT_VERSION})", report.version),
        ));
    }
    let counted = Summary::from_records(&report.tests, report.summary.not_run, report.summary.duration_ms, false);
    let summary = &report.summary;
    let agrees = (counted.tests, counted.passed, counted.leaked, counted.failed, counted.timed_out, counted.ignored)
        == (summary.tests, summary.passed, summary.leaked, summary.failed, summary.timed_out, summary.ignored);
    if !agrees {
        return Err(invalid(path, "its summary does not count the tests it lists (truncated or edited?)"));
    }
    for record in report.tests {
        add(path, record, merged)?;
    }
    merged.not_run += report.summary.not_run;
    merged.duration_ms = merged.duration_ms.max(report.summary.duration_ms);
    Ok(())
}

/// A `LEAKCHECK_RECORDS_DIR`: every `record-*.json` in it, in name order.
fn read_records_dir(dir: &Path, merged: &mut Merged) -> Result<(), RunError> {
    let entries = std::fs::read_dir(dir).map_err(|error| invalid(dir, error))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| invalid(dir, error))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(PARTIAL_PREFIX) {
            return Err(invalid(&path, "a record that was never finished (was its shard killed while writing?)"));
        }
        if !(name.starts_with(RECORD_PREFIX) && name.ends_with(".json")) {
            return Err(invalid(&path, "not a record file (a records directory holds only record-*.json)"));
        }
        if !entry.file_type().is_ok_and(|kind| kind.is_file()) {
            return Err(invalid(&path, "not a regular file"));
        }
        files.push(path);
    }
    if files.is_empty() {
        return Err(invalid(dir, "no records in this directory (did its shard run?)"));
    }
    files.sort();
    let mut duration_ms = 0;
    for path in files {
        let text = crate::input::read_text(&path).map_err(|error| invalid(&path, error))?;
        let file: RecordFile =
            serde_json::from_str(&text).map_err(|error| invalid(&path, format!("not a whole record ({error})")))?;
        if file.version != REPORT_VERSION {
            return Err(invalid(
                &path,
                format!("record version {} (this cargo-leakcheck reads {REPORT_VERSION})", file.version),
            ));
        }
        duration_ms += file.record.duration_ms;
        add(&path, file.record, merged)?;
    }
    merged.duration_ms = merged.duration_ms.max(duration_ms);
    Ok(())
}

/// Adds one record after checking it on its own and against the others.
fn add(path: &Path, record: TestRecord, merged: &mut Merged) -> Result<(), RunError> {
    if record.binary.is_empty() || record.name.is_empty() {
        return Err(invalid(path, "a record without a binary or test name"));
    }
    let consistent = match record.outcome {
        Outcome::Passed | Outcome::Ignored => record.leaks.is_empty(),
        Outcome::Leaked => !record.leaks.is_empty(),
        Outcome::Failed | Outcome::TimedOut => true,
    };
    if !consistent {
        return Err(invalid(
            path,
            format!(
                "{} {}: outcome `{}` with {} leak(s)",
                record.binary,
                record.name,
                record.outcome.as_str(),
                record.leaks.len()
            ),
        ));
    }
    let key = (record.binary.clone(), record.name.clone());
    if let Some(first) = merged.seen.get(&key) {
        return Err(invalid(
            path,
            format!("{} {} is recorded twice (also in {}): do two shards overlap?", key.0, key.1, first.display()),
        ));
    }
    merged.seen.insert(key, path.to_owned());
    merged.records.push(record);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, record: &TestRecord) -> PathBuf {
        leakcheck::records_dir::write(dir, record).unwrap()
    }

    #[test]
    fn records_of_two_directories_merge_and_duplicates_are_refused() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(one.path(), &TestRecord::new("p::b", "a", Outcome::Passed));
        write(two.path(), &TestRecord::new("p::b", "b", Outcome::Failed));
        let mut merged = Merged::default();
        read_records_dir(one.path(), &mut merged).unwrap();
        read_records_dir(two.path(), &mut merged).unwrap();
        assert_eq!(merged.records.len(), 2);
        let error = read_records_dir(one.path(), &mut merged).unwrap_err().to_string();
        assert!(error.contains("p::b a is recorded twice"), "{error}");
    }

    #[test]
    fn malformed_inputs_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut merged = Merged::default();
        let error = read_records_dir(dir.path(), &mut merged).unwrap_err().to_string();
        assert!(error.contains("no records in this directory"), "{error}");

        let truncated = write(dir.path(), &TestRecord::new("p::b", "a", Outcome::Passed));
        let text = std::fs::read_to_string(&truncated).unwrap();
        std::fs::write(&truncated, &text[..text.len() / 2]).unwrap();
        let error = read_records_dir(dir.path(), &mut merged).unwrap_err().to_string();
        assert!(error.contains("not a whole record") && error.contains(&*truncated.to_string_lossy()), "{error}");

        // A pass that carries a leak is forged or broken.
        let mut forged = TestRecord::new("p::b", "a", Outcome::Passed);
        forged.leaks.push(leakcheck::Leak::Heap { bytes: 1, blocks: 1, indirect: false, sites: vec![] });
        std::fs::write(&truncated, serde_json::to_string(&RecordFile { version: 1, record: forged }).unwrap()).unwrap();
        let error = read_records_dir(dir.path(), &mut merged).unwrap_err().to_string();
        assert!(error.contains("outcome `passed` with 1 leak(s)"), "{error}");

        std::fs::write(dir.path().join(".partial-x.json"), "{").unwrap();
        let error = read_records_dir(dir.path(), &mut merged).unwrap_err().to_string();
        assert!(error.contains("never finished"), "{error}");
    }

    #[test]
    fn a_report_whose_summary_disagrees_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        let tests = vec![TestRecord::new("p::b", "a", Outcome::Failed)];
        let mut summary = Summary::from_records(&tests, 0, 5, false);
        summary.failed = 0;
        summary.passed = 1;
        let report = Report { version: 1, summary, tests };
        std::fs::write(&path, serde_json::to_string(&report).unwrap()).unwrap();
        let error = read_report(&path, &mut Merged::default()).unwrap_err().to_string();
        assert!(error.contains("summary does not count"), "{error}");
    }
}
