//! Errors of each stage, and the one mapping from outcome to exit code.

/// Exit codes, documented in `--help` and the README.
pub(crate) mod exit_code {
    /// Every test passed and nothing leaked.
    pub(crate) const SUCCESS: u8 = 0;
    /// cargo-leakcheck itself could not do its job (a test binary it cannot
    /// list, an I/O failure).
    pub(crate) const TOOL_ERROR: u8 = 1;
    /// Bad usage or bad configuration (no Cargo.toml, unknown package, bad flag).
    pub(crate) const USAGE: u8 = 2;
    /// The filter (or the crate) selected no test at all.
    pub(crate) const NO_TESTS: u8 = 4;
    /// Some test failed, leaked or timed out.
    pub(crate) const TESTS_FAILED: u8 = 100;
    /// The build failed.
    pub(crate) const BUILD_FAILED: u8 = 101;
    /// Interrupted by SIGINT, SIGTERM or SIGHUP (128 + SIGINT).
    pub(crate) const INTERRUPTED: u8 = 130;
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("could not read the configuration file {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid { path: std::path::PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: no profile `{name}` (profiles: {known})")]
    UnknownProfile { path: std::path::PathBuf, name: String, known: String },
}

/// A baseline file that could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BaselineError {
    #[error("could not read the baseline {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected 4 tab-separated columns (binary, test, kind, identity)")]
    Malformed { path: std::path::PathBuf, line: usize },
}

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("could not read the workspace metadata\n{stderr}")]
    Metadata { stderr: String },
    #[error("could not run `{command}`")]
    SpawnCargo {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the build failed ({status})")]
    BuildFailed { status: std::process::ExitStatus },
    #[error("no package `{name}` in this workspace (its packages: {known})")]
    UnknownPackage { name: String, known: String },
    #[error("no target `{name}` for {flag} in this workspace (its targets of that kind: {known})")]
    UnknownTarget { flag: &'static str, name: String, known: String },
    #[error(
        "could not list the tests of {binary} (`{command}` {status}); is it a libtest-compatible test binary? \
         Leave it out by selecting other targets (--lib, --test NAME).\n{stderr}"
    )]
    ListTests { binary: String, command: String, status: String, stderr: String },
    #[error(
        "the test binaries do not take `--{option}` (after `--` cargo leakcheck passes libtest's \
         --exact, --skip PATTERN, --ignored, --include-ignored; see --help)"
    )]
    UnknownTestArgument { option: String },
    #[error("no test matched the filter `{filter}`")]
    NothingMatched { filter: String },
    #[error("the selected targets contain no tests")]
    NoTests,
    #[error("interrupted by {signal}")]
    Interrupted { signal: nix::sys::signal::Signal },
    #[error("could not write the report {path}")]
    WriteReport {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Baseline(#[from] BaselineError),
    #[error("{0}")]
    UsageMessage(String),
    #[error("cargo-leakcheck could not {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl RunError {
    /// The exit code this error ends the run with.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            RunError::Metadata { .. }
            | RunError::UnknownPackage { .. }
            | RunError::UnknownTarget { .. }
            | RunError::UnknownTestArgument { .. }
            | RunError::Config(_)
            | RunError::Baseline(_)
            | RunError::UsageMessage(_) => exit_code::USAGE,
            RunError::SpawnCargo { .. } => exit_code::TOOL_ERROR,
            RunError::BuildFailed { .. } => exit_code::BUILD_FAILED,
            RunError::ListTests { .. } => exit_code::TOOL_ERROR,
            RunError::NothingMatched { .. } | RunError::NoTests => exit_code::NO_TESTS,
            RunError::Interrupted { .. } => exit_code::INTERRUPTED,
            RunError::Setup { .. } | RunError::WriteReport { .. } => exit_code::TOOL_ERROR,
        }
    }
}
