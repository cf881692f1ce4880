//! Running tests: one isolated process per test, judged at its exit.

mod harness_client;
mod isolated;
mod output;
mod probe;
mod reaper;
mod scheduler;

pub(crate) use isolated::{run_test, stop_fd_inheritance, RunContext, Waker};
pub(crate) use probe::ExitFilter;
pub(crate) use reaper::{block_signals, unblock_signals_on_exec, Supervisor};
pub(crate) use scheduler::{run_all, RunResult};
