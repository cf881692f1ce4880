//! Running a `leakcheck::main!()` binary whole.
//!
//! Such a binary forks and checks each of its tests itself (heap included)
//! and writes one JSON `TestRecord` per line to the fd named by
//! `LEAKCHECK_RECORDS_FD`. We run it once with `--test-threads=<jobs>` and the
//! user's filters, under the subreaper, and relay its records as they come.
//! Whatever its tests orphaned (invisible to its in-process checks) is
//! terminated when it ends.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use leakcheck::{Outcome, TestRecord};

use super::context::{RunContext, Waker, DRAIN_LIMIT, TERMINATE_GRACE};
use super::output::Capture;
use super::poll::wait_for_events;
use super::reaper::{self, ExitStatus, SpawnedTest, MARKER_VAR};
use crate::cargo::TestBinary;
use crate::list::TestCase;

/// Runs the harness binary of `cases` (all of one binary, none ignored) and
/// returns one record per case, in `cases` order, calling `on_record` as each
/// arrives. A case the run was interrupted under has none.
pub(crate) fn run_harness(
    context: &RunContext,
    waker: &Waker,
    cases: &[&TestCase],
    list_args: &[String],
    jobs: usize,
    on_record: &mut dyn FnMut(&mut TestRecord),
) -> io::Result<Vec<Option<TestRecord>>> {
    waker.drain();
    let binary = &cases[0].binary;
    let marker = format!("{}:harness:{}", std::process::id(), cases[0].serial);
    let (mut records, records_write) = io::pipe()?;
    let records_fd = records_write.as_raw_fd();
    // The fork server gives each test a private temp dir inside this one;
    // whatever is left in it goes with it when the run of the binary ends.
    let temp = leakcheck::temp_dir::PrivateTemp::new_in(&context.scratch)?;
    let mut command = harness_command(context, binary, list_args, jobs, &marker, records_fd);
    command.env(leakcheck::temp_dir::TMPDIR_VAR, temp.path());
    let started = Instant::now();
    let SpawnedTest { pid, slot, stdout, stderr } =
        context.supervisor.spawn_test(&mut command, &marker, &waker.writer)?;
    drop(records_write);
    let mut stdout = Capture::new(stdout.into());
    let mut stderr = Capture::new(stderr.into());
    nix::fcntl::fcntl(&records, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;

    let wanted: HashMap<&str, usize> =
        cases.iter().enumerate().map(|(index, case)| (case.name.as_str(), index)).collect();
    let mut received: Vec<Option<TestRecord>> = vec![None; cases.len()];
    let mut pending = Vec::new();
    let mut records_open = true;
    let status = loop {
        let status = slot.status();
        if let (Some(status), false) = (status, records_open) {
            break status;
        }
        let records_fd = records_open.then(|| records.as_fd());
        let ready = wait_for_events(&[records_fd, stdout.fd(), stderr.fd(), Some(waker.reader.as_fd())], DRAIN_LIMIT)?;
        if ready[0] {
            records_open = read_records(&mut records, &mut pending, |mut record| {
                record.binary = binary.id.clone();
                blame_orphans(&mut record, &marker);
                // Leaks the harness's explain re-run found no stack for.
                if context.explain && !record.leaks.is_empty() {
                    crate::mentions::attach(&mut record, &binary.cwd);
                }
                if let Some(&index) = wanted.get(record.name.as_str()) {
                    on_record(&mut record);
                    received[index] = Some(record);
                }
            });
        }
        if ready[1] {
            stdout.read_some();
        }
        if ready[2] {
            stderr.read_some();
        }
        if ready[3] {
            waker.drain();
        }
        if status.is_some() && !ready[0] {
            // Exited, and the records pipe is quiet: a process it left holds
            // the pipe open. Stop waiting for it.
            records_open = false;
        }
    };
    context.supervisor.unregister(pid);
    let leftovers = reaper::processes_of(pid, &marker);
    for leftover in leftovers.iter().filter_map(|&pid| leakcheck::snapshot::process_info(pid).ok()) {
        eprintln!(
            "warning: killed `{}` (pid {}): left running by a test of {} that its in-process check could not see (orphaned)",
            leftover.cmdline, leftover.pid, binary.id
        );
    }
    reaper::terminate(&leftovers, TERMINATE_GRACE, || {});
    stdout.drain_until_eof(DRAIN_LIMIT);
    stderr.drain_until_eof(DRAIN_LIMIT);

    if context.supervisor.interrupted().is_some() {
        return Ok(received);
    }
    let output = {
        let mut text = stdout.into_text();
        text.push_str(&stderr.into_text());
        text
    };
    let missing = Missing { status, output, elapsed_ms: started.elapsed().as_millis() as u64 };
    Ok(received
        .into_iter()
        .zip(cases)
        .map(|(record, case)| Some(record.unwrap_or_else(|| missing.record(case, on_record))))
        .collect())
}

/// Why the harness sent no record for some tests, and what it printed.
#[derive(Debug)]
struct Missing {
    status: ExitStatus,
    output: String,
    elapsed_ms: u64,
}

impl Missing {
    /// The failed record of a test the harness never reported.
    fn record(&self, case: &TestCase, on_record: &mut dyn FnMut(&mut TestRecord)) -> TestRecord {
        let message = match self.status {
            ExitStatus::Code(code) => format!("the harness exited with status {code} before reporting this test"),
            ExitStatus::Signal(signal) => format!("the harness was killed by {signal} before reporting this test"),
        };
        let mut record = TestRecord::new(case.binary.id.clone(), case.name.clone(), Outcome::Failed);
        record.duration_ms = self.elapsed_ms;
        record.message = Some(message);
        record.output = Some(self.output.clone());
        on_record(&mut record);
        record
    }
}

/// The harness binary's command line: the user's filters, the jobs, and
/// the environment that makes it report to us (`LEAKCHECK_RECORDS_FD`,
/// whose pipe end `records_fd` is kept open across exec).
fn harness_command(
    context: &RunContext,
    binary: &TestBinary,
    list_args: &[String],
    jobs: usize,
    marker: &str,
    records_fd: i32,
) -> Command {
    let mut command = Command::new(&binary.executable);
    command
        .args(list_args)
        .args(&context.test_args)
        .arg(format!("--test-threads={jobs}"))
        .current_dir(&binary.cwd)
        .envs(binary.env.iter().map(|(key, value)| (key, value)))
        .env(MARKER_VAR, marker)
        .env(leakcheck::env_names::RECORDS_FD, records_fd.to_string())
        .env(leakcheck::env_names::TIMEOUT_MS, context.timeout.as_millis().to_string())
        .env(leakcheck::sites::EXPLAIN_ENV, if context.explain { "auto" } else { "0" })
        .envs(context.repeat.map(|runs| (leakcheck::env_names::REPEAT, runs.to_string())))
        .envs(context.fork_per_test.then_some((leakcheck::FORK_PER_TEST_ENV, "1")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: between fork and exec: empties the signal mask and clears
    // close-on-exec of the records pipe (fcntl); both async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            reaper::reset_signals();
            if libc::fcntl(records_fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Adds to `record` the processes its test orphaned (re-parented to us,
/// carrying the test's marker, which the fork server sets per test), then
/// ends them.
fn blame_orphans(record: &mut TestRecord, harness_marker: &str) {
    let known: Vec<i32> = record
        .leaks
        .iter()
        .filter_map(|leak| match leak {
            leakcheck::Leak::Child { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect();
    let orphans: Vec<i32> = reaper::adopted_with_marker(&format!("{harness_marker}/{}", record.name))
        .into_iter()
        .filter(|pid| !known.contains(pid) && reaper::is_alive(*pid))
        .collect();
    if orphans.is_empty() {
        return;
    }
    for info in orphans.iter().filter_map(|&pid| leakcheck::snapshot::process_info(pid).ok()) {
        record.leaks.push(leakcheck::diff::child_leak(info, true));
    }
    if record.outcome == Outcome::Passed {
        record.outcome = Outcome::Leaked;
    }
    reaper::terminate(&orphans, TERMINATE_GRACE, || {});
}

/// Reads what is available, hands over every complete line as a record;
/// returns false at end of file.
fn read_records(pipe: &mut io::PipeReader, pending: &mut Vec<u8>, mut deliver: impl FnMut(TestRecord)) -> bool {
    let mut buf = [0u8; 64 * 1024];
    let open = loop {
        match pipe.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break true,
            Err(_) => break false,
        }
    };
    while let Some(end) = pending.iter().position(|&byte| byte == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        if let Ok(record) = serde_json::from_slice::<TestRecord>(&line) {
            deliver(record);
        }
    }
    open
}
