//! Turning an fd's link target into words a developer recognises.
//!
//! Only called for leaked fds, while the process still exists: socket inodes
//! are looked up in the process's own network namespace
//! (`/proc/<pid>/net/{tcp,tcp6,udp,udp6,unix}`, parsed by the procfs crate).

use std::fs;
use std::os::unix::fs::FileTypeExt;

use procfs::net::{TcpState, UnixState};
use procfs::process::Process;

/// Describes fd `fd` of process `pid`, whose link target is `target`:
/// "regular file", "directory", "tcp 127.0.0.1:4000 (listening)",
/// "unix stream /run/x.sock", "pipe", "eventfd", ...
pub fn describe_fd(pid: i32, fd: i32, target: &str) -> String {
    if let Some(inode) = bracketed(target, "socket:") {
        return inode.parse().ok().and_then(|inode| describe_socket(pid, inode)).unwrap_or_else(|| "socket".into());
    }
    if target.starts_with("pipe:") {
        return "pipe".into();
    }
    if let Some(kind) = target.strip_prefix("anon_inode:") {
        return kind.trim_start_matches('[').trim_end_matches(']').to_owned();
    }
    if target.ends_with(" (deleted)") {
        return "deleted file".into();
    }
    match fs::metadata(format!("/proc/{pid}/fd/{fd}")) {
        Ok(meta) if meta.is_dir() => "directory".into(),
        Ok(meta) if meta.file_type().is_char_device() => "character device".into(),
        Ok(meta) if meta.file_type().is_block_device() => "block device".into(),
        Ok(meta) if meta.file_type().is_fifo() => "named pipe".into(),
        Ok(_) => "regular file".into(),
        Err(_) => "file".into(),
    }
}

/// `socket:[123]` -> `123` for prefix `socket:`.
fn bracketed<'a>(target: &'a str, prefix: &str) -> Option<&'a str> {
    target.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']')
}

fn describe_socket(pid: i32, inode: u64) -> Option<String> {
    let process = Process::new(pid).ok()?;
    for (proto, table) in [("tcp", process.tcp()), ("tcp6", process.tcp6())] {
        if let Some(entry) = table.ok().and_then(|entries| entries.into_iter().find(|entry| entry.inode == inode)) {
            return Some(match entry.state {
                TcpState::Listen => format!("{proto} listening on {}", entry.local_address),
                state => {
                    format!("{proto} {} -> {} ({})", entry.local_address, entry.remote_address, tcp_state_name(&state))
                }
            });
        }
    }
    for (proto, table) in [("udp", process.udp()), ("udp6", process.udp6())] {
        if let Some(entry) = table.ok().and_then(|entries| entries.into_iter().find(|entry| entry.inode == inode)) {
            let peer = entry.remote_address;
            return Some(if peer.port() == 0 {
                format!("{proto} bound to {}", entry.local_address)
            } else {
                format!("{proto} {} -> {peer}", entry.local_address)
            });
        }
    }
    if let Some(entry) = process.unix().ok()?.into_iter().find(|entry| entry.inode == inode) {
        let kind = match entry.socket_type as i32 {
            libc::SOCK_STREAM => "stream",
            libc::SOCK_DGRAM => "datagram",
            libc::SOCK_SEQPACKET => "seqpacket",
            _ => "socket",
        };
        let place = match (&entry.path, entry.state) {
            (Some(path), _) => format!(" {}", path.display()),
            (None, UnixState::CONNECTED) => " (connected, unnamed)".into(),
            (None, _) => " (unnamed)".into(),
        };
        return Some(format!("unix {kind}{place}"));
    }
    None
}

fn tcp_state_name(state: &TcpState) -> &'static str {
    match state {
        TcpState::Established => "established",
        TcpState::SynSent => "syn-sent",
        TcpState::SynRecv => "syn-received",
        TcpState::FinWait1 => "fin-wait-1",
        TcpState::FinWait2 => "fin-wait-2",
        TcpState::TimeWait => "time-wait",
        TcpState::Close => "closed",
        TcpState::CloseWait => "close-wait (peer closed)",
        TcpState::LastAck => "last-ack",
        TcpState::Listen => "listening",
        TcpState::Closing => "closing",
        TcpState::NewSynRecv => "new-syn-received",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn own(fd: i32) -> (i32, String) {
        let pid = std::process::id() as i32;
        let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap().to_string_lossy().into_owned();
        (pid, target)
    }

    #[test]
    fn tcp_listener_and_connection_show_their_addresses() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (pid, target) = own(listener.as_raw_fd());
        assert_eq!(describe_fd(pid, listener.as_raw_fd(), &target), format!("tcp listening on 127.0.0.1:{port}"));
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (pid, target) = own(stream.as_raw_fd());
        let detail = describe_fd(pid, stream.as_raw_fd(), &target);
        assert!(detail.starts_with("tcp 127.0.0.1:") && detail.ends_with(&format!("127.0.0.1:{port} (established)")));
    }

    #[test]
    fn pipes_and_anon_inodes_are_named() {
        assert_eq!(describe_fd(1, 0, "pipe:[1234]"), "pipe");
        assert_eq!(describe_fd(1, 0, "anon_inode:[eventfd]"), "eventfd");
        assert_eq!(describe_fd(1, 0, "anon_inode:inotify"), "inotify");
    }
}
