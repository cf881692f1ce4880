//! What a process holds at one instant: open fds, threads, children.
//!
//! A [`Snapshot`] is read from `/proc/<pid>` by [`take`]. It holds raw
//! identities (the fd's link target, the thread's name) and is cheap; turning a
//! socket inode into addresses is done only for leaks, by [`describe_fd`].

#[cfg(target_os = "linux")]
mod baseline;
#[cfg(target_os = "linux")]
mod identity;
#[cfg(target_os = "linux")]
mod proc;
#[cfg(target_os = "linux")]
mod socket_fd;
#[cfg(target_os = "linux")]
mod stat;
mod types;

#[cfg(target_os = "linux")]
pub use baseline::Baseline;
#[cfg(target_os = "linux")]
pub use identity::{describe_fd, describe_fd_with, SocketTables};
#[cfg(target_os = "linux")]
pub use proc::{age_ms, fd_target, key_of_path, process_info, take, take_since, tgid_of, wchan};
#[cfg(target_os = "linux")]
pub use stat::{read_lossy, thread_start_time};
pub use types::{state_name, FdEntry, FdKey, ProcessInfo, Snapshot, ThreadEntry};
