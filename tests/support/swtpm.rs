//! A real software TPM per test: `swtpm` over TCP on 127.0.0.1 (tss-esapi 7.7 cannot use unix
//! sockets), with its state in a temporary directory, killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub struct Swtpm {
    child: Child,
    pub state: PathBuf,
    pub port: u16,
}

static NEXT: AtomicU16 = AtomicU16::new(0);

/// A pair of free consecutive ports (server, control), spread by process ID so test binaries
/// running at the same time do not collide.
fn free_port_pair() -> u16 {
    let base = 20000 + (std::process::id() % 500) as u16 * 40;
    loop {
        let port = base + 2 * (NEXT.fetch_add(1, Ordering::SeqCst) % 20);
        let free = |p| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 1) {
            return port;
        }
    }
}

impl Swtpm {
    /// A TPM with fresh state in `state` (created if missing, reused if it has state: the same
    /// "motherboard" after a reboot).
    pub fn start(state: &Path) -> Swtpm {
        std::fs::create_dir_all(state).unwrap();
        let port = free_port_pair();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swtpm (apt install swtpm)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Swtpm {
            child,
            state: state.to_path_buf(),
            port,
        }
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// A tpm2-tools command talking to this TPM.
    pub fn tools(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("TPM2TOOLS_TCTI", self.tcti())
            .env("TSS2_LOG", "all+none");
        c
    }

    /// Runs a tpm2-tools command in `dir`, asserts success, then flushes transient objects
    /// (there is no resource manager, and swtpm holds only three). Returns its output.
    pub fn tool(&self, dir: &Path, program: &str, args: &[&str]) -> Vec<u8> {
        let out = self
            .tools(program)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let flushed = self.tools("tpm2_flushcontext").arg("-t").output().unwrap();
        assert!(flushed.status.success());
        out.stdout
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Manufactures TPM state in `state` the way a vendor would: an EK with a certificate signed
/// by the local CA kept in `ca` (created on first use). Returns the CA certificates (PEM) to
/// trust for it.
pub fn manufacture(state: &Path, ca: &Path) -> Vec<u8> {
    std::fs::create_dir_all(state).unwrap();
    std::fs::create_dir_all(ca).unwrap();
    let localca = ca.join("localca.conf");
    std::fs::write(
        &localca,
        format!(
            "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
            ca.display()
        ),
    )
    .unwrap();
    let setup = ca.join("setup.conf");
    std::fs::write(
        &setup,
        format!(
            "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n",
            localca.display()
        ),
    )
    .unwrap();
    let out = Command::new("swtpm_setup")
        .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
        .arg(state)
        .arg("--config")
        .arg(&setup)
        .output()
        .expect("swtpm_setup (apt install swtpm-tools)");
    assert!(
        out.status.success(),
        "swtpm_setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pem = std::fs::read(ca.join("issuercert.pem")).unwrap();
    pem.extend(std::fs::read(ca.join("swtpm-localca-rootca-cert.pem")).unwrap());
    pem
}
