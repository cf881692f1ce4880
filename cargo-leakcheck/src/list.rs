//! Asking each test binary for its tests: `--list --format terse`, with the
//! user's filters applied by libtest itself (so they mean what they mean
//! under `cargo test`).

use std::process::Stdio;
use std::sync::Arc;

use crate::cargo::TestBinary;
use crate::errors::RunError;
use crate::process;

/// One test to run (or to report as ignored).
#[derive(Debug, Clone)]
pub(crate) struct TestCase {
    pub(crate) binary: Arc<TestBinary>,
    /// Full libtest name, `module::test`.
    pub(crate) name: String,
    /// `#[ignore]`d and not asked for: reported, not run.
    pub(crate) ignored: bool,
    /// Position in the run, unique: names the test's processes.
    pub(crate) serial: usize,
}

/// How the user's `-- ARGS` split between listing and running.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    /// Filters and flags that choose tests (`NAME`, `--exact`, `--skip X`).
    pub(crate) list_args: Vec<String>,
    /// `--ignored` / `--include-ignored`, also given to each test run.
    pub(crate) ignored_mode: Option<String>,
}

impl Selection {
    /// Splits the TESTNAME filter and the arguments after `--`. Flags that
    /// cargo-leakcheck sets itself (output format, threads, capture) are dropped.
    pub(crate) fn new(filter: Option<&str>, test_args: &[String]) -> Selection {
        let mut selection = Selection::default();
        selection.list_args.extend(filter.map(str::to_owned));
        let mut args = test_args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--ignored" | "--include-ignored" => selection.ignored_mode = Some(arg.clone()),
                "--nocapture" | "--no-capture" | "--show-output" | "-q" | "--quiet" | "--list" => {}
                "--test-threads" | "--format" | "--color" | "--logfile" => {
                    args.next();
                }
                "--skip" => {
                    selection.list_args.push(arg.clone());
                    selection.list_args.extend(args.next().cloned());
                }
                other
                    if ["--test-threads=", "--format=", "--color=", "--logfile="]
                        .iter()
                        .any(|p| other.starts_with(p)) => {}
                _ => selection.list_args.push(arg.clone()),
            }
        }
        selection
    }

    /// Whether the whole-target test `name` is selected: with no positional
    /// filter, or a filter it contains (libtest's own rule); never in
    /// `--ignored` mode (it has no ignored tests) nor with `--exact` filters
    /// that are not its name.
    pub(crate) fn selects_whole(&self, name: &str) -> bool {
        let exact = self.list_args.iter().any(|arg| arg == "--exact");
        let matches = |filter: &str| if exact { name == filter } else { name.contains(filter) };
        let (mut filters, mut skipped) = (Vec::new(), false);
        let mut args = self.list_args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--skip" => skipped |= args.next().is_some_and(|skip| matches(skip)),
                flag if flag.starts_with('-') => {}
                filter => filters.push(filter),
            }
        }
        self.ignored_mode.as_deref() != Some("--ignored")
            && !skipped
            && (filters.is_empty() || filters.iter().any(|filter| matches(filter)))
    }

    /// The positional filters, for the "nothing matched" message.
    pub(crate) fn describe_filter(&self) -> Option<String> {
        let filters: Vec<&str> = self.list_args.iter().map(String::as_str).collect();
        (!filters.is_empty()).then(|| filters.join(" "))
    }
}

/// Lists the tests of every binary, in binary then libtest order.
pub(crate) fn list_tests(
    binaries: Vec<TestBinary>,
    selection: &Selection,
    verbose: bool,
) -> Result<Vec<TestCase>, RunError> {
    let mut cases = Vec::new();
    for binary in binaries {
        let binary = Arc::new(binary);
        if !binary.libtest {
            // Never listed: listing would run its tests. One test, whole.
            let name = whole_target_name(&binary);
            if selection.selects_whole(&name) {
                cases.push(TestCase { binary: binary.clone(), name, ignored: false, serial: cases.len() });
            }
            continue;
        }
        let listed = run_list(&binary, selection, selection.ignored_mode.as_deref(), verbose)?;
        // Without --ignored/--include-ignored, ignored tests are reported, not run.
        let ignored = match selection.ignored_mode {
            None => run_list(&binary, selection, Some("--ignored"), verbose)?,
            Some(_) => Vec::new(),
        };
        for name in listed {
            let ignored = ignored.contains(&name);
            cases.push(TestCase { binary: binary.clone(), name, ignored, serial: cases.len() });
        }
    }
    Ok(cases)
}

/// The one test of a target that does not speak libtest: its target name
/// (the part of the binary id after `::`, or the package for a library).
pub(crate) fn whole_target_name(binary: &TestBinary) -> String {
    let id = binary.id.as_str();
    id.rsplit_once("::").map_or(id, |(_, target)| target).to_owned()
}

fn run_list(
    binary: &TestBinary,
    selection: &Selection,
    ignored: Option<&str>,
    verbose: bool,
) -> Result<Vec<String>, RunError> {
    let mut command = process::helper(&binary.executable);
    command
        .args(["--list", "--format", "terse"])
        .args(ignored)
        .args(&selection.list_args)
        .current_dir(&binary.cwd)
        .envs(binary.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null());
    process::announce(&command, verbose);
    let command_line = process::display(&command);
    let failure = |status: String, stderr: String| RunError::ListTests {
        binary: binary.id.clone(),
        command: command_line.clone(),
        status,
        stderr,
    };
    let output = command.output().map_err(|error| failure(format!("could not start: {error}"), String::new()))?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim_end().to_owned();
    if !output.status.success() {
        // libtest refusing an argument the user gave after `--` is bad usage,
        // not a binary that does not speak libtest.
        if let Some(option) = stderr.lines().find_map(|line| line.strip_prefix("error: Unrecognized option: ")) {
            return Err(RunError::UnknownTestArgument { option: option.trim_matches('\'').to_owned() });
        }
        return Err(failure(format!("failed with {}", output.status), stderr));
    }
    parse_terse_list(&String::from_utf8_lossy(&output.stdout))
        .ok_or_else(|| failure("printed something other than a test list".into(), stderr))
}

/// Parses libtest's `--list --format terse`: `name: test` lines (benchmarks
/// are skipped). Other lines (a logger or a constructor printing at start-up)
/// are ignored when the output also has list lines; output with none at all
/// is not a test list (`None`), unless it is empty (a binary with no tests).
pub(crate) fn parse_terse_list(stdout: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let (mut listed, mut other) = (0, 0);
    for line in stdout.lines().filter(|line| !line.trim().is_empty()) {
        if let Some(name) = line.strip_suffix(": test") {
            names.push(name.to_owned());
            listed += 1;
        } else if line.strip_suffix(": benchmark").is_some() {
            listed += 1;
        } else {
            other += 1;
        }
    }
    (listed > 0 || other == 0).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terse_lists_parse_and_reject_other_output() {
        assert_eq!(
            parse_terse_list("a::b: test\nbench_x: benchmark\nc: test\n"),
            Some(vec!["a::b".to_owned(), "c".to_owned()])
        );
        assert_eq!(parse_terse_list(""), Some(vec![]));
        assert_eq!(parse_terse_list("Usage: my-harness [options]\n"), None);
        assert_eq!(parse_terse_list("INFO logger ready\na: test\n"), Some(vec!["a".to_owned()]));
    }

    #[test]
    fn selection_keeps_filters_and_drops_flags_we_own() {
        let args: Vec<String> =
            ["--exact", "--skip", "slow", "--test-threads", "4", "--include-ignored", "--nocapture", "--format=json"]
                .map(String::from)
                .to_vec();
        let selection = Selection::new(Some("fd::"), &args);
        assert_eq!(selection.list_args, ["fd::", "--exact", "--skip", "slow"]);
        assert_eq!(selection.ignored_mode.as_deref(), Some("--include-ignored"));
    }
}
