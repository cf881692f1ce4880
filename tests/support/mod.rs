//! Running the real `cargo-leakcheck` binary on the fixture workspace.
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use leakcheck::{Leak, Outcome, Report, TestRecord};

/// Runs of the tool are serialised: each already runs tests in parallel, and
/// two at once on a 2-core machine would only measure the machine.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The fixtures' own target dir, shared by every test so they build once.
pub fn fixture_target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures-target")
}

/// `cargo-leakcheck` with the fixture workspace and target dir set.
pub fn leakcheck(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cargo-leakcheck"));
    command
        .arg("leakcheck")
        .arg("--manifest-path")
        .arg(fixtures().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(fixture_target_dir())
        .args(args)
        .env_remove("LEAKCHECK_NO_PROBE")
        .stdin(Stdio::null());
    command
}

/// A finished run: its exit code, stdout, stderr.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub pid: u32,
}

impl Run {
    pub fn report(&self) -> Report {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|error| {
            panic!("stdout is not one JSON report ({error}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

/// Runs to completion (killing it after 10 minutes), then checks that no
/// process of any of its tests is left on the machine.
pub fn run_to_end(mut command: Command) -> Run {
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("cargo-leakcheck starts");
    let pid = child.id();
    let guard = KillOnDrop(Some(child));
    let output = guard.wait_with_output(Duration::from_secs(600));
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        pid,
    };
    assert_no_process_left(pid);
    run
}

/// Kills the tool if a test panics before it ended.
pub struct KillOnDrop(pub Option<Child>);

impl KillOnDrop {
    pub fn wait_with_output(mut self, limit: Duration) -> Output {
        let child = self.0.take().unwrap();
        let pid = child.id();
        let watchdog = std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(100));
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    return;
                }
            }
            kill_pid(pid);
        });
        let output = child.wait_with_output().expect("cargo-leakcheck is waited for");
        drop(watchdog);
        output
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn kill_pid(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

/// Pids of live processes started by a test of the run of `tool_pid`: they
/// carry `LEAKCHECK_TEST_ID=<tool_pid>:<n>` in their environment.
pub fn processes_of_run(tool_pid: u32) -> Vec<(u32, String)> {
    let wanted = format!("LEAKCHECK_TEST_ID={tool_pid}:");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !zombie && environ.split(|&b| b == 0).any(|var| var.starts_with(wanted.as_bytes())) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

pub fn assert_no_process_left(tool_pid: u32) {
    // A process being killed may take a moment to disappear from /proc.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_of_run(tool_pid);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for (pid, _) in &left {
                kill_pid(*pid);
            }
            panic!("processes left behind by the run of cargo-leakcheck {tool_pid}: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The record of test `name` of binary `binary`.
pub fn record<'a>(report: &'a Report, binary: &str, name: &str) -> &'a TestRecord {
    report
        .tests
        .iter()
        .find(|record| record.binary == binary && record.name == name)
        .unwrap_or_else(|| panic!("no record for {binary} {name} in {:#?}", report.tests))
}

/// Asserts the outcome of a record, showing the record when it differs.
pub fn assert_outcome(record: &TestRecord, outcome: Outcome) {
    assert_eq!(record.outcome, outcome, "wrong outcome for {} {}: {record:#?}", record.binary, record.name);
}

pub fn fds(record: &TestRecord) -> Vec<(&str, &str)> {
    record
        .leaks
        .iter()
        .filter_map(|leak| match leak {
            Leak::Fd { target, detail, .. } => Some((target.as_str(), detail.as_str())),
            _ => None,
        })
        .collect()
}

pub fn threads(record: &TestRecord) -> Vec<&str> {
    record
        .leaks
        .iter()
        .filter_map(|leak| match leak {
            Leak::Thread { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

/// (cmdline, state, orphaned) of each child leak.
pub fn children(record: &TestRecord) -> Vec<(&str, &str, bool)> {
    record
        .leaks
        .iter()
        .filter_map(|leak| match leak {
            Leak::Child { cmdline, state, orphaned, .. } => Some((cmdline.as_str(), state.as_str(), *orphaned)),
            _ => None,
        })
        .collect()
}

/// Whether cargo-nextest is installed. CI installs it, so there its absence
/// fails the calling test; elsewhere the caller skips (returns early).
pub fn nextest_available() -> bool {
    let available = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        assert!(std::env::var_os("CI").is_none(), "cargo-nextest must be installed in CI");
        eprintln!("cargo-nextest is not installed: skipping (CI installs it)");
    }
    available
}

/// A nextest config file running every test under `cargo-leakcheck wrap
/// WRAP_ARGS --` (the README's recipe), in a private temporary file.
pub fn nextest_wrapper_config(wrap_args: &[&str]) -> tempfile::NamedTempFile {
    let mut command = vec![env!("CARGO_BIN_EXE_cargo-leakcheck"), "wrap"];
    command.extend_from_slice(wrap_args);
    command.push("--");
    let command: Vec<String> = command.iter().map(|arg| format!("'{arg}'")).collect();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "experimental = [\"wrapper-scripts\"]\n\n[scripts.wrapper.leakcheck]\ncommand = [{}]\n\n\
             [[profile.default.scripts]]\nfilter = 'all()'\nrun-wrapper = 'leakcheck'\n",
            command.join(", ")
        ),
    )
    .unwrap();
    config
}

/// `cargo nextest run --config-file CONFIG --no-fail-fast --color never`
/// in the fixtures workspace, built into the fixtures' target directory.
pub fn nextest_run_in_fixtures(config: &std::path::Path) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["nextest", "run", "--config-file"])
        .arg(config)
        .args(["--no-fail-fast", "--color", "never"])
        .current_dir(fixtures())
        .env("CARGO_TARGET_DIR", fixture_target_dir())
        .env_remove("LEAKCHECK_TEST_ID")
        .stdin(Stdio::null());
    command
}

/// Removes what the `files` fixture leaves outside its temp dir on purpose
/// (`cargo leakcheck` reports such files and never removes them): its
/// `/tmp/leakcheck-files-fixture-*.db` and its package dir's
/// `left-by-a-test-*` (a file, a socket). Returns how many there were.
pub fn remove_files_left_outside() -> usize {
    let mut removed = 0;
    let places = [(PathBuf::from("/tmp"), "leakcheck-files-fixture-"), (fixtures().join("files"), "left-by-a-test-")];
    for (dir, prefix) in places {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}
