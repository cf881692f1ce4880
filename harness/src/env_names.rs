//! The environment variables through which `cargo leakcheck` and
//! leakcheck's code inside a test process talk: one definition each, for
//! both crates. (Others live beside the code they steer:
//! [`crate::sites::EXPLAIN_ENV`], [`crate::records_dir::RECORDS_DIR_ENV`],
//! [`crate::FORK_PER_TEST_ENV`], [`crate::temp_dir::PRIVATE_VAR`].)

/// Set by `cargo leakcheck` in every process of a test run, inherited by
/// all it starts: `<tool pid>:<serial>` (the fork server appends
/// `/<test>`). How a process is known to be a test's, even orphaned.
pub const TEST_ID: &str = "LEAKCHECK_TEST_ID";
/// Where a `#[leakcheck::test]` writes its in-process verdict.
pub const RECORD_FILE: &str = "LEAKCHECK_RECORD_FILE";
/// `cargo leakcheck --repeat N`: measured runs of leakcheck's own tests.
pub const REPEAT: &str = "LEAKCHECK_REPEAT";
/// The fd a `leakcheck::main!()` binary writes its records to.
pub const RECORDS_FD: &str = "LEAKCHECK_RECORDS_FD";
/// The per-test time limit a `leakcheck::main!()` binary keeps, in ms.
pub const TIMEOUT_MS: &str = "LEAKCHECK_TIMEOUT_MS";
