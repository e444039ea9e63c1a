//! What an attacker, a damaged disk or a broken network controls, fed to the real binaries:
//! crafted tokens, a replaced TPM key, FIFOs where files should be, sticks that lie, servers
//! that stall or answer nonsense. Each must end in a clear message and the normal fallback
//! (for `lifeline unlock`: exit 9, the distribution's prompt), with nothing written.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::hostile::{Answer, Cert, Hostile, TRICKLE};
use crate::support::swtpm::Swtpm;
use crate::support::*;

const MACHINE: &str = "5a0c4e2b9d7f41c3a8e6b1d2f3c4e5a6";

/// A TCP port nothing listens on: a TPM there refuses the connection.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `lifeline.toml` for `img` with no TPM (a refused one), a trust key, and `extra` lines.
fn config(sb: &Sandbox, img: &Image, timeout: u64, extra: &str) -> PathBuf {
    if !sb.path("auth").exists() {
        sb.authority("auth");
    }
    let text = format!(
        "prompt = \"console\"\ntcti = \"swtpm:host=127.0.0.1,port={}\"\ntpm_wait = 0\n\
         poll_interval = 1\ntimeout = {timeout}\nmachine_id = \"{MACHINE}\"\n\
         trust = \"{}\"\noffer_new_passphrase = false\n{extra}\n\
         [[volume]]\nuuid = \"{}\"\nname = \"cryptroot\"\ndevice = \"{}\"\n",
        closed_port(),
        sb.path("auth/minisign.pub").display(),
        img.uuid,
        img.path.display()
    );
    let path = sb.fresh_path("lifeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `lifeline` with `args`, nobody typing (standard input open, silent); fails the test if it
/// has not finished within `limit`. Returns the run and how long it took.
fn silent(sb: &Sandbox, args: &[&str], limit: Duration) -> (Run, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(args)
        .current_dir(sb.path(""))
        .env("LIFELINE_STATE_DIR", sb.path("state"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _input = child.stdin.take();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("lifeline {args:?} still runs after {limit:?}:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    (Run::from(child.wait_with_output().unwrap()), elapsed)
}

fn unlock(sb: &Sandbox, config: &Path, limit: Duration) -> (Run, Duration) {
    let config = config.to_str().unwrap();
    silent(
        sb,
        &[
            "unlock",
            "--check-only",
            "--config",
            config,
            "--cmdline",
            "/dev/null",
        ],
        limit,
    )
}

fn sha(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn a_crafted_client_id_in_the_token_is_named_and_lifeline_steps_aside() {
    let sb = Sandbox::new();
    for bad in ["é", "ab", "../../../etc", &format!("../{}", "a".repeat(61))] {
        let img = sb.luks_image(&format!("disk-{}.img", bad.len()), 2);
        let token = serde_json::json!({
            "type": "lifeline-tpm2", "keyslots": [], "lifeline-version": 1,
            "client-id": bad, "public": "0002aabb", "private": "0001cc",
        });
        let file = sb.write("token.json", token.to_string());
        cryptsetup(&[
            "token",
            "import",
            "--json-file",
            file.to_str().unwrap(),
            img.path.to_str().unwrap(),
        ])
        .ok();
        let before = sha(&img.path);
        let (run, _) = unlock(&sb, &config(&sb, &img, 1, ""), Duration::from_secs(30));
        run.fails(9, "the lifeline-tpm2 token is damaged: 'client-id'");
        assert!(run.stderr.contains("is not a client ID"), "{}", run.all());
        assert!(!run.stderr.contains("panicked"), "{}", run.all());
        // The recovery ID comes from the machine ID instead.
        assert!(
            run.stderr
                .contains(&format!("Recovery ID {}-{}", &MACHINE[..4], &img.uuid[..4])),
            "{}",
            run.all()
        );
        assert_eq!(sha(&img.path), before, "the volume is unchanged");
    }
}

#[test]
fn a_replaced_storage_key_is_not_used_and_a_refused_tpm_is_named_quickly() {
    let sb = Sandbox::new();
    let t = Swtpm::start(&sb.path("tpm"));
    let img = sb.luks_image("disk.img", 2);
    let (image, key) = (img.path.to_str().unwrap(), img.key_file.to_str().unwrap());
    sb.lifeline_on(&t, &["provision"]).ok();
    sb.lifeline_on(&t, &["enroll", image, "--key-file", key])
        .ok();
    sb.lifeline_on(&t, &["unseal-check", image]).ok();
    // Someone puts another key at 0x81000004: it is refused before a session is salted to
    // it or the sealed key is loaded under it.
    let dir = sb.path("");
    t.tool(&dir, "tpm2_evictcontrol", &["-C", "o", "-c", "0x81000004"]);
    t.tool(
        &dir,
        "tpm2_createprimary",
        &["-C", "o", "-G", "ecc", "-c", "other.ctx"],
    );
    t.tool(
        &dir,
        "tpm2_evictcontrol",
        &["-C", "o", "-c", "other.ctx", "0x81000004"],
    );
    sb.lifeline_on(&t, &["unseal-check", image])
        .fails(8, "is not the one this key was sealed under");

    // A TPM that refuses the connection: said as such, after no more than tpm_wait.
    let tcti = format!("swtpm:host=127.0.0.1,port={}", closed_port());
    let run = sb.lifeline_tcti(&tcti, &["id"]);
    run.fails(8, "the connection failed");
    assert!(!run.stderr.contains("not recognized"), "{}", run.all());
    let cfg = config(&sb, &img, 1, "").to_str().unwrap().to_string();
    let cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("tpm_wait = 0", "tpm_wait = 1");
    let cfg = sb.write("tpm-wait.toml", cfg);
    let (run, took) = silent(
        &sb,
        &[
            "unlock",
            "--check-only",
            "--tpm-only",
            "--config",
            cfg.to_str().unwrap(),
            "--cmdline",
            "/dev/null",
        ],
        Duration::from_secs(30),
    );
    run.fails(9, "the connection failed");
    assert!(took < Duration::from_secs(4), "tpm_wait = 1 took {took:?}");
}

#[test]
fn fifos_where_files_should_be_are_refused_at_once() {
    let sb = Sandbox::new();
    let img = sb.luks_image("disk.img", 2);
    sb.authority("auth");
    let escrow = sb.escrow_to("auth", &img.path, &img.key_file, &["--machine-id", MACHINE]);
    let (packet, _) = sb.issue(&escrow, &[]);
    let fifo = sb.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (image, fifo, packet) = (
        img.path.to_str().unwrap(),
        fifo.to_str().unwrap(),
        packet.to_str().unwrap(),
    );
    let recover = |extra: &[&str]| {
        let mut args = vec!["recover", image, "--machine-id", MACHINE];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    for args in [
        vec!["inspect".to_string(), fifo.to_string()],
        recover(&["--packet", fifo, "--trust", "auth/minisign.pub"]),
        recover(&["--packet", packet, "--trust", fifo]),
        recover(&[
            "--packet",
            packet,
            "--trust",
            "auth/minisign.pub",
            "--otp-file",
            fifo,
        ]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (run, _) = silent(&sb, &args, Duration::from_secs(20));
        assert_ne!(run.code, 0, "{args:?}");
        assert!(
            run.stderr.contains("it is a FIFO"),
            "{args:?}: {}",
            run.all()
        );
    }
}

#[test]
fn a_stick_needing_journal_recovery_is_not_written_and_a_garbage_stick_is_named() {
    let sb = Sandbox::new();
    let img = sb.luks_image("disk.img", 2);
    sb.authority("auth");
    let escrow = sb.escrow_to("auth", &img.path, &img.key_file, &["--machine-id", MACHINE]);
    let (packet, _) = sb.issue(&escrow, &[]);
    let tree = sb.path("stick");
    let dir = tree.join(format!("lifeline/{MACHINE}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&packet, dir.join(format!("{}.recovery", img.uuid))).unwrap();
    let stick = sb.path("stick.img");
    std::fs::File::create(&stick)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&tree)
        .arg(&stick)
        .output()
        .unwrap();
    assert!(mkfs.status.success(), "{mkfs:?}");
    // The journal says it needs replaying: a plain read-only mount would replay it.
    let debugfs = Command::new("debugfs")
        .args(["-w", "-R", "feature needs_recovery"])
        .arg(&stick)
        .output()
        .unwrap();
    assert!(debugfs.status.success(), "{debugfs:?}");
    let garbage = sb.write("garbage.img", vec![0x5a; 4 << 20]);
    let before = sha(&stick);
    let (Some(real), Some(junk)) = (LoopDevice::attach(&stick), LoopDevice::attach(&garbage))
    else {
        eprintln!("no loop devices here: left to the QEMU tests");
        return;
    };
    // The garbage stick alone: named, once, though looked at every second.
    let extra = format!("usb_device = \"{}\"", junk.0);
    let (run, _) = unlock(&sb, &config(&sb, &img, 4, &extra), Duration::from_secs(60));
    assert_eq!(
        run.stderr
            .matches("no vfat, ext4 or iso9660 file system on it")
            .count(),
        1,
        "the garbage stick is named once: {}",
        run.all()
    );
    // Listed first, it does not hide the real one.
    let extra = format!("usb_device = \"{}\"\nusb_device = \"{}\"", junk.0, real.0);
    let (run, _) = unlock(&sb, &config(&sb, &img, 4, &extra), Duration::from_secs(60));
    run.fails(9, "recovery packet from removable media verified");
    drop((real, junk));
    assert_eq!(sha(&stick), before, "the stick was written to");
}

/// A USB stick that never answers: a loop device over a FUSE file (python3-fusepy) whose every
/// read blocks. Whatever reads it sleeps in the kernel, uninterruptibly, until the FUSE server
/// dies: dropping this kills the server, which fails the reads, then detaches everything.
struct DeadStick {
    server: std::process::Child,
    mountpoint: PathBuf,
    device: Option<LoopDevice>,
}

const DEAD_FS: &str = r#"
import errno, stat, sys, time, fusepy as fuse
class Dead(fuse.Operations):
    def getattr(self, path, fh=None):
        if path == "/":
            return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == "/stick.img":
            return dict(st_mode=stat.S_IFREG | 0o644, st_nlink=1, st_size=16 << 20)
        raise fuse.FuseOSError(errno.ENOENT)
    def readdir(self, path, fh):
        return [".", "..", "stick.img"]
    def read(self, path, size, offset, fh):
        time.sleep(10 ** 6)
fuse.FUSE(Dead(), sys.argv[1], foreground=True)
"#;

impl DeadStick {
    fn start(sb: &Sandbox) -> Option<DeadStick> {
        let mountpoint = sb.path("dead-fuse");
        std::fs::create_dir_all(&mountpoint).unwrap();
        let server = Command::new("/usr/bin/python3")
            .args(["-c", DEAD_FS])
            .arg(&mountpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut stick = DeadStick {
            server,
            mountpoint,
            device: None,
        };
        let image = stick.mountpoint.join("stick.img");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !image.exists() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        stick.device = Some(LoopDevice::attach(&image)?);
        Some(stick)
    }
}

impl Drop for DeadStick {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        self.device.take();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
    }
}

#[test]
fn a_stick_that_never_answers_costs_one_wait_and_lifeline_still_exits() {
    let sb = Sandbox::new();
    let img = sb.luks_image("disk.img", 2);
    let Some(stick) = DeadStick::start(&sb) else {
        eprintln!("no FUSE or loop devices here (apt install python3-fusepy): skipped");
        return;
    };
    let dev = &stick.device.as_ref().unwrap().0;
    let timeout = 4;
    let extra = format!("usb_device = \"{dev}\"");
    let (run, took) = unlock(
        &sb,
        &config(&sb, &img, timeout, &extra),
        Duration::from_secs(60),
    );
    run.fails(9, "did not answer within");
    assert_eq!(
        run.stderr.matches("did not answer").count(),
        1,
        "named once, not read again: {}",
        run.all()
    );
    // lifeline exits on time although its reader is stuck in the kernel (a stuck thread
    // would keep the process, and the boot, from going on).
    assert!(
        took < Duration::from_secs(timeout + 3),
        "exited only after {took:?}:\n{}",
        run.all()
    );
    drop(stick);
}

#[test]
fn a_server_that_stalls_cannot_stretch_the_timeout() {
    let sb = Sandbox::new();
    let img = sb.luks_image("disk.img", 2);
    let timeout = 4;
    for answer in [
        // The TLS handshake never finishes.
        Answer::Stall,
        // The answer comes a byte at a time.
        Answer::Slowly(Hostile::http("200 OK", "", &"x".repeat(100))),
    ] {
        let server = Hostile::start(Cert::Good, answer);
        let ca = sb.write("ca.pem", &server.ca_pem);
        let extra = format!(
            "usb = false\nserver = \"{}\"\nca = \"{}\"",
            server.url,
            ca.display()
        );
        let (run, took) = unlock(
            &sb,
            &config(&sb, &img, timeout, &extra),
            Duration::from_secs(60),
        );
        run.fails(9, "no recovery packet came within 4 s");
        // A call's own limit (10 s) would end far later.
        assert!(
            took < Duration::from_secs(timeout) + TRICKLE * 2,
            "stepped aside only after {took:?}:\n{}",
            run.all()
        );
    }
}

#[test]
fn answers_that_are_not_packets_are_named_and_polled_with_backoff() {
    let sb = Sandbox::new();
    let img = sb.luks_image("disk.img", 2);
    for (answer, said) in [
        (
            Hostile::http("200 OK", "", "<html>a captive portal</html>"),
            "unexpected answer from the escrow server",
        ),
        (
            Hostile::http("302 Found", "location: https://elsewhere.example/\r\n", ""),
            "a redirect (302) to https://elsewhere.example/; lifeline does not follow redirects",
        ),
        (
            Hostile::http(
                "200 OK",
                "content-type: application/json\r\n",
                r#"{"error": "no such volume"}"#,
            ),
            "an error instead of a recovery packet: no such volume",
        ),
    ] {
        let server = Hostile::start(Cert::Good, Answer::Bytes(answer));
        let ca = sb.write("ca.pem", &server.ca_pem);
        let extra = format!(
            "usb = false\nserver = \"{}\"\nca = \"{}\"",
            server.url,
            ca.display()
        );
        let (run, _) = unlock(&sb, &config(&sb, &img, 7, &extra), Duration::from_secs(60));
        run.fails(9, said);
        // Polling every second, both calls each time, would be some 14 connections; with
        // the backoff (1, 2, 4 s) a handful.
        assert!(
            server.connections() <= 6,
            "{} connections in 7 s:\n{}",
            server.connections(),
            run.all()
        );
    }
}

#[test]
fn recover_from_a_server_names_what_went_wrong_and_what_to_do() {
    let sb = Sandbox::new();
    let img = sb.luks_image("disk.img", 2);
    sb.authority("auth");
    let state = sb.path("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::copy(sb.path("auth/minisign.pub"), state.join("minisign.pub")).unwrap();
    let ok = || Answer::Bytes(Hostile::http("200 OK", "", "not a packet"));
    for (cert, answer, said, todo) in [
        (
            Cert::OtherCa,
            ok(),
            "it is not signed by the configured CA",
            "is the escrow server's CA",
        ),
        (
            Cert::Expired,
            ok(),
            "it has expired",
            "check this machine's clock",
        ),
        (
            Cert::NotYetValid,
            ok(),
            "it is not valid yet",
            "check this machine's clock",
        ),
        (
            Cert::OtherName,
            ok(),
            "for another name than the one in the server URL",
            "--tls-name",
        ),
        (
            Cert::Good,
            Answer::Bytes(Hostile::http("503 Service Unavailable", "", "")),
            "refused (503)",
            "the server is busy or failing",
        ),
        (
            Cert::Good,
            Answer::Bytes(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()),
            "the answer is not HTTP",
            "is the escrow server's",
        ),
        (
            Cert::Good,
            Answer::Bytes(Hostile::http(
                "302 Found",
                "location: https://elsewhere.example/\r\n",
                "",
            )),
            "a redirect (302)",
            "is the escrow server's",
        ),
    ] {
        let server = Hostile::start(cert, answer);
        std::fs::write(state.join("server-ca.pem"), &server.ca_pem).unwrap();
        let (run, _) = silent(
            &sb,
            &[
                "recover",
                img.path.to_str().unwrap(),
                "--server",
                &server.url,
                "--machine-id",
                MACHINE,
            ],
            Duration::from_secs(60),
        );
        run.fails(1, said);
        assert!(run.stderr.contains(todo), "{said}: {}", run.all());
        assert!(
            !run.stderr.contains("approve your recovery request"),
            "{said}: not a matter of approval: {}",
            run.all()
        );
    }
}
