//! Files that appear whole or not at all, and never replace an existing file.
//!
//! Write to a temporary name in the same directory, fsync, then hard-link to the final name
//! (which fails if it exists, unlike rename) and fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::secret::random_bytes;

/// A written, synced file under a temporary name, waiting to be committed.
#[derive(Debug)]
pub struct Staged {
    temp: PathBuf,
    target: PathBuf,
}

/// Writes `bytes` with `mode` next to `target`. Nothing is visible at `target` yet.
pub fn stage(target: &Path, bytes: &[u8], mode: u32) -> io::Result<Staged> {
    if target.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already exists; nothing was overwritten",
                target.display()
            ),
        ));
    }
    write_temp(target, bytes, mode)
}

/// Writes and syncs a new file under a random name beside `target` (created, never reused,
/// so its mode is exactly `mode`).
fn write_temp(target: &Path, bytes: &[u8], mode: u32) -> io::Result<Staged> {
    let dir = parent(target);
    let mut tag = [0u8; 8];
    random_bytes(&mut tag)?;
    let name = format!(
        ".{}.{:016x}.tmp",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("lifeline"),
        u64::from_le_bytes(tag)
    );
    let temp = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let staged = Staged {
        temp,
        target: target.to_path_buf(),
    };
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(staged)
}

impl Staged {
    /// Makes the file visible at its target name.
    pub fn commit(self) -> io::Result<()> {
        fs::hard_link(&self.temp, &self.target).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: {e}; nothing was overwritten", self.target.display()),
            )
        })?;
        // Drop removes the temporary name.
        File::open(parent(&self.target))?.sync_all()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.temp);
    }
}

/// Replaces `target` (or creates it) in one step: readers see the old file or the new one.
pub fn replace(target: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    if let Some(dir) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let staged = write_temp(target, bytes, mode)?;
    fs::rename(&staged.temp, &staged.target)?;
    // Drop finds the temporary name gone.
    File::open(parent(&staged.target))?.sync_all()
}

/// Writes a new file in one step.
pub fn write_new(target: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    stage(target, bytes, mode)?.commit()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the directory `dir` (missing or empty) with what `fill` writes into it, all or
/// nothing: everything is built in a sibling directory that is renamed into place (atomic onto
/// an empty directory), mode 0700, and removed again when anything fails. `exists` is the
/// error for a `dir` that holds something already.
pub fn create_dir_whole<E: From<io::Error>>(
    dir: &Path,
    exists: impl FnOnce() -> E,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(exists());
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut tag = [0u8; 8];
    crate::secret::random_bytes(&mut tag)?;
    let staging = parent.join(format!(".lifeline-new.{}.tmp", crate::hex::encode(&tag)));
    std::fs::create_dir(&staging)?;
    let result = fill(&staging).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
        std::fs::rename(&staging, dir)?;
        std::fs::File::open(&parent)?.sync_all()?;
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_overwrites_and_leaves_no_temp_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("packet");
        write_new(&target, b"first", 0o600).unwrap();
        assert!(write_new(&target, b"second", 0o600).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"first");
        let staged = stage(&dir.path().join("other"), b"x", 0o600).unwrap();
        drop(staged);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("packet")]);
    }

    #[test]
    fn replace_swaps_content_with_the_given_mode_and_no_temp_left() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state").join("credential");
        replace(&target, b"old", 0o644).unwrap();
        replace(&target, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(target.parent().unwrap()).unwrap().count(), 1);
    }
}
