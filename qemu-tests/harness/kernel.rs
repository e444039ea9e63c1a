//! The test kernel: Debian 12's current `linux-image-6.1.*-amd64`, downloaded with
//! `apt-get download`, unpacked with `dpkg -x` (never installed), its module tree pruned to what
//! the boots need and re-indexed with `depmod`. Kept in `target/tmp/qemu/kernel/` between runs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::run;

/// Modules the boots load (their dependencies come along): virtio disks and network, dm-crypt,
/// ext4 for the root, and a USB stick with vfat/ext4/iso9660 on xHCI.
const WANTED: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "dm_crypt",
    // mkinitcpio's encrypt hooks add it.
    "dm_integrity",
    "xts",
    "aesni_intel",
    "ext4",
    "crc32c_generic",
    "crc32c_intel",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "isofs",
    "usb_storage",
    "uas",
    "xhci_pci",
    "sd_mod",
];

pub struct Kernel {
    pub version: String,
    /// Holds `lib/modules/<version>/` and `boot/` (vmlinuz, config).
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.version))
    }

    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules")
    }
}

pub fn cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu")
}

pub fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(prepare)
}

fn prepare() -> Kernel {
    let dir = cache().join("kernel");
    let ready = dir.join("ready");
    // The marker names the modules kept: a cache pruned for another list is made again.
    let wanted = WANTED.join(" ");
    if let Some((version, kept)) = std::fs::read_to_string(&ready).ok().and_then(|t| {
        t.split_once('\n')
            .map(|(v, k)| (v.to_string(), k.trim().to_string()))
    }) {
        if kept == wanted {
            return Kernel { version, root: dir };
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let download = cache().join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download).unwrap();
    // The package linux-image-amd64 points at, from bookworm (not backports).
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
    let package = depends
        .split_whitespace()
        .find(|w| w.starts_with("linux-image-6.1.") && w.ends_with("-amd64"))
        .expect("apt-cache knows no linux-image-6.1.*-amd64: run apt-get update")
        .to_string();
    let version = package.trim_start_matches("linux-image-").to_string();
    run(Command::new("apt-get")
        .args(["download", "-q", &package])
        .current_dir(&download));
    let deb = std::fs::read_dir(&download)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("the downloaded package");
    let full = download.join("full");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&full));

    // The package ships no index: depmod makes one for the full tree to find dependencies.
    run(Command::new("depmod").arg("-b").arg(&full).arg(&version));
    let from = full.join(format!("lib/modules/{version}"));
    let to = dir.join(format!("lib/modules/{version}"));
    let deps = std::fs::read_to_string(from.join("modules.dep")).unwrap();
    let mut by_name: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in deps.lines() {
        let (path, rest) = line.split_once(':').unwrap();
        by_name.insert(
            module_name(path),
            (
                path.to_string(),
                rest.split_whitespace().map(module_name).collect(),
            ),
        );
    }
    let mut keep = BTreeSet::new();
    let mut todo: Vec<String> = WANTED.iter().map(|s| s.to_string()).collect();
    while let Some(name) = todo.pop() {
        // Built into this kernel, or not built at all: nothing to copy.
        let Some((path, deps)) = by_name.get(&name) else {
            continue;
        };
        if keep.insert(path.clone()) {
            todo.extend(deps.iter().cloned());
        }
    }
    for path in &keep {
        let target = to.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from.join(path), target).unwrap();
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    run(Command::new("depmod").arg("-b").arg(&dir).arg(&version));
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    for f in ["vmlinuz", "config", "System.map"] {
        let name = format!("{f}-{version}");
        std::fs::copy(full.join("boot").join(&name), dir.join("boot").join(&name)).unwrap();
    }
    std::fs::remove_dir_all(&download).unwrap();
    std::fs::write(&ready, format!("{version}\n{wanted}\n")).unwrap();
    Kernel { version, root: dir }
}

/// `kernel/drivers/md/dm-crypt.ko` → `dm_crypt`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}
