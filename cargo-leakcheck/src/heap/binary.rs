//! Can a test binary's heap be checked by a preloaded runtime? Read off its
//! ELF file, never guessed: the runtime sees only what goes through the
//! dynamic loader and libc `malloc`.

use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};

/// Why a binary's heap cannot be checked by the preloaded runtime, in words
/// for the report ("its #[global_allocator] is jemalloc").
pub(crate) type Unsupported = String;

/// `Ok` when preloading a leak-checking runtime into `executable` checks its
/// heap; `Err` says why not.
pub(crate) fn check(executable: &Path) -> Result<(), Unsupported> {
    // Read whole: parsing through object's ReadCache makes a read() per
    // symbol name, 14 s for a 42 MB test binary; reading it is milliseconds.
    let bytes = std::fs::read(executable).map_err(|error| format!("its file cannot be read ({error})"))?;
    let elf = object::File::parse(&*bytes).map_err(|_| "it is not an ELF file".to_owned())?;
    match elf.section_by_name(".interp").and_then(|section| section.data().ok()) {
        None => return Err("it is statically linked (nothing can be preloaded)".into()),
        Some(interp) if String::from_utf8_lossy(interp).contains("musl") => {
            return Err("it is linked against musl (the runtime needs glibc)".into())
        }
        Some(_) => {}
    }
    let mut names = elf.symbols().filter_map(|symbol| symbol.name().ok().map(str::to_owned)).peekable();
    if names.peek().is_none() {
        return Err("it is stripped, so its allocator cannot be told".into());
    }
    verdict(names)
}

/// The verdict from a binary's symbol names.
fn verdict(names: impl Iterator<Item = String>) -> Result<(), Unsupported> {
    let mut default_allocator = false;
    let mut ours = false;
    let mut bypassing: Option<&'static str> = None;
    for name in names {
        if let Some(sanitizer) = SANITIZERS.iter().find(|(symbol, _)| name == *symbol) {
            return Err(format!("it is built with {} already", sanitizer.1));
        }
        // std's default allocator (libc malloc) is `__rdl_alloc`; a
        // #[global_allocator] replaces it in the `__rust_alloc` shim.
        default_allocator |= name.ends_with("___rdl_alloc") || name.ends_with("__rdl_alloc");
        ours |= name.contains("leakcheck..alloc..Alloc$u20$as$u20$core..alloc..global..GlobalAlloc");
        if bypassing.is_none() {
            bypassing = BYPASSING.iter().find(|(needle, _)| name.contains(needle)).map(|(_, allocator)| *allocator);
        }
    }
    match (default_allocator, ours, bypassing) {
        (true, _, _) | (false, true, None) => Ok(()),
        (false, _, Some(allocator)) => {
            Err(format!("its #[global_allocator] is {allocator}, which does not use malloc"))
        }
        (false, false, None) => Err("it has a #[global_allocator] of its own, which may not use malloc".into()),
    }
}

/// Runtimes whose init symbol says a sanitizer is linked in.
const SANITIZERS: [(&str, &str); 5] = [
    ("__asan_init", "AddressSanitizer"),
    ("__lsan_init", "LeakSanitizer"),
    ("__tsan_init", "ThreadSanitizer"),
    ("__msan_init", "MemorySanitizer"),
    ("__hwasan_init", "HWAddressSanitizer"),
];

/// Allocators with their own memory: a symbol name they leave, and theirs.
const BYPASSING: [(&str, &str); 5] = [
    ("jemalloc", "jemalloc"),
    ("mi_malloc", "mimalloc"),
    ("snmalloc", "snmalloc"),
    ("rpmalloc", "rpmalloc"),
    ("tcmalloc", "tcmalloc"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn the_default_allocator_and_leakchecks_own_are_checkable() {
        assert_eq!(verdict(names(&["main", "_RNvCsfLfy6EI15iL_7___rustc11___rdl_alloc"])), Ok(()));
        let ours = "_ZN76_$LT$leakcheck..alloc..Alloc$u20$as$u20$core..alloc..global..GlobalAlloc$GT$5alloc17h1E";
        assert_eq!(verdict(names(&["main", ours])), Ok(()));
    }

    #[test]
    fn other_allocators_and_sanitizers_are_named() {
        let jemalloc = verdict(names(&["_rjem_malloc", "tikv_jemallocator::alloc"])).unwrap_err();
        assert!(jemalloc.contains("jemalloc"), "{jemalloc}");
        let unknown = verdict(names(&["main", "_RNvCs_7___rustc12___rust_alloc"])).unwrap_err();
        assert!(unknown.contains("of its own"), "{unknown}");
        let asan = verdict(names(&["__asan_init", "___rdl_alloc"])).unwrap_err();
        assert!(asan.contains("AddressSanitizer"), "{asan}");
    }

    #[test]
    fn this_test_binary_is_checkable() {
        // Built by cargo with std's default allocator, dynamically linked.
        let executable = std::env::current_exe().unwrap();
        assert_eq!(check(&executable), Ok(()));
        assert!(check(Path::new("/nonexistent/x")).is_err());
    }
}
