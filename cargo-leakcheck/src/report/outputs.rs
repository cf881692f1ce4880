//! Where a finished run's report goes: the human report and notes, the JSON
//! report (stdout or a file), JUnit, GitHub annotations and a baseline.

use std::io::Write;
use std::path::{Path, PathBuf};

use leakcheck::{Summary, TestRecord};

use crate::errors::RunError;
use crate::policy::Policy;

/// What the run was asked to write.
#[derive(Debug, Default)]
pub(crate) struct Outputs {
    /// The JSON report on stdout; the human report then goes to stderr.
    pub(crate) json_on_stdout: bool,
    pub(crate) report_json: Option<PathBuf>,
    pub(crate) junit: Option<PathBuf>,
    pub(crate) write_baseline: Option<PathBuf>,
    /// Print GitHub workflow annotations for failing tests.
    pub(crate) github_annotations: bool,
}

/// Everything a reporter reads of a finished run.
#[derive(Debug)]
pub(crate) struct Finished<'a> {
    pub(crate) records: &'a [TestRecord],
    pub(crate) summary: Summary,
    pub(crate) duration_ms: u64,
    pub(crate) policy: &'a Policy,
}

impl Outputs {
    /// Prints the reports and writes the requested files.
    pub(crate) fn write(&self, run: Finished<'_>) -> Result<(), RunError> {
        let human = super::final_report(run.records, &run.summary);
        let notes = super::policy_notes(run.policy, run.records);
        let json = super::json_report(run.records.to_vec(), run.summary);
        if self.json_on_stdout {
            anstream::eprint!("{notes}{human}");
            print_stdout(&format!("{json}\n"));
        } else {
            print_stdout(&format!("{notes}{human}"));
        }
        if self.github_annotations {
            let annotations = super::annotations(run.records);
            if self.json_on_stdout {
                eprint!("{annotations}");
            } else {
                print_stdout(&annotations);
            }
        }
        if let Some(path) = &self.report_json {
            write_file(path, &format!("{json}\n"))?;
        }
        if let Some(path) = &self.junit {
            write_file(path, &super::junit_report(run.records, run.duration_ms))?;
        }
        if let Some(path) = &self.write_baseline {
            write_file(path, &crate::baseline::render(run.records))?;
            eprintln!("    Baseline {} written", path.display());
        }
        Ok(())
    }
}

fn write_file(path: &Path, contents: &str) -> Result<(), RunError> {
    write_atomically(path, contents.as_bytes())
        .map_err(|source| RunError::WriteReport { path: path.to_owned(), source })
}

/// Writes `contents` to `path` through a temporary file in the same
/// directory (random name, created exclusively) and a rename, so a reader
/// sees the old file or the whole new one, never a part.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Readable as a file written by `File::create` would be (0666 less the
    // umask), not tempfile's default 0600.
    use std::os::unix::fs::PermissionsExt;
    let mut file = tempfile::Builder::new()
        .prefix(".leakcheck-report-")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}

/// Writes to stdout (colours stripped where they do not belong); a closed
/// stdout (`| head`) is not an error worth a panic.
pub(crate) fn print_stdout(text: &str) {
    let mut stdout = anstream::stdout().lock();
    if stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_err() {
        // The reader went away; the exit code still tells the result.
    }
}
