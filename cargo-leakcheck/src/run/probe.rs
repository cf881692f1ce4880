//! The exit probe: stop a test process at `exit_group`, while every thread, fd
//! and child is still intact, so it can be snapshotted.
//!
//! Mechanism (`SECCOMP_RET_USER_NOTIF`, Linux 5.5+, no ptrace, no privilege):
//! in the forked child, before `exec`, we install a six-instruction filter that
//! turns `exit_group` into a user notification and allows everything else,
//! with `SECCOMP_FILTER_FLAG_NEW_LISTENER`. The listener fd is sent to the
//! parent over a socketpair (`SCM_RIGHTS`) and closed, then the child execs the
//! test. The parent receives one notification per `exit_group` call, carrying
//! the caller's thread id; the caller waits until we answer
//! `SECCOMP_USER_NOTIF_FLAG_CONTINUE`.
//!
//! Invariants:
//! - The filter is inherited by every thread and descendant of the test, so
//!   the listener must be served (every notification answered) until every
//!   process of the test is gone. If the listener closed early, their
//!   `exit_group` would fail with ENOSYS and a multi-threaded descendant would
//!   never end. `SECCOMP_RET_TRACE` has the same flaw without a tracer, which
//!   is why it is not used.
//! - `child_setup` runs between `fork` and `exec` in a copy of a
//!   multi-threaded process: it only makes raw syscalls on data prepared
//!   before the fork (no allocation, no locks).

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_00F3; // AUDIT_ARCH_RISCV64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
compile_error!("cargo-leakcheck's exit probe knows the audit arch of x86_64, aarch64 and riscv64 only");

const SECCOMP_DATA_NR: u32 = 0; // offsetof(struct seccomp_data, nr)
const SECCOMP_DATA_ARCH: u32 = 4; // offsetof(struct seccomp_data, arch)

/// The BPF program: the watched syscalls of the native arch -> notify; all
/// else -> allow. Always `exit_group`; with [`ExitFilter::with_exec`] also
/// `execve` and `execveat`.
#[derive(Clone, Copy)]
pub(crate) struct ExitFilter {
    program: [libc::sock_filter; MAX_PROGRAM],
    len: usize,
}

/// Two loads, an arch check, up to three syscalls, two returns.
const MAX_PROGRAM: usize = 8;

impl std::fmt::Debug for ExitFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.len > 6 { "ExitFilter(exit_group, execve)" } else { "ExitFilter(exit_group)" })
    }
}

impl ExitFilter {
    pub(crate) fn new() -> ExitFilter {
        ExitFilter::watching(&[libc::SYS_exit_group])
    }

    /// The same filter, also stopping every `execve`/`execveat` of the test's
    /// processes: the heap check hides its preload from what the test runs
    /// (see [`crate::run::exec_env`]).
    pub(crate) fn with_exec(self) -> ExitFilter {
        ExitFilter::watching(&[libc::SYS_exit_group, libc::SYS_execve, libc::SYS_execveat])
    }

    fn watching(syscalls: &[libc::c_long]) -> ExitFilter {
        let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let n = syscalls.len();
        assert!(n + 5 <= MAX_PROGRAM, "the filter has room for {} syscalls", MAX_PROGRAM - 5);
        let mut program = [stmt(0, 0); MAX_PROGRAM];
        // Jumps are relative to the next instruction: `allow` sits at 3 + n,
        // `notify` at 4 + n.
        program[0] = stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, SECCOMP_DATA_ARCH);
        program[1] = jeq(AUDIT_ARCH_NATIVE, 0, (n + 1) as u8); // foreign arch -> allow
        program[2] = stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, SECCOMP_DATA_NR);
        for (j, &nr) in syscalls.iter().enumerate() {
            program[3 + j] = jeq(nr as u32, (n - j) as u8, 0);
        }
        program[3 + n] = stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW);
        program[4 + n] = stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_USER_NOTIF);
        ExitFilter { program, len: n + 5 }
    }
}

/// Runs in the forked child before `exec`: installs the filter and sends the
/// listener fd (or the errno that refused it) over `socket`.
///
/// Never fails: a refused filter is reported to the parent, which degrades.
///
/// # Safety
///
/// Must be called only between `fork` and `exec` (from `pre_exec`), with
/// `socket` a connected `AF_UNIX` socket of this process. It allocates nothing
/// and calls only async-signal-safe syscalls.
pub(crate) unsafe fn child_setup(filter: &ExitFilter, socket: RawFd) {
    let prog = libc::sock_fprog { len: filter.len as u16, filter: filter.program.as_ptr().cast_mut() };
    // SAFETY: raw syscalls with valid pointers to stack/captured data; `prog`
    // outlives the seccomp call, which copies the program.
    let listener = unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            -1
        } else {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &prog as *const libc::sock_fprog,
            ) as RawFd
        }
    };
    let status: i32 = if listener < 0 { errno().max(1) } else { 0 };
    // SAFETY: only stack buffers, sized for one fd with CMSG_SPACE.
    unsafe {
        let mut payload = status;
        let mut iov = libc::iovec { iov_base: (&mut payload as *mut i32).cast(), iov_len: mem::size_of::<i32>() };
        let mut control = [0u64; 4]; // 32 bytes >= CMSG_SPACE(sizeof(int)), 8-aligned
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if listener >= 0 {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), listener);
        }
        libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL);
        if listener >= 0 {
            libc::close(listener);
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The parent's end of a probe: serves the test's `exit_group` notifications.
#[derive(Debug)]
pub(crate) struct Listener {
    fd: OwnedFd,
}

/// One `exit_group` call waiting for our answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExitCall {
    id: u64,
    /// Thread id of the caller, in our pid namespace.
    pub(crate) tid: i32,
}

/// Receives what `child_setup` sent: the listener, or the errno that refused it.
/// Call after `spawn` returned (the message was sent before `exec`).
pub(crate) fn receive_listener(socket: BorrowedFd<'_>) -> Result<Listener, io::Error> {
    let mut payload: i32 = -1;
    let mut control = [0u64; 4];
    // SAFETY: recvmsg into stack buffers whose sizes we pass; the received fd,
    // if any, is owned by us from here on (wrapped in OwnedFd at once).
    unsafe {
        let mut iov = libc::iovec { iov_base: (&mut payload as *mut i32).cast(), iov_len: mem::size_of::<i32>() };
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control) as _;
        let received = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC);
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        let fd = if !cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
            Some(OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>())))
        } else {
            None
        };
        match (payload, fd) {
            (0, Some(fd)) => Ok(Listener { fd }),
            (libc::EBUSY, _) => Err(io::Error::other(
                "another seccomp listener already watches this process tree (cargo leakcheck inside a test run by \
                 another cargo leakcheck, or another supervisor): the kernel allows one",
            )),
            (errno, _) if errno > 0 => Err(io::Error::from_raw_os_error(errno)),
            _ => Err(io::Error::other("the test process sent no seccomp listener")),
        }
    }
}

impl Listener {
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Takes one pending notification. `Ok(None)` when it vanished (the caller
    /// was killed between poll and receive).
    pub(crate) fn receive(&self) -> io::Result<Option<ExitCall>> {
        // SAFETY: the kernel requires a zeroed seccomp_notif; it fills it in.
        let mut notif: libc::seccomp_notif = unsafe { mem::zeroed() };
        // SAFETY: ioctl on our listener fd with a pointer to a correctly sized struct.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::EINTR) => Ok(None),
                _ => Err(error),
            };
        }
        Ok(Some(ExitCall { id: notif.id, tid: notif.pid as i32 }))
    }

    /// Lets the waiting `exit_group` proceed. A caller that died meanwhile is fine.
    pub(crate) fn proceed(&self, call: ExitCall) {
        let mut resp = libc::seccomp_notif_resp {
            id: call.id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        };
        // SAFETY: ioctl on our listener fd with a pointer to a correctly sized struct.
        // ENOENT (caller gone) is the only expected error and needs nothing.
        unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
}
