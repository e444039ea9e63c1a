//! The QEMU harness: a world per test — the escrow server (with its own TPM) on 127.0.0.1, a
//! machine with its swtpm state and LUKS2 root disk, initramfs images of one flavour — and
//! boots of that machine.

pub mod initrd;
pub mod kernel;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex};

use crate::support::server::Server;
use crate::support::swtpm::Swtpm;
use crate::support::*;

pub use initrd::Flavour;
pub use qemu::{Boot, Finished, GUEST_SERVER};

/// A scenario's tests, one per initramfs flavour.
macro_rules! for_each_flavour {
    ($scenario:ident) => {
        #[test]
        fn dracut() {
            $scenario($crate::harness::Flavour::Dracut);
        }

        #[test]
        fn dracut_systemd() {
            $scenario($crate::harness::Flavour::DracutSystemd);
        }

        #[test]
        fn initramfs_tools() {
            $scenario($crate::harness::Flavour::InitramfsTools);
        }

        #[test]
        fn mkinitcpio() {
            $scenario($crate::harness::Flavour::Mkinitcpio);
        }

        #[test]
        fn mkinitcpio_systemd() {
            $scenario($crate::harness::Flavour::MkinitcpioSystemd);
        }
    };
}
pub(crate) use for_each_flavour;

/// Two machines at a time: TCG keeps one core busy per machine, and this host has two.
const MACHINES_AT_ONCE: usize = 2;

/// Places for machines: a test holds one from the start of its world to its end.
static MACHINES: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// A place for one machine, given back when dropped.
pub struct Place;

impl Place {
    fn take() -> Place {
        let (count, freed) = &MACHINES;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MACHINES_AT_ONCE {
            n = freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Place
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let (count, freed) = &MACHINES;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        freed.notify_one();
    }
}

/// The LUKS2 root disk: a tiny root (busybox and an init that reports and powers off).
pub struct RootDisk {
    pub path: PathBuf,
    pub uuid: String,
    /// The passphrase in keyslot 0, as a key file.
    pub key_file: PathBuf,
}

/// The tiny root's init: says it runs, marks the marker disk, powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
echo "lifeline-test: root mounted"
echo root-mounted | /bin/busybox dd of=/dev/vdb bs=512 count=1 conv=sync 2>/dev/null
/bin/busybox sync
/bin/busybox poweroff -f
"#;

/// Runs a host command that must succeed; returns its output.
pub fn run(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes the root: an ext4 file system with the tiny root, encrypted in place into LUKS2 by
/// `cryptsetup reencrypt --encrypt` (userspace: this host has no device-mapper).
fn root_disk(sb: &Sandbox) -> RootDisk {
    let tree = sb.path("rootfs");
    for d in [
        "bin",
        "sbin",
        "lib/x86_64-linux-gnu",
        "lib64",
        "proc",
        "sys",
        "dev",
        "run",
    ] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    for f in [
        "/bin/busybox",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/x86_64-linux-gnu/libresolv.so.2",
        "/lib64/ld-linux-x86-64.so.2",
    ] {
        std::fs::copy(f, tree.join(&f[1..])).unwrap();
    }
    // systemd switches only into an OS tree: one with an os-release.
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(
        tree.join("etc/os-release"),
        "ID=lifeline-test\nNAME=\"lifeline test root\"\n",
    )
    .unwrap();
    let init = tree.join("sbin/init");
    std::fs::write(&init, INIT).unwrap();
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = sb.path("root.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&tree)
        .arg(&path)
        .arg("24M"));
    let key_file = sb.write("root.key", OLD_PASSPHRASE);
    run(Command::new("cryptsetup")
        .args(["reencrypt", "-q", "--encrypt", "--type", "luks2"])
        .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
        .args(["--reduce-device-size", "16M", "--key-file"])
        .arg(&key_file)
        .arg(&path));
    let uuid = run(Command::new("cryptsetup").arg("luksUUID").arg(&path))
        .trim()
        .to_string();
    RootDisk {
        path,
        uuid,
        key_file,
    }
}

/// What a test builds its boots from.
pub struct World {
    pub sb: Sandbox,
    pub srv: Server,
    _server_tpm: Swtpm,
    pub flavour: Flavour,
    pub root: RootDisk,
    /// The machine's TPM (its "motherboard").
    pub tpm: PathBuf,
    pub machine_id: String,
    pub client_id: String,
    boots: usize,
    /// Show the consoles (and keep the kernel quiet): `make demo`.
    pub echo: bool,
    /// Each boot's console, sockets and marker: `target/tmp/qemu/logs/<test>/boot-<n>/`.
    logs: PathBuf,
    _place: Place,
}

impl World {
    /// The escrow server with DRSK custody, and a machine not yet set up.
    pub fn new(flavour: Flavour) -> World {
        let place = Place::take();
        let sb = Sandbox::new();
        let server_tpm = Swtpm::start(&sb.path("tpm-server"));
        let srv = Server::start_with_tpm(&sb, &[], Some(&server_tpm));
        sb.server_on(&server_tpm, &["drsk", "init", "--dir", "srv"])
            .ok();
        let root = root_disk(&sb);
        let test = std::thread::current()
            .name()
            .unwrap_or("test")
            .replace("::", "-");
        let logs = kernel::cache().join("logs").join(test);
        let _ = std::fs::remove_dir_all(&logs);
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).unwrap();
        World {
            tpm: sb.path("tpm-machine"),
            sb,
            srv,
            _server_tpm: server_tpm,
            flavour,
            root,
            machine_id: hex(&id),
            client_id: String::new(),
            boots: 0,
            echo: false,
            logs,
            _place: place,
        }
    }

    /// Sets the machine up as an administrator would: DRSK with the server as backup target,
    /// the root's key sealed to PCR 16, joined, key escrowed, DRSK backed up. With
    /// `pcr_changed`, PCR 16 holds another value while sealing, so the first boot (PCR 16 is
    /// zero after TPM startup) finds the PCRs changed.
    pub fn provision(&mut self, pcr_changed: bool) {
        let t = Swtpm::start(&self.tpm);
        let sb = &self.sb;
        self.client_id = sb
            .lifeline_on(&t, &["provision", "--backup-server-key", "srv/drsk.pub"])
            .ok()
            .stdout
            .trim()
            .to_string();
        if pcr_changed {
            t.tool(
                &sb.path(""),
                "tpm2_pcrextend",
                &[&format!("16:sha256={}", "ab".repeat(32))],
            );
        }
        let (root, key) = (
            self.root.path.to_str().unwrap(),
            self.root.key_file.to_str().unwrap(),
        );
        sb.lifeline_on(&t, &["enroll", root, "--key-file", key, "--pcrs", "16"])
            .ok();
        self.srv
            .join(sb, &["--machine-id", &self.machine_id], |args| {
                sb.lifeline_on(&t, args)
            });
        sb.lifeline_on(
            &t,
            &[
                "escrow",
                root,
                "--server",
                &self.srv.url,
                "--key-file",
                key,
                "--machine-id",
                &self.machine_id,
            ],
        )
        .ok();
        sb.lifeline_on(&t, &["backup", "--server", &self.srv.url])
            .ok();
    }

    /// `/etc/lifeline` for the initramfs: the configuration, the server's CA, the trust key.
    pub fn etc_lifeline(&self) -> PathBuf {
        let dir = self.sb.path("etc-lifeline");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(self.srv.dir.join("tls/ca.pem"), dir.join("server-ca.pem")).unwrap();
        std::fs::copy(self.srv.dir.join("minisign.pub"), dir.join("minisign.pub")).unwrap();
        std::fs::write(
            dir.join("lifeline.toml"),
            format!(
                "server = \"{GUEST_SERVER}\"\npoll_interval = 2\ntimeout = 120\ntpm_wait = 10\n\
                 offer_new_passphrase = false\n\n[[volume]]\nuuid = \"{}\"\nname = \"cryptroot\"\n",
                self.root.uuid
            ),
        )
        .unwrap();
        dir
    }

    /// An initramfs of this world's flavour with lifeline in it.
    pub fn initrd(&self) -> PathBuf {
        self.initrd_with("initrd.img", Some(initrd::lifeline_binary()))
    }

    /// An initramfs of this world's flavour named `name`, with `lifeline` in it (`None`: as
    /// the distribution makes it, without lifeline).
    pub fn initrd_with(&self, name: &str, lifeline: Option<&Path>) -> PathBuf {
        let out = self.sb.path(name);
        if !out.exists() {
            if let Err(log) = initrd::build(
                self.flavour,
                lifeline,
                &self.etc_lifeline(),
                &self.root,
                &self.sb.path(&format!("build-{name}")),
                &out,
            ) {
                panic!(
                    "the {} image could not be built:\n{log}",
                    self.flavour.name()
                );
            }
        }
        out
    }

    /// A boot of the machine with `initrd`; `extra` goes on the kernel command line.
    pub fn boot_with(
        &mut self,
        initrd: &Path,
        tpm: Option<&Path>,
        network: bool,
        usb: Option<&Path>,
        extra: &str,
    ) -> Boot {
        self.boots += 1;
        let dir = self.logs.join(format!("boot-{}", self.boots));
        std::fs::create_dir_all(&dir).unwrap();
        let k = kernel::kernel();
        Boot::start(qemu::BootOptions {
            kernel: &k.vmlinuz(),
            initrd,
            cmdline: format!(
                "root=/dev/mapper/cryptroot rootfstype=ext4 {} rd.lifeline.machine_id={} {}{extra}",
                self.flavour.cmdline(&self.root),
                self.machine_id,
                if self.echo { "quiet " } else { "" },
            ),
            root: &self.root.path,
            tpm,
            server_port: network.then_some(self.srv.port),
            usb,
            dir: &dir,
            sockets: &self.sb.path(""),
            echo: self.echo,
        })
    }

    /// The usual boot: lifeline in the initramfs, the machine's TPM, the network.
    pub fn boot(&mut self) -> Boot {
        let (initrd, tpm) = (self.initrd(), self.tpm.clone());
        self.boot_with(&initrd, Some(&tpm), true, None, "")
    }
}

impl World {
    /// The administrator approves the machine's pending recovery request; returns the OTP the
    /// helpdesk reads out.
    pub fn approve_recovery(&self) -> String {
        let (recovery_id, otp) = self.srv.approve_newest_request(&self.sb);
        assert_eq!(
            recovery_id,
            format!("{}-{}", &self.client_id[..4], &self.root.uuid[..4])
        );
        otp
    }

    /// A recovery packet for the root made off-line by the authority in `authority` (the
    /// server's own, `srv`, or another); returns the packet file and its OTP.
    pub fn offline_packet(&self, authority: &str) -> (PathBuf, String) {
        let machine = ["--machine-id", self.machine_id.as_str()];
        let escrow = self
            .sb
            .escrow_to(authority, &self.root.path, &self.root.key_file, &machine);
        self.sb.issue_from(authority, &escrow, &[])
    }

    /// A vfat USB stick image with `packet` where lifeline looks:
    /// `lifeline/<client-id>/<volume-uuid>.recovery`.
    pub fn usb_stick(&self, name: &str, packet: &Path) -> PathBuf {
        let stick = self.sb.path(name);
        std::fs::File::create(&stick)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        run(Command::new("mkfs.vfat")
            .args(["-n", "RECOVERY"])
            .arg(&stick));
        let dir = format!("::lifeline/{}", self.client_id);
        let image = stick.to_str().unwrap();
        run(Command::new("mmd").args(["-i", image, "::lifeline", &dir]));
        run(Command::new("mcopy")
            .args(["-i", image])
            .arg(packet)
            .arg(format!("{dir}/{}.recovery", self.root.uuid)));
        stick
    }
}

impl World {
    /// The motherboard is replaced by one whose TPM state is in `new_board` (fresh): its
    /// restore request goes to the server (`lifeline restore --server`, as from a live system)
    /// and the administrator approves it. Returns what `lifeline restore` said.
    pub fn approve_restore(&self, new_board: &Path) -> String {
        let asked = {
            let t = Swtpm::start(new_board);
            let root = self.root.path.to_str().unwrap();
            self.sb.lifeline_on(
                &t,
                &["restore", "--server", &self.srv.url, "--device", root],
            )
        };
        asked.fails(5, "is not approved yet");
        let rows = self
            .srv
            .admin(&self.sb, &["restores", "--json"])
            .ok()
            .stdout
            .clone();
        let row: serde_json::Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
        assert_eq!(row["client_id"], self.client_id.as_str());
        self.srv
            .admin(
                &self.sb,
                &["approve-restore", row["request"].as_str().unwrap()],
            )
            .ok();
        asked.stderr.clone()
    }

    /// A boot with the machine's TPM and `stick` plugged in, with or without the network.
    pub fn boot_with_stick(&mut self, stick: &Path, network: bool) -> Boot {
        let (initrd, tpm) = (self.initrd(), self.tpm.clone());
        self.boot_with(
            &initrd,
            Some(&tpm),
            network,
            Some(stick),
            "usb-storage.delay_use=0",
        )
    }
}

/// Asserts the boot reached the root; returns the console.
pub fn assert_root(f: &Finished) -> &str {
    assert!(f.root_mounted, "the root was not mounted:\n{}", f.console);
    &f.console
}
