//! The plain values a snapshot is made of.

/// What an fd refers to, cheaply comparable: the device and inode of the
/// open file (for a socket or pipe, its inode in sockfs or pipefs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdKey {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// One open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdEntry {
    /// Its number.
    pub fd: i32,
    /// What it refers to.
    pub key: FdKey,
    /// Where `/proc/<pid>/fd/<fd>` points: a path, `socket:[123]`, `pipe:[45]`,
    /// `anon_inode:[eventfd]`. Read only for fds that are new since the
    /// baseline (empty otherwise, or if it closed while being read).
    pub target: String,
}

/// One thread (task) of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadEntry {
    /// Kernel thread id; the main thread's equals the pid.
    pub tid: i32,
    /// The thread's name (`comm`).
    pub name: String,
    /// The state letter of `/proc/<pid>/task/<tid>/stat` (`R`, `S`, `D`, `Z`, ...).
    pub state: char,
    /// Start time since boot in clock ticks: with the tid, an identity that
    /// survives tid reuse.
    pub start_time: u64,
}

impl ThreadEntry {
    /// True when the thread has already exited and is only being torn down.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// One process: a child of the snapshotted process, or any process looked up by pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Process group id.
    pub pgid: i32,
    /// The state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Start time since boot in clock ticks: with the pid, a process identity
    /// that survives pid reuse.
    pub start_time: u64,
    /// Command line joined with spaces; for a zombie (whose cmdline is empty)
    /// the kernel's `comm` in brackets.
    pub cmdline: String,
}

/// Everything the leak checks compare, read at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The process it was read from.
    pub pid: i32,
    /// Open fds, ascending.
    pub fds: Vec<FdEntry>,
    /// Threads still alive (dead ones being torn down are left out).
    pub threads: Vec<ThreadEntry>,
    /// Direct children of every thread of the process, zombies included.
    pub children: Vec<ProcessInfo>,
}

/// A readable word for a `/proc` state letter.
pub fn state_name(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk-sleep",
        'Z' => "zombie",
        'T' => "stopped",
        't' => "traced",
        'X' | 'x' => "dead",
        'I' => "idle",
        'P' => "parked",
        'W' => "waking",
        _ => "unknown",
    }
}
