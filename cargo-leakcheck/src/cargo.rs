//! Asking cargo: the workspace (`cargo metadata`) and the test executables
//! (`cargo test --no-run --message-format=json-render-diagnostics`).

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use cargo_metadata::{Message, Metadata, MetadataCommand, Package, TargetKind};

use crate::errors::RunError;
use crate::process;
use crate::run::Supervisor;

/// One test executable and how to run it as `cargo test` would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TestBinary {
    /// nextest's name for it: `pkg`, `pkg::integration`, `pkg::bin/name`.
    pub(crate) id: String,
    pub(crate) executable: PathBuf,
    /// The package directory: tests run there, as under `cargo test`.
    pub(crate) cwd: PathBuf,
    /// `CARGO_MANIFEST_DIR`, `CARGO_PKG_*` and friends.
    pub(crate) env: Vec<(String, String)>,
    /// Built with `leakcheck::main!()`: it checks its own tests in-process
    /// (heap included) and reports them through the records protocol.
    pub(crate) harness: bool,
    /// Speaks libtest's protocol (see [`crate::targets`]); else it runs
    /// whole, as one test named by its target.
    pub(crate) libtest: bool,
    /// Built with libtest itself (not `harness = false`): each test runs on
    /// a thread of its own, so every write of the main thread to stdout is
    /// libtest's, which the batch engine relies on.
    pub(crate) std_harness: bool,
}

/// What to build, in cargo's own terms: the package, target and feature
/// selection and the profile, passed to `cargo test --no-run` as given.
#[derive(Debug, Clone, Default)]
pub(crate) struct CargoSelection {
    pub(crate) manifest_path: Option<PathBuf>,
    pub(crate) packages: Vec<String>,
    pub(crate) workspace: bool,
    pub(crate) exclude: Vec<String>,
    pub(crate) lib: bool,
    pub(crate) bins: Vec<String>,
    pub(crate) all_bins: bool,
    pub(crate) tests: Vec<String>,
    pub(crate) all_tests: bool,
    pub(crate) features: Vec<String>,
    pub(crate) all_features: bool,
    pub(crate) no_default_features: bool,
    pub(crate) release: bool,
    /// `--locked`, `--offline`, `--frozen`: given to every cargo command.
    pub(crate) locked: bool,
    pub(crate) offline: bool,
    pub(crate) frozen: bool,
    pub(crate) target_dir: Option<PathBuf>,
    /// `--target TRIPLE`, for the build.
    pub(crate) target: Option<String>,
    /// `--config KEY=VALUE|PATH`, `-Z FLAG`, `--color WHEN`: given to every
    /// cargo command.
    pub(crate) cargo_config: Vec<String>,
    pub(crate) unstable_flags: Vec<String>,
    pub(crate) color: Option<String>,
    /// Print each cargo command before running it.
    pub(crate) verbose: bool,
}

impl CargoSelection {
    /// The flags every cargo command takes: manifest options, configuration
    /// overrides, unstable flags, colour.
    fn global_flags(&self) -> Vec<String> {
        let mut flags: Vec<String> =
            [("--locked", self.locked), ("--offline", self.offline), ("--frozen", self.frozen)]
                .into_iter()
                .filter(|(_, set)| *set)
                .map(|(flag, _)| flag.to_owned())
                .collect();
        for value in &self.cargo_config {
            flags.extend(["--config".to_owned(), value.clone()]);
        }
        for flag in &self.unstable_flags {
            flags.extend(["-Z".to_owned(), flag.clone()]);
        }
        if let Some(when) = &self.color {
            flags.extend(["--color".to_owned(), when.clone()]);
        }
        flags
    }
}

/// Checks `--target`: the tests are built to be run here, so only this
/// machine's own triple can be honoured.
pub(crate) fn check_target(args: &CargoSelection) -> Result<(), RunError> {
    let Some(target) = &args.target else { return Ok(()) };
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let host = Command::new(&rustc)
        .arg("-vV")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.lines().find_map(|line| line.strip_prefix("host: ").map(str::to_owned)));
    match host {
        Some(host) if host == *target => Ok(()),
        Some(host) => Err(RunError::UsageMessage(format!(
            "--target {target}: cargo-leakcheck runs the tests it builds, and this machine runs {host} (build for {host}, or leave --target out)"
        ))),
        None => Err(RunError::UsageMessage(format!("--target {target}: could not ask rustc for this machine's triple"))),
    }
}

/// Whether `executable` embeds the marker of `leakcheck::main!()`.
pub(crate) fn is_leakcheck_harness(executable: &std::path::Path) -> bool {
    std::fs::read(executable)
        .is_ok_and(|bytes| memchr::memmem::find(&bytes, &leakcheck::__private::HARNESS_MARKER).is_some())
}

/// Reads the workspace with `cargo metadata --no-deps`.
pub(crate) fn metadata(args: &CargoSelection) -> Result<Metadata, RunError> {
    let mut request = MetadataCommand::new();
    request.no_deps();
    if let Some(path) = &args.manifest_path {
        request.manifest_path(path);
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        request.cargo_path(cargo);
    }
    request.other_options(args.global_flags());
    let mut command = request.cargo_command();
    crate::run::reset_signals_on_exec(&mut command);
    process::announce(&command, args.verbose);
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RunError::SpawnCargo { command: process::display(&command), source })?;
    if !output.status.success() {
        return Err(RunError::Metadata { stderr: String::from_utf8_lossy(&output.stderr).trim_end().to_owned() });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = stdout.lines().find(|line| line.starts_with('{')).unwrap_or_default();
    MetadataCommand::parse(json).map_err(|error| RunError::Metadata { stderr: error.to_string() })
}

/// Checks that each plain `-p NAME` names a workspace package, so a typo is
/// a usage error rather than a failed build. Specs cargo reads otherwise
/// (`name@version`, URLs, globs) are left to cargo.
pub(crate) fn check_packages(args: &CargoSelection, metadata: &Metadata) -> Result<(), RunError> {
    let members: Vec<&str> = metadata.workspace_packages().iter().map(|package| package.name.as_str()).collect();
    for spec in args.packages.iter().chain(&args.exclude) {
        let plain = !spec.contains(['@', ':', '/', '*', '?', '[']);
        if plain && !members.contains(&spec.as_str()) {
            return Err(RunError::UnknownPackage { name: spec.clone(), known: members.join(", ") });
        }
    }
    Ok(())
}

/// Checks that each plain `--test NAME` and `--bin NAME` names a target of a
/// workspace package, so a typo is a usage error listing the targets there
/// are, rather than a failed build. Globs are left to cargo.
pub(crate) fn check_targets(args: &CargoSelection, metadata: &Metadata) -> Result<(), RunError> {
    let packages = metadata.workspace_packages();
    for (names, kind, flag) in [(&args.tests, TargetKind::Test, "--test"), (&args.bins, TargetKind::Bin, "--bin")] {
        let known: Vec<&str> = packages
            .iter()
            .flat_map(|package| &package.targets)
            .filter(|target| target.kind.contains(&kind))
            .map(|target| target.name.as_str())
            .collect();
        for name in names.iter().filter(|name| !name.contains(['*', '?', '['])) {
            if !known.contains(&name.as_str()) {
                let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                return Err(RunError::UnknownTarget { flag, name: name.clone(), known });
            }
        }
    }
    Ok(())
}

/// Builds the selected test targets and returns their executables, sorted by id.
/// cargo's own diagnostics go straight to our stderr.
pub(crate) fn build_tests(
    args: &CargoSelection,
    metadata: &Metadata,
    supervisor: &Supervisor,
) -> Result<Vec<TestBinary>, RunError> {
    let mut command = process::cargo();
    command.args(["test", "--no-run", "--message-format=json-render-diagnostics"]);
    if let Some(path) = &args.manifest_path {
        command.arg("--manifest-path").arg(path);
    }
    for package in &args.packages {
        command.args(["--package", package]);
    }
    if args.workspace {
        command.arg("--workspace");
    }
    for package in &args.exclude {
        command.args(["--exclude", package]);
    }
    if args.lib {
        command.arg("--lib");
    }
    for bin in &args.bins {
        command.args(["--bin", bin]);
    }
    if args.all_bins {
        command.arg("--bins");
    }
    for test in &args.tests {
        command.args(["--test", test]);
    }
    if args.all_tests {
        command.arg("--tests");
    }
    for features in &args.features {
        command.args(["--features", features]);
    }
    if args.all_features {
        command.arg("--all-features");
    }
    if args.no_default_features {
        command.arg("--no-default-features");
    }
    if args.release {
        command.arg("--release");
    }
    command.args(args.global_flags());
    if let Some(target) = &args.target {
        command.args(["--target", target]);
    }
    if let Some(dir) = &args.target_dir {
        command.arg("--target-dir").arg(dir);
    }
    command.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null());
    process::announce(&command, args.verbose);

    let mut child =
        command.spawn().map_err(|source| RunError::SpawnCargo { command: process::display(&command), source })?;
    supervisor.add_helper(child.id() as i32);
    let packages: BTreeMap<_, _> = metadata.packages.iter().map(|package| (&package.id, package)).collect();
    let mut binaries = BTreeMap::new();
    let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    for message in Message::parse_stream(stdout) {
        let Ok(Message::CompilerArtifact(artifact)) = message else { continue };
        let (Some(executable), true) = (artifact.executable, artifact.profile.test) else { continue };
        let Some(package) = packages.get(&artifact.package_id) else { continue };
        let id = binary_id(package, &artifact.target.name, &artifact.target.kind);
        let env = test_env(package, &artifact.target.name, executable.as_std_path());
        let cwd = package.manifest_path.parent().map(|dir| dir.as_std_path().to_owned()).unwrap_or_default();
        let executable = executable.into_std_path_buf();
        // Only a package that depends on leakcheck can hold its harness;
        // the others are not read at all.
        let harness = package.dependencies.iter().any(|dependency| dependency.name == "leakcheck")
            && is_leakcheck_harness(&executable);
        let (manifest, kinds, name) =
            (package.manifest_path.as_std_path(), &artifact.target.kind, &artifact.target.name);
        let libtest = harness || crate::targets::speaks_libtest(manifest, kinds, name, &executable);
        let std_harness = !harness && !crate::targets::harness_disabled(manifest, kinds, name);
        binaries.insert(id.clone(), TestBinary { id, executable, cwd, env, harness, libtest, std_harness });
    }
    let status = child.wait().map_err(|source| RunError::SpawnCargo { command: process::display(&command), source })?;
    supervisor.remove_helper(child.id() as i32);
    if let Some(signal) = supervisor.interrupted() {
        return Err(RunError::Interrupted { signal });
    }
    if !status.success() {
        return Err(RunError::BuildFailed { status });
    }
    Ok(binaries.into_values().collect())
}

/// nextest's binary id: the package name for its library (and proc-macro)
/// tests, `pkg::name` for an integration test, `pkg::kind/name` otherwise.
fn binary_id(package: &Package, target: &str, kinds: &[TargetKind]) -> String {
    let kind = kinds.first();
    match kind {
        Some(TargetKind::Test) => format!("{}::{target}", package.name),
        Some(TargetKind::Bin) => format!("{}::bin/{target}", package.name),
        Some(TargetKind::Example) => format!("{}::example/{target}", package.name),
        Some(TargetKind::Bench) => format!("{}::bench/{target}", package.name),
        _ => package.name.to_string(),
    }
}

/// The environment `cargo test` gives a test process at run time.
fn test_env(package: &Package, target: &str, executable: &std::path::Path) -> Vec<(String, String)> {
    let version = &package.version;
    let dir = package.manifest_path.parent().map(|dir| dir.to_string()).unwrap_or_default();
    let mut env = vec![
        ("CARGO_MANIFEST_DIR".to_owned(), dir),
        ("CARGO_MANIFEST_PATH".to_owned(), package.manifest_path.to_string()),
        ("CARGO_PKG_NAME".to_owned(), package.name.to_string()),
        ("CARGO_PKG_VERSION".to_owned(), version.to_string()),
        ("CARGO_PKG_VERSION_MAJOR".to_owned(), version.major.to_string()),
        ("CARGO_PKG_VERSION_MINOR".to_owned(), version.minor.to_string()),
        ("CARGO_PKG_VERSION_PATCH".to_owned(), version.patch.to_string()),
        ("CARGO_PKG_VERSION_PRE".to_owned(), version.pre.to_string()),
        ("CARGO_PKG_AUTHORS".to_owned(), package.authors.join(":")),
        ("CARGO_PKG_DESCRIPTION".to_owned(), package.description.clone().unwrap_or_default()),
        ("CARGO_PKG_HOMEPAGE".to_owned(), package.homepage.clone().unwrap_or_default()),
        ("CARGO_PKG_REPOSITORY".to_owned(), package.repository.clone().unwrap_or_default()),
        ("CARGO_PKG_LICENSE".to_owned(), package.license.clone().unwrap_or_default()),
        ("CARGO_PKG_RUST_VERSION".to_owned(), package.rust_version.as_ref().map(|v| v.to_string()).unwrap_or_default()),
        ("CARGO_CRATE_NAME".to_owned(), target.replace('-', "_")),
    ];
    if std::env::var_os("CARGO").is_none() {
        if let Ok(cargo) = which_cargo() {
            env.push(("CARGO".to_owned(), cargo));
        }
    }
    // Like cargo: let the test find dylibs built next to it.
    if let Some(deps) = executable.parent() {
        let mut paths = vec![deps.to_owned()];
        paths.extend(deps.parent().map(|profile| profile.to_owned()));
        paths.extend(std::env::var_os("LD_LIBRARY_PATH").iter().flat_map(std::env::split_paths));
        if let Ok(joined) = std::env::join_paths(paths) {
            env.push(("LD_LIBRARY_PATH".to_owned(), joined.to_string_lossy().into_owned()));
        }
    }
    env
}

fn which_cargo() -> Result<String, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("cargo"))
        .find(|path| path.is_file())
        .map(|path| path.to_string_lossy().into_owned())
        .ok_or(())
}
