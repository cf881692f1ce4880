//! A `#[leakcheck::test]` under plain `cargo test`, where tests share one
//! process on parallel threads: the test runs itself again in a fresh
//! process, alone, and is checked there.
//!
//! The parent (the test thread libtest started) runs the current test
//! executable with `NAME --exact --test-threads=1 --include-ignored
//! --nocapture` and `LEAKCHECK_RECORD_FILE` pointing into a private
//! directory. There the test is alone, so the attribute checks it exactly as
//! under nextest (heap too with [`crate::Alloc`]) and writes its
//! [`InProcessReport`]. The parent forwards the child's output (libtest
//! captures it as the test's own) and passes, or panics with the child's
//! failure message or with the leak report.
//!
//! Invariants: the child leads its own process group, which is killed once
//! it has exited, so nothing it left runs on (a process that starts its own
//! session escapes this, as it escapes `cargo test`); its output goes to
//! files, so a leftover holding it cannot block the parent; the child dies
//! with the thread that waits for it (`PR_SET_PDEATHSIG`).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::record::InProcessReport;

/// Set in the re-run process: its test is the isolated copy.
pub(crate) const ISOLATED_ENV: &str = "LEAKCHECK_ISOLATED";

/// What the isolated run of the test showed.
#[derive(Debug)]
pub(crate) enum Isolated {
    /// The report of its in-process check.
    Report(InProcessReport),
    /// It ended without one: why.
    NoReport(String),
}

/// Runs the current test (`name`, libtest's name for it) alone in a fresh
/// process and returns its report; `None` when the re-run cannot be made
/// (the test then runs unchecked, as before).
pub(crate) fn run_alone(name: &str) -> Option<Isolated> {
    let executable = std::env::current_exe().ok()?;
    let scratch = tempfile::Builder::new().prefix("leakcheck-isolated-").tempdir().ok()?;
    let record = scratch.path().join("record.json");
    let stdout = std::fs::File::create(scratch.path().join("stdout")).ok()?;
    let stderr = std::fs::File::create(scratch.path().join("stderr")).ok()?;
    // Its own temp dir, checked by the isolated run, removed after it.
    let temp = crate::temp_dir::PrivateTemp::new_in(scratch.path()).ok()?;
    let mut command = Command::new(executable);
    command
        .args([name, "--exact", "--test-threads=1", "--include-ignored", "--nocapture"])
        .env(ISOLATED_ENV, "1")
        .env(crate::env_names::RECORD_FILE, &record)
        .envs(temp.environment())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    // SAFETY: between fork and exec the closure only resets signals (see
    // `reset_for_exec`) and makes one prctl call: async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            crate::signals::reset_for_exec();
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().ok()?;
    let status = child.wait();
    // Whatever the test left in its group ends with it.
    // SAFETY: kill of the child's own process group (its pid).
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    drop(temp);
    forward_output(scratch.path(), name);
    let report = std::fs::read(&record).ok().and_then(|bytes| serde_json::from_slice::<InProcessReport>(&bytes).ok());
    Some(match (report, status) {
        (Some(report), _) => Isolated::Report(report),
        (None, Ok(status)) => {
            Isolated::NoReport(format!("the test's isolated process ended ({status}) before its check reported"))
        }
        (None, Err(error)) => {
            Isolated::NoReport(format!("the test's isolated process could not be waited for: {error}"))
        }
    })
}

/// Prints the isolated run's output as the test's own (libtest captures it),
/// without libtest's framing of a one-test run and without the child's
/// panic that reported the leaks (the parent reports them once).
fn forward_output(dir: &Path, name: &str) {
    for (stream, to_stderr) in [("stdout", false), ("stderr", true)] {
        let text = std::fs::read_to_string(dir.join(stream)).unwrap_or_default();
        let kept = without_framing(&text, name);
        if kept.is_empty() {
            continue;
        }
        if to_stderr {
            eprintln!("{kept}");
        } else {
            println!("{kept}");
        }
    }
}

fn without_framing(text: &str, name: &str) -> String {
    let mut kept = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_end();
        // The leak report's panic: its location line, the report, the note.
        if trimmed.contains(" panicked at ")
            && lines.peek().is_some_and(|next| next.starts_with("leakcheck: the test left resources behind:"))
        {
            while lines.next_if(|next| !next.trim().is_empty() && !next.starts_with("note: run with")).is_some() {}
            lines.next_if(|next| next.starts_with("note: run with"));
            continue;
        }
        let framing = trimmed.is_empty()
            || trimmed == "running 1 test"
            || trimmed == "failures:"
            || trimmed.starts_with("test result: ")
            || trimmed == format!("---- {name} stdout ----")
            || trimmed == format!("    {name}")
            || trimmed == format!("test {name} ... ok")
            || trimmed == format!("test {name} ... FAILED")
            || trimmed == format!("test {name} - should panic ... ok");
        if !framing {
            kept.push(line);
        }
    }
    kept.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtests_framing_and_the_leak_panic_are_dropped_and_the_tests_own_lines_kept() {
        let output = "\nrunning 1 test\nhello\n    indented\ntest a::b ... ok\n\ntest result: ok. 1 passed\n";
        assert_eq!(without_framing(output, "a::b"), "hello\n    indented");
        let leaked = "thread 'a::b' (7) panicked at harness/src/private.rs:1:1:\nleakcheck: the test left resources behind:\n  - fd 3 -> /tmp/x (regular file)\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\nafter\n";
        assert_eq!(without_framing(leaked, "a::b"), "after");
        let failed = "thread 'a::b' (7) panicked at tests/x.rs:3:5:\nboom\n";
        assert_eq!(without_framing(failed, "a::b"), failed.trim_end());
    }
}
