//! Running tests: libtest binaries' tests in batches, judged at each test's
//! boundaries; every test not a clean pass there in a process of its own,
//! judged at its exit.
//!
//! `scheduler` hands tests to workers; `batch` (`spawn` -> `boundary`) runs
//! the batches; a test alone goes through `isolated` (`spawn` -> `watch` ->
//! `judge`), a `leakcheck::main!()` binary through `harness_client`; with
//! `--isolate` and the heap check, `heap_filter` first runs each binary's
//! tests together, preloaded; `singleton` tells singletons by group runs,
//! `siblings` those of a test with no peer in its binary. `reaper` owns every process, `probe`
//! the seccomp exit probe, `output` the captured streams, `context` what all
//! of them share.

mod batch;
mod boundary;
mod context;
mod creations;
mod exec_env;
mod harness_client;
mod heap_filter;
mod isolated;
mod judge;
mod output;
mod poll;
mod probe;
mod reaper;
mod scheduler;
mod siblings;
mod singleton;
mod spawn;
mod watch;

pub(crate) use context::{RunContext, Settle, Waker};
pub(crate) use isolated::run_test;
pub(crate) use probe::ExitFilter;
pub(crate) use reaper::{block_signals, has_environ_entry, reset_signals_on_exec, Supervisor, MARKER_VAR};
pub(crate) use scheduler::{run_all, RunResult};
pub(crate) use spawn::stop_fd_inheritance;
