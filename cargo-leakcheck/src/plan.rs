//! Flags and configuration file -> what this run does. Flags win over the
//! selected profile, which falls back to `profile.default`, then to the
//! built-in defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::baseline::Baseline;
use crate::cli::LeakcheckArgs;
use crate::config::{self, Profile, SingletonRule};
use crate::errors::RunError;
use crate::policy::Policy;

/// Built-in settling grace.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_millis(200);
/// Built-in per-test time limit.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The run, decided.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) grace: Duration,
    pub(crate) timeout: Duration,
    pub(crate) jobs: usize,
    pub(crate) fail_fast: bool,
    /// One process per test: `--isolate` or `isolate = true` (`--batch` wins
    /// over the file).
    pub(crate) isolate: bool,
    /// Repeat mode's measured runs, for tests with leakcheck code in them.
    pub(crate) repeat: Option<u32>,
    pub(crate) policy: Policy,
    /// fd, thread, child: whether singletons of that kind are detected (and
    /// pass) rather than failing every test that touches them.
    pub(crate) detect_singletons: [bool; 3],
    /// The configuration file read, if any.
    pub(crate) config: Option<PathBuf>,
    /// The heap check of plain tests (LeakSanitizer's runtime preloaded).
    pub(crate) heap: HeapMode,
}

/// Whether plain tests get their heap checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeapMode {
    /// `--no-heap`, `check-heap = false`, or the heap kind `off`.
    Off,
    /// The default: checked when a runtime is found; when none is, said once.
    Auto,
    /// `--heap` or `check-heap = true`: no runtime is an error.
    Required,
}

/// Reads the configuration (if any) and merges it with the flags.
pub(crate) fn make(args: &LeakcheckArgs, workspace_root: &std::path::Path) -> Result<Plan, RunError> {
    refuse_our_file_as_cargo_config(&args.cargo_config)?;
    let config = config::locate(args.config_file.as_deref(), workspace_root);
    let profile = match &config {
        Some(path) => config::load(path, &args.profile)?,
        None if args.profile == "default" || args.profile == "ci" => Profile::default(),
        None => {
            return Err(RunError::UsageMessage(format!(
                "--profile {} needs a configuration file (.config/leakcheck.toml, or --config-file PATH)",
                args.profile
            )))
        }
    };
    let baseline = args.baseline.as_deref().map(Baseline::load).transpose()?;
    let jobs = args
        .jobs
        .or(profile.jobs)
        .map(usize::from)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok(Plan {
        grace: args.grace.or(profile.grace).unwrap_or(DEFAULT_GRACE),
        timeout: args.timeout.or(profile.timeout).unwrap_or(DEFAULT_TIMEOUT),
        jobs,
        fail_fast: !args.no_fail_fast && profile.fail_fast.unwrap_or(true),
        isolate: args.isolate || (!args.batch && profile.isolate == Some(true)),
        repeat: args.repeat.or(profile.repeat),
        detect_singletons: {
            // Children are not told apart unless asked: in a group run, a
            // later test's runtime may reap an earlier test's child (tokio
            // does), which counts cannot tell from a singleton.
            let defaults = [SingletonRule::Pass, SingletonRule::Pass, SingletonRule::Fail];
            let mut detect = [false; 3];
            for (kind, rule) in profile.singletons.iter().enumerate() {
                detect[kind] = !args.fail_singletons && rule.unwrap_or(defaults[kind]) == SingletonRule::Pass;
            }
            detect
        },
        heap: if args.no_heap || profile.kinds[3] == Some(config::Severity::Off) {
            HeapMode::Off
        } else if args.heap || profile.check_heap == Some(true) {
            HeapMode::Required
        } else if profile.check_heap == Some(false) {
            HeapMode::Off
        } else {
            HeapMode::Auto
        },
        policy: Policy::new(profile.kinds, profile.allow, baseline),
        config,
    })
}

/// `--config` is cargo's flag now (KEY=VALUE, or a cargo config file); our
/// file is `--config-file`. A `--config PATH` naming a file of ours (one our
/// loader reads) is the old spelling: say so rather than hand it to cargo.
fn refuse_our_file_as_cargo_config(values: &[String]) -> Result<(), RunError> {
    for value in values.iter().filter(|value| !value.contains('=')) {
        let path = std::path::Path::new(value);
        if path.is_file() && config::load(path, "default").is_ok() {
            return Err(RunError::UsageMessage(format!(
                "--config {value} is a cargo-leakcheck configuration file: give it with --config-file {value} \
                 (--config now passes KEY=VALUE to cargo, as cargo's own flag does)"
            )));
        }
    }
    Ok(())
}
