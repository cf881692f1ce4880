//! Reading a [`Snapshot`] from `/proc/<pid>`.
//!
//! Plain `std::fs` reads rather than the procfs crate: this is the per-test hot
//! path, and one `stat` read per task gives both name and state. Paths that
//! vanish mid-read (a thread exiting, an fd closed) are skipped, not errors.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use super::baseline::Baseline;
use super::stat::{parse_stat, read_lossy};
use super::types::{FdEntry, FdKey, ProcessInfo, Snapshot, ThreadEntry};

/// Reads the fds, threads and children of process `pid`.
///
/// An fd's identity is its file's device and inode: `fstat` for this
/// process (no path lookup), `stat` through `/proc/<pid>/fd/N` for another.
/// Its link target, which costs a `readlink` per fd, is read later and only
/// for new fds ([`fd_target`]): measured here, that keeps a snapshot of a
/// process with 64 fds at tens of microseconds rather than hundreds.
///
/// Fails only when the process itself is gone or `/proc` is unreadable.
pub fn take(pid: i32) -> io::Result<Snapshot> {
    take_since(pid, None)
}

/// Like [`take`], for a comparison with `baseline`: a thread of the
/// baseline (same tid) is not read again, and its entry carries the
/// baseline's start time and no name. That is what a check after a test
/// needs; [`Delta::between`](crate::diff::Delta::between) only looks at new threads.
pub fn take_since(pid: i32, baseline: Option<&Baseline>) -> io::Result<Snapshot> {
    let base = format!("/proc/{pid}");
    let own = pid == std::process::id() as i32;
    let fds = match own.then(|| own_fds(baseline)).flatten() {
        Some(fds) => fds,
        None => fds_from_directory(&base, own)?,
    };
    let mut threads = Vec::new();
    let mut task_dirs = Vec::new();
    // A single-threaded process (the usual case at a check) is only the
    // calling thread: the task count (the task directory's link count, 2 +
    // threads) saves listing the directory.
    let tids: Vec<i32> = if own && task_count(&base) == Some(1) {
        // SAFETY: gettid has no preconditions.
        vec![unsafe { libc::gettid() }]
    } else {
        let entries = fs::read_dir(format!("{base}/task"))?;
        let names = entries.map(|entry| entry.map(|entry| entry.file_name()));
        names.filter_map(|name| name.ok()?.to_str()?.parse::<i32>().ok()).collect()
    };
    for tid in tids {
        let task = Path::new(&base).join("task").join(tid.to_string());
        task_dirs.push(task.clone());
        let known = baseline.and_then(|baseline| baseline.threads.range((tid, 0)..=(tid, u64::MAX)).next());
        if let Some(&(_, start_time)) = known {
            threads.push(ThreadEntry { tid, name: String::new(), state: 'S', start_time });
            continue;
        }
        let Ok(stat) = read_lossy(task.join("stat")) else { continue };
        let Some(parsed) = parse_stat(&stat) else { continue };
        let thread =
            ThreadEntry { tid, name: parsed.comm.to_owned(), state: parsed.state, start_time: parsed.start_time };
        if !thread.is_dead() {
            threads.push(thread);
        }
    }
    threads.sort_by_key(|thread| thread.tid);
    let no_children = own && baseline.is_none_or(|baseline| baseline.children.is_empty()) && has_no_children();
    let mut child_pids = Vec::new();
    for task in task_dirs.iter().filter(|_| !no_children) {
        if let Ok(children) = fs::read_to_string(task.join("children")) {
            child_pids.extend(children.split_ascii_whitespace().filter_map(|pid| pid.parse::<i32>().ok()));
        }
    }
    child_pids.sort_unstable();
    child_pids.dedup();
    let children = child_pids.into_iter().filter_map(|child| process_info(child).ok()).collect();
    Ok(Snapshot { pid, fds, threads, children })
}

/// Every fd of process `pid` (`base` = `/proc/<pid>`), from its fd directory.
fn fds_from_directory(base: &str, own: bool) -> io::Result<Vec<FdEntry>> {
    let mut numbers: Vec<i32> = Vec::new();
    for entry in fs::read_dir(format!("{base}/fd"))? {
        if let Some(fd) = entry?.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) {
            numbers.push(fd);
        }
    }
    // The directory handle itself was one of them; it is closed by now, so
    // for this process its number fails fstat (EBADF) and drops out.
    let mut fds = Vec::with_capacity(numbers.len());
    for fd in numbers {
        let key = if own { key_of_own_fd(fd) } else { key_of_path(&format!("{base}/fd/{fd}")) };
        if let Some(key) = key {
            fds.push(FdEntry { fd, key, target: String::new() });
        }
    }
    fds.sort_by_key(|entry| entry.fd);
    Ok(fds)
}

/// This process's fds without listing `/proc/self/fd`. Listing it costs the
/// kernel a dentry per fd (about 0.45 us each here, 32 us at 64 fds);
/// instead, `stat` of the directory gives the number of open fds (its size,
/// since Linux 6.2), and `fstat` finds them (0.27 us per open fd, 0.1 us per
/// free number): first at the numbers where fds were last time (`baseline`'s,
/// else the previous snapshot's), then at the lowest numbers, where the
/// kernel puts new ones, stopping once all are found. `None` (list the
/// directory instead) on an older kernel, when they are so scattered that
/// probing would cost more than listing, or when the count changed meanwhile
/// (another thread opening or closing fds).
fn own_fds(baseline: Option<&Baseline>) -> Option<Vec<FdEntry>> {
    let count = open_fd_count()?;
    let mut hints = [0i32; REMEMBERED_FDS];
    let hints: &[i32] = match baseline {
        Some(baseline) => {
            let numbers = baseline.fds.keys().take(REMEMBERED_FDS);
            let taken = numbers.zip(hints.iter_mut()).map(|(&fd, hint)| *hint = fd).count();
            &hints[..taken]
        }
        None => {
            let taken = LAST_FDS_LEN.load(Ordering::Relaxed).min(REMEMBERED_FDS);
            for (hint, last) in hints.iter_mut().zip(&LAST_FDS[..taken]) {
                *hint = last.load(Ordering::Relaxed);
            }
            &hints[..taken]
        }
    };
    let mut fds = Vec::with_capacity(count);
    for &fd in hints {
        if fds.len() == count {
            break;
        }
        if let Some(key) = key_of_own_fd(fd) {
            fds.push(FdEntry { fd, key, target: String::new() });
        }
    }
    // Probing a free number costs a fifth of listing an fd.
    let mut probes_left = count.saturating_mul(4).saturating_add(64);
    let mut fd = 0;
    while fds.len() < count && probes_left > 0 {
        if hints.binary_search(&fd).is_err() {
            probes_left -= 1;
            if let Some(key) = key_of_own_fd(fd) {
                fds.push(FdEntry { fd, key, target: String::new() });
            }
        }
        fd += 1;
    }
    if fds.len() != count || open_fd_count() != Some(count) {
        return None;
    }
    fds.sort_unstable_by_key(|entry| entry.fd);
    for (last, entry) in LAST_FDS.iter().zip(&fds) {
        last.store(entry.fd, Ordering::Relaxed);
    }
    LAST_FDS_LEN.store(fds.len().min(REMEMBERED_FDS), Ordering::Relaxed);
    Some(fds)
}

/// How many fd numbers are remembered between snapshots as where to look
/// first; in atomics, not on the heap, whose every byte a check counts.
const REMEMBERED_FDS: usize = 256;
static LAST_FDS: [AtomicI32; REMEMBERED_FDS] = [const { AtomicI32::new(0) }; REMEMBERED_FDS];
static LAST_FDS_LEN: AtomicUsize = AtomicUsize::new(0);

/// The number of threads of the process at `base` (`/proc/<pid>`): the link
/// count of its task directory is 2 + threads.
fn task_count(base: &str) -> Option<u64> {
    let path = std::ffi::CString::new(format!("{base}/task")).ok()?;
    // SAFETY: stat of a valid C path into a zeroed buffer we own.
    let links = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        (libc::stat(path.as_ptr(), &mut stat) == 0).then_some(stat.st_nlink)?
    };
    links.checked_sub(2)
}

/// The number of open fds of this process: the size of `/proc/self/fd`
/// (0, so `None`, before Linux 6.2).
fn open_fd_count() -> Option<usize> {
    // SAFETY: stat of a constant path into a zeroed buffer we own.
    let size = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        (libc::stat(c"/proc/self/fd".as_ptr(), &mut stat) == 0).then_some(stat.st_size)?
    };
    (size > 0).then_some(size as usize)
}

/// True when this process has no child at all, running or zombie, of any
/// thread: `waitid` then fails with ECHILD (one syscall, where reading each
/// task's `children` costs 4 us).
fn has_no_children() -> bool {
    // SAFETY: WNOWAIT|WNOHANG: nothing is reaped and nothing blocks; the
    // siginfo is ours.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let options = libc::WEXITED | libc::WSTOPPED | libc::WCONTINUED | libc::WNOHANG | libc::WNOWAIT | libc::__WALL;
        libc::waitid(libc::P_ALL, 0, &mut info, options) == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
    }
}

fn key_of_own_fd(fd: i32) -> Option<FdKey> {
    // SAFETY: fstat writes into a zeroed stat buffer we own; a closed fd
    // just fails with EBADF.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut stat) == 0).then_some(FdKey { dev: stat.st_dev, ino: stat.st_ino })
    }
}

/// The device and inode of what `path` names (following links).
pub fn key_of_path(path: &str) -> Option<FdKey> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|meta| FdKey { dev: meta.dev(), ino: meta.ino() })
}

/// How long ago (milliseconds) something started `start_time` clock ticks
/// after boot, from `/proc/uptime`.
pub fn age_ms(start_time: u64) -> Option<u64> {
    let uptime = fs::read_to_string("/proc/uptime").ok()?;
    let uptime_s: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks_per_s > 0).then(|| {
        let started_s = start_time as f64 / ticks_per_s as f64;
        ((uptime_s - started_s).max(0.0) * 1000.0) as u64
    })
}

/// The kernel function thread `tid` of `pid` waits in, if it waits.
///
/// A thread that sleeps in short steps (a flusher polling every few
/// milliseconds) is runnable now and then, and on a loaded machine it may
/// wait for a CPU for a while; the kernel then shows no wait. So a running
/// thread is looked at a few more times, a millisecond apart (about 10 ms at
/// most, paid only on a leaked thread), before we say it waits nowhere.
pub fn wchan(pid: i32, tid: i32) -> Option<String> {
    const LOOKS: u32 = 10;
    for look in 0..LOOKS {
        let function = fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan")).ok()?;
        let function = function.trim();
        if !function.is_empty() && function != "0" {
            return Some(function.to_owned());
        }
        if look + 1 < LOOKS {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    None
}

/// Where fd `fd` of process `pid` points (`/tmp/x`, `socket:[123]`); empty
/// if it closed meanwhile.
pub fn fd_target(pid: i32, fd: i32) -> String {
    fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|target| target.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads the identity, state and command line of process `pid`.
pub fn process_info(pid: i32) -> io::Result<ProcessInfo> {
    let stat = read_lossy(format!("/proc/{pid}/stat"))?;
    let parsed = parse_stat(&stat).ok_or_else(|| io::Error::other(format!("unparsable /proc/{pid}/stat")))?;
    // A process whose main thread has exited while others run reads as a
    // zombie in its own stat: it is as alive as its liveliest thread.
    let state = if parsed.state == 'Z' { state_of_live_thread(pid).unwrap_or('Z') } else { parsed.state };
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = if raw.is_empty() {
        format!("[{}]", parsed.comm)
    } else {
        raw.split(|&byte| byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    };
    Ok(ProcessInfo { pid, ppid: parsed.ppid, pgid: parsed.pgid, state, start_time: parsed.start_time, cmdline })
}

/// The state of a thread of `pid` that is neither a zombie nor dead, if any.
fn state_of_live_thread(pid: i32) -> Option<char> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.filter_map(|task| read_lossy(task.ok()?.path().join("stat")).ok()).find_map(|stat| {
        let state = parse_stat(&stat)?.state;
        (state != 'Z' && state != 'X').then_some(state)
    })
}

/// The process (thread group) a thread id belongs to, from `/proc/<tid>/status`.
pub fn tgid_of(tid: i32) -> io::Result<i32> {
    let status = read_lossy(Path::new("/proc").join(tid.to_string()).join("status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no Tgid in /proc/{tid}/status")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_the_name() {
        let line = "4130 (my (odd) name) S 4120 4130 4120 0 -1 4194304 94 0 0 0 0 0 0 0 20 0 1 0 123456 8 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm, "my (odd) name");
        assert_eq!((stat.state, stat.ppid, stat.pgid, stat.start_time), ('S', 4120, 4130, 123456));
    }

    #[test]
    fn snapshot_of_self_sees_a_new_thread_and_file() {
        let pid = std::process::id() as i32;
        let before = take(pid).unwrap();
        let file = tempfile::Builder::new().prefix("leakcheck-snapshot-selftest-").tempfile().unwrap();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        // std names the thread from inside it, so wait until it runs.
        let worker = std::thread::Builder::new()
            .name("snap-probe".into())
            .spawn(move || {
                ready_tx.send(()).unwrap();
                stop_rx.recv()
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let after = take(pid).unwrap();
        assert!(after.threads.iter().any(|thread| thread.name == "snap-probe"));
        assert!(!before.threads.iter().any(|thread| thread.name == "snap-probe"));
        // By target, not by number: other tests of this process open and
        // close fds meanwhile, and a number may be reused.
        let name = file.path().to_string_lossy().into_owned();
        let fds: Vec<i32> = after.fds.iter().map(|fd| fd.fd).collect();
        assert!(fds.iter().any(|&fd| fd_target(pid, fd) == name), "{fds:?}");
        drop(stop_tx);
        worker.join().unwrap().unwrap_err();
        drop(file);
    }

    #[test]
    fn an_fd_far_above_the_others_is_found_with_or_without_a_baseline() {
        use std::os::fd::AsRawFd;
        let pid = std::process::id() as i32;
        let baseline = Baseline::of(&take(pid).unwrap());
        let file = fs::File::open("/dev/null").unwrap();
        // SAFETY: dup2 onto a number this test owns (nothing else in this
        // binary uses fds that high, and 1000 is under the usual limit of 1024); closed below.
        let high = unsafe { libc::dup2(file.as_raw_fd(), 1000) };
        assert_eq!(high, 1000);
        let seen = |snapshot: Snapshot| snapshot.fds.iter().any(|entry| entry.fd == 1000);
        let (plain, since) = (seen(take(pid).unwrap()), seen(take_since(pid, Some(&baseline)).unwrap()));
        // SAFETY: closes the fd dup2 made above.
        unsafe { libc::close(high) };
        assert!(plain && since, "take: {plain}, take_since: {since}");
        assert!(!seen(take(pid).unwrap()), "closed again");
    }
}
