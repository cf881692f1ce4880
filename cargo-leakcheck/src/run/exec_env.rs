//! Keeping the heap runtime to the test process: what the test execs runs
//! without it.
//!
//! The runtime is preloaded through the environment (`LD_PRELOAD` and its
//! options), which every child inherits: preloaded, `bash -i -c exit` takes
//! 1.6 s instead of 0.1 s, and a test that drives an interactive shell times
//! out. Only the test process's own heap is checked, so its children need
//! none of it. When the heap is checked, the exit probe also stops every
//! `execve`/`execveat` of the test's processes (see
//! [`super::probe::ExitFilter::with_exec`]); before letting one proceed we
//! rewrite, in the caller's memory, the environment strings the heap check
//! added:
//!
//! - `LD_PRELOAD=<runtime>` becomes `ld_preload=<runtime>` (a name nothing
//!   reads), `LD_PRELOAD=<runtime>:<user's>` becomes
//!   `LD_PRELOAD=<spaces>:<user's>` (ld.so splits at spaces and colons);
//! - our exact `ASAN_OPTIONS=...` and `LSAN_OPTIONS=` get lower-case names.
//!
//! Same lengths, so the strings are rewritten in place
//! (`process_vm_writev`, allowed on our own descendants). What the test
//! itself set (another `LD_PRELOAD`, its own options) does not match and is
//! left alone. After a `vfork` (`posix_spawn`) the child shares the test's
//! memory, so the test's own environment reads the rewritten names from then
//! on: it already loaded the runtime, and its later children should not.
//! Best effort by design: memory we cannot read or write leaves the exec as
//! it was, preloaded, which is only slower.

use std::mem;

/// Environment entries the heap check added to one test process.
#[derive(Debug, Clone)]
pub(crate) struct HiddenEnv {
    /// Whole entries (`NAME=VALUE`) to rename.
    exact: Vec<Vec<u8>>,
    /// `LD_PRELOAD=<runtime>:`, the head to blank when the user preloads too.
    preload_head: Vec<u8>,
    /// The thread and environment array of the last exec looked at: a PATH
    /// search execs once per directory with the same array, already seen.
    last: std::cell::Cell<(i32, u64)>,
}

/// The longest environment we walk: far more than any real one.
const MAX_ENTRIES: usize = 1 << 16;
/// Bytes read to tell whether an entry may be ours.
const PREFIX: usize = 16;
/// Entries read at once (at most IOV_MAX, 1024, remote ranges per read).
const BATCH: usize = 512;

impl HiddenEnv {
    /// `added`: the variables the heap check set; `runtime`: the preloaded
    /// library, the head of `LD_PRELOAD`.
    pub(crate) fn new<'a>(added: impl IntoIterator<Item = (&'a str, &'a [u8])>, runtime: &[u8]) -> HiddenEnv {
        let exact = added.into_iter().map(|(name, value)| [name.as_bytes(), b"=", value].concat()).collect();
        HiddenEnv { exact, preload_head: [b"LD_PRELOAD=", runtime, b":"].concat(), last: Default::default() }
    }

    /// Rewrites the environment of a stopped `execve` (`args[2]`) or
    /// `execveat` (`args[3]`) of thread `tid`. Cheap, since it runs for each
    /// exec a test makes (a PATH search is one exec per directory): the
    /// pointers in one read, then one read of every entry's first bytes.
    pub(crate) fn hide_in_exec(&self, tid: i32, syscall: i32, args: &[u64; 6]) {
        let envp = match syscall as libc::c_long {
            libc::SYS_execve => args[2],
            libc::SYS_execveat => args[3],
            _ => return,
        };
        if self.last.replace((tid, envp)) == (tid, envp) {
            return;
        }
        let mut pointers = [0u64; BATCH];
        let mut at = envp;
        for _ in 0..MAX_ENTRIES / BATCH {
            let whole = read_remote(tid, at, bytes_of(&mut pointers)) / mem::size_of::<u64>();
            let end = pointers[..whole].iter().position(|&entry| entry == 0);
            let entries = &pointers[..end.unwrap_or(whole)];
            self.hide_entries(tid, entries);
            if end.is_some() || whole < BATCH {
                return; // the end, or unreadable memory: stop where it ends
            }
            at += (whole * mem::size_of::<u64>()) as u64;
        }
    }

    /// Reads the first [`PREFIX`] bytes of every entry at once, then looks
    /// closer at those that may be ours.
    fn hide_entries(&self, tid: i32, entries: &[u64]) {
        let mut prefixes = vec![0u8; entries.len() * PREFIX];
        let local = libc::iovec { iov_base: prefixes.as_mut_ptr().cast(), iov_len: prefixes.len() };
        let remote: Vec<libc::iovec> = entries
            .iter()
            .map(|&entry| libc::iovec { iov_base: entry as *mut libc::c_void, iov_len: PREFIX })
            .collect();
        // SAFETY: `local` is our buffer of exactly the remote total; the
        // kernel checks each remote range against the target's mappings and
        // stops at the first that faults (an entry near the end of a
        // mapping: those are read one by one below).
        let read = unsafe { libc::process_vm_readv(tid, &local, 1, remote.as_ptr(), remote.len() as u64, 0) };
        let whole = (read.max(0) as usize) / PREFIX;
        for (index, &entry) in entries.iter().enumerate() {
            let mut single = [0u8; PREFIX];
            let prefix = if index < whole {
                &prefixes[index * PREFIX..(index + 1) * PREFIX]
            } else {
                let got = read_remote(tid, entry, &mut single);
                &single[..got]
            };
            if self.may_be_ours(prefix) {
                self.hide_entry(tid, entry);
            }
        }
    }

    fn may_be_ours(&self, prefix: &[u8]) -> bool {
        let ours = |candidate: &[u8]| candidate.starts_with(&prefix[..prefix.len().min(candidate.len())]);
        self.exact.iter().any(|entry| ours(entry)) || ours(&self.preload_head)
    }

    fn hide_entry(&self, tid: i32, entry: u64) {
        let longest = self.exact.iter().map(Vec::len).chain([self.preload_head.len()]).max().unwrap_or(0);
        let mut text = vec![0u8; longest + 1];
        let got = read_remote(tid, entry, &mut text);
        let text = &text[..got];
        let ends_at = |length: usize| text.get(length) == Some(&0);
        if let Some(exact) = self.exact.iter().find(|exact| text.starts_with(exact) && ends_at(exact.len())) {
            let name_length = exact.iter().position(|&byte| byte == b'=').unwrap_or(0);
            write_remote(tid, entry, &exact[..name_length].to_ascii_lowercase());
        } else if text.starts_with(&self.preload_head) {
            let blank = vec![b' '; self.preload_head.len() - "LD_PRELOAD=".len()];
            write_remote(tid, entry + "LD_PRELOAD=".len() as u64, &blank);
        }
    }
}

fn bytes_of(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64s have no padding and any byte pattern is a valid u64; the
    // slice covers exactly their storage.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), mem::size_of_val(words)) }
}

/// Reads `buffer.len()` bytes at `address` of `pid`; how many it could.
pub(super) fn read_remote(pid: i32, address: u64, buffer: &mut [u8]) -> usize {
    let local = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
    let remote = libc::iovec { iov_base: address as *mut libc::c_void, iov_len: buffer.len() };
    // SAFETY: `local` is our buffer, of its length; the kernel checks
    // `remote` against the target's mappings and stops at the first fault.
    let read = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    read.max(0) as usize
}

/// Writes `bytes` at `address` of `pid`, if its memory allows.
fn write_remote(pid: i32, address: u64, bytes: &[u8]) {
    let local = libc::iovec { iov_base: bytes.as_ptr().cast_mut().cast(), iov_len: bytes.len() };
    let remote = libc::iovec { iov_base: address as *mut libc::c_void, iov_len: bytes.len() };
    // SAFETY: the kernel only reads `local` (our slice) and checks `remote`
    // against the target's writable mappings.
    unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    /// Our own process stands in for the exec'ing one: the rewrite reads and
    /// writes through process_vm_*, on this process's memory.
    fn rewritten(entries: &[&str]) -> Vec<String> {
        let strings: Vec<CString> = entries.iter().map(|entry| CString::new(*entry).unwrap()).collect();
        let mut envp: Vec<u64> = strings.iter().map(|s| s.as_ptr() as u64).collect();
        envp.push(0);
        let hidden = HiddenEnv::new(
            [("LD_PRELOAD", b"/rt/libasan.so".as_slice()), ("ASAN_OPTIONS", b"detect_leaks=1".as_slice())],
            b"/rt/libasan.so",
        );
        let args = [0, 0, envp.as_ptr() as u64, 0, 0, 0];
        hidden.hide_in_exec(std::process::id() as i32, libc::SYS_execve as i32, &args);
        strings.iter().map(|s| s.to_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn the_heap_checks_entries_are_hidden_and_nothing_else_is_touched() {
        let after = rewritten(&[
            "PATH=/bin",
            "LD_PRELOAD=/rt/libasan.so",
            "ASAN_OPTIONS=detect_leaks=1",
            "ASAN_OPTIONS=detect_leaks=1:verbosity=1",
            "LD_PRELOAD=/other.so",
        ]);
        assert_eq!(
            after,
            [
                "PATH=/bin",
                "ld_preload=/rt/libasan.so",
                "asan_options=detect_leaks=1",
                "ASAN_OPTIONS=detect_leaks=1:verbosity=1",
                "LD_PRELOAD=/other.so"
            ]
        );
    }

    #[test]
    fn a_users_preload_after_the_runtime_stays() {
        let after = rewritten(&["LD_PRELOAD=/rt/libasan.so:/mine.so", "A"]);
        assert_eq!(after, [format!("LD_PRELOAD={}/mine.so", " ".repeat("/rt/libasan.so:".len())), "A".into()]);
    }
}
