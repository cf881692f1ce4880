//! Turning an fd's link target into words a developer recognises.
//!
//! Only called for leaked fds, while the process still exists: socket inodes
//! are looked up in the process's own network namespace
//! (`/proc/<pid>/net/{tcp,tcp6,udp,udp6,unix}`, parsed by the procfs crate).

use std::fs;
use std::os::unix::fs::FileTypeExt;

use procfs::net::{TcpNetEntry, TcpState, UdpNetEntry, UnixNetEntry, UnixState};
use procfs::process::Process;

/// Describes fd `fd` of process `pid`, whose link target is `target`:
/// "regular file", "directory", "tcp 127.0.0.1:4000 (listening)",
/// "unix stream /run/x.sock", "pipe, read end; ...", "eventfd", ...
pub fn describe_fd(pid: i32, fd: i32, target: &str) -> String {
    describe_fd_with(&mut SocketTables::of(pid), fd, target)
}

/// [`describe_fd`] for one of many fds of one process, reading each
/// socket table at most once across the calls that share `tables`.
pub fn describe_fd_with(tables: &mut SocketTables, fd: i32, target: &str) -> String {
    let pid = tables.pid;
    if let Some(inode) = bracketed(target, "socket:") {
        let protocol = socket_protocol(pid, fd);
        // An inet socket is read from itself where it can be (no table walk).
        let inet = protocol.as_deref().is_some_and(|p| p.starts_with("TCP") || p.starts_with("UDP"));
        if let Some(described) = inet.then(|| super::socket_fd::describe(pid, fd)).flatten() {
            return described;
        }
        return inode
            .parse()
            .ok()
            .and_then(|inode| describe_socket(tables, inode, protocol.as_deref()))
            .or_else(|| protocol.map(|protocol| unlisted_socket(&protocol)))
            .unwrap_or_else(|| "socket".into());
    }
    if target.starts_with("pipe:") {
        return describe_pipe(pid, fd, target);
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

/// "pipe, read end; other end held by child `cat`": which end `fd` is (its
/// fdinfo flags), and who holds the other end, looked for in the process,
/// its children, then the rest of its process group (a grandchild it
/// orphaned). A pipe's two ends share one inode, so one target; a second fd
/// of the same end (a dup of stdout) is not the other end.
fn describe_pipe(pid: i32, fd: i32, target: &str) -> String {
    let Some(end) = pipe_end(pid, fd) else { return "pipe".into() };
    let holds = |holder: i32, except: Option<i32>| {
        fs::read_dir(format!("/proc/{holder}/fd")).into_iter().flatten().flatten().any(|entry| {
            let Some(number) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
                return false;
            };
            Some(number) != except
                && fs::read_link(entry.path()).is_ok_and(|link| link.as_os_str() == target)
                && pipe_end(holder, number).is_some_and(|other| other != end)
        })
    };
    let duplicate = [(1, "stdout"), (2, "stderr")]
        .into_iter()
        .find(|&(std_fd, _)| {
            std_fd != fd
                && fs::read_link(format!("/proc/{pid}/fd/{std_fd}")).is_ok_and(|link| link.as_os_str() == target)
                && pipe_end(pid, std_fd) == Some(end)
        })
        .map(|(_, name)| format!(", a duplicate of {name}"))
        .unwrap_or_default();
    let other_end = if holds(pid, Some(fd)) {
        "other end open in this process too".to_owned()
    } else if let Some(child) = children_of(pid).into_iter().find(|&child| holds(child, None)) {
        let command = super::proc::process_info(child).map(|info| info.cmdline).unwrap_or_default();
        format!("other end held by child `{command}`")
    } else if let Some(member) = group_members(pid).into_iter().find(|&member| holds(member, None)) {
        let command = super::proc::process_info(member).map(|info| info.cmdline).unwrap_or_default();
        format!("other end held by `{command}`, pid {member}, orphaned by the test")
    } else if !duplicate.is_empty() {
        "other end held by the test's runner".to_owned()
    } else {
        "other end not held by this process or its children".to_owned()
    };
    format!("pipe, {}{duplicate}; {other_end}", end.name())
}

/// Which end of a pipe an fd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PipeEnd {
    Read,
    Write,
}

impl PipeEnd {
    fn name(self) -> &'static str {
        match self {
            PipeEnd::Read => "read end",
            PipeEnd::Write => "write end",
        }
    }
}

/// The end of the pipe fd `fd` of `pid` is, from its fdinfo flags.
fn pipe_end(pid: i32, fd: i32) -> Option<PipeEnd> {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let octal = info.lines().find_map(|line| line.strip_prefix("flags:"))?;
    let flags = u32::from_str_radix(octal.trim(), 8).ok()?;
    Some(if flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32 { PipeEnd::Write } else { PipeEnd::Read })
}

/// Direct children of every thread of `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|children| children.split_whitespace().filter_map(|pid| pid.parse::<i32>().ok()).collect::<Vec<_>>())
        .collect()
}

/// Other live processes of `pid`'s process group (when `pid` leads its
/// own group, as a test process under `cargo leakcheck` does).
fn group_members(pid: i32) -> Vec<i32> {
    let Ok(me) = super::proc::process_info(pid) else { return Vec::new() };
    if me.pgid != pid {
        return Vec::new();
    }
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()))
        .filter(|&other| other != pid)
        .filter(|&other| super::proc::process_info(other).is_ok_and(|info| info.pgid == pid && info.state != 'Z'))
        .collect()
}

/// `socket:[123]` -> `123` for prefix `socket:`.
fn bracketed<'a>(target: &'a str, prefix: &str) -> Option<&'a str> {
    target.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']')
}

/// The socket's addresses, from the table of its `protocol` (sockfs' name
/// for it: `TCP`, `UDPv6`, `UNIX`; every table when unknown). Only the one
/// table is read: the kernel walks all of a table's sockets to print it
/// (about 10 ms for TCP on a busy machine).
fn describe_socket(tables: &mut SocketTables, inode: u64, protocol: Option<&str>) -> Option<String> {
    let wanted = |name: &str| protocol.is_none_or(|protocol| protocol.eq_ignore_ascii_case(name));
    for (proto, name, v6) in [("tcp", "TCP", false), ("tcp6", "TCPv6", true)] {
        if !wanted(name) {
            continue;
        }
        if let Some(entry) = tables.tcp(v6).iter().find(|entry| entry.inode == inode) {
            return Some(match entry.state {
                TcpState::Listen => format!("{proto} listening on {}", entry.local_address),
                ref state => {
                    format!("{proto} {} -> {} ({})", entry.local_address, entry.remote_address, tcp_state_name(state))
                }
            });
        }
    }
    for (proto, name, v6) in [("udp", "UDP", false), ("udp6", "UDPv6", true)] {
        if !wanted(name) {
            continue;
        }
        if let Some(entry) = tables.udp(v6).iter().find(|entry| entry.inode == inode) {
            let peer = entry.remote_address;
            return Some(if peer.port() == 0 {
                format!("{proto} bound to {}", entry.local_address)
            } else {
                format!("{proto} {} -> {peer}", entry.local_address)
            });
        }
    }
    // `UNIX`, or `UNIX-STREAM` and friends on newer kernels.
    if protocol.is_some_and(|protocol| !protocol.to_ascii_uppercase().starts_with("UNIX")) {
        return None;
    }
    let entry = tables.unix().iter().find(|entry| entry.inode == inode)?;
    let kind = match entry.socket_type as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "socket",
    };
    let place = match (&entry.path, &entry.state) {
        (Some(path), _) => format!(" {}", path.display()),
        (None, &UnixState::CONNECTED) => " (connected, unnamed)".into(),
        (None, _) => " (unnamed)".into(),
    };
    Some(format!("unix {kind}{place}"))
}

/// The socket tables of one process's network namespace, each read at most
/// once (the kernel walks every socket of a table to print it: about 10 ms
/// for TCP on a busy machine), for describing many fds of one snapshot.
#[derive(Debug, Default)]
pub struct SocketTables {
    pid: i32,
    tcp: [Option<Vec<TcpNetEntry>>; 2],
    udp: [Option<Vec<UdpNetEntry>>; 2],
    unix: Option<Vec<UnixNetEntry>>,
}

impl SocketTables {
    /// No table read yet.
    pub fn of(pid: i32) -> SocketTables {
        SocketTables { pid, ..SocketTables::default() }
    }

    fn tcp(&mut self, v6: bool) -> &[TcpNetEntry] {
        let pid = self.pid;
        self.tcp[usize::from(v6)].get_or_insert_with(|| {
            let process = Process::new(pid).ok();
            process.and_then(|process| if v6 { process.tcp6() } else { process.tcp() }.ok()).unwrap_or_default()
        })
    }

    fn udp(&mut self, v6: bool) -> &[UdpNetEntry] {
        let pid = self.pid;
        self.udp[usize::from(v6)].get_or_insert_with(|| {
            let process = Process::new(pid).ok();
            process.and_then(|process| if v6 { process.udp6() } else { process.udp() }.ok()).unwrap_or_default()
        })
    }

    fn unix(&mut self) -> &[UnixNetEntry] {
        let pid = self.pid;
        self.unix
            .get_or_insert_with(|| Process::new(pid).ok().and_then(|process| process.unix().ok()).unwrap_or_default())
    }
}

/// A socket's protocol as sockfs names it (`TCP`, `TCPv6`, `UDP`, `UNIX`,
/// `NETLINK`, ...), from the `system.sockprotoname` attribute of the fd's
/// link: cheap, and known for every socket.
fn socket_protocol(pid: i32, fd: i32) -> Option<String> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let mut name = [0u8; 64];
    // SAFETY: getxattr writes at most `name.len()` bytes into our buffer; both
    // strings are NUL-terminated.
    let length = unsafe {
        libc::getxattr(path.as_ptr(), c"system.sockprotoname".as_ptr(), name.as_mut_ptr().cast(), name.len())
    };
    let length = usize::try_from(length).ok().filter(|&length| length > 0)?;
    Some(String::from_utf8_lossy(&name[..length]).trim_end_matches('\0').to_owned())
}

/// A socket the address tables do not list (a TCP socket not bound or
/// connected, or closed; netlink, packet, raw), named by its protocol.
fn unlisted_socket(protocol: &str) -> String {
    let protocol = protocol.to_ascii_lowercase().replace("v6", "6");
    match protocol.as_str() {
        "tcp" | "tcp6" => format!("{protocol} socket, not listening or connected"),
        "udp" | "udp6" => format!("{protocol} socket, not bound"),
        other => format!("{other} socket"),
    }
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
        TcpState::CloseWait => "close-wait, peer closed",
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
    fn a_pipe_says_which_end_it_is_and_who_holds_the_other() {
        let (reader, writer) = std::io::pipe().unwrap();
        let (pid, target) = own(reader.as_raw_fd());
        assert_eq!(describe_fd(pid, reader.as_raw_fd(), &target), "pipe, read end; other end open in this process too");
        // Other tests of this binary fork too, and a child of theirs may hold
        // a copy of our pipe for a moment between fork and exec: poll.
        let settles_to = |expected: &str| {
            (0..100).any(|_| {
                let matches = describe_fd(pid, reader.as_raw_fd(), &target) == expected;
                if !matches {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                matches
            })
        };
        let mut child = std::process::Command::new("sleep").arg("5").stdin(writer).spawn().unwrap();
        let held_by_child = settles_to("pipe, read end; other end held by child `sleep 5`");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(held_by_child);
        assert!(settles_to("pipe, read end; other end not held by this process or its children"));
    }

    #[test]
    fn pipes_and_anon_inodes_are_named() {
        assert_eq!(describe_fd(i32::MAX, 0, "pipe:[1234]"), "pipe", "no fdinfo: no end");
        assert_eq!(describe_fd(1, 0, "anon_inode:[eventfd]"), "eventfd");
        assert_eq!(describe_fd(1, 0, "anon_inode:inotify"), "inotify");
    }

    #[test]
    fn a_socket_no_table_lists_is_named_by_its_protocol() {
        assert_eq!(unlisted_socket("TCPv6"), "tcp6 socket, not listening or connected");
        assert_eq!(unlisted_socket("UDP"), "udp socket, not bound");
        assert_eq!(unlisted_socket("NETLINK"), "netlink socket");
    }

    #[test]
    fn a_unix_socket_is_described_from_its_own_table() {
        use std::os::fd::AsRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let pid = std::process::id() as i32;
        let target = fs::read_link(format!("/proc/self/fd/{}", a.as_raw_fd())).unwrap();
        let detail = describe_fd(pid, a.as_raw_fd(), target.to_str().unwrap());
        assert_eq!(detail, "unix stream (connected, unnamed)");
    }
}
