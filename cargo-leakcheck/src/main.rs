//! `cargo leakcheck`: run a crate's tests one per process and fail each test
//! that leaks file descriptors, threads or child processes.

#[cfg(not(target_os = "linux"))]
compile_error!("cargo-leakcheck checks tests through Linux's /proc and seccomp; it runs on Linux only");

mod app;
mod baseline;
mod cargo;
mod cli;
mod config;
mod duration;
mod errors;
mod guardian;
mod heap;
mod input;
mod list;
mod mentions;
mod merge;
mod partition;
mod plan;
mod policy;
mod process;
mod report;
mod run;
mod targets;
mod wrap;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(app::main())
}
