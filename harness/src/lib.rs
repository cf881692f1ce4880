//! Leak checks for Rust tests: open file descriptors, threads, child
//! processes and heap memory, snapshotted before and after each test.
//!
//! Three ways in:
//!
//! - **`cargo leakcheck`** (the `cargo-leakcheck` crate) runs any crate's tests
//!   one per process and checks each from outside. No code change.
//! - **`#[leakcheck::test]`** on a test checks it from inside, heap included
//!   when [`Alloc`] is the global allocator, with options to allow a known
//!   leak (always with a reason):
//!
//!   ```ignore
//!   #[leakcheck::test(allow(thread, name = "tokio-*", max = 4, reason = "the shared runtime"))]
//!   fn pool_shuts_down() { /* ... */ }
//!   ```
//!
//!   It checks where the test has its process to itself (under `cargo
//!   leakcheck`, `cargo nextest run`, or the harness below); under plain
//!   `cargo test`, where tests share one process on parallel threads, the
//!   test runs itself again alone in a fresh process and is checked there.
//! - **`leakcheck::main!()`** in a `harness = false` test target checks every
//!   `#[leakcheck::test]` of the target in forked children (a child whose
//!   test left nothing behind runs the next one), heap included:
//!
//!   ```toml
//!   [[test]]
//!   name = "checked"
//!   harness = false
//!   ```
//!
//!   ```ignore
//!   // tests/checked.rs
//!   #[leakcheck::test]
//!   fn no_leak() { let v = vec![1, 2, 3]; assert_eq!(v.len(), 3); }
//!
//!   leakcheck::main!();
//!   ```
//!
//! # Options of `#[leakcheck::test(...)]`
//!
//! - `allow(fd, target = "glob", max = N, reason = "...")`,
//!   `allow(thread, name = "glob", ...)`, `allow(child, cmdline = "glob", ...)`,
//!   `allow(heap, bytes = N, reason = "...")`: accept matching leaks;
//! - `skip(KIND, reason = "...")`: do not check a kind;
//! - `grace = "500ms"`: how long leftovers may take to go away.
//!
//! # Known limitations
//!
//! - Linux only: snapshots read `/proc`.
//! - `leakcheck::main!()` runs sync tests and `#[tokio::test]` tests (as
//!   `#[tokio::main]`, current-thread by default); other test attribute
//!   macros need the default harness.
//! - A process that a test's child orphans is reparented outside the test's
//!   process and cannot be seen by an in-process check; `cargo leakcheck`
//!   catches those through its subreaper.
#![deny(missing_docs)]

#[cfg(target_os = "linux")]
mod alloc;
pub mod diff;
pub mod env_names;
#[cfg(target_os = "linux")]
mod fork_server;
#[cfg(target_os = "linux")]
mod guard;
#[cfg(target_os = "linux")]
mod isolation;
#[cfg(target_os = "linux")]
mod one_time;
pub mod options;
mod own_record;
#[cfg(target_os = "linux")]
mod panic_text;
pub mod record;
pub mod records_dir;
#[cfg(target_os = "linux")]
mod registry;
#[cfg(target_os = "linux")]
mod reuse;
#[cfg(target_os = "linux")]
mod self_isolation;
pub mod shape;
#[doc(hidden)]
#[cfg(target_os = "linux")]
pub mod signals;
pub mod sites;
pub mod snapshot;
#[cfg(target_os = "linux")]
pub mod temp_dir;

#[doc(hidden)]
#[cfg(target_os = "linux")]
#[path = "private.rs"]
pub mod __private;

#[cfg(target_os = "linux")]
pub use alloc::{heap_usage, Alloc, HeapUsage};
#[cfg(target_os = "linux")]
pub use guard::{check, Finding, Guard};
#[cfg(target_os = "linux")]
pub use isolation::{isolation, Isolation};
pub use leakcheck_macros::test;
pub use record::{Leak, LeakKind, Outcome, Report, Summary, TestRecord};
#[cfg(target_os = "linux")]
pub use reuse::FORK_PER_TEST_ENV;

/// The `main` of a `harness = false` test target: runs every
/// `#[leakcheck::test]` of the target in forked children, and installs
/// the counting allocator [`Alloc`]. A target with its own
/// `#[global_allocator]` writes `leakcheck::main!(custom_allocator);` (the
/// heap is then not measured).
#[macro_export]
macro_rules! main {
    () => {
        #[global_allocator]
        static __LEAKCHECK_ALLOCATOR: $crate::Alloc = $crate::Alloc;
        $crate::main!(custom_allocator);
    };
    (custom_allocator) => {
        /// Lets `cargo leakcheck` recognise this binary as a leakcheck harness.
        #[used]
        static __LEAKCHECK_HARNESS_MARKER: [u8; 32] = $crate::__private::HARNESS_MARKER;

        fn main() -> ::std::process::ExitCode {
            $crate::__private::harness_main()
        }
    };
}
