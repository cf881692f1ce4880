//! What a leaked thread is running: its own stack, walked by the thread
//! itself in a signal handler.
//!
//! A thread's creation cannot be trapped the way fds are (glibc blocks every
//! signal around `clone3`, see [`super::trap`]), but a leaked thread is still
//! there at the check, and its stack names the code it runs: for a thread the
//! test spawned, the closure passed to `thread::spawn`, at its line in the
//! test's source. We send it a real-time signal; its handler records its
//! stack (raw instruction pointers) into static slots and says so.
//!
//! Invariants: one request at a time (a lock on the requesting side); the
//! handler only acts in the requested thread, allocates nothing, and writes
//! atomics only; a request not answered in time is withdrawn, and a late
//! handler finds no request and does nothing.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

const DEPTH: usize = 64;
/// How long a thread may take to answer (one that blocks the signal never does).
const ANSWER_WITHIN: Duration = Duration::from_millis(100);

static REQUESTED_TID: AtomicI32 = AtomicI32::new(0);
static ANSWERED: AtomicBool = AtomicBool::new(false);
static IPS: [AtomicUsize; DEPTH] = [const { AtomicUsize::new(0) }; DEPTH];
static TAKEN: AtomicUsize = AtomicUsize::new(0);
static ONE_REQUEST: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();

/// A spare real-time signal (glibc keeps the first ones for itself).
fn signal() -> libc::c_int {
    libc::SIGRTMAX() - 1
}

/// The stack of thread `tid` of this process, innermost first, or `None`
/// when it does not answer (it blocks the signal, or is gone).
pub(super) fn stack_of(tid: i32) -> Option<Vec<usize>> {
    let mut installed = true;
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction with our SA_SIGINFO handler, which keeps
        // this module's invariants.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            installed = libc::sigaction(signal(), &action, std::ptr::null_mut()) == 0;
        }
    });
    if !installed {
        return None;
    }
    let _one = ONE_REQUEST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    ANSWERED.store(false, Ordering::SeqCst);
    TAKEN.store(0, Ordering::SeqCst);
    REQUESTED_TID.store(tid, Ordering::SeqCst);
    // SAFETY: tgkill to a thread of our own process with a handled signal.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal()) } == 0;
    let deadline = Instant::now() + ANSWER_WITHIN;
    while sent && !ANSWERED.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    REQUESTED_TID.store(0, Ordering::SeqCst);
    ANSWERED
        .load(Ordering::SeqCst)
        .then(|| IPS[..TAKEN.load(Ordering::SeqCst)].iter().map(|ip| ip.load(Ordering::Relaxed)).collect())
}

extern "C" fn on_signal(_signal: libc::c_int, _info: *mut libc::siginfo_t, context: *mut std::ffi::c_void) {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    if me != REQUESTED_TID.load(Ordering::SeqCst) || ANSWERED.load(Ordering::SeqCst) {
        return;
    }
    // Every recorded ip is resolved as a return address (ip - 1, the call
    // instruction). The interrupted frame's ip is the exact instruction
    // instead, where ip - 1 may belong to the line or function before: it
    // is stored as ip + 1.
    // SAFETY: the kernel passes an SA_SIGINFO handler its ucontext.
    let interrupted = unsafe { interrupted_ip(context) };
    let mut depth = 0;
    // SAFETY: walks this thread's own stack without the usual lock (the
    // interrupted code may hold it); nothing allocates.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let ip = frame.ip() as usize;
            IPS[depth].store(if Some(ip) == interrupted { ip + 1 } else { ip }, Ordering::Relaxed);
            depth += 1;
            depth < DEPTH
        });
    }
    TAKEN.store(depth, Ordering::SeqCst);
    ANSWERED.store(true, Ordering::SeqCst);
}

/// The instruction the signal interrupted, from the handler's ucontext.
///
/// # Safety
/// `context` is the third argument of an SA_SIGINFO handler.
#[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
unsafe fn interrupted_ip(context: *mut std::ffi::c_void) -> Option<usize> {
    let context = context.cast::<libc::ucontext_t>();
    // SAFETY: per the function's contract, a valid ucontext.
    (!context.is_null()).then(|| unsafe { (*context).uc_mcontext.gregs[libc::REG_RIP as usize] as usize })
}

/// Elsewhere unknown: the interrupted frame resolves like the others.
///
/// # Safety
/// None needed.
#[cfg(not(all(target_arch = "x86_64", target_env = "gnu")))]
unsafe fn interrupted_ip(_context: *mut std::ffi::c_void) -> Option<usize> {
    None
}
