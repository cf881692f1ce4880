//! Leak checks for Rust tests.
//!
//! This crate holds the core that `cargo leakcheck` and (later) the
//! `leakcheck` test harness share:
//!
//! - [`snapshot`]: what a process holds at one instant (open fds, threads,
//!   children), read from `/proc`;
//! - [`diff`]: what a snapshot holds beyond a baseline, and settling;
//! - [`record`]: the test record and JSON report that reporters consume.
//!
//! # Known limitations
//!
//! Linux only: snapshots read `/proc`. On other targets the crate compiles
//! with the record types alone.
#![deny(missing_docs)]

pub mod diff;
pub mod record;
pub mod snapshot;

pub use record::{Leak, Outcome, Report, Summary, TestRecord};
