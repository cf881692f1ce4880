//! `cargo leakcheck` on unmodified crates: the real binary on the fixtures,
//! asserting exact outcomes, leak identities, exit codes, and that no process
//! outlives a run.

mod support;

use leakcheck::{Leak, Outcome};
use support::*;

#[test]
fn every_leak_of_the_showcase_is_named() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "leaky", "--no-fail-fast", "--message-format", "json"]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let leaks = "leaky::leaks";
    // Each leak of the JSON report carries the hint of its kind.
    let raw: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    for test in raw["tests"].as_array().unwrap() {
        for leak in test["leaks"].as_array().unwrap() {
            assert!(leak["hint"].as_str().is_some_and(|hint| hint.len() > 20), "{leak}");
        }
    }

    let forgotten = record(&report, leaks, "fd::forgotten_file");
    assert_outcome(forgotten, Outcome::Leaked);
    assert_eq!(forgotten.leaks.len(), 2, "{forgotten:#?}");
    let (target, detail) = fds(forgotten)[0];
    // The test's private temp dir is gone after the run: named by $TMPDIR.
    assert_eq!(target, "$TMPDIR/leakcheck-fixture-forgotten.txt");
    assert_eq!(detail, "regular file");
    // The file itself stays in that temp dir: a leak of its own.
    assert!(
        matches!(&forgotten.leaks[1], Leak::File { path, file_type, .. } if path == "leakcheck-fixture-forgotten.txt" && file_type == "file"),
        "{forgotten:#?}"
    );

    let listener = record(&report, leaks, "fd::leaked_listener");
    assert_outcome(listener, Outcome::Leaked);
    assert_eq!(listener.leaks.len(), 1, "{listener:#?}");
    let (target, detail) = fds(listener)[0];
    assert!(target.starts_with("socket:["), "{target}");
    assert!(detail.starts_with("tcp listening on 127.0.0.1:"), "{detail}");

    let connected = record(&report, leaks, "fd::connected_socket");
    assert_outcome(connected, Outcome::Leaked);
    let sockets = fds(connected);
    assert_eq!(sockets.len(), 2, "{connected:#?}");
    for (_, detail) in sockets {
        assert!(detail.starts_with("tcp 127.0.0.1:") && detail.ends_with("(established)"), "{detail}");
    }

    // No stack in zero-config mode: the test's own line naming the file.
    let source = std::fs::read_to_string(fixtures().join("leaky/tests/leaks.rs")).unwrap();
    let naming = source.lines().position(|line| line.contains("File::create") && line.contains("fixture-forgotten"));
    let forgotten = &record(&report, leaks, "fd::forgotten_file").leaks[0];
    let site = &forgotten.sites()[0];
    assert_eq!(site.location, format!("tests/leaks.rs:{}", naming.unwrap() + 1), "{forgotten:#?}");
    assert_eq!(site.role, leakcheck::record::SiteRole::Mentioned);

    let pipe = record(&report, leaks, "fd::pipe_from_child");
    assert_outcome(pipe, Outcome::Leaked);
    assert_eq!(pipe.leaks.len(), 1, "{pipe:#?}");
    assert_eq!(fds(pipe)[0].1, "pipe, read end; other end not held by this process or its children");

    let detached = record(&report, leaks, "thread::detached_thread");
    assert_outcome(detached, Outcome::Leaked);
    match &detached.leaks[..] {
        [leakcheck::Leak::Thread { waiting_in: Some(function), .. }] => assert!(!function.is_empty()),
        other => panic!("the thread's kernel wait is named: {other:#?}"),
    }
    assert_eq!(threads(detached), ["flusher"], "{detached:#?}");
    assert_eq!(detached.leaks.len(), 1);

    let sleeper = record(&report, leaks, "thread::thread_sleeping_long");
    assert_outcome(sleeper, Outcome::Leaked);
    assert_eq!(threads(sleeper), ["sleeper"], "{sleeper:#?}");
    assert_eq!(sleeper.leaks.len(), 1);

    let unnamed = record(&report, leaks, "thread::unnamed_thread");
    assert_outcome(unnamed, Outcome::Leaked);
    match &unnamed.leaks[..] {
        [leakcheck::Leak::Thread { name, unnamed: true, .. }] => assert_eq!(name, "thread::unnamed"),
        other => panic!("expected one unnamed thread: {other:#?}"),
    }

    let runtime = record(&report, leaks, "thread::forgotten_tokio_runtime");
    assert_outcome(runtime, Outcome::Leaked);
    assert_eq!(threads(runtime), ["tokio-rt-worker", "tokio-rt-worker"], "{runtime:#?}");
    assert!(fds(runtime).iter().any(|(_, detail)| *detail == "eventpoll"), "{runtime:#?}");

    let running = record(&report, leaks, "child::running_child");
    assert_outcome(running, Outcome::Leaked);
    assert_eq!(running.leaks.len(), 1, "{running:#?}");
    let (cmdline, state, orphaned) = children(running)[0];
    assert_eq!((cmdline, orphaned), ("sleep 30", false));
    assert_ne!(state, "zombie");

    let zombie = record(&report, leaks, "child::zombie_child");
    assert_outcome(zombie, Outcome::Leaked);
    assert_eq!(children(zombie), [("[true]", "zombie", false)], "{zombie:#?}");
    assert_eq!(zombie.leaks.len(), 1);

    let orphan = record(&report, leaks, "child::orphaned_grandchild");
    assert_outcome(orphan, Outcome::Leaked);
    assert_eq!(orphan.leaks.len(), 1, "{orphan:#?}");
    let (cmdline, _, orphaned) = children(orphan)[0];
    assert_eq!((cmdline, orphaned), ("sleep 30", true));

    let failing = record(&report, "leaky::outcomes", "failing_assertion");
    assert_outcome(failing, Outcome::Failed);
    assert!(failing.leaks.is_empty(), "{failing:#?}");
    assert!(failing.message.as_deref().unwrap_or_default().contains("101"), "{failing:#?}");
    assert!(failing.output.as_deref().unwrap_or_default().contains("arithmetic is broken on purpose"));

    assert_outcome(record(&report, "leaky::outcomes", "ignored_test"), Outcome::Ignored);
    assert_outcome(record(&report, "leaky::outcomes", "hangs_with_children"), Outcome::Ignored);
    assert_outcome(record(&report, "leaky::outcomes", "untraceable_daemon"), Outcome::Ignored);

    let summary = &report.summary;
    assert_eq!(
        (summary.tests, summary.passed, summary.leaked, summary.failed, summary.ignored, summary.timed_out),
        (15, 0, 11, 1, 3, 0),
        "{summary:#?}"
    );
}

#[test]
fn tricky_but_clean_tests_all_pass() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "clean", "--no-fail-fast", "--message-format", "json"]));
    let report = run.report();
    for record in &report.tests {
        assert_outcome(record, Outcome::Passed);
        assert!(record.leaks.is_empty(), "{record:#?}");
        assert!(record.unchecked.is_empty(), "{record:#?}");
    }
    assert_eq!(report.tests.len(), 14);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    // It failed in its batch, after the test that touched the static, and
    // passed alone: that is its verdict, and one line says why.
    let order = "Order clean::order b_fails_after_it: failed in its batch (after a_touches_a_static), passed alone";
    assert!(run.stderr.contains(order), "{}", run.stderr);
}

#[test]
fn motivating_cases_leak_and_their_fixes_pass() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "field-cases", "--no-fail-fast", "--message-format", "json"]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let cases = "field-cases::cases";

    // The fd, and the file it names, left in the temp dir.
    let store = record(&report, cases, "runner_never_run_leaks");
    assert_outcome(store, Outcome::Leaked);
    assert_eq!(store.leaks.iter().map(Leak::kind).collect::<Vec<_>>(), ["fd", "file"]);
    assert!(fds(store)[0].0.ends_with("-store.db"), "{store:#?}");

    let log = record(&report, cases, "deploy_log_leaks");
    assert_outcome(log, Outcome::Leaked);
    assert_eq!(log.leaks.iter().map(Leak::kind).collect::<Vec<_>>(), ["fd", "file"]);
    assert!(fds(log)[0].0.ends_with("-deploy.log"), "{log:#?}");

    let browser = record(&report, cases, "browser_close_not_awaited_leaks");
    assert_outcome(browser, Outcome::Leaked);
    assert_eq!(threads(browser), ["browser-close"], "{browser:#?}");
    assert_eq!(children(browser).iter().map(|child| child.0).collect::<Vec<_>>(), ["sleep 30"]);

    let service = record(&report, cases, "service_without_shutdown_leaks");
    assert_outcome(service, Outcome::Leaked);
    assert_eq!(threads(service), ["svc-worker-0", "svc-worker-1"], "{service:#?}");

    for fixed in
        ["runner_run_is_clean", "runner_fixed", "deploy_log_fixed", "browser_close_fixed", "service_shutdown_fixed"]
    {
        let record = record(&report, cases, fixed);
        assert_outcome(record, Outcome::Passed);
        assert!(record.leaks.is_empty());
    }
    assert_eq!(report.tests.len(), 12);
}

#[test]
fn human_output_names_each_leak_and_ends_with_a_table_and_summary() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "leaky", "--no-fail-fast", "fd::"]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let out = &run.stdout;
    assert!(out.contains("    LEAK ["), "{out}");
    assert!(out.contains("leaky::leaks fd::forgotten_file\n"), "{out}");
    assert!(out.contains("leaked fd 3 -> "), "{out}");
    assert!(out.contains("leakcheck-fixture-forgotten.txt (regular file)"), "{out}");
    assert!(out.contains("(tcp listening on 127.0.0.1:"), "{out}");
    assert!(out.contains("Leaks:\n"), "{out}");
    assert!(out.contains("what leaked"), "{out}");
    assert!(out.contains("Summary ["), "{out}");
    assert!(out.contains("hint (fd): A file, socket or pipe opened during the test is still open at its end"), "{out}");
    assert!(out.contains("4 tests: 0 passed, 4 leaked, 0 failed, 0 timed out, 0 ignored"), "{out}");
    // A leaking test that printed nothing of its own shows no output section.
    assert!(!out.contains("running 1 test"), "{out}");
}

#[test]
fn fail_fast_stops_starting_tests_after_the_first_failure() {
    let _serial = serial();
    // Without singleton detection a leak is known at once: nothing else starts.
    let args = ["-p", "leaky", "--test", "leaks", "-j", "1", "--message-format", "json", "--fail-singletons"];
    let run = run_to_end(leakcheck(&args));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    assert_eq!(report.tests.len(), 1, "{:#?}", report.tests);
    assert_eq!(report.summary.not_run, 10);
    assert!(run.stderr.contains("10 not run (fail-fast; use --no-fail-fast)"), "{}", run.stderr);
    // With it, an fd or thread leak is known once its binary's tests have
    // run (together, in group runs): that binary runs whole, and the next
    // one never starts. (Children are not told apart by default: a child
    // leak stops the run at once, so they are skipped here.)
    let args = ["-p", "leaky", "-j", "1", "--message-format", "json", "--", "--skip", "child::"];
    let run = run_to_end(leakcheck(&args));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    assert!(report.tests.iter().all(|record| record.binary == "leaky::leaks"), "{:#?}", report.tests);
    assert_eq!(report.tests.len(), 8, "{:#?}", report.tests);
    assert_eq!(report.summary.not_run, 4);
}

#[test]
fn a_hanging_test_times_out_and_its_whole_tree_is_killed() {
    let _serial = serial();
    let started = std::time::Instant::now();
    let run = run_to_end(leakcheck(&[
        "-p",
        "leaky",
        "--timeout",
        "2s",
        "--message-format",
        "json",
        "hangs_with_children",
        "--",
        "--ignored",
    ]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    assert_eq!(report.tests.len(), 1);
    let hung = record(&report, "leaky::outcomes", "hangs_with_children");
    assert_outcome(hung, Outcome::TimedOut);
    assert!(hung.message.as_deref().unwrap_or_default().contains("time limit of 2s"), "{hung:#?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
    // `run` has already checked that neither `sleep` survived.
}

#[test]
fn a_build_failure_shows_cargos_errors_and_exits_101() {
    let _serial = serial();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-leakcheck"));
    command
        .args(["leakcheck", "--manifest-path"])
        .arg(fixtures().join("broken-build/Cargo.toml"))
        .arg("--target-dir")
        .arg(fixture_target_dir().join("broken"));
    let run = run_to_end(command);
    assert_eq!(run.code, Some(101), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("error[E0308]: mismatched types"), "{}", run.stderr);
    assert!(run.stderr.contains("error: the build failed"), "{}", run.stderr);
}

#[test]
fn a_filter_that_matches_nothing_says_so() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "clean", "no_such_test_anywhere"]));
    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("error: no test matched the filter `no_such_test_anywhere`"), "{}", run.stderr);
}

#[test]
fn bad_manifest_paths_are_usage_errors() {
    let _serial = serial();
    let missing = std::env::temp_dir().join("leakcheck-no-such-dir/Cargo.toml");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-leakcheck"));
    command.arg("leakcheck").arg("--manifest-path").arg(&missing);
    let run = run_to_end(command);
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("error: could not read the workspace metadata"), "{}", run.stderr);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-leakcheck"));
    command.arg("leakcheck").arg("--manifest-path").arg(fixtures());
    let run = run_to_end(command);
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("manifest"), "{}", run.stderr);
}

#[test]
fn without_the_probe_children_are_still_caught_and_the_gap_is_said() {
    let _serial = serial();
    let mut command = leakcheck(&[
        "-p",
        "leaky",
        "--no-fail-fast",
        "--message-format",
        "json",
        "child::running",
        "--",
        "--skip",
        "zombie",
    ]);
    command.env("LEAKCHECK_NO_PROBE", "1");
    let run = run_to_end(command);
    assert!(run.stderr.contains("warning: the exit probe is off"), "{}", run.stderr);
    let report = run.report();
    let running = record(&report, "leaky::leaks", "child::running_child");
    assert_outcome(running, Outcome::Leaked);
    assert_eq!(children(running).iter().map(|child| child.0).collect::<Vec<_>>(), ["sleep 30"]);
    assert_eq!(running.unchecked, ["fd", "thread"]);

    let mut command = leakcheck(&["-p", "leaky", "--message-format", "json", "fd::forgotten_file"]);
    command.env("LEAKCHECK_NO_PROBE", "1");
    let run = run_to_end(command);
    let report = run.report();
    // The fd goes unseen; the file it left in the temp dir does not.
    let forgotten = record(&report, "leaky::leaks", "fd::forgotten_file");
    assert_outcome(forgotten, Outcome::Leaked);
    assert_eq!(forgotten.leaks.iter().map(Leak::kind).collect::<Vec<_>>(), ["file"]);
    assert_eq!(forgotten.unchecked, ["fd", "thread"]);
}

#[test]
fn help_explains_the_exit_codes() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-leakcheck"))
        .args(["leakcheck", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for line in ["100  some test failed, leaked or timed out", "101  the build failed", "--no-fail-fast", "--timeout"] {
        assert!(help.contains(line), "--help lacks `{line}`:\n{help}");
    }
    // The configuration summary states the defaults as they are.
    for line in [
        "kinds = { fd, thread, child, heap, file }:\n",
        "\"fail\" (default), \"warn\" or \"off\"",
        "Files:",
        "(default: fd and thread \"pass\", child \"fail\")",
        "--fail-singletons",
        "--locked",
    ] {
        assert!(help.contains(line), "--help lacks `{line}`:\n{help}");
    }
}

fn interrupt_mid_run(signal: &str, package: &str, test: &str, daemon: &str) {
    let args = ["-p", package, "--timeout", "10m", "--message-format", "json", test, "--", "--ignored", "--exact"];
    interrupt(signal, leakcheck(&args), package, daemon);
}

/// Sends `signal` to the run of `command` once `daemon` runs; the run ends
/// at once, reports nothing, and leaves nothing running.
fn interrupt(signal: &str, mut command: std::process::Command, package: &str, daemon: &str) {
    let _serial = serial();
    // Build first, so the run below reaches its tests at once.
    let built = run_to_end(leakcheck(&["-p", package, "--list"]));
    assert_eq!(built.code, Some(0), "{}", built.stderr);

    let child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let guard = KillOnDrop(Some(child));
    // Wait until the test has started both of its sleeps.
    let started = std::time::Instant::now();
    while !processes_of_run(pid).iter().any(|(_, cmdline)| cmdline.starts_with(daemon)) {
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "the hanging test never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let output = guard.wait_with_output(std::time::Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "stderr:\n{stderr}");
    assert!(stderr.contains(&format!("error: interrupted by SIG{signal}")), "{stderr}");
    assert!(stderr.contains(" not run (the run was interrupted)"), "{stderr}");
    let report: leakcheck::Report = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report.summary.interrupted);
    assert!(report.tests.is_empty(), "{:#?}", report.tests);
    assert_no_process_left(pid);
}

#[test]
fn sigint_mid_run_kills_every_test_process() {
    interrupt_mid_run("INT", "leaky", "hangs_with_children", "sleep 301");
}

#[test]
fn sigint_mid_batch_kills_every_test_process() {
    // Not ignored: the test runs in a batch (by default), not alone.
    let mut command = leakcheck(&["-p", "faults", "--test", "faults", "--message-format", "json", "hangs_in_a_batch"]);
    command.env("LEAKCHECK_FIXTURE_HANG", "1");
    interrupt("INT", command, "faults", "sleep 307");
}

#[test]
fn sigterm_mid_run_kills_every_test_process() {
    interrupt_mid_run("TERM", "leaky", "hangs_with_children", "sleep 301");
}

#[test]
fn sigterm_mid_run_kills_every_process_of_a_harness_binary() {
    interrupt_mid_run("TERM", "faults", "hangs_with_a_tree", "sleep 305");
}

/// (binary, test) -> "outcome kinds" lines of `fixtures/expected-outcomes.txt`.
fn expected_outcomes() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("expected-outcomes.txt")).unwrap();
    text.lines().filter(|line| !line.starts_with('#') && !line.trim().is_empty()).map(str::to_owned).collect()
}

fn verdict_line(record: &leakcheck::TestRecord) -> String {
    let mut kinds: Vec<&str> = record.leaks.iter().map(|leak| leak.kind()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let kinds = if kinds.is_empty() { "-".to_owned() } else { kinds.join(",") };
    format!("{} {} {} {kinds}", record.binary, record.name, record.outcome.as_str())
}

#[test]
fn the_whole_fixture_workspace_gets_its_expected_verdicts() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["--workspace", "--no-fail-fast", "--message-format", "json", "-v"]));
    remove_files_left_outside();
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let actual: Vec<String> = report.tests.iter().map(verdict_line).collect();
    assert_eq!(actual, expected_outcomes());
    // By default libtest binaries run in batches (the heap check speaks of them).
    assert!(run.stderr.contains("tests in a batch): no heap leak"), "{}", run.stderr);
}

#[test]
fn an_unattributable_daemon_is_still_killed_when_the_run_ends() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "leaky", "untraceable_daemon", "--", "--ignored"]));
    assert!(run.stderr.contains("warning: killed `sleep 302`"), "{}", run.stderr);
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.trim_end() == "sleep 302")
        .collect();
    assert!(survivors.is_empty(), "{survivors:?}");
}

/// Installs, in the tool's process before it starts, a seccomp filter that
/// makes the `seccomp` syscall fail with EPERM, as a restrictive container
/// profile does. Everything the tool starts inherits it, so the exit probe is
/// really refused.
fn refuse_seccomp(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7;
    let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let program = [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        jeq(AUDIT_ARCH_NATIVE, 0, 3),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jeq(libc::SYS_seccomp as u32, 0, 1),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: between fork and exec: two raw syscalls on a program captured by
    // value (plain data); nothing allocates.
    unsafe {
        command.pre_exec(move || {
            let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn where_seccomp_is_refused_the_run_warns_once_and_still_catches_children() {
    let _serial = serial();
    let mut command =
        leakcheck(&["-p", "leaky", "--no-fail-fast", "--message-format", "json", "--", "--skip", "zombie"]);
    refuse_seccomp(&mut command);
    let run = run_to_end(command);
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let warnings = run.stderr.matches("warning: the exit probe is unavailable").count();
    assert_eq!(warnings, 1, "{}", run.stderr);
    assert!(run.stderr.contains("Operation not permitted"), "{}", run.stderr);
    let report = run.report();
    for name in ["child::running_child", "child::orphaned_grandchild"] {
        let record = record(&report, "leaky::leaks", name);
        assert_outcome(record, Outcome::Leaked);
        assert_eq!(children(record).iter().map(|child| child.0).collect::<Vec<_>>(), ["sleep 30"]);
    }
    let file = record(&report, "leaky::leaks", "fd::forgotten_file");
    assert_outcome(file, Outcome::Leaked);
    assert_eq!(file.leaks.iter().map(Leak::kind).collect::<Vec<_>>(), ["file"]);
    assert_eq!(file.unchecked, ["fd", "thread"]);
}

/// The `singletons` fixture: libraries that make something once per process
/// (tokio `full`'s signal socket pair, a self-pipe, a pool of unnamed
/// threads, another library's socket pair) next to per-test leaks of the
/// same shapes and tests that cannot share a process.
#[test]
fn singletons_pass_with_no_configuration_and_per_test_leaks_of_their_shapes_are_still_caught() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "singletons", "--no-fail-fast", "--message-format", "json"]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let binary = "singletons::singletons";
    let unix_pair = |record: &leakcheck::TestRecord| {
        record
            .singletons
            .iter()
            .filter(|leak| matches!(leak, leakcheck::Leak::Fd { detail, .. } if detail.starts_with("unix stream")))
            .count()
    };
    for name in ["async_clean::a", "async_clean::b", "async_clean::c", "async_clean::d", "wakeup::x", "wakeup::y"] {
        let clean = record(&report, binary, name);
        assert_outcome(clean, Outcome::Passed);
        assert_eq!(unix_pair(clean), 2, "{clean:#?}");
    }
    for name in ["selfpipe::one", "selfpipe::two", "selfpipe::three"] {
        let clean = record(&report, binary, name);
        assert_outcome(clean, Outcome::Passed);
        let details: Vec<String> = clean.singletons.iter().map(|leak| leak.describe()).collect();
        assert_eq!(details.len(), 2, "{clean:#?}");
        assert!(details.iter().all(|detail| detail.contains("pipe:[")), "{details:?}");
    }
    for name in ["pool::a", "pool::b", "pool::c"] {
        let clean = record(&report, binary, name);
        assert_outcome(clean, Outcome::Passed);
        assert_eq!(clean.singletons.len(), 2, "{clean:#?}");
        assert!(clean.singletons.iter().all(|leak| matches!(leak, leakcheck::Leak::Thread { unnamed: true, .. })));
    }
    // Its own file fails it; tokio's pair is not blamed on it.
    let mixed = record(&report, binary, "mixed::file_next_to_tokio");
    assert_outcome(mixed, Outcome::Leaked);
    let own = fds(mixed);
    assert_eq!(own.len(), 1, "{mixed:#?}");
    assert!(own[0].0.ends_with("/leakcheck-singletons-mixed.txt"), "{own:?}");
    assert_eq!(unix_pair(mixed), 2, "{mixed:#?}");
    // Per-test leaks of each singleton's shape.
    for (name, detail) in [
        ("per_test::pair_one", "unix stream"),
        ("per_test::pair_two", "unix stream"),
        ("per_test::pipe_one", "pipe, "),
        ("per_test::pipe_two", "pipe, "),
    ] {
        let leaking = record(&report, binary, name);
        assert_outcome(leaking, Outcome::Leaked);
        let leaked = fds(leaking);
        assert_eq!(leaked.len(), 2, "{leaking:#?}");
        assert!(leaked.iter().all(|(_, d)| d.starts_with(detail)), "{leaked:?}");
        assert!(leaking.singletons.is_empty(), "{leaking:#?}");
    }
    for name in ["per_test::thread_one", "per_test::thread_two"] {
        let leaking = record(&report, binary, name);
        assert_outcome(leaking, Outcome::Leaked);
        assert_eq!(leaking.leaks.len(), 1, "{leaking:#?}");
        assert!(matches!(leaking.leaks[0], leakcheck::Leak::Thread { unnamed: true, .. }), "{leaking:#?}");
    }
    // Their group run fails (the service starts once per process): inconclusive.
    for name in ["exclusive::first", "exclusive::second"] {
        let kept = record(&report, binary, name);
        assert_outcome(kept, Outcome::Leaked);
        assert_eq!(threads(kept), ["exclusive-svc"]);
    }
    // Each singleton is listed once, with the number of tests sharing it.
    let raw: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let listed = raw["singletons"].as_array().unwrap();
    // tokio's socket pair (5 tests) and the wakeup pair (2 tests) share a
    // shape; their fd numbers shift between tests, so until creation sites
    // tell them apart they are one line (listing them by fd number split one
    // singleton into several lines on real suites).
    let pairs = listed.iter().find(|s| s["kind"] == "fd" && s["tests"] == 7 && s["instances"] == 2);
    assert!(pairs.is_some(), "{listed:#?}");
    // The two one-test binaries each list the pair their sibling showed.
    let lone = |binary: &str| listed.iter().filter(|s| s["binary"] == binary && s["instances"] == 2).count();
    assert_eq!((lone("singletons::lone_singleton"), lone("singletons::lone_leak")), (1, 1), "{listed:#?}");
    assert_eq!(listed.len(), 6, "{listed:#?}");
    // The only test of its binary touching a singleton its sibling binary
    // shows passes, and says why; what it leaks beyond that count is its own.
    let lone_singleton = record(&report, "singletons::lone_singleton", "touches_the_wakeup_pair");
    assert_outcome(lone_singleton, Outcome::Passed);
    assert_eq!(unix_pair(lone_singleton), 2, "{lone_singleton:#?}");
    assert!(
        run.stderr.contains(
            "Singleton singletons::lone_singleton touches_the_wakeup_pair: the only test of its binary leaking \
             `fd unix stream`, a singleton of singletons::singletons: judged one here too"
        ),
        "{}",
        run.stderr
    );
    let lone_leak = record(&report, "singletons::lone_leak", "leaks_a_listener_and_two_pairs");
    assert_outcome(lone_leak, Outcome::Leaked);
    let own = fds(lone_leak);
    assert_eq!(own.len(), 3, "{lone_leak:#?}");
    assert_eq!(own.iter().filter(|(_, detail)| detail.starts_with("unix stream")).count(), 2, "{own:?}");
    assert_eq!(unix_pair(lone_leak), 2, "{lone_leak:#?}");
}

#[test]
fn fail_singletons_makes_every_test_touching_one_fail_for_it() {
    let _serial = serial();
    let args = ["-p", "singletons", "--no-fail-fast", "--message-format", "json", "--fail-singletons", "pool::"];
    let run = run_to_end(leakcheck(&args));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    for name in ["pool::a", "pool::b", "pool::c"] {
        let failing = record(&report, "singletons::singletons", name);
        assert_outcome(failing, Outcome::Leaked);
        assert_eq!(failing.leaks.len(), 2, "{failing:#?}");
        assert!(failing.singletons.is_empty());
    }
}

#[test]
fn human_output_lists_each_singleton_once_under_its_own_heading() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "singletons", "--no-fail-fast", "pool::"]));
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let heading = run.stdout.find("\nSingletons (").expect(&run.stdout);
    let section = &run.stdout[heading..];
    assert!(section.contains("singletons::singletons thread: 2 x (unnamed)"), "{section}");
    assert!(section.contains("in 3 tests (pool::a, pool::b, pool::c)"), "{section}");
    assert_eq!(run.stdout.matches("x (unnamed)").count(), 1, "{}", run.stdout);
    assert!(!run.stdout.contains("LEAK ["), "{}", run.stdout);
}

#[test]
fn pipe_details_name_an_orphan_holding_the_other_end_and_a_duplicate_of_stdout() {
    let _serial = serial();
    let args = ["-p", "field-cases", "--no-fail-fast", "--message-format", "json", "_leaks"];
    let run = run_to_end(leakcheck(&args));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let orphan = record(&report, "field-cases::cases", "pipe_to_orphaned_grandchild_leaks");
    assert_outcome(orphan, Outcome::Leaked);
    let detail = fds(orphan)[0].1;
    assert!(detail.starts_with("pipe, read end; other end held by `sleep 30`, pid "), "{detail}");
    assert!(detail.ends_with(", orphaned by the test"), "{detail}");
    assert_eq!(children(orphan).iter().map(|child| child.0).collect::<Vec<_>>(), ["sleep 30"]);
    let duplicate = record(&report, "field-cases::cases", "stdout_duplicate_leaks");
    assert_eq!(
        fds(duplicate)[0].1,
        "pipe, write end, a duplicate of stdout; other end held by the test's runner",
        "{duplicate:#?}"
    );
    // Whether seen running or as a zombie, a child is named by its program.
    let exiting = record(&report, "field-cases::cases", "child_exiting_as_the_test_ends_leaks");
    let program: Vec<String> = children(exiting).iter().map(|child| leakcheck::shape::program_of(child.0)).collect();
    assert_eq!(program, ["true"]);
}

#[test]
fn an_unknown_test_target_or_test_argument_is_a_usage_error_that_names_it() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "leaky", "--test", "nosuch"]));
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("no target `nosuch` for --test in this workspace"), "{}", run.stderr);
    assert!(run.stderr.contains("leaks, outcomes"), "{}", run.stderr);
    assert!(!run.stderr.contains("the build failed"), "{}", run.stderr);
    let run = run_to_end(leakcheck(&["-p", "leaky", "--", "--frobnicate"]));
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("the test binaries do not take `--frobnicate`"), "{}", run.stderr);
    assert!(!run.stderr.contains("libtest-compatible"), "{}", run.stderr);
}

#[test]
fn cargos_own_flags_pass_through_and_what_cannot_be_honoured_is_refused() {
    let _serial = serial();
    let flags = ["--locked", "--offline", "--frozen", "--config", "net.retry=2", "--color", "never"];
    let run = run_to_end(leakcheck(&[&["-p", "leaky", "--list", "-v"][..], &flags[..]].concat()));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let commands: Vec<&str> =
        run.stderr.lines().filter(|line| line.contains("cargo metadata ") || line.contains("cargo test ")).collect();
    assert_eq!(commands.len(), 2, "{}", run.stderr);
    for command in commands {
        assert!(command.contains("--locked --offline --frozen --config net.retry=2 --color never"), "{command}");
    }
    assert!(run.stdout.contains("leaky::leaks fd::forgotten_file"), "{}", run.stdout);

    // A file of ours given the old way is named, not handed to cargo.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[profile.default]\ngrace = \"1s\"\n").unwrap();
    let path = config.path().to_str().unwrap();
    let run = run_to_end(leakcheck(&["-p", "leaky", "--list", "--config", path]));
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("give it with --config-file {path}")), "{}", run.stderr);
    let run = run_to_end(leakcheck(&["-p", "leaky", "--list", "--config-file", path]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    // Tests built for another machine cannot run here.
    let run = run_to_end(leakcheck(&["-p", "leaky", "--list", "--target", "riscv64gc-unknown-linux-gnu"]));
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--target riscv64gc-unknown-linux-gnu: cargo-leakcheck runs the tests it builds"));
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

/// `--isolate` (one process per test, no batches) gives the same verdicts
/// as the default batches, singletons included.
#[test]
fn isolate_gives_the_expected_verdicts_with_no_batch() {
    let _serial = serial();
    let packages = ["clean", "leaky", "faults", "singletons", "heap-leaks", "harnessed", "files"];
    let mut args = vec!["--isolate", "--no-fail-fast", "--message-format", "json", "-v"];
    for package in packages {
        args.extend(["-p", package]);
    }
    let run = run_to_end(leakcheck(&args));
    remove_files_left_outside();
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let binaries: std::collections::BTreeSet<&str> = report.tests.iter().map(|test| test.binary.as_str()).collect();
    let expected: Vec<String> = expected_outcomes()
        .into_iter()
        .filter(|line| binaries.contains(line.split(' ').next().unwrap_or_default()))
        .collect();
    assert!(expected.len() > 80, "{expected:?}");
    let actual: Vec<String> = report.tests.iter().map(verdict_line).collect();
    assert_eq!(actual, expected);
    // No batch ran: the heap check ran each binary's tests together instead.
    assert!(!run.stderr.contains("in a batch"), "{}", run.stderr);
    assert!(!run.stderr.contains("        Batch "), "{}", run.stderr);
}
