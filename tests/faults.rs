//! Every fault a test can throw, under the default harness and under
//! `leakcheck::main!()`: reported right, nothing left running. Bad input:
//! one clear message and the documented exit code.

mod support;

use leakcheck::Outcome;
use support::*;

const BINARIES: [&str; 2] = ["faults::faults", "faults::faults_harness"];

#[test]
fn crashes_and_early_exits_are_failures_with_their_cause_never_leaks() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "faults", "--no-fail-fast", "--message-format", "json"]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    for binary in BINARIES {
        for (test, cause) in [
            ("aborts", "SIGABRT"),
            ("segfaults", "SIGSEGV"),
            ("killed_by_its_own_sigterm", "SIGTERM"),
            ("exits_zero_midway", "status 0 before the test finished"),
        ] {
            let record = record(&report, binary, test);
            assert_outcome(record, Outcome::Failed);
            assert!(record.message.as_deref().unwrap_or_default().contains(cause), "{record:#?}");
            assert!(record.leaks.is_empty(), "{record:#?}");
        }
        let panicked = record(&report, binary, "panics");
        assert_outcome(panicked, Outcome::Failed);
        assert!(panicked.output.as_deref().unwrap_or_default().contains("a test that panics on purpose"));
    }
}

#[test]
fn floods_of_leaks_are_all_recorded_and_summarised_for_people() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "faults", "--no-fail-fast", "--message-format", "json", "leaks_"]));
    let report = run.report();
    for binary in BINARIES {
        let children = record(&report, binary, "leaks_200_children");
        assert_outcome(children, Outcome::Leaked);
        let sleeps = support::children(children).iter().filter(|child| child.0 == "sleep 60").count();
        assert_eq!(sleeps, 200, "{binary}");
        let fds = record(&report, binary, "leaks_10000_fds");
        assert_outcome(fds, Outcome::Leaked);
        assert_eq!(support::fds(fds).iter().filter(|fd| fd.0 == "/dev/null").count(), 10_000, "{binary}");
    }
    // stderr carries the human report in JSON mode: summarised, not 10,000 lines.
    assert!(run.stderr.contains("... and 9990 more (9990 fd; all of them in --message-format json)"), "{}", run.stderr);
    assert!(run.stderr.lines().count() < 400, "{} lines", run.stderr.lines().count());
}

#[test]
fn daemons_that_leave_the_process_group_are_blamed_on_their_test() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "faults", "--no-fail-fast", "--message-format", "json", "setsid"]));
    let report = run.report();
    for binary in BINARIES {
        let record = record(&report, binary, "double_forks_a_setsid_daemon");
        assert_outcome(record, Outcome::Leaked);
        assert_eq!(children(record), [("sleep 61", "sleeping", true)], "{binary}: {record:#?}");
    }
}

#[test]
fn closed_streams_floods_of_output_and_a_changed_environment_are_fine() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&[
        "-p",
        "faults",
        "--no-fail-fast",
        "--message-format",
        "json",
        "--",
        "--skip",
        "leaks_",
        "--skip",
        "setsid",
        "--skip",
        "abort",
        "--skip",
        "segfault",
        "--skip",
        "kill",
        "--skip",
        "exits",
        "--skip",
        "panics",
    ]));
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let report = run.report();
    for binary in BINARIES {
        for test in [
            "closes_stdout_and_stderr",
            "prints_10_mb",
            "changes_directory_and_environment",
            "environment_is_untouched",
        ] {
            assert_outcome(record(&report, binary, test), Outcome::Passed);
        }
    }
}

#[test]
fn a_hanging_harness_test_times_out_and_its_tree_is_killed() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&[
        "-p",
        "faults",
        "--test",
        "faults_harness",
        "--timeout",
        "2s",
        "--message-format",
        "json",
        "hangs_with_a_tree",
        "--",
        "--ignored",
    ]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let hung = record(&report, "faults::faults_harness", "hangs_with_a_tree");
    assert_outcome(hung, Outcome::TimedOut);
    // `run_to_end` checked that none of the three sleeps survived.
}

#[test]
fn the_json_report_file_is_written_whole() {
    let _serial = serial();
    let path = std::env::temp_dir().join(format!("leakcheck-report-{}.json", std::process::id()));
    let run = run_to_end(leakcheck(&["-p", "leaky", "--report-json", path.to_str().unwrap(), "fd::forgotten_file"]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report: leakcheck::Report = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(report.summary.leaked, 1);
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|entry| {
            entry.file_name().to_string_lossy().contains(&format!("leakcheck-report-{}.json.", std::process::id()))
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn an_unknown_package_is_a_usage_error() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "no-such-package"]));
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("error: no package `no-such-package` in this workspace (its packages: "),
        "{}",
        run.stderr
    );
}

/// `harness = false` targets that are not libtest run whole, as one test
/// named by their target, checked like any other; they are never listed
/// (listing would run them).
#[test]
fn a_binary_that_does_not_speak_libtest_runs_whole_as_one_test() {
    let _serial = serial();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-leakcheck"));
    command
        .args(["leakcheck", "--manifest-path"])
        .arg(fixtures().join("not-libtest/Cargo.toml"))
        .arg("--target-dir")
        .arg(fixture_target_dir().join("not-libtest"))
        .args(["--no-fail-fast", "--message-format", "json"]);
    let run = run_to_end(command);
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    assert_eq!(report.summary.tests, 2, "{report:#?}");
    assert_outcome(record(&report, "not-libtest::custom_main", "custom_main"), Outcome::Passed);
    let leaking = record(&report, "not-libtest::custom_leak", "custom_leak");
    assert_outcome(leaking, Outcome::Leaked);
    assert!(fds(leaking).iter().any(|(target, _)| target.ends_with("not-libtest/Cargo.toml")), "{leaking:#?}");
    assert_eq!(children(leaking).iter().filter(|child| child.0 == "sleep 306").count(), 1, "{leaking:#?}");
    let output = leaking.output.as_deref().unwrap_or_default();
    assert_eq!(output.matches("leaking my own way").count(), 1, "ran once, never listed: {output}");
}

/// On a shared CI runner another user can plant files where a predictable
/// scratch path would be (`$TMPDIR/cargo-leakcheck-<pid>`, as it once was):
/// forged in-process verdicts saying "passed, no leaks", and symlinks to a
/// file of the user's. The run must neither read them nor write through them.
#[test]
fn planted_scratch_directories_neither_forge_a_pass_nor_get_written() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "the user's file\n").unwrap();
    let forged = r#"{"body_passed":true,"leaks":[],"allowed":[],"unchecked":[],"closed_fds":[]}"#;
    let last_pid: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").unwrap().trim().parse().unwrap();
    let planted = (last_pid + 1)..(last_pid + 3000);
    for pid in planted.clone() {
        let dir = tmp.path().join(format!("cargo-leakcheck-{pid}"));
        if pid.is_multiple_of(2) {
            std::fs::create_dir(&dir).unwrap();
            for serial in 0..4 {
                std::fs::write(dir.join(format!("{serial}.json")), forged).unwrap();
            }
        } else {
            std::os::unix::fs::symlink(&victim, &dir).unwrap();
        }
    }
    let mut command = leakcheck(&["-p", "leaky", "--message-format", "json", "--", "--exact", "fd::forgotten_file"]);
    command.env("TMPDIR", tmp.path());
    let run = run_to_end(command);
    assert!(planted.contains(&run.pid), "the run's pid {} is outside the planted range {planted:?}", run.pid);
    assert_eq!(run.code, Some(100), "{}", run.stderr);
    let report = run.report();
    assert_outcome(record(&report, "leaky::leaks", "fd::forgotten_file"), Outcome::Leaked);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "the user's file\n");
    let dir = tmp.path().join(format!("cargo-leakcheck-{}", run.pid));
    if run.pid.is_multiple_of(2) {
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(std::fs::read_to_string(dir.join("0.json")).unwrap(), forged);
    }
}
