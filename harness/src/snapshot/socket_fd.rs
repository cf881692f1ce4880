//! An inet socket described from the socket itself, not from the address
//! tables: a duplicate of the fd (`pidfd_getfd`, Linux 5.6+, for another
//! process; the fd itself for this one), then `getsockname`, `getpeername`
//! and, for TCP, `TCP_INFO`'s state. Reading `/proc/<pid>/net/tcp` walks
//! the kernel's whole hash table: about 8 ms a read on this machine however
//! few sockets there are, paid by every test that leaks a socket.
//!
//! `pidfd_getfd` needs the right to trace the process: ours (a child, or
//! this process) under the usual Yama setting. Where it is refused, the
//! caller falls back to the tables.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What a TCP or UDP socket is bound and connected to, as
/// `super::identity` words it; `None` for another kind of socket or when
/// the fd cannot be had.
pub(super) fn describe(pid: i32, fd: i32) -> Option<String> {
    let own = pid == std::process::id() as i32;
    let duplicate = if own { None } else { Some(duplicate_of(pid, fd)?) };
    let raw = duplicate.as_ref().map_or(fd, AsRawFd::as_raw_fd);
    let domain = option_int(raw, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let kind = option_int(raw, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let six = match domain {
        libc::AF_INET => "",
        libc::AF_INET6 => "6",
        _ => return None,
    };
    let local = address(raw, libc::getsockname)?;
    let peer = address(raw, libc::getpeername);
    match kind {
        libc::SOCK_STREAM => {
            let state = tcp_state(raw)?;
            Some(match (state, peer) {
                (TCP_LISTEN, _) => format!("tcp{six} listening on {local}"),
                (TCP_CLOSE, None) => format!("tcp{six} socket, not listening or connected"),
                (state, Some(peer)) => format!("tcp{six} {local} -> {peer} ({})", tcp_state_name(state)),
                (state, None) => format!("tcp{six} {local} ({})", tcp_state_name(state)),
            })
        }
        libc::SOCK_DGRAM => Some(match peer {
            Some(peer) => format!("udp{six} {local} -> {peer}"),
            None if local.port() == 0 => format!("udp{six} socket, not bound"),
            None => format!("udp{six} bound to {local}"),
        }),
        _ => None,
    }
}

/// Our own duplicate of fd `fd` of process `pid`.
fn duplicate_of(pid: i32, fd: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open and pidfd_getfd take plain integers and return new
    // fds (or -1) that nobody else owns; each is wrapped at once, so closed
    // on every path.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return None;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as RawFd);
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        (copy >= 0).then(|| OwnedFd::from_raw_fd(copy as RawFd))
    }
}

fn option_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into our int.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut libc::c_int).cast(), &mut length) };
    (rc == 0).then_some(value)
}

type AddressCall = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// The socket's local (`getsockname`) or peer (`getpeername`) address.
fn address(fd: RawFd, call: AddressCall) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data, valid zeroed; the call writes
    // at most `length` bytes into it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above; `fd` is open for the duration of the call.
    if unsafe { call(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut length) } != 0 {
        return None;
    }
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4: libc::sockaddr_in = unsafe { *(&storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6: libc::sockaddr_in6 = unsafe { *(&storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(v6.sin6_port), 0, 0)))
        }
        _ => None,
    }
}

const TCP_LISTEN: u8 = 10;
const TCP_CLOSE: u8 = 7;

fn tcp_state(fd: RawFd) -> Option<u8> {
    // SAFETY: tcp_info is plain data, valid zeroed; getsockopt writes at
    // most `length` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: as above.
    let rc = unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut length)
    };
    (rc == 0).then_some(info.tcpi_state)
}

/// The kernel's TCP states (include/net/tcp_states.h), worded as
/// `super::identity` words the table's.
fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "established",
        2 => "syn-sent",
        3 => "syn-received",
        4 => "fin-wait-1",
        5 => "fin-wait-2",
        6 => "time-wait",
        7 => "closed",
        8 => "close-wait, peer closed",
        9 => "last-ack",
        10 => "listening",
        11 => "closing",
        12 => "new-syn-received",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_and_a_connection_are_read_from_the_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let pid = std::process::id() as i32;
        assert_eq!(describe(pid, listener.as_raw_fd()).unwrap(), format!("tcp listening on 127.0.0.1:{port}"));
        let connected = describe(pid, client.as_raw_fd()).unwrap();
        assert!(
            connected.starts_with("tcp 127.0.0.1:") && connected.ends_with(&format!("127.0.0.1:{port} (established)"))
        );
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let bound = describe(pid, udp.as_raw_fd()).unwrap();
        assert!(bound.starts_with("udp bound to 127.0.0.1:"), "{bound}");
    }

    #[test]
    fn a_childs_socket_is_read_through_a_duplicate() {
        // A child holding a listener on its stdin: `sleep` keeps it open.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut child = std::process::Command::new("sleep").arg("5").stdin(OwnedFd::from(listener)).spawn().unwrap();
        let described = describe(child.id() as i32, 0);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(described.unwrap(), format!("tcp listening on 127.0.0.1:{port}"));
    }
}
