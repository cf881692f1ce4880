//! A clean signal state for every process started for a test.
//!
//! `exec` resets handled signals to their default but keeps ignored ones and
//! the signal mask, so a test started by a tool that was itself started from
//! `nohup`, a `&` job or a CI step that ignores SIGINT would run with SIGINT
//! ignored: a test that sends ^C to a child it spawned then waits forever.
//! `cargo test` has the same inheritance; a leak checker must not, since it
//! blocks some signals itself (see cargo-leakcheck's supervisor).

/// Every signal back to its default action, and an empty signal mask.
///
/// Meant for a child between `fork` and `exec` (a `pre_exec` closure): it
/// allocates nothing and makes only async-signal-safe calls (`sigaction`,
/// `sigemptyset`, `pthread_sigmask`). glibc keeps signals 32 and 33 for
/// itself and refuses them, as the kernel refuses SIGKILL and SIGSTOP; those
/// refusals are expected and ignored.
#[doc(hidden)]
pub fn reset_for_exec() {
    // SAFETY: a zeroed sigaction is SIG_DFL with no flags and an empty mask
    // once sigemptyset has initialised it; sigaction copies it. A zeroed
    // sigset_t is valid storage for sigemptyset.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut default.sa_mask);
        for signal in 1..SIGNAL_LIMIT {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// One past the highest signal number on Linux (`_NSIG`).
const SIGNAL_LIMIT: libc::c_int = 65;

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn a_child_started_after_the_reset_ignores_nothing_and_blocks_nothing() {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new("grep");
        command.args(["-E", "^Sig(Ign|Blk):", "/proc/self/status"]);
        // SAFETY: the closure ignores SIGINT and SIGHUP, blocks SIGTERM, then
        // resets: sigaction/sigprocmask calls only, async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                super::reset_for_exec();
                Ok(())
            });
        }
        let output = command.output().expect("grep runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert_eq!(text, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n", "{text}");
    }
}
