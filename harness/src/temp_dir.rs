//! A private temp dir per test, and what a test leaves in it.
//!
//! Every test process `cargo leakcheck` starts, and every test the fork
//! server runs, gets `TMPDIR` pointing at a fresh private directory
//! (`std::env::temp_dir()`, `tempfile` and most libraries honour it). What
//! is in it at the test's end that was not there at its start is a `file`
//! leak ([`Leak::File`]). The directory is removed when the process is
//! gone, whatever the test left in it, so a run leaves no temp files behind.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::options::{Judgement, Options};
use crate::record::Leak;

/// The variable that names the temp dir.
pub const TMPDIR_VAR: &str = "TMPDIR";
/// Set beside `TMPDIR` by whoever made it private to the process (`cargo
/// leakcheck`, a self-isolating test): while the two agree, what appears
/// in it is the process's own, and `#[leakcheck::test]` checks it.
pub const PRIVATE_VAR: &str = "LEAKCHECK_PRIVATE_TMPDIR";

/// Whether this process's temp dir is private to it ([`PRIVATE_VAR`]),
/// not one it may share (`/tmp`).
pub fn is_private() -> bool {
    std::env::var_os(PRIVATE_VAR).is_some_and(|private| std::env::var_os(TMPDIR_VAR) == Some(private))
}

/// What this process's temp dir holds now, when it is private to it.
pub fn private_listing() -> Option<Listing> {
    is_private().then(|| Listing::of(&std::env::temp_dir()))
}

/// What a test left in `dir` since `before`, judged by its `options`, and
/// the empty directories apart (warnings: see [`split_empty_dirs`]). The
/// paths of its `own` leaks (its fds) in `dir` are named by `$TMPDIR`.
pub(crate) fn judge_left(dir: &Path, before: &Listing, options: &Options, own: &mut [Leak]) -> (Judgement, Vec<Leak>) {
    name_by_tmpdir(own, dir);
    let mut judgement = options.judge(Listing::of(dir).new_since(before));
    let (leaks, empty) = split_empty_dirs(std::mem::take(&mut judgement.leaks));
    judgement.leaks = leaks;
    (judgement, empty)
}

/// Entries a listing reads at most: a test that writes a million files is
/// reported by its first ones, not read to the end at every boundary.
const MOST_ENTRIES: usize = 10_000;
/// Directory levels a listing descends at most.
const DEEPEST: usize = 32;

/// A fresh, private (0700, random name) directory for one test process;
/// removed with everything in it when dropped.
#[derive(Debug)]
pub struct PrivateTemp {
    dir: tempfile::TempDir,
}

impl PrivateTemp {
    /// A new directory inside `parent` (itself private: a run's scratch).
    pub fn new_in(parent: &Path) -> io::Result<PrivateTemp> {
        Ok(PrivateTemp { dir: tempfile::Builder::new().prefix("tmp-").tempdir_in(parent)? })
    }

    /// Where it is: the test's `TMPDIR`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The environment that makes it a process's temp dir: `TMPDIR`, and
    /// [`PRIVATE_VAR`] saying it is private.
    pub fn environment(&self) -> [(&'static str, &Path); 2] {
        [(TMPDIR_VAR, self.path()), (PRIVATE_VAR, self.path())]
    }

    /// What is in it now.
    pub fn listing(&self) -> Listing {
        Listing::of(self.path())
    }

    /// What is in it now that was not in `before`, one leak per topmost
    /// new entry (a new directory is one leak, with what it holds counted).
    pub fn left_since(&self, before: &Listing) -> Vec<Leak> {
        self.listing().new_since(before)
    }
}

impl Drop for PrivateTemp {
    fn drop(&mut self) {
        remove_all(self.dir.path());
    }
}

/// Removes `dir` with everything in it, as far as it can. A test may have
/// left a directory it made read-only: removal needs write and search
/// permission on every directory inside, which this gives first (never
/// following a symlink).
pub fn remove_all(dir: &Path) {
    make_removable(dir, 0);
    let _ = std::fs::remove_dir_all(dir);
}

fn make_removable(dir: &Path, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if depth < DEEPEST && entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
            make_removable(&path, depth + 1);
        }
    }
}

/// Writes the paths of `leaks` inside `dir`, a process's private temp dir,
/// as `$TMPDIR/...`: that directory is gone after the run, and its random
/// name would make the same leak differ in every process (shapes, baselines).
pub fn name_by_tmpdir(leaks: &mut [Leak], dir: &Path) {
    let Some(dir) = dir.to_str() else { return };
    for leak in leaks {
        if let Leak::Fd { target, detail, .. } = leak {
            for text in [target, detail] {
                if text.contains(dir) {
                    let mut named = text.replace(&format!("{dir}/"), "$TMPDIR/");
                    // The directory itself, open (an fd on it, a cwd).
                    if let Some(head) = named.strip_suffix(dir) {
                        named = format!("{head}$TMPDIR");
                    }
                    *text = named;
                }
            }
        }
    }
}

/// Splits file leaks into the ones that fail a test and the empty
/// directories, which are reported as warnings: what `create_dir_all` of a
/// test's own scratch leaves as its parent (walkdir's tests leave
/// `$TMPDIR/rust-walkdir`, made by whichever test needs it first, shared by
/// all): one inode, not the growth run after run this check is for.
pub fn split_empty_dirs(leaks: Vec<Leak>) -> (Vec<Leak>, Vec<Leak>) {
    leaks.into_iter().partition(|leak| !matches!(leak, Leak::File { entries: Some(0), .. }))
}

/// Whether an fd's target (or a word of its description) is a path: from
/// the root, or in the test's temp dir as [`name_by_tmpdir`] writes it.
pub fn is_path(text: &str) -> bool {
    text.starts_with('/') || text.starts_with("$TMPDIR/")
}

/// One entry of a [`Listing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    bytes: u64,
    /// A directory whose entries could not be read (the test took away its
    /// permissions): what it holds is unknown, never "empty".
    unreadable: bool,
}

/// Every entry under a directory, at any depth (symlinks not followed), by
/// path relative to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Listing {
    /// What `dir` holds now; empty when it cannot be read.
    pub fn of(dir: &Path) -> Listing {
        let mut listing = Listing::default();
        let _ = listing.read(dir, Path::new(""), 0);
        listing
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many entries it holds, at any depth (the first 10,000).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The size of the files in it.
    pub fn total_bytes(&self) -> u64 {
        self.entries.values().map(|entry| entry.bytes).sum()
    }

    /// Reads `root/relative`; false when it cannot be read.
    fn read(&mut self, root: &Path, relative: &Path, depth: usize) -> bool {
        let Ok(entries) = std::fs::read_dir(root.join(relative)) else { return false };
        for entry in entries.flatten() {
            if self.entries.len() >= MOST_ENTRIES {
                break;
            }
            let Ok(metadata) = entry.metadata() else { continue };
            let path = relative.join(entry.file_name());
            let kind = kind_name(metadata.file_type());
            let bytes = if metadata.is_file() { metadata.len() } else { 0 };
            self.entries.insert(path.clone(), Entry { kind, bytes, unreadable: false });
            if metadata.is_dir() && depth < DEEPEST && !self.read(root, &path, depth + 1) {
                self.entries.insert(path, Entry { kind, bytes, unreadable: true });
            }
        }
        true
    }

    /// The entries not in `before`, topmost first: an entry inside a new
    /// directory counts toward that directory's leak.
    pub fn new_since(&self, before: &Listing) -> Vec<Leak> {
        let mut leaks: Vec<(PathBuf, Leak)> = Vec::new();
        for (path, entry) in &self.entries {
            if before.entries.contains_key(path) {
                continue;
            }
            if let Some((top, Leak::File { bytes, entries, .. })) = leaks.last_mut() {
                if path.starts_with(&*top) {
                    *bytes += entry.bytes;
                    // An unreadable directory inside keeps the count unknown.
                    *entries = entries.filter(|_| !entry.unreadable).map(|count| count + 1);
                    continue;
                }
            }
            let leak = Leak::File {
                path: path.to_string_lossy().into_owned(),
                file_type: entry.kind.to_owned(),
                bytes: entry.bytes,
                entries: (entry.kind == "dir" && !entry.unreadable).then_some(0),
                sites: Vec::new(),
            };
            leaks.push((path.clone(), leak));
        }
        leaks.into_iter().map(|(_, leak)| leak).collect()
    }
}

/// A file type as a `file` leak names it: "file", "dir", "symlink",
/// "socket", "fifo" or "device".
pub fn kind_name(kind: std::fs::FileType) -> &'static str {
    if kind.is_file() {
        "file"
    } else if kind.is_dir() {
        "dir"
    } else if kind.is_symlink() {
        "symlink"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_fifo() {
        "fifo"
    } else {
        "device"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_one_leak_with_what_it_holds() {
        let temp = PrivateTemp::new_in(&std::env::temp_dir()).unwrap();
        std::fs::write(temp.path().join("kept"), b"12").unwrap();
        let before = temp.listing();
        std::fs::create_dir_all(temp.path().join("d/e")).unwrap();
        std::fs::write(temp.path().join("d/e/f"), b"12345").unwrap();
        std::fs::write(temp.path().join("d-after"), b"1").unwrap();
        std::os::unix::fs::symlink("/nowhere", temp.path().join("link")).unwrap();
        let leaks = temp.left_since(&before);
        let brief: Vec<(String, String, u64, Option<u64>)> = leaks
            .into_iter()
            .map(|leak| match leak {
                Leak::File { path, file_type, bytes, entries, .. } => (path, file_type, bytes, entries),
                other => panic!("not a file: {other:?}"),
            })
            .collect();
        assert_eq!(
            brief,
            vec![
                ("d".into(), "dir".into(), 5, Some(2)),
                ("d-after".into(), "file".into(), 1, None),
                ("link".into(), "symlink".into(), 0, None),
            ]
        );
    }

    #[test]
    fn paths_in_the_private_dir_are_named_by_tmpdir() {
        let fd = |target: &str, detail: &str| Leak::Fd {
            fd: 3,
            target: target.into(),
            detail: detail.into(),
            sites: vec![],
        };
        let mut leaks = vec![
            fd("/s/tmp-ab/x.db", "regular file"),
            fd("socket:[1]", "unix stream listening on /s/tmp-ab/a.sock"),
            fd("/s/tmp-abc/y", "regular file"),
            fd("/s/tmp-ab", "directory"),
        ];
        name_by_tmpdir(&mut leaks, Path::new("/s/tmp-ab"));
        assert_eq!(
            leaks,
            vec![
                fd("$TMPDIR/x.db", "regular file"),
                fd("socket:[1]", "unix stream listening on $TMPDIR/a.sock"),
                fd("/s/tmp-abc/y", "regular file"),
                fd("$TMPDIR", "directory"),
            ]
        );
    }

    #[test]
    fn an_unreadable_directory_is_never_empty() {
        let temp = PrivateTemp::new_in(&std::env::temp_dir()).unwrap();
        std::fs::create_dir(temp.path().join("hidden")).unwrap();
        std::fs::write(temp.path().join("hidden/data"), b"x").unwrap();
        std::fs::set_permissions(temp.path().join("hidden"), std::fs::Permissions::from_mode(0o000)).unwrap();
        let leaks = temp.left_since(&Listing::default());
        // Root reads every directory anyway; elsewhere the count is unknown.
        let readable = std::fs::read_dir(temp.path().join("hidden")).is_ok();
        let expected = if readable { Some(1) } else { None };
        assert!(
            matches!(&leaks[..], [Leak::File { path, entries, .. }] if path == "hidden" && *entries == expected),
            "{leaks:?}"
        );
        let (failing, empty) = split_empty_dirs(leaks);
        assert_eq!((failing.len(), empty.len()), (1, 0));
    }

    #[test]
    fn dropping_removes_even_read_only_directories() {
        let temp = PrivateTemp::new_in(&std::env::temp_dir()).unwrap();
        let path = temp.path().to_owned();
        std::fs::create_dir(path.join("ro")).unwrap();
        std::fs::write(path.join("ro/file"), b"x").unwrap();
        std::fs::set_permissions(path.join("ro"), std::fs::Permissions::from_mode(0o500)).unwrap();
        drop(temp);
        assert!(!path.exists());
    }
}
