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
    /// Arch's mkinitcpio, busybox init: the lifeline hook runs before encrypt.
    Mkinitcpio,
    /// mkinitcpio with systemd (Arch's default): sd-lifeline's unit before sd-encrypt.
    MkinitcpioSystemd,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Dracut => "dracut",
            Flavour::DracutSystemd => "dracut-systemd",
            Flavour::InitramfsTools => "initramfs-tools",
            Flavour::Mkinitcpio => "mkinitcpio",
            Flavour::MkinitcpioSystemd => "mkinitcpio-systemd",
        }
    }

    /// Where the image keeps the lifeline binary.
    pub fn binary_in_image(self) -> &'static str {
        match self {
            Flavour::Dracut | Flavour::DracutSystemd => "usr/sbin/lifeline",
            Flavour::InitramfsTools => "sbin/lifeline",
            Flavour::Mkinitcpio | Flavour::MkinitcpioSystemd => "usr/bin/lifeline",
        }
    }

    /// What the distribution's own unlock step prints when it asks for the passphrase.
    pub fn passphrase_prompt(self) -> &'static str {
        match self {
            // cryptsetup's own prompt. mkinitcpio's encrypt hook prints a banner first, then
            // cryptsetup loads device-mapper and flushes what was typed before it asks: typing
            // at the banner loses the line when the module load is slow.
            Flavour::Dracut | Flavour::Mkinitcpio => "Enter passphrase for",
            Flavour::DracutSystemd | Flavour::MkinitcpioSystemd => {
                "Please enter passphrase for disk"
            }
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
            Flavour::MkinitcpioSystemd => format!("rd.luks.name={}=cryptroot", root.uuid),
            Flavour::Mkinitcpio => format!("cryptdevice=UUID={}:cryptroot", root.uuid),
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

/// Runs `script` (sh) in a private mount namespace, after bind-mounting each `(from, onto)`;
/// its output, as `Err` when it failed.
fn in_namespace(
    binds: &[(&Path, &str)],
    script: &str,
    env: &[(&str, &Path)],
) -> Result<String, String> {
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
    match out.status.success() {
        true => Ok(log),
        false => Err(log),
    }
}

/// Builds an image of `flavour` with `lifeline` (the binary to put in; `None`: the image
/// without lifeline's glue, as the distribution makes it) and `etc_lifeline` as
/// `/etc/lifeline`, for the root on `root`, into `out`. Returns the tool's output (`Err`: the
/// tool failed).
pub fn build(
    flavour: Flavour,
    lifeline: Option<&Path>,
    etc_lifeline: &Path,
    root: &RootDisk,
    work: &Path,
    out: &Path,
) -> Result<String, String> {
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
        Flavour::Mkinitcpio | Flavour::MkinitcpioSystemd => {
            let tool = work.join("mkinitcpio");
            copy_tree(mkinitcpio(), &tool);
            let hooks = match flavour {
                Flavour::Mkinitcpio => "base udev modconf block lifeline encrypt filesystems",
                _ => "base systemd autodetect modconf block sd-lifeline sd-encrypt filesystems",
            };
            for glue in ["install/lifeline", "install/sd-lifeline", "hooks/lifeline"] {
                if lifeline.is_some() {
                    std::fs::copy(repo(&format!("mkinitcpio/{glue}")), tool.join(glue)).unwrap();
                }
            }
            let hooks = match lifeline {
                Some(_) => hooks.to_string(),
                None => hooks.replace(" sd-lifeline", "").replace(" lifeline", ""),
            };
            let conf = work.join("mkinitcpio.conf");
            // The modules the boots need whatever autodetect makes of the build host.
            std::fs::write(
                &conf,
                format!(
                    "MODULES=(virtio_pci virtio_blk ext4)\nBINARIES=()\nFILES=()\n\
                     HOOKS=({hooks})\nCOMPRESSION=\"zstd\"\n"
                ),
            )
            .unwrap();
            let t = tool.display();
            let built = in_namespace(
                &[(etc_lifeline, "/etc/lifeline")],
                &format!(
                    "MKINITCPIO_LIBRARY='{t}' MKINITCPIO_HOOKS='{t}/hooks'                      MKINITCPIO_INSTALL='{t}/install' MKINITCPIO_POST_HOOKS='{t}/post'                      MKINITCPIO_CONF='{c}' bash '{t}/mkinitcpio' -n -k {v} -r '{r}' -g '{o}'
",
                    c = conf.display(),
                    v = k.version,
                    r = k.root.display(),
                    o = out.display(),
                ),
                &[
                    ("LIFELINE", lifeline.unwrap_or(Path::new("/nonexistent"))),
                    ("LIFELINE_UNIT", &repo("mkinitcpio/lifeline-unlock.service")),
                    ("LIFELINE_UDHCPC", &repo("mkinitcpio/udhcpc")),
                ],
            );
            // On Debian the systemd hook names a few Arch-only files and exits 1 although the
            // image works; any other error is a failure.
            match built {
                Err(log) if errors(&log).all(|e| ARCH_ONLY.contains(&e)) && out.exists() => Ok(log),
                other => other,
            }
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

/// What mkinitcpio's systemd hook reports missing on Debian (files only Arch has).
const ARCH_ONLY: &[&str] = &[
    "module not found: 'crypto_lz4'",
    "file not found: '/usr/bin/sulogin'",
    "file not found: '/usr/bin/swapon'",
    "file not found: '/usr/bin/swapoff'",
    "file not found: '/usr/lib/systemd/systemd-executor'",
    "file not found: '/usr/lib/systemd/systemd-validatefs'",
    "file not found: '/usr/lib/tmpfiles.d/20-systemd-stub.conf'",
];

/// mkinitcpio's `==> ERROR:` lines.
fn errors(log: &str) -> impl Iterator<Item = &str> {
    log.lines()
        .filter_map(|l| l.split_once("==> ERROR: ").map(|(_, e)| e.trim()))
}

/// Arch's real mkinitcpio, made runnable here by its `prepare.sh` once per run (kept in the
/// cache). It comes from `MKINITCPIO_SRC`, by default `../shared/tools/mkinitcpio` beside this
/// repository; without it the mkinitcpio flavours fail and say so.
pub fn mkinitcpio() -> &'static Path {
    static PREPARED: OnceLock<PathBuf> = OnceLock::new();
    PREPARED.get_or_init(|| {
        let src = std::env::var_os("MKINITCPIO_SRC")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo("../shared/tools/mkinitcpio"));
        let prepare = src.join("prepare.sh");
        assert!(
            prepare.is_file(),
            "no mkinitcpio to build images with: {} has no prepare.sh. Set MKINITCPIO_SRC to a \
             directory with Arch's mkinitcpio tarball and its prepare.sh (see \
             qemu-tests/README.md); the mkinitcpio flavours cannot run without it",
            src.display()
        );
        let dest = cache().join("mkinitcpio");
        let ready = dest.join(".lifeline-ready");
        if !ready.exists() {
            let out = Command::new("bash")
                .arg(&prepare)
                .arg(&dest)
                .output()
                .expect("bash");
            assert!(
                out.status.success(),
                "{} failed:\n{}{}",
                prepare.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(&ready, "").unwrap();
        }
        dest
    })
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
