//! Initramfs images with lifeline in them, built by the real dracut and mkinitramfs against
//! the test kernel. Both read their inputs from fixed places (`/usr/lib/modules`, `/boot`,
//! `/etc/lifeline`, `/etc/crypttab`, dracut's module directory), so each build runs in a
//! private mount namespace where those are bind-mounted from the test's own files: the host
//! is left as it was (but for empty mount points).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::kernel::{cache, kernel};
use super::RootDisk;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// dracut without systemd: lifeline runs as an initqueue job before cryptroot-ask.
    Dracut,
    /// dracut with systemd: lifeline-unlock.service before cryptsetup-pre.target.
    DracutSystemd,
    /// initramfs-tools: lifeline runs in init-premount, before cryptroot in local-top.
    InitramfsTools,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Dracut => "dracut",
            Flavour::DracutSystemd => "dracut-systemd",
            Flavour::InitramfsTools => "initramfs-tools",
        }
    }

    /// What the distribution's own unlock step prints when it asks for the passphrase.
    pub fn passphrase_prompt(self) -> &'static str {
        match self {
            Flavour::Dracut => "Enter passphrase for",
            Flavour::DracutSystemd => "Please enter passphrase for disk",
            Flavour::InitramfsTools => "Please unlock disk cryptroot",
        }
    }

    /// The kernel command line that tells this flavour which volume holds the root.
    pub fn cmdline(self, root: &RootDisk) -> String {
        match self {
            Flavour::Dracut | Flavour::DracutSystemd => format!(
                "rd.luks.uuid={0} rd.luks.name={0}=cryptroot rd.retry=300",
                root.uuid
            ),
            // The crypttab in the image says it.
            Flavour::InitramfsTools => String::new(),
        }
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The lifeline binary for the images: the test build, stripped (once per run).
pub fn lifeline_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let to = cache().join(format!("lifeline-{}", std::process::id()));
        std::fs::create_dir_all(cache()).unwrap();
        let out = Command::new("strip")
            .arg("-o")
            .arg(&to)
            .arg(env!("CARGO_BIN_EXE_lifeline"))
            .output()
            .unwrap();
        assert!(out.status.success(), "strip: {out:?}");
        to
    })
}

/// Runs `script` (sh) in a private mount namespace, after bind-mounting each `(from, onto)`.
fn in_namespace(binds: &[(&Path, &str)], script: &str, env: &[(&str, &Path)]) -> String {
    let mut text = String::from("set -e\nmount --make-rprivate /\n");
    for (from, onto) in binds {
        if from.is_dir() {
            std::fs::create_dir_all(onto).unwrap();
        }
        text.push_str(&format!("mount --bind '{}' '{onto}'\n", from.display()));
    }
    text.push_str(script);
    let mut c = Command::new("unshare");
    c.args(["-m", "sh", "-c", &text]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("unshare");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "initramfs build failed:\n{log}");
    log
}

/// Builds an image of `flavour` with `lifeline` (the binary to put in; `None`: the image
/// without lifeline's glue, as the distribution makes it) and `etc_lifeline` as
/// `/etc/lifeline`, for the root on `root`, into `out`. Returns the tool's output.
pub fn build(
    flavour: Flavour,
    lifeline: Option<&Path>,
    etc_lifeline: &Path,
    root: &RootDisk,
    work: &Path,
    out: &Path,
) -> String {
    let k = kernel();
    let modules = k.modules();
    let boot = k.root.join("boot");
    std::fs::create_dir_all(work).unwrap();
    match flavour {
        Flavour::InitramfsTools => {
            let conf = work.join("initramfs-tools");
            copy_tree(Path::new("/etc/initramfs-tools"), &conf);
            if lifeline.is_some() {
                std::fs::create_dir_all(conf.join("scripts/init-premount")).unwrap();
                std::fs::copy(
                    repo("initramfs-tools/hooks/lifeline"),
                    conf.join("hooks/lifeline"),
                )
                .unwrap();
                std::fs::copy(
                    repo("initramfs-tools/scripts/init-premount/lifeline"),
                    conf.join("scripts/init-premount/lifeline"),
                )
                .unwrap();
            }
            let crypttab = work.join("crypttab");
            std::fs::write(
                &crypttab,
                format!("cryptroot UUID={} none luks,initramfs\n", root.uuid),
            )
            .unwrap();
            in_namespace(
                &[
                    (&modules, "/usr/lib/modules"),
                    (&boot, "/boot"),
                    (etc_lifeline, "/etc/lifeline"),
                    (&crypttab, "/etc/crypttab"),
                ],
                &format!(
                    "mkinitramfs -d '{}' -o '{}' {}\n",
                    conf.display(),
                    out.display(),
                    k.version
                ),
                &[("LIFELINE", lifeline.unwrap_or(Path::new("/nonexistent")))],
            )
        }
        Flavour::Dracut | Flavour::DracutSystemd => {
            let systemd = flavour == Flavour::DracutSystemd;
            let modules_d = work.join("dracut-modules.d");
            copy_tree(Path::new("/usr/lib/dracut/modules.d"), &modules_d);
            copy_tree(&repo("dracut/90lifeline"), &modules_d.join("90lifeline"));
            // No configuration from the host: the command line says it all.
            let confdir = work.join("dracut.conf.d");
            std::fs::create_dir_all(&confdir).unwrap();
            in_namespace(
                &[
                    (&modules_d, "/usr/lib/dracut/modules.d"),
                    (etc_lifeline, "/etc/lifeline"),
                ],
                &format!(
                    "dracut --force --no-hostonly --no-hostonly-cmdline --no-early-microcode \
                     --conf /dev/null --confdir '{c}' \
                     --kver {v} --kmoddir '{m}/{v}' \
                     --modules '{init} base udev-rules kernel-modules rootfs-block dm crypt {glue}' \
                     --omit '{omit}' \
                     --add-drivers 'virtio_pci virtio_blk virtio_net ext4' \
                     '{o}'\n",
                    v = k.version,
                    m = modules.display(),
                    o = out.display(),
                    c = confdir.display(),
                    init = if systemd {
                        "systemd systemd-initrd systemd-udevd systemd-ask-password dracut-systemd"
                    } else {
                        ""
                    },
                    omit = if systemd { "plymouth" } else { "systemd plymouth" },
                    glue = if lifeline.is_some() {
                        "network-legacy network lifeline"
                    } else {
                        ""
                    },
                ),
                &[("LIFELINE", lifeline.unwrap_or(Path::new("/nonexistent")))],
            )
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "cp -a {}: {out:?}", from.display());
}

/// The same image without `path` in it: unpacked, the file removed, packed again.
pub fn without(image: &Path, path: &str, work: &Path, out: &Path) {
    let dir = work.join("unpacked");
    let _ = std::fs::remove_dir_all(&dir);
    let unpack = Command::new("unmkinitramfs")
        .arg(image)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(unpack.status.success(), "unmkinitramfs: {unpack:?}");
    // An image with an early (microcode) part unpacks into main/.
    let root = if dir.join("main").is_dir() {
        dir.join("main")
    } else {
        dir.clone()
    };
    std::fs::remove_file(root.join(path)).expect("the file to remove");
    let pack = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            out.display()
        ))
        .output()
        .unwrap();
    assert!(pack.status.success(), "repack: {pack:?}");
}
