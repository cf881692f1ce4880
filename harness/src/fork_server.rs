//! `leakcheck::main!()`: a libtest-compatible harness that runs every test in
//! a forked child of a single-threaded parent, checked in-process.
//!
//! The parent parses the command line with libtest-mimic (so `--list --format
//! terse`, `--exact`, `--skip`, `--ignored`, `--include-ignored`,
//! `--test-threads`, `--nocapture` and filters mean what they mean under
//! libtest, and `cargo test` and `cargo nextest run` both drive it), then forks
//! children, up to `--test-threads` at a time. A child runs a test on a fresh
//! thread between a baseline and a check (fds, threads, children, heap) and
//! writes its [`TestRecord`] to a pipe; a crash is a failed test, not a dead
//! harness. If the test left the process as it found it ([`crate::reuse`]),
//! the child then waits for the index of its next test on a command pipe;
//! otherwise it exits, and the next test gets a fresh fork.
//!
//! Invariants:
//! - The parent never starts a thread, so `fork` copies a consistent process
//!   and the child may allocate and spawn threads freely.
//! - Each child leads its own process group; after it exits, the group is
//!   killed, so processes a test leaves behind (reported by its check) do not
//!   outlive it. SIGINT/SIGTERM to the parent kill every running group first.
//! - Only the parent holds the write end of a child's command pipe (a new
//!   child closes its siblings' copies), so dropping it ends a waiting child.
//! - Under `cargo leakcheck`, `LEAKCHECK_RECORDS_FD` names a pipe that gets
//!   one JSON [`TestRecord`] per line, and `LEAKCHECK_TIMEOUT_MS` a time limit.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Trial};

use crate::__private::{ShouldPanic, TestDef, TESTS};
use crate::guard::{combine_runs, Finding, Guard};
use crate::isolation::mark_forked_child;
use crate::options::Options;
use crate::record::{AllowedLeak, Outcome, TestRecord};

/// Time limit of an explain re-run when no timeout is configured.
const EXPLAIN_LIMIT: Duration = Duration::from_secs(60);

/// Bytes of a test's output kept (the tail).
const KEEP_OUTPUT: usize = 1 << 20;

/// Entry point of `leakcheck::main!()`.
pub fn harness_main() -> ExitCode {
    let args = Arguments::from_args();
    let mut defs: Vec<&'static TestDef> = TESTS.iter().collect();
    defs.sort_by_key(|def| def.full_name());
    let trials: Vec<Trial> = defs
        .iter()
        .map(|def| Trial::test(def.full_name(), || Ok(())).with_ignored_flag(def.ignore.is_some()))
        .collect();
    if args.list {
        let _listed = libtest_mimic::run(&args, trials);
        return ExitCode::SUCCESS;
    }
    count_panics();
    let mut plan = Vec::new();
    let mut filtered_out = 0;
    for (def, trial) in defs.into_iter().zip(&trials) {
        if args.is_filtered_out(trial) {
            filtered_out += 1;
        } else {
            plan.push((def, args.is_ignored(trial)));
        }
    }
    ForkServer::new(&args).run(plan, filtered_out)
}

/// Panics so far in this process, on any thread (see [`count_panics`]).
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts every panic before the usual hook prints it. A panic on any
/// thread of a test (one it spawned and joined, say) may fill std's
/// process-wide backtrace and symbol caches (41 MB with `RUST_BACKTRACE=1`,
/// seen in tempfile's tests), memory that is not the test's to free: after
/// one, the heap is not judged. A test that sets its own hook replaces this
/// one, and its panics then go uncounted.
fn count_panics() {
    let usual = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        usual(info);
    }));
}

/// Pids (= process groups) of running children, for the signal handler.
static RUNNING_GROUPS: [AtomicI32; 256] = [const { AtomicI32::new(0) }; 256];

extern "C" fn kill_children_and_die(signal: libc::c_int) {
    for slot in &RUNNING_GROUPS {
        let pid = slot.load(Ordering::Relaxed);
        if pid > 0 {
            // SAFETY: kill, signal and raise are async-signal-safe.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
    // SAFETY: as above; restores the default action and dies of the signal.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

struct ForkServer {
    jobs: usize,
    /// A child whose test passed clean runs the next one (see [`crate::reuse`]).
    reuse: bool,
    capture: bool,
    /// Re-run a leaking test to record where its leaks were created
    /// (default; `LEAKCHECK_EXPLAIN=0` turns it off).
    explain: bool,
    timeout: Option<Duration>,
    records: Option<File>,
}

/// A forked child: it runs one test, or, reused, one test after another.
struct Running {
    /// The test it runs now; `None` while a reused child waits for its next
    /// test, or after it was told to exit.
    def: Option<&'static TestDef>,
    pid: i32,
    slot: usize,
    /// Where the next test's index goes (4 bytes, little-endian); dropped
    /// to tell a waiting child to exit. `None` for a child that is not reused.
    command: Option<File>,
    record: Option<File>,
    record_bytes: Vec<u8>,
    output: Option<File>,
    output_bytes: Vec<u8>,
    started: Instant,
    /// Killed past this (the configured timeout; explain re-runs always have one).
    limit: Option<Duration>,
    timed_out: bool,
    /// An explain re-run (see [`ForkServer::explain`]).
    explain: bool,
    /// For an explain re-run: the first run's record, which gets its sites.
    explaining: Option<TestRecord>,
}

impl ForkServer {
    fn new(args: &Arguments) -> ForkServer {
        let jobs = args.test_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let timeout =
            std::env::var("LEAKCHECK_TIMEOUT_MS").ok().and_then(|ms| ms.parse().ok()).map(Duration::from_millis);
        let records =
            std::env::var("LEAKCHECK_RECORDS_FD").ok().and_then(|fd| fd.parse::<RawFd>().ok()).and_then(|fd| {
                // SAFETY: fcntl(F_GETFD) only checks that the fd is open; cargo
                // leakcheck passed it to us to own.
                (unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0).then(|| unsafe { File::from_raw_fd(fd) })
            });
        let explain = std::env::var_os(crate::sites::EXPLAIN_ENV).is_none_or(|value| value != "0");
        ForkServer {
            jobs: jobs.clamp(1, RUNNING_GROUPS.len()),
            reuse: crate::reuse::enabled(),
            capture: !args.nocapture,
            explain,
            timeout,
            records,
        }
    }

    fn run(mut self, plan: Vec<(&'static TestDef, bool)>, filtered_out: usize) -> ExitCode {
        let started = Instant::now();
        // Initialise std's lazy thread state once, here, rather than inside
        // every child's baseline; joined, so the parent is single-threaded
        // again before the first fork.
        let _ = std::thread::spawn(|| ()).join();
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only makes async-signal-safe calls.
            unsafe { libc::signal(signal, kill_children_and_die as *const () as libc::sighandler_t) };
        }
        let count = plan.len();
        println!("\nrunning {count} {}", if count == 1 { "test" } else { "tests" });
        let tests: Vec<&'static TestDef> = plan.iter().map(|(def, _)| *def).collect();
        let mut queue = plan.into_iter().enumerate();
        let mut ignored = 0;
        // The next test to run, printing the ignored ones on the way.
        let mut next_test = || {
            queue.find_map(|(index, (def, is_ignored))| {
                if is_ignored {
                    println!("test {} ... ignored", def.full_name());
                    ignored += 1;
                }
                (!is_ignored).then_some(index)
            })
        };
        let mut running: Vec<Running> = Vec::new();
        let mut tally = Tally::default();
        loop {
            // A reused child waiting for work takes the next test, or exits.
            for child in running.iter_mut().filter(|child| child.def.is_none() && child.command.is_some()) {
                match next_test() {
                    Some(index) => child.assign(index, tests[index], self.timeout),
                    None => child.command = None,
                }
            }
            while running.len() < self.jobs {
                let Some(index) = next_test() else { break };
                match self.fork_test(tests[index], &tests, &running, None) {
                    Ok(child) => running.push(child),
                    Err(error) => {
                        let record =
                            failed_record(tests[index], format!("leakcheck could not fork for this test: {error}"));
                        tally.failures.push(record);
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            self.wait_for_io(&mut running);
            let mut index = 0;
            while index < running.len() {
                if let Some(record) = running[index].take_reused_record() {
                    // Passed clean; the child waits for its next test.
                    self.report(record, &mut tally);
                    index += 1;
                    continue;
                }
                if running[index].record.is_some() && !running[index].timed_out {
                    index += 1;
                    continue;
                }
                let mut child = running.swap_remove(index);
                let explaining = child.explaining.take();
                let Some(def) = child.def else {
                    // A reused child that was told to exit, gone.
                    self.reap_idle(child);
                    continue;
                };
                let record = self.finish(child, def);
                let record = match explaining {
                    // An explain re-run ended: its sites go to the first run's leaks.
                    Some(mut first) => {
                        crate::sites::attach(&mut first.leaks, &record.leaks);
                        first
                    }
                    None if self.explain && !record.leaks.is_empty() && record.outcome != Outcome::TimedOut => {
                        let heap = record.leaks.iter().any(|leak| matches!(leak, crate::Leak::Heap { .. }));
                        match self.fork_test(def, &tests, &running, Some(heap)) {
                            Ok(mut rerun) => {
                                rerun.explaining = Some(record);
                                running.push(rerun);
                                continue;
                            }
                            Err(_) => record,
                        }
                    }
                    None => record,
                };
                self.report(record, &mut tally);
            }
        }
        let Tally { passed, failures } = tally;
        print_failures(&failures);
        let result = if failures.is_empty() { "ok" } else { "FAILED" };
        println!(
            "\ntest result: {result}. {passed} passed; {} failed; {ignored} ignored; 0 measured; {filtered_out} filtered out; finished in {:.2}s\n",
            failures.len(),
            started.elapsed().as_secs_f64()
        );
        if failures.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(101)
        }
    }

    /// Prints the verdict of `record`, passes it on to `cargo leakcheck` and counts it.
    fn report(&mut self, record: TestRecord, tally: &mut Tally) {
        println!("test {} ... {}", record.name, if record.outcome == Outcome::Passed { "ok" } else { "FAILED" });
        if let Some(records) = &mut self.records {
            if let Ok(line) = serde_json::to_string(&record) {
                let _ = writeln!(records, "{line}");
            }
        }
        if record.outcome == Outcome::Passed {
            tally.passed += 1;
        } else {
            tally.failures.push(record);
        }
    }

    /// Forks a child that runs `def` (and, if it passes clean and reuse is
    /// on, whichever of `tests` it is sent next); with `explain: Some(heap)`, a re-run
    /// of a test that leaked, recording creation sites (and heap blocks when
    /// `heap`), its output discarded.
    fn fork_test(
        &self,
        def: &'static TestDef,
        tests: &[&'static TestDef],
        running: &[Running],
        explain: Option<bool>,
    ) -> io::Result<Running> {
        let (heap, explain) = (explain == Some(true), explain.is_some());
        let reuse = self.reuse && !explain;
        let (record_read, record_write) = pipe()?;
        let command = if reuse { Some(pipe()?) } else { None };
        let output = if self.capture || explain { Some(pipe()?) } else { None };
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        let slot = (0..RUNNING_GROUPS.len())
            .find(|slot| !running.iter().any(|child| child.slot == *slot))
            .expect("at most RUNNING_GROUPS.len() children run at once");
        // SAFETY: the parent is single-threaded (module invariant), so the
        // child is a consistent copy and may run arbitrary code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // The child: never returns. First, forget the parent's signal
            // handling: its handler would kill the groups of every sibling
            // test it remembers.
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                // SAFETY: restores the default action; no handler runs here.
                unsafe { libc::signal(signal, libc::SIG_DFL) };
            }
            for slot in &RUNNING_GROUPS {
                slot.store(0, Ordering::Relaxed);
            }
            // Siblings' command pipes must end when the parent drops them: a
            // copy held here would keep a waiting sibling from seeing EOF.
            for sibling in running {
                if let Some(command) = &sibling.command {
                    // SAFETY: the child never returns, so the parent's File is never dropped here.
                    unsafe { libc::close(command.as_raw_fd()) };
                }
            }
            drop(record_read);
            if let Some(records) = &self.records {
                // SAFETY: the child never returns, so the parent's File is
                // never dropped here; the records pipe is the parent's alone
                // (a process a test leaves must not hold it open).
                unsafe { libc::close(records.as_raw_fd()) };
            }
            // SAFETY: setpgid on ourselves; dup2 onto stdout/stderr of fds we own.
            unsafe {
                libc::setpgid(0, 0);
                if let Some((output_read, output_write)) = output {
                    drop(output_read);
                    libc::dup2(output_write.as_raw_fd(), 1);
                    libc::dup2(output_write.as_raw_fd(), 2);
                    drop(output_write);
                }
            }
            mark_forked_child();
            let commands = command.map(|(read, write)| {
                drop(write);
                File::from(read)
            });
            serve_tests(def, tests, commands, File::from(record_write), explain, heap);
        }
        // SAFETY: makes the child its own group leader from our side too, so
        // a kill of the group right after fork cannot miss it.
        unsafe { libc::setpgid(pid, pid) };
        RUNNING_GROUPS[slot].store(pid, Ordering::Relaxed);
        drop(record_write);
        let command = command.map(|(read, write)| {
            drop(read);
            File::from(write)
        });
        let output = output.map(|(read, write)| {
            drop(write);
            File::from(read)
        });
        Ok(Running {
            def: Some(def),
            pid,
            slot,
            command,
            record: Some(File::from(record_read)),
            record_bytes: Vec::new(),
            output,
            output_bytes: Vec::new(),
            started: Instant::now(),
            // An explain re-run must never hold the run up, timeout or not.
            limit: if explain { Some(self.timeout.unwrap_or(EXPLAIN_LIMIT)) } else { self.timeout },
            timed_out: false,
            explain,
            explaining: None,
        })
    }

    /// Waits until some child's pipes have data or end, or a deadline passes.
    fn wait_for_io(&self, running: &mut [Running]) {
        let mut poll_fds = Vec::new();
        for child in running.iter() {
            for file in [&child.record, &child.output].into_iter().flatten() {
                poll_fds.push(libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
        }
        let wait_ms = running
            .iter()
            .filter(|child| child.def.is_some())
            .filter_map(|child| child.limit.map(|limit| limit.saturating_sub(child.started.elapsed()).as_millis()))
            .min()
            .unwrap_or(1000)
            .min(1000) as i32;
        // SAFETY: poll on a valid array of pollfd structs we own.
        unsafe { libc::poll(poll_fds.as_mut_ptr(), poll_fds.len() as libc::nfds_t, wait_ms.max(1)) };
        for child in running.iter_mut() {
            read_available(&mut child.record, &mut child.record_bytes, usize::MAX);
            read_available(&mut child.output, &mut child.output_bytes, KEEP_OUTPUT);
            if let Some(limit) = child.limit {
                let testing = child.def.is_some() && !child.has_reused_record();
                if testing && child.record.is_some() && child.started.elapsed() >= limit {
                    // SAFETY: kills the child's own process group.
                    unsafe { libc::kill(-child.pid, libc::SIGKILL) };
                    child.timed_out = true;
                }
            }
        }
    }

    /// Reaps a reused child that was told to exit, and whatever its group holds.
    fn reap_idle(&self, child: Running) {
        let mut status = 0;
        // SAFETY: waits for our own child, then kills its own process group.
        unsafe {
            libc::waitpid(child.pid, &mut status, 0);
            libc::kill(-child.pid, libc::SIGKILL);
        }
        RUNNING_GROUPS[child.slot].store(0, Ordering::Relaxed);
    }

    /// Reaps a child whose record pipe ended and turns it into the record of
    /// `def`, the test it ran last.
    fn finish(&self, mut child: Running, def: &'static TestDef) -> TestRecord {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(child.pid, &mut status, 0) };
        // Processes still in the child's group were orphaned by the test
        // (re-parented away, so its own check could not see them). A signal
        // 0 to the group says cheaply whether there are any.
        // SAFETY: kill with signal 0 only checks for existence.
        let orphans = if unsafe { libc::kill(-child.pid, 0) } == 0 {
            let grace = if child.explain { Duration::ZERO } else { def.options.grace() };
            settle_group(child.pid, grace)
        } else {
            Vec::new()
        };
        // Whatever the test left in its group ends with it.
        // SAFETY: kills the child's own process group.
        unsafe { libc::kill(-child.pid, libc::SIGKILL) };
        RUNNING_GROUPS[child.slot].store(0, Ordering::Relaxed);
        drain(&mut child.output, &mut child.output_bytes, Duration::from_millis(200));
        let output = String::from_utf8_lossy(&child.output_bytes).into_owned();
        // The record line starts with the child's '-' (it exits after it).
        let line = child.record_bytes.get(1..).unwrap_or_default();
        let mut record = match serde_json::from_slice::<TestRecord>(line) {
            Ok(record) if !child.timed_out => record,
            _ => {
                let message = if child.timed_out {
                    format!(
                        "ran past the time limit of {:.1}s and was killed",
                        self.timeout.unwrap_or_default().as_secs_f64()
                    )
                } else if libc::WIFSIGNALED(status) {
                    format!("the test process was killed by signal {}", signal_name(libc::WTERMSIG(status)))
                } else {
                    format!(
                        "the test process exited with status {} before the test finished",
                        libc::WEXITSTATUS(status)
                    )
                };
                let mut record = failed_record(def, message);
                if child.timed_out {
                    record.outcome = Outcome::TimedOut;
                }
                record
            }
        };
        record.duration_ms = child.started.elapsed().as_millis() as u64;
        // Children the test's own check already named are not orphans.
        let known: Vec<i32> = record
            .leaks
            .iter()
            .chain(record.allowed.iter().map(|allowed| &allowed.leak))
            .filter_map(|leak| match leak {
                crate::Leak::Child { pid, .. } => Some(*pid),
                _ => None,
            })
            .collect();
        let orphans: Vec<_> = orphans.into_iter().filter(|orphan| !known.contains(&orphan.pid)).collect();
        if !orphans.is_empty() {
            record.leaks.extend(orphans.into_iter().map(|orphan| crate::diff::child_leak(orphan, true)));
            if record.outcome == Outcome::Passed {
                record.outcome = Outcome::Leaked;
            }
        }
        if record.outcome != Outcome::Passed {
            record.output = Some(output);
        }
        record
    }
}

/// Passed and failed tests so far.
#[derive(Default)]
struct Tally {
    passed: usize,
    failures: Vec<TestRecord>,
}

impl Running {
    /// Sends a waiting child test `index` of the plan.
    fn assign(&mut self, index: usize, def: &'static TestDef, timeout: Option<Duration>) {
        self.def = Some(def);
        self.started = Instant::now();
        self.limit = timeout;
        if let Some(command) = &mut self.command {
            // A child that died meanwhile shows as the end of its record
            // pipe, and this test as the one it did not finish.
            let _ = command.write_all(&(index as u32).to_le_bytes());
        }
    }

    /// Whether the child sent the whole record of a test after which it
    /// waits for the next: a line starting with '+'.
    fn has_reused_record(&self) -> bool {
        self.def.is_some() && self.record_bytes.first() == Some(&b'+') && self.record_bytes.last() == Some(&b'\n')
    }

    /// The record of such a test, now that the child waits for its next.
    fn take_reused_record(&mut self) -> Option<TestRecord> {
        if !self.has_reused_record() || self.timed_out {
            return None;
        }
        let def = self.def.take()?;
        let mut record = serde_json::from_slice::<TestRecord>(&self.record_bytes[1..])
            .unwrap_or_else(|error| failed_record(def, format!("leakcheck could not read the test's record: {error}")));
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        // Passed, so its output is not kept; all of it is in by now (the
        // child wrote it before the record).
        self.record_bytes.clear();
        self.output_bytes.clear();
        Some(record)
    }
}

/// The forked child's work: runs `first`, then, while each test passes
/// clean and `commands` (reuse on) sends more, the tests of `tests` it is
/// sent. Each record goes to `records` as one line, starting with '+' if
/// the child then waits for another test, '-' if it exits. Never returns.
fn serve_tests(
    first: &'static TestDef,
    tests: &[&'static TestDef],
    mut commands: Option<File>,
    mut records: File,
    explain: bool,
    heap: bool,
) -> ! {
    let marker = std::env::var("LEAKCHECK_TEST_ID").ok();
    let mut def = first;
    loop {
        // Under cargo leakcheck, name this test in the marker every process
        // it starts inherits, so an orphan it leaves (invisible from in
        // here) can still be blamed on it. Single-threaded here (no test
        // thread runs between tests), so changing the environment is sound.
        // An explain re-run's processes are not the first run's: its own
        // marker keeps an orphan of it (killed with its group, but maybe not
        // yet gone) from being blamed on the test twice.
        if let Some(marker) = &marker {
            let suffix = if explain { "/explain" } else { "" };
            // SAFETY: no other thread exists in this child between tests.
            unsafe { std::env::set_var("LEAKCHECK_TEST_ID", format!("{marker}/{}{suffix}", def.full_name())) };
        }
        let before = commands.is_some().then(crate::reuse::ProcessState::read);
        let (record, panicked) = run_in_child(def, explain, heap);
        let reused = before.is_some_and(|before| {
            !panicked
                && crate::reuse::record_is_clean(&record)
                && crate::reuse::ProcessState::read().allows_reuse_since(&before)
        });
        // The test's output first, so the parent has all of it when the record comes.
        let _ = io::stdout().flush();
        let mut line = vec![if reused { b'+' } else { b'-' }];
        let _ = serde_json::to_writer(&mut line, &record);
        line.push(b'\n');
        let _ = records.write_all(&line);
        let next = commands.as_mut().filter(|_| reused).and_then(|commands| {
            let mut index = [0u8; 4];
            commands.read_exact(&mut index).ok()?;
            tests.get(u32::from_le_bytes(index) as usize).copied()
        });
        match next {
            Some(test) => def = test,
            None => break,
        }
    }
    drop(records);
    // SAFETY: ends the child without running the parent's atexit handlers
    // or destructors, which belong to the parent.
    unsafe { libc::_exit(0) }
}

/// Runs one test in the forked child: on a fresh thread named after it,
/// between a baseline and a check. Returns its record and whether it
/// panicked.
///
/// With `explain`, one measured run records where its leaks were created
/// (heap blocks too with `heap`).
fn run_in_child(def: &'static TestDef, explain: bool, heap: bool) -> (TestRecord, bool) {
    let name = def.full_name();
    let runs = if explain { def.options.repeat_runs().min(1) } else { def.options.repeat_runs() };
    // An explain re-run does not settle: the first run already told lasting
    // leaks from passing ones, and only lasting ones are matched.
    let options = if explain { Options { grace_ms: Some(0), ..def.options } } else { def.options };
    // Repeat mode: a first, unmeasured run does the one-time initialisation.
    let mut panicked_once = false;
    if runs > 0 {
        let (result, panicked) = run_on_fresh_thread(def, &name);
        if let Err(message) = result {
            let record = TestRecord {
                message: Some(format!("warm-up run: {message}")),
                ..TestRecord::new("", name, Outcome::Failed)
            };
            return (record, panicked);
        }
        panicked_once |= panicked;
    }
    let mut findings = Vec::new();
    let mut body = Ok(());
    for _ in 0..runs.max(1) {
        let recorder = explain.then(|| crate::sites::Recorder::start(heap));
        let guard = Guard::start_for_thread(&name);
        let panics = PANICS.load(Ordering::Relaxed);
        let (result, panicked) = run_on_fresh_thread(def, &name);
        let panicked = panicked || PANICS.load(Ordering::Relaxed) != panics;
        panicked_once |= panicked;
        let mut finding = guard.and_then(|guard| {
            // See Guard::finish_after_panic.
            if panicked {
                guard.finish_after_panic(&options)
            } else {
                guard.finish(&options)
            }
        });
        if let (Some(recorder), Ok(finding)) = (recorder, &mut finding) {
            recorder.finish(&mut finding.judgement.leaks);
        }
        findings.push(finding);
        body = result;
        if body.is_err() {
            break;
        }
    }
    let (finding, warnings) = match findings.into_iter().collect::<Result<Vec<Finding>, _>>() {
        Ok(findings) if runs > 0 => combine_runs(findings),
        Ok(mut findings) => (findings.pop().unwrap_or_default(), Vec::new()),
        Err(_) => {
            let unchecked = ["fd", "thread", "child", "heap"].map(str::to_owned).to_vec();
            (Finding { unchecked, ..Finding::default() }, Vec::new())
        }
    };
    let leaks = finding.judgement.leaks;
    let allowed = finding
        .judgement
        .allowed
        .into_iter()
        .map(|(leak, reason)| AllowedLeak { leak, reason: reason.to_owned() })
        .collect();
    let (outcome, message) = match body {
        Ok(()) if leaks.is_empty() => (Outcome::Passed, None),
        Ok(()) => (Outcome::Leaked, None),
        Err(message) => (Outcome::Failed, Some(message)),
    };
    let record = TestRecord {
        message,
        leaks,
        allowed,
        warnings,
        unchecked: finding.unchecked,
        closed_fds: finding.closed_fds,
        ..TestRecord::new("", name, outcome)
    };
    (record, panicked_once)
}

/// Runs the test once on a fresh thread named `name` (joined, so its
/// thread-locals are gone); returns its verdict and whether it panicked.
fn run_on_fresh_thread(def: &'static TestDef, name: &str) -> (Result<(), String>, bool) {
    let run = def.run;
    let joined = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || catch_unwind(AssertUnwindSafe(run)))
        .map(|handle| handle.join());
    let panicked = matches!(joined, Ok(Err(_)) | Ok(Ok(Err(_))));
    let body = match joined {
        Err(error) => Err(format!("leakcheck could not start the test thread: {error}")),
        Ok(Err(_)) | Ok(Ok(Err(_))) if def.should_panic == ShouldPanic::Yes => Ok(()),
        Ok(Ok(Err(payload))) => match def.should_panic {
            ShouldPanic::WithMessage(expected) => {
                let message = payload_text(payload.as_ref());
                if message.contains(expected) {
                    Ok(())
                } else {
                    Err(format!("panic did not contain expected string\n      panic message: {message:?}\n expected substring: {expected:?}"))
                }
            }
            _ => Err(format!("the test panicked: {}", payload_text(payload.as_ref()))),
        },
        Ok(Err(_)) => Err("the test thread panicked".to_owned()),
        Ok(Ok(Ok(result))) => match (result, def.should_panic) {
            (Ok(()), ShouldPanic::No) => Ok(()),
            (Ok(()), _) => Err("test did not panic as expected".to_owned()),
            (Err(message), _) => Err(message),
        },
    };
    (body, panicked)
}

/// Live members of group `pgid`, given up to `grace` to end by themselves (a
/// child that was exiting when the test died is not an orphan).
fn settle_group(pgid: i32, grace: Duration) -> Vec<crate::snapshot::ProcessInfo> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let members = live_members_of_group(pgid);
        if members.is_empty() || start.elapsed() >= grace {
            return members;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Live processes of process group `pgid`, read from `/proc`.
fn live_members_of_group(pgid: i32) -> Vec<crate::snapshot::ProcessInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()))
        .filter_map(|pid| crate::snapshot::process_info(pid).ok())
        .filter(|info| info.pgid == pgid && info.state != 'Z' && info.state != 'X')
        .collect()
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".to_owned())
}

fn failed_record(def: &TestDef, message: String) -> TestRecord {
    TestRecord { message: Some(message), ..TestRecord::new("", def.full_name(), Outcome::Failed) }
}

fn print_failures(failures: &[TestRecord]) {
    if failures.is_empty() {
        return;
    }
    println!("\nfailures:");
    for record in failures {
        println!("\n---- {} stdout ----", record.name);
        if let Some(output) = record.output.as_deref().filter(|output| !output.is_empty()) {
            print!("{output}");
            if !output.ends_with('\n') {
                println!();
            }
        }
        if let Some(message) = &record.message {
            println!("{message}");
        }
        if !record.leaks.is_empty() {
            println!("{}", crate::__private::describe_leaks(&record.leaks));
        }
    }
    println!("\nfailures:");
    for record in failures {
        println!("    {}", record.name);
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array; we own them from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads what is available without blocking; `None` the pipe at end of file.
fn read_available(pipe: &mut Option<File>, into: &mut Vec<u8>, keep: usize) {
    let Some(file) = pipe else { return };
    let mut ready = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll with a zero timeout on one pollfd we own.
    while unsafe { libc::poll(&mut ready, 1, 0) } > 0 {
        let mut buf = [0u8; 64 * 1024];
        match file.read(&mut buf) {
            Ok(0) | Err(_) => {
                *pipe = None;
                return;
            }
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                if into.len() > keep.saturating_mul(2) {
                    into.drain(..into.len() - keep);
                }
            }
        }
        ready.revents = 0;
    }
}

fn drain(pipe: &mut Option<File>, into: &mut Vec<u8>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while pipe.is_some() && Instant::now() < deadline {
        read_available(pipe, into, KEEP_OUTPUT);
        if pipe.is_some() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    *pipe = None;
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGINT => "SIGINT",
        _ => return format!("{signal}"),
    };
    name.to_owned()
}
