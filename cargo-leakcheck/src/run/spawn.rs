//! Starting one test process: `<binary> ARGS` in its package directory, in a
//! new process group, output piped, under the exit probe when it is on.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use leakcheck::diff::Baseline;
use leakcheck::snapshot::{key_of_path, FdKey};
use leakcheck::temp_dir::PrivateTemp;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::context::Settle;
use super::context::{RunContext, Waker};
use super::exec_env::HiddenEnv;
use super::output::Capture;
use super::probe::{self, Listener};
use super::reaper::{self, ExitSlot, SpawnedTest, MARKER_VAR};
use crate::list::TestCase;

/// A started test process and everything its worker watches it with.
#[derive(Debug)]
pub(super) struct TestProcess {
    pub(super) pid: i32,
    /// `LEAKCHECK_TEST_ID` of every process of this run of the test.
    pub(super) marker: String,
    pub(super) slot: Arc<ExitSlot>,
    pub(super) stdout: Capture,
    pub(super) stderr: Capture,
    /// The exit probe's seccomp listener (`None`: probe off or refused).
    pub(super) listener: Option<Listener>,
    /// What the process legitimately holds from the start: stdin, stdout,
    /// stderr and its main thread.
    pub(super) baseline: Baseline,
    pub(super) started: Instant,
    /// Where a `#[leakcheck::test]` in the test leaves its in-process verdict.
    pub(super) record_file: std::path::PathBuf,
    /// How long its exit snapshot may wait for leaks to go away.
    pub(super) settle: Settle,
    /// The heap check's report prefix (`PREFIX.PID`), when the heap is checked.
    pub(super) heap_log: Option<std::path::PathBuf>,
    /// Its `TMPDIR`: private, removed with whatever is in it when dropped
    /// (`None`: files not checked).
    pub(super) temp: Option<PrivateTemp>,
}

impl TestProcess {
    /// What its processes made outside its temp dir that is still there,
    /// since the last call (see [`super::creations`]).
    pub(super) fn files_made_outside(&self, context: &RunContext, case: &TestCase) -> Vec<leakcheck::Leak> {
        let Some(listener) = &self.listener else { return Vec::new() };
        super::creations::left_outside(listener.take_created(), &self.kept_dirs(context, &case.binary.executable))
    }

    /// Where its tests may leave files: its temp dir (listed instead), and
    /// see [`super::creations::kept_dirs`].
    pub(super) fn kept_dirs(&self, context: &RunContext, executable: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut kept = super::creations::kept_dirs(executable, &context.scratch);
        kept.extend(self.temp.as_ref().map(|temp| temp.path().to_owned()));
        kept
    }

    /// Paths of `leaks` in the process's temp dir as `$TMPDIR/...`.
    pub(super) fn name_by_tmpdir(&self, leaks: &mut [leakcheck::Leak]) {
        if let Some(temp) = &self.temp {
            leakcheck::temp_dir::name_by_tmpdir(leaks, temp.path());
        }
    }
}

/// Why a test process is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Launch {
    /// The test's run: everything checked, cheaply.
    Check,
    /// The test's run again, never preloaded: it failed preloaded.
    CheckWithoutHeap,
    /// An explain re-run of a test with leakcheck's code inside
    /// (`LEAKCHECK_EXPLAIN=record[-heap]`): its own recorders find the
    /// sites; the heap runtime is not preloaded (its exit check and the
    /// recorders' seccomp trap do not mix).
    Explain { heap: bool },
    /// An explain re-run of a plain test whose heap leaked under the
    /// runtime: preloaded again, with full allocation stacks.
    ExplainHeap,
    /// A group run of singleton detection, judged at libtest's boundaries
    /// as a batch is: the heap is not looked at.
    Group,
    /// The heap check's filter: a binary's tests together, preloaded.
    HeapFilter,
    /// A batch of a binary's tests, judged at libtest's boundaries
    /// (see [`super::batch`]); preloaded when the heap is checked.
    Batch,
}

/// Spawns `case`'s binary with `args`, for the reason `launch` gives.
pub(super) fn start(
    context: &RunContext,
    waker: &Waker,
    case: &TestCase,
    args: &[String],
    launch: Launch,
) -> std::io::Result<TestProcess> {
    waker.drain();
    let binary = &case.binary;
    let marker = format!("{}:{}", std::process::id(), case.serial);
    let record_file = context.scratch.join(format!("{}.json", case.serial));
    let _ = std::fs::remove_file(&record_file);
    let temp = context.checks_files().then(|| PrivateTemp::new_in(&context.scratch)).transpose()?;
    let mut command = Command::new(&binary.executable);
    command
        .args(args)
        .current_dir(&binary.cwd)
        .envs(binary.env.iter().map(|(key, value)| (key, value)))
        .env(MARKER_VAR, &marker)
        .env(leakcheck::env_names::RECORD_FILE, &record_file)
        .envs(temp.iter().flat_map(PrivateTemp::environment))
        .envs(context.repeat.map(|runs| (leakcheck::env_names::REPEAT, runs.to_string())))
        .envs(explain_env(launch))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let heap = heap_check(context, case, launch, &mut command);

    let probe_socket = match context.filter {
        Some(_) if context.probe_refused.get().is_none() => {
            Some(socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?)
        }
        _ => None,
    };
    let child_end = probe_socket.as_ref().map(|(_, child)| child.as_raw_fd());
    let filter = filter_for(context, launch, heap.is_some());
    // SAFETY: between fork and exec the closure only resets the signal
    // state and, with the probe, runs `child_setup` on plain captured data
    // (the filter program and an fd number); both are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            reaper::reset_signals();
            if let (Some(filter), Some(socket)) = (&filter, child_end) {
                probe::child_setup(filter, socket);
            }
            Ok(())
        });
    }

    let started = Instant::now();
    let (heap_log, hidden) = heap.unzip();
    let mut spawn = || context.supervisor.spawn_test(&mut command, &marker, &waker.writer);
    let (spawned, listener) = match &probe_socket {
        Some((parent, _)) => probe::spawn_probed(parent.as_fd(), hidden, spawn),
        None => (spawn(), None),
    };
    drop(probe_socket);
    let SpawnedTest { pid, slot, stdout, stderr } = spawned.map_err(|error| {
        // Removed or rebuilt mid-run, not executable, arguments too long.
        std::io::Error::new(error.kind(), format!("{} could not be started: {error}", binary.executable.display()))
    })?;
    let listener = match listener {
        Some(Ok(listener)) => Some(listener),
        Some(Err(error)) => {
            let _ = context.probe_refused.set(error);
            None
        }
        None => None,
    };

    let mut baseline = Baseline {
        fds: [(0, key_of_path("/dev/null")), (1, key_of(&stdout)), (2, key_of(&stderr))]
            .into_iter()
            .filter_map(|(fd, key)| Some((fd, key?)))
            .collect(),
        threads: Default::default(),
        children: Default::default(),
    };
    baseline.add_thread(pid, pid);
    Ok(TestProcess {
        pid,
        marker,
        slot,
        stdout: Capture::new(stdout.into()),
        stderr: Capture::new(stderr.into()),
        listener,
        baseline,
        started,
        record_file,
        settle: Settle::Full,
        heap_log,
        temp,
    })
}

/// The probe's filter for a `launch` (`None`: no probe).
fn filter_for(context: &RunContext, launch: Launch, preloaded: bool) -> Option<probe::ExitFilter> {
    let mut filter = context.filter?;
    // Preloaded, the test's execs are stopped too, to run without the runtime.
    if preloaded {
        filter = filter.with_exec();
    }
    if matches!(launch, Launch::Batch | Launch::Group) {
        filter = filter.with_boundaries();
    }
    // The runs that give or confirm a verdict see the files a test makes,
    // and so does the heap's run-together, which runs before them.
    let verdict = matches!(launch, Launch::Check | Launch::CheckWithoutHeap | Launch::Batch | Launch::HeapFilter);
    if context.checks_files() && verdict {
        filter = filter.with_creations();
    }
    Some(filter)
}

/// `LEAKCHECK_EXPLAIN` for an explain re-run of a test with leakcheck's code.
fn explain_env(launch: Launch) -> Option<(&'static str, &'static str)> {
    match launch {
        Launch::Explain { heap } => Some((leakcheck::sites::EXPLAIN_ENV, if heap { "record-heap" } else { "record" })),
        _ => None,
    }
}

/// Preloads the heap runtime into `command` when this run checks the heap
/// and `case`'s binary can be checked: the report prefix, and what the
/// test's execs must not pass on, when it does.
fn heap_check(
    context: &RunContext,
    case: &TestCase,
    launch: Launch,
    command: &mut Command,
) -> Option<(std::path::PathBuf, HiddenEnv)> {
    if !preloads(context, case, launch) {
        return None;
    }
    let heap = context.heap.as_ref()?;
    let log_prefix = context.scratch.join(format!("heap-{}", case.serial));
    crate::heap::remove_reports(&log_prefix);
    let preload = case
        .binary
        .env
        .iter()
        .find(|(key, _)| key == "LD_PRELOAD")
        .map(|(_, value)| value.into())
        .or_else(|| std::env::var_os("LD_PRELOAD"));
    let environment = heap.environment(&log_prefix, launch == Launch::ExplainHeap, preload);
    let hidden = HiddenEnv::new(
        environment.iter().map(|(name, value)| (*name, value.as_bytes())),
        heap.runtime_path().as_os_str().as_bytes(),
    );
    command.envs(environment);
    Some((log_prefix, hidden))
}

/// Whether a `launch` of `case` gets the heap runtime preloaded.
pub(super) fn preloads(context: &RunContext, case: &TestCase, launch: Launch) -> bool {
    let Some(heap) = context.heap.as_ref() else { return false };
    let executable = &case.binary.executable;
    let preloaded = match launch {
        Launch::HeapFilter | Launch::Batch | Launch::ExplainHeap => true,
        Launch::Check => heap.checks_each_test_of(executable),
        Launch::CheckWithoutHeap | Launch::Group | Launch::Explain { .. } => false,
    };
    preloaded && heap.unsupported(executable).is_none()
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
pub(crate) fn stop_fd_inheritance() -> std::io::Result<()> {
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
