//! `/proc/<pid>/stat` and `/proc/<pid>/task/<tid>/stat`, parsed.

use std::fs;

/// Start time (clock ticks since boot) of thread `tid` of `pid`; 0 if gone.
pub fn thread_start_time(pid: i32, tid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
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
