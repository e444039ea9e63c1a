//! One boot: swtpm for the machine's TPM, QEMU with TCG, the serial console on a socket that
//! waits for us (so nothing is lost), the root disk, a marker disk the tiny root writes to,
//! and, if asked, user-mode networking that reaches only the escrow server on the host: each
//! guest connection to 10.0.2.100:8443 starts a `socat` to the server on 127.0.0.1 (a
//! `tcp:` chardev forward would carry one connection for the whole boot).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the tiny root prints, and writes to the marker disk, once it runs.
pub const ROOT_MOUNTED: &str = "lifeline-test: root mounted";
/// The address the guest reaches the escrow server by.
pub const GUEST_SERVER: &str = "https://10.0.2.100:8443";
/// Longest a boot may take, prompts included.
const BOOT_LIMIT: Duration = Duration::from_secs(240);

pub struct BootOptions<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: String,
    pub root: &'a Path,
    /// The machine's TPM state; `None`: no TPM at all.
    pub tpm: Option<&'a Path>,
    /// The host port the escrow server listens on; `None`: no network.
    pub server_port: Option<u16>,
    /// A USB stick image.
    pub usb: Option<&'a Path>,
    /// Where the console log and the marker go.
    pub dir: &'a Path,
    /// Where the sockets go (a short path: a socket's path has at most 107 bytes).
    pub sockets: &'a Path,
    /// Show the console on standard output as it comes (`make demo`).
    pub echo: bool,
}

pub struct Boot {
    qemu: Child,
    swtpm: Option<Child>,
    serial: UnixStream,
    output: Arc<Mutex<String>>,
    root_at: Arc<Mutex<Option<Duration>>>,
    marker: PathBuf,
    log: PathBuf,
}

/// How a boot ended.
pub struct Finished {
    pub root_mounted: bool,
    pub console: String,
    /// From QEMU's start to the root's first line on the console.
    pub to_root: Option<Duration>,
}

fn wait_for_path(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Boot {
    pub fn start(o: BootOptions) -> Boot {
        let marker = o.dir.join("marker.img");
        std::fs::write(&marker, vec![0u8; 1 << 20]).unwrap();
        let serial_path = o.sockets.join("serial.sock");
        let tpm_path = o.sockets.join("tpm.sock");
        for p in [&serial_path, &tpm_path] {
            let _ = std::fs::remove_file(p);
        }
        let swtpm = o.tpm.map(|state| {
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--terminate", "--tpmstate"])
                .arg(format!("dir={}", state.display()))
                .arg("--ctrl")
                .arg(format!("type=unixio,path={}", tpm_path.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm");
            wait_for_path(&tpm_path);
            child
        });
        let mut q = Command::new("qemu-system-x86_64");
        q.args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(o.kernel)
            .arg("-initrd")
            .arg(o.initrd)
            .args(["-append", &format!("console=ttyS0 panic=-1 {}", o.cmdline)])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", o.root.display()))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", marker.display()))
            .arg("-chardev")
            .arg(format!(
                "socket,id=ser0,path={},server=on,wait=on",
                serial_path.display()
            ))
            .args(["-serial", "chardev:ser0"]);
        if o.tpm.is_some() {
            q.arg("-chardev")
                .arg(format!("socket,id=chrtpm,path={}", tpm_path.display()))
                .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
                .args(["-device", "tpm-tis,tpmdev=tpm0"]);
        }
        if let Some(port) = o.server_port {
            q.arg("-netdev")
                .arg(format!(
                    "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:8443-cmd:socat - TCP:127.0.0.1:{port}"
                ))
                .args(["-device", "virtio-net-pci,netdev=net0"]);
        }
        if let Some(stick) = o.usb {
            q.args(["-device", "qemu-xhci,id=xhci"])
                .arg("-drive")
                .arg(format!(
                    "if=none,id=stick,format=raw,file={}",
                    stick.display()
                ))
                .args(["-device", "usb-storage,bus=xhci.0,drive=stick,removable=on"]);
        }
        let mut qemu = q
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !serial_path.exists() {
            if qemu.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = qemu.kill();
                let mut why = String::new();
                let _ = qemu.stderr.take().unwrap().read_to_string(&mut why);
                panic!("QEMU did not start: {why}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let serial = loop {
            match UnixStream::connect(&serial_path) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let started = Instant::now();
        let output = Arc::new(Mutex::new(String::new()));
        let root_at = Arc::new(Mutex::new(None));
        let log = o.dir.join("console.log");
        let echo = o.echo;
        let (mut reader, sink, at, log_path) = (
            serial.try_clone().unwrap(),
            output.clone(),
            root_at.clone(),
            log.clone(),
        );
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(log_path).ok();
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(f) = file.as_mut() {
                    let _ = f.write_all(&buf[..n]);
                }
                if echo {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
                let mut text = sink.lock().unwrap();
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                if text.contains(ROOT_MOUNTED) {
                    at.lock().unwrap().get_or_insert(started.elapsed());
                }
            }
        });
        Boot {
            qemu,
            swtpm,
            serial,
            output,
            root_at,
            marker,
            log,
        }
    }

    pub fn console(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn tail(&self) -> String {
        let text = self.console();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!(
            "console ({}), last part:\n{}",
            self.log.display(),
            &text[start..]
        )
    }

    /// Waits until `text` has appeared on the console `count` times in all.
    pub fn wait_for(&mut self, text: &str, count: usize) {
        let deadline = Instant::now() + BOOT_LIMIT;
        while self.console().matches(text).count() < count {
            if Instant::now() > deadline || self.qemu.try_wait().unwrap().is_some() {
                panic!("waited for {text:?} (x{count}); {}", self.tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types a line at the console, as a person would: a moment after the prompt.
    pub fn type_line(&mut self, line: &str) {
        std::thread::sleep(Duration::from_millis(500));
        self.serial.write_all(line.as_bytes()).unwrap();
        self.serial.write_all(b"\r").unwrap();
        self.serial.flush().unwrap();
    }

    /// Waits for the machine to power off (the tiny root does that at once).
    pub fn finish(mut self) -> Finished {
        let deadline = Instant::now() + BOOT_LIMIT;
        loop {
            if self.qemu.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.qemu.kill();
                panic!("the machine did not power off; {}", self.tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(mut s) = self.swtpm.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        std::thread::sleep(Duration::from_millis(200));
        let marker = std::fs::read(&self.marker).unwrap();
        Finished {
            root_mounted: marker.starts_with(b"root-mounted"),
            console: self.console(),
            to_root: *self.root_at.lock().unwrap(),
        }
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if let Some(s) = self.swtpm.as_mut() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}
