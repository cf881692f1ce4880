//! `.config/leakcheck.toml`: profiles (grace, timeout, jobs, fail-fast, what
//! each kind of leak does) and allow rules with reasons.
//!
//! ```toml
//! [profile.default]
//! grace = "200ms"
//! timeout = "120s"
//! jobs = 4
//! fail-fast = true
//! check-heap = true     # false: as --no-heap (default: on when a runtime is found)
//! kinds = { fd = "fail", thread = "fail", child = "fail", heap = "warn", file = "fail" }
//!
//! [profile.ci]          # unset keys fall back to profile.default
//! timeout = "60s"
//!
//! [[allow]]             # every profile
//! kind = "thread"
//! name = "tokio-*"      # fd: target (and/or detail), thread: name, child: cmdline, heap: bytes and/or site, file: path
//! tests = "server::*"   # optional glob on the test name (or "binary test")
//! max = 4               # optional, per test
//! reason = "the shared runtime is started once per process"
//! ```
//!
//! Unknown keys and bad values are errors that name file, line and column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use leakcheck::LeakKind;

use crate::duration::parse_duration;
use crate::errors::ConfigError;

/// What a leak of one kind does to its test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    /// The test is `leaked` (the default).
    Fail,
    /// The leak is reported as a warning; the test's outcome is unchanged.
    Warn,
    /// The kind is not reported at all.
    Off,
}

/// A duration written as a string: "500ms", "2s".
#[derive(Debug, Clone, Copy)]
struct DurationValue(Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(DurationValue).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    profile: BTreeMap<String, ProfileFile>,
    #[serde(default)]
    allow: Vec<Spanned<AllowFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ProfileFile {
    grace: Option<DurationValue>,
    timeout: Option<DurationValue>,
    jobs: Option<u16>,
    fail_fast: Option<bool>,
    repeat: Option<u32>,
    check_heap: Option<bool>,
    isolate: Option<bool>,
    kinds: Option<KindsFile>,
    singletons: Option<SingletonsFile>,
    #[serde(default)]
    allow: Vec<Spanned<AllowFile>>,
}

/// What a process-wide singleton does to the tests that touch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SingletonRule {
    /// Detected, reported once, not a leak of any test (the default).
    Pass,
    /// Not told apart: a leak of every test that touches it.
    Fail,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct SingletonsFile {
    fd: Option<SingletonRule>,
    thread: Option<SingletonRule>,
    child: Option<SingletonRule>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindsFile {
    fd: Option<Severity>,
    thread: Option<Severity>,
    child: Option<Severity>,
    heap: Option<Severity>,
    file: Option<Severity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    kind: LeakKind,
    tests: Option<String>,
    target: Option<String>,
    detail: Option<String>,
    name: Option<String>,
    #[serde(rename = "waiting-in")]
    waiting_in: Option<String>,
    cmdline: Option<String>,
    path: Option<String>,
    bytes: Option<u64>,
    site: Option<String>,
    max: Option<usize>,
    reason: String,
}

/// One allow rule, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowRule {
    pub(crate) kind: LeakKind,
    /// Glob on the test name, or on "binary test".
    pub(crate) tests: Option<String>,
    /// Glob on the fd target, thread name, child command line or (heap) an
    /// allocation site's `file:line` or function.
    pub(crate) pattern: Option<String>,
    /// For fds: glob on the description ("unix stream (connected, unnamed)").
    pub(crate) detail: Option<String>,
    /// For threads: glob on the kernel function it waits in (`futex_*`).
    pub(crate) waiting_in: Option<String>,
    /// For the heap: growth accepted, in bytes.
    pub(crate) bytes: Option<u64>,
    /// Leaks accepted per test.
    pub(crate) max: Option<usize>,
    pub(crate) reason: String,
    /// `file:line` of the rule, for reports.
    pub(crate) origin: String,
}

/// The selected profile, resolved (`None`: not set, the built-in default applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Profile {
    pub(crate) grace: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) jobs: Option<u16>,
    pub(crate) fail_fast: Option<bool>,
    /// `check-heap`: preload the heap runtime into plain tests (`--heap`).
    pub(crate) check_heap: Option<bool>,
    /// `isolate`: one process per test, no batches (`--isolate`).
    pub(crate) isolate: Option<bool>,
    pub(crate) repeat: Option<u32>,
    /// Per [`LeakKind`], by its index.
    pub(crate) kinds: [Option<Severity>; 5],
    /// fd, thread, child: what a singleton of that kind does.
    pub(crate) singletons: [Option<SingletonRule>; 3],
    pub(crate) allow: Vec<AllowRule>,
}

fn unknown_profile(file: &ConfigFile, path: &Path, name: &str) -> ConfigError {
    let mut known: Vec<&str> = file.profile.keys().map(String::as_str).collect();
    for builtin in ["default", "ci"] {
        if !known.contains(&builtin) {
            known.push(builtin);
        }
    }
    ConfigError::UnknownProfile { path: path.to_owned(), name: name.to_owned(), known: known.join(", ") }
}

/// One allow rule of the file, checked: the key that matches its kind, and
/// a reason.
fn check_rule(rule: &AllowFile, origin: String) -> Result<AllowRule, String> {
    let expected: &[&str] = match rule.kind {
        LeakKind::Fd => &["target"],
        LeakKind::Thread => &["name"],
        LeakKind::Child => &["cmdline"],
        LeakKind::Heap => &["bytes", "site"],
        LeakKind::File => &["path"],
    };
    let given: Vec<&str> = [
        ("target", rule.target.is_some()),
        ("name", rule.name.is_some()),
        ("cmdline", rule.cmdline.is_some()),
        ("path", rule.path.is_some()),
        ("bytes", rule.bytes.is_some()),
        ("site", rule.site.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(key, _)| key)
    .collect();
    if let Some(wrong) = given.iter().find(|key| !expected.contains(key)) {
        return Err(format!(
            "an allow rule of kind `{}` matches with `{}`, not `{wrong}`",
            rule.kind.as_str(),
            expected.join("` and `")
        ));
    }
    if rule.detail.is_some() && rule.kind != LeakKind::Fd {
        return Err("`detail` matches the description of an fd; use it with kind = \"fd\"".into());
    }
    if rule.waiting_in.is_some() && rule.kind != LeakKind::Thread {
        return Err("`waiting-in` matches what a thread waits in; use it with kind = \"thread\"".into());
    }
    if rule.max.is_some() && rule.kind == LeakKind::Heap {
        return Err("`max` counts fds, threads, children or files; the heap takes `bytes`".into());
    }
    if rule.reason.trim().is_empty() {
        return Err("`reason` must say why this leak is accepted".into());
    }
    Ok(AllowRule {
        kind: rule.kind,
        tests: rule.tests.clone(),
        pattern: rule
            .target
            .clone()
            .or_else(|| rule.name.clone())
            .or_else(|| rule.cmdline.clone())
            .or_else(|| rule.path.clone())
            .or_else(|| rule.site.clone()),
        detail: rule.detail.clone(),
        waiting_in: rule.waiting_in.clone(),
        bytes: rule.bytes,
        max: rule.max,
        reason: rule.reason.clone(),
        origin,
    })
}

/// fd, thread, child: the chosen profile's singleton rules over the default's.
fn singleton_rules(chosen: &ProfileFile, base: &ProfileFile) -> [Option<SingletonRule>; 3] {
    let pick = |f: fn(&SingletonsFile) -> Option<SingletonRule>| {
        chosen.singletons.and_then(|s| f(&s)).or_else(|| base.singletons.and_then(|s| f(&s)))
    };
    [pick(|s| s.fd), pick(|s| s.thread), pick(|s| s.child)]
}

/// Where the config is: `--config-file PATH`, else `.config/leakcheck.toml` in
/// the workspace root if it exists.
pub(crate) fn locate(explicit: Option<&Path>, workspace_root: &Path) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_owned()),
        // Anything at that path is meant as the config: a directory or a
        // device there is an error when loaded, never silently no config.
        None => Some(workspace_root.join(".config/leakcheck.toml")).filter(|path| path.symlink_metadata().is_ok()),
    }
}

/// Reads `path` and resolves profile `name` (over `profile.default`).
pub(crate) fn load(path: &Path, name: &str) -> Result<Profile, ConfigError> {
    let text = crate::input::read_text(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(&text, path, name)
}

fn parse(text: &str, path: &Path, name: &str) -> Result<Profile, ConfigError> {
    let invalid = |span: Option<std::ops::Range<usize>>, message: String| {
        let (line, column) = line_column(text, span.map_or(0, |span| span.start));
        ConfigError::Invalid { path: path.to_owned(), line, column, message }
    };
    let file: ConfigFile = toml::from_str(text).map_err(|error| invalid(error.span(), error.message().to_owned()))?;
    if name != "default" && name != "ci" && !file.profile.contains_key(name) {
        return Err(unknown_profile(&file, path, name));
    }
    let empty = ProfileFile::default();
    let base = file.profile.get("default").unwrap_or(&empty);
    let chosen = file.profile.get(name).unwrap_or(&empty);
    let pick = |f: fn(&ProfileFile) -> Option<Severity>| f(chosen).or_else(|| f(base));
    let mut profile = Profile {
        grace: chosen.grace.or(base.grace).map(|d| d.0),
        timeout: chosen.timeout.or(base.timeout).map(|d| d.0),
        jobs: chosen.jobs.or(base.jobs),
        fail_fast: chosen.fail_fast.or(base.fail_fast),
        check_heap: chosen.check_heap.or(base.check_heap),
        isolate: chosen.isolate.or(base.isolate),
        repeat: chosen.repeat.or(base.repeat),
        kinds: [
            pick(|p| p.kinds.and_then(|k| k.fd)),
            pick(|p| p.kinds.and_then(|k| k.thread)),
            pick(|p| p.kinds.and_then(|k| k.child)),
            pick(|p| p.kinds.and_then(|k| k.heap)),
            pick(|p| p.kinds.and_then(|k| k.file)),
        ],
        singletons: singleton_rules(chosen, base),
        allow: Vec::new(),
    };
    if profile.jobs == Some(0) {
        return Err(invalid(None, "`jobs` must be at least 1".into()));
    }
    if profile.timeout == Some(Duration::ZERO) {
        return Err(invalid(None, "`timeout` must be more than zero: every test would be killed as it starts".into()));
    }
    if profile.repeat == Some(0) {
        return Err(invalid(None, "`repeat` must be at least 1".into()));
    }
    // Rules add up: top level, then profile.default, then the chosen profile.
    let mut rules: Vec<&Spanned<AllowFile>> = file.allow.iter().collect();
    rules.extend(base.allow.iter());
    if name != "default" {
        rules.extend(chosen.allow.iter());
    }
    for rule in rules {
        let span = rule.span();
        let (line, _) = line_column(text, span.start);
        // Relative to where the run started, when the file is below it.
        let shown = std::env::current_dir().ok().and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_owned));
        let shown = shown.as_deref().unwrap_or(path);
        let checked = check_rule(rule.get_ref(), format!("{}:{line}", shown.display()))
            .map_err(|message| invalid(Some(span), message))?;
        profile.allow.push(checked);
    }
    Ok(profile)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |last| last.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str, profile: &str) -> Profile {
        parse(text, Path::new("leakcheck.toml"), profile).unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("leakcheck.toml"), "default").unwrap_err().to_string()
    }

    #[test]
    fn profiles_fall_back_to_default() {
        let text = r#"
[profile.default]
grace = "300ms"
timeout = "90s"
isolate = true
kinds = { heap = "warn" }

[profile.ci]
timeout = "30s"
kinds = { fd = "off" }

[profile.quick]
isolate = false
"#;
        let ci = parse_ok(text, "ci");
        assert_eq!(ci.isolate, Some(true));
        assert_eq!(parse_ok(text, "quick").isolate, Some(false));
        assert_eq!(ci.grace, Some(Duration::from_millis(300)));
        assert_eq!(ci.timeout, Some(Duration::from_secs(30)));
        assert_eq!(ci.kinds, [Some(Severity::Off), None, None, Some(Severity::Warn), None]);
        assert_eq!(parse_ok(text, "default").timeout, Some(Duration::from_secs(90)));
    }

    #[test]
    fn singleton_rules_are_per_kind_and_fall_back_to_default() {
        let text = r#"
[profile.default]
singletons = { thread = "fail" }

[profile.ci]
singletons = { fd = "fail" }
"#;
        let ci = parse_ok(text, "ci");
        assert_eq!(ci.singletons, [Some(SingletonRule::Fail), Some(SingletonRule::Fail), None]);
        assert_eq!(parse_ok(text, "default").singletons, [None, Some(SingletonRule::Fail), None]);
        assert!(parse("[profile.default]\nsingletons = { fd = \"maybe\" }\n", Path::new("l.toml"), "default").is_err());
    }

    #[test]
    fn rules_add_up_and_remember_their_line() {
        let text = r#"
[[allow]]
kind = "thread"
name = "tokio-*"
reason = "shared runtime"

[[profile.ci.allow]]
kind = "heap"
bytes = 4096
reason = "caches"
"#;
        let ci = parse_ok(text, "ci");
        assert_eq!(ci.allow.len(), 2);
        assert_eq!(ci.allow[0].pattern.as_deref(), Some("tokio-*"));
        assert_eq!(ci.allow[0].origin, "leakcheck.toml:2");
        assert_eq!(ci.allow[1].bytes, Some(4096));
        assert_eq!(parse_ok(text, "default").allow.len(), 1);
    }

    #[test]
    fn mistakes_name_file_line_and_column() {
        assert_eq!(
            parse_err("[profile.default]\ntimout = \"5s\"\n"),
            "leakcheck.toml:2:1: unknown field `timout`, expected one of `grace`, `timeout`, `jobs`, `fail-fast`, `repeat`, `check-heap`, `isolate`, `kinds`, `singletons`, `allow`"
        );
        assert_eq!(
            parse_err("[profile.default]\ngrace = \"soon\"\n"),
            "leakcheck.toml:2:9: `soon` is not a duration (examples: 90s, 500ms, 2m)"
        );
        assert!(parse_err("[profile.default]\nkinds = { fd = \"loud\" }\n")
            .starts_with("leakcheck.toml:2:16: unknown variant `loud`"));
        assert!(parse_err("[[allow]]\nkind = \"thread\"\nname = \"x\"\n")
            .starts_with("leakcheck.toml:1:1: missing field `reason`"));
        assert_eq!(
            parse_err("[[allow]]\nkind = \"fd\"\nname = \"x\"\nreason = \"r\"\n"),
            "leakcheck.toml:1:1: an allow rule of kind `fd` matches with `target`, not `name`"
        );
        assert_eq!(
            parse_err("[[allow]]\nkind = \"thread\"\ndetail = \"x\"\nreason = \"r\"\n"),
            "leakcheck.toml:1:1: `detail` matches the description of an fd; use it with kind = \"fd\""
        );
        assert_eq!(
            parse(r#"[profile.nightly]"#, Path::new("leakcheck.toml"), "weekly").unwrap_err().to_string(),
            "leakcheck.toml: no profile `weekly` (profiles: nightly, default, ci)"
        );
    }
}
