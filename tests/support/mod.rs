//! Shared test fixtures: a scratch directory, real LUKS images made with the cryptsetup CLI,
//! a real authority made with lifeline-server, and runners for the binaries and stock tools.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const ADMIN_PASSPHRASE: &str = "test authority passphrase";
pub const OLD_PASSPHRASE: &str = "the forgotten passphrase";

pub struct Sandbox {
    dir: tempfile::TempDir,
}

/// A LUKS image and what the test knows about it.
pub struct Image {
    pub path: PathBuf,
    /// The passphrase in keyslot 0, as a key file.
    pub key_file: PathBuf,
    pub volume_key: Vec<u8>,
    pub uuid: String,
}

/// Output of a finished process, with helpers for asserting on it.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts the exit code and that standard error mentions `text`.
    #[track_caller]
    pub fn fails(&self, code: i32, text: &str) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(text),
            "stderr lacks {text:?}:\n{}",
            self.stderr
        );
        self
    }

    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    /// A fresh LUKS image (version 1 or 2) with a known volume key and `OLD_PASSPHRASE` in
    /// keyslot 0, made by the real cryptsetup tool with a cheap PBKDF.
    pub fn luks_image(&self, name: &str, version: u8) -> Image {
        let path = self.path(name);
        let key_file = self.write(&format!("{name}.key"), OLD_PASSPHRASE);
        let mut volume_key = vec![0u8; 64];
        getrandom::fill(&mut volume_key).expect("random");
        let vk_file = self.write(&format!("{name}.vk"), &volume_key);
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(20 << 20))
            .expect("image file");
        let out = Command::new("cryptsetup")
            .args(["luksFormat", "-q", "--type", &format!("luks{version}")])
            .args([
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--key-size",
                "512",
            ])
            .arg("--volume-key-file")
            .arg(&vk_file)
            .arg("--key-file")
            .arg(&key_file)
            .arg(&path)
            .output()
            .expect("cryptsetup");
        assert!(
            out.status.success(),
            "luksFormat: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&vk_file).expect("remove vk");
        if version == 2 {
            let out = Command::new("cryptsetup")
                .args(["config", "--label", "testroot"])
                .arg(&path)
                .output()
                .expect("cryptsetup config");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let uuid = cryptsetup(&["luksUUID", path.to_str().unwrap()])
            .stdout
            .trim()
            .to_string();
        Image {
            path,
            key_file,
            volume_key,
            uuid,
        }
    }

    /// A new authority in `name`, with `ADMIN_PASSPHRASE`.
    pub fn authority(&self, name: &str) -> PathBuf {
        let pass = self.write("admin.pass", format!("{ADMIN_PASSPHRASE}\n"));
        let dir = self.path(name);
        self.server(&[
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ])
        .ok();
        dir
    }

    pub fn lifeline(&self, args: &[&str]) -> Run {
        self.run(env!("CARGO_BIN_EXE_lifeline"), args, None, &[])
    }

    pub fn lifeline_stdin(&self, args: &[&str], stdin: &str) -> Run {
        self.run(env!("CARGO_BIN_EXE_lifeline"), args, Some(stdin), &[])
    }

    pub fn server(&self, args: &[&str]) -> Run {
        self.run(env!("CARGO_BIN_EXE_lifeline-server"), args, None, &[])
    }

    /// `lifeline` on the machine whose TPM is `tpm`, with its state in `state/` (the root
    /// disk, which survives a motherboard swap).
    pub fn lifeline_on(&self, tpm: &swtpm::Swtpm, args: &[&str]) -> Run {
        self.lifeline_tcti(&tpm.tcti(), args)
    }

    /// On the machine whose TPM is `tpm`: `provision` (its arguments), then `img` enrolled
    /// with its passphrase file. Returns the client ID provision printed.
    pub fn provisioned_and_enrolled(
        &self,
        tpm: &swtpm::Swtpm,
        provision: &[&str],
        img: &Image,
    ) -> String {
        let client_id = self
            .lifeline_on(tpm, provision)
            .ok()
            .stdout
            .trim()
            .to_string();
        let (image, key) = (img.path.to_str().unwrap(), img.key_file.to_str().unwrap());
        self.lifeline_on(tpm, &["enroll", image, "--key-file", key])
            .ok();
        client_id
    }

    /// `lifeline` with the TPM named by a TCTI string and its state in `state/`.
    pub fn lifeline_tcti(&self, tcti: &str, args: &[&str]) -> Run {
        let state = self.path("state");
        let env = [
            ("LIFELINE_TCTI", tcti.to_string()),
            ("LIFELINE_STATE_DIR", state.display().to_string()),
        ];
        self.run(env!("CARGO_BIN_EXE_lifeline"), args, None, &env)
    }

    /// `lifeline` as the machine whose state directory is `state/` (another name: another machine).
    pub fn lifeline_as(&self, state: &str, args: &[&str], stdin: Option<&str>) -> Run {
        let env = [("LIFELINE_STATE_DIR", self.path(state).display().to_string())];
        self.run(env!("CARGO_BIN_EXE_lifeline"), args, stdin, &env)
    }

    /// `lifeline-server` with `env` set (a helpdesk shell).
    pub fn server_env(&self, args: &[&str], env: &[(&str, String)]) -> Run {
        self.run(env!("CARGO_BIN_EXE_lifeline-server"), args, None, env)
    }

    /// `lifeline-server` with `tpm` as the server's TPM.
    pub fn server_on(&self, tpm: &swtpm::Swtpm, args: &[&str]) -> Run {
        self.run(
            env!("CARGO_BIN_EXE_lifeline-server"),
            args,
            None,
            &[("LIFELINE_TCTI", tpm.tcti())],
        )
    }

    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, String)],
    ) -> Run {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        {
            let mut input = child.stdin.take().expect("stdin");
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).expect("write stdin");
            }
        }
        Run::from(child.wait_with_output().expect("wait"))
    }

    /// `lifeline escrow` of `image` to the authority in `auth/`, with its key file.
    pub fn escrow_run(&self, image: &Image, out: &str, extra: &[&str]) -> Run {
        let mut args = vec![
            "escrow",
            image.path.to_str().unwrap(),
            "--recipient",
            "auth/recipient.txt",
            "--out",
            out,
            "--key-file",
            image.key_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.lifeline(&args)
    }

    /// `lifeline-server recovery issue` with the authority in `dir`.
    pub fn issue_run(
        &self,
        dir: &str,
        escrow: &str,
        out: &str,
        pass_file: &str,
        extra: &[&str],
    ) -> Run {
        let mut args = vec![
            "recovery",
            "issue",
            "--dir",
            dir,
            "--escrow",
            escrow,
            "--out",
            out,
            "--passphrase-file",
            pass_file,
        ];
        args.extend_from_slice(extra);
        self.server(&args)
    }

    /// Escrows `image` to the authority in `auth/` and issues a recovery packet from it;
    /// returns the recovery packet's path and the OTP.
    pub fn escrow_and_issue(&self, image: &Image, extra_issue: &[&str]) -> (PathBuf, String) {
        let escrow = self.fresh_path("escrow");
        self.escrow_run(image, escrow.to_str().unwrap(), &[]).ok();
        self.issue(&escrow, extra_issue)
    }

    /// `lifeline escrow` off-line of the volume `image` (its passphrase in `key_file`) to the
    /// authority in `authority/`; returns the escrow packet's path.
    pub fn escrow_to(
        &self,
        authority: &str,
        image: &Path,
        key_file: &Path,
        extra: &[&str],
    ) -> PathBuf {
        let out = self.fresh_path("escrow");
        let recipient = format!("{authority}/recipient.txt");
        let mut args = vec![
            "escrow",
            image.to_str().unwrap(),
            "--recipient",
            &recipient,
            "--out",
            out.to_str().unwrap(),
            "--key-file",
            key_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.lifeline(&args).ok();
        out
    }

    /// Issues a recovery packet from `escrow` with the authority in `auth/`.
    pub fn issue(&self, escrow: &Path, extra: &[&str]) -> (PathBuf, String) {
        self.issue_from("auth", escrow, extra)
    }

    /// Issues a recovery packet from `escrow` with the authority in `authority/`; returns
    /// the recovery packet's path and the OTP.
    pub fn issue_from(&self, authority: &str, escrow: &Path, extra: &[&str]) -> (PathBuf, String) {
        let recovery = self.fresh_path("recovery");
        let run = self.issue_run(
            authority,
            escrow.to_str().unwrap(),
            recovery.to_str().unwrap(),
            "admin.pass",
            extra,
        );
        run.ok();
        (recovery, run.stdout.trim().to_string())
    }

    /// A path in the sandbox that does not exist yet.
    pub fn fresh_path(&self, stem: &str) -> PathBuf {
        (0..)
            .map(|i| self.path(&format!("{stem}-{i}")))
            .find(|p| !p.exists())
            .expect("a free name")
    }
}

/// Runs the cryptsetup CLI.
pub fn cryptsetup(args: &[&str]) -> Run {
    Run::from(
        Command::new("cryptsetup")
            .args(args)
            .output()
            .expect("cryptsetup"),
    )
}

/// True when `passphrase` opens `image` according to the real cryptsetup tool.
pub fn cryptsetup_accepts(image: &Path, passphrase: &str) -> bool {
    let mut child = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file", "-"])
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cryptsetup");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(passphrase.as_bytes())
        .unwrap();
    child.wait().unwrap().success()
}

/// Runs `command` (a shell command line) on a pseudo-terminal with `script`, typing each of
/// `lines` a moment apart: the stock `age` tool reads passphrases only from a terminal.
pub fn run_on_tty(dir: &Path, command: &str, lines: &[&str]) -> Run {
    let mut child = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let mut input = child.stdin.take().expect("stdin");
    for line in lines {
        std::thread::sleep(Duration::from_millis(300));
        input
            .write_all(format!("{line}\n").as_bytes())
            .expect("type");
    }
    // Keep the terminal open until the program has finished reading.
    let out = child.wait_with_output().expect("script");
    drop(input);
    Run::from(out)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A loop device, detached when dropped.
pub struct LoopDevice(pub String);

impl LoopDevice {
    pub fn attach(image: &Path) -> Option<LoopDevice> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| LoopDevice(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

pub mod browser;
pub mod hostile;
pub mod pg;
pub mod server;
pub mod swtpm;
