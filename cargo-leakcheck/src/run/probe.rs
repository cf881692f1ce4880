//! The exit probe: stop a test process at `exit_group`, while every thread, fd
//! and child is still intact, so it can be snapshotted.
//!
//! Mechanism (`SECCOMP_RET_USER_NOTIF`, Linux 5.5+, no ptrace, no privilege):
//! in the forked child, before `exec`, we install a filter that turns
//! `exit_group` (and, when the heap is checked, `execve`/`execveat`: see
//! [`super::exec_env`]) into a user notification and allows everything else,
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
//! - The forked copy is under the filter from `child_setup` on, while our
//!   spawning thread is inside `Command::spawn`, which waits for the exec
//!   (and, when it fails, for the copy's `_exit`). So someone else must
//!   answer the copy's own calls meanwhile: [`spawn_probed`] runs a helper
//!   thread for that. Without it, an exec that fails (binary removed, not
//!   executable, E2BIG) hung the run for good, SIGINT included.

use std::cell::Cell;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use super::exec_env::HiddenEnv;
use super::poll::{is_hung_up, wait_for_events};

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
/// offsetof(struct seccomp_data, args[0]): its low word, on the little-endian
/// arches above.
const SECCOMP_DATA_ARG0_LOW: u32 = 16;

/// The BPF program: the watched syscalls of the native arch -> notify; all
/// else -> allow. Always `exit_group`; with [`ExitFilter::with_exec`] also
/// `execve` and `execveat`; with [`ExitFilter::with_boundaries`] also
/// `write`/`writev` to fd 1 (libtest announcing a test and its result:
/// see [`super::batch`]); with [`ExitFilter::with_creations`] every call
/// that makes a name in the file system (see [`super::creations`]).
#[derive(Clone, Copy)]
pub(crate) struct ExitFilter {
    program: [libc::sock_filter; MAX_PROGRAM],
    len: usize,
    exec: bool,
    boundaries: bool,
    creations: bool,
}

/// Two loads, an arch check, up to 17 syscalls, two returns, and three
/// argument checks of four instructions (the write's fd, the opens' flags).
const MAX_PROGRAM: usize = 40;

impl std::fmt::Debug for ExitFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ExitFilter(exit_group{}{}{})",
            if self.exec { ", execve" } else { "" },
            if self.boundaries { ", write to stdout" } else { "" },
            if self.creations { ", file creation" } else { "" }
        )
    }
}

impl ExitFilter {
    pub(crate) fn new() -> ExitFilter {
        ExitFilter::watching(false, false, false)
    }

    /// The same filter, also stopping every `execve`/`execveat` of the test's
    /// processes: the heap check hides its preload from what the test runs
    /// (see [`crate::run::exec_env`]).
    pub(crate) fn with_exec(self) -> ExitFilter {
        ExitFilter::watching(true, self.boundaries, self.creations)
    }

    /// The same filter, also stopping every `write`/`writev` to fd 1: a
    /// batch's boundaries (see [`super::batch`]).
    pub(crate) fn with_boundaries(self) -> ExitFilter {
        ExitFilter::watching(self.exec, true, self.creations)
    }

    /// The same filter, also stopping every call that makes a name in the
    /// file system: `mkdir*`, `mknod*`, `symlink*`, `link*`, `rename*`,
    /// `creat`, and `open`/`openat` with `O_CREAT` (see [`super::creations`]).
    pub(crate) fn with_creations(self) -> ExitFilter {
        ExitFilter::watching(self.exec, self.boundaries, true)
    }

    fn watching(exec: bool, boundaries: bool, creations: bool) -> ExitFilter {
        let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let mut notified = vec![libc::SYS_exit_group];
        if exec {
            notified.extend([libc::SYS_execve, libc::SYS_execveat]);
        }
        if creations {
            notified.extend_from_slice(super::creations::ALWAYS_CREATE);
        }
        // Calls notified only when an argument says so: (syscall, which
        // argument, what): the fd of a write, the flags of an open.
        let mut checked: Vec<(libc::c_long, u32, Check)> = Vec::new();
        if boundaries {
            checked.extend([(libc::SYS_write, 0, Check::Equals(1)), (libc::SYS_writev, 0, Check::Equals(1))]);
        }
        if creations {
            checked.extend(
                super::creations::CREATE_IF_FLAGGED
                    .iter()
                    .map(|&(nr, arg)| (nr, arg, Check::AnyBit(libc::O_CREAT as u32))),
            );
        }
        // One block of four per distinct argument check: load the
        // argument's low word, test it, notify, allow.
        let mut blocks: Vec<(u32, Check)> = Vec::new();
        for &(_, arg, check) in &checked {
            if !blocks.contains(&(arg, check)) {
                blocks.push((arg, check));
            }
        }
        let (n, c) = (notified.len(), checked.len());
        // Layout: 0 load arch, 1 check it, 2 load nr, 3.. the notified
        // syscalls, then the checked ones, `allow`, `notify`, the blocks.
        let allow = 3 + n + c;
        let notify = allow + 1;
        let block_at = |index: usize| notify + 1 + 4 * index;
        let len = block_at(blocks.len());
        assert!(len <= MAX_PROGRAM, "the probe's filter outgrew MAX_PROGRAM");
        let mut program = [stmt(0, 0); MAX_PROGRAM];
        // Jumps are relative to the next instruction.
        let to = |from: usize, target: usize| (target - from - 1) as u8;
        program[0] = stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, SECCOMP_DATA_ARCH);
        program[1] = jeq(AUDIT_ARCH_NATIVE, 0, to(1, allow)); // foreign arch -> allow
        program[2] = stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, SECCOMP_DATA_NR);
        for (j, &nr) in notified.iter().enumerate() {
            program[3 + j] = jeq(nr as u32, to(3 + j, notify), 0);
        }
        for (j, &(nr, arg, check)) in checked.iter().enumerate() {
            let at = 3 + n + j;
            let block = blocks.iter().position(|&block| block == (arg, check)).expect("every check has a block");
            program[at] = jeq(nr as u32, to(at, block_at(block)), 0);
        }
        program[allow] = stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW);
        program[notify] = stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_USER_NOTIF);
        for (index, &(arg, check)) in blocks.iter().enumerate() {
            let at = block_at(index);
            // The kernel reads an fd or flags as an unsigned int: the low word.
            program[at] = stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, SECCOMP_DATA_ARG0_LOW + 8 * arg);
            program[at + 1] = match check {
                Check::Equals(value) => jeq(value, 0, 1),
                Check::AnyBit(bits) => libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: bits,
                },
            };
            program[at + 2] = stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_USER_NOTIF);
            program[at + 3] = stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW);
        }
        ExitFilter { program, len, exec, boundaries, creations }
    }
}

/// What an argument check of the filter tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Equals(u32),
    AnyBit(u32),
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

/// The parent's end of a probe: serves the test's `exit_group` notifications
/// (and `exec` ones, answered here: see [`super::exec_env`]).
#[derive(Debug)]
pub(crate) struct Listener {
    fd: OwnedFd,
    /// The first call of the test received while it was being spawned (an
    /// exit, or a write: libtest's first announcement), not yet handed out.
    pending: Cell<Option<Event>>,
    /// What to hide from the test's execs: the heap check's preload.
    hidden: Option<HiddenEnv>,
    /// The names the test's creating calls asked for (with
    /// [`ExitFilter::with_creations`]), made or already there, since the
    /// last [`Listener::take_created`].
    created: std::cell::RefCell<Vec<std::path::PathBuf>>,
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
            (0, Some(fd)) => Ok(Listener { fd, pending: Cell::new(None), hidden: None, created: Default::default() }),
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

    /// Whether a call is waiting that polling the fd would not show.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.get().is_some()
    }

    /// Takes one pending `exit_group` call. `Ok(None)` when there is none to
    /// hand out: the caller was killed between poll and receive, or it was
    /// an `exec`, answered here.
    pub(crate) fn receive(&self) -> io::Result<Option<ExitCall>> {
        Ok(match self.receive_event()? {
            Some(Event::Exit(call)) => Some(call),
            Some(Event::Write(write)) => {
                self.proceed(write.call);
                None
            }
            None => None,
        })
    }

    /// Takes one pending call: an `exit_group`, or a write to stdout (with
    /// [`ExitFilter::with_boundaries`]). `Ok(None)` when there is none to
    /// hand out: the caller was killed between poll and receive, or it was
    /// an `exec`, answered here.
    pub(crate) fn receive_event(&self) -> io::Result<Option<Event>> {
        if let Some(event) = self.pending.take() {
            return Ok(Some(event));
        }
        Ok(match self.receive_any()? {
            Some(Notified::Exit(call)) => Some(Event::Exit(call)),
            Some(Notified::Write(write)) => Some(Event::Write(write)),
            Some(Notified::Exec { call, own }) => {
                self.answer_exec(&call, own);
                None
            }
            Some(Notified::Create { call, syscall, args }) => {
                self.note_creation(call, syscall, &args);
                None
            }
            None => None,
        })
    }

    /// Notes the name a stopped creating call asks for (read while the
    /// caller waits), then lets it proceed.
    fn note_creation(&self, call: ExitCall, syscall: libc::c_long, args: &[u64; 6]) {
        let name = super::creations::name_of_call(call.tid, syscall, args);
        self.created.borrow_mut().extend(name);
        self.proceed(call);
    }

    /// The names the test's creating calls asked for since the last call.
    pub(crate) fn take_created(&self) -> Vec<std::path::PathBuf> {
        std::mem::take(&mut *self.created.borrow_mut())
    }

    /// Lets an exec proceed, with the heap check's preload hidden unless the
    /// caller is the forked copy of us execing the test itself.
    fn answer_exec(&self, call: &ExecCall, own: bool) {
        if let (Some(hidden), false) = (&self.hidden, own) {
            hidden.hide_in_exec(call.exit.tid, call.syscall, &call.args);
        }
        self.proceed(call.exit);
    }

    fn receive_any(&self) -> io::Result<Option<Notified>> {
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
        let exit = ExitCall { id: notif.id, tid: notif.pid as i32 };
        let nr = notif.data.nr as libc::c_long;
        Ok(Some(if nr == libc::SYS_exit_group {
            Notified::Exit(exit)
        } else if nr == libc::SYS_write || nr == libc::SYS_writev {
            Notified::Write(WriteCall { call: exit, vectored: nr == libc::SYS_writev, args: notif.data.args })
        } else if super::creations::creates(nr) {
            Notified::Create { call: exit, syscall: nr, args: notif.data.args }
        } else {
            let own = runs_our_executable(exit.tid);
            Notified::Exec { call: ExecCall { exit, syscall: notif.data.nr, args: notif.data.args }, own }
        }))
    }

    /// Lets the waiting call proceed. A caller that died meanwhile is fine.
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

/// A call handed out by [`Listener::receive_event`]; each must be answered
/// with [`Listener::proceed`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    Exit(ExitCall),
    Write(WriteCall),
}

/// One `write`/`writev` to fd 1 waiting for our answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteCall {
    pub(crate) call: ExitCall,
    /// `writev` (args: iovec array, count) rather than `write` (buffer, length).
    pub(crate) vectored: bool,
    pub(crate) args: [u64; 6],
}

/// One notification as received.
enum Notified {
    Exit(ExitCall),
    Write(WriteCall),
    /// `own`: the caller still runs our executable (the forked copy of us
    /// about to exec the test), so its environment is the test's own.
    Exec {
        call: ExecCall,
        own: bool,
    },
    /// A call that makes a name in the file system.
    Create {
        call: ExitCall,
        syscall: libc::c_long,
        args: [u64; 6],
    },
}

struct ExecCall {
    /// Answered as an exit call is.
    exit: ExitCall,
    syscall: i32,
    args: [u64; 6],
}

/// Whether thread `tid` runs the same executable file as this process.
fn runs_our_executable(tid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    static OURS: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    let identity = |path: &str| std::fs::metadata(path).ok().map(|meta| (meta.dev(), meta.ino()));
    let ours = *OURS.get_or_init(|| identity("/proc/self/exe"));
    ours.is_some() && identity(&format!("/proc/{tid}/exe")) == ours
}

/// Runs `spawn`, which forks a child that runs [`child_setup`] with the other
/// end of `socket` and then execs, while a helper thread takes the listener
/// as soon as the child sends it and answers the calls the forked copy of
/// us makes under the filter (its `exec`, and its `_exit` when the exec
/// failed). The first exit or write of anything else (the test, already
/// running) is kept for the watcher, unanswered. `hidden`: what the test's execs must
/// not pass on.
///
/// Returns what `spawn` returned and, when it succeeded, the listener (or
/// why the child could not have one).
pub(crate) fn spawn_probed<T>(
    socket: BorrowedFd<'_>,
    hidden: Option<HiddenEnv>,
    spawn: impl FnOnce() -> io::Result<T>,
) -> (io::Result<T>, Option<io::Result<Listener>>) {
    let (done_reader, done_writer) = match io::pipe() {
        Ok(pipe) => pipe,
        Err(error) => return (Err(error), None),
    };
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("leakcheck-spawn-probe".into())
            .spawn_scoped(scope, move || serve_while_spawning(socket, done_reader.as_fd(), hidden));
        let helper = match helper {
            Ok(helper) => helper,
            Err(error) => return (Err(error), None),
        };
        let spawned = spawn();
        drop(done_writer); // the helper sees EOF: spawning is over
        let listener = helper.join().unwrap_or_else(|_| Err(io::Error::other("the probe's helper thread panicked")));
        let listener = spawned.is_ok().then_some(listener);
        (spawned, listener)
    })
}

/// The helper thread of [`spawn_probed`].
fn serve_while_spawning(
    socket: BorrowedFd<'_>,
    done: BorrowedFd<'_>,
    hidden: Option<HiddenEnv>,
) -> io::Result<Listener> {
    let ready = wait_for_events(&[Some(socket), Some(done)], std::time::Duration::MAX)?;
    if !ready[0] {
        // Spawning ended first; the message, if any, is already there.
        return receive_listener(socket);
    }
    let mut listener = receive_listener(socket)?;
    listener.hidden = hidden;
    loop {
        let ready = wait_for_events(&[Some(listener.as_fd()), Some(done)], std::time::Duration::MAX)?;
        if !ready[0] || is_hung_up(listener.as_fd()) {
            return Ok(listener);
        }
        match listener.receive_any()? {
            Some(Notified::Exit(call)) if runs_our_executable(call.tid) => listener.proceed(call),
            Some(Notified::Exit(call)) => {
                listener.pending.set(Some(Event::Exit(call)));
                return Ok(listener);
            }
            Some(Notified::Exec { call, own }) => listener.answer_exec(&call, own),
            Some(Notified::Create { call, syscall, args }) => listener.note_creation(call, syscall, &args),
            // The forked copy of us writes nothing: this is the test's first
            // write (with boundaries, perhaps libtest announcing its first
            // test), kept for the watcher like an exit.
            Some(Notified::Write(write)) => {
                listener.pending.set(Some(Event::Write(write)));
                return Ok(listener);
            }
            None => {}
        }
    }
}
