//! Watching one started test process until it is gone: its output read as
//! it comes, its `exit_group` call snapshotted by the probe (settled for up
//! to the grace), the time limit kept, and whatever it left alive collected,
//! then terminated.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use leakcheck::diff::{child_leak, mark_unnamed_threads, settle_until, Delta};
use leakcheck::snapshot;
use leakcheck::Leak;
use nix::sys::signal::Signal;

use super::context::{RunContext, Settle, Waker, DRAIN_LIMIT, TERMINATE_GRACE};
use super::poll::{is_hung_up, wait_for_events};
use super::probe::Listener;
use super::reaper::{self, ExitStatus};
use super::spawn::TestProcess;
use crate::list::TestCase;

/// What the probe saw at `exit_group`.
#[derive(Debug)]
pub(super) struct ExitView {
    pub(super) leaks: Vec<Leak>,
    /// Pids of the direct children seen then.
    children: Vec<i32>,
    /// Whether the main thread called `exit_group` (libtest returning from
    /// `main`), rather than a test thread calling `std::process::exit`.
    pub(super) by_main_thread: bool,
    /// The program the test process runs at its exit, when it is no longer
    /// the test binary (the test exec'd it: libtest never finished).
    pub(super) replaced_by: Option<String>,
    /// stdin, stdout or stderr, closed by the test.
    pub(super) closed: Vec<i32>,
    /// Settling stopped early for lasting shapes ([`Settle::SkipLasting`]).
    pub(super) hurried: bool,
    /// How long the exit snapshot waited for leaks to go away: not the
    /// test's time.
    settled_for: Duration,
}

/// How the watched process ended.
#[derive(Debug)]
pub(super) struct Ended {
    pub(super) status: ExitStatus,
    pub(super) duration: Duration,
    pub(super) timed_out: bool,
    pub(super) exit_view: Option<ExitView>,
    /// Everything left behind: the exit view's leaks, then the processes
    /// still alive after the exit (already terminated and reaped).
    pub(super) leaks: Vec<Leak>,
    /// What was left in the test's temp dir once every process of it was
    /// gone.
    pub(super) files: Vec<Leak>,
}

/// Watches `process` until the reaper has its exit status, then collects
/// and ends what it left alive. Nothing here returns early: the test's
/// processes are ended on every path.
pub(super) fn watch(context: &RunContext, waker: &Waker, case: &TestCase, process: &mut TestProcess) -> Ended {
    let (pid, marker) = (process.pid, process.marker.clone());
    let deadline = process.started + context.timeout;
    let mut exit_view: Option<ExitView> = None;
    let mut timed_out = false;
    let mut killed = false;
    // Until every process under the probe is gone: then the listener only
    // ever reports hang-up, and polling it again would spin until the
    // reaper has the exit status (measured: most of cargo-leakcheck's own
    // CPU time at 10,000 tests).
    let mut probe_live = process.listener.is_some();
    let kill_all = || {
        reaper::kill_tree(&reaper::processes_of(pid, &marker), Signal::SIGKILL);
        reaper::kill_group(pid, Signal::SIGKILL);
    };
    let status = loop {
        if let Some(status) = process.slot.status() {
            break status;
        }
        // An exit call taken while the test was spawned shows in no poll.
        let pending = process.listener.as_ref().is_some_and(Listener::has_pending);
        let wait = match (pending, killed) {
            (true, _) => Duration::ZERO,
            (false, true) => Duration::from_millis(50),
            (false, false) => deadline.saturating_duration_since(Instant::now()),
        };
        let probe = process.listener.as_ref().filter(|_| probe_live).map(|listener| listener.as_fd());
        let fds = [process.stdout.fd(), process.stderr.fd(), probe, Some(waker.reader.as_fd())];
        let mut ready = wait_for_events(&fds, wait).unwrap_or_else(|_| vec![true; fds.len()]);
        ready[2] |= pending;
        if ready[0] {
            process.stdout.read_some();
        }
        if ready[1] {
            process.stderr.read_some();
        }
        if ready[2] {
            if let Some(listener) = &process.listener {
                let served = serve_exit_call(listener, process, case, context, &mut exit_view);
                if served.is_err() && !killed {
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
        if !killed && (Instant::now() >= deadline || interrupted) && process.slot.status().is_none() {
            timed_out = !interrupted;
            killed = true;
            kill_all();
        }
    };
    let settled_for = exit_view.as_ref().map_or(Duration::ZERO, |view| view.settled_for);
    let duration = process.started.elapsed().saturating_sub(settled_for);
    context.supervisor.unregister(pid);
    let leaks = end_leftovers(context, process, exit_view.as_ref(), killed, timed_out);
    let mut files = process.temp.as_ref().map(|temp| temp.left_since(&Default::default())).unwrap_or_default();
    files.extend(process.files_made_outside(context, case));
    Ended { status, duration, timed_out, exit_view, leaks, files }
}

/// The exit view's leaks plus every process of the test still alive after
/// it exited (re-parented to us), which are then terminated and reaped; the
/// output is read to its end.
fn end_leftovers(
    context: &RunContext,
    process: &mut TestProcess,
    exit_view: Option<&ExitView>,
    killed: bool,
    timed_out: bool,
) -> Vec<Leak> {
    let listener = &process.listener;
    let serve = || {
        if let Some(listener) = listener {
            let _ = serve_exit_call_nowait(listener);
        }
    };
    let grace = if killed { Duration::ZERO } else { context.grace };
    let leftovers = settle_leftovers(process.pid, &process.marker, grace, serve);
    let mut leaks = exit_view.map(|view| view.leaks.clone()).unwrap_or_default();
    let direct: &[i32] = exit_view.map_or(&[], |view| &view.children);
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
    process.stdout.drain_until_eof(DRAIN_LIMIT);
    process.stderr.drain_until_eof(DRAIN_LIMIT);
    leaks
}

/// Whether every leak is an fd of a shape that outlasted a whole grace in
/// another test of `binary`.
fn all_lasting_fds(context: &RunContext, binary: &str, test_name: &str, leaks: &[Leak]) -> bool {
    let lasting = context.lasting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let known = lasting.get(binary);
    leaks.iter().all(|leak| {
        matches!(leak, Leak::Fd { .. })
            && leakcheck::shape::shape_of(leak, &[test_name])
                .is_some_and(|shape| known.is_some_and(|k| k.contains(&shape)))
    })
}

/// Answers one pending `exit_group` call. The test process's own call is
/// snapshotted first (once), while it still holds everything.
fn serve_exit_call(
    listener: &Listener,
    process: &TestProcess,
    case: &TestCase,
    context: &RunContext,
    exit_view: &mut Option<ExitView>,
) -> io::Result<()> {
    let (pid, baseline, settle, heap_log) =
        (process.pid, &process.baseline, process.settle, process.heap_log.as_deref());
    // The heap runtime keeps its report open after writing it: ours, not
    // the test's.
    let heap_report = heap_log.map(|prefix| format!("{}.", prefix.display()));
    let test_name = case.name.as_str();
    let Some(call) = listener.receive()? else { return Ok(()) };
    let is_test_process = call.tid == pid || snapshot::tgid_of(call.tid).is_ok_and(|tgid| tgid == pid);
    if is_test_process && exit_view.is_none() {
        let mut baseline = baseline.clone();
        baseline.add_thread(pid, call.tid);
        let mut children = Vec::new();
        let read = || {
            // A descendant that calls exit_group while the test process is
            // held here goes at once: held too, it would read as running in
            // one run and as a zombie in the next.
            let _ = serve_exit_call_nowait(listener);
            let snapshot = snapshot::take(pid)?;
            children = snapshot.children.iter().map(|child| child.pid).collect();
            let mut delta = Delta::between(&baseline, snapshot);
            if let Some(report) = &heap_report {
                delta.fds.retain(|entry| !entry.target.starts_with(report.as_str()));
            }
            Ok(delta)
        };
        let binary = case.binary.id.as_str();
        // Only fds: a thread or child of a lasting shape may be one that is
        // ending (a pool dropped without joining), which is worth the wait.
        let lasting = |leaks: &[Leak]| all_lasting_fds(context, binary, test_name, leaks);
        let mut hurried = false;
        // Settling stops early for fds the configuration accepts (they do
        // not go away by waiting), and, most likely, for what outlasted the
        // grace in another test. An accepted thread or child is waited for:
        // one that was ending would otherwise count as a match of its rule.
        // The last delta judged and its leaks, described once (a socket's
        // description reads its address table).
        let described: std::cell::RefCell<Option<(Delta, Vec<Leak>)>> = Default::default();
        let describe = |delta: &Delta| -> Vec<Leak> {
            let mut described = described.borrow_mut();
            match &*described {
                Some((known, leaks)) if known == delta => leaks.clone(),
                _ => {
                    let mut leaks = delta.clone().into_leaks(pid);
                    process.name_by_tmpdir(&mut leaks);
                    *described = Some((delta.clone(), leaks.clone()));
                    leaks
                }
            }
        };
        let accepted = |delta: &Delta| {
            // With no thread left but the one held in exit_group (and no
            // child), nothing can close an fd any more: waiting is for
            // threads and children, which end by themselves.
            if delta.threads.is_empty() && delta.children.is_empty() {
                return true;
            }
            settle == Settle::SkipLasting && lasting(&describe(delta))
        };
        let started = Instant::now();
        let delta = settle_until(context.grace, read, accepted);
        let by_main_thread = call.tid == pid;
        let replaced_by = replaced_by(pid, &case.binary.executable);
        *exit_view = Some(match delta {
            Ok(delta) => {
                let closed = delta.closed.clone();
                let mut leaks = describe(&delta);
                // libtest names each test's thread after the test.
                mark_unnamed_threads(&mut leaks, test_name);
                if started.elapsed() >= context.grace {
                    let shapes = leaks.iter().filter_map(|leak| leakcheck::shape::shape_of(leak, &[test_name]));
                    let mut lasting = context.lasting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    lasting.entry(binary.to_owned()).or_default().extend(shapes);
                } else if !leaks.is_empty() && settle == Settle::SkipLasting && lasting(&leaks) {
                    hurried = true;
                }
                let settled_for = started.elapsed();
                ExitView { leaks, children, by_main_thread, replaced_by, closed, hurried, settled_for }
            }
            Err(_) => ExitView {
                leaks: Vec::new(),
                children,
                by_main_thread,
                replaced_by,
                closed: Vec::new(),
                hurried,
                settled_for: started.elapsed(),
            },
        });
    }
    listener.proceed(call);
    Ok(())
}

/// The program process `pid` runs, when it is not `executable` (compared
/// as files: a rebuilt binary's path reads `(deleted)`).
fn replaced_by(pid: i32, executable: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let running = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    let expected = std::fs::metadata(executable).ok()?;
    if (running.dev(), running.ino()) == (expected.dev(), expected.ino()) {
        return None;
    }
    let path = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let rebuilt = path.to_str().and_then(|path| path.strip_suffix(" (deleted)")) == executable.to_str();
    if rebuilt {
        return None;
    }
    Some(leakcheck::record::escape_control(&path.to_string_lossy()).into_owned())
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

/// Answers every pending call of processes being terminated (and execs),
/// without waiting. Bounded: a tree that keeps calling cannot keep us here.
fn serve_exit_call_nowait(listener: &Listener) -> io::Result<()> {
    for _ in 0..256 {
        if !listener.has_pending() && !wait_for_events(&[Some(listener.as_fd())], Duration::ZERO)?[0] {
            break;
        }
        match listener.receive()? {
            Some(call) => listener.proceed(call),
            // An exec answered, or a caller gone; a hung-up listener stays
            // "ready" for good and has nothing more to give.
            None if is_hung_up(listener.as_fd()) => break,
            None => {}
        }
    }
    Ok(())
}
