//! Reading a file someone named — on the command line, in the configuration, on a USB stick.
//!
//! Only regular files are read, and only up to a size limit: opening a FIFO blocks until a
//! writer comes (forever, at a boot prompt), and a device or `/dev/zero` streams without end.
//! The file is opened without blocking and checked on the open descriptor, so what is read is
//! what was checked.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Reads the regular file at `path` (symbolic links followed), at most `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read(path, limit, false)
}

/// The same, but the last component must not be a symbolic link.
pub fn read_regular_nofollow(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read(path, limit, true)
}

fn read(path: &Path, limit: u64, nofollow: bool) -> io::Result<Vec<u8>> {
    let mut flags = nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY;
    if nofollow {
        flags |= nix::libc::O_NOFOLLOW;
    }
    let file = File::options().read(true).custom_flags(flags).open(path)?;
    let kind = file.metadata()?.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {what}, not a regular file"),
        ));
    }
    // One allocation, filled in place: a growing Vec would leave copies of what it held (a
    // key file, a share) in freed memory at each reallocation. At least a page, for files
    // whose size the kernel does not know (procfs and sysfs say 0).
    let size = file.metadata()?.len().max(4096).min(limit);
    let mut bytes = vec![0u8; usize::try_from(size + 1).map_err(io::Error::other)?];
    let mut filled = 0;
    let mut file = file;
    while filled < bytes.len() {
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if filled == bytes.len() {
        return Err(match size == limit {
            true => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("it is larger than {limit} bytes"),
            ),
            false => io::Error::other("it grew while it was read; try again"),
        });
    }
    bytes.truncate(filled);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_and_refuses_fifos_devices_directories_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("packet");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular(&file, 5).unwrap(), b"12345");
        let e = read_regular(&file, 4).unwrap_err();
        assert!(e.to_string().contains("larger than 4 bytes"), "{e}");

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Would block forever in open() without O_NONBLOCK: this test would hang.
        let e = read_regular(&fifo, 100).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let e = read_regular(Path::new("/dev/zero"), 100).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        let e = read_regular(dir.path(), 100).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_regular(&link, 5).unwrap(), b"12345");
        assert!(read_regular_nofollow(&link, 5).is_err());
    }
}
