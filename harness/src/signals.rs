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
/// allocates nothing and makes only raw `rt_sigaction` and
/// `rt_sigprocmask` syscalls. Raw, because glibc's wrappers refuse signals
/// 32 and 33 (its own), and a caller may have ignored those too. The kernel
/// refuses SIGKILL and SIGSTOP, as expected.
#[doc(hidden)]
pub fn reset_for_exec() {
    // The kernel's `struct sigaction` with every field zero: SIG_DFL, no
    // flags, no restorer, an empty mask (32 bytes covers every layout).
    let default = [0u64; 4];
    let empty_mask = 0u64;
    for signal in 1..SIGNAL_LIMIT {
        // SAFETY: rt_sigaction reads a zeroed kernel sigaction of the
        // size it expects (8-byte sigset) and writes nothing back (null).
        unsafe { libc::syscall(libc::SYS_rt_sigaction, signal, default.as_ptr(), std::ptr::null_mut::<u64>(), 8) };
    }
    // SAFETY: rt_sigprocmask reads an 8-byte empty set.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty_mask as *const u64,
            std::ptr::null_mut::<u64>(),
            8,
        )
    };
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
