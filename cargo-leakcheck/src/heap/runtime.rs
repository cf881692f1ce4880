//! Finding a leak-checking runtime to preload into test processes.
//!
//! GCC's AddressSanitizer runtime (`libasan.so`) carries LeakSanitizer and
//! works when preloaded into an uninstrumented binary: std's allocator is
//! libc `malloc`, which the runtime interposes. clang's `libclang_rt.asan` is
//! the same runtime under another name. Standalone LSan (`liblsan.so.0`,
//! GCC 12) is not used: preloaded, its `signal` interceptor is never set up
//! and the first `signal()` call (std's start-up resets SIGPIPE) jumps to
//! address 0.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where to look, in order, when no runtime is named: the compilers' own
/// answers first (they know their install), then the usual library paths.
const COMPILER_QUERIES: [(&str, &str); 4] = [
    ("gcc", "libasan.so"),
    ("cc", "libasan.so"),
    ("clang", "libclang_rt.asan-x86_64.so"),
    ("clang", "libclang_rt.asan.so"),
];
const LIBRARY_DIRS: [&str; 4] = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu"];
const LIBRARY_NAMES: [&str; 3] = ["libasan.so.8", "libasan.so.6", "libasan.so"];

/// The environment variable naming a runtime explicitly.
pub(crate) const RUNTIME_ENV: &str = "LEAKCHECK_HEAP_RUNTIME";

/// A leak-checking runtime found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Runtime {
    pub(crate) path: PathBuf,
}

/// The runtime named by `LEAKCHECK_HEAP_RUNTIME` (must exist), else the first
/// one found. `Err` says why there is none, in one sentence.
pub(crate) fn find() -> Result<Runtime, String> {
    if let Some(named) = std::env::var_os(RUNTIME_ENV).filter(|value| !value.is_empty()) {
        let path = PathBuf::from(named);
        return if path.is_file() {
            Ok(Runtime { path })
        } else {
            Err(format!("{RUNTIME_ENV}={} names no file", path.display()))
        };
    }
    let from_compilers = COMPILER_QUERIES.iter().filter_map(|(compiler, name)| ask_compiler(compiler, name));
    let from_dirs = LIBRARY_DIRS.iter().flat_map(|dir| LIBRARY_NAMES.iter().map(move |name| Path::new(dir).join(name)));
    from_compilers.chain(from_dirs).find(|path| path.is_file()).map(|path| Runtime { path }).ok_or_else(|| {
        format!(
            "no LeakSanitizer runtime was found (GCC's libasan.so, from gcc or a libasan package, or clang's \
             libclang_rt.asan); install one or name it with {RUNTIME_ENV}=PATH"
        )
    })
}

/// `COMPILER -print-file-name=NAME`: an absolute path when the compiler has
/// the file (it echoes the bare name when it has not).
fn ask_compiler(compiler: &str, name: &str) -> Option<PathBuf> {
    let output = Command::new(compiler)
        .arg(format!("-print-file-name={name}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let printed = String::from_utf8(output.stdout).ok()?;
    let path = PathBuf::from(printed.trim());
    (output.status.success() && path.is_absolute()).then_some(path)
}

/// The runtime's options for one test process. `log_prefix`: the runtime
/// writes its report to `PREFIX.PID`, one file per process, so the test's
/// children (which inherit the preload) neither print nor fail.
///
/// `full_stacks` (explain re-runs): unwind every allocation with the slow,
/// DWARF-based unwinder, since Rust code has no frame pointers and the fast
/// unwinder skips the test's own frames; the first run records almost no stack
/// (two frames, inside std's allocator), which is cheaper, and only
/// says how much leaked.
///
/// Every other option keeps a process behaving as it does without the
/// runtime: no exit code from a leak, no signal handlers of its own (a
/// crash stays a crash by that signal), core dumps as configured, `malloc`
/// failing the way glibc's does, no checks in intercepted string and memory
/// functions (an uninstrumented child with an overlapping `memcpy` must not
/// start dying under us).
pub(crate) fn options(log_prefix: &Path, full_stacks: bool) -> String {
    // Two frames (the interceptor and its caller) is the least LSan still
    // reports: with fewer, every leak is dropped as if it had no stack.
    let stacks = if full_stacks { "malloc_context_size=30:fast_unwind_on_malloc=0" } else { "malloc_context_size=2" };
    [
        "detect_leaks=1",
        "exitcode=0",
        "leak_check_at_exit=1",
        "handle_segv=0",
        "handle_sigbus=0",
        "handle_sigill=0",
        "handle_sigfpe=0",
        "handle_abort=0",
        "use_sigaltstack=0",
        "disable_coredump=0",
        "allocator_may_return_null=1",
        "alloc_dealloc_mismatch=0",
        "new_delete_type_mismatch=0",
        "replace_str=0",
        "replace_intrin=0",
        "intercept_strlen=0",
        "intercept_strchr=0",
        "intercept_strndup=0",
        "intercept_strstr=0",
        "intercept_memcmp=0",
        "strict_memcmp=0",
        "detect_odr_violation=0",
        "detect_container_overflow=0",
        "check_malloc_usable_size=0",
        "detect_stack_use_after_return=0",
        "quarantine_size_mb=0",
        "thread_local_quarantine_size_kb=0",
        "poison_heap=0",
        "max_malloc_fill_size=0",
        "protect_shadow_gap=0",
        "print_suppressions=0",
        stacks,
    ]
    .join(":")
        // Quoted: the option list is split at ':' outside quotes.
        + &format!(":log_path=\"{}\"", log_prefix.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_the_log_prefix_and_the_stack_mode() {
        let cheap = options(Path::new("/tmp/x/heap-3"), false);
        assert!(cheap.ends_with(":log_path=\"/tmp/x/heap-3\""), "{cheap}");
        assert!(cheap.contains("malloc_context_size=2") && !cheap.contains("fast_unwind_on_malloc=0"));
        let full = options(Path::new("/tmp/x/heap-3"), true);
        assert!(full.contains("fast_unwind_on_malloc=0") && full.contains("exitcode=0"), "{full}");
    }
}
