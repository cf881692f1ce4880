//! The heap check of zero-config runs: a leak-checking runtime
//! (LeakSanitizer, inside GCC's or clang's AddressSanitizer runtime)
//! preloaded into each test process, its report read back per process.
//!
//! - [`runtime`]: finding the runtime, and its options;
//! - [`binary`]: whether a test binary can be checked that way;
//! - [`lsan`]: the report, as `heap` leaks with their sites.

pub(crate) mod binary;
pub(crate) mod lsan;
pub(crate) mod runtime;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use leakcheck::Leak;

/// The heap check of one run: the runtime, and which binaries it cannot
/// check (and why).
#[derive(Debug)]
pub(crate) struct HeapCheck {
    runtime: runtime::Runtime,
    /// Test executables whose heap the runtime cannot check, with the reason.
    unsupported: HashMap<PathBuf, binary::Unsupported>,
}

impl HeapCheck {
    /// Looks at each executable (once) to see whether the runtime can check it.
    pub(crate) fn new<'a>(runtime: runtime::Runtime, executables: impl Iterator<Item = &'a Path>) -> HeapCheck {
        let mut unsupported = HashMap::new();
        for executable in executables {
            if unsupported.contains_key(executable) {
                continue;
            }
            if let Err(reason) = binary::check(executable) {
                unsupported.insert(executable.to_owned(), reason);
            }
        }
        HeapCheck { runtime, unsupported }
    }

    /// Why `executable`'s heap is not checked, when it is not.
    pub(crate) fn unsupported(&self, executable: &Path) -> Option<&str> {
        self.unsupported.get(executable).map(String::as_str)
    }

    /// Every executable that is not checked, with the reason, in path order.
    pub(crate) fn unsupported_binaries(&self) -> Vec<(&Path, &str)> {
        let mut list: Vec<(&Path, &str)> =
            self.unsupported.iter().map(|(path, reason)| (path.as_path(), reason.as_str())).collect();
        list.sort();
        list
    }

    pub(crate) fn runtime(&self) -> &Path {
        &self.runtime.path
    }

    /// The environment of a checked test process: the runtime first in
    /// `LD_PRELOAD` (it must come before any other library), its options,
    /// and no `LSAN_OPTIONS` of the caller's (which could make a leak fail
    /// the process or silence it). `preload`: the process's own `LD_PRELOAD`.
    pub(crate) fn environment(
        &self,
        log_prefix: &Path,
        full_stacks: bool,
        preload: Option<OsString>,
    ) -> [(&'static str, OsString); 3] {
        let mut value = self.runtime.path.clone().into_os_string();
        if let Some(preload) = preload.filter(|preload| !preload.is_empty()) {
            value.push(":");
            value.push(preload);
        }
        [
            ("LD_PRELOAD", value),
            ("ASAN_OPTIONS", runtime::options(log_prefix, full_stacks).into()),
            ("LSAN_OPTIONS", OsString::new()),
        ]
    }
}

/// The heap leaks of process `pid` from its report under `log_prefix`, read
/// and then removed with every other report under that prefix (the test's
/// children's, which are not its leaks). No report: nothing leaked, or
/// the process never got to its exit check (killed, crashed).
pub(crate) fn take_report(log_prefix: &Path, pid: i32, package_dir: &Path) -> Vec<Leak> {
    let own = PathBuf::from(format!("{}.{pid}", log_prefix.display()));
    let leaks = std::fs::read_to_string(&own).map(|text| lsan::parse(&text, package_dir)).unwrap_or_default();
    remove_reports(log_prefix);
    leaks
}

/// Removes every `PREFIX.*` report.
pub(crate) fn remove_reports(log_prefix: &Path) {
    let (Some(dir), Some(stem)) = (log_prefix.parent(), log_prefix.file_name()) else { return };
    let stem = format!("{}.", stem.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&stem) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
