//! The test record: the one value that flows from a runner to the reporters.
//!
//! These types are the machine-readable contract of `cargo leakcheck
//! --message-format json` (see the README, "JSON report"). New fields may be
//! added; existing fields keep their meaning.

use serde::{Deserialize, Serialize};

/// Version of the JSON report format. Bumped only on an incompatible change.
pub const REPORT_VERSION: u32 = 1;

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The test passed and left nothing behind.
    Passed,
    /// The test passed but left at least one resource behind.
    Leaked,
    /// The test failed (panicked, crashed, exited early). Leaks seen are kept.
    Failed,
    /// The test is `#[ignore]`d and was not run.
    Ignored,
    /// The test ran past the time limit and was killed with its whole process tree.
    TimedOut,
}

impl Outcome {
    /// The outcome as written in the JSON report (`"timed-out"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Leaked => "leaked",
            Outcome::Failed => "failed",
            Outcome::Ignored => "ignored",
            Outcome::TimedOut => "timed-out",
        }
    }

    /// Whether this outcome makes the run fail (exit code 100).
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Leaked | Outcome::Failed | Outcome::TimedOut)
    }
}

/// One resource a test left behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Leak {
    /// A file descriptor that was not open when the test started, or whose
    /// number now points at something else.
    Fd {
        /// The descriptor number in the test process.
        fd: i32,
        /// What it points at: a path, or `socket:[inode]`, `pipe:[inode]`,
        /// `anon_inode:[eventfd]` as the kernel names it.
        target: String,
        /// A readable description: "regular file", "tcp 127.0.0.1:4000 ->
        /// 127.0.0.1:51234 (established)", "pipe, read end; other end held by
        /// child `cat`", "eventfd", ...
        detail: String,
        /// Where it was created: filled in when the leaking test is re-run
        /// to explain it (harness and attribute mode); empty otherwise.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sites: Vec<Site>,
    },
    /// A thread still running when the test ended.
    Thread {
        /// Kernel thread id.
        tid: i32,
        /// Thread name (the kernel's `comm`, at most 15 bytes).
        name: String,
        /// Scheduler state: "running", "sleeping", "disk-sleep", "stopped", ...
        state: String,
        /// True when the thread was never named: Linux gives a new thread
        /// its creator's name, so `name` is then the (truncated) name of the
        /// test thread that started it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unnamed: bool,
        /// The kernel function it waits in (`wchan`: `hrtimer_nanosleep`,
        /// `futex_do_wait`, `do_epoll_wait`, ...), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        waiting_in: Option<String>,
        /// Where it was created: filled in when the leaking test is re-run
        /// to explain it (harness and attribute mode); empty otherwise.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sites: Vec<Site>,
    },
    /// A child process (or a descendant orphaned by the test) still present
    /// when the test ended: still running, or a zombie never waited for.
    Child {
        /// Process id.
        pid: i32,
        /// Command line, arguments separated by spaces.
        cmdline: String,
        /// "running", "sleeping", "zombie", "stopped", ...
        state: String,
        /// True when the process was not a direct child of the test process
        /// (a grandchild orphaned by the test's own child, a daemon).
        orphaned: bool,
        /// How long it had been running when the test ended, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        age_ms: Option<u64>,
        /// Where it was created: filled in when the leaking test is re-run
        /// to explain it (harness and attribute mode); empty otherwise.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sites: Vec<Site>,
    },
    /// Heap memory allocated during the test and still live at its end
    /// (measured by [`crate::Alloc`]), or, in zero-config runs with the heap
    /// check on, blocks LeakSanitizer found unreachable at the test
    /// process's exit (one leak per group it reports).
    Heap {
        /// Growth of live bytes.
        bytes: u64,
        /// Growth of live blocks (may be 0 when an existing block grew).
        blocks: u64,
        /// LeakSanitizer (zero-config runs): these blocks are reachable only
        /// from other leaked blocks, so they go when those are freed. Fix the
        /// direct leak first.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        indirect: bool,
        /// The allocation sites of the blocks still live, largest first,
        /// each with its bytes and blocks (from a re-run under dhat).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sites: Vec<Site>,
    },
    /// A file, directory, socket, fifo or symlink the test made in its
    /// private temp dir (`TMPDIR`) and left there (see
    /// [`crate::temp_dir`]). The directory is removed after the test.
    File {
        /// Path relative to the test's temp dir; absolute for a file the
        /// test made elsewhere (seen being made; reported, never removed).
        path: String,
        /// "file", "dir", "socket", "fifo", "symlink" or "device".
        #[serde(rename = "type")]
        file_type: String,
        /// A file's size; for a directory, the size of the files in it.
        bytes: u64,
        /// A directory: how many entries it holds, at any depth (the first
        /// 10,000 are read); absent when it could not be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entries: Option<u64>,
        /// Where it was created, when known (not recorded yet).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sites: Vec<Site>,
    },
}

/// What kind of resource a [`Leak`] is: the index of per-kind settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakKind {
    /// An open file descriptor.
    Fd,
    /// A running thread.
    Thread,
    /// A child process, running or a zombie.
    Child,
    /// Heap memory.
    Heap,
    /// A file left in the test's temp dir.
    File,
}

impl LeakKind {
    /// Every kind, in index order.
    pub const ALL: [LeakKind; 5] = [LeakKind::Fd, LeakKind::Thread, LeakKind::Child, LeakKind::Heap, LeakKind::File];

    /// The kind as written in reports and configuration: `fd`, `thread`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            LeakKind::Fd => "fd",
            LeakKind::Thread => "thread",
            LeakKind::Child => "child",
            LeakKind::Heap => "heap",
            LeakKind::File => "file",
        }
    }

    /// Its position in [`LeakKind::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Leak {
    /// The kind as written in the JSON report: `fd`, `thread`, `child`,
    /// `heap`, `file`.
    pub fn kind(&self) -> &'static str {
        self.leak_kind().as_str()
    }

    /// The kind of resource.
    pub fn leak_kind(&self) -> LeakKind {
        match self {
            Leak::Fd { .. } => LeakKind::Fd,
            Leak::Thread { .. } => LeakKind::Thread,
            Leak::Child { .. } => LeakKind::Child,
            Leak::Heap { .. } => LeakKind::Heap,
            Leak::File { .. } => LeakKind::File,
        }
    }

    /// How to fix a leak of this kind, in one line.
    pub fn hint(&self) -> &'static str {
        match self {
            Leak::Fd { .. } => {
                "A file, socket or pipe opened during the test is still open at its end: close it, or drop its owner before the test returns."
            }
            Leak::Thread { .. } => {
                "A thread started during the test still runs at its end: signal it to stop and join it (shutdown with a timeout), or give its owner a Drop that does."
            }
            Leak::Child { orphaned: true, .. } => {
                "A process started by the test's own child outlives it: have the child wait for its children, or kill the whole process group."
            }
            Leak::Child { .. } => {
                "A child process is still running or was never waited for (zombie): kill it if needed, then wait() for it before the test returns."
            }
            Leak::Heap { .. } => {
                "Memory allocated during the test is still allocated at its end: look for Box::leak, mem::forget, Rc cycles or globals that grow per test."
            }
            Leak::File { .. } => {
                "The test left this in its temp dir: remove it before the test returns, or use tempfile's NamedTempFile/TempDir and let it drop (not keep(), into_path() or mem::forget)."
            }
        }
    }

    /// Where the leaked resource was created, when known.
    pub fn sites(&self) -> &[Site] {
        match self {
            Leak::Fd { sites, .. }
            | Leak::Thread { sites, .. }
            | Leak::Child { sites, .. }
            | Leak::Heap { sites, .. }
            | Leak::File { sites, .. } => sites,
        }
    }

    /// Mutable access to [`Leak::sites`].
    pub fn sites_mut(&mut self) -> &mut Vec<Site> {
        match self {
            Leak::Fd { sites, .. }
            | Leak::Thread { sites, .. }
            | Leak::Child { sites, .. }
            | Leak::Heap { sites, .. }
            | Leak::File { sites, .. } => sites,
        }
    }

    /// One line naming exactly what leaked, for human output. Whatever came
    /// from the test (a path, a thread name, a command line) is escaped: a
    /// newline in a file name must not forge a line of the report.
    pub fn describe(&self) -> String {
        escape_control(&self.describe_raw()).into_owned()
    }

    fn describe_raw(&self) -> String {
        match self {
            Leak::Fd { fd, target, detail, .. } if detail.is_empty() || detail == target => {
                format!("fd {fd} -> {target}")
            }
            Leak::Fd { fd, target, detail, .. } => format!("fd {fd} -> {target} ({detail})"),
            Leak::Thread { tid, name, state, unnamed, waiting_in, .. } => {
                let state = match waiting_in {
                    Some(function) => format!("{state} in {function}"),
                    None => state.clone(),
                };
                if *unnamed {
                    format!("unnamed thread (tid {tid}, {state}; started by the test thread \"{name}\")")
                } else {
                    format!("thread \"{name}\" (tid {tid}, {state})")
                }
            }
            Leak::Child { pid, cmdline, state, orphaned, age_ms, .. } => {
                let orphan = if *orphaned { ", orphaned grandchild" } else { "" };
                let age = age_ms.map(|ms| format!(", {:.1}s old", ms as f64 / 1000.0)).unwrap_or_default();
                format!("child `{cmdline}` (pid {pid}, {state}{orphan}{age})")
            }
            Leak::Heap { bytes, blocks, indirect, .. } => {
                let reach = if *indirect { " (indirect: reachable only from other leaked blocks)" } else { "" };
                format!("heap: {bytes} bytes in {blocks} {}{reach}", if *blocks == 1 { "block" } else { "blocks" })
            }
            Leak::File { path, file_type, bytes, entries, .. } => {
                let size = format!("{bytes} {}", if *bytes == 1 { "byte" } else { "bytes" });
                let held = match entries {
                    Some(0) => "empty".to_owned(),
                    Some(count) => format!("{count} {}, {size}", if *count == 1 { "entry" } else { "entries" }),
                    None if file_type == "file" => size,
                    None if file_type == "dir" => "its entries could not be read".to_owned(),
                    None => String::new(),
                };
                let held = if held.is_empty() { String::new() } else { format!(", {held}") };
                if path.starts_with('/') {
                    format!("{file_type} {path} (made by the test outside its temp dir, not removed{held})")
                } else {
                    format!("{file_type} $TMPDIR/{path} (left in the test's temp dir{held})")
                }
            }
        }
    }
}

/// `text` with every control character written as an escape (`\n`, `\t`,
/// `\r`, `\u{1b}`): safe to print on one line of a report, a table cell or
/// a tab-separated file. Borrowed when there is nothing to escape.
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\t' => escaped.push_str("\\t"),
            '\r' => escaped.push_str("\\r"),
            c if c.is_control() => escaped.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => escaped.push(c),
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// Where a leaked resource was created: the call stack of its creation,
/// trimmed to the frames of the code under test (std, dependencies from the
/// registry and leakcheck itself left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// The innermost frame of the code under test, as `file:line`.
    pub location: String,
    /// Its function, without the hash suffix.
    pub function: String,
    /// The innermost frame's source file as the debug info names it
    /// (absolute for most builds) and its line: for editors and annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// See [`Site::file`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The frames of the code under test, innermost first: `function (file:line)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<String>,
    /// What the stack is: where the resource was created, where a heap
    /// block was allocated, or (threads) what the thread is running now.
    pub role: SiteRole,
    /// Heap sites: bytes still live from this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Heap sites: blocks still live from this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<u64>,
}

/// What the stack of a [`Site`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteRole {
    /// The call that created the resource (fds, child processes).
    Created,
    /// The allocation of heap blocks still live.
    Allocated,
    /// What a leaked thread runs at the check: for a thread the test
    /// spawned, the closure it was given, in the test's source.
    Running,
    /// Zero-config tests (no stack recorded): the line of the test's own
    /// function that names what leaked (its file, thread name, program).
    Mentioned,
}

impl Site {
    /// `created at src/pool.rs:42 in pool::Pool::grow`, with the heap share
    /// when known.
    pub fn describe(&self) -> String {
        let blocks = |blocks: u64| if blocks == 1 { "block" } else { "blocks" };
        match (self.role, self.bytes, self.blocks) {
            (_, Some(bytes), Some(count)) => {
                format!(
                    "{bytes} bytes in {count} {} allocated at {} in {}",
                    blocks(count),
                    self.location,
                    self.function
                )
            }
            (SiteRole::Running, ..) => format!("running {} at {}", self.function, self.location),
            (SiteRole::Mentioned, ..) => {
                format!("named at {} in {} (no stack: the test's line naming it)", self.location, self.function)
            }
            (SiteRole::Allocated, ..) => format!("allocated at {} in {}", self.location, self.function),
            (SiteRole::Created, ..) => format!("created at {} in {}", self.location, self.function),
        }
    }
}

/// Everything known about one test after it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRecord {
    /// The test binary, named as nextest names it: `package` for a library's
    /// unit tests, `package::target` for an integration test,
    /// `package::bin/name` for a binary's tests.
    pub binary: String,
    /// The test's full path, as libtest lists it (`module::test_name`).
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time from spawn to exit, in milliseconds; the time the exit
    /// snapshot waited for leftovers to go away (the grace) is not counted.
    pub duration_ms: u64,
    /// Why a failed or timed-out test failed ("exit status 101", "killed by
    /// signal SIGSEGV"); absent when it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What the test left behind; kept for failed and timed-out tests too.
    #[serde(default)]
    pub leaks: Vec<Leak>,
    /// Checks that could not be made for this test ("fd", "thread", "heap"),
    /// for example when the exit probe is unavailable. Empty when all were made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchecked: Vec<String>,
    /// Leaks accepted by an allow rule, with its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<AllowedLeak>,
    /// Leaks of kinds configured to warn: reported, not failing the test.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Leak>,
    /// Leaks found to be process-wide singletons of the test binary (made
    /// once per process by a library the test uses, shared by every test
    /// that touches it, seen by running such tests together): reported,
    /// not a leak of this test. Zero-config runs only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub singletons: Vec<Leak>,
    /// fds that were open when the test started and that it closed (it did
    /// not open them: stdin, a harness pipe). Reported, not a failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closed_fds: Vec<i32>,
    /// Captured standard output and error, interleaved per stream (stdout
    /// then stderr); kept only for tests that did not pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl TestRecord {
    /// A record with nothing but its identity and outcome (no leaks, no
    /// output, no time).
    pub fn new(binary: impl Into<String>, name: impl Into<String>, outcome: Outcome) -> TestRecord {
        TestRecord {
            binary: binary.into(),
            name: name.into(),
            outcome,
            duration_ms: 0,
            message: None,
            leaks: Vec::new(),
            unchecked: Vec::new(),
            allowed: Vec::new(),
            warnings: Vec::new(),
            singletons: Vec::new(),
            closed_fds: Vec::new(),
            output: None,
        }
    }
}

/// Counts of a whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of tests selected (ignored ones included).
    pub tests: usize,
    /// Passed and leak-free.
    pub passed: usize,
    /// Passed but leaked.
    pub leaked: usize,
    /// Failed (with or without leaks).
    pub failed: usize,
    /// Not run because ignored.
    pub ignored: usize,
    /// Killed at the time limit.
    pub timed_out: usize,
    /// Selected tests never started: after the first failure (fail-fast) or
    /// an interruption.
    #[serde(default)]
    pub not_run: usize,
    /// Wall time of the test phase, in milliseconds.
    pub duration_ms: u64,
    /// True when the run was interrupted (SIGINT, SIGTERM) before every test ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl Summary {
    /// Counts the outcomes of `records`, out of `not_run` more tests selected.
    pub fn from_records(records: &[TestRecord], not_run: usize, duration_ms: u64, interrupted: bool) -> Summary {
        let mut summary =
            Summary { tests: records.len() + not_run, not_run, duration_ms, interrupted, ..Summary::default() };
        for record in records {
            let counter = match record.outcome {
                Outcome::Passed => &mut summary.passed,
                Outcome::Leaked => &mut summary.leaked,
                Outcome::Failed => &mut summary.failed,
                Outcome::Ignored => &mut summary.ignored,
                Outcome::TimedOut => &mut summary.timed_out,
            };
            *counter += 1;
        }
        summary
    }
}

/// The whole JSON report: `{ "version": 1, "summary": {..}, "tests": [..] }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`REPORT_VERSION`].
    pub version: u32,
    /// Counts.
    pub summary: Summary,
    /// One record per selected test, in the order they were listed.
    pub tests: Vec<TestRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert_eq!(escape_control("plain /tmp/a b"), "plain /tmp/a b");
        assert_eq!(escape_control("a\nb\tc\rd\u{1b}[31m"), "a\\nb\\tc\\rd\\u{1b}[31m");
        let leak = Leak::Fd { fd: 3, target: "/tmp/x\nLEAK".into(), detail: String::new(), sites: vec![] };
        assert_eq!(leak.describe(), "fd 3 -> /tmp/x\\nLEAK");
    }

    #[test]
    fn leaks_serialize_with_their_kind_tag() {
        let leak = Leak::Fd { fd: 7, target: "/tmp/x".into(), detail: "regular file".into(), sites: vec![] };
        let json = serde_json::to_value(&leak).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "fd", "fd": 7, "target": "/tmp/x", "detail": "regular file"}));
        let back: Leak = serde_json::from_value(json).unwrap();
        assert_eq!(back, leak);
    }

    #[test]
    fn outcomes_use_the_contract_spelling() {
        assert_eq!(serde_json::to_string(&Outcome::TimedOut).unwrap(), "\"timed-out\"");
        for outcome in [Outcome::Passed, Outcome::Leaked, Outcome::Failed, Outcome::Ignored, Outcome::TimedOut] {
            assert_eq!(serde_json::to_string(&outcome).unwrap(), format!("\"{}\"", outcome.as_str()));
        }
    }

    #[test]
    fn summary_counts_each_outcome() {
        let record = |outcome| TestRecord {
            binary: "b".into(),
            name: "t".into(),
            outcome,
            duration_ms: 1,
            message: None,
            leaks: vec![],
            unchecked: vec![],
            allowed: vec![],
            warnings: vec![],
            singletons: vec![],
            closed_fds: vec![],
            output: None,
        };
        let records =
            [Outcome::Passed, Outcome::Leaked, Outcome::Leaked, Outcome::TimedOut, Outcome::Ignored].map(record);
        let summary = Summary::from_records(&records, 0, 5, false);
        assert_eq!((summary.tests, summary.passed, summary.leaked, summary.failed), (5, 1, 2, 0));
        assert_eq!((summary.ignored, summary.timed_out), (1, 1));
    }
}

/// A leak accepted by an allow rule, and the rule's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedLeak {
    /// What was left behind.
    pub leak: Leak,
    /// Why it is accepted.
    pub reason: String,
}

/// What an in-process check (`#[leakcheck::test]`) tells `cargo leakcheck`
/// about the test it guarded, through the file named by
/// `LEAKCHECK_RECORD_FILE`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InProcessReport {
    /// Whether the test body itself passed (before the leak check).
    pub body_passed: bool,
    /// Leaks that fail the test.
    pub leaks: Vec<Leak>,
    /// Leaks accepted by the test's allow rules.
    pub allowed: Vec<AllowedLeak>,
    /// Kinds not checked (`heap` without the counting allocator).
    pub unchecked: Vec<String>,
    /// fds open before the test that it closed.
    #[serde(default)]
    pub closed_fds: Vec<i32>,
    /// What the test's first run in the process left that a second run did
    /// not leave again: made once per process, not a leak of the test.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub singletons: Vec<Leak>,
    /// Why the body failed (its error or panic message), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Whether the check looked at the process's private temp dir: its
    /// `file` leaks are then among `leaks`.
    #[serde(default)]
    pub files_checked: bool,
    /// Reported, not failing the test: leaks of some measured runs only,
    /// empty directories left in the temp dir.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Leak>,
}

/// The message of a test failed by its leaks.
pub(crate) fn describe_leaks(leaks: &[Leak]) -> String {
    let mut message = String::from("leakcheck: the test left resources behind:");
    for leak in leaks {
        message.push_str("\n  - ");
        message.push_str(&leak.describe());
        for site in leak.sites().iter().take(3) {
            message.push_str("\n      ");
            message.push_str(&site.describe());
        }
    }
    message
}
