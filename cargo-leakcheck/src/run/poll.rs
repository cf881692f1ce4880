//! How a worker waits: a poll over the fds it watches.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Polls the present fds for input (or hang-up); returns which are ready.
pub(crate) fn wait_for_events(fds: &[Option<BorrowedFd<'_>>], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut poll_fds: Vec<PollFd<'_>> = fds.iter().flatten().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)).collect();
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    match poll(&mut poll_fds, PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(error) => return Err(error.into()),
    }
    let mut ready = poll_fds.iter().map(|fd| fd.revents().is_some_and(|events| !events.is_empty()));
    Ok(fds.iter().map(|fd| fd.is_some() && ready.next().unwrap_or(false)).collect())
}

/// Whether `fd` reports hang-up (for a seccomp listener: no process uses
/// its filter any more).
pub(super) fn is_hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut poll_fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut poll_fds, PollTimeout::ZERO).is_ok()
        && poll_fds[0].revents().is_some_and(|events| events.contains(PollFlags::POLLHUP))
}
