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
            for site in leak.sites() {
                message.push_str(&format!("\n  {}", site.describe()));
            }
        }
        // The annotation sits on the line that made the first leak, when known.
        let place = record
            .leaks
            .iter()
            .flat_map(|leak| leak.sites())
            .find_map(|site| {
                let file = repository_path(site.file.as_deref()?);
                Some(format!("file={},line={},", escape_property(&file), site.line?))
            })
            .unwrap_or_default();
        out.push_str(&format!("::error {place}title={}::{}\n", escape_property(&title), escape_data(&message)));
    }
    out
}

/// An absolute path relative to the repository (`GITHUB_WORKSPACE`, else the
/// current directory), as annotations want it.
fn repository_path(file: &str) -> String {
    let root =
        std::env::var_os("GITHUB_WORKSPACE").map(std::path::PathBuf::from).or_else(|| std::env::current_dir().ok());
    root.and_then(|root| {
        std::path::Path::new(file).strip_prefix(root).ok().map(|path| path.to_string_lossy().into_owned())
    })
    .unwrap_or_else(|| file.to_owned())
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
                leakcheck::Leak::Heap { bytes: 100, blocks: 1, indirect: false, sites: vec![] },
            ],
            unchecked: vec![],
            allowed: vec![],
            warnings: vec![],
            singletons: vec![],
            closed_fds: vec![],
            output: None,
        };
        assert_eq!(
            annotations(std::slice::from_ref(&record)),
            "::error title=pkg%3A%3Ait a%3A%3Ab leaked::leaked thread \"flusher\" (tid 3, sleeping)%0Aleaked heap: 100 bytes in 1 block\n"
        );

        // With a site: the annotation sits on its line, the message names it.
        let mut record = record;
        let file = std::env::current_dir().unwrap().join("tests/a.rs").to_string_lossy().into_owned();
        *record.leaks[1].sites_mut() = vec![leakcheck::record::Site {
            location: "tests/a.rs:7".into(),
            function: "it::b".into(),
            file: Some(file),
            line: Some(7),
            frames: vec![],
            role: leakcheck::record::SiteRole::Allocated,
            bytes: Some(100),
            blocks: Some(1),
        }];
        let annotation = annotations(&[record]);
        // Relative to GITHUB_WORKSPACE in CI, to the current directory here.
        let (place, _) = annotation.split_once("title=").unwrap();
        assert!(place.starts_with("::error file=") && place.ends_with("tests/a.rs,line=7,"), "{annotation}");
        assert!(annotation.contains("%0A  100 bytes in 1 block allocated at tests/a.rs:7 in it::b"), "{annotation}");
    }
}
