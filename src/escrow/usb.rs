//! Recovery packets on removable media: a USB stick (or any configured device) carrying
//! `lifeline/<client-id or machine-id>/<volume-uuid>.recovery`.
//!
//! Each look mounts every candidate read-only, nosuid, nodev, noexec under a private directory,
//! reads at most one bounded regular file reached without symlinks, and unmounts at once.
//! Media that are not what they should be (symlinks, huge or non-regular files) are refused
//! with a message; garbage inside a file is refused by the packet's signature check.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::MAX_PACKET_BYTES;

/// File systems tried, in order.
const FILESYSTEMS: [&str; 3] = ["vfat", "ext4", "iso9660"];

pub struct Usb {
    /// Devices to look at; empty: the removable ones the kernel lists.
    devices: Vec<PathBuf>,
    /// Only the file system with this label (`/dev/disk/by-label/<label>`).
    label: Option<String>,
    /// Where media are mounted while read (created private, removed after).
    mount_dir: PathBuf,
}

impl Usb {
    pub fn new(devices: Vec<PathBuf>, label: Option<String>, mount_dir: PathBuf) -> Usb {
        Usb {
            devices,
            label,
            mount_dir,
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

    /// Mounts `device`, reads the packet at `relative` if there is one, unmounts.
    fn read_from(&self, device: &Path, relative: &[PathBuf]) -> Result<Option<Vec<u8>>, String> {
        std::fs::create_dir_all(&self.mount_dir)
            .map_err(|e| format!("cannot make {}: {e}", self.mount_dir.display()))?;
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let mounted = FILESYSTEMS.iter().any(|fs| {
            mount(
                Some(device),
                &self.mount_dir,
                Some(*fs),
                flags,
                None::<&str>,
            )
            .is_ok()
        });
        if !mounted {
            return Ok(None);
        }
        let result = relative
            .iter()
            .find_map(|r| read_bounded(&self.mount_dir, r).transpose())
            .transpose();
        let _ = umount2(&self.mount_dir, MntFlags::MNT_DETACH);
        result.map_err(|e| format!("{}: {e}", device.display()))
    }
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
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("{}: {e}", relative.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PACKET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", relative.display()))?;
    if bytes.len() as u64 > MAX_PACKET_BYTES {
        return Err(format!("{} grew while read; refused", relative.display()));
    }
    Ok(Some(bytes))
}

impl crate::unlock::EscrowSource for Usb {
    fn describe(&self) -> String {
        "removable media".into()
    }

    fn request_recovery(&mut self, _: &str, _: &str) -> Result<bool, String> {
        Ok(false)
    }

    fn recovery_packet(
        &mut self,
        who: &[String],
        volume_uuid: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let relative: Vec<PathBuf> = who
            .iter()
            .map(|w| {
                Path::new("lifeline")
                    .join(w)
                    .join(format!("{volume_uuid}.recovery"))
            })
            .collect();
        for device in self.candidates() {
            if let Some(bytes) = self.read_from(&device, &relative)? {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
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
