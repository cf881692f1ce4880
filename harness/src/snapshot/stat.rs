//! `/proc/<pid>/stat` and `/proc/<pid>/task/<tid>/stat`, parsed.

use std::fs;

/// A `/proc` text file, whatever bytes it holds: a thread or process name
/// is raw bytes (cut by the kernel's 15-byte limit mid-character, or set to
/// bad bytes on purpose), and a strict UTF-8 read would skip that thread or
/// process as if it did not exist.
pub fn read_lossy(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    let bytes = fs::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    })
}

/// Start time (clock ticks since boot) of thread `tid` of `pid`; 0 if gone.
pub fn thread_start_time(pid: i32, tid: i32) -> u64 {
    read_lossy(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat).map(|parsed| parsed.start_time))
        .unwrap_or(0)
}

pub(super) struct Stat<'a> {
    pub(super) comm: &'a str,
    pub(super) state: char,
    pub(super) ppid: i32,
    pub(super) pgid: i32,
    pub(super) start_time: u64,
}

/// Parses `/proc/<pid>/stat`. The name sits in parentheses and may itself hold
/// spaces and parentheses, so the fields after it are found from the last `)`.
pub(super) fn parse_stat(stat: &str) -> Option<Stat<'_>> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    let mut rest = stat[close + 1..].split_ascii_whitespace();
    // Fields after comm, 1-based from field 3 of proc(5): state, ppid, pgrp, ...
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgid = rest.next()?.parse().ok()?;
    // starttime is field 22: 22 - 6 = 16 fields after pgrp (field 5).
    let start_time = rest.nth(16)?.parse().ok()?;
    Some(Stat { comm, state, ppid, pgid, start_time })
}
