//! The parent's side of a child: fork it, watch its pipes and time limit,
//! hand a reused child its next test, reap it and read its record.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::child::serve_tests;
use super::config::{ForkServer, EXPLAIN_LIMIT, RUNNING_GROUPS};
use super::pipes::{drain, pipe, read_available, settle_group, signal_name, KEEP_OUTPUT};
use super::protocol::failed_record;
use crate::isolation::mark_forked_child;
use crate::record::{Outcome, TestRecord};
use crate::registry::TestDef;

/// A forked child: it runs one test, or, reused, one test after another.
pub(super) struct Running {
    /// The test it runs now; `None` while a reused child waits for its next
    /// test, or after it was told to exit.
    pub(super) def: Option<&'static TestDef>,
    pub(super) pid: i32,
    pub(super) slot: usize,
    /// Where the next test's index goes (4 bytes, little-endian); dropped
    /// to tell a waiting child to exit. `None` for a child that is not reused.
    pub(super) command: Option<File>,
    pub(super) record: Option<File>,
    pub(super) record_bytes: Vec<u8>,
    pub(super) output: Option<File>,
    pub(super) output_bytes: Vec<u8>,
    pub(super) started: Instant,
    /// Killed past this (the configured timeout; explain re-runs always have one).
    pub(super) limit: Option<Duration>,
    pub(super) timed_out: bool,
    /// An explain re-run (see [`ForkServer::explain`]).
    pub(super) explain: bool,
    /// For an explain re-run: the first run's record, which gets its sites.
    pub(super) explaining: Option<TestRecord>,
    /// The child's `TMPDIR`, made here before the fork and removed with
    /// whatever is in it when the child is reaped (crashed or not).
    pub(super) _temp: Option<crate::temp_dir::PrivateTemp>,
}

impl Running {
    /// Sends a waiting child test `index` of the plan.
    pub(super) fn assign(&mut self, index: usize, def: &'static TestDef, timeout: Option<Duration>) {
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
    pub(super) fn has_reused_record(&self) -> bool {
        self.def.is_some() && self.record_bytes.first() == Some(&b'+') && self.record_bytes.last() == Some(&b'\n')
    }

    /// The record of such a test, now that the child waits for its next.
    pub(super) fn take_reused_record(&mut self) -> Option<TestRecord> {
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

impl ForkServer {
    /// Forks a child that runs `def` (and, if it passes clean and reuse is
    /// on, whichever of `tests` it is sent next); with `explain: Some(heap)`, a re-run
    /// of a test that leaked, recording creation sites (and heap blocks when
    /// `heap`), its output discarded.
    pub(super) fn fork_test(
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
        // Inside the server's own temp dir (under cargo leakcheck, private).
        let temp = crate::temp_dir::PrivateTemp::new_in(&std::env::temp_dir()).ok();
        let temp_dir = temp.as_ref().map(|temp| temp.path().to_owned());
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
            // handling (its handler would kill the groups of every sibling
            // test it remembers) and whatever our caller ignored.
            crate::signals::reset_for_exec();
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
            // The child's copy of `temp` is never dropped (it never returns):
            // the directory is the parent's to remove.
            serve_tests(def, tests, commands, File::from(record_write), (explain, heap), temp_dir);
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
            _temp: temp,
        })
    }

    /// Waits until some child's pipes have data or end, or a deadline passes.
    pub(super) fn wait_for_io(&self, running: &mut [Running]) {
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
    pub(super) fn reap_idle(&self, child: Running) {
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
    pub(super) fn finish(&self, mut child: Running, def: &'static TestDef) -> TestRecord {
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
