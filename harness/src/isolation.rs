//! Whether a test has its process to itself, so that an in-process check can
//! attribute every new fd, thread, child and allocation to it.

use std::sync::atomic::{AtomicBool, Ordering};

static IN_FORKED_CHILD: AtomicBool = AtomicBool::new(false);

/// Marks this process as a fork-server child running a single test.
pub(crate) fn mark_forked_child() {
    IN_FORKED_CHILD.store(true, Ordering::Relaxed);
}

/// Why the current test can (or cannot) be checked in-process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Run by the leakcheck harness's fork server: one test per process.
    ForkedChild,
    /// Run by `cargo leakcheck`: one test per process.
    CargoLeakcheck,
    /// Run by `cargo nextest run`: one test per process.
    Nextest,
    /// libtest with one test thread: tests run one after another.
    SingleThreaded,
    /// Other tests may run in this process at the same time (plain `cargo
    /// test` with parallel test threads): nothing new can be attributed.
    Shared,
}

impl Isolation {
    /// True when a check can attribute what it sees to the test.
    pub fn is_alone(self) -> bool {
        self != Isolation::Shared
    }
}

/// Detects how the current test is being run, from the runner's environment
/// and the command line.
pub fn isolation() -> Isolation {
    if IN_FORKED_CHILD.load(Ordering::Relaxed) {
        return Isolation::ForkedChild;
    }
    if std::env::var_os(crate::env_names::TEST_ID).is_some() {
        return Isolation::CargoLeakcheck;
    }
    // nextest runs each test in its own process and says so.
    if std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|mode| mode == "process-per-test")
        || std::env::var_os("NEXTEST").is_some()
    {
        return Isolation::Nextest;
    }
    if test_threads() == Some(1) {
        return Isolation::SingleThreaded;
    }
    Isolation::Shared
}

/// Whether libtest captures the test's output (no `--nocapture`): its
/// capture buffer grows on the test's heap as the test prints, so an
/// in-process heap check there would count it.
pub(crate) fn output_captured() -> bool {
    let asked = std::env::args().any(|arg| arg == "--nocapture" || arg == "--no-capture");
    !asked && std::env::var("RUST_TEST_NOCAPTURE").map_or(true, |value| value == "0")
}

/// `--test-threads N` / `--test-threads=N` from the command line, else `RUST_TEST_THREADS`.
fn test_threads() -> Option<usize> {
    let mut args = std::env::args();
    while let Some(arg) = args.next() {
        if arg == "--test-threads" {
            return args.next().and_then(|value| value.parse().ok());
        }
        if let Some(value) = arg.strip_prefix("--test-threads=") {
            return value.parse().ok();
        }
    }
    std::env::var("RUST_TEST_THREADS").ok().and_then(|value| value.parse().ok())
}
