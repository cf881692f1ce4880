//! One test, alone in its own process, judged at its exit.
//!
//! Lifecycle: spawn `<binary> <name> --exact --nocapture --test-threads=1` in
//! its package directory, in a new process group, under the exit probe;
//! capture its output; when the process calls `exit_group`, snapshot it
//! (settling leaks for up to the grace period) and let it go; after it exited,
//! every process it left behind is reported, then terminated and reaped.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use leakcheck::diff::{child_leak, mark_unnamed_threads, settle_until, Baseline, Delta};
use leakcheck::record::InProcessReport;
use leakcheck::snapshot::{self, key_of_path, FdKey};
use leakcheck::{Leak, Outcome, TestRecord};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::output::Capture;
use super::probe::{self, ExitFilter, Listener};
use super::reaper::{self, ExitStatus, SpawnedTest, Supervisor, MARKER_VAR};
use crate::list::TestCase;

/// What every test of a run shares.
#[derive(Debug)]
pub(crate) struct RunContext {
    pub(crate) supervisor: &'static Supervisor,
    pub(crate) filter: Option<ExitFilter>,
    pub(crate) grace: Duration,
    pub(crate) timeout: Duration,
    /// Extra arguments for every test process (`--ignored`, ...).
    pub(crate) test_args: Vec<String>,
    /// Set once the probe was refused; the first refusal prints the warning.
    pub(crate) probe_refused: std::sync::OnceLock<io::Error>,
    /// A private directory for in-process verdicts (`LEAKCHECK_RECORD_FILE`).
    pub(crate) scratch: std::path::PathBuf,
    /// Severities, allow rules and baseline, applied to every record.
    pub(crate) policy: crate::policy::Policy,
    /// `--repeat`: passed to tests as `LEAKCHECK_REPEAT`; only leakcheck's
    /// own code in a test (attribute, harness) can repeat it.
    pub(crate) repeat: Option<u32>,
    /// Re-run leaking tests that have leakcheck's code inside to record
    /// where their leaks were created (off with `--no-explain`).
    pub(crate) explain: bool,
    /// `--fork-per-test`: harness targets never reuse a child for another test.
    pub(crate) fork_per_test: bool,
}

/// A worker's wake-up pipe: the reaper writes to it when the worker's test exits.
#[derive(Debug)]
pub(crate) struct Waker {
    pub(super) reader: io::PipeReader,
    pub(super) writer: io::PipeWriter,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        let (reader, writer) = io::pipe()?;
        nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
        Ok(Waker { reader, writer })
    }

    pub(super) fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.reader).read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Time allowed to processes a test left behind to end on SIGTERM.
pub(super) const TERMINATE_GRACE: Duration = Duration::from_millis(200);
/// How long to keep reading output after every process of the test is gone.
pub(super) const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// What the probe saw at `exit_group`.
#[derive(Debug)]
struct ExitView {
    leaks: Vec<Leak>,
    /// Pids of the direct children seen then.
    children: Vec<i32>,
    /// Whether the main thread called `exit_group` (libtest returning from
    /// `main`), rather than a test thread calling `std::process::exit`.
    by_main_thread: bool,
    /// stdin, stdout or stderr, closed by the test.
    closed: Vec<i32>,
}

/// libtest's arguments to run `case` alone, as `cargo leakcheck` does.
pub(crate) fn libtest_args(context: &RunContext, case: &TestCase) -> Vec<String> {
    let mut args = vec![case.name.clone(), "--exact".into(), "--nocapture".into(), "--test-threads=1".into()];
    args.extend(context.test_args.iter().cloned());
    args
}

/// Runs `case` (its binary with `args`) and judges it. `None` when the run
/// was interrupted under it.
///
/// A test checked in-process (`#[leakcheck::test]`) that leaked is run once
/// more with `LEAKCHECK_EXPLAIN=record`, which records where its leaks were
/// created; those sites go to the first run's leaks, whose verdict stands.
pub(crate) fn run_test(
    context: &RunContext,
    waker: &Waker,
    case: &TestCase,
    args: &[String],
) -> io::Result<Option<TestRecord>> {
    let Some((mut record, checked_in_process)) = run_once(context, waker, case, args, None)? else {
        return Ok(None);
    };
    if context.explain && checked_in_process && !record.leaks.is_empty() && record.outcome != Outcome::TimedOut {
        let heap = record.leaks.iter().any(|leak| matches!(leak, Leak::Heap { .. }));
        if let Ok(Some((explained, _))) = run_once(context, waker, case, args, Some(heap)) {
            leakcheck::sites::attach(&mut record.leaks, &explained.leaks);
        }
    }
    // A plain #[test] has no stacks; the line of its body naming a leak is
    // the next best thing.
    if context.explain && !record.leaks.is_empty() {
        crate::mentions::attach(&mut record, &case.binary.cwd);
    }
    Ok(Some(record))
}

/// One run of `case`; with it, whether a `#[leakcheck::test]` checked it
/// from inside. `explain: Some(heap)` makes it an explain re-run.
fn run_once(
    context: &RunContext,
    waker: &Waker,
    case: &TestCase,
    args: &[String],
    explain: Option<bool>,
) -> io::Result<Option<(TestRecord, bool)>> {
    waker.drain();
    let binary = &case.binary;
    let marker = format!("{}:{}", std::process::id(), case.serial);
    // Where a `#[leakcheck::test]` in the test leaves its in-process verdict.
    let record_file = context.scratch.join(format!("{}.json", case.serial));
    let _ = std::fs::remove_file(&record_file);
    let mut command = Command::new(&binary.executable);
    command
        .args(args)
        .current_dir(&binary.cwd)
        .envs(binary.env.iter().map(|(key, value)| (key, value)))
        .env(MARKER_VAR, &marker)
        .env("LEAKCHECK_RECORD_FILE", &record_file)
        .envs(context.repeat.map(|runs| ("LEAKCHECK_REPEAT", runs.to_string())))
        .envs(explain.map(|heap| (leakcheck::sites::EXPLAIN_ENV, if heap { "record-heap" } else { "record" })))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);

    let probe_socket = match context.filter {
        Some(_) if context.probe_refused.get().is_none() => {
            Some(socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?)
        }
        _ => None,
    };
    let child_end = probe_socket.as_ref().map(|(_, child)| child.as_raw_fd());
    let filter = context.filter;
    // SAFETY: between fork and exec the closure only empties the signal mask
    // and, with the probe, runs `child_setup` on plain captured data (the
    // filter program and an fd number); both are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            reaper::unblock_all_signals();
            if let (Some(filter), Some(socket)) = (&filter, child_end) {
                probe::child_setup(filter, socket);
            }
            Ok(())
        });
    }

    let started = Instant::now();
    let SpawnedTest { pid, slot, stdout, stderr } =
        context.supervisor.spawn_test(&mut command, &marker, &waker.writer)?;

    let listener = probe_socket.and_then(|(parent, child_end)| {
        drop::<OwnedFd>(child_end);
        match probe::receive_listener(parent.as_fd()) {
            Ok(listener) => Some(listener),
            Err(error) => {
                let _ = context.probe_refused.set(error);
                None
            }
        }
    });

    let mut baseline = Baseline {
        fds: [(0, key_of_path("/dev/null")), (1, key_of(&stdout)), (2, key_of(&stderr))]
            .into_iter()
            .filter_map(|(fd, key)| Some((fd, key?)))
            .collect(),
        threads: Default::default(),
        children: Default::default(),
    };
    baseline.add_thread(pid, pid);
    let mut stdout = Capture::new(stdout.into());
    let mut stderr = Capture::new(stderr.into());
    let mut exit_view: Option<ExitView> = None;
    let deadline = started + context.timeout;
    let mut timed_out = false;
    let mut killed = false;
    // Until every process under the probe is gone: then the listener only
    // ever reports hang-up, and polling it again would spin until the
    // reaper has the exit status (measured: most of cargo-leakcheck's own
    // CPU time at 10,000 tests).
    let mut probe_live = listener.is_some();
    let kill_all = || {
        reaper::kill_tree(&reaper::processes_of(pid, &marker), Signal::SIGKILL);
        reaper::kill_group(pid, Signal::SIGKILL);
    };

    // Until the reaper has the exit status. Nothing here may return early:
    // the test's processes must be ended on every path.
    let status = loop {
        if let Some(status) = slot.status() {
            break status;
        }
        let wait = if killed { Duration::from_millis(50) } else { deadline.saturating_duration_since(Instant::now()) };
        let probe = listener.as_ref().filter(|_| probe_live).map(|listener| listener.as_fd());
        let fds = [stdout.fd(), stderr.fd(), probe, Some(waker.reader.as_fd())];
        let ready = wait_for_events(&fds, wait).unwrap_or_else(|_| vec![true; fds.len()]);
        if ready[0] {
            stdout.read_some();
        }
        if ready[1] {
            stderr.read_some();
        }
        if ready[2] {
            if let Some(listener) = &listener {
                if serve_exit_call(listener, pid, case, &baseline, context, &mut exit_view).is_err() && !killed {
                    // The probe broke: the test cannot be judged; end it.
                    killed = true;
                    kill_all();
                }
                probe_live = !is_hung_up(listener.as_fd());
            }
        }
        if ready[3] {
            waker.drain();
        }
        let interrupted = context.supervisor.interrupted().is_some();
        if !killed && (Instant::now() >= deadline || interrupted) && slot.status().is_none() {
            timed_out = !interrupted;
            killed = true;
            kill_all();
        }
    };
    let duration = started.elapsed();
    context.supervisor.unregister(pid);

    // Everything the test left alive, now re-parented to us.
    let serve = || {
        if let Some(listener) = &listener {
            let _ = serve_exit_call_nowait(listener);
        }
    };
    let leftovers = settle_leftovers(pid, &marker, if killed { Duration::ZERO } else { context.grace }, serve);
    let mut leaks = exit_view.as_ref().map(|view| view.leaks.clone()).unwrap_or_default();
    let direct: &[i32] = exit_view.as_ref().map_or(&[], |view| &view.children);
    for &leftover in &leftovers {
        if direct.contains(&leftover) {
            continue;
        }
        if let Ok(info) = snapshot::process_info(leftover) {
            leaks.push(child_leak(info, exit_view.is_some()));
        }
    }
    let terminate_grace =
        if timed_out || context.supervisor.interrupted().is_some() { Duration::ZERO } else { TERMINATE_GRACE };
    reaper::terminate(&leftovers, terminate_grace, serve);
    stdout.drain_until_eof(DRAIN_LIMIT);
    stderr.drain_until_eof(DRAIN_LIMIT);

    if context.supervisor.interrupted().is_some() && !timed_out && exit_view.is_none() {
        return Ok(None);
    }
    // libtest finished when its main thread returned from `main` (the probe
    // saw who called exit_group); without the probe, its closing line says
    // so (absent if the test closed stdout: then it reads as a failure).
    let finished = match &exit_view {
        Some(view) => view.by_main_thread,
        None => stdout.contains(b"\ntest result: ok."),
    };
    let in_process = read_in_process_report(&record_file);
    let mut unchecked = Vec::new();
    let mut allowed = Vec::new();
    let (outcome, message) = match &in_process {
        // A `#[leakcheck::test]` checked the test from inside: its verdict
        // knows the heap and the test's allow rules. Only processes left
        // alive after the exit, which it could not see, are added.
        Some(report) => {
            let known: Vec<i32> =
                report.leaks.iter().chain(report.allowed.iter().map(|a| &a.leak)).filter_map(child_pid).collect();
            let orphans: Vec<Leak> = leaks
                .drain(..)
                .filter(|leak| matches!(leak, Leak::Child { orphaned: true, .. }))
                .filter(|leak| child_pid(leak).is_none_or(|pid| !known.contains(&pid)))
                .collect();
            leaks = report.leaks.clone();
            leaks.extend(orphans);
            allowed = report.allowed.clone();
            unchecked = report.unchecked.clone();
            let failed_by_leak_only = report.body_passed && status == ExitStatus::Code(101) && !report.leaks.is_empty();
            if failed_by_leak_only || (report.body_passed && status == ExitStatus::Code(0)) {
                judge(ExitStatus::Code(0), timed_out, true, &leaks, context.timeout)
            } else {
                judge(status, timed_out, finished, &leaks, context.timeout)
            }
        }
        None => judge(status, timed_out, finished, &leaks, context.timeout),
    };
    if in_process.is_none() && listener.is_none() {
        unchecked.extend(["fd".to_owned(), "thread".to_owned()]);
    }
    let output = (outcome != Outcome::Passed).then(|| {
        let mut text = stdout.into_text();
        text.push_str(&stderr.into_text());
        text
    });
    let closed_fds = match &in_process {
        Some(report) => report.closed_fds.clone(),
        None => exit_view.as_ref().map(|view| view.closed.clone()).unwrap_or_default(),
    };
    let checked_in_process = in_process.is_some();
    let record = TestRecord {
        binary: binary.id.clone(),
        name: case.name.clone(),
        outcome,
        duration_ms: duration.as_millis() as u64,
        message,
        leaks,
        unchecked,
        allowed,
        warnings: Vec::new(),
        closed_fds,
        output,
    };
    Ok(Some((record, checked_in_process)))
}

fn read_in_process_report(path: &std::path::Path) -> Option<InProcessReport> {
    let bytes = std::fs::read(path).ok()?;
    let _ = std::fs::remove_file(path);
    serde_json::from_slice(&bytes).ok()
}

fn child_pid(leak: &Leak) -> Option<i32> {
    match leak {
        Leak::Child { pid, .. } => Some(*pid),
        _ => None,
    }
}

fn judge(
    status: ExitStatus,
    timed_out: bool,
    finished: bool,
    leaks: &[Leak],
    timeout: Duration,
) -> (Outcome, Option<String>) {
    if timed_out {
        return (
            Outcome::TimedOut,
            Some(format!("ran past the time limit of {}s and was killed", timeout.as_secs_f64())),
        );
    }
    match status {
        ExitStatus::Code(0) if finished => (if leaks.is_empty() { Outcome::Passed } else { Outcome::Leaked }, None),
        ExitStatus::Code(0) => (
            Outcome::Failed,
            Some("the test process exited with status 0 before the test finished (std::process::exit?)".into()),
        ),
        ExitStatus::Code(101) => (Outcome::Failed, Some("the test failed (exit status 101)".into())),
        ExitStatus::Code(code) => (Outcome::Failed, Some(format!("the test process exited with status {code}"))),
        ExitStatus::Signal(signal) => {
            (Outcome::Failed, Some(format!("the test process was killed by signal {signal}")))
        }
    }
}

/// Answers one pending `exit_group` call. The test process's own call is
/// snapshotted first (once), while it still holds everything.
fn serve_exit_call(
    listener: &Listener,
    pid: i32,
    case: &TestCase,
    baseline: &Baseline,
    context: &RunContext,
    exit_view: &mut Option<ExitView>,
) -> io::Result<()> {
    let test_name = case.name.as_str();
    let Some(call) = listener.receive()? else { return Ok(()) };
    let is_test_process = call.tid == pid || snapshot::tgid_of(call.tid).is_ok_and(|tgid| tgid == pid);
    if is_test_process && exit_view.is_none() {
        let mut baseline = baseline.clone();
        baseline.add_thread(pid, call.tid);
        let mut children = Vec::new();
        let read = || {
            let snapshot = snapshot::take(pid)?;
            children = snapshot.children.iter().map(|child| child.pid).collect();
            Ok(Delta::between(&baseline, snapshot))
        };
        // What the configuration accepts will not go away by waiting.
        let accepted =
            |delta: &Delta| context.policy.accepts_all(&case.binary.id, test_name, delta.clone().into_leaks(pid));
        let delta = settle_until(context.grace, read, accepted);
        match delta {
            Ok(delta) => {
                let closed = delta.closed.clone();
                let mut leaks = delta.into_leaks(pid);
                // libtest names each test's thread after the test.
                mark_unnamed_threads(&mut leaks, test_name);
                *exit_view = Some(ExitView { leaks, children, by_main_thread: call.tid == pid, closed })
            }
            Err(_) => {
                *exit_view =
                    Some(ExitView { leaks: Vec::new(), children, by_main_thread: call.tid == pid, closed: Vec::new() });
            }
        }
    }
    listener.proceed(call);
    Ok(())
}

/// The processes of the test still alive after it exited, given up to
/// `grace` to end by themselves (a child that was exiting with its parent).
/// Their `exit_group` calls are answered meanwhile: the filter holds each
/// until we do.
fn settle_leftovers(pid: i32, marker: &str, grace: Duration, serve: impl Fn()) -> Vec<i32> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        serve();
        let alive: Vec<i32> = reaper::processes_of(pid, marker).into_iter().filter(|&p| reaper::is_alive(p)).collect();
        if alive.is_empty() || start.elapsed() >= grace {
            return alive;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Answers every pending call of processes being terminated, without waiting.
fn serve_exit_call_nowait(listener: &Listener) -> io::Result<()> {
    while wait_for_events(&[Some(listener.as_fd())], Duration::ZERO)?[0] {
        match listener.receive()? {
            Some(call) => listener.proceed(call),
            None => break,
        }
    }
    Ok(())
}

/// Whether `fd` reports hang-up (for a seccomp listener: no process uses
/// its filter any more).
fn is_hung_up(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut poll_fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut poll_fds, PollTimeout::ZERO).is_ok()
        && poll_fds[0].revents().is_some_and(|events| events.contains(PollFlags::POLLHUP))
}

/// Polls the present fds for input (or hang-up); returns which are ready.
pub(crate) fn wait_for_events(fds: &[Option<std::os::fd::BorrowedFd<'_>>], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut poll_fds: Vec<PollFd<'_>> = fds.iter().flatten().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)).collect();
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    match poll(&mut poll_fds, PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(error) => return Err(error.into()),
    }
    let mut ready = poll_fds.iter().map(|fd| fd.revents().is_some_and(|events| !events.is_empty()));
    Ok(fds.iter().map(|fd| fd.is_some() && ready.next().unwrap_or(false)).collect())
}

/// What one of our pipe ends refers to: the child's end is the same pipe.
fn key_of(fd: &impl AsRawFd) -> Option<FdKey> {
    key_of_path(&format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Marks every fd above stderr close-on-exec, so each test process starts
/// with exactly stdin, stdout and stderr, whatever cargo-leakcheck itself
/// inherited (a terminal multiplexer's pipe, a jobserver). Without this an
/// inherited fd would either be blamed on every test or have to be part of
/// every baseline. Call once at start-up.
pub(crate) fn stop_fd_inheritance() -> io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        if fd > 2 {
            // SAFETY: F_GETFD/F_SETFD only change the fd's close-on-exec flag;
            // an fd closed meanwhile (the directory's own) just fails with EBADF.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    }
    Ok(())
}
