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
    /// Set when the runtime said it could not check a process (it cannot
    /// work under ptrace, for one): reported once, by the caller.
    failure: std::sync::OnceLock<String>,
    /// Executables whose tests are each run with the runtime preloaded: the
    /// filter run of all their tests together found a leak or could not
    /// tell (see `run::heap_filter`). The others' tests run without it.
    each_test: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl HeapCheck {
    /// Looks at each executable (once) to see whether the runtime can check it.
    pub(crate) fn new<'a>(runtime: runtime::Runtime, executables: impl Iterator<Item = &'a Path>) -> HeapCheck {
        let mut unsupported = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for executable in executables {
            if !seen.insert(executable) {
                continue;
            }
            if let Err(reason) = binary::check(executable) {
                unsupported.insert(executable.to_owned(), reason);
            }
        }
        HeapCheck { runtime, unsupported, failure: std::sync::OnceLock::new(), each_test: Default::default() }
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

    /// Has every test of `executable` run with the runtime preloaded.
    pub(crate) fn check_each_test_of(&self, executable: &Path) {
        self.each_test.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(executable.to_owned());
    }

    /// Whether each test of `executable` runs with the runtime preloaded.
    pub(crate) fn checks_each_test_of(&self, executable: &Path) -> bool {
        self.each_test.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(executable)
    }

    /// The first failure of the runtime in this run, if any.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// The heap leaks of process `pid` from its report under `log_prefix`
    /// (see [`take_report`]); `None` when the runtime could not check it,
    /// which is remembered for [`HeapCheck::failure`].
    pub(crate) fn leaks_of(&self, log_prefix: &Path, pid: i32, package_dir: &Path) -> Option<Vec<Leak>> {
        take_report(log_prefix, pid, package_dir)
            .map_err(|reason| {
                let _ = self.failure.set(reason);
            })
            .ok()
    }

    pub(crate) fn runtime(&self) -> &Path {
        &self.runtime.path
    }

    /// The environment of a checked test process: the runtime first in
    /// `LD_PRELOAD` (it must come before any other library), its options,
    /// and no `LSAN_OPTIONS` of the caller's (which could make a leak fail
    /// the process or silence it). `preload`: the process's own `LD_PRELOAD`.
    /// The preloaded library, the head of every `LD_PRELOAD` we set.
    pub(crate) fn runtime_path(&self) -> &Path {
        &self.runtime.path
    }

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
/// the process never got to its exit check (killed, crashed). `Err`: the
/// runtime said it could not check the process.
fn take_report(log_prefix: &Path, pid: i32, package_dir: &Path) -> Result<Vec<Leak>, String> {
    let own = PathBuf::from(format!("{}.{pid}", log_prefix.display()));
    let text = std::fs::read_to_string(&own).unwrap_or_default();
    remove_reports(log_prefix);
    if text.contains("LeakSanitizer has encountered a fatal error") {
        let hint = text.lines().filter_map(|line| line.split_once("HINT: ")).map(|(_, hint)| hint).next_back();
        return Err(format!(
            "LeakSanitizer could not check a test process{}",
            hint.map(|h| format!(" ({h})")).unwrap_or_default()
        ));
    }
    Ok(lsan::parse(&text, package_dir))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HeapCheck {
        HeapCheck::new(runtime::Runtime { path: "/lib/libasan.so".into() }, std::iter::empty())
    }

    #[test]
    fn the_own_report_is_read_and_every_report_of_the_prefix_removed() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("heap-3");
        std::fs::write(dir.path().join("heap-3.100"), "Direct leak of 8 byte(s) in 1 object(s) allocated from:\n")
            .unwrap();
        std::fs::write(dir.path().join("heap-3.101"), "Direct leak of 99 byte(s) in 9 object(s) allocated from:\n")
            .unwrap();
        std::fs::write(dir.path().join("heap-30.100"), "not ours").unwrap();
        let leaks = check().leaks_of(&prefix, 100, dir.path()).unwrap();
        assert_eq!(leaks, [Leak::Heap { bytes: 8, blocks: 1, indirect: false, sites: vec![] }]);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["heap-30.100"]);
    }

    #[test]
    fn a_runtime_that_could_not_check_is_a_failure_not_a_pass() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("heap-1");
        std::fs::write(
            dir.path().join("heap-1.7"),
            "==7==LeakSanitizer has encountered a fatal error.\n==7==HINT: LeakSanitizer does not work under ptrace (strace, gdb, etc)\n",
        )
        .unwrap();
        let heap = check();
        assert_eq!(heap.leaks_of(&prefix, 7, dir.path()), None);
        assert!(heap.failure().unwrap().contains("does not work under ptrace"), "{:?}", heap.failure());
    }

    #[test]
    fn the_runtime_comes_first_in_ld_preload() {
        let [(_, preload), (_, options), (_, lsan)] =
            check().environment(Path::new("/s/heap-1"), false, Some("/x/other.so".into()));
        assert_eq!(preload, "/lib/libasan.so:/x/other.so");
        assert!(options.to_string_lossy().contains("exitcode=0"));
        assert_eq!(lsan, "");
    }
}
