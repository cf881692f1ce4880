//! The heap of unmodified tests, checked by default: LeakSanitizer's runtime
//! preloaded (first into each binary's tests run together, then into each
//! test of a binary that leaked). Each heap leak of the fixture is asserted
//! with its bytes and the line that allocated it; the tricky clean tests
//! (caches, statics, thread-locals, a runtime, output, a panic, children)
//! pass; a binary with its own allocator is said to be unchecked.

mod support;

use leakcheck::{Leak, Outcome, TestRecord};
use support::*;

/// (bytes, blocks, indirect, allocation line in tests/leaks.rs) of each
/// heap leak, largest direct first.
fn heap(record: &TestRecord) -> Vec<(u64, u64, bool, Option<u32>)> {
    record
        .leaks
        .iter()
        .filter_map(|leak| match leak {
            Leak::Heap { bytes, blocks, indirect, sites } => {
                let line =
                    sites.first().filter(|site| site.location.starts_with("tests/leaks.rs:")).and_then(|s| s.line);
                Some((*bytes, *blocks, *indirect, line))
            }
            _ => None,
        })
        .collect()
}

/// The 1-based line of tests/leaks.rs holding `needle`.
fn line_of(needle: &str) -> Option<u32> {
    let source = std::fs::read_to_string(fixtures().join("heap/tests/leaks.rs")).unwrap();
    source.lines().position(|line| line.contains(needle)).map(|index| index as u32 + 1)
}

#[test]
fn every_heap_leak_is_named_with_its_bytes_and_line_and_clean_tests_pass() {
    let _serial = serial();
    // On by default: no flag.
    let run = run_to_end(leakcheck(&["-p", "heap-leaks", "--no-fail-fast", "--message-format", "json"]));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let binary = "heap-leaks::leaks";
    let leaked = |name: &str| {
        let test = record(&report, binary, name);
        assert_outcome(test, Outcome::Leaked);
        assert!(test.leaks.iter().all(|leak| matches!(leak, Leak::Heap { .. })), "{test:#?}");
        heap(test)
    };
    assert_eq!(leaked("forgotten_vec_leaks"), [(4096, 1, false, line_of("vec![7u8; 4096]"))]);
    assert_eq!(leaked("box_into_raw_leaks"), [(128, 1, false, line_of("Box::into_raw"))]);
    assert_eq!(
        leaked("discarded_box_leak_leaks"),
        [(24, 1, false, line_of("Box::leak(Box::new")), (2400, 1, true, line_of("numbers.push"))]
    );
    // A cycle is reachable only from itself: both blocks are indirect.
    let mut cycle = leaked("rc_cycle_leaks");
    cycle.sort();
    assert_eq!(
        cycle,
        [(136, 1, true, line_of("let first = Rc::new")), (136, 1, true, line_of("let second = Rc::new"))]
    );
    assert_eq!(leaked("vec_forgotten_on_a_joined_thread_leaks"), [(777, 1, false, line_of("vec![0u8; 777]"))]);
    assert!(line_of("vec![7u8; 4096]").is_some());

    for clean in [
        "once_lock_cache_is_clean",
        "registry_in_a_static_is_clean",
        "box_leak_kept_in_a_static_is_clean",
        "thread_local_buffer_is_clean",
        "tokio_runtime_built_and_dropped_is_clean",
        "two_thousand_lines_of_output_are_clean",
        "should_panic_is_clean",
        // Asserts its children's exit status and output are untouched.
        "children_are_undisturbed",
        // Asserts its children map no runtime.
        "children_run_without_the_runtime",
    ] {
        let test = record(&report, binary, clean);
        assert_outcome(test, Outcome::Passed);
        assert!(test.unchecked.is_empty(), "{test:#?}");
    }

    // Fails preloaded, passes without: that pass is its verdict, said so.
    let preloaded_only = record(&report, binary, "fails_only_when_preloaded");
    assert_outcome(preloaded_only, Outcome::Passed);
    assert_eq!(preloaded_only.unchecked, ["heap"]);
    let note = "failed only with the heap runtime preloaded; run again without it";
    assert!(preloaded_only.message.as_deref().unwrap_or_default().contains(note), "{preloaded_only:#?}");
    assert!(
        run.stderr.contains(&format!("Heap heap-leaks::leaks fails_only_when_preloaded: {note}")),
        "{}",
        run.stderr
    );

    // Its own #[global_allocator]: said once, and its test is unchecked.
    let own = record(&report, "heap-leaks::own_allocator", "heap_not_checked_here");
    assert_outcome(own, Outcome::Passed);
    assert_eq!(own.unchecked, ["heap"]);
    let notes: Vec<&str> = run.stderr.lines().filter(|line| line.contains("heap not checked in")).collect();
    assert_eq!(notes.len(), 1, "{}", run.stderr);
    assert!(notes[0].contains("heap-leaks::own_allocator") && notes[0].contains("#[global_allocator]"), "{notes:?}");
}

#[test]
fn with_no_heap_the_same_tests_pass_and_no_runtime_is_loaded() {
    let _serial = serial();
    let run = run_to_end(leakcheck(&["-p", "heap-leaks", "--test", "leaks", "--no-heap", "--message-format", "json"]));
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(!run.stderr.contains("LeakSanitizer"), "{}", run.stderr);
    let report = run.report();
    let forgotten = record(&report, "heap-leaks::leaks", "forgotten_vec_leaks");
    assert_outcome(forgotten, Outcome::Passed);
}

#[test]
fn heap_rules_accept_a_leak_and_kinds_off_turns_the_check_off() {
    let _serial = serial();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[profile.default]\n[[profile.default.allow]]\nkind = \"heap\"\ntests = \"forgotten_vec_leaks\"\nbytes = 4096\nreason = \"a buffer kept for the process\"\n\
         [[profile.default.allow]]\nkind = \"heap\"\nsite = \"*::discarded_box_leak_leaks\"\nreason = \"leaked on purpose\"\n\
         [profile.off]\nkinds = { heap = \"off\" }\n",
    )
    .unwrap();
    let path = config.path().to_str().unwrap();
    let filter = [
        "-p",
        "heap-leaks",
        "--test",
        "leaks",
        "--heap",
        "--no-fail-fast",
        "--config-file",
        path,
        "--message-format",
        "json",
    ];
    let tests = ["--", "forgotten_vec_leaks", "box_into_raw_leaks", "discarded_box_leak_leaks"];
    let run = run_to_end(leakcheck(&[&filter[..], &tests[..]].concat()));
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let accepted = record(&report, "heap-leaks::leaks", "forgotten_vec_leaks");
    assert_outcome(accepted, Outcome::Passed);
    assert_eq!(accepted.allowed.len(), 1, "{accepted:#?}");
    assert_outcome(record(&report, "heap-leaks::leaks", "box_into_raw_leaks"), Outcome::Leaked);
    // By site: both groups of the test were allocated in its own function.
    let by_site = record(&report, "heap-leaks::leaks", "discarded_box_leak_leaks");
    assert_outcome(by_site, Outcome::Passed);
    assert_eq!(by_site.allowed.len(), 2, "{by_site:#?}");

    let run = run_to_end(leakcheck(&[&filter[..], &["--profile", "off", "--", "box_into_raw_leaks"]].concat()));
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(!run.stderr.contains("Heap checked"), "{}", run.stderr);
}

#[test]
fn heap_without_a_runtime_is_a_usage_error() {
    let _serial = serial();
    let mut command = leakcheck(&["-p", "heap-leaks", "--test", "leaks", "--heap"]);
    command.env("LEAKCHECK_HEAP_RUNTIME", "/nonexistent/libasan.so");
    let run = run_to_end(command);
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("LEAKCHECK_HEAP_RUNTIME=/nonexistent/libasan.so names no file"), "{}", run.stderr);
    assert_eq!(run.stderr.matches("error").count(), 1, "{}", run.stderr);
}

#[test]
fn the_nextest_wrapper_checks_the_heap_with_heap() {
    if !nextest_available() {
        return;
    }
    let _serial = serial();
    let config = nextest_wrapper_config(&["--heap"]);
    let output = nextest_run_in_fixtures(config.path())
        .args(["-p", "heap-leaks", "--test", "leaks"])
        .args(["-E", "test(=forgotten_vec_leaks) | test(=once_lock_cache_is_clean) | test(=children_are_undisturbed)"])
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(100), "{all}");
    assert!(all.contains("3 tests run: 2 passed, 1 failed"), "{all}");
    assert!(all.contains("leaked heap: 4096 bytes in 1 block"), "{all}");
    assert!(all.contains("allocated at tests/leaks.rs:"), "{all}");
}

#[test]
fn a_binary_whose_tests_leak_no_heap_together_runs_them_without_the_runtime() {
    let _serial = serial();
    // One job: each binary's tests in one batch.
    let args = ["-p", "clean", "-p", "heap-leaks", "--test", "clean", "--test", "leaks", "-v", "-j", "1"];
    let run = run_to_end(leakcheck(&args));
    assert_eq!(run.code, Some(100), "{}", run.stderr);
    assert!(run.stderr.contains("Heap clean::clean (12 tests in a batch): no heap leak"), "{}", run.stderr);
    let leaked = run.stderr.lines().find(|line| line.contains("Heap heap-leaks::leaks (15 tests in a batch): "));
    assert!(leaked.is_some_and(|line| line.ends_with("leaked, heap checked test by test")), "{}", run.stderr);
    // One process per test: the heap filter runs each binary's tests
    // together first.
    let run = run_to_end(leakcheck(&["-p", "clean", "--test", "clean", "-v", "--isolate"]));
    assert!(run.stderr.contains("Heap clean::clean (12 tests together): no heap leak"), "{}", run.stderr);
}
