//! Where fds and child processes are created, recorded while a leaking
//! test is re-run to explain it.
//!
//! A seccomp filter turns the syscalls that create them into a SIGSYS in the
//! calling thread; the handler records the caller's stack (raw instruction
//! pointers, resolved later, outside the handler), then makes the call
//! itself with [`COOKIE`] as the sixth argument, which the filter lets
//! through, and puts the result in the interrupted thread's return register.
//!
//! - fd syscalls: none uses a sixth argument. The entry keeps the new fds.
//! - `clone` without a new stack (`fork`): made in the handler, the child
//!   returns from it inside the handler (as after `fork` in a handler) and
//!   resumes at the call site. The entry keeps the pid.
//! - `posix_spawn` (how `std::process::Command` starts a child) cannot be
//!   trapped at its `clone3`: glibc blocks every signal around it, and a
//!   SIGSYS that arrives blocked kills the process. It maps a small stack for
//!   the child first, with signals open: that `mmap(MAP_STACK)` is trapped,
//!   and the entry keeps the last pid the kernel had handed out then
//!   (`ns_last_pid`). A leaked child's site is the latest such entry below
//!   its pid: exact for spawns made one after another (spawn waits for the
//!   child's exec), a guess only for spawns racing on two threads. `mmap`'s
//!   sixth argument is the offset, which an anonymous private mapping
//!   ignores once it is page-aligned; the cookie is.
//!
//! Invariants:
//! - Only syscalls made from code mapped at install time trap: the filter is
//!   inherited across `exec`, and an exec'd program has no handler. ASLR puts
//!   that program elsewhere; with ASLR off we do not install.
//! - A trapped call made while SIGSYS is blocked kills the process. So
//!   `dup2`/`dup3` never trap (`posix_spawn`'s child calls them with every
//!   signal blocked), nor `clone3`. A test that blocks every signal and then
//!   opens an fd dies in the explain re-run; its first run's verdict stands,
//!   without sites.
//! - The handler allocates nothing and takes one lock that only the handler
//!   takes; a forked child (another pid) records nothing, since the fork may
//!   have copied that lock held.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

/// In the sixth argument: "let this call through". Page-aligned, so that
/// `mmap` takes it as an offset.
const COOKIE: u64 = 0x6c65_616b_6368_6000;
const CAPACITY: usize = 4096;
const DEPTH: usize = 64;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// A posix_spawn child's stack is a few pages; a thread's is megabytes.
const SPAWN_STACK_MAX: i64 = 256 * 1024;

/// What one trapped call created.
#[derive(Clone, Copy)]
pub(super) enum Created {
    /// One or two fds (pipes and socket pairs make two; -1 = none).
    Fds([i32; 2]),
    /// A process made by `fork`.
    Forked(i32),
    /// A `posix_spawn` about to start a process: the last pid handed out
    /// before it.
    Spawning { last_pid: i32 },
}

#[derive(Clone, Copy)]
pub(super) struct Entry {
    pub(super) created: Created,
    pub(super) ips: [usize; DEPTH],
    pub(super) depth: usize,
}

static RECORDING: AtomicBool = AtomicBool::new(false);
static OWNER_PID: AtomicI32 = AtomicI32::new(0);
static ENTRIES: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// Syscalls that create fds and trap unless they carry the cookie.
const FD_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_open,
    libc::SYS_creat,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_open_by_handle_at,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_pipe,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_eventfd,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_timerfd_create,
    libc::SYS_signalfd,
    libc::SYS_signalfd4,
    libc::SYS_inotify_init,
    libc::SYS_inotify_init1,
    libc::SYS_memfd_create,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_getfd,
    libc::SYS_io_uring_setup,
    libc::SYS_userfaultfd,
    libc::SYS_perf_event_open,
    libc::SYS_fanotify_init,
];

/// Installs the handler and the filter, and starts recording.
pub(super) fn start() -> Result<(), String> {
    if std::fs::read_to_string("/proc/sys/kernel/randomize_va_space").is_ok_and(|value| value.trim() == "0") {
        return Err("ASLR is off, so a program the test execs could not be told apart from this one".into());
    }
    // SAFETY: personality(0xffffffff) only reads the current persona.
    if unsafe { libc::personality(0xffff_ffff) } & libc::ADDR_NO_RANDOMIZE != 0 {
        return Err("ASLR is off for this process (ADDR_NO_RANDOMIZE)".into());
    }
    let ranges = executable_ranges().map_err(|error| format!("could not read /proc/self/maps: {error}"))?;
    // A test that creates an fd while blocking every signal dies of SIGSYS
    // here (see the module's invariants): no core file for that.
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit with a valid struct; lowering a limit always succeeds.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    let program = filter(&ranges)?;
    {
        let mut entries = ENTRIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.clear();
        entries.reserve_exact(CAPACITY);
    }
    // SAFETY: getpid has no preconditions.
    OWNER_PID.store(unsafe { libc::getpid() }, Ordering::SeqCst);
    // SAFETY: a zeroed sigaction with our SA_SIGINFO handler; the handler
    // keeps the invariants of this module.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(format!("sigaction(SIGSYS): {}", std::io::Error::last_os_error()));
        }
    }
    let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: prctl and seccomp with a valid program that outlives the call;
    // TSYNC applies it to every thread of the process.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!("prctl(PR_SET_NO_NEW_PRIVS): {}", std::io::Error::last_os_error()));
        }
        let flags = libc::SECCOMP_FILTER_FLAG_TSYNC;
        let result = libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &fprog);
        if result != 0 {
            return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
        }
    }
    RECORDING.store(true, Ordering::SeqCst);
    Ok(())
}

/// Stops recording and hands over what was recorded. The filter stays (a
/// filter cannot be removed); trapped calls keep going through the handler.
pub(super) fn stop() -> Vec<Entry> {
    RECORDING.store(false, Ordering::SeqCst);
    std::mem::take(&mut *ENTRIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// Executable mappings of this process, split so none crosses a 4 GiB line
/// (the filter compares the two 32-bit halves of the instruction pointer).
fn executable_ranges() -> std::io::Result<Vec<(u64, u64)>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut ranges = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(span), Some(perms)) = (fields.next(), fields.next()) else { continue };
        if !perms.contains('x') {
            continue;
        }
        let Some((start, end)) = span.split_once('-') else { continue };
        let (Ok(mut start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) else {
            continue;
        };
        while start < end {
            // The last byte of this mapping in start's 4 GiB window.
            let last = (end - 1).min(start | 0xffff_ffff);
            ranges.push((start, last));
            start = last + 1;
        }
    }
    Ok(ranges)
}

/// A tiny classic-BPF assembler: jumps to labels, resolved at the end.
struct Program {
    code: Vec<(libc::sock_filter, Option<usize>, Option<usize>)>,
    labels: Vec<Option<usize>>,
}

impl Program {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn place(&mut self, label: usize) {
        self.labels[label] = Some(self.code.len());
    }
    fn stmt(&mut self, code: u32, k: u32) {
        self.code.push((libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }, None, None));
    }
    fn load(&mut self, offset: u32) {
        self.stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    }
    /// Compares the accumulator with `k`; `None` falls through.
    fn jump(&mut self, op: u32, k: u32, yes: Option<usize>, no: Option<usize>) {
        let code = (libc::BPF_JMP | op | libc::BPF_K) as u16;
        self.code.push((libc::sock_filter { code, jt: 0, jf: 0, k }, yes, no));
    }
    fn assemble(self) -> Result<Vec<libc::sock_filter>, String> {
        let mut out = Vec::with_capacity(self.code.len());
        for (at, (mut instruction, yes, no)) in self.code.into_iter().enumerate() {
            let offset = |label: Option<usize>| -> Result<u8, String> {
                let Some(label) = label else { return Ok(0) };
                let target = self.labels[label].ok_or("unplaced label")?;
                u8::try_from(target - at - 1).map_err(|_| "filter jump too long".to_owned())
            };
            instruction.jt = offset(yes)?;
            instruction.jf = offset(no)?;
            out.push(instruction);
        }
        Ok(out)
    }
}

// Offsets in struct seccomp_data.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_IP_LO: u32 = 8;
const DATA_IP_HI: u32 = 12;
const fn data_arg_lo(index: u32) -> u32 {
    16 + 8 * index
}

fn filter(ranges: &[(u64, u64)]) -> Result<Vec<libc::sock_filter>, String> {
    let mut p = Program { code: Vec::new(), labels: Vec::new() };
    let (allow, trap, candidate) = (p.label(), p.label(), p.label());
    let (fcntl, clone, mmap) = (p.label(), p.label(), p.label());
    p.load(DATA_ARCH);
    p.jump(libc::BPF_JEQ, AUDIT_ARCH_X86_64, None, Some(allow));
    p.load(DATA_NR);
    for &nr in FD_SYSCALLS {
        p.jump(libc::BPF_JEQ, nr as u32, Some(candidate), None);
    }
    p.jump(libc::BPF_JEQ, libc::SYS_fcntl as u32, Some(fcntl), None);
    p.jump(libc::BPF_JEQ, libc::SYS_mmap as u32, Some(mmap), None);
    p.jump(libc::BPF_JEQ, libc::SYS_clone as u32, Some(clone), Some(allow));
    // mmap traps only for an anonymous stack (posix_spawn's; pthread's).
    p.place(mmap);
    p.load(data_arg_lo(3));
    p.jump(libc::BPF_JSET, libc::MAP_STACK as u32, None, Some(allow));
    p.jump(libc::BPF_JSET, libc::MAP_ANONYMOUS as u32, Some(candidate), Some(allow));
    // fcntl creates an fd only as F_DUPFD / F_DUPFD_CLOEXEC.
    p.place(fcntl);
    p.load(data_arg_lo(1));
    p.jump(libc::BPF_JEQ, libc::F_DUPFD as u32, Some(candidate), None);
    p.jump(libc::BPF_JEQ, libc::F_DUPFD_CLOEXEC as u32, Some(candidate), Some(allow));
    // clone traps only without a new stack (fork).
    p.place(clone);
    p.load(data_arg_lo(1));
    p.jump(libc::BPF_JEQ, 0, None, Some(allow));
    p.load(data_arg_lo(1) + 4);
    p.jump(libc::BPF_JEQ, 0, Some(candidate), Some(allow));
    // The cookie lets a call through.
    p.place(candidate);
    let check_ip = p.label();
    p.load(data_arg_lo(5));
    p.jump(libc::BPF_JEQ, COOKIE as u32, None, Some(check_ip));
    p.load(data_arg_lo(5) + 4);
    p.jump(libc::BPF_JEQ, (COOKIE >> 32) as u32, Some(allow), None);
    // Trap only calls made from code mapped at install time.
    p.place(check_ip);
    for &(start, last) in ranges {
        let next = p.label();
        p.load(DATA_IP_HI);
        p.jump(libc::BPF_JEQ, (start >> 32) as u32, None, Some(next));
        p.load(DATA_IP_LO);
        p.jump(libc::BPF_JGE, start as u32, None, Some(next));
        p.jump(libc::BPF_JGT, last as u32, Some(next), Some(trap));
        p.place(next);
    }
    p.place(allow);
    p.stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW);
    p.place(trap);
    p.stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_TRAP);
    p.assemble()
}

/// A raw syscall with the cookie in the sixth argument.
///
/// # Safety
///
/// The arguments must be valid for syscall `nr`, as they were for the
/// interrupted call.
unsafe fn let_through(nr: i64, args: [i64; 5]) -> i64 {
    // SAFETY: forwarded contract; libc::syscall returns -1 and sets errno.
    let result = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], COOKIE) };
    if result < 0 {
        // SAFETY: errno of this thread.
        -i64::from(unsafe { *libc::__errno_location() })
    } else {
        result
    }
}

/// `/proc/sys/kernel/ns_last_pid`, read with raw calls that carry the
/// cookie (an allocation-free parse of a few digits).
fn last_pid() -> Option<i32> {
    let path = c"/proc/sys/kernel/ns_last_pid";
    // SAFETY: openat/read/close on a buffer we own; the fd is closed here.
    unsafe {
        let fd =
            let_through(libc::SYS_openat, [libc::AT_FDCWD as i64, path.as_ptr() as i64, libc::O_RDONLY as i64, 0, 0]);
        if fd < 0 {
            return None;
        }
        let mut buf = [0u8; 16];
        let read = libc::read(fd as i32, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd as i32);
        let digits = buf.get(..usize::try_from(read).ok()?)?;
        digits
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .try_fold(0i32, |value, byte| value.checked_mul(10)?.checked_add(i32::from(byte - b'0')))
    }
}

fn record(created: Created) {
    let mut entry = Entry { created, ips: [0; DEPTH], depth: 0 };
    // SAFETY: walking our own stack; unsynchronized because the usual lock
    // could be held by the interrupted code. Nothing here allocates.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            entry.ips[entry.depth] = frame.ip() as usize;
            entry.depth += 1;
            entry.depth < DEPTH
        });
    }
    let mut entries = ENTRIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if entries.len() < entries.capacity() {
        entries.push(entry);
    }
}

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext for an
    // SA_SIGINFO handler. For SIGSYS the syscall number is the int at offset
    // 24 of siginfo (after si_signo, si_errno, si_code, padding, si_call_addr).
    let (nr, gregs) = unsafe {
        let nr = i64::from(*(info as *const u8).add(24).cast::<i32>());
        (nr, &mut (*(context as *mut libc::ucontext_t)).uc_mcontext.gregs)
    };
    let arg = |index: libc::c_int| gregs[index as usize];
    let args = [arg(libc::REG_RDI), arg(libc::REG_RSI), arg(libc::REG_RDX), arg(libc::REG_R10), arg(libc::REG_R8)];
    // SAFETY: getpid has no preconditions.
    let recording = RECORDING.load(Ordering::SeqCst) && unsafe { libc::getpid() } == OWNER_PID.load(Ordering::SeqCst);
    // Before the call: the last pid handed out so far.
    let last_pid = if recording && nr == libc::SYS_mmap && args[1] <= SPAWN_STACK_MAX { last_pid() } else { None };
    // SAFETY: the arguments are the ones the interrupted call was made with.
    let result = unsafe { let_through(nr, args) };
    gregs[libc::REG_RAX as usize] = result;
    // A fork-like clone's child (result 0) is another pid: not recording.
    if !recording || result < 0 {
        return;
    }
    let created = match nr {
        _ if nr == libc::SYS_clone => Created::Forked(result as i32),
        _ if nr == libc::SYS_mmap => match last_pid {
            Some(last_pid) => Created::Spawning { last_pid },
            None => return,
        },
        _ if nr == libc::SYS_pipe || nr == libc::SYS_pipe2 || nr == libc::SYS_socketpair => {
            let pair = if nr == libc::SYS_socketpair { args[3] } else { args[0] } as *const i32;
            // SAFETY: the call succeeded, so the kernel filled both ints.
            unsafe { Created::Fds([*pair, *pair.add(1)]) }
        }
        _ => Created::Fds([result as i32, -1]),
    };
    record(created);
}
