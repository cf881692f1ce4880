//! Where leaked heap blocks were allocated: the explain re-run routes
//! [`crate::Alloc`] through dhat's recorder, which keeps a backtrace per live
//! block; at the end the blocks still live are read back from its report.
//!
//! dhat writes its report (JSON, the DHAT viewer's format) to a file when its
//! profiler is dropped; we read the program points with bytes live at the end
//! (`eb`, `ebk`) and their frames. Frame strings carry the instruction
//! pointer first (`0x55d0...: name (file:line:col)`); dhat shortens paths to
//! three components, so we resolve the pointers again ourselves, with full
//! paths, to tell the code under test from std and dependencies.

use std::path::PathBuf;

/// One program point with blocks still live: its stack, innermost first.
pub(super) struct LiveSite {
    pub(super) ips: Vec<usize>,
    pub(super) bytes: u64,
    pub(super) blocks: u64,
}

/// A running dhat profiler, fed by [`crate::Alloc`].
pub(super) struct HeapRecorder {
    profiler: dhat::Profiler,
    report: PathBuf,
    /// A private directory (random name, 0700) for dhat's report, removed
    /// on drop: a predictable path could be planted by another user.
    _dir: tempfile::TempDir,
}

impl HeapRecorder {
    /// Starts recording; `None` when [`crate::Alloc`] is not the global
    /// allocator (then no heap leak is measured either).
    pub(super) fn start() -> Option<HeapRecorder> {
        crate::alloc::heap_usage()?;
        let dir = tempfile::Builder::new().prefix("leakcheck-dhat-").tempdir().ok()?;
        let report = dir.path().join("dhat.json");
        let profiler = dhat::Profiler::builder().file_name(&report).trim_backtraces(None).build();
        crate::alloc::route_through_dhat(true);
        Some(HeapRecorder { profiler, report, _dir: dir })
    }

    /// Stops recording; the program points with live blocks, largest first.
    pub(super) fn finish(self) -> Vec<LiveSite> {
        crate::alloc::route_through_dhat(false);
        drop(self.profiler);
        let report = std::fs::read(&self.report);
        report.ok().and_then(|json| serde_json::from_slice(&json).ok()).map(live_sites).unwrap_or_default()
    }
}

fn live_sites(report: serde_json::Value) -> Vec<LiveSite> {
    let frames = report["ftbl"].as_array().cloned().unwrap_or_default();
    let ip_of = |index: &serde_json::Value| -> Option<usize> {
        let text = frames.get(index.as_u64()? as usize)?.as_str()?;
        let (hex, _) = text.split_once(':')?;
        usize::from_str_radix(hex.trim().trim_start_matches("0x"), 16).ok()
    };
    let mut sites: Vec<LiveSite> = report["pps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|point| {
            let bytes = point["eb"].as_u64().filter(|bytes| *bytes > 0)?;
            let mut ips: Vec<usize> = point["fs"].as_array()?.iter().filter_map(ip_of).collect();
            // Inlined functions repeat their frame's pointer.
            ips.dedup();
            Some(LiveSite { ips, bytes, blocks: point["ebk"].as_u64().unwrap_or(0) })
        })
        .collect();
    sites.sort_by_key(|site| std::cmp::Reverse(site.bytes));
    sites
}
