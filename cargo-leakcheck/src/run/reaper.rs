//! Owning every process of the run: subreaper, reaping, signals, killing.
//!
//! During the test phase cargo-leakcheck is a child subreaper: whatever a test
//! orphans (double-forked daemons, `sh -c 'x &'`) is re-parented to us. One
//! signal thread owns SIGCHLD, SIGINT, SIGTERM and SIGHUP (blocked in every
//! other thread, see [`block_signals`]):
//!
//! - SIGCHLD: reap every exited child at once. A test process's status goes to
//!   its worker; an adopted orphan is reaped and forgotten, so a test that
//!   kills its grandchild and checks that it is gone never sees a zombie.
//! - SIGINT/SIGTERM/SIGHUP: mark the run interrupted and kill every running
//!   test's process tree; workers then finish and the partial report is printed.
//!
//! Invariant: `waitpid(-1)` only runs while the registry lock is held, and a
//! worker spawns and registers its test under that same lock, so a test's
//! exit status can never be reaped before its worker is known.

use std::collections::HashMap;
use std::io::{self, PipeWriter, Write};
use std::process::{ChildStderr, ChildStdout, Command};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a test process ended, as the reaper saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    Code(i32),
    Signal(Signal),
}

/// Where the reaper leaves one test's exit status, and how it wakes the worker.
#[derive(Debug)]
pub(crate) struct ExitSlot {
    status: Mutex<Option<ExitStatus>>,
    wake: std::io::PipeWriter,
}

impl ExitSlot {
    pub(crate) fn new(wake: std::io::PipeWriter) -> ExitSlot {
        ExitSlot { status: Mutex::new(None), wake }
    }

    pub(crate) fn status(&self) -> Option<ExitStatus> {
        *lock(&self.status)
    }

    fn wake(&self) {
        // A full pipe already means "wake up"; nothing else can fail here.
        let _ = (&self.wake).write(&[1]);
    }
}

/// A running test as the reaper knows it.
#[derive(Debug)]
pub(crate) struct RunningTest {
    /// The test process; also its process group id.
    pub(crate) pid: i32,
    /// The value of `LEAKCHECK_TEST_ID` in the test's environment.
    pub(crate) marker: String,
    pub(crate) slot: Arc<ExitSlot>,
}

/// A test process just spawned by [`Supervisor::spawn_test`].
#[derive(Debug)]
pub(crate) struct SpawnedTest {
    /// Its pid, also its process group.
    pub(crate) pid: i32,
    /// Where its exit status arrives.
    pub(crate) slot: Arc<ExitSlot>,
    pub(crate) stdout: ChildStdout,
    pub(crate) stderr: ChildStderr,
}

/// Shared by the workers and the signal thread.
#[derive(Debug, Default)]
pub(crate) struct Supervisor {
    running: Mutex<HashMap<i32, RunningTest>>,
    /// The pids of `running`, under a lock of their own: [`processes_of`]
    /// reads it, also while `running` is held (interruption).
    test_pids: Mutex<std::collections::HashSet<i32>>,
    reaping: AtomicBool,
    /// The signal that interrupted the run, or 0.
    interrupted: AtomicI32,
    /// Helper processes of the build phase (cargo), killed on interruption.
    helpers: Mutex<Vec<i32>>,
    /// A child of ours that is no test's: the guardian (see `guardian.rs`).
    spared: AtomicI32,
}

/// Environment variable naming the test that a process belongs to. Every
/// process a test starts inherits it (unless the test clears the environment),
/// which attributes orphans that left the test's process group.
pub(crate) const MARKER_VAR: &str = leakcheck::env_names::TEST_ID;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another worker panicked; the data is plain.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Blocks the signals the signal thread owns. Call first thing in `main`,
/// before any thread exists, so every thread inherits the mask.
///
/// The mask is inherited across `fork` and `exec` (std does not reset it), so
/// every process we spawn must go through [`reset_signals_on_exec`]: a test
/// that ignores SIGTERM because we block it would be a test we broke.
pub(crate) fn block_signals() -> nix::Result<()> {
    owned_signals().thread_block()
}

/// Makes `command`'s process start with no signal blocked.
pub(crate) fn reset_signals_on_exec(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls `reset_signals`, which is
    // async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            reset_signals();
            Ok(())
        });
    }
}

/// Every signal back to its default action and an empty mask: a test must
/// not inherit what we block, nor what our caller ignores (`nohup`, a CI step
/// that ignores SIGINT). Async-signal-safe: callable between `fork` and `exec`.
pub(crate) fn reset_signals() {
    leakcheck::signals::reset_for_exec();
}

fn owned_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set
}

/// The supervisor, once started: [`processes_of`] asks it which of our
/// children are test processes.
static STARTED: std::sync::OnceLock<&'static Supervisor> = std::sync::OnceLock::new();

/// Whether `pid` is a test process we started (registered until its status
/// is delivered): never part of another test.
fn is_registered_test(pid: i32) -> bool {
    STARTED.get().is_some_and(|supervisor| lock(&supervisor.test_pids).contains(&pid))
}

impl Supervisor {
    /// Starts the signal thread. The supervisor lives for the whole process.
    pub(crate) fn start() -> &'static Supervisor {
        let supervisor: &'static Supervisor = Box::leak(Box::default());
        let _ = STARTED.set(supervisor);
        std::thread::Builder::new()
            .name("leakcheck-signals".into())
            .spawn(move || supervisor.serve_signals())
            .expect("the signal thread starts");
        supervisor
    }

    fn serve_signals(&self) {
        let set = owned_signals();
        loop {
            match set.wait() {
                Ok(Signal::SIGCHLD) => self.reap(),
                Ok(signal) => self.interrupt(signal),
                Err(_) => continue,
            }
        }
    }

    /// Becomes the subreaper of every orphan and starts reaping. From here
    /// on, children must be waited for through the registry, not `Child::wait`.
    pub(crate) fn begin_test_phase(&self) -> std::io::Result<()> {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.reaping.store(true, Ordering::SeqCst);
        self.reap();
        Ok(())
    }

    /// Ends the test phase: any process still re-parented to us belongs to
    /// some test but could not be attributed (it left the test's process
    /// group and cleared its environment). It is terminated all the same, so
    /// no run leaves a process behind; returns what was found, for a warning.
    pub(crate) fn end_test_phase(&self) -> Vec<leakcheck::snapshot::ProcessInfo> {
        let spared = self.spared.load(Ordering::SeqCst);
        let ours = children_of(std::process::id() as i32).into_iter().filter(|&child| child != spared).collect();
        let strays = with_descendants(ours);
        let found = strays.iter().filter_map(|&pid| leakcheck::snapshot::process_info(pid).ok()).collect();
        terminate(&strays, Duration::from_millis(200), || {});
        found
    }

    /// Never ends `pid` with the test phase: it is ours, not a test's.
    pub(crate) fn spare(&self, pid: i32) {
        self.spared.store(pid, Ordering::SeqCst);
    }

    /// The signal that interrupted the run, if any.
    pub(crate) fn interrupted(&self) -> Option<Signal> {
        Signal::try_from(self.interrupted.load(Ordering::SeqCst)).ok()
    }

    /// Spawns a test process (stdout and stderr piped) with the registry
    /// locked, and registers it: see the module's invariant. Its exit status
    /// will arrive in the returned slot, and `wake` will be written to.
    pub(crate) fn spawn_test(&self, command: &mut Command, marker: &str, wake: &PipeWriter) -> io::Result<SpawnedTest> {
        let slot = Arc::new(ExitSlot::new(wake.try_clone()?));
        let mut running = lock(&self.running);
        let mut child = command.spawn()?;
        let pid = child.id() as i32;
        running.insert(pid, RunningTest { pid, marker: marker.to_owned(), slot: slot.clone() });
        lock(&self.test_pids).insert(pid);
        drop(running);
        if self.interrupted().is_some() {
            kill_group(pid, Signal::SIGKILL);
        }
        // `child` is never waited for through std: the reaper owns that.
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        Ok(SpawnedTest { pid, slot, stdout, stderr })
    }

    /// Forgets a test whose status was delivered.
    pub(crate) fn unregister(&self, pid: i32) {
        lock(&self.running).remove(&pid);
        lock(&self.test_pids).remove(&pid);
    }

    pub(crate) fn add_helper(&self, pid: i32) {
        lock(&self.helpers).push(pid);
    }

    pub(crate) fn remove_helper(&self, pid: i32) {
        lock(&self.helpers).retain(|&helper| helper != pid);
    }

    fn reap(&self) {
        if !self.reaping.load(Ordering::SeqCst) {
            return;
        }
        let running = lock(&self.running);
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ExitStatus::Signal(signal)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue, // stopped or continued: not an exit
            };
            if let Some(test) = running.get(&pid.as_raw()) {
                *lock(&test.slot.status) = Some(status);
                test.slot.wake();
            }
            // Anything else was an adopted orphan: reaped, nothing to report.
        }
    }

    /// The first signal ends the run in order (tests killed, partial report);
    /// a second one ends it at once, the tests killed first (the guardian
    /// removes the scratch directories).
    fn interrupt(&self, signal: Signal) {
        let again = self.interrupted.compare_exchange(0, signal as i32, Ordering::SeqCst, Ordering::SeqCst).is_err();
        for &helper in lock(&self.helpers).iter() {
            let _ = kill(Pid::from_raw(helper), Signal::SIGTERM);
        }
        for test in lock(&self.running).values() {
            kill_tree(&processes_of(test.pid, &test.marker), Signal::SIGKILL);
            kill_group(test.pid, Signal::SIGKILL);
            test.slot.wake();
        }
        if again {
            eprintln!("cargo-leakcheck: interrupted again ({signal}): stopping now, without a report");
            // SAFETY: ends the process at once; nothing of ours needs
            // flushing that the report would not have (there is none).
            unsafe { libc::_exit(128 + signal as i32) };
        }
    }
}

/// Sends `signal` to the process group `pgid`; a group already gone is fine.
pub(crate) fn kill_group(pgid: i32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// Sends `signal` to each pid; processes already gone are fine.
pub(crate) fn kill_tree(pids: &[i32], signal: Signal) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Direct children of `pid` (all of its threads' children).
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let mut children = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return children };
    for task in tasks.flatten() {
        if let Ok(list) = leakcheck::snapshot::read_lossy(task.path().join("children")) {
            children.extend(list.split_ascii_whitespace().filter_map(|child| child.parse::<i32>().ok()));
        }
    }
    children
}

/// `roots` and every descendant of them, parents before children.
pub(crate) fn with_descendants(roots: Vec<i32>) -> Vec<i32> {
    let mut all = roots;
    let mut next = 0;
    while next < all.len() {
        for child in children_of(all[next]) {
            if !all.contains(&child) {
                all.push(child);
            }
        }
        next += 1;
    }
    all
}

/// Every live process of one test other than the test process itself: its
/// descendants, and the orphans adopted by us that belong to it (same process
/// group, or carrying its marker), with their descendants.
pub(crate) fn processes_of(test_pid: i32, marker: &str) -> Vec<i32> {
    let own = std::process::id() as i32;
    let mut roots = children_of(test_pid);
    for child in children_of(own) {
        // Another test's process is not looked into (reading its
        // environment was most of a batch's cost per test).
        if child != test_pid && !is_registered_test(child) && belongs_to(child, test_pid, marker) {
            roots.push(child);
        }
    }
    let mut all = with_descendants(roots);
    all.retain(|&pid| pid != test_pid);
    all
}

/// Orphans adopted by us whose environment carries exactly `marker`, with
/// their descendants.
pub(crate) fn adopted_with_marker(marker: &str) -> Vec<i32> {
    let own = std::process::id() as i32;
    let roots = children_of(own).into_iter().filter(|&child| has_marker(child, marker)).collect();
    with_descendants(roots)
}

fn has_marker(pid: i32, marker: &str) -> bool {
    let wanted = format!("{MARKER_VAR}={marker}");
    has_environ_entry(pid, |entry| entry == wanted.as_bytes())
}

/// Whether an entry of `pid`'s environment (`NAME=VALUE` bytes) matches;
/// false for a process gone or not ours to read.
pub(crate) fn has_environ_entry(pid: i32, matches: impl Fn(&[u8]) -> bool) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    environ.split(|&byte| byte == 0).any(matches)
}

fn belongs_to(pid: i32, test_pgid: i32, marker: &str) -> bool {
    if let Ok(info) = leakcheck::snapshot::process_info(pid) {
        if info.pgid == test_pgid {
            return true;
        }
    }
    has_marker(pid, marker)
}

/// Ends `pids`: SIGTERM, then SIGKILL for whatever is still alive after
/// `grace`. `serve` is called while waiting (the probe's listener must keep
/// answering their `exit_group` calls). Returns once none is alive.
pub(crate) fn terminate(pids: &[i32], grace: Duration, mut serve: impl FnMut()) {
    let alive = |pids: &[i32]| -> Vec<i32> { pids.iter().copied().filter(|&pid| is_alive(pid)).collect() };
    kill_tree(pids, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut left = alive(pids);
    while !left.is_empty() && Instant::now() < deadline {
        serve();
        std::thread::sleep(Duration::from_millis(2));
        left = alive(&left);
    }
    for _ in 0..500 {
        if left.is_empty() {
            return;
        }
        kill_tree(&left, Signal::SIGKILL);
        serve();
        std::thread::sleep(Duration::from_millis(2));
        left = alive(&left);
    }
}

/// True while `pid` exists and is not a zombie (a zombie is dead; the reaper
/// or its parent will collect it).
pub(crate) fn is_alive(pid: i32) -> bool {
    leakcheck::snapshot::process_info(pid).is_ok_and(|info| info.state != 'Z' && info.state != 'X')
}
