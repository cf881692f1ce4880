//! Explaining a leak: where the leaked resource was created.
//!
//! Detection stays cheap: nothing here runs for a clean test. A test that
//! leaked is run once more with recording on (an explain re-run, see
//! [`Recorder`]), and the sites of that run's leaks are attached to the
//! leaks of the first run that match them ([`attach`]).
//!
//! - fds and child processes: [`trap`] (a seccomp filter that traps the
//!   syscalls creating them; x86_64 with glibc);
//! - threads: [`threads`] (what the leaked thread runs: its closure);
//! - heap: [`heap`] (dhat's recorder behind [`crate::Alloc`]).

mod heap;
mod threads;
#[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
mod trap;

use crate::record::{Leak, Site, SiteRole};

/// At most this many frames of the code under test per site.
const FRAMES_PER_SITE: usize = 8;
/// At most this many heap sites per heap leak.
const HEAP_SITES: usize = 5;
/// Leaks explained per test: past this many, more sites say nothing new
/// (a test leaking 10,000 fds leaks them from one loop) and cost time.
const EXPLAINED_LEAKS: usize = 32;

/// How a test explains its leaks, from this variable:
/// - `1` (by hand, under nextest or cargo test): a `#[leakcheck::test]`
///   that leaked runs once more in its process, recording, and its report
///   shows the sites;
/// - `record`, `record-heap` (set by `cargo leakcheck` for its explain
///   re-run of such a test): the test's one run records (heap blocks too
///   with `record-heap`, when the first run leaked heap);
/// - `0`: `leakcheck::main!()` does not re-run leaking tests to explain
///   them (by default it does, in a fresh child).
pub const EXPLAIN_ENV: &str = "LEAKCHECK_EXPLAIN";

/// What [`EXPLAIN_ENV`] asks of a `#[leakcheck::test]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explain {
    /// Nothing.
    Off,
    /// Record in this run (heap blocks too when `heap`).
    ThisRun {
        /// Record heap blocks (the first run leaked heap).
        heap: bool,
    },
    /// Run once more, recording, after a run that leaked.
    AfterALeak,
}

/// [`EXPLAIN_ENV`]'s request to a `#[leakcheck::test]`.
pub(crate) fn explain_mode() -> Explain {
    match std::env::var(EXPLAIN_ENV).as_deref() {
        Ok("record") => Explain::ThisRun { heap: false },
        Ok("record-heap") => Explain::ThisRun { heap: true },
        Ok("1") => Explain::AfterALeak,
        _ => Explain::Off,
    }
}

/// Recording in progress, from just before the test body to just after its
/// check.
pub(crate) struct Recorder {
    heap: Option<heap::HeapRecorder>,
    syscalls: Result<(), String>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("heap", &self.heap.is_some()).field("syscalls", &self.syscalls).finish()
    }
}

impl Recorder {
    /// Starts recording fd, thread and process creation, and with `heap`
    /// heap blocks (only when the first run leaked heap: dhat's report
    /// resolves every frame it saw, which can cost a fraction of a second).
    pub(crate) fn start(heap: bool) -> Recorder {
        #[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
        let syscalls = trap::start();
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu")))]
        let syscalls =
            Err("creation sites of fds, threads and children are recorded on x86_64 Linux (glibc) only".into());
        Recorder { heap: if heap { heap::HeapRecorder::start() } else { None }, syscalls }
    }

    /// Stops recording and gives each leak of `leaks` the sites found for it.
    /// Returns why fd, thread and child sites could not be recorded, if so.
    pub(crate) fn finish(self, leaks: &mut [Leak]) -> Option<String> {
        #[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
        let entries = if self.syscalls.is_ok() { trap::stop() } else { Vec::new() };
        let heap_sites = self.heap.map(heap::HeapRecorder::finish).unwrap_or_default();
        for leak in leaks.iter_mut().take(EXPLAINED_LEAKS) {
            let sites = match leak {
                Leak::Heap { .. } => heap_sites
                    .iter()
                    .filter_map(|live| {
                        let mut site = site_of(&live.ips, true)?;
                        site.role = SiteRole::Allocated;
                        site.bytes = Some(live.bytes);
                        site.blocks = Some(live.blocks);
                        Some(site)
                    })
                    .fold(Vec::<Site>::new(), merge_same_location)
                    .into_iter()
                    .take(HEAP_SITES)
                    .collect(),
                Leak::Thread { tid, .. } => threads::stack_of(*tid)
                    .and_then(|ips| site_of(&ips, false))
                    .map(|site| Site { role: SiteRole::Running, ..site })
                    .into_iter()
                    .collect(),
                #[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
                _ => creation_entry(leak, &entries)
                    .and_then(|entry| site_of(&entry.ips[..entry.depth], false))
                    .into_iter()
                    .collect(),
                #[cfg(not(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu")))]
                _ => Vec::new(),
            };
            *leak.sites_mut() = sites;
        }
        self.syscalls.err()
    }
}

/// The trapped call that created what `leak` names: the latest one that
/// made its fd, forked its pid, or (for a spawned process) the latest spawn
/// that began before its pid was handed out.
#[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
fn creation_entry<'a>(leak: &Leak, entries: &'a [trap::Entry]) -> Option<&'a trap::Entry> {
    match leak {
        Leak::Fd { fd, .. } => {
            entries.iter().rev().find(|entry| matches!(entry.created, trap::Created::Fds(fds) if fds.contains(fd)))
        }
        Leak::Child { pid, orphaned: false, .. } => {
            let forked = entries
                .iter()
                .rev()
                .find(|entry| matches!(entry.created, trap::Created::Forked(forked) if forked == *pid));
            forked.or_else(|| {
                entries
                    .iter()
                    .filter_map(|entry| match entry.created {
                        trap::Created::Spawning { last_pid } if last_pid < *pid => Some((last_pid, entry)),
                        _ => None,
                    })
                    .max_by_key(|(last_pid, _)| *last_pid)
                    .map(|(_, entry)| entry)
            })
        }
        _ => None,
    }
}

/// Heap sites with the same location add up.
fn merge_same_location(mut sites: Vec<Site>, site: Site) -> Vec<Site> {
    match sites.iter_mut().find(|known| known.location == site.location) {
        Some(known) => {
            known.bytes = Some(known.bytes.unwrap_or(0) + site.bytes.unwrap_or(0));
            known.blocks = Some(known.blocks.unwrap_or(0) + site.blocks.unwrap_or(0));
        }
        None => sites.push(site),
    }
    sites
}

/// The site of a stack (return addresses, innermost first): its frames in
/// the code under test, or else in dependencies (a thread a library
/// started runs only library code), or `None` when it has neither.
///
/// For a heap block (`allocation`), a leakcheck frame other than the
/// allocator itself below the first frame of the code under test means
/// leakcheck's own bookkeeping made the block: no site.
fn site_of(ips: &[usize], allocation: bool) -> Option<Site> {
    let executable = executable_ranges();
    let mut made_by_leakcheck = false;
    let mut frames: Vec<(String, String, u32)> = Vec::new();
    // Shared libraries (libc, ...) are never the code under test.
    for &ip in ips.iter().filter(|&&ip| executable.iter().any(|(start, end)| (*start..*end).contains(&ip))) {
        // A return address points after its call; the call is one byte back.
        backtrace::resolve(ip.saturating_sub(1) as *mut std::ffi::c_void, |symbol| {
            let (Some(name), Some(file), Some(line)) = (symbol.name(), symbol.filename(), symbol.lineno()) else {
                return;
            };
            let function = format!("{name:#}");
            let file = file.to_string_lossy().into_owned();
            let outside_runtime =
                frames.iter().any(|(function, file, _)| !matches!(origin(function, file), Origin::Runtime));
            if !outside_runtime && matches!(origin(&function, &file), Origin::Runtime) {
                let leakcheck = function.starts_with("leakcheck::") || function.starts_with("<leakcheck::");
                made_by_leakcheck |= leakcheck && !function.contains("leakcheck::alloc::Alloc");
            }
            frames.push((function, file, line));
        });
        let own = frames.iter().filter(|(function, file, _)| matches!(origin(function, file), Origin::CodeUnderTest));
        if own.count() >= FRAMES_PER_SITE {
            break;
        }
    }
    if allocation && made_by_leakcheck {
        return None;
    }
    let current = std::env::current_dir().unwrap_or_default();
    site_of_frames(&frames, &current)
}

/// The site of a stack given as resolved frames (function, source file,
/// line), innermost first: its frames in the code under test, or else in
/// dependencies (a thread a library started runs only library code), or
/// `None` when it has neither (std, the runtime, leakcheck only). Files
/// are shown relative to `base` when below it.
pub fn site_of_frames(frames: &[(String, String, u32)], base: &std::path::Path) -> Option<Site> {
    let mut own: Vec<Frame> = Vec::new();
    let mut dependency: Vec<Frame> = Vec::new();
    for (function, file, line) in frames {
        // The attribute's generated body function carries the test's name.
        let function = function.replace("__leakcheck_body_", "");
        let frame = (function, format!("{}:{line}", shorten(file, base)), (file.clone(), *line));
        match origin(&frame.0, file) {
            Origin::CodeUnderTest if own.len() < FRAMES_PER_SITE => own.push(frame),
            Origin::Dependency if dependency.len() < FRAMES_PER_SITE => dependency.push(frame),
            _ => {}
        }
    }
    let mut frames = if own.is_empty() { dependency } else { own };
    frames.dedup();
    let (function, location, (file, line)) = frames.first().cloned()?;
    Some(Site {
        location,
        function,
        file: Some(file),
        line: Some(line),
        frames: frames.iter().map(|(function, location, _)| format!("{function} ({location})")).collect(),
        role: SiteRole::Created,
        bytes: None,
        blocks: None,
    })
}

/// A resolved frame: function, `file:line` for display, full path and line.
type Frame = (String, String, (String, u32));

/// Address ranges of the test executable's own mappings (Rust code is
/// linked in statically; shared libraries are elsewhere).
fn executable_ranges() -> &'static [(usize, usize)] {
    static RANGES: std::sync::OnceLock<Vec<(usize, usize)>> = std::sync::OnceLock::new();
    RANGES.get_or_init(read_executable_ranges)
}

fn read_executable_ranges() -> Vec<(usize, usize)> {
    let (Ok(exe), Ok(maps)) = (std::env::current_exe(), std::fs::read_to_string("/proc/self/maps")) else {
        return Vec::new();
    };
    let exe = exe.to_string_lossy();
    maps.lines()
        .filter(|line| line.ends_with(&*exe))
        .filter_map(|line| {
            let (start, end) = line.split_whitespace().next()?.split_once('-')?;
            Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?))
        })
        .collect()
}

enum Origin {
    CodeUnderTest,
    /// A crate from cargo's registry or a git checkout.
    Dependency,
    /// std and its vendored crates, leakcheck itself, the allocator shims,
    /// the `main` the harness generates and the attribute's test wrapper.
    Runtime,
}

fn origin(function: &str, file: &str) -> Origin {
    let runtime_file = file.starts_with("/rustc/") || file.starts_with("/rust/deps/") || file.contains("/lib/rustlib/");
    let runtime_function =
        ["leakcheck::", "<leakcheck::", "dhat::", "<dhat::", "backtrace::", "__rustc::", "__rust_", "__rg_"]
            .iter()
            .any(|prefix| function.starts_with(prefix))
            || function.contains("__leakcheck_run_")
            || function.split("::").collect::<Vec<_>>().as_slice().get(1..) == Some(&["main"]);
    if runtime_file || runtime_function {
        Origin::Runtime
    } else if file.contains("/.cargo/registry/") || file.contains("/.cargo/git/") || file.contains("/registry/src/") {
        Origin::Dependency
    } else {
        Origin::CodeUnderTest
    }
}

/// A path relative to the current directory when it is below it; a
/// registry crate's path from the crate's directory (`tokio-1.48.0/src/..`).
fn shorten(file: &str, base: &std::path::Path) -> String {
    if let Some((_, in_index)) = file.split_once("/registry/src/") {
        if let Some((_, in_crate)) = in_index.split_once('/') {
            return in_crate.to_owned();
        }
    }
    match std::path::Path::new(file).strip_prefix(base) {
        Ok(relative) => relative.to_string_lossy().into_owned(),
        Err(_) => file.to_owned(),
    }
}

/// Copies the sites of `explained` (the explain re-run's leaks) onto the
/// matching leaks of `leaks` (the first run's): the same kind and the same
/// identity, fd numbers, tids and pids aside, which may differ between runs.
pub fn attach(leaks: &mut [Leak], explained: &[Leak]) {
    let explained = &explained[..explained.len().min(EXPLAINED_LEAKS)];
    let mut taken = vec![false; explained.len()];
    for leak in leaks.iter_mut().take(EXPLAINED_LEAKS) {
        let found = (0..explained.len())
            .filter(|&index| !taken[index] && same_resource(leak, &explained[index]))
            // Prefer the same number too when there is one.
            .max_by_key(|&index| same_number(leak, &explained[index]));
        if let Some(index) = found {
            taken[index] = true;
            *leak.sites_mut() = explained[index].sites().to_vec();
        }
    }
    // A thread names itself once it runs, and the re-run's check does not
    // wait (grace 0): a thread of the re-run still carrying its creator's
    // name may be the named thread of the first run that has none yet.
    for leak in leaks.iter_mut().take(EXPLAINED_LEAKS) {
        if !matches!(leak, Leak::Thread { .. }) || !leak.sites().is_empty() {
            continue;
        }
        let not_yet_named = |candidate: &Leak| matches!(candidate, Leak::Thread { unnamed: true, .. });
        if let Some(index) = (0..explained.len()).find(|&index| !taken[index] && not_yet_named(&explained[index])) {
            taken[index] = true;
            *leak.sites_mut() = explained[index].sites().to_vec();
        }
    }
}

fn same_resource(a: &Leak, b: &Leak) -> bool {
    match (a, b) {
        (Leak::Fd { detail: a, target: ta, .. }, Leak::Fd { detail: b, target: tb, .. }) => {
            without_digits(a) == without_digits(b) && without_digits(ta) == without_digits(tb)
        }
        (Leak::Thread { name: a, unnamed: ua, .. }, Leak::Thread { name: b, unnamed: ub, .. }) => a == b && ua == ub,
        (Leak::Child { cmdline: a, orphaned: oa, .. }, Leak::Child { cmdline: b, orphaned: ob, .. }) => {
            a == b && oa == ob
        }
        (Leak::Heap { .. }, Leak::Heap { .. }) => true,
        _ => false,
    }
}

/// Ports, inodes and pids in names differ from run to run.
fn without_digits(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('#') {
            out.push('#');
        }
    }
    out
}

fn same_number(a: &Leak, b: &Leak) -> bool {
    match (a, b) {
        (Leak::Fd { fd: a, .. }, Leak::Fd { fd: b, .. }) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_go_to_the_leak_of_the_same_resource_whatever_its_number() {
        let site = |at: &str| Site {
            location: at.into(),
            function: "f".into(),
            file: None,
            line: None,
            frames: vec![],
            role: SiteRole::Created,
            bytes: None,
            blocks: None,
        };
        let fd = |fd: i32, target: &str, sites: Vec<Site>| Leak::Fd {
            fd,
            target: target.into(),
            detail: "regular file".into(),
            sites,
        };
        let thread = |tid: i32, sites: Vec<Site>| Leak::Thread {
            tid,
            name: "flusher".into(),
            state: "sleeping".into(),
            unnamed: false,
            waiting_in: None,
            sites,
        };
        let mut first = vec![fd(7, "/tmp/a", vec![]), thread(100, vec![])];
        let explained = vec![thread(200, vec![site("src/lib.rs:9")]), fd(8, "/tmp/a", vec![site("src/lib.rs:3")])];
        attach(&mut first, &explained);
        assert_eq!(first[0].sites(), &[site("src/lib.rs:3")]);
        assert_eq!(first[1].sites(), &[site("src/lib.rs:9")]);

        // Checked before it named itself: still its creator's name.
        let not_yet_named = Leak::Thread {
            tid: 300,
            name: "my_test".into(),
            state: "running".into(),
            unnamed: true,
            waiting_in: None,
            sites: vec![site("tests/t.rs:5")],
        };
        let mut first = vec![thread(100, vec![])];
        attach(&mut first, &[not_yet_named]);
        assert_eq!(first[0].sites(), &[site("tests/t.rs:5")]);
    }
}
