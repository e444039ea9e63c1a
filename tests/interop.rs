//! The stock `age` and `minisign` tools open and verify what lifeline writes, and lifeline reads
//! what they write. The shell commands are the ones docs/FORMAT.md gives administrators.

use std::process::Command;

use crate::support::*;

fn sh(dir: &std::path::Path, script: &str) -> Run {
    let out = Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .output()
        .expect("sh");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    run.ok();
    run
}

fn escrow(sb: &Sandbox, img: &Image) {
    sb.escrow_run(img, "disk.escrow", &[]).ok();
}

#[test]
fn stock_age_opens_an_escrow_packet_with_the_identity_unlocked_by_the_admin_passphrase() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 2);
    escrow(&sb, &img);
    let dir = sb.path("");
    run_on_tty(
        &dir,
        "age -d -o identity.txt auth/identity.age",
        &[ADMIN_PASSPHRASE],
    )
    .ok();
    let identity = std::fs::read_to_string(sb.path("identity.txt")).unwrap();
    assert!(identity.contains("AGE-SECRET-KEY-"));
    let run = sh(
        &dir,
        "sed -n '/^-----BEGIN AGE/,$p' disk.escrow | age -d -i identity.txt",
    );
    assert!(
        run.stdout.starts_with("lifeline-escrow v1\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&format!("volume-uuid: {}", img.uuid)));
    assert!(run
        .stdout
        .contains(&format!("volume-key: {}", hex(&img.volume_key))));
}

#[test]
fn stock_age_and_minisign_open_and_verify_a_recovery_packet() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 2);
    let (packet, otp) = sb.escrow_and_issue(&img, &[]);
    std::fs::rename(&packet, sb.path("disk.recovery")).unwrap();
    let dir = sb.path("");
    sh(
        &dir,
        "head -n 4 disk.recovery > disk.minisig && tail -n +5 disk.recovery > disk.age",
    );
    let run = sh(
        &dir,
        "minisign -V -p auth/minisign.pub -m disk.age -x disk.minisig",
    );
    assert!(
        run.stdout
            .contains("Trusted comment: lifeline-recovery v1 packet="),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&format!("volume={}", img.uuid)));

    run_on_tty(&dir, "age -d -o record.txt disk.age", &[&otp]).ok();
    let record = std::fs::read_to_string(sb.path("record.txt")).unwrap();
    assert!(record.starts_with("lifeline-recovery v1\n"), "{record}");
    assert!(record.contains(&format!("volume-key: {}", hex(&img.volume_key))));

    // The authority's signing key is in minisign's own format: the stock tool signs with it.
    sb.write("note.txt", "signed by hand\n");
    run_on_tty(
        &dir,
        "minisign -S -s auth/minisign.key -m note.txt",
        &[ADMIN_PASSPHRASE],
    )
    .ok();
    sh(&dir, "minisign -V -p auth/minisign.pub -m note.txt");
}

/// A record in lifeline's text format, as an administrator could write it by hand.
fn record_text(kind: &str, img: &Image, machine: &str, extra: &str) -> String {
    format!(
        "lifeline-{kind} v1\nhost: handmade\nmachine-id: {machine}\nvolume-uuid: {}\nluks-version: 2\n\
         cipher: aes-xts-plain64\nkey-bits: 512\ncreated: 2026-11-01T00:00:00Z\n{extra}volume-key: {}\n",
        img.uuid,
        hex(&img.volume_key)
    )
}

#[test]
fn lifeline_issues_recovery_from_an_escrow_packet_that_stock_age_wrote() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 2);
    let machine = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    let text = record_text("escrow", &img, &machine, "");
    sb.write("record.txt", &text);
    let header: String = text
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("volume-key"))
        .map(|l| format!("{l}\n"))
        .collect();
    sb.write("head.txt", format!("lifeline-escrow-packet v1\n{header}\n"));
    let dir = sb.path("");
    sh(
        &dir,
        "age -a -R auth/recipient.txt record.txt | cat head.txt - > handmade.escrow",
    );

    let (recovery, otp) = sb.issue(&sb.path("handmade.escrow"), &[]);
    sb.write("new.pass", "made by age");
    sb.lifeline_stdin(
        &[
            "recover",
            img.path.to_str().unwrap(),
            "--packet",
            recovery.to_str().unwrap(),
            "--trust",
            "auth/minisign.pub",
            "--new-passphrase-file",
            "new.pass",
            "--pbkdf2-iterations",
            "1000",
        ],
        &format!("{otp}\n"),
    )
    .ok();
    assert!(cryptsetup_accepts(&img.path, "made by age"));
}

#[test]
fn lifeline_recovers_with_a_packet_stock_age_encrypted_and_stock_minisign_signed() {
    let sb = Sandbox::new();
    let img = sb.luks_image("disk.img", 2);
    let machine = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    let otp = "123453-000011-720874-065538";
    let binding = "packet-id: 0123456789abcdef0123456789abcdef\nexpires: 2099-01-01T00:00:00Z\notp-groups: 4\n";
    sb.write(
        "record.txt",
        record_text("recovery", &img, &machine, binding),
    );
    let dir = sb.path("");
    run_on_tty(&dir, "age -p -a -o payload.age record.txt", &[otp, otp]).ok();
    sh(&dir, "minisign -G -W -p k.pub -s k.key");
    let comment = format!(
        "lifeline-recovery v1 packet=0123456789abcdef0123456789abcdef machine={machine} volume={} \
         expires=2099-01-01T00:00:00Z otp-groups=4",
        img.uuid
    );
    sh(
        &dir,
        &format!(
            "minisign -S -s k.key -m payload.age -c 'lifeline recovery packet' -t '{comment}' && \
             cat payload.age.minisig payload.age > handmade.recovery"
        ),
    );
    sb.write("otp.txt", otp);
    sb.write("new.pass", "made by minisign");
    sb.lifeline(&[
        "recover",
        img.path.to_str().unwrap(),
        "--packet",
        "handmade.recovery",
        "--trust",
        "k.pub",
        "--otp-file",
        "otp.txt",
        "--new-passphrase-file",
        "new.pass",
        "--pbkdf2-iterations",
        "1000",
    ])
    .ok();
    assert!(cryptsetup_accepts(&img.path, "made by minisign"));

    // The same packet with minisign's legacy (not pre-hashed) signature is refused as such,
    // not called altered.
    sh(
        &dir,
        &format!(
            "minisign -S -l -s k.key -m payload.age -x legacy.minisig -c 'lifeline recovery packet' \
             -t '{comment}' && cat legacy.minisig payload.age > legacy.recovery"
        ),
    );
    sb.lifeline(&[
        "recover",
        img.path.to_str().unwrap(),
        "--packet",
        "legacy.recovery",
        "--trust",
        "k.pub",
        "--otp-file",
        "otp.txt",
    ])
    .fails(
        4,
        "legacy minisign signature; only pre-hashed signatures are accepted",
    );
}
