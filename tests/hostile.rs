//! Hostile inputs: callers that ignore signals, binaries that cannot be
//! started, names that are not UTF-8, inputs that are not files. Each run
//! ends with a clear answer, leaks nothing and leaves no process behind.

mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use leakcheck::Outcome;
use support::*;

const BINARY: &str = "hostile::hostile";

/// `cargo-leakcheck` itself, outside the fixture workspace.
fn tool(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cargo-leakcheck"));
    command.arg("leakcheck").args(args).stdin(std::process::Stdio::null());
    command
}

#[test]
fn tests_start_with_default_signals_when_the_caller_ignores_them() {
    let _serial = serial();
    let mut command = leakcheck(&["-p", "hostile", "--message-format", "json", "signals_are_at_their_defaults"]);
    // SAFETY: between fork and exec: signal() calls only.
    unsafe {
        command.pre_exec(|| {
            for signal in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGPIPE, libc::SIGTERM] {
                libc::signal(signal, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let run = run_to_end(command);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_outcome(record(&run.report(), BINARY, "signals_are_at_their_defaults"), Outcome::Passed);
}

#[test]
fn names_that_are_not_utf8_hide_no_thread_and_no_child() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "hostile", "--no-fail-fast", "--message-format", "json", "bad_bytes"]));
    let report = run.report();
    let thread = record(&report, BINARY, "thread_named_with_bad_bytes_leaks");
    assert_outcome(thread, Outcome::Leaked);
    assert_eq!(threads(thread), ["bad\u{fffd}\u{fffd}name"], "{thread:#?}");
    let child = record(&report, BINARY, "child_named_with_bad_bytes_ignoring_sigterm_leaks");
    assert_outcome(child, Outcome::Leaked);
    assert_eq!(children(child).len(), 1, "{child:#?}");
    // run_to_end checked that the child, which ignores SIGTERM, is gone.
}

/// A binary that cannot be exec'd once hung the run for good (the forked
/// copy, under the exit filter, waited on a listener nobody served).
#[test]
fn a_test_binary_that_cannot_start_is_an_error_not_a_hang() {
    let scratch = tempfile::tempdir().unwrap();
    let not_executable = scratch.path().join("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").unwrap();
    let missing = scratch.path().join("missing");
    for (program, cause) in [(&missing, "No such file"), (&not_executable, "Permission denied")] {
        let started = Instant::now();
        let mut command = tool(&["wrap", "--"]);
        command.arg(program);
        let run = run_to_end(command);
        assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
        assert_ne!(run.code, Some(0), "{run:?}");
        let named = format!("{} could not be started: {cause}", program.display());
        assert!(run.stderr.contains(&named), "{}", run.stderr);
    }
}

#[test]
fn a_config_that_is_a_directory_or_a_device_is_an_error() {
    let _serial = serial();
    let scratch = tempfile::tempdir().unwrap();
    for (path, what) in [(scratch.path().to_str().unwrap(), "a directory"), ("/dev/zero", "not a regular file")] {
        let run = run_to_end(leakcheck(&["-p", "hostile", "--config-file", path, "signals_are"]));
        assert_eq!(run.code, Some(2), "{run:?}");
        assert!(run.stderr.contains(what), "{}", run.stderr);
    }
    let run = run_to_end(tool(&["merge", "/dev/zero"]));
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("not a regular file"), "{}", run.stderr);
}

#[test]
fn a_timeout_beyond_any_deadline_is_a_usage_error() {
    let run = run_to_end(tool(&["--timeout", "18000000000000000000s"]));
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("longer than the longest wait"), "{}", run.stderr);
}

/// `kill -9` of the tool mid-run: its guardian kills every process of its
/// tests and removes its scratch directory.
#[test]
fn a_killed_run_leaves_no_test_running_and_no_scratch_behind() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut command = leakcheck(&["-p", "faults", "--test", "faults", "--", "--ignored", "hangs_with_a_tree"]);
    command.env("TMPDIR", tmp.path()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut tool = command.spawn().unwrap();
    let pid = tool.id();
    let started = Instant::now();
    while processes_of_run(pid).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(300), "the hanging test never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let scratch =
        || std::fs::read_dir(tmp.path()).unwrap().flatten().map(|entry| entry.file_name()).collect::<Vec<_>>();
    assert_eq!(scratch().len(), 1, "{:?}", scratch());
    tool.kill().unwrap();
    tool.wait().unwrap();
    assert_no_process_left(pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !scratch().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(scratch().is_empty(), "{:?}", scratch());
}

#[test]
fn a_path_with_a_newline_forges_no_line_of_the_report_nor_of_a_baseline() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "hostile", "forges_a_report_line"]));
    assert_eq!(run.code, Some(100), "{}", run.stderr);
    let report = format!("{}{}", run.stdout, run.stderr);
    assert!(!report.lines().any(|line| line.starts_with("    PASS [   0.001s] forged")), "{report}");
    assert!(report.contains("\\n    PASS [   0.001s] forged::line"), "{report}");
    // The baseline written has one line for the leak, and the next run takes it.
    let baseline = tempfile::NamedTempFile::new().unwrap();
    let path = baseline.path().to_str().unwrap();
    let write = run_to_end(leakcheck(&["-p", "hostile", "--write-baseline", path, "forges_a_report_line"]));
    assert_eq!(write.code, Some(0), "{}", write.stderr);
    let written = std::fs::read_to_string(baseline.path()).unwrap();
    assert_eq!(written.lines().filter(|line| !line.starts_with('#')).count(), 1, "{written}");
    let again = run_to_end(leakcheck(&["-p", "hostile", "--baseline", path, "forges_a_report_line"]));
    assert_eq!(again.code, Some(0), "{}", again.stderr);
}

/// A test that execs `true` (status 0, from the main thread) never
/// finished: it fails, saying why.
#[test]
fn a_test_that_execs_another_program_is_not_a_pass() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "hostile", "--message-format", "json", "execs_true"]));
    assert_eq!(run.code, Some(100), "{}", run.stderr);
    let report = run.report();
    let test = record(&report, BINARY, "execs_true_and_never_finishes");
    assert_outcome(test, Outcome::Failed);
    assert!(test.message.as_deref().unwrap_or_default().contains("replaced itself with `/"), "{test:#?}");
}

/// A directory the test made unreadable is never an empty one (a warning):
/// its file still fails the test; a file name with a newline forges no line;
/// both are removed with the temp dir.
#[test]
fn files_hidden_or_oddly_named_still_leak_and_are_removed() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut command = leakcheck(&["-p", "hostile", "--message-format", "json", "files_hidden"]);
    command.env("TMPDIR", tmp.path());
    let run = run_to_end(command);
    assert_eq!(run.code, Some(100), "{}", run.stderr);
    let report = run.report();
    let test = record(&report, BINARY, "files_hidden_in_an_unreadable_dir_leak");
    assert_outcome(test, Outcome::Leaked);
    let paths: Vec<&str> = test
        .leaks
        .iter()
        .filter_map(|leak| match leak {
            leakcheck::Leak::File { path, .. } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(paths, ["a\n    PASS forged", "hidden"], "{test:#?}");
    assert!(test.warnings.is_empty(), "{test:#?}");
    assert!(!run.stderr.lines().any(|line| line.starts_with("    PASS forged")), "{}", run.stderr);
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
