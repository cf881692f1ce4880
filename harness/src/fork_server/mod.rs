//! `leakcheck::main!()`: a libtest-compatible harness that runs every test in
//! a forked child of a single-threaded parent, checked in-process.
//!
//! The parent parses the command line with libtest-mimic (so `--list --format
//! terse`, `--exact`, `--skip`, `--ignored`, `--include-ignored`,
//! `--test-threads`, `--nocapture` and filters mean what they mean under
//! libtest, and `cargo test` and `cargo nextest run` both drive it), then forks
//! children, up to `--test-threads` at a time. A child runs a test on a fresh
//! thread between a baseline and a check (fds, threads, children, heap) and
//! writes its [`TestRecord`] to a pipe; a crash is a failed test, not a dead
//! harness. If the test left the process as it found it ([`crate::reuse`]),
//! the child then waits for the index of its next test on a command pipe;
//! otherwise it exits, and the next test gets a fresh fork.
//!
//! Invariants:
//! - The parent never starts a thread, so `fork` copies a consistent process
//!   and the child may allocate and spawn threads freely.
//! - Each child leads its own process group; after it exits, the group is
//!   killed, so processes a test leaves behind (reported by its check) do not
//!   outlive it. SIGINT/SIGTERM to the parent kill every running group first.
//! - Only the parent holds the write end of a child's command pipe (a new
//!   child closes its siblings' copies), so dropping it ends a waiting child.
//! - Under `cargo leakcheck`, `LEAKCHECK_RECORDS_FD` names a pipe that gets
//!   one JSON [`TestRecord`] per line, and `LEAKCHECK_TIMEOUT_MS` a time limit.

//!
//! The rooms: [`entry`] parses the command line and hands the plan to the
//! [`server`], the parent's loop; [`children`] forks, watches and reaps the
//! children (and reuses a clean one); [`child`] is what a forked child does;
//! [`config`] holds its settings; [`explain`] decides on explain re-runs; [`protocol`] speaks to the runner
//! (libtest's lines, the records pipe); [`pipes`] holds the fd plumbing.

mod child;
mod children;
mod config;
mod entry;
mod explain;
mod pipes;
mod protocol;
mod server;

pub(crate) use entry::harness_main;
