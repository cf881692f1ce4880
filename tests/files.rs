//! Files a test leaves in its private temp dir: named exactly, in every way
//! in, and removed after the run whatever the tests did.

mod support;

use leakcheck::{Leak, Outcome, TestRecord};
use support::*;

/// (path, type, bytes, entries) of each file leak of `record`.
fn files(record: &TestRecord) -> Vec<(&str, &str, u64, Option<u64>)> {
    record
        .leaks
        .iter()
        .filter_map(|leak| match leak {
            Leak::File { path, file_type, bytes, entries, .. } => {
                Some((path.as_str(), file_type.as_str(), *bytes, *entries))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn each_file_left_is_named_and_nothing_is_left_on_disk() {
    let _serial = serial();
    // The tool's own temp dir: its scratch, and every test's TMPDIR in it.
    let temp = tempfile::tempdir().unwrap();
    let mut command = leakcheck(&["-p", "files", "--no-fail-fast", "--message-format", "json"]);
    command.env("TMPDIR", temp.path());
    let run = run_to_end(command);
    // Made outside the temp dir, reported, never removed by the tool.
    assert_eq!(remove_files_left_outside(), 4, "{}", run.stderr);
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let left = "files::left_behind";

    let outside = record(&report, left, "fixed_path_outside_the_temp_dir_never_removed");
    let [(path, "file", 5, None)] = files(outside)[..] else { panic!("{outside:#?}") };
    assert!(path.starts_with("/tmp/leakcheck-files-fixture-") && path.ends_with(".db"), "{path}");
    let package = record(&report, left, "file_left_in_the_package_dir");
    let [(path, "file", 1, None)] = files(package)[..] else { panic!("{package:#?}") };
    let expected_dir = fixtures().join("files").canonicalize().unwrap();
    assert!(std::path::Path::new(path).starts_with(&expected_dir), "{path}");
    let bound = record(&report, left, "unix_socket_bound_outside_the_temp_dir");
    let [(path, "socket", 0, None)] = files(bound)[..] else { panic!("{bound:#?}") };
    assert!(std::path::Path::new(path).starts_with(&expected_dir) && path.ends_with(".sock"), "{path}");

    let persisted = record(&report, left, "persisted_named_temp_file");
    assert_outcome(persisted, Outcome::Leaked);
    let [(path, "file", 12, None)] = files(persisted)[..] else { panic!("{persisted:#?}") };
    assert!(path.starts_with(".tmp") && !path.contains('/'), "{path}");

    let forgotten = record(&report, left, "forgotten_temp_dir_with_two_files");
    let [(path, "dir", 5, Some(2))] = files(forgotten)[..] else { panic!("{forgotten:#?}") };
    assert!(path.starts_with("cache-"), "{path}");

    let fixed = record(&report, left, "fixed_name_in_temp_dir_never_removed");
    assert_eq!(files(fixed), [("app-state.db", "file", 4096, None)]);
    let socket = record(&report, left, "unix_socket_file_left_bound");
    assert_eq!(files(socket), [("server.sock", "socket", 0, None)]);
    // Judged at its own end: the next test removing the file does not help.
    let shared = record(&report, left, "shared_a_makes_a_file_another_test_removes");
    assert_eq!(files(shared), [("shared.lock", "file", 0, None)]);
    assert_outcome(record(&report, left, "shared_b_removes_the_file_if_it_is_there"), Outcome::Passed);
    for leaky in [persisted, forgotten, fixed, socket, shared] {
        assert_eq!(leaky.leaks.len(), 1, "{leaky:#?}");
    }

    // The harness gives each forked test a temp dir of its own.
    let harness = record(&report, "files::checked", "harness_leaves_a_report");
    assert_eq!(files(harness), [("report.txt", "file", 7, None)]);
    let allowed = record(&report, "files::checked", "harness_keeps_an_allowed_file");
    assert_outcome(allowed, Outcome::Passed);
    assert_eq!(allowed.allowed.len(), 1, "{allowed:#?}");
    assert_eq!(allowed.allowed[0].reason, "inspected after the run");
    // The attribute checks it from inside, with its own options.
    let attribute = record(&report, "files::attribute", "attribute_leaves_a_directory");
    assert_eq!(files(attribute), [("attribute-cache", "dir", 1, Some(1))]);
    assert_eq!(attribute.leaks.len(), 1, "{attribute:#?}");
    assert_outcome(record(&report, "files::attribute", "attribute_skips_files"), Outcome::Passed);
    let outside = record(&report, "files::attribute", "attribute_makes_a_file_outside");
    let [(path, "file", 1, None)] = files(outside)[..] else { panic!("{outside:#?}") };
    assert!(path.starts_with("/tmp/leakcheck-files-fixture-attribute-"), "{path}");

    // An empty directory is a warning, not a leak.
    let root = record(&report, left, "shared_root_left_empty");
    assert_outcome(root, Outcome::Passed);
    assert!(
        matches!(&root.warnings[..], [Leak::File { path, entries: Some(0), .. }] if path == "suite-root"),
        "{root:#?}"
    );

    for tidy in report.tests.iter().filter(|test| test.name.contains("tidy") || test.binary == "files::tidy") {
        assert_outcome(tidy, Outcome::Passed);
    }
    assert_eq!(report.tests.len(), 24);
    let on_disk: Vec<_> = std::fs::read_dir(temp.path()).unwrap().collect();
    assert!(on_disk.is_empty(), "left in the tool's temp dir: {on_disk:?}");
}

#[test]
fn file_rules_and_severities_come_from_the_configuration() {
    let _serial = serial();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[profile.default]\nkinds = { file = \"warn\" }\n\n[[allow]]\nkind = \"file\"\npath = \"*.db\"\nreason = \"the store is inspected\"\n",
    )
    .unwrap();
    let config_path = config.path().to_str().unwrap();
    let run = run_to_end(leakcheck(&[
        "-p",
        "files",
        "--test",
        "left_behind",
        "--config-file",
        config_path,
        "--message-format",
        "json",
    ]));
    remove_files_left_outside();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let report = run.report();
    // Severities come first: a warning is not matched against allow rules.
    let fixed = record(&report, "files::left_behind", "fixed_name_in_temp_dir_never_removed");
    assert_outcome(fixed, Outcome::Passed);
    assert_eq!(fixed.warnings.len(), 1, "{fixed:#?}");

    std::fs::write(config.path(), "[[allow]]\nkind = \"file\"\npath = \"*.db\"\nreason = \"the store is inspected\"\n")
        .unwrap();
    let run = run_to_end(leakcheck(&[
        "-p",
        "files",
        "--test",
        "left_behind",
        "--config-file",
        config_path,
        "--no-fail-fast",
        "--message-format",
        "json",
    ]));
    remove_files_left_outside();
    assert_eq!(run.code, Some(100), "stderr:\n{}", run.stderr);
    let report = run.report();
    let fixed = record(&report, "files::left_behind", "fixed_name_in_temp_dir_never_removed");
    assert_outcome(fixed, Outcome::Passed);
    assert_eq!(fixed.allowed[0].reason.split(" (").next(), Some("the store is inspected"));
    assert_outcome(record(&report, "files::left_behind", "unix_socket_file_left_bound"), Outcome::Leaked);

    std::fs::write(config.path(), "[[allow]]\nkind = \"file\"\ntarget = \"*.db\"\nreason = \"wrong key\"\n").unwrap();
    let run = run_to_end(leakcheck(&["-p", "files", "--config-file", config_path]));
    remove_files_left_outside();
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("an allow rule of kind `file` matches with `path`, not `target`"), "{}", run.stderr);
}
