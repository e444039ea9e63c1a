//! The real `lifeline unlock` binary against a real swtpm, a real LUKS2 image, the real escrow
//! server on 127.0.0.1 and an ext4 "USB stick" image on a loop device, the console driven
//! through a pty. This host has no device-mapper, so volumes are opened check-only
//! (`--check-only`: libcryptsetup proves the key opens the header); named activation is proven
//! by the QEMU boots.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::server::Server;
use crate::support::swtpm::Swtpm;
use crate::support::*;

/// `lifeline unlock` on a pty (through `script`), its output collected as it comes.
struct Tty {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Tty {
    fn start(dir: &Path, config: &Path) -> Tty {
        Tty::start_with(dir, config, "")
    }

    /// `lifeline unlock --check-only` with `extra` options; what one run leaves for the next
    /// in the same boot goes to `dir/run`.
    fn start_with(dir: &Path, config: &Path, extra: &str) -> Tty {
        let command = format!(
            "{} unlock --check-only {extra} --config {} --cmdline /dev/null",
            env!("CARGO_BIN_EXE_lifeline"),
            config.display()
        );
        let mut child = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("LIFELINE_RUN_DIR", dir.join("run"))
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script");
        let output = Arc::new(Mutex::new(String::new()));
        let (mut stdout, sink) = (child.stdout.take().unwrap(), output.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Tty { child, output }
    }

    fn text(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until `marker` has appeared `count` times.
    fn wait_for(&self, marker: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.text().matches(marker).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {marker:?} in:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_line(&mut self, line: &str) {
        // A moment for the prompt to be ready to read.
        std::thread::sleep(Duration::from_millis(200));
        let input = self.child.stdin.as_mut().unwrap();
        input.write_all(format!("{line}\n").as_bytes()).unwrap();
        input.flush().unwrap();
    }

    fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status.code().unwrap_or(-1), self.text());
            }
            assert!(
                Instant::now() < deadline,
                "unlock did not finish:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn write_config(sb: &Sandbox, tpm: &Swtpm, img: &Image, extra: &str) -> std::path::PathBuf {
    let text = format!(
        "prompt = \"console\"\ntcti = \"{}\"\ntrust = \"{}\"\ntpm_wait = 2\npoll_interval = 1\ntimeout = 120\n{extra}\n\
         [[volume]]\nuuid = \"{}\"\nname = \"cryptroot\"\ndevice = \"{}\"\n",
        tpm.tcti(),
        sb.path("srv/minisign.pub").display(),
        img.uuid,
        img.path.display()
    );
    sb.write("lifeline.toml", text)
}

fn unlock_unattended(sb: &Sandbox, config: &Path) -> Run {
    sb.lifeline(&[
        "unlock",
        "--check-only",
        "--config",
        config.to_str().unwrap(),
        "--cmdline",
        "/dev/null",
    ])
}

fn pcr16(t: &Swtpm, action: &str) {
    let mut c = t.tools(if action == "reset" {
        "tpm2_pcrreset"
    } else {
        "tpm2_pcrextend"
    });
    if action == "reset" {
        c.arg("16");
    } else {
        c.arg(format!("16:sha256={}", "ab".repeat(32)));
    }
    assert!(c.output().unwrap().status.success());
}

#[test]
fn tpm_then_pcr_change_over_https_with_otp_and_reseal_then_usb_without_network() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[]);
    let t = Swtpm::start(&sb.path("tpm"));
    let img = sb.luks_image("disk.img", 2);
    let image = img.path.to_str().unwrap();
    let client_id = sb
        .lifeline_on(&t, &["provision"])
        .ok()
        .stdout
        .trim()
        .to_string();
    pcr16(&t, "extend");
    let key = img.key_file.to_str().unwrap();
    sb.lifeline_on(&t, &["enroll", image, "--key-file", key, "--pcrs", "16"])
        .ok();
    srv.join(&sb, &[], |args| sb.lifeline_on(&t, args));
    sb.lifeline_on(
        &t,
        &["escrow", image, "--server", &srv.url, "--key-file", key],
    )
    .ok();

    // 1. The TPM unseals: no prompt, exit 0.
    let server_lines = format!(
        "server = \"{}\"\nca = \"{}\"\nusb = false\noffer_new_passphrase = true",
        srv.url,
        sb.path("srv/tls/ca.pem").display()
    );
    let config = write_config(&sb, &t, &img, &server_lines);
    let run = unlock_unattended(&sb, &config);
    run.ok();
    assert!(
        run.stderr.contains("unlocked (check only) (TPM)"),
        "{}",
        run.all()
    );
    assert!(!run.all().contains("Passphrase or one-time password"));
    let tpm_only = |sb: &Sandbox| {
        let config = config.to_str().unwrap();
        sb.lifeline(&[
            "unlock",
            "--check-only",
            "--tpm-only",
            "--config",
            config,
            "--cmdline",
            "/dev/null",
        ])
    };
    assert!(tpm_only(&sb)
        .ok()
        .stderr
        .contains("unlocked (check only) (TPM)"));

    // 2. PCR 16 changes: recovery request, approval on the server, a mistyped and a wrong
    //    OTP, the right one, no new passphrase; the key is re-sealed to the new PCR value.
    pcr16(&t, "reset");
    // The glue's first run: the TPM alone says why and exits 9, asking nothing.
    let first = tpm_only(&sb);
    first.fails(9, "recovery follows");
    assert!(first.stderr.contains("PCR 16 changed"), "{}", first.all());
    assert!(!first.all().contains("Passphrase or one-time password"));
    let mut tty = Tty::start(&sb.path(""), &config);
    tty.wait_for("Passphrase or one-time password:", 1);
    assert!(tty.text().contains("PCR 16 changed"), "{}", tty.text());
    let recovery_id = format!("{}-{}", &client_id[..4], &img.uuid[..4]);
    assert!(
        tty.text().contains(&format!("Recovery ID {recovery_id}")),
        "{}",
        tty.text()
    );
    let (filed, otp) = srv.approve_newest_request(&sb);
    assert_eq!(filed, recovery_id);
    tty.wait_for("recovery packet from the escrow server", 1);
    let mut typo = otp.clone().into_bytes();
    typo[1] = if typo[1] == b'9' { b'0' } else { typo[1] + 1 };
    tty.type_line(std::str::from_utf8(&typo).unwrap());
    tty.wait_for("attempts left", 1);
    tty.type_line("000000-000011-000022-000033");
    tty.wait_for("attempts left", 2);
    tty.type_line(&otp);
    tty.wait_for("New passphrase", 1);
    tty.type_line("");
    let (code, text) = tty.finish();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("group 1"),
        "the typo is named by group: {text}"
    );
    assert!(text.contains("does not open the packet"), "{text}");
    assert!(
        text.contains("re-sealed to the current PCR values"),
        "{text}"
    );
    assert!(
        text.contains("unlocked (check only) (recovery packet)"),
        "{text}"
    );
    assert!(!text.contains(&otp), "the OTP is never echoed: {text}");
    // The packet was reported used: it is gone from the server.
    let anyone = lifeline::escrow::https::Https::new(
        &srv.url,
        &std::fs::read(sb.path("srv/tls/ca.pem")).unwrap(),
        Duration::from_secs(30),
    )
    .unwrap();
    match anyone.get(&format!("/v1/recovery/{client_id}/{}", img.uuid)) {
        Err(lifeline::escrow::https::FetchError::NotFound(_)) => {}
        other => panic!("the used packet is still served: {other:?}"),
    }
    // Next boot: unattended again.
    let run = unlock_unattended(&sb, &config);
    run.ok();
    assert!(run.stderr.contains("(TPM)"), "{}", run.all());

    // 3. No network: the PCR changes again, the packet comes on an ext4 stick image.
    pcr16(&t, "extend");
    let escrow = sb.escrow_to("srv", &img.path, &img.key_file, &[]);
    let (packet, otp) = sb.issue_from("srv", &escrow, &[]);
    let stick = sb.path("stick");
    let dir = stick.join(format!("lifeline/{client_id}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&packet, dir.join(format!("{}.recovery", img.uuid))).unwrap();
    let usb_img = sb.path("usb.img");
    std::fs::File::create(&usb_img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&stick)
        .arg(&usb_img)
        .output()
        .unwrap();
    assert!(mkfs.status.success(), "{mkfs:?}");
    let Some(loop_dev) = LoopDevice::attach(&usb_img) else {
        eprintln!("no loop devices here: the USB part is left to the QEMU tests");
        return;
    };
    let config = write_config(&sb, &t, &img, &format!("usb_device = \"{}\"", loop_dev.0));
    let mut tty = Tty::start(&sb.path(""), &config);
    tty.wait_for("recovery packet from removable media verified", 1);
    tty.type_line(&otp);
    tty.wait_for("New passphrase", 1);
    tty.type_line("");
    let (code, text) = tty.finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("(recovery packet)"), "{text}");
}

#[test]
fn a_pin_machine_is_asked_its_pin_before_the_network_and_only_once() {
    let sb = Sandbox::new();
    let t = Swtpm::start(&sb.path("tpm"));
    let img = sb.luks_image("disk.img", 2);
    let (image, key) = (img.path.to_str().unwrap(), img.key_file.to_str().unwrap());
    sb.write("pin", "2468\n");
    sb.lifeline_on(&t, &["provision"]).ok();
    let enroll = [
        "enroll",
        image,
        "--key-file",
        key,
        "--pin",
        "--pin-file",
        "pin",
    ];
    sb.lifeline_on(&t, &enroll).ok();
    let config = write_config(&sb, &t, &img, "");
    let dir = sb.path("");

    // The glue's first run, before any network: the PIN opens with the TPM.
    let mut tty = Tty::start_with(&dir, &config, "--tpm-only");
    tty.wait_for("TPM PIN (or passphrase):", 1);
    tty.type_line("2468");
    let (code, out) = tty.finish();
    assert!(code == 0 && out.contains("(TPM)"), "{code}: {out}");

    // Three wrong PINs: recovery follows (exit 9, the glue brings the network up).
    let mut tty = Tty::start_with(&dir, &config, "--tpm-only");
    for n in 1..=3 {
        tty.wait_for("TPM PIN (or passphrase):", n);
        tty.type_line("1111");
    }
    let (code, out) = tty.finish();
    assert!(
        code == 9 && out.contains("recovery follows"),
        "{code}: {out}"
    );
    // Out of lockout again, so that only the handoff keeps the PIN from being asked.
    t.tool(&dir, "tpm2_dictionarylockout", &["-c"]);

    // The glue's second run does not ask a fourth time: recovery, and the passphrase opens.
    let out = recovery_without_the_pin_takes_the_passphrase(&dir, &config, "Recovery ID");
    assert!(out.contains("the TPM refused the PIN"), "{out}");
    // Read once: a later run asks the PIN again.
    assert!(!sb.path(&format!("run/pin-{}", img.uuid)).exists());
}

#[test]
fn a_pin_at_the_boot_prompt_a_wrong_one_counted_a_new_one_then_lockout_and_the_passphrase() {
    // swtpm allows 3 authorization failures (TPM2_PT_MAX_AUTH_FAIL) before its lockout.
    let sb = Sandbox::new();
    let t = Swtpm::start(&sb.path("tpm"));
    let img = sb.luks_image("disk.img", 2);
    let (image, key) = (img.path.to_str().unwrap(), img.key_file.to_str().unwrap());
    sb.write("pin", "2468\n");
    sb.write("wrong", "1357\n");
    sb.write("new", "97531\n");
    sb.lifeline_on(&t, &["provision"]).ok();
    let enroll = [
        "enroll",
        image,
        "--key-file",
        key,
        "--pcrs",
        "16",
        "--pin",
        "--pin-file",
        "pin",
    ];
    sb.lifeline_on(&t, &enroll).ok();
    let check = |pin: &str| sb.lifeline_on(&t, &["unseal-check", image, "--pin-file", pin]);
    check("pin").ok();
    check("wrong").fails(3, "the TPM refused the PIN"); // failure 1

    // At boot: a wrong PIN is said and counted (failure 2), the right one opens with the TPM.
    let config = write_config(&sb, &t, &img, "");
    let mut tty = Tty::start(&sb.path(""), &config);
    tty.wait_for("TPM PIN (or passphrase):", 1);
    tty.type_line("1357");
    tty.wait_for("the TPM refused that PIN. 2 attempts left.", 1);
    tty.type_line("2468");
    let (code, out) = tty.finish();
    assert!(code == 0 && out.contains("(TPM)"), "{code}: {out}");
    assert!(!out.contains("Recovery ID"), "{out}");

    // A new PIN: the old one is refused (failure 3, and the TPM is in lockout).
    sb.lifeline_on(
        &t,
        &["pin", image, "--pin-file", "pin", "--new-pin-file", "new"],
    )
    .ok();
    check("pin").fails(3, "the TPM refused the PIN");
    check("new").fails(8, "dictionary-attack lockout");
    // Keys without a PIN are not dictionary-attack protected: the lockout does not stop them.
    let other = sb.luks_image("other.img", 2);
    let other_key = other.key_file.to_str().unwrap();
    let other = other.path.to_str().unwrap();
    sb.lifeline_on(&t, &["enroll", other, "--key-file", other_key])
        .ok();
    sb.lifeline_on(&t, &["unseal-check", other]).ok();

    // In lockout the PIN is not asked for: recovery at once, and the passphrase opens it.
    let marker = "dictionary-attack lockout. Recovery ID";
    recovery_without_the_pin_takes_the_passphrase(&sb.path(""), &config, marker);
}

/// `lifeline unlock` goes to recovery (saying `marker`) without asking a PIN, and the
/// volume's passphrase opens it there. Returns what it said.
fn recovery_without_the_pin_takes_the_passphrase(
    dir: &Path,
    config: &Path,
    marker: &str,
) -> String {
    let mut tty = Tty::start(dir, config);
    tty.wait_for(marker, 1);
    tty.wait_for("Passphrase or one-time password:", 1);
    tty.type_line(OLD_PASSPHRASE);
    let (code, out) = tty.finish();
    assert!(
        code == 0 && out.contains("opened with its passphrase"),
        "{code}: {out}"
    );
    assert!(!out.contains("TPM PIN"), "{out}");
    out
}
