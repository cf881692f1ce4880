//! Baselines: the leaks an existing suite has today, so the gate can fail
//! only on new ones.
//!
//! The file is text, one leak per line, sorted, diff-friendly:
//!
//! ```text
//! # cargo-leakcheck baseline ...
//! leaky::leaks<TAB>fd::forgotten_file<TAB>fd<TAB>$TMPDIR/leakcheck-fixture-forgotten.txt (regular file)
//! ```
//!
//! Identities are normalised so that they survive from run to run: no pids,
//! fd numbers or ports, the temporary directory written `$TMPDIR`, and runs
//! of three or more digits (pids, random suffixes) written `N`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use leakcheck::record::escape_control;
use leakcheck::{Leak, Outcome, TestRecord};

use crate::errors::BaselineError;

const HEADER: &str = "# cargo-leakcheck baseline: leaks accepted for now; the gate fails only on others.\n\
# Regenerate with `cargo leakcheck --write-baseline PATH`. Columns: binary, test, kind, identity (tab-separated).\n";

/// One accepted leak.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Entry {
    pub(crate) binary: String,
    pub(crate) test: String,
    pub(crate) kind: String,
    pub(crate) identity: String,
}

impl Entry {
    pub(crate) fn of(record: &TestRecord, leak: &Leak) -> Entry {
        // Escaped: a tab or a newline in a name or a path would split the
        // line, and the next run would refuse the file (or miss the entry).
        Entry {
            binary: escape_control(&record.binary).into_owned(),
            test: escape_control(&record.name).into_owned(),
            kind: leak.kind().to_owned(),
            identity: escape_control(&identity(leak)).into_owned(),
        }
    }
}

/// A loaded baseline: how many of each entry are still unmatched.
#[derive(Debug)]
pub(crate) struct Baseline {
    pub(crate) path: PathBuf,
    remaining: Mutex<BTreeMap<Entry, usize>>,
}

impl Baseline {
    pub(crate) fn load(path: &Path) -> Result<Baseline, BaselineError> {
        let text =
            crate::input::read_text(path).map_err(|source| BaselineError::Read { path: path.to_owned(), source })?;
        let mut remaining = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let columns: Vec<&str> = line.splitn(4, '\t').collect();
            let [binary, test, kind, identity] = columns[..] else {
                return Err(BaselineError::Malformed { path: path.to_owned(), line: index + 1 });
            };
            // Baselines written before children were named by program
            // held the command line: read them as their program.
            let identity = if kind == "child" { leakcheck::shape::program_of(identity) } else { identity.to_owned() };
            let entry = Entry { binary: binary.to_owned(), test: test.to_owned(), kind: kind.to_owned(), identity };
            *remaining.entry(entry).or_insert(0) += 1;
        }
        Ok(Baseline { path: path.to_owned(), remaining: Mutex::new(remaining) })
    }

    /// Takes one matching entry, if the baseline still has one.
    pub(crate) fn take(&self, entry: &Entry) -> bool {
        let mut remaining = self.remaining.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match remaining.get_mut(entry) {
            Some(count) if *count > 0 => {
                *count -= 1;
                true
            }
            _ => false,
        }
    }

    /// Entries of tests that ran and no longer leak what the baseline says.
    pub(crate) fn fixed(&self, records: &[TestRecord]) -> Vec<Entry> {
        let remaining = self.remaining.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut fixed = Vec::new();
        for (entry, &count) in remaining.iter() {
            let ran = records.iter().any(|record| {
                record.binary == entry.binary && record.name == entry.test && record.outcome != Outcome::Ignored
            });
            if ran {
                fixed.extend(std::iter::repeat_n(entry.clone(), count));
            }
        }
        fixed
    }
}

/// The baseline file of every leak in `records`, sorted.
pub(crate) fn render(records: &[TestRecord]) -> String {
    let mut entries: Vec<Entry> =
        records.iter().flat_map(|record| record.leaks.iter().map(move |leak| Entry::of(record, leak))).collect();
    entries.sort();
    let mut text = String::from(HEADER);
    for entry in entries {
        text.push_str(&format!("{}\t{}\t{}\t{}\n", entry.binary, entry.test, entry.kind, entry.identity));
    }
    text
}

/// A leak's identity without what changes from run to run.
pub(crate) fn identity(leak: &Leak) -> String {
    match leak {
        Leak::Fd { target, detail, .. } if leakcheck::temp_dir::is_path(target) => {
            format!("{} ({detail})", normalise(target))
        }
        Leak::Fd { detail, .. } => normalise(detail),
        Leak::Thread { name, .. } => name.clone(),
        // Its program: a child that exits as the test ends reads as
        // running in one run and as a zombie (`[comm]`) in the next.
        Leak::Child { cmdline, .. } => leakcheck::shape::program_of(cmdline),
        Leak::Heap { .. } => "heap".to_owned(),
        // tempfile's random names (`.tmpAbC123`) differ in every run.
        Leak::File { path, file_type, .. } if path.starts_with('/') => {
            format!("{} ({file_type})", fold_random_names(&normalise(path)))
        }
        Leak::File { path, file_type, .. } => format!("$TMPDIR/{} ({file_type})", fold_random_names(path)),
    }
}

fn normalise(text: &str) -> String {
    let temp = std::env::temp_dir();
    let temp = temp.to_string_lossy();
    let text = if temp.len() > 1 { text.replace(temp.trim_end_matches('/'), "$TMPDIR") } else { text.to_owned() };
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut index = 0;
    while index < chars.len() {
        let digits = chars[index..].iter().take_while(|c| c.is_ascii_digit()).count();
        if index > 0 && chars[index - 1] == ':' && digits > 0 {
            out.push('*'); // a port
            index += digits;
        } else if digits >= 3 && !in_dotted_number(&chars, index, digits) {
            out.push('N'); // a pid, a random suffix
            index += digits;
        } else if digits > 0 {
            out.extend(&chars[index..index + digits]);
            index += digits;
        } else {
            out.push(chars[index]);
            index += 1;
        }
    }
    out
}

/// `path` with each name tempfile makes up (`.tmp` and six random
/// letters or digits, or a prefix of the caller's then six) and each run of
/// three or more digits written `N`.
fn fold_random_names(path: &str) -> String {
    let names: Vec<String> = path
        .split('/')
        .map(|name| match name.strip_prefix(".tmp") {
            Some(rest) if rest.len() >= 6 && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') => {
                format!(".tmp*{}", rest.split_once('.').map(|(_, ext)| format!(".{ext}")).unwrap_or_default())
            }
            _ => normalise(name),
        })
        .collect();
    names.join("/")
}

/// Whether the digits at `start..start + len` are part of `1.2.3.4`.
fn in_dotted_number(chars: &[char], start: usize, len: usize) -> bool {
    let digit_at = |index: usize| chars.get(index).is_some_and(|c| c.is_ascii_digit());
    let dot_after = chars.get(start + len) == Some(&'.') && digit_at(start + len + 1);
    let dot_before = start >= 2 && chars[start - 1] == '.' && digit_at(start - 2);
    dot_after || dot_before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_drop_what_changes_between_runs() {
        let socket = Leak::Fd {
            fd: 5,
            target: "socket:[123456]".into(),
            detail: "tcp 127.0.0.1:34942 -> 127.0.0.1:46797 (established)".into(),
            sites: vec![],
        };
        assert_eq!(identity(&socket), "tcp 127.0.0.1:* -> 127.0.0.1:* (established)");
        let tmp = std::env::temp_dir().join("leakcheck-field-6083-deploy.log");
        let file =
            Leak::Fd { fd: 3, target: tmp.to_string_lossy().into(), detail: "regular file".into(), sites: vec![] };
        assert_eq!(identity(&file), "$TMPDIR/leakcheck-field-N-deploy.log (regular file)");
        let child = Leak::Child {
            pid: 4130,
            cmdline: "sleep 30".into(),
            state: "sleeping".into(),
            orphaned: false,
            age_ms: Some(1500),
            sites: vec![],
        };
        assert_eq!(identity(&child), "sleep");
        let zombie = Leak::Child {
            pid: 4131,
            cmdline: "[sleep]".into(),
            state: "zombie".into(),
            orphaned: false,
            age_ms: None,
            sites: vec![],
        };
        assert_eq!(identity(&zombie), identity(&child));
    }
}
