//! cargo leakcheck as a CI gate: configuration, allow rules, baselines,
//! JUnit, GitHub annotations, partitions, and the nextest wrapper.

mod support;

use leakcheck::Outcome;
use support::*;

/// A file in this test binary's private temporary directory (from
/// `tempfile`: random name, created exclusively).
fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR
        .get_or_init(|| tempfile::Builder::new().prefix("ci-gate-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap());
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn an_allow_rule_with_a_reason_passes_its_leak_and_a_stale_rule_is_warned() {
    let _serial = serial();
    let config = temp_file(
        "allow.toml",
        r#"
[[allow]]
kind = "thread"
name = "flush*"
tests = "thread::*"
reason = "the flusher is joined at process exit in production"

[[allow]]
kind = "fd"
target = "/nowhere/*"
reason = "matches nothing"
"#,
    );
    let run = run_to_end(leakcheck(&[
        "-p",
        "leaky",
        "--config-file",
        config.to_str().unwrap(),
        "--message-format",
        "json",
        "thread::detached_thread",
    ]));
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let report = run.report();
    let detached = record(&report, "leaky::leaks", "thread::detached_thread");
    assert_outcome(detached, Outcome::Passed);
    assert!(detached.leaks.is_empty());
    assert_eq!(detached.allowed.len(), 1);
    assert!(detached.allowed[0].reason.starts_with("the flusher is joined at process exit in production ("));
    assert!(run.stderr.contains("allow.toml:2: thread `flush*`: matched 1 time"), "{}", run.stderr);
    assert!(run.stderr.contains("allow.toml:8: fd `/nowhere/*`: matched 0 times (stale"), "{}", run.stderr);
    assert!(run.stderr.contains("warning: allow rule at "), "{}", run.stderr);
}

#[test]
fn profiles_set_severities_and_the_ci_profile_falls_back_to_default() {
    let _serial = serial();
    let config = temp_file(
        "profiles.toml",
        r#"
[profile.default]
kinds = { child = "warn" }

[profile.ci]
kinds = { fd = "off", file = "off" }
"#,
    );
    let args =
        |profile: &'static str| ["-p", "leaky", "--no-fail-fast", "--message-format", "json", "--profile", profile];
    let mut command = leakcheck(&args("ci"));
    command.args(["--config-file", config.to_str().unwrap(), "fd::forgotten_file"]);
    let report = run_to_end(command).report();
    let file = record(&report, "leaky::leaks", "fd::forgotten_file");
    assert_outcome(file, Outcome::Passed);
    assert_eq!(file.unchecked, ["fd"]);

    let mut command = leakcheck(&args("ci"));
    command.args(["--config-file", config.to_str().unwrap(), "child::running_child"]);
    let run = run_to_end(command);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let child = record(&run.report(), "leaky::leaks", "child::running_child").clone();
    assert_outcome(&child, Outcome::Passed);
    assert_eq!(child.warnings.len(), 1, "{child:#?}");
}

#[test]
fn a_malformed_config_is_a_usage_error_with_file_line_and_column() {
    let _serial = serial();
    let config = temp_file("bad.toml", "[profile.default]\ngrace = \"200ms\"\ntimout = \"5s\"\n");
    let run = run_to_end(leakcheck(&["-p", "leaky", "--config-file", config.to_str().unwrap()]));
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("bad.toml:3:1: unknown field `timout`"), "{}", run.stderr);
    let config = temp_file("bad-rule.toml", "[[allow]]\nkind = \"heap\"\nbytes = 10\n");
    let run = run_to_end(leakcheck(&["-p", "leaky", "--config-file", config.to_str().unwrap()]));
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("bad-rule.toml:1:1: missing field `reason`"), "{}", run.stderr);
}

#[test]
fn a_baseline_lets_old_leaks_pass_fails_new_ones_and_reports_fixed_ones() {
    let _serial = serial();
    let baseline = temp_file("baseline.txt", "");
    let run = run_to_end(leakcheck(&[
        "-p",
        "leaky",
        "--no-fail-fast",
        "--write-baseline",
        baseline.to_str().unwrap(),
        "fd::",
    ]));
    assert_eq!(run.code, Some(0), "writing a baseline accepts today's leaks:\n{}", run.stderr);
    let written = std::fs::read_to_string(&baseline).unwrap();
    assert!(
        written
            .contains("leaky::leaks\tfd::forgotten_file\tfd\t$TMPDIR/leakcheck-fixture-forgotten.txt (regular file)\n"),
        "{written}"
    );
    assert!(written.contains("leaky::leaks\tfd::leaked_listener\tfd\ttcp listening on 127.0.0.1:*\n"), "{written}");
    assert!(!written.contains("socket:["), "no inode numbers: {written}");
    // An entry for a leak that is gone: reported as fixed.
    std::fs::write(&baseline, format!("{written}leaky::leaks\tfd::forgotten_file\tfd\t/var/old.db (regular file)\n"))
        .unwrap();

    let run = run_to_end(leakcheck(&[
        "-p",
        "leaky",
        "--test",
        "leaks",
        "--no-fail-fast",
        "--message-format",
        "json",
        "--baseline",
        baseline.to_str().unwrap(),
        "--",
        "--skip",
        "child::",
        "--skip",
        "thread::forgotten_tokio",
        "--skip",
        "thread::thread_sleeping",
    ]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    for old in ["fd::forgotten_file", "fd::leaked_listener", "fd::connected_socket", "fd::pipe_from_child"] {
        let record = record(&report, "leaky::leaks", old);
        assert_outcome(record, Outcome::Passed);
        assert!(record.allowed.iter().all(|allowed| allowed.reason.starts_with("in the baseline ")), "{record:#?}");
    }
    assert_outcome(record(&report, "leaky::leaks", "thread::detached_thread"), Outcome::Leaked);
    assert!(run.stderr.contains("No longer leaking (1 baseline entry of "), "{}", run.stderr);
    assert!(run.stderr.contains("leaky::leaks fd::forgotten_file: fd /var/old.db (regular file)"), "{}", run.stderr);
}

#[test]
fn junit_reports_parse_back_with_leaks_in_the_failure() {
    let _serial = serial();
    let junit = temp_file("junit.xml", "");
    let run = run_to_end(leakcheck(&[
        "-p",
        "leaky",
        "--no-fail-fast",
        "--junit",
        junit.to_str().unwrap(),
        "--test",
        "outcomes",
    ]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let xml = std::fs::read_to_string(&junit).unwrap();
    let parsed = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    let suite = &parsed.test_suites[0];
    assert_eq!(suite.name.as_str(), "leaky::outcomes");
    assert_eq!(suite.test_cases.len(), 4);
    let failing = suite.test_cases.iter().find(|case| case.name.as_str() == "failing_assertion").unwrap();
    assert!(matches!(failing.status, quick_junit::TestCaseStatus::NonSuccess { .. }));

    let run = run_to_end(leakcheck(&["-p", "leaky", "--junit", junit.to_str().unwrap(), "fd::forgotten_file"]));
    assert_eq!(run.code, Some(100));
    let parsed = quick_junit::Report::deserialize_from_str(&std::fs::read_to_string(&junit).unwrap()).unwrap();
    let case = &parsed.test_suites[0].test_cases[0];
    match &case.status {
        quick_junit::TestCaseStatus::NonSuccess { message, description, ty, .. } => {
            assert_eq!(message.as_ref().map(|m| m.as_str()), Some("leaked 1 fd, 1 file"));
            assert_eq!(ty.as_ref().map(|t| t.as_str()), Some("leaked"));
            assert!(description.as_ref().unwrap().as_str().contains("leakcheck-fixture-forgotten.txt (regular file)"));
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn github_annotations_name_each_failing_test() {
    let _serial = serial();
    let mut command = leakcheck(&["-p", "leaky", "--no-fail-fast", "fd::forgotten_file"]);
    let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
    command.env("GITHUB_ACTIONS", "true").env("GITHUB_WORKSPACE", &repository);
    let run = run_to_end(command);
    let annotation = run.stdout.lines().find(|line| line.starts_with("::error ")).expect("an annotation");
    // On the line of the test that names the file, relative to the repository.
    let source = std::fs::read_to_string(repository.join("fixtures/leaky/tests/leaks.rs")).unwrap();
    let line = source.lines().position(|line| line.contains("File::create")).unwrap() + 1;
    let expected = format!(
        "::error file=fixtures/leaky/tests/leaks.rs,line={line},title=leaky%3A%3Aleaks fd%3A%3Aforgotten_file leaked::leaked fd 3 -> "
    );
    assert!(annotation.starts_with(&expected), "{annotation}");
    let mut command = leakcheck(&["-p", "leaky", "--no-fail-fast", "fd::forgotten_file"]);
    command.env_remove("GITHUB_ACTIONS");
    assert!(!run_to_end(command).stdout.contains("::error"));
}

/// The tests `--list` prints for three packages of several binaries each
/// (not the whole workspace: building all of it here would make this the
/// slowest test of the suite for no gain).
fn listed(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["-p", "leaky", "-p", "clean", "-p", "field-cases", "--list"];
    args.extend_from_slice(extra);
    let run = run_to_end(leakcheck(&args));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    run.stdout.lines().map(str::to_owned).collect()
}

#[test]
fn partitions_split_the_suite_without_overlap() {
    let _serial = serial();
    let mut everything = listed(&[]);
    assert!(everything.len() > 30, "{everything:?}");
    assert!(everything.contains(&"leaky::outcomes ignored_test (ignored)".to_owned()));
    everything.sort();
    for kind in ["hash", "slice"] {
        let mut union = Vec::new();
        for shard in 1..=3 {
            let part = listed(&["--partition", &format!("{kind}:{shard}/3")]);
            assert!(!part.is_empty() && part.len() < everything.len(), "{kind}:{shard}/3");
            union.extend(part);
        }
        union.sort();
        assert_eq!(union, everything, "{kind}");
    }
    let run = run_to_end(leakcheck(&["--workspace", "--partition", "hash:4/3"]));
    assert_eq!(run.code, Some(2), "{}", run.stderr);
}

#[test]
fn the_nextest_wrapper_catches_a_leak_inside_cargo_nextest_run() {
    if !nextest_available() {
        return;
    }
    let _serial = serial();
    let config = nextest_wrapper_config(&[]);
    let output = nextest_run_in_fixtures(config.path())
        .args(["-p", "leaky"])
        .args(["-E", "test(=fd::forgotten_file) | test(=thread::detached_thread) | test(=failing_assertion)"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(100), "{stderr}");
    assert!(stderr.contains("3 tests run: 0 passed, 3 failed"), "{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("leaked fd 3 -> $TMPDIR/leakcheck-fixture-forgotten.txt (regular file)"), "{all}");
    assert!(all.contains("leaked file $TMPDIR/leakcheck-fixture-forgotten.txt (left in the test's temp dir"), "{all}");
    assert!(all.contains("leaked thread \"flusher\""), "{all}");
    // The label keeps the package, as cargo leakcheck prints it.
    assert!(all.contains("LEAK [") && all.contains("] leaky::leaks fd::forgotten_file"), "{all}");
    assert!(all.contains("arithmetic is broken on purpose"), "{all}");
}

/// A child that exits as its test ends reads as running in one run and as a
/// zombie in the next; its baseline entry (its program) holds for both.
#[test]
fn a_baseline_written_once_holds_on_repeated_runs_of_a_child_exiting_at_the_end() {
    let _serial = serial();
    let baseline = temp_file("child-baseline.txt", "");
    let args = ["-p", "field-cases", "--no-fail-fast", "child_exiting_as_the_test_ends"];
    let mut write = leakcheck(&args);
    write.args(["--write-baseline", baseline.to_str().unwrap()]);
    let run = run_to_end(write);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let written = std::fs::read_to_string(&baseline).unwrap();
    assert!(written.contains("field-cases::cases\tchild_exiting_as_the_test_ends_leaks\tchild\ttrue\n"), "{written}");
    for round in 0..5 {
        let mut check = leakcheck(&args);
        check.args(["--baseline", baseline.to_str().unwrap()]);
        let run = run_to_end(check);
        assert_eq!(run.code, Some(0), "round {round}: stderr:\n{}\nstdout:\n{}", run.stderr, run.stdout);
    }
}

/// A rule for a thread that ends during the grace must not count it: the
/// exit snapshot settles before a thread is judged accepted.
#[test]
fn an_allow_rule_counts_only_what_settling_left() {
    let _serial = serial();
    let config = temp_file(
        "short-lived.toml",
        r#"
[[allow]]
kind = "thread"
name = "short-lived"
reason = "would match a thread that ends 30 ms after its test"
"#,
    );
    let args = ["-p", "clean", "--config-file", config.to_str().unwrap(), "detached_thread_ends_soon_after_the_test"];
    let run = run_to_end(leakcheck(&args));
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(run.stdout.contains("short-lived.toml:2: thread `short-lived`: matched 0 times (stale"), "{}", run.stdout);
}

/// CI habits: `--locked`, `--offline`, `--frozen` go to every cargo command.
#[test]
fn cargo_manifest_flags_reach_cargo() {
    let _serial = serial();
    for flag in ["--locked", "--offline", "--frozen"] {
        let run = run_to_end(leakcheck(&["-p", "leaky", "--list", "-v", flag]));
        assert_eq!(run.code, Some(0), "{flag}: stderr:\n{}", run.stderr);
        for command in ["cargo metadata", "cargo test --no-run"] {
            let line = run.stderr.lines().find(|line| line.contains(command)).unwrap_or_default();
            assert!(line.contains(flag), "{flag} missing from `{command}`:\n{}", run.stderr);
        }
        assert!(run.stdout.contains("leaky::leaks fd::forgotten_file"), "{}", run.stdout);
    }
}

#[test]
fn a_zero_timeout_and_a_missing_config_are_usage_errors_said_once() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "leaky", "--timeout", "0"]));
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("is no time at all"), "{}", run.stderr);
    let missing = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-config.toml");
    let run = run_to_end(leakcheck(&["-p", "leaky", "--config-file", missing.to_str().unwrap()]));
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert_eq!(run.stderr.matches("No such file or directory").count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("could not read the configuration file "), "{}", run.stderr);
    let config = temp_file("zero-timeout.toml", "[profile.default]\ntimeout = \"0s\"\n");
    let run = run_to_end(leakcheck(&["-p", "leaky", "--config-file", config.to_str().unwrap()]));
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("`timeout` must be more than zero"), "{}", run.stderr);
}

/// (binary, test, outcome, leak kinds) of every test of a JSON report, sorted.
fn verdicts(report: &leakcheck::Report) -> Vec<(String, String, &'static str, Vec<&'static str>)> {
    let mut verdicts: Vec<_> = report
        .tests
        .iter()
        .map(|test| {
            let mut kinds: Vec<&'static str> = test.leaks.iter().map(|leak| leak.kind()).collect();
            kinds.sort();
            (test.binary.clone(), test.name.clone(), test.outcome.as_str(), kinds)
        })
        .collect();
    verdicts.sort();
    verdicts
}

#[test]
fn two_shards_merged_equal_one_full_run_and_a_broken_record_is_refused() {
    let _serial = serial();
    let scratch = tempfile::tempdir().unwrap();
    let path = |name: &str| scratch.path().join(name).to_str().unwrap().to_owned();
    let base = ["-p", "leaky", "--no-fail-fast"];
    let full = run_to_end(leakcheck(&[&base[..], &["--report-json", &path("full.json")]].concat()));
    assert_eq!(full.code, Some(100), "{}", full.stderr);
    // Shard 1 leaves a records directory, shard 2 a JSON report.
    let mut first = leakcheck(&[&base[..], &["--partition", "count:1/2"]].concat());
    first.env("LEAKCHECK_RECORDS_DIR", path("records-1"));
    assert_eq!(run_to_end(first).code, Some(100));
    let second =
        run_to_end(leakcheck(&[&base[..], &["--partition", "count:2/2", "--report-json", &path("2.json")]].concat()));
    assert_eq!(second.code, Some(100), "{}", second.stderr);

    let merge = |inputs: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-leakcheck"));
        command.args(["leakcheck", "merge"]).args(inputs).stdin(std::process::Stdio::null());
        run_to_end(command)
    };
    let merged = merge(&[
        "--junit",
        &path("merged.xml"),
        "--report-json",
        &path("merged.json"),
        &path("records-1"),
        &path("2.json"),
    ]);
    assert_eq!(merged.code, Some(100), "{}", merged.stderr);
    assert!(merged.stdout.contains("Summary") && merged.stdout.contains("leaked fd"), "{}", merged.stdout);
    let read = |name: &str| -> leakcheck::Report {
        serde_json::from_str(&std::fs::read_to_string(scratch.path().join(name)).unwrap()).unwrap()
    };
    let (full, merged_report) = (read("full.json"), read("merged.json"));
    assert_eq!(verdicts(&merged_report), verdicts(&full));
    assert_eq!(merged_report.summary.leaked, full.summary.leaked);
    // The JUnit file, read back: one testcase per test, a failure per failing one.
    let junit = std::fs::read_to_string(scratch.path().join("merged.xml")).unwrap();
    let failing = full.tests.iter().filter(|test| test.outcome.is_failure()).count();
    assert_eq!(junit.matches("<testcase ").count(), full.tests.len(), "{junit}");
    assert_eq!(junit.matches("<failure").count(), failing, "{junit}");

    // The same shard twice, and a truncated record: errors, exit 2.
    let twice = merge(&[&path("2.json"), &path("2.json")]);
    assert_eq!(twice.code, Some(2), "{}", twice.stderr);
    assert!(twice.stderr.contains("is recorded twice"), "{}", twice.stderr);
    let record = std::fs::read_dir(scratch.path().join("records-1")).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(&record, &text[..text.len() - 10]).unwrap();
    let broken = merge(&[&path("records-1"), &path("2.json")]);
    assert_eq!(broken.code, Some(2), "{}", broken.stderr);
    assert!(broken.stderr.contains("not a whole record"), "{}", broken.stderr);
    assert_eq!(broken.stderr.lines().filter(|line| line.starts_with("error")).count(), 1, "{}", broken.stderr);
}

/// The README's recipe: build once (`cargo nextest archive`), run the
/// archive in two shards from another checkout (`--workspace-remap`) under
/// the wrapper, each leaving a records directory, and merge them.
#[test]
fn a_nextest_archive_run_in_two_shards_and_merged_catches_every_leak() {
    if !nextest_available() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let _serial = serial();
    let scratch = tempfile::tempdir().unwrap();
    let at = |name: &str| scratch.path().join(name);
    let archive = at("tests.tar.zst");
    let status = std::process::Command::new(&cargo)
        .args(["nextest", "archive", "-p", "leaky", "--archive-file", archive.to_str().unwrap()])
        .current_dir(fixtures())
        .env("CARGO_TARGET_DIR", fixture_target_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    // Another checkout of the sources: the fixtures without their target.
    let checkout = at("checkout");
    copy_sources(&fixtures(), &checkout);
    let config = nextest_wrapper_config(&[]);
    for shard in 1..=2 {
        let output = std::process::Command::new(&cargo)
            .args(["nextest", "run", "--archive-file", archive.to_str().unwrap()])
            .args(["--workspace-remap", checkout.to_str().unwrap(), "--config-file", config.path().to_str().unwrap()])
            .args(["--partition", &format!("count:{shard}/2"), "--no-fail-fast", "--color", "never"])
            .current_dir(scratch.path())
            .env("LEAKCHECK_RECORDS_DIR", at(&format!("records-{shard}")))
            .env_remove("LEAKCHECK_TEST_ID")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(100), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let mut merge = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-leakcheck"));
    merge.args(["leakcheck", "merge", "--message-format", "json", "--junit"]).arg(at("junit.xml"));
    merge.arg(at("records-1")).arg(at("records-2")).stdin(std::process::Stdio::null());
    let merged = run_to_end(merge);
    assert_eq!(merged.code, Some(100), "{}", merged.stderr);
    let merged = merged.report();

    // The same verdicts as cargo leakcheck gives (nextest skips ignored tests).
    let direct = run_to_end(leakcheck(&["-p", "leaky", "--no-fail-fast", "--message-format", "json"]));
    let mut direct = direct.report();
    direct.tests.retain(|test| test.outcome != Outcome::Ignored);
    assert_eq!(verdicts(&merged), verdicts(&direct));
    assert_eq!((merged.summary.leaked, merged.summary.failed), (11, 1), "{:#?}", merged.summary);
    let junit = std::fs::read_to_string(at("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 12, "{junit}");
}

/// Copies `from` to `to`, leaving out `target` directories.
fn copy_sources(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (path, name) = (entry.path(), entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if name != "target" {
                copy_sources(&path, &to.join(&name));
            }
        } else {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}
