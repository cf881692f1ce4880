//! Capturing a test's stdout or stderr without ever blocking the test.
//!
//! The pipe is read whenever it has data; the text kept is bounded (the last
//! [`KEEP`] bytes, with a note of how much was cut) so a test printing
//! gigabytes cannot exhaust memory.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use super::poll::wait_for_events;

/// Bytes of output kept per stream.
const KEEP: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct Capture {
    pipe: Option<std::fs::File>,
    kept: Vec<u8>,
    cut: usize,
}

impl Capture {
    pub(crate) fn new(pipe: OwnedFd) -> Capture {
        let file = std::fs::File::from(pipe);
        // Non-blocking, so a read after a spurious wake-up never stalls.
        let _ = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
        Capture { pipe: Some(file), kept: Vec::new(), cut: 0 }
    }

    /// The pipe, while it is open.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|file| file.as_fd())
    }

    /// Reads what is available now; closes the pipe at end of file.
    pub(crate) fn read_some(&mut self) {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let Some(pipe) = &mut self.pipe else { return };
            match pipe.read(&mut buf) {
                Ok(0) => {
                    self.pipe = None;
                    return;
                }
                Ok(n) => self.keep(&buf[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.pipe = None;
                    return;
                }
            }
        }
    }

    /// Reads until every writer closed the pipe, for at most `limit`.
    pub(crate) fn drain_until_eof(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.pipe.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.pipe = None;
                return;
            }
            if wait_for_events(&[self.fd()], left).map_or(true, |ready| ready[0]) {
                self.read_some();
            }
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        self.kept.extend_from_slice(bytes);
        if self.kept.len() > 2 * KEEP {
            let excess = self.kept.len() - KEEP;
            self.kept.drain(..excess);
            self.cut += excess;
        }
    }

    pub(crate) fn contains(&self, needle: &[u8]) -> bool {
        self.kept.windows(needle.len()).any(|window| window == needle)
    }

    /// The kept text, lossily decoded, with a note if the start was cut.
    pub(crate) fn into_text(self) -> String {
        let text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.cut > 0 {
            format!("[... {} bytes of output cut ...]\n{text}", self.cut)
        } else {
            text
        }
    }
}
