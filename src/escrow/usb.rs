//! Recovery packets on removable media: a USB stick (or any configured device) carrying
//! `lifeline/<client-id or machine-id>/<volume-uuid>.recovery`.
//!
//! Each look mounts every candidate read-only, nosuid, nodev, noexec under a fresh private
//! directory, reads at most one bounded regular file reached without symlinks, and unmounts at
//! once. ext4 is mounted with `noload`, so a journal that needs recovery is not replayed (a
//! read-only mount would otherwise write to the stick); vfat and iso9660 write nothing when
//! mounted read-only. The block device itself is not set read-only: that takes an ioctl,
//! which safe Rust cannot make.
//!
//! Mounting and reading happen in a process of their own (`lifeline` started again as the
//! *reader*, see [`serve_reader`]), waited for a bounded time. A stick that never answers
//! leaves its reader stuck in the kernel, uninterruptibly; a thread stuck like that would keep
//! lifeline itself from exiting, and the boot from going on. The reader is abandoned instead,
//! the device is named once and not touched again. Media that are not what they should be (no
//! file system, symlinks, huge or non-regular files) are refused with a message; garbage
//! inside a file is refused by the packet's signature check.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::MAX_PACKET_BYTES;

/// In the environment of the reader process: `lifeline`'s `main` then calls [`serve_reader`].
pub const READER_ENV: &str = "LIFELINE_MEDIA_READER";

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

    /// Mounts `device`, reads the packet at one of `relative` if there is one, unmounts — in
    /// the reader process, waited for until `until` (at most `MEDIA_WAIT`).
    fn read_from(
        &mut self,
        device: &Path,
        relative: &[PathBuf],
        until: Instant,
    ) -> Result<Option<Vec<u8>>, String> {
        let wait = MEDIA_WAIT.min(until.saturating_duration_since(Instant::now()));
        self.mounts += 1;
        let dir = self.mount_dir.join(self.mounts.to_string());
        // The request: NUL-separated paths, the device, the mount point, then the files.
        let mut request = Vec::new();
        for p in [device, &dir]
            .into_iter()
            .chain(relative.iter().map(PathBuf::as_path))
        {
            request.extend_from_slice(p.as_os_str().as_bytes());
            request.push(0);
        }
        let named = |e: String| format!("{}: {e}", device.display());
        match ask_reader(&request, wait) {
            Ok(answer) => match answer.split_first() {
                Some((b'P', packet)) => Ok(Some(packet.to_vec())),
                Some((b'N', _)) => Ok(None),
                Some((b'E', why)) => Err(named(String::from_utf8_lossy(why).into_owned())),
                _ => Err(named("the reader gave no answer".into())),
            },
            Err(Asked::TimedOut) => {
                self.stuck.insert(device.to_path_buf());
                Err(format!(
                    "{} did not answer within {} s; it is not read again",
                    device.display(),
                    wait.as_secs()
                ))
            }
            Err(Asked::Failed(why)) => Err(named(format!("cannot start the reader: {why}"))),
        }
    }
}

enum Asked {
    TimedOut,
    Failed(String),
}

/// Starts the reader, hands it `request`, and reads its answer for at most `wait`. A reader
/// that does not finish is killed and left behind (if it is stuck in the kernel, the kill
/// takes effect when the device lets go).
fn ask_reader(request: &[u8], wait: Duration) -> Result<Vec<u8>, Asked> {
    use nix::fcntl::OFlag;
    use nix::spawn::{posix_spawn, PosixSpawnAttr, PosixSpawnFileActions};
    let failed = |e: nix::Error| Asked::Failed(e.to_string());
    let deadline = Instant::now() + wait;
    // Close-on-exec: only the ends dup2()ed onto the reader's stdin and stdout reach it.
    let (request_r, request_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(failed)?;
    let (answer_r, answer_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(failed)?;
    let mut actions = PosixSpawnFileActions::init().map_err(failed)?;
    // Not even standard error is shared: a reader stuck for good must hold nothing of ours
    // open (a log pipe would never see its end). Its answer says what went wrong.
    actions
        .add_dup2(request_r.as_raw_fd(), 0)
        .and_then(|()| actions.add_dup2(answer_w.as_raw_fd(), 1))
        .and_then(|()| {
            actions.add_open(
                2,
                c"/dev/null",
                OFlag::O_WRONLY,
                nix::sys::stat::Mode::empty(),
            )
        })
        .map_err(failed)?;
    let attr = PosixSpawnAttr::init().map_err(failed)?;
    let cstr = |s: &str| CString::new(s).map_err(|e| Asked::Failed(e.to_string()));
    let pid = posix_spawn(
        c"/proc/self/exe",
        &actions,
        &attr,
        &[cstr("lifeline")?],
        &[cstr(&format!("{READER_ENV}=1"))?],
    )
    .map_err(failed)?;
    drop((request_r, answer_w));
    // The request is small: it fits the pipe, so this write does not wait for the reader.
    let sent = std::fs::File::from(request_w).write_all(request);
    let mut answer = Vec::new();
    let mut reply = std::fs::File::from(answer_r);
    let mut chunk = [0u8; 8192];
    let finished = sent.is_ok()
        && loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [nix::poll::PollFd::new(
                reply.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, ms) {
                Ok(0) if left.is_zero() => break false,
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(_) => break false,
            }
            match reply.read(&mut chunk) {
                Ok(0) => break true,
                // A packet and a one-byte tag; more is not a reader's answer.
                Ok(n) if answer.len() + n <= MAX_PACKET_BYTES as usize + 1 => {
                    answer.extend_from_slice(&chunk[..n])
                }
                _ => break false,
            }
        };
    if !finished {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        // Reaped when it dies, if lifeline still runs; never waited for.
        return Err(Asked::TimedOut);
    }
    let _ = nix::sys::wait::waitpid(pid, None);
    Ok(answer)
}

/// The reader process: the request on standard input (see `Usb::read_from`), the answer on
/// standard output — `P` and the packet, `N` (nothing there) or `E` and what is wrong.
/// Returns the exit code.
pub fn serve_reader() -> i32 {
    let mut request = Vec::new();
    if std::io::stdin()
        .take(64 * 1024)
        .read_to_end(&mut request)
        .is_err()
    {
        return 1;
    }
    let mut paths = request
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(OsStr::from_bytes(p)));
    let (Some(device), Some(dir)) = (paths.next(), paths.next()) else {
        return 2;
    };
    let relative: Vec<PathBuf> = paths.collect();
    let answer = match mount_and_read(&device, &dir, &relative) {
        Ok(Some(packet)) => [b"P".as_slice(), &packet].concat(),
        Ok(None) => b"N".to_vec(),
        Err(e) => format!("E{e}").into_bytes(),
    };
    match std::io::stdout().write_all(&answer) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// The reader's work: mount `device` at `dir`, read, unmount, remove `dir`.
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

use crate::unlock::SourceError;

impl crate::unlock::EscrowSource for Usb {
    fn describe(&self) -> String {
        "removable media".into()
    }

    fn request_recovery(&mut self, _: &str, _: &str, _: Instant) -> Result<bool, SourceError> {
        Ok(false)
    }

    fn recovery_packet(
        &mut self,
        who: &[String],
        volume_uuid: &str,
        until: Instant,
    ) -> Result<Option<Vec<u8>>, SourceError> {
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
        failed.map_or(Ok(None), |e| Err(SourceError::Other(e)))
    }

    fn report_used(&mut self, _: &str, _: &crate::secret::UseToken) -> Result<(), SourceError> {
        Ok(())
    }

    fn restore_file(&mut self, _: &str, _: &str) -> Result<Option<Vec<u8>>, SourceError> {
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
