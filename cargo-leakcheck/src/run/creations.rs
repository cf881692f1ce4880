//! Files a test makes outside its temp dir: seen being made, checked at the
//! test's end.
//!
//! With [`ExitFilter::with_creations`](super::probe::ExitFilter) the probe
//! stops every call that makes a name in the file system (`mkdir*`,
//! `mknod*`, `symlink*`, `link*`, `rename*`, `creat`, `open`/`openat` with
//! `O_CREAT`, `bind`). While the caller waits, the name it asks for is read from its
//! memory and resolved against its working directory or directory fd; a
//! name that does not exist yet is one this call makes. At the test's end,
//! each such name that still exists, outside the test's own temp dir (which
//! is listed instead), the build's target directory and the run's scratch,
//! is a `file` leak with its absolute path. Those are reported, never
//! removed: they may not be ours to remove.
//!
//! A unix socket's `bind` makes a name too: its `sockaddr_un` is read the
//! same way (abstract names make none). Not seen: `openat2` and io_uring
//! (their arguments are not in registers), and a name a test's thread makes
//! while another thread of it races for the same name.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use leakcheck::temp_dir::Listing;
use leakcheck::Leak;

use super::exec_env::read_remote;

/// Calls that always make a name: notified whatever their arguments.
#[cfg(target_arch = "x86_64")]
pub(super) const ALWAYS_CREATE: &[libc::c_long] = &[
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_creat,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_bind,
];
#[cfg(not(target_arch = "x86_64"))]
pub(super) const ALWAYS_CREATE: &[libc::c_long] = &[
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_bind,
];

/// Calls that make a name only with `O_CREAT`: (syscall, the flags' argument).
#[cfg(target_arch = "x86_64")]
pub(super) const CREATE_IF_FLAGGED: &[(libc::c_long, u32)] = &[(libc::SYS_open, 1), (libc::SYS_openat, 2)];
#[cfg(not(target_arch = "x86_64"))]
pub(super) const CREATE_IF_FLAGGED: &[(libc::c_long, u32)] = &[(libc::SYS_openat, 2)];

/// Whether `syscall` is one the filter stops for making a name.
pub(super) fn creates(syscall: libc::c_long) -> bool {
    ALWAYS_CREATE.contains(&syscall) || CREATE_IF_FLAGGED.iter().any(|&(nr, _)| nr == syscall)
}

/// The argument positions of the name a call makes: (directory fd, path),
/// the directory fd `None` for the working directory.
fn name_arguments(syscall: libc::c_long) -> Option<(Option<usize>, usize)> {
    #[cfg(target_arch = "x86_64")]
    {
        match syscall {
            libc::SYS_mkdir | libc::SYS_creat | libc::SYS_mknod | libc::SYS_open => return Some((None, 0)),
            libc::SYS_symlink | libc::SYS_link | libc::SYS_rename => return Some((None, 1)),
            _ => {}
        }
    }
    match syscall {
        libc::SYS_mkdirat | libc::SYS_mknodat | libc::SYS_openat => Some((Some(0), 1)),
        libc::SYS_symlinkat => Some((Some(1), 2)),
        libc::SYS_linkat | libc::SYS_renameat | libc::SYS_renameat2 => Some((Some(2), 3)),
        _ => None,
    }
}

/// Every name one of this run's test processes made: it did not exist when
/// the call that made it was stopped. A name a later run of a test asks for
/// again (the lone run confirming a batch's verdict) exists already by
/// then, and is still the test's if it is in here: seen made by the run.
static MADE_IN_THIS_RUN: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// The name a stopped creating call of thread `tid` asks for, resolved to
/// an absolute path; noted as made by this run when it does not exist yet.
pub(super) fn name_of_call(tid: i32, syscall: libc::c_long, args: &[u64; 6]) -> Option<PathBuf> {
    let (dir_fd, name) = if syscall == libc::SYS_bind {
        (None, unix_socket_path(tid, args[1], args[2])?)
    } else {
        let (dir_fd, path_arg) = name_arguments(syscall)?;
        (dir_fd, read_c_string(tid, args[path_arg])?)
    };
    let name = Path::new(std::ffi::OsStr::from_bytes(&name));
    let base = if name.is_absolute() {
        PathBuf::new()
    } else {
        // AT_FDCWD (-100) as the kernel reads it: the low word, signed.
        let fd = dir_fd.map(|index| args[index] as u32 as i32).filter(|&fd| fd != libc::AT_FDCWD);
        let link = match fd {
            Some(fd) => format!("/proc/{tid}/fd/{fd}"),
            None => format!("/proc/{tid}/cwd"),
        };
        std::fs::read_link(link).ok()?
    };
    let path = lexically_clean(&base.join(name));
    if std::fs::symlink_metadata(&path).is_err() {
        MADE_IN_THIS_RUN.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(path.clone());
    }
    Some(path)
}

/// The path a `bind` of a unix socket gives it (`sockaddr_un` at `address`,
/// `length` bytes); `None` for another family or an abstract name.
fn unix_socket_path(tid: i32, address: u64, length: u64) -> Option<Vec<u8>> {
    let mut bytes = [0u8; std::mem::size_of::<libc::sockaddr_un>()];
    let wanted = (length as usize).min(bytes.len());
    let read = read_remote(tid, address, &mut bytes[..wanted]);
    let family = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]);
    let path = bytes.get(2..read)?;
    if family != libc::AF_UNIX as u16 || path.first().is_none_or(|&byte| byte == 0) {
        return None;
    }
    let end = path.iter().position(|&byte| byte == 0).unwrap_or(path.len());
    Some(path[..end].to_vec())
}

/// `path` with `.` dropped and `..` applied to what precedes it (symlinks
/// are not looked at: a name, not a place).
fn lexically_clean(path: &Path) -> PathBuf {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}

/// A NUL-terminated string of the stopped thread's memory (at most one
/// page: no path is longer).
fn read_c_string(tid: i32, address: u64) -> Option<Vec<u8>> {
    if address == 0 {
        return None;
    }
    let mut buffer = vec![0u8; libc::PATH_MAX as usize];
    // Up to the end of the page first: the next one may not be mapped.
    let to_page_end = (4096 - (address as usize % 4096)).min(buffer.len());
    let mut read = read_remote(tid, address, &mut buffer[..to_page_end]);
    if !buffer[..read].contains(&0) && read == to_page_end {
        read += read_remote(tid, address + read as u64, &mut buffer[read..]);
    }
    let end = buffer[..read].iter().position(|&byte| byte == 0)?;
    buffer.truncate(end);
    (!buffer.is_empty()).then_some(buffer)
}

/// The names a test asked for (`asked`) that this run saw made and that
/// still exist, not under any of `kept` (the test's temp dir, the target
/// directory, the run's scratch) nor in the kernel's file systems: one leak
/// per topmost name, with its absolute path. A name that was there before
/// the run started is not the test's: it was not seen made.
pub(super) fn left_outside(asked: Vec<PathBuf>, kept: &[PathBuf]) -> Vec<Leak> {
    let seen = MADE_IN_THIS_RUN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut made: Vec<PathBuf> = asked
        .into_iter()
        .filter(|path| seen.contains(path))
        .filter(|path| !kept.iter().any(|dir| path.starts_with(dir)))
        .filter(|path| !["/proc", "/sys"].iter().any(|system| path.starts_with(system)))
        .filter(|path| !path.starts_with("/dev") || path.starts_with("/dev/shm"))
        .collect();
    drop(seen);
    made.sort();
    made.dedup();
    let mut tops: Vec<PathBuf> = Vec::new();
    for path in made {
        if tops.last().is_some_and(|top| path.starts_with(top)) {
            continue;
        }
        tops.push(path);
    }
    tops.into_iter().filter_map(|path| describe(&path)).collect()
}

/// What a test may leave outside its temp dir: the build's target directory
/// (the nearest ancestor of the test binary named `target`, else its
/// `deps/../..`: `CARGO_TARGET_TMPDIR` and helpers a test builds live there)
/// and the run's scratch.
pub(super) fn kept_dirs(executable: &Path, scratch: &Path) -> Vec<PathBuf> {
    let target = executable
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "target"))
        .or_else(|| executable.ancestors().nth(3))
        .map(Path::to_owned);
    target.into_iter().chain([scratch.to_owned()]).collect()
}

/// A `file` leak for `path`, when it still exists.
fn describe(path: &Path) -> Option<Leak> {
    let metadata = std::fs::symlink_metadata(path).ok()?;
    let kind = metadata.file_type();
    let (file_type, bytes, entries) = if kind.is_dir() {
        let listing = Listing::of(path);
        (String::from("dir"), listing.total_bytes(), Some(listing.len() as u64))
    } else {
        let name = leakcheck::temp_dir::kind_name(kind);
        (name.to_owned(), if kind.is_file() { metadata.len() } else { 0 }, None)
    };
    Some(Leak::File { path: path.to_string_lossy().into_owned(), file_type, bytes, entries, sites: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_lexically() {
        assert_eq!(lexically_clean(Path::new("/a/./b/../c")), Path::new("/a/c"));
        assert_eq!(lexically_clean(Path::new("/a/b/")), Path::new("/a/b"));
    }

    #[test]
    fn only_what_exists_outside_the_kept_dirs_is_left_one_per_topmost_name() {
        let root = tempfile::tempdir().unwrap();
        let (kept, outside) = (root.path().join("kept"), root.path().join("outside"));
        std::fs::create_dir_all(kept.join("x")).unwrap();
        std::fs::create_dir_all(outside.join("d")).unwrap();
        std::fs::write(outside.join("d/f"), b"abc").unwrap();
        std::fs::write(outside.join("g"), b"").unwrap();
        let made = vec![
            kept.join("x"),
            outside.join("d"),
            outside.join("d/f"),
            outside.join("g"),
            outside.join("gone"),
            PathBuf::from("/proc/self/x"),
        ];
        MADE_IN_THIS_RUN.lock().unwrap().extend(made.iter().cloned());
        // Asked for, but there before the run: not seen made.
        std::fs::write(outside.join("old"), b"").unwrap();
        let asked: Vec<PathBuf> = made.into_iter().chain([outside.join("old")]).collect();
        let leaks = left_outside(asked, std::slice::from_ref(&kept));
        let brief: Vec<(String, String, u64, Option<u64>)> = leaks
            .into_iter()
            .map(|leak| match leak {
                Leak::File { path, file_type, bytes, entries, .. } => (path, file_type, bytes, entries),
                other => panic!("{other:?}"),
            })
            .collect();
        let name = |path: PathBuf| path.to_string_lossy().into_owned();
        assert_eq!(
            brief,
            vec![
                (name(outside.join("d")), "dir".into(), 3, Some(1)),
                (name(outside.join("g")), "file".into(), 0, None)
            ]
        );
    }

    #[test]
    fn the_name_a_stopped_call_makes_is_read_from_its_memory() {
        use std::os::unix::ffi::OsStringExt;
        // This process stands in for the stopped one: its memory, its cwd.
        let root = tempfile::tempdir().unwrap();
        let name = std::ffi::CString::new(root.path().join("new.db").into_os_string().into_vec()).unwrap();
        let tid = std::process::id() as i32;
        let args = [libc::AT_FDCWD as u32 as u64, name.as_ptr() as u64, libc::O_CREAT as u64, 0, 0, 0];
        let made = |path: &Path| MADE_IN_THIS_RUN.lock().unwrap().contains(path);
        let new = root.path().join("new.db");
        assert_eq!(name_of_call(tid, libc::SYS_openat, &args), Some(new.clone()));
        assert!(made(&new));
        let old = root.path().join("old.db");
        std::fs::write(&old, b"").unwrap();
        let name = std::ffi::CString::new(old.clone().into_os_string().into_vec()).unwrap();
        let args = [libc::AT_FDCWD as u32 as u64, name.as_ptr() as u64, libc::O_CREAT as u64, 0, 0, 0];
        assert_eq!(name_of_call(tid, libc::SYS_openat, &args), Some(old.clone()));
        assert!(!made(&old), "it existed: this call made nothing");
        let relative = std::ffi::CString::new("relative/../made").unwrap();
        let args = [libc::AT_FDCWD as u32 as u64, relative.as_ptr() as u64, 0, 0, 0, 0];
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(name_of_call(tid, libc::SYS_mkdirat, &args), Some(cwd.join("made")));
        // A unix socket's name, and none for an abstract one.
        // SAFETY: a zeroed sockaddr_un is a valid one (family 0, empty path).
        let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        address.sun_family = libc::AF_UNIX as u16;
        for (slot, byte) in address.sun_path.iter_mut().zip(root.path().join("s.sock").as_os_str().as_bytes()) {
            *slot = *byte as libc::c_char;
        }
        let size = std::mem::size_of::<libc::sockaddr_un>() as u64;
        let bind_args = |address: &libc::sockaddr_un| [3, (address as *const libc::sockaddr_un) as u64, size, 0, 0, 0];
        let named = bind_args(&address);
        assert_eq!(name_of_call(tid, libc::SYS_bind, &named), Some(root.path().join("s.sock")));
        let mut abstract_name = address;
        abstract_name.sun_path[0] = 0;
        let unnamed = bind_args(std::hint::black_box(&abstract_name));
        assert_eq!(name_of_call(tid, libc::SYS_bind, &unnamed), None);
    }
}
