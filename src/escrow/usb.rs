//! Recovery packets on removable media: a USB stick (or any configured device) carrying
//! `lifeline/<client-id or machine-id>/<volume-uuid>.recovery`.
//!
//! Each look mounts every candidate read-only, nosuid, nodev, noexec under a fresh private
//! directory, reads at most one bounded regular file reached without symlinks, and unmounts at
//! once. ext4 is mounted with `noload`, so a journal that needs recovery is not replayed (a
//! read-only mount would otherwise write to the stick); vfat and iso9660 write nothing when
//! mounted read-only. The block device itself is not set read-only: that takes an ioctl,
//! which safe Rust cannot make. Mounting and reading happen on a thread of their own that
//! the boot flow waits for a bounded time: a stick that never answers (or is pulled out mid-read)
//! costs one wait, is named once, and is not touched again. Media that are not what they
//! should be (no file system, symlinks, huge or non-regular files) are refused with a message;
//! garbage inside a file is refused by the packet's signature check.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::MAX_PACKET_BYTES;

/// File systems tried, in order, with their mount options.
const FILESYSTEMS: [(&str, Option<&str>); 3] =
    [("vfat", None), ("ext4", Some("noload")), ("iso9660", None)];

/// The longest one device may take to mount, be read and unmounted.
pub const MEDIA_WAIT: Duration = Duration::from_secs(10);

pub struct Usb {
    /// Devices to look at; empty: the removable ones the kernel lists.
    devices: Vec<PathBuf>,
    /// Only the file system with this label (`/dev/disk/by-label/<label>`).
    label: Option<String>,
    /// Where media are mounted while read: a fresh numbered directory below it each time.
    mount_dir: PathBuf,
    mounts: u32,
    /// Devices that did not answer in time. Their reader may still be stuck in the kernel, so
    /// they are left alone from then on.
    stuck: HashSet<PathBuf>,
}

impl Usb {
    pub fn new(devices: Vec<PathBuf>, label: Option<String>, mount_dir: PathBuf) -> Usb {
        Usb {
            devices,
            label,
            mount_dir,
            mounts: 0,
            stuck: HashSet::new(),
        }
    }

    fn candidates(&self) -> Vec<PathBuf> {
        if !self.devices.is_empty() {
            return self.devices.clone();
        }
        if let Some(label) = &self.label {
            let by_label = Path::new("/dev/disk/by-label").join(label);
            return by_label.exists().then_some(by_label).into_iter().collect();
        }
        removable_partitions(Path::new("/sys/block"))
    }

    /// Mounts `device`, reads the packet at one of `relative` if there is one, unmounts — on
    /// a thread, waited for until `until` (at most `MEDIA_WAIT`).
    fn read_from(
        &mut self,
        device: &Path,
        relative: &[PathBuf],
        until: Instant,
    ) -> Result<Option<Vec<u8>>, String> {
        let wait = MEDIA_WAIT.min(until.saturating_duration_since(Instant::now()));
        self.mounts += 1;
        let dir = self.mount_dir.join(self.mounts.to_string());
        let (done, result) = channel();
        let (dev, rel) = (device.to_path_buf(), relative.to_vec());
        std::thread::spawn(move || {
            let _ = done.send(mount_and_read(&dev, &dir, &rel));
        });
        match result.recv_timeout(wait) {
            Ok(r) => r.map_err(|e| format!("{}: {e}", device.display())),
            Err(RecvTimeoutError::Timeout) => {
                self.stuck.insert(device.to_path_buf());
                Err(format!(
                    "{} did not answer within {} s; it is not read again",
                    device.display(),
                    wait.as_secs()
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(format!("{}: the reader stopped", device.display()))
            }
        }
    }
}

/// The reader thread's work: mount `device` at `dir`, read, unmount, remove `dir`.
fn mount_and_read(
    device: &Path,
    dir: &Path,
    relative: &[PathBuf],
) -> Result<Option<Vec<u8>>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounted = FILESYSTEMS
        .iter()
        .any(|(fs, data)| mount(Some(device), dir, Some(*fs), flags, *data).is_ok());
    if !mounted {
        let _ = std::fs::remove_dir(dir);
        return Err("no vfat, ext4 or iso9660 file system on it".into());
    }
    let result = relative
        .iter()
        .find_map(|r| read_bounded(dir, r).transpose())
        .transpose();
    let _ = umount2(dir, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(dir);
    result
}

/// Partitions (or whole disks without partitions) of block devices the kernel marks removable.
pub fn removable_partitions(sys_block: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(disks) = std::fs::read_dir(sys_block) else {
        return out;
    };
    for disk in disks.flatten() {
        let removable = std::fs::read_to_string(disk.path().join("removable")).unwrap_or_default();
        if removable.trim() != "1" {
            continue;
        }
        let name = disk.file_name().to_string_lossy().into_owned();
        let mut parts: Vec<PathBuf> = std::fs::read_dir(disk.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
            .map(|e| Path::new("/dev").join(e.file_name()))
            .collect();
        if parts.is_empty() {
            parts.push(Path::new("/dev").join(&name));
        }
        parts.sort();
        out.extend(parts);
    }
    out
}

/// Reads `root/relative` when every component below `root` is a real directory (no symlinks)
/// and the file is a regular file of at most `MAX_PACKET_BYTES`. Missing: `Ok(None)`.
pub fn read_bounded(root: &Path, relative: &Path) -> Result<Option<Vec<u8>>, String> {
    let mut path = root.to_path_buf();
    let components: Vec<_> = relative.components().collect();
    for (i, part) in components.iter().enumerate() {
        path.push(part);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        let last = i + 1 == components.len();
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{} is a symbolic link; refused",
                relative.display()
            ));
        }
        if !last && !meta.is_dir() {
            return Ok(None);
        }
        if last && !meta.is_file() {
            return Err(format!(
                "{} is not a regular file; refused",
                relative.display()
            ));
        }
        if last && meta.len() > MAX_PACKET_BYTES {
            return Err(format!(
                "{} is {} bytes, more than a recovery packet can be ({MAX_PACKET_BYTES}); refused",
                relative.display(),
                meta.len()
            ));
        }
    }
    crate::input::read_regular_nofollow(&path, MAX_PACKET_BYTES)
        .map(Some)
        .map_err(|e| format!("{}: {e}", relative.display()))
}

impl crate::unlock::EscrowSource for Usb {
    fn describe(&self) -> String {
        "removable media".into()
    }

    fn request_recovery(&mut self, _: &str, _: &str, _: Instant) -> Result<bool, String> {
        Ok(false)
    }

    fn recovery_packet(
        &mut self,
        who: &[String],
        volume_uuid: &str,
        until: Instant,
    ) -> Result<Option<Vec<u8>>, String> {
        let relative: Vec<PathBuf> = who
            .iter()
            .map(|w| {
                Path::new("lifeline")
                    .join(w)
                    .join(format!("{volume_uuid}.recovery"))
            })
            .collect();
        // A device that fails does not hide the next one; the first failure is told.
        let mut failed = None;
        for device in self.candidates() {
            if self.stuck.contains(&device) {
                continue;
            }
            match self.read_from(&device, &relative, until) {
                Ok(Some(bytes)) => return Ok(Some(bytes)),
                Ok(None) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(None), Err)
    }

    fn report_used(&mut self, _: &str, _: &crate::secret::UseToken) -> Result<(), String> {
        Ok(())
    }

    fn restore_file(&mut self, _: &str, _: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_bounded_regular_files_without_symlinks() {
        let root = std::env::temp_dir().join(format!("lifeline-usb-{}", std::process::id()));
        let dir = root.join("lifeline/abcd");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("good.recovery"), b"packet").unwrap();
        std::fs::write(
            dir.join("huge.recovery"),
            vec![0u8; MAX_PACKET_BYTES as usize + 1],
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.join("link.recovery")).unwrap();
        std::os::unix::fs::symlink(&dir, root.join("lifeline/linked")).unwrap();
        std::fs::create_dir_all(dir.join("dir.recovery")).unwrap();
        let read = |rel: &str| read_bounded(&root, Path::new(rel));
        assert_eq!(
            read("lifeline/abcd/good.recovery"),
            Ok(Some(b"packet".to_vec()))
        );
        assert_eq!(read("lifeline/abcd/missing.recovery"), Ok(None));
        assert!(read("lifeline/abcd/huge.recovery")
            .unwrap_err()
            .contains("more than a recovery packet"));
        assert!(read("lifeline/abcd/link.recovery")
            .unwrap_err()
            .contains("symbolic link"));
        assert!(read("lifeline/linked/good.recovery")
            .unwrap_err()
            .contains("symbolic link"));
        assert!(read("lifeline/abcd/dir.recovery")
            .unwrap_err()
            .contains("not a regular file"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
