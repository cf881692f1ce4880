//! The leakcheck harness (`leakcheck::main!()`) and attribute
//! (`#[leakcheck::test]`) on the `harnessed` fixture: under `cargo
//! leakcheck`, `cargo nextest run` and plain `cargo test`.

mod support;

use leakcheck::{Leak, Outcome};
use support::*;

fn heap(record: &leakcheck::TestRecord) -> Vec<(u64, u64)> {
    record
        .leaks
        .iter()
        .filter_map(|leak| match leak {
            Leak::Heap { bytes, blocks, .. } => Some((*bytes, *blocks)),
            _ => None,
        })
        .collect()
}

/// `tests/<file>:<line>` of every line of the fixture's `tests/<file>` that
/// carries the comment `// site: <test>`: where the test creates what it leaks.
fn marked_sites(file: &str, test: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/harnessed/tests").join(file);
    let source = std::fs::read_to_string(&path).unwrap();
    let marker = format!("// site: {test}");
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim_end().ends_with(&marker))
        .map(|(index, _)| format!("tests/{file}:{}", index + 1))
        .collect()
}

/// Checks that each leak of `kind` in `test` names its marked sites (and
/// that a marked test has at least one such leak).
fn assert_sites(report: &leakcheck::Report, binary: &str, file: &str, test: &str, kind: &str) {
    let expected = marked_sites(file, test);
    assert!(!expected.is_empty(), "no `// site: {test}` in {file}");
    let record = record(report, binary, test);
    let leaks: Vec<&Leak> = record.leaks.iter().filter(|leak| leak.kind() == kind).collect();
    assert!(!leaks.is_empty(), "{record:#?}");
    for leak in leaks {
        let found: Vec<&str> = leak.sites().iter().map(|site| site.location.as_str()).collect();
        for line in &expected {
            assert!(found.contains(&line.as_str()), "{test}: {kind} site {line} expected, got {found:?}");
        }
    }
}

#[test]
fn harness_binaries_report_heap_leaks_with_bytes_and_blocks() {
    let _serial = serial();
    let run =
        run_to_end(leakcheck(&["-p", "harnessed", "--test", "harness", "--no-fail-fast", "--message-format", "json"]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let binary = "harnessed::harness";

    let boxed = record(&report, binary, "heap::box_leak");
    assert_outcome(boxed, Outcome::Leaked);
    assert_eq!(heap(boxed), [(4096, 1)], "{boxed:#?}");
    assert_eq!(boxed.leaks.len(), 1);

    let vec = record(&report, binary, "heap::forgotten_vec");
    assert_outcome(vec, Outcome::Leaked);
    assert_eq!(heap(vec), [(1000, 1)], "{vec:#?}");

    let cycle = record(&report, binary, "heap::rc_cycle");
    assert_outcome(cycle, Outcome::Leaked);
    let (bytes, blocks) = heap(cycle)[0];
    assert_eq!(blocks, 2, "{cycle:#?}");
    assert!(bytes >= 2 * 16, "{cycle:#?}");

    for clean in [
        "heap::large_buffer_freed",
        "heap::strings_built_and_dropped",
        "heap::thread_local_filled",
        "resources::waited_child_and_joined_threads",
        "asynchronous::tokio_sleep",
        "outcomes::returns_ok",
        "outcomes::should_panic",
    ] {
        let record = record(&report, binary, clean);
        assert_outcome(record, Outcome::Passed);
        assert!(record.leaks.is_empty(), "{record:#?}");
    }

    let file = record(&report, binary, "resources::forgotten_file");
    assert_outcome(file, Outcome::Leaked);
    assert!(fds(file)[0].0.ends_with("/leakcheck-harness-forgotten.txt"), "{file:#?}");
    assert_eq!(threads(record(&report, binary, "resources::detached_thread")), ["harness-flusher"]);
    assert_eq!(threads(record(&report, binary, "asynchronous::tokio_test_leaking_a_thread")), ["async-leak"]);
    let child = record(&report, binary, "resources::running_child");
    assert_eq!(children(child).iter().map(|child| child.0).collect::<Vec<_>>(), ["sleep 30"]);
    let zombie = record(&report, binary, "resources::zombie_child");
    assert_eq!(children(zombie), [("[true]", "zombie", false)], "{zombie:#?}");
    // Invisible from inside the forked test: the harness finds it in the
    // test's process group after the test ended.
    let orphan = record(&report, binary, "resources::orphaned_grandchild");
    assert_outcome(orphan, Outcome::Leaked);
    assert_eq!(children(orphan).iter().map(|c| (c.0, c.2)).collect::<Vec<_>>(), [("sleep 30", true)], "{orphan:#?}");
    let listener = record(&report, binary, "resources::leaked_listener");
    assert!(fds(listener)[0].1.starts_with("tcp listening on 127.0.0.1:"), "{listener:#?}");
    let pipe = fds(record(&report, binary, "resources::pipe_from_child"))[0].1;
    assert_eq!(pipe, "pipe, read end; other end not held by this process or its children");
    let runtime = record(&report, binary, "resources::forgotten_tokio_runtime");
    assert_eq!(threads(runtime), ["tokio-rt-worker", "tokio-rt-worker"], "{runtime:#?}");
    assert!(!heap(runtime).is_empty(), "{runtime:#?}");

    let allowed = record(&report, binary, "resources::allowed_thread");
    assert_outcome(allowed, Outcome::Passed);
    assert!(allowed.allowed.iter().any(|a| a.reason == "a process-wide helper, started once"), "{allowed:#?}");

    // Creation sites, from the explain re-run of each leaking test.
    for (test, kind) in [
        ("heap::box_leak", "heap"),
        ("heap::forgotten_vec", "heap"),
        ("heap::rc_cycle", "heap"),
        ("resources::forgotten_file", "fd"),
        ("resources::detached_thread", "thread"),
        ("resources::running_child", "child"),
        ("resources::leaked_listener", "fd"),
        ("resources::pipe_from_child", "fd"),
        ("resources::zombie_child", "child"),
        ("asynchronous::tokio_test_leaking_a_thread", "thread"),
    ] {
        assert_sites(&report, binary, "harness.rs", test, kind);
    }
    let detached = &record(&report, binary, "resources::detached_thread").leaks[0];
    assert_eq!(detached.sites()[0].role, leakcheck::record::SiteRole::Running, "{detached:#?}");
    assert!(orphan.leaks[0].sites().is_empty(), "a grandchild was not made by the test: {orphan:#?}");
    // Every tokio fd was opened by Runtime::new in the test's own line.
    let runtime_line = marked_sites("harness.rs", "resources::forgotten_tokio_runtime");
    for leak in runtime.leaks.iter().filter(|leak| leak.kind() == "fd") {
        assert_eq!(leak.sites()[0].location, runtime_line[0], "{leak:#?}");
    }

    let aborted = record(&report, binary, "outcomes::aborts");
    assert_outcome(aborted, Outcome::Failed);
    assert!(aborted.message.as_deref().unwrap_or_default().contains("SIGABRT"), "{aborted:#?}");
    let failing = record(&report, binary, "outcomes::failing");
    assert_outcome(failing, Outcome::Failed);
    assert!(failing.output.as_deref().unwrap_or_default().contains("arithmetic is broken on purpose"));
    assert_outcome(record(&report, binary, "outcomes::ignored"), Outcome::Ignored);
    // The explain re-run of a test that opens an fd with every signal blocked
    // dies of the trap; the first run's verdict stands, without a recorded
    // stack: only the test's line naming the file.
    let blocked = record(&report, binary, "resources::file_opened_with_every_signal_blocked");
    assert_outcome(blocked, Outcome::Leaked);
    assert_eq!(fds(blocked), [("/dev/null", "character device")], "{blocked:#?}");
    let roles: Vec<_> = blocked.leaks[0].sites().iter().map(|site| site.role).collect();
    assert_eq!(roles, [leakcheck::record::SiteRole::Mentioned], "{blocked:#?}");
    let harnessed = fixtures().join("harnessed");
    assert!(std::fs::read_dir(&harnessed)
        .unwrap()
        .flatten()
        .all(|entry| !entry.file_name().to_string_lossy().starts_with("core")));
    assert_eq!(report.tests.len(), 27);
}

#[test]
fn the_attribute_checks_heap_and_honours_allow_rules_under_cargo_leakcheck() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&[
        "-p",
        "harnessed",
        "--test",
        "attribute",
        "--no-fail-fast",
        "--message-format",
        "json",
    ]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let binary = "harnessed::attribute";
    let boxed = record(&report, binary, "attribute_box_leak");
    assert_outcome(boxed, Outcome::Leaked);
    assert_eq!(heap(boxed), [(512, 1)], "{boxed:#?}");
    let detached = record(&report, binary, "attribute_detached_thread");
    assert_outcome(detached, Outcome::Leaked);
    assert_eq!(threads(detached), ["attr-flusher"]);
    // The explain re-run (LEAKCHECK_EXPLAIN=record) found where.
    assert_sites(&report, binary, "attribute.rs", "attribute_box_leak", "heap");
    assert_sites(&report, binary, "attribute.rs", "attribute_detached_thread", "thread");
    let allowed = record(&report, binary, "attribute_allowed_thread");
    assert_outcome(allowed, Outcome::Passed);
    assert!(allowed.leaks.is_empty(), "{allowed:#?}");
    assert!(allowed.allowed.iter().any(|a| a.reason == "started once per process on purpose"), "{allowed:#?}");
    for clean in ["attribute_clean", "attribute_should_panic", "attribute_tokio_clean"] {
        assert_outcome(record(&report, binary, clean), Outcome::Passed);
    }
}

/// `cargo <args>` in the fixture workspace with the shared target dir.
fn cargo_in_fixtures(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(args)
        .current_dir(fixtures())
        .env("CARGO_TARGET_DIR", fixture_target_dir())
        .env("RUST_BACKTRACE", "0")
        .env_remove("LEAKCHECK_TEST_ID")
        .env_remove("NEXTEST")
        .env_remove("NEXTEST_EXECUTION_MODE")
        .env_remove("RUST_TEST_THREADS")
        .stdin(std::process::Stdio::null());
    command
}

/// Pids of live processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse::<i32>().ok()?, entry.path())))
        .filter(|(_, path)| {
            let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(needle)
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// A hanging attributed test under plain `cargo test`: when the test binary
/// is killed, its isolated copy dies with it.
#[test]
fn an_isolated_test_dies_with_the_test_binary_waiting_for_it() {
    let _serial = serial();
    let build =
        cargo_in_fixtures(&["test", "-p", "harnessed", "--test", "isolated", "--no-run", "--message-format=json"])
            .output()
            .unwrap();
    let executable = String::from_utf8_lossy(&build.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "isolated")
        .find_map(|message| message["executable"].as_str().map(str::to_owned))
        .expect("the isolated target's executable");
    let mut parent = std::process::Command::new(executable)
        .args(["iso_hangs", "--exact", "--ignored"])
        .env_remove("LEAKCHECK_TEST_ID")
        .env_remove("NEXTEST")
        .env_remove("NEXTEST_EXECUTION_MODE")
        .env_remove("RUST_TEST_THREADS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let isolated = "iso_hangs --exact --test-threads=1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while processes_with(isolated).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!processes_with(isolated).is_empty(), "the isolated copy never started");
    parent.kill().unwrap();
    parent.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !processes_with(isolated).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(processes_with(isolated), Vec::<i32>::new(), "the isolated copy outlived its parent");
}

#[test]
fn plain_cargo_test_in_parallel_checks_each_attributed_test_alone() {
    let _serial = serial();
    // Five times: untagged neighbours churn fds and threads in the shared
    // process meanwhile, and must never be blamed.
    for round in 0..5 {
        // (Another runner's test may have left one: nextest does not end them.)
        let before = processes_with("sleep 37");
        let output = cargo_in_fixtures(&["test", "-p", "harnessed", "--test", "isolated"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(101), "round {round}:\n{stdout}");
        assert!(stdout.contains("test result: FAILED. 6 passed; 4 failed; 2 ignored"), "round {round}:\n{stdout}");
        let failed: Vec<&str> = stdout
            .rsplit_once("\nfailures:\n")
            .map_or("", |(_, list)| list)
            .lines()
            .filter_map(|line| line.strip_prefix("    "))
            .collect();
        assert_eq!(failed, ["iso_forgotten_file", "iso_heap_leak", "iso_parked_thread", "iso_running_child"]);
        for (test, leak) in [
            ("iso_forgotten_file", "fd 3 -> "),
            ("iso_forgotten_file", "/leakcheck-isolated-forgotten.txt (regular file)"),
            ("iso_parked_thread", "thread \"iso-parked\""),
            ("iso_running_child", "child `sleep 37`"),
            ("iso_heap_leak", "heap: 4096 bytes in 1 block"),
        ] {
            let section = stdout.split(&format!("---- {test} stdout ----")).nth(1).unwrap_or_default();
            let section = section.split("\n---- ").next().unwrap_or_default();
            assert!(section.contains(leak), "round {round}: {test} should name {leak}:\n{stdout}");
            // The leak report once, with no panic location of leakcheck's.
            assert_eq!(section.matches("leakcheck: the test left resources behind:").count(), 1, "{section}");
            assert!(!section.contains("panicked at"), "{section}");
        }
        assert!(stdout.contains("test iso_should_panic - should panic ... ok"), "round {round}:\n{stdout}");
        let left: Vec<i32> = processes_with("sleep 37").into_iter().filter(|pid| !before.contains(pid)).collect();
        assert_eq!(left, Vec::<i32>::new(), "round {round}: the isolated child's `sleep 37` must be gone");
    }
    // An ignored attributed test runs isolated when asked for.
    let output =
        cargo_in_fixtures(&["test", "-p", "harnessed", "--test", "isolated", "--", "--ignored", "iso_ignored_leak"])
            .output()
            .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("test result: FAILED. 0 passed; 1 failed; 0 ignored"), "{stdout}");
    assert!(stdout.contains("fd 3 -> /dev/null (character device)"), "{stdout}");
    // The attribute target too: its two leaking tests fail, in parallel threads.
    let output = cargo_in_fixtures(&["test", "-p", "harnessed", "--test", "attribute"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("test result: FAILED. 5 passed; 2 failed"), "{stdout}");
}

#[test]
fn cargo_test_with_one_thread_checks_the_attribute() {
    let _serial = serial();
    let output = cargo_in_fixtures(&["test", "-p", "harnessed", "--test", "attribute", "--", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(101), "{stdout}");
    // attribute_one_time_initialisation: its file is opened once per process, a singleton.
    assert!(stdout.contains("test result: FAILED. 5 passed; 2 failed"), "{stdout}");
    assert!(
        stdout.contains("    attribute_box_leak\n") && stdout.contains("    attribute_detached_thread\n"),
        "{stdout}"
    );
}

#[test]
fn harness_and_attribute_run_unchanged_under_nextest() {
    if !nextest_available() {
        return;
    }
    let _serial = serial();
    let before = processes_with("sleep 37");
    let output = cargo_in_fixtures(&["nextest", "run", "-p", "harnessed", "--no-fail-fast", "--color", "never"])
        .output()
        .unwrap();
    // Under nextest, iso_running_child's `sleep 37` outlives its test (nextest
    // reports it, "LEAK", and leaves it): end it here, not 37 s later.
    for pid in processes_with("sleep 37").into_iter().filter(|pid| !before.contains(pid)) {
        // SAFETY: kill of a `sleep 37` this run started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(100), "{stderr}");
    let failed: Vec<&str> = stderr
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            // nextest says "FAIL + LEAK" when a process the test left holds its output.
            (line.starts_with("FAIL [") || line.starts_with("FAIL + LEAK [")) && line.contains(") harnessed::")
        })
        .filter_map(|line| line.split(") ").nth(1))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        failed,
        [
            "harnessed::attribute attribute_box_leak",
            "harnessed::attribute attribute_detached_thread",
            "harnessed::custom_allocator thread_still_checked",
            "harnessed::harness asynchronous::tokio_test_leaking_a_thread",
            "harnessed::harness heap::box_leak",
            "harnessed::harness heap::forgotten_vec",
            "harnessed::harness heap::rc_cycle",
            "harnessed::harness once::leaks_on_every_run",
            "harnessed::harness outcomes::aborts",
            "harnessed::harness outcomes::failing",
            "harnessed::harness resources::detached_thread",
            "harnessed::harness resources::file_opened_with_every_signal_blocked",
            "harnessed::harness resources::forgotten_file",
            "harnessed::harness resources::forgotten_tokio_runtime",
            "harnessed::harness resources::leaked_listener",
            "harnessed::harness resources::orphaned_grandchild",
            "harnessed::harness resources::pipe_from_child",
            "harnessed::harness resources::running_child",
            "harnessed::harness resources::zombie_child",
            "harnessed::isolated iso_forgotten_file",
            "harnessed::isolated iso_heap_leak",
            "harnessed::isolated iso_parked_thread",
            "harnessed::isolated iso_running_child",
            "harnessed::reuse a3_leaks_an_fd",
        ],
        "{stderr}"
    );
    assert!(stderr.contains("54 tests run: 30 passed, 24 failed, 3 skipped"), "{stderr}");
}

/// Runs the `reuse` fixture target with one job (tests in name order) and
/// returns the pid each test ran in.
fn pids_of_reuse_tests(extra: &[&str]) -> std::collections::BTreeMap<String, u32> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("reuse-pids-{}", extra.len()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = vec!["-p", "harnessed", "--test", "reuse", "--no-fail-fast", "-j", "1", "--message-format", "json"];
    args.extend(extra);
    let mut command = leakcheck(&args);
    // b1's panic then fills std's symbol caches, which must not count.
    command.env("LEAKCHECK_FIXTURE_PID_DIR", &dir).env("RUST_BACKTRACE", "1");
    let run = run_to_end(command);
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let failing: Vec<&str> =
        report.tests.iter().filter(|test| test.outcome != Outcome::Passed).map(|test| test.name.as_str()).collect();
    assert_eq!(failing, ["a3_leaks_an_fd"], "{report:#?}");
    assert_eq!(fds(record(&report, "harnessed::reuse", "a3_leaks_an_fd")), [("/dev/null", "character device")]);
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let pid = std::fs::read_to_string(entry.path()).unwrap().parse().unwrap();
            (entry.file_name().into_string().unwrap(), pid)
        })
        .collect()
}

#[test]
fn a_child_runs_the_next_test_only_after_a_clean_one() {
    let _serial = serial();
    let pids = pids_of_reuse_tests(&[]);
    let pid = |test: &str| pids[test];
    assert_eq!(pids.len(), 9, "{pids:?}");
    // Clean tests share a child; the leaking test ran in it too, and ended it.
    assert_eq!(pid("a1_clean"), pid("a2_clean"));
    assert_eq!(pid("a2_clean"), pid("a3_leaks_an_fd"));
    assert_ne!(pid("a3_leaks_an_fd"), pid("a4_sets_an_environment_variable"));
    // A changed environment ends the child (a5 also asserts it sees none of it).
    assert_ne!(pid("a4_sets_an_environment_variable"), pid("a5_sees_a_pristine_environment"));
    // So does a reaped child process (an orphan it left is only seen after).
    assert_eq!(pid("a5_sees_a_pristine_environment"), pid("a6_runs_a_child_process_to_the_end"));
    assert_ne!(pid("a6_runs_a_child_process_to_the_end"), pid("a7_clean"));
    assert_eq!(pid("a7_clean"), pid("a8_clean"));
    assert_eq!(pid("a8_clean"), pid("b1_panics_in_a_joined_thread"));

    let fresh = pids_of_reuse_tests(&["--fork-per-test"]);
    let distinct: std::collections::BTreeSet<u32> = fresh.values().copied().collect();
    assert_eq!((fresh.len(), distinct.len()), (9, 9), "--fork-per-test: a process per test, {fresh:?}");
}

#[test]
fn with_its_own_allocator_the_heap_is_not_measured_rather_than_clean() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&[
        "-p",
        "harnessed",
        "--test",
        "custom_allocator",
        "--no-fail-fast",
        "--message-format",
        "json",
    ]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let unmeasured = record(&report, "harnessed::custom_allocator", "heap_not_measured");
    assert_outcome(unmeasured, Outcome::Passed);
    assert_eq!(unmeasured.unchecked, ["heap"]);
    let thread = record(&report, "harnessed::custom_allocator", "thread_still_checked");
    assert_outcome(thread, Outcome::Leaked);
    assert_eq!(threads(thread), ["own-alloc"]);
    assert_eq!(thread.unchecked, ["heap"]);
}

#[test]
fn one_time_initialisation_is_a_singleton_with_or_without_repeat_mode_and_per_run_leaks_still_fail() {
    let _serial = serial();
    let args =
        ["-p", "harnessed", "--no-fail-fast", "--message-format", "json", "--test", "harness", "--test", "attribute"];
    let once = ["once::one_time_initialisation", "attribute_one_time_initialisation"];
    let without = run_to_end(leakcheck(&args)).report();
    let with = {
        let mut command = leakcheck(&args);
        command.args(["--repeat", "2"]);
        let run = run_to_end(command);
        assert!(run.stderr.contains("--repeat 2 applies to #[leakcheck::test] and leakcheck::main!() tests"));
        run.report()
    };
    for (binary, name) in [("harnessed::harness", once[0]), ("harnessed::attribute", once[1])] {
        // Without repeat mode: the first run opened the file, a second run
        // in the same process did not: made once per process, a singleton.
        let first = record(&without, binary, name);
        assert_outcome(first, Outcome::Passed);
        assert!(first.leaks.is_empty(), "{first:#?}");
        let singletons: Vec<&str> = first
            .singletons
            .iter()
            .filter_map(|leak| match leak {
                leakcheck::Leak::Fd { target, .. } => Some(target.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(singletons, ["/dev/null"], "{first:#?}");
        assert_outcome(record(&with, binary, name), Outcome::Passed);
    }
    for report in [&without, &with] {
        let every = record(report, "harnessed::harness", "once::leaks_on_every_run");
        assert_outcome(every, Outcome::Leaked);
        assert_eq!(fds(every).len(), 1, "{every:#?}");
        assert_outcome(
            record(report, "harnessed::harness", "once::one_time_thread_with_the_repeat_option"),
            Outcome::Passed,
        );
        // Repeat mode changes nothing for tests without leakcheck code.
        assert_outcome(record(report, "harnessed::harness", "heap::box_leak"), Outcome::Leaked);
    }
}

#[test]
fn the_human_report_says_where_each_leak_was_made() {
    let _serial = serial();
    let human = |args: &[&str]| {
        let run = run_to_end(leakcheck(&[&["-p", "harnessed", "--test", "harness"], args].concat()));
        assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
        format!("{}{}", run.stdout, run.stderr)
    };
    let file_line = &marked_sites("harness.rs", "resources::forgotten_file")[0];
    let out = human(&["resources::forgotten_file"]);
    // Under the leak's line, and in the table's "where" column.
    assert!(out.contains(&format!("created at {file_line} in harness::resources::forgotten_file")), "{out}");
    assert!(out.contains("where"), "{out}");

    let box_line = &marked_sites("harness.rs", "heap::box_leak")[0];
    let out = human(&["heap::box_leak"]);
    assert!(
        out.contains(&format!("4096 bytes in 1 block allocated at {box_line} in harness::heap::box_leak")),
        "{out}"
    );
    assert!(out.contains(&format!("{box_line} (4096 B)")), "{out}");

    // --no-explain: no re-run, no sites.
    let out = human(&["--no-explain", "heap::box_leak"]);
    assert!(!out.contains(&format!("allocated at {box_line}")), "{out}");
    assert!(out.contains("note: no creation site"), "{out}");
}

/// Under plain `cargo test`, each `#[leakcheck::test]` writes its own record
/// to `LEAKCHECK_RECORDS_DIR`, and `cargo leakcheck merge` reads them.
#[test]
fn attributed_tests_leave_records_under_cargo_test_for_merge() {
    let _serial = serial();
    let records = tempfile::tempdir().unwrap();
    let output = cargo_in_fixtures(&["test", "-p", "harnessed", "--test", "isolated"])
        .env("LEAKCHECK_RECORDS_DIR", records.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(101), "{}", String::from_utf8_lossy(&output.stdout));
    let mut merge = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-leakcheck"));
    merge.args(["leakcheck", "merge", "--message-format", "json"]).arg(records.path());
    let run = run_to_end(merge);
    assert_eq!(run.code, Some(100), "{}", run.stderr);
    let report = run.report();
    let mut verdicts: Vec<(&str, &str, Outcome)> =
        report.tests.iter().map(|test| (test.binary.as_str(), test.name.as_str(), test.outcome)).collect();
    verdicts.sort_by_key(|(_, name, _)| *name);
    let binary = "harnessed::isolated";
    assert_eq!(
        verdicts,
        [
            (binary, "iso_clean", Outcome::Passed),
            (binary, "iso_forgotten_file", Outcome::Leaked),
            (binary, "iso_heap_leak", Outcome::Leaked),
            (binary, "iso_parked_thread", Outcome::Leaked),
            (binary, "iso_running_child", Outcome::Leaked),
            (binary, "iso_should_panic", Outcome::Passed),
        ]
    );
    let heap = record(&report, binary, "iso_heap_leak");
    assert!(matches!(heap.leaks[..], [Leak::Heap { bytes: 4096, .. }]), "{heap:#?}");
}
