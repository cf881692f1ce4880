//! Reading files the user points us at (config, baseline, reports to merge):
//! regular files only, of a bounded size, so `/dev/zero`, a FIFO nobody
//! writes to or a directory is a one-line error, never a hang or an
//! exhausted memory.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest input read: far above any config, baseline or report of a
/// 10,000-test suite.
const LIMIT: u64 = 256 << 20;

/// `path`'s text, if it is a regular file of at most [`LIMIT`] bytes.
pub(crate) fn read_text(path: &Path) -> io::Result<String> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let file = File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        let what = if metadata.is_dir() { "a directory" } else { "not a regular file" };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("it is {what}")));
    }
    let mut bytes = Vec::with_capacity(metadata.len().min(LIMIT) as usize);
    file.take(LIMIT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > LIMIT {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("it is larger than {} MiB", LIMIT >> 20)));
    }
    String::from_utf8(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "it is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_and_fifos_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_text(Path::new("/dev/zero")).unwrap_err().to_string().contains("not a regular file"));
        assert!(read_text(dir.path()).unwrap_err().to_string().contains("a directory"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(read_text(&fifo).unwrap_err().to_string().contains("not a regular file"));
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "a = 1\n").unwrap();
        assert_eq!(read_text(&file).unwrap(), "a = 1\n");
    }
}
