//! What every test run of one `cargo leakcheck` shares, and a worker's
//! wake-up pipe.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::time::Duration;

use super::probe::ExitFilter;
use super::reaper::Supervisor;

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
    /// No `--batch`: every test in a process of its own.
    pub(crate) isolate: bool,
    /// `--fork-per-test`: harness targets never reuse a child for another test.
    pub(crate) fork_per_test: bool,
    /// `-v`: print each group run of singleton detection.
    pub(crate) verbose: bool,
    /// fd, thread, child: tell process-wide singletons of that kind from
    /// per-test leaks (group runs) rather than fail every test touching one.
    pub(crate) detect_singletons: [bool; 3],
    /// The heap check (`--heap`): the preloaded runtime, and the binaries it
    /// cannot check. `None`: heap not checked in zero-config runs.
    pub(crate) heap: Option<crate::heap::HeapCheck>,
    /// The heap check was wanted (the default) but no runtime was found: every
    /// plain test is `not checked: heap`.
    pub(crate) heap_missing: bool,
    /// Per binary, the shapes of leaks that outlasted a whole grace in some
    /// test: later tests do not wait for those again (see `watch::Settle`).
    pub(crate) lasting: std::sync::Mutex<HashMap<String, HashSet<String>>>,
}

impl RunContext {
    /// Whether test processes get a private temp dir that is checked for
    /// files left behind (not with `kinds = { file = "off" }`: the tests
    /// then share the caller's, as under `cargo test`).
    pub(super) fn checks_files(&self) -> bool {
        self.policy.severities[leakcheck::LeakKind::File.index()] != Some(crate::config::Severity::Off)
    }

    /// Whether singleton detection looks at leaks of `leak`'s kind.
    pub(super) fn detects_singletons_of(&self, leak: &leakcheck::Leak) -> bool {
        let kind = leak.leak_kind().index();
        kind < self.detect_singletons.len() && self.detect_singletons[kind]
    }
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

/// How long the exit snapshot waits for leaks to go away by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Up to the whole grace.
    Full,
    /// Not for fd leaks of a shape that already outlasted a whole grace in
    /// another test of the binary (a singleton, most often): a clean
    /// async suite must not wait the grace in every test. Threads and
    /// children are always waited for: they are what ends late (a pool
    /// dropped without joining its threads). Such a record is
    /// marked `hurried`; if it still fails after singleton detection, the
    /// test is run again with [`Settle::Full`] and that verdict counts.
    SkipLasting,
}
