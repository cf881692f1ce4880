//! The fork server's settings (from libtest's arguments and `cargo
//! leakcheck`'s environment) and the table of running process groups its
//! signal handler kills.

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use libtest_mimic::Arguments;

/// Time limit of an explain re-run when no timeout is configured.
pub(super) const EXPLAIN_LIMIT: Duration = Duration::from_secs(60);

/// Pids (= process groups) of running children, for the signal handler.
pub(super) static RUNNING_GROUPS: [AtomicI32; 256] = [const { AtomicI32::new(0) }; 256];

pub(super) extern "C" fn kill_children_and_die(signal: libc::c_int) {
    for slot in &RUNNING_GROUPS {
        let pid = slot.load(Ordering::Relaxed);
        if pid > 0 {
            // SAFETY: kill, signal and raise are async-signal-safe.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
    // SAFETY: as above; restores the default action and dies of the signal.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

pub(super) struct ForkServer {
    pub(super) jobs: usize,
    /// A child whose test passed clean runs the next one (see [`crate::reuse`]).
    pub(super) reuse: bool,
    pub(super) capture: bool,
    /// Re-run a leaking test to record where its leaks were created
    /// (default; `LEAKCHECK_EXPLAIN=0` turns it off).
    pub(super) explain: bool,
    pub(super) timeout: Option<Duration>,
    pub(super) records: Option<File>,
}

impl ForkServer {
    pub(super) fn new(args: &Arguments) -> ForkServer {
        let jobs = args.test_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let timeout =
            std::env::var(crate::env_names::TIMEOUT_MS).ok().and_then(|ms| ms.parse().ok()).map(Duration::from_millis);
        let records =
            std::env::var(crate::env_names::RECORDS_FD).ok().and_then(|fd| fd.parse::<RawFd>().ok()).and_then(|fd| {
                // SAFETY: fcntl(F_GETFD) only checks that the fd is open; cargo
                // leakcheck passed it to us to own.
                (unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0).then(|| unsafe { File::from_raw_fd(fd) })
            });
        let explain = std::env::var_os(crate::sites::EXPLAIN_ENV).is_none_or(|value| value != "0");
        ForkServer {
            jobs: jobs.clamp(1, RUNNING_GROUPS.len()),
            reuse: crate::reuse::enabled(),
            capture: !args.nocapture,
            explain,
            timeout,
            records,
        }
    }
}
