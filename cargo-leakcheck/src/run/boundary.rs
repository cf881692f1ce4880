//! Watching one batch process: libtest running several tests of one binary
//! one after another (`--test-threads=1`), each judged at its own
//! boundaries.
//!
//! With one test thread, libtest's main thread writes `test NAME ... ` to
//! stdout before it starts the test's thread, and the result (`ok`,
//! `FAILED`, ...) after it has joined that thread. The filter stops every
//! write to fd 1 ([`ExitFilter::with_boundaries`](super::ExitFilter)); a
//! write by the main thread is one of libtest's and is read from its
//! memory. At the announcement the process is snapshotted: that is the
//! test's baseline. At the result it is settled (up to the grace) and
//! compared with it. While the main thread waits in its write, libtest does
//! nothing; what the test left behind (threads ending, children) runs on.
//!
//! Writes of other threads (a test printing with `--nocapture`) and of
//! other processes go on at once. A result other than `ok`, or anything
//! left behind, makes the test "not clean": the batch never gives a failing
//! verdict, the test is run again alone (see [`super::batch`]).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leakcheck::diff::{settle_until, Baseline, Delta};
use leakcheck::snapshot;
use leakcheck::temp_dir::Listing;
use leakcheck::Leak;
use nix::sys::signal::Signal;

use super::context::{RunContext, Waker, DRAIN_LIMIT, TERMINATE_GRACE};
use super::exec_env::read_remote;
use super::poll::{is_hung_up, wait_for_events};
use super::probe::{Event, Listener, WriteCall};
use super::reaper::{self, ExitStatus};
use super::spawn::{self, Launch, TestProcess};
use crate::cargo::TestBinary;
use crate::list::TestCase;

/// How one test of a batch ended, at its result boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TestEnd {
    /// `ok`, and nothing left behind once settled.
    Clean { duration: Duration },
    /// Anything else: it is run again alone.
    NotClean,
}

/// How a batch process ended.
#[derive(Debug)]
pub(super) struct BatchEnded {
    /// The tests that reached their result, by index into the batch's names.
    pub(super) ended: Vec<(usize, TestEnd)>,
    /// The test running when the process ended or was killed.
    pub(super) cut: Option<usize>,
    /// libtest's main thread returned from `main` (called `exit_group`).
    pub(super) finished: bool,
    pub(super) timed_out: bool,
    pub(super) status: ExitStatus,
    /// The heap runtime's report: `None` when not preloaded, `Some(None)`
    /// when it could not check the process.
    pub(super) heap: Option<Option<Vec<Leak>>>,
    /// What each test that passed but was not clean left at its end, of the
    /// kinds singleton detection looks at: instances of each shape
    /// ([`leakcheck::shape`]), by index into the batch's names.
    pub(super) left: Vec<(usize, BTreeMap<String, usize>)>,
    /// Ended by its [`Until`], not by itself.
    pub(super) stopped: bool,
    /// The tests libtest did not report `ok`, by index into the names.
    pub(super) failed: Vec<usize>,
    /// Asked for with `survivors`: what the process had at its exit that
    /// it did not have at its first test's start, settled with the whole
    /// grace, in instances of each shape.
    pub(super) survivors: Option<BTreeMap<String, usize>>,
}

/// When to end a batch early, between two tests: at a deadline, or once
/// the tests that were not clean have left every shape `wanted`.
pub(super) struct Until<'a> {
    pub(super) deadline: Instant,
    pub(super) wanted: &'a BTreeSet<String>,
}

/// Runs the tests `names` of `binary` in one process (`NAME... --exact
/// --nocapture --test-threads=1`) and watches it at libtest's boundaries,
/// until `until` says so if given. A group run (`Launch::Group`) also
/// counts what is left at the exit. `Err`: why it could not be watched
/// (not started, or no probe).
pub(super) fn run_together(
    context: &RunContext,
    waker: &Waker,
    binary: &Arc<TestBinary>,
    names: &[&str],
    serial: usize,
    launch: Launch,
    until: Option<&Until>,
) -> Result<BatchEnded, String> {
    let what = if launch == Launch::Group { "together" } else { "(batch)" };
    let case =
        TestCase { binary: binary.clone(), name: format!("{} tests {what}", names.len()), ignored: false, serial };
    let mut args: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    // `--nocapture`, as in the per-test runs: with libtest capturing output,
    // a `#[leakcheck::test]` would isolate itself in yet another process.
    args.extend(["--exact", "--nocapture", "--test-threads=1"].map(String::from));
    args.extend(context.test_args.iter().cloned());
    let mut process =
        spawn::start(context, waker, &case, &args, launch).map_err(|error| format!("could not run ({error})"))?;
    if process.listener.is_none() {
        reaper::kill_group(process.pid, Signal::SIGKILL);
    }
    let survivors = launch == Launch::Group;
    let ended = watch_batch(context, waker, names, binary, &mut process, until, survivors);
    let _ = std::fs::remove_file(&process.record_file);
    match process.listener {
        Some(_) => Ok(ended),
        None => Err("no probe to see its tests' boundaries".into()),
    }
}

/// The test between its announcement and its result.
struct Running {
    index: usize,
    started: Instant,
    baseline: Baseline,
    /// The test's other processes when it started (earlier tests' leftovers).
    processes: Vec<i32>,
    /// What the batch's temp dir held when it started.
    files: Listing,
}

/// Watches `process`, running `names`, until it is gone; ends whatever it
/// left alive. Every test's time limit counts from its own announcement.
fn watch_batch(
    context: &RunContext,
    waker: &Waker,
    names: &[&str],
    binary: &TestBinary,
    process: &mut TestProcess,
    until: Option<&Until>,
    survivors: bool,
) -> BatchEnded {
    let (pid, marker, record_file) = (process.pid, process.marker.clone(), process.record_file.clone());
    let heap_report = process.heap_log.as_ref().map(|prefix| format!("{}.", prefix.display()));
    let mut batch = Batch::new(context, names, pid, &marker, heap_report, &record_file, survivors);
    batch.temp_dir = process.temp.as_ref().map(|temp| temp.path().to_owned());
    batch.kept = process.kept_dirs(context, &binary.executable);
    let mut idle_since = process.started;
    let (mut timed_out, mut killed, mut stopped) = (false, false, false);
    let mut probe_live = process.listener.is_some();
    let kill_all = || {
        reaper::kill_tree(&reaper::processes_of(pid, &marker), Signal::SIGKILL);
        reaper::kill_group(pid, Signal::SIGKILL);
    };
    let status = loop {
        if let Some(status) = process.slot.status() {
            break status;
        }
        let pending = process.listener.as_ref().is_some_and(Listener::has_pending);
        let deadline = batch.running.as_ref().map_or(idle_since, |running| running.started) + context.timeout;
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
        if let (true, Some(listener)) = (ready[2], &process.listener) {
            let had_running = batch.running.is_some();
            if batch.serve_one(listener).is_err() && !killed {
                killed = true;
                kill_all();
            }
            if had_running && batch.running.is_none() {
                idle_since = Instant::now();
            }
            probe_live = !is_hung_up(listener.as_fd());
        }
        if ready[3] {
            waker.drain();
        }
        let interrupted = context.supervisor.interrupted().is_some();
        let made_again = |shape: &String| batch.left.iter().any(|(_, shapes)| shapes.contains_key(shape.as_str()));
        if let (Some(until), false) = (until, killed) {
            if batch.running.is_none() && (Instant::now() >= until.deadline || until.wanted.iter().all(made_again)) {
                stopped = true;
                killed = true;
                kill_all();
            }
        }
        if !killed && (Instant::now() >= deadline || interrupted) && process.slot.status().is_none() {
            timed_out = !interrupted;
            killed = true;
            kill_all();
        }
    };
    context.supervisor.unregister(pid);
    end_leftovers(context, process, killed);
    let heap = match (&process.heap_log, &context.heap) {
        (Some(prefix), Some(heap)) => Some(heap.leaks_of(prefix, pid, &binary.cwd)),
        _ => None,
    };
    let cut = batch.running.take().map(|running| running.index);
    let finished = batch.finished && !stopped;
    BatchEnded {
        ended: batch.ended,
        cut,
        finished,
        timed_out,
        status,
        heap,
        left: batch.left,
        stopped,
        failed: batch.failed,
        survivors: batch.survivors,
    }
}

/// What the watcher knows of the batch between two events.
struct Batch<'a> {
    context: &'a RunContext,
    names: &'a [&'a str],
    pid: i32,
    marker: &'a str,
    /// The heap runtime keeps its report open: ours, not a test's.
    heap_report: Option<String>,
    /// A `#[leakcheck::test]` leaves its in-process verdict here.
    record_file: &'a std::path::Path,
    /// The process's `TMPDIR`, listed at every boundary.
    temp_dir: Option<std::path::PathBuf>,
    /// Where a test may leave files (see [`super::creations::kept_dirs`]).
    kept: Vec<std::path::PathBuf>,
    running: Option<Running>,
    ended: Vec<(usize, TestEnd)>,
    left: Vec<(usize, BTreeMap<String, usize>)>,
    failed: Vec<usize>,
    finished: bool,
    /// The process at its first test's start.
    first_baseline: Option<Baseline>,
    /// Count what is left at the main thread's exit, into `survivors`.
    wants_survivors: bool,
    survivors: Option<BTreeMap<String, usize>>,
}

impl<'a> Batch<'a> {
    fn new(
        context: &'a RunContext,
        names: &'a [&'a str],
        pid: i32,
        marker: &'a str,
        heap_report: Option<String>,
        record_file: &'a std::path::Path,
        wants_survivors: bool,
    ) -> Self {
        Batch {
            context,
            names,
            pid,
            marker,
            heap_report,
            record_file,
            temp_dir: None,
            kept: Vec::new(),
            running: None,
            ended: Vec::new(),
            left: Vec::new(),
            failed: Vec::new(),
            finished: false,
            first_baseline: None,
            wants_survivors,
            survivors: None,
        }
    }

    /// Takes one call from the listener and answers it, after acting on it
    /// when it is one of libtest's boundaries.
    fn serve_one(&mut self, listener: &Listener) -> std::io::Result<()> {
        match listener.receive_event()? {
            Some(Event::Exit(call)) => {
                if call.tid == self.pid {
                    self.finished = true;
                    if self.wants_survivors {
                        self.survivors = self.survivors(listener);
                    }
                }
                listener.proceed(call);
            }
            Some(Event::Write(write)) => {
                if write.call.tid == self.pid {
                    self.on_libtest_write(listener, &written(self.pid, &write));
                }
                listener.proceed(write.call);
            }
            None => {}
        }
        Ok(())
    }

    /// One write of libtest's main thread, held until this returns.
    fn on_libtest_write(&mut self, listener: &Listener, bytes: &[u8]) {
        match self.running.take() {
            None => {
                let Some(name) = announced(bytes) else { return };
                let seen = |index: usize| self.ended.iter().any(|(done, _)| *done == index);
                let Some(index) = (0..self.names.len()).find(|&i| self.names[i].as_bytes() == name && !seen(i)) else {
                    return;
                };
                // A process we cannot read cannot be judged: the test is cut.
                let Ok(snapshot) = snapshot::take(self.pid) else { return };
                // What was made between tests is no test's.
                let _ = listener.take_created();
                let processes = reaper::processes_of(self.pid, self.marker);
                if self.first_baseline.is_none() {
                    self.first_baseline = Some(Baseline::of(&snapshot));
                }
                let files = self.temp_dir.as_deref().map(Listing::of).unwrap_or_default();
                self.running = Some(Running {
                    index,
                    started: Instant::now(),
                    baseline: Baseline::of(&snapshot),
                    processes,
                    files,
                });
            }
            // libtest's "has been running for over 60 seconds" note.
            Some(running) if bytes.starts_with(b"test ") => self.running = Some(running),
            Some(running) => {
                let passed = bytes.starts_with(b"ok");
                let end = if passed { self.settle(listener, &running) } else { TestEnd::NotClean };
                if !passed {
                    self.failed.push(running.index);
                }
                if passed && end == TestEnd::NotClean {
                    if let Some(shapes) = self.shapes_left(&running) {
                        self.left.push((running.index, shapes));
                    }
                }
                self.ended.push((running.index, end));
            }
        }
    }

    /// The instances of each shape a test left, of the kinds singleton
    /// detection looks at, read once more (it is still held).
    fn shapes_left(&self, running: &Running) -> Option<BTreeMap<String, usize>> {
        let snapshot = snapshot::take_since(self.pid, Some(&running.baseline)).ok()?;
        let name = self.names[running.index];
        let mut leaks = Delta::between(&running.baseline, snapshot).into_leaks(self.pid);
        self.name_by_tmpdir(&mut leaks);
        leaks.retain(|leak| self.context.detects_singletons_of(leak));
        Some(leakcheck::shape::shape_counts(&leaks, &[name]))
    }

    /// What the process has, held at its exit, that it did not have at its
    /// first test's start, once nothing more goes away within the grace.
    fn survivors(&self, listener: &Listener) -> Option<BTreeMap<String, usize>> {
        let baseline = self.first_baseline.as_ref()?;
        let read = || {
            serve_others(listener);
            let snapshot = snapshot::take_since(self.pid, Some(baseline))?;
            Ok(Delta::between(baseline, snapshot))
        };
        // Held at its exit with no thread of its own left but the exiting
        // one and no child, nothing can close an fd any more.
        let still = |delta: &Delta| delta.threads.is_empty() && delta.children.is_empty();
        let delta = settle_until(self.context.grace, read, still).ok()?;
        let mut leaks = delta.into_leaks(self.pid);
        self.name_by_tmpdir(&mut leaks);
        Some(leakcheck::shape::shape_counts(&leaks, self.names))
    }

    /// Paths in the process's temp dir as `$TMPDIR/...`: the same in every
    /// process.
    fn name_by_tmpdir(&self, leaks: &mut [Leak]) {
        if let Some(dir) = &self.temp_dir {
            leakcheck::temp_dir::name_by_tmpdir(leaks, dir);
        }
    }

    /// The end of a test that passed: clean when, within the grace, it has
    /// nothing left that it did not have at its start.
    fn settle(&self, listener: &Listener, running: &Running) -> TestEnd {
        let duration = running.started.elapsed();
        // A #[leakcheck::test] checked itself: its record is made alone.
        if std::fs::remove_file(self.record_file).is_ok() {
            return TestEnd::NotClean;
        }
        let started = Instant::now();
        let read = || {
            serve_others(listener);
            let snapshot = snapshot::take_since(self.pid, Some(&running.baseline))?;
            let mut delta = Delta::between(&running.baseline, snapshot);
            if let Some(report) = &self.heap_report {
                delta.fds.retain(|entry| !entry.target.starts_with(report.as_str()));
            }
            Ok(delta)
        };
        // Waiting can only turn "not clean" into clean, never the other way,
        // so it stops as soon as only fds are left: threads and children end
        // by themselves (a pool shutting down), an fd left alone seldom does
        // (a test leaking a listener must not cost the grace twice).
        let only_fds = |delta: &Delta| delta.threads.is_empty() && delta.children.is_empty();
        match settle_until(self.context.grace, read, only_fds) {
            Ok(delta) if delta.is_empty() && delta.closed.is_empty() => {}
            _ => return TestEnd::NotClean,
        }
        // Anything it left in the temp dir (read once its threads are gone).
        // An empty directory too: its lone run reports it as a warning.
        if self.temp_dir.as_deref().is_some_and(|dir| !Listing::of(dir).new_since(&running.files).is_empty()) {
            return TestEnd::NotClean;
        }
        if !super::creations::left_outside(listener.take_created(), &self.kept).is_empty() {
            return TestEnd::NotClean;
        }
        // Processes it started that are not its children any more (a
        // daemon, an orphaned grandchild), given the rest of the grace.
        let mut pause = Duration::from_millis(1);
        loop {
            let new = reaper::processes_of(self.pid, self.marker)
                .into_iter()
                .any(|process| !running.processes.contains(&process) && reaper::is_alive(process));
            if !new {
                return TestEnd::Clean { duration };
            }
            if started.elapsed() >= self.context.grace {
                return TestEnd::NotClean;
            }
            serve_others(listener);
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// libtest's announcement of a test: `test NAME ... ` -> `NAME`.
fn announced(bytes: &[u8]) -> Option<&[u8]> {
    bytes.strip_prefix(b"test ")?.strip_suffix(b" ... ")
}

/// Answers, without waiting, every call of the test's other threads and
/// processes while libtest's main thread is held: a thread that prints or
/// exits on its way out must not wait for us while we wait for it.
/// Bounded: a tree that keeps calling cannot keep us here.
fn serve_others(listener: &Listener) {
    for _ in 0..256 {
        let ready = listener.has_pending()
            || wait_for_events(&[Some(listener.as_fd())], Duration::ZERO).is_ok_and(|ready| ready[0]);
        if !ready || is_hung_up(listener.as_fd()) {
            return;
        }
        match listener.receive_event() {
            Ok(Some(Event::Exit(call))) => listener.proceed(call),
            Ok(Some(Event::Write(write))) => listener.proceed(write.call),
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// The bytes a held `write`/`writev` to stdout would write (up to 64 KiB:
/// libtest's lines are short; a longer one is not one of its boundaries).
fn written(pid: i32, write: &WriteCall) -> Vec<u8> {
    const LIMIT: usize = 64 * 1024;
    let [_fd, address, length, ..] = write.args;
    let mut pieces: Vec<(u64, usize)> = Vec::new();
    if write.vectored {
        let mut iovecs = [0u64; 16]; // up to 8 (base, len) pairs
        let count = (length as usize).min(8);
        let bytes = &mut bytemuck_words(&mut iovecs)[..count * 16];
        let read = read_remote(pid, address, bytes) / 16;
        pieces.extend((0..read).map(|i| (iovecs[2 * i], iovecs[2 * i + 1] as usize)));
    } else {
        pieces.push((address, length as usize));
    }
    let mut out = Vec::new();
    for (base, len) in pieces {
        let len = len.min(LIMIT - out.len());
        let start = out.len();
        out.resize(start + len, 0);
        let read = read_remote(pid, base, &mut out[start..]);
        out.truncate(start + read);
        if read < len || out.len() >= LIMIT {
            break;
        }
    }
    out
}

/// `words` as bytes (native order, as the kernel laid out the iovecs).
fn bytemuck_words(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u64; the
    // slice covers exactly the words' memory and borrows them mutably.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(words)) }
}

/// Ends every process of the batch still alive after it exited, and reads
/// its output to the end (it is not kept: a test that is not clean is run
/// again alone, with its own output).
fn end_leftovers(context: &RunContext, process: &mut TestProcess, killed: bool) {
    let serve = || {
        if let Some(listener) = &process.listener {
            serve_others(listener);
        }
    };
    let leftovers = reaper::processes_of(process.pid, &process.marker);
    let grace = if killed || context.supervisor.interrupted().is_some() { Duration::ZERO } else { TERMINATE_GRACE };
    reaper::terminate(&leftovers, grace, serve);
    process.stdout.drain_until_eof(DRAIN_LIMIT);
    process.stderr.drain_until_eof(DRAIN_LIMIT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_libtests_announcement_names_a_test() {
        assert_eq!(announced(b"test tests::a ... "), Some(&b"tests::a"[..]));
        assert_eq!(announced(b"test a ... b ... "), Some(&b"a ... b"[..]));
        assert_eq!(announced(b"test a has been running for over 60 seconds\n"), None);
        assert_eq!(announced(b"\nrunning 2 tests\n"), None);
        assert_eq!(announced(b"ok"), None);
    }
}
