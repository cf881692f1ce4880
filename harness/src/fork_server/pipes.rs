//! The fd plumbing of the fork server: pipes, non-blocking reads, and the
//! processes left in a finished child's group.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Bytes of a test's output kept (the tail).
pub(super) const KEEP_OUTPUT: usize = 1 << 20;

pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array; we own them from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads what is available without blocking; `None` the pipe at end of file.
pub(super) fn read_available(pipe: &mut Option<File>, into: &mut Vec<u8>, keep: usize) {
    let Some(file) = pipe else { return };
    let mut ready = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll with a zero timeout on one pollfd we own.
    while unsafe { libc::poll(&mut ready, 1, 0) } > 0 {
        let mut buf = [0u8; 64 * 1024];
        match file.read(&mut buf) {
            Ok(0) | Err(_) => {
                *pipe = None;
                return;
            }
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                if into.len() > keep.saturating_mul(2) {
                    into.drain(..into.len() - keep);
                }
            }
        }
        ready.revents = 0;
    }
}

pub(super) fn drain(pipe: &mut Option<File>, into: &mut Vec<u8>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while pipe.is_some() && Instant::now() < deadline {
        read_available(pipe, into, KEEP_OUTPUT);
        if pipe.is_some() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    *pipe = None;
}

/// Live members of group `pgid`, given up to `grace` to end by themselves (a
/// child that was exiting when the test died is not an orphan).
pub(super) fn settle_group(pgid: i32, grace: Duration) -> Vec<crate::snapshot::ProcessInfo> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let members = live_members_of_group(pgid);
        if members.is_empty() || start.elapsed() >= grace {
            return members;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Live processes of process group `pgid`, read from `/proc`.
fn live_members_of_group(pgid: i32) -> Vec<crate::snapshot::ProcessInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()))
        .filter_map(|pid| crate::snapshot::process_info(pid).ok())
        .filter(|info| info.pgid == pgid && info.state != 'Z' && info.state != 'X')
        .collect()
}

pub(super) fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGINT => "SIGINT",
        _ => return format!("{signal}"),
    };
    name.to_owned()
}
