//! Whatever ends cargo-leakcheck (`kill -9`, a test that kills its parent,
//! an OOM kill), its tests end with it.
//!
//! Without this, a killed run left every test process running, a test
//! process with a thread could never exit (its `exit_group` fails with
//! ENOSYS once the probe's listener is gone), and scratch directories piled
//! up. The guardian is a child forked at start-up that holds the read end of
//! a pipe whose only write end is ours (close-on-exec, so no test holds it).
//! When the read returns end-of-file, we are gone, however we died: it kills
//! every process carrying our marker prefix (`LEAKCHECK_TEST_ID=<our pid>:`),
//! removes the scratch directories we told it about, and exits.
//!
//! Invariants:
//! - [`start`] forks while the process is still single-threaded (before the
//!   supervisor's signal thread), so the child is a consistent copy and may
//!   allocate.
//! - The guardian is in its own session and ignores the terminal's signals:
//!   the Ctrl-C that interrupts us must not end it before it is needed. It
//!   never outlives us by more than one scan of `/proc`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::run::{has_environ_entry, MARKER_VAR};

/// Our end of the guardian's pipe, and its pid.
struct Guardian {
    pipe: Mutex<File>,
    pid: i32,
}

static GUARDIAN: OnceLock<Guardian> = OnceLock::new();

/// Forks the guardian. Must be called before any thread is started. A
/// failure only costs the protection, so it is reported by the caller as a
/// warning.
pub(crate) fn start() -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let owner = std::process::id();
    // SAFETY: single-threaded here (module invariant), so the child is a
    // consistent copy of this process and may run ordinary code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(writer);
            guard(reader, owner)
        }
        pid => {
            drop(reader);
            let _ = GUARDIAN.set(Guardian { pipe: Mutex::new(File::from(writer)), pid });
            Ok(())
        }
    }
}

/// The guardian's pid, so the supervisor neither reaps it as a stray nor
/// ends it with the test phase.
pub(crate) fn pid() -> Option<i32> {
    GUARDIAN.get().map(|guardian| guardian.pid)
}

/// Asks the guardian to remove `dir` if we die before removing it ourselves.
pub(crate) fn remove_if_we_die(dir: &Path) {
    let Some(guardian) = GUARDIAN.get() else { return };
    let Some(path) = dir.to_str().filter(|path| !path.contains('\n')) else { return };
    let mut pipe = guardian.pipe.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let _ = writeln!(pipe, "{path}");
}

/// The guardian's whole life: wait for end-of-file, then clean up after us.
fn guard(reader: OwnedFd, owner: u32) -> ! {
    // SAFETY: plain syscalls on our own process: a new session, the
    // terminal's and our parent's signals ignored, a recognisable name.
    unsafe {
        libc::setsid();
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGPIPE] {
            libc::signal(signal, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_NAME, c"leakcheck-guard".as_ptr());
    }
    close_all_but(reader.as_raw_fd());
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in BufReader::new(File::from(reader)).lines() {
        match line {
            Ok(line) => dirs.push(PathBuf::from(line)),
            Err(_) => break,
        }
    }
    kill_marked(&format!("{MARKER_VAR}={owner}:"));
    for dir in dirs {
        // Tests' temp dirs inside may hold directories they made read-only.
        leakcheck::temp_dir::remove_all(&dir);
    }
    // SAFETY: ends this process at once, running no handler of the copy.
    unsafe { libc::_exit(0) }
}

/// Closes every fd but `keep`, and points stdin, stdout and stderr at
/// /dev/null: the guardian must hold no pipe of ours (a reader of our output
/// would wait for it) and no fd a test could be blamed for.
fn close_all_but(keep: i32) {
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|entries| entries.flatten().filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok()).collect())
        .unwrap_or_default();
    let null = File::options().read(true).write(true).open("/dev/null").ok();
    for fd in open {
        if fd == keep || null.as_ref().is_some_and(|null| null.as_raw_fd() == fd) {
            continue;
        }
        match (fd, &null) {
            // SAFETY: dup2 onto a standard stream, from our /dev/null.
            (0..=2, Some(null)) => unsafe { libc::dup2(null.as_raw_fd(), fd) },
            // SAFETY: closing an fd of this copy, which owns nothing else.
            _ => unsafe { libc::close(fd) },
        };
    }
}

/// SIGKILLs every process whose environment has an entry starting with
/// `prefix`, until a scan finds none (a dying tree may still fork).
fn kill_marked(prefix: &str) {
    for _ in 0..20 {
        let mut found = false;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
            if has_environ_entry(pid, |var| var.starts_with(prefix.as_bytes())) {
                // SAFETY: kill with a pid read from /proc; a process gone
                // meanwhile only makes it fail.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                found = true;
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
