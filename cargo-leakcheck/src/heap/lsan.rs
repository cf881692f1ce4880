//! Reading LeakSanitizer's report of one test process into heap leaks.
//!
//! The report (one file per process, `PREFIX.PID`) is text:
//!
//! ```text
//! Direct leak of 4096 byte(s) in 1 object(s) allocated from:
//!     #0 0x7f89 in __interceptor_malloc ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:69
//!     #7 0x5562 in h::forgotten_vec::h9b87613dff96fdf2 tests/h.rs:4
//!
//! Indirect leak of 1200 byte(s) in 1 object(s) allocated from:
//! SUMMARY: AddressSanitizer: 5296 byte(s) leaked in 2 allocation(s).
//! ```
//!
//! Each group becomes one `heap` leak (bytes, blocks, direct or indirect);
//! its frames, when the run recorded stacks, become the leak's site the way
//! our other sites are made (std, the runtime and registry crates folded
//! away). Relative source paths are the compiler's, relative to the
//! workspace root: they are found from the package directory upwards, and a
//! path found nowhere (std's `library/...`, the runtime's own) is not the
//! code under test.

use std::path::Path;

use leakcheck::record::SiteRole;
use leakcheck::Leak;

/// Groups read from one report, largest first. Text that is not a report
/// (a truncated file, anything planted) yields no group: the caller decides
/// whether an unreadable report is itself a finding.
pub(crate) fn parse(report: &str, package_dir: &Path) -> Vec<Leak> {
    let mut leaks = Vec::new();
    let mut lines = report.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((bytes, blocks, indirect)) = group_header(line.trim()) else { continue };
        let mut frames = Vec::new();
        while let Some(line) = lines.next_if(|line| line.trim_start().starts_with('#')) {
            frames.extend(frame_of(line.trim()).and_then(|frame| frame.resolve(package_dir)));
        }
        let sites = leakcheck::sites::site_of_frames(&frames, package_dir)
            .map(|site| leakcheck::record::Site {
                role: SiteRole::Allocated,
                bytes: Some(bytes),
                blocks: Some(blocks),
                ..site
            })
            .into_iter()
            .collect();
        leaks.push(Leak::Heap { bytes, blocks, indirect, sites });
    }
    leaks.sort_by_key(|leak| match leak {
        Leak::Heap { bytes, indirect, .. } => (*indirect, std::cmp::Reverse(*bytes)),
        _ => (true, std::cmp::Reverse(0)),
    });
    leaks
}

/// `Direct leak of 4096 byte(s) in 1 object(s) allocated from:`.
fn group_header(line: &str) -> Option<(u64, u64, bool)> {
    let (kind, rest) = line.split_once(" leak of ")?;
    let indirect = match kind {
        "Direct" => false,
        "Indirect" => true,
        _ => return None,
    };
    let (bytes, rest) = rest.split_once(" byte(s) in ")?;
    let (blocks, _) = rest.split_once(" object(s)")?;
    Some((bytes.parse().ok()?, blocks.parse().ok()?, indirect))
}

/// One frame line: `#7 0x5562 in FUNCTION FILE:LINE[:COLUMN]`. Frames
/// without a source line (`(module+0x1f)`) say nothing we can show.
struct RawFrame<'a> {
    function: &'a str,
    file: &'a str,
    line: u32,
}

fn frame_of(line: &str) -> Option<RawFrame<'_>> {
    let rest = line.strip_prefix('#')?;
    let (_, rest) = rest.split_once(" in ")?;
    // The function may contain spaces (`<T as Trait>::f`); the location is
    // the last word.
    let (function, location) = rest.rsplit_once(' ')?;
    let mut parts = location.rsplitn(3, ':');
    let last: u32 = parts.next()?.parse().ok()?;
    let (file, line) = match (parts.next(), parts.next()) {
        // FILE:LINE:COLUMN
        (Some(line), Some(file)) if line.parse::<u32>().is_ok() => (file, line.parse().ok()?),
        // FILE:LINE
        (Some(file), None) => (file, last),
        (Some(head), Some(file)) => (location.get(..file.len() + head.len() + 1).unwrap_or(location), last),
        _ => return None,
    };
    Some(RawFrame { function, file, line })
}

impl RawFrame<'_> {
    /// (function demangled without its hash, absolute file, line); `None`
    /// for a relative path that is no file of the workspace.
    fn resolve(&self, package_dir: &Path) -> Option<(String, String, u32)> {
        let file = if Path::new(self.file).is_absolute() {
            self.file.to_owned()
        } else {
            let found = package_dir.ancestors().map(|dir| dir.join(self.file)).find(|path| path.is_file())?;
            found.to_string_lossy().into_owned()
        };
        Some((readable_function(self.function), file, self.line))
    }
}

/// A function name as we show it: mangled names (v0, `_R...`) demangled;
/// names the runtime demangled the legacy way keep `$u7b$`-style escapes
/// and a `::h0123...` hash, which go.
fn readable_function(name: &str) -> String {
    if name.starts_with("_R") || name.starts_with("_ZN") {
        return format!("{:#}", rustc_demangle::demangle(name));
    }
    let name = match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|byte| byte.is_ascii_hexdigit()) => head,
        _ => name,
    };
    // A segment starting with an escape is written with a leading `_`.
    const ESCAPES: [(&str, &str); 10] = [
        ("::_$", "::$"),
        ("$u7b$", "{"),
        ("$u7d$", "}"),
        ("$LT$", "<"),
        ("$GT$", ">"),
        ("$u20$", " "),
        ("$RF$", "&"),
        ("$BP$", "*"),
        ("$C$", ","),
        ("$u27$", "'"),
    ];
    ESCAPES.iter().fold(name.to_owned(), |name, (escape, plain)| name.replace(escape, plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "
=================================================================
==24583==ERROR: LeakSanitizer: detected memory leaks

Direct leak of 24 byte(s) in 1 object(s) allocated from:
    #0 0x7f8926ab89cf in __interceptor_malloc ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:69
    #1 0x55db9ceaeff6 in alloc::alloc::alloc::hfc9d3c75a03549d6 /rustc/5980/library/alloc/src/alloc.rs:95
    #2 0x55794ec51905 in _RNvMs4_NtCslNYArtu3iFV_5alloc7raw_vecNtB5_11RawVecInner15try_allocate_in (/tmp/h+0xc0905)
    #7 0x55db9ceaeff6 in h::leak_discarded::h02d2f111ca7d3038 tests/h.rs:8
    #8 0x55db9ceade86 in h::leak_discarded::_$u7b$$u7b$closure$u7d$$u7d$::hd9d1d296dd485e85 tests/h.rs:8:5
    #9 0x56208e65495a in _RNCNvCs3mSbOeLENLV_4test19run_test_in_process0B3_ library/test/src/lib.rs:686
    #21 0x7f89268a71f4 in start_thread nptl/pthread_create.c:442

Indirect leak of 1200 byte(s) in 1 object(s) allocated from:
    #0 0x7f8926ab89cf in __interceptor_malloc ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:69
    #1 0x55db9ceaeff6  (/tmp/h+0xc0905)

SUMMARY: AddressSanitizer: 1224 byte(s) leaked in 2 allocation(s).
";

    #[test]
    fn groups_become_heap_leaks_with_the_test_line_as_site() {
        let package = tempfile::tempdir().unwrap();
        std::fs::create_dir(package.path().join("tests")).unwrap();
        std::fs::write(package.path().join("tests/h.rs"), "").unwrap();
        let leaks = parse(REPORT, package.path());
        assert_eq!(leaks.len(), 2, "{leaks:#?}");
        let Leak::Heap { bytes: 24, blocks: 1, indirect: false, sites } = &leaks[0] else { panic!("{leaks:#?}") };
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].location, "tests/h.rs:8");
        assert_eq!(sites[0].function, "h::leak_discarded");
        assert_eq!(sites[0].bytes, Some(24));
        assert_eq!(sites[0].role, SiteRole::Allocated);
        let Leak::Heap { bytes: 1200, blocks: 1, indirect: true, sites } = &leaks[1] else { panic!("{leaks:#?}") };
        assert!(sites.is_empty());
    }

    #[test]
    fn anything_else_is_no_leak() {
        let dir = Path::new("/");
        assert!(parse("", dir).is_empty());
        assert!(parse("Direct leak of many byte(s) in 1 object(s)\nrandom text", dir).is_empty());
        assert!(parse("==1==ERROR: AddressSanitizer: SEGV", dir).is_empty());
    }

    #[test]
    fn function_names_lose_their_hash_and_escapes() {
        assert_eq!(readable_function("h::leak_discarded::h02d2f111ca7d3038"), "h::leak_discarded");
        assert_eq!(readable_function("h::t::_$u7b$$u7b$closure$u7d$$u7d$::hd9d1d296dd485e85"), "h::t::{{closure}}");
        assert_eq!(readable_function("_RNvCs3mSbOeLENLV_4test19run_test_in_process"), "test::run_test_in_process");
    }

    #[test]
    fn frame_lines_with_and_without_columns() {
        let frame = frame_of("#3 0x1 in <a::B as c::D>::f::h0123 src/x.rs:12:7").unwrap();
        assert_eq!((frame.function, frame.file, frame.line), ("<a::B as c::D>::f::h0123", "src/x.rs", 12));
        let frame = frame_of("#3 0x1 in f src/x.rs:12").unwrap();
        assert_eq!((frame.file, frame.line), ("src/x.rs", 12));
        assert!(frame_of("#1 0x55db9ceaeff6  (/tmp/h+0xc0905)").is_none());
    }
}
