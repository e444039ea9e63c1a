//! The off-line escrow and recovery flow with the real binaries on real LUKS images.

use crate::support::*;

/// Exit codes from `lifeline::cmd::Exit`.
const DENIED: i32 = 3;
const BAD_PACKET: i32 = 4;
const NOT_APPLICABLE: i32 = 5;
const VOLUME: i32 = 6;
const EXISTS: i32 = 7;

fn recover_args<'a>(image: &'a str, packet: &'a str, auth_pub: &'a str) -> Vec<&'a str> {
    vec!["recover", image, "--packet", packet, "--trust", auth_pub]
}

fn sha(path: &std::path::Path) -> Vec<u8> {
    // Not a cryptographic need: a cheap fingerprint to prove a file was not modified.
    let bytes = std::fs::read(path).unwrap();
    let mut h: u64 = 0xcbf29ce484222325;
    let mut out = Vec::new();
    for chunk in bytes.chunks(4096) {
        for b in chunk {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        out.extend_from_slice(&h.to_le_bytes());
    }
    out
}

#[test]
fn forgotten_passphrase_replaced_on_luks2_and_no_secret_in_any_output() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 2);
    let mut outputs = Vec::new();

    let escrow = sb.path("disk.escrow");
    let run = sb.escrow_run(
        &img,
        "disk.escrow",
        &["--random-passphrase", "--pbkdf2-iterations", "1000"],
    );
    run.ok();
    assert!(run.stderr.contains("keyslot 1"), "{}", run.stderr);
    outputs.push(run.all());

    let inspect = sb.lifeline(&["inspect", "disk.escrow"]);
    inspect.ok();
    assert!(inspect
        .stdout
        .contains(&format!("volume-uuid: {}", img.uuid)));
    assert!(inspect.stdout.contains("volume-label: testroot"));
    outputs.push(inspect.all());

    let issue = sb.issue_run("auth", "disk.escrow", "disk.recovery", "admin.pass", &[]);
    issue.ok();
    let otp = issue.stdout.trim().to_string();
    assert_eq!(otp.len(), 27, "one line with the OTP: {otp:?}");
    outputs.push(issue.stderr.clone()); // the one line that prints the OTP is stdout

    let inspect = sb.lifeline(&["inspect", "disk.recovery"]);
    inspect.ok();
    assert!(inspect.stdout.contains(&img.uuid));
    outputs.push(inspect.all());

    // typed OTP with spaces instead of dashes, as someone on the phone might
    sb.write("new.pass", "brand new passphrase\n");
    let typed = otp.replace('-', " ");
    let mut args = recover_args(
        img.path.to_str().unwrap(),
        "disk.recovery",
        "auth/minisign.pub",
    );
    args.extend([
        "--new-passphrase-file",
        "new.pass",
        "--replace-slot",
        "0",
        "--pbkdf2-iterations",
        "1000",
    ]);
    let run = sb.lifeline_stdin(&args, &format!("{typed}\n"));
    run.ok();
    assert!(run.stderr.contains("Keyslot 0 removed"), "{}", run.stderr);
    outputs.push(run.all());

    assert!(cryptsetup_accepts(&img.path, "brand new passphrase"));
    assert!(!cryptsetup_accepts(&img.path, OLD_PASSPHRASE));
    assert!(escrow.exists());

    let secrets = [
        hex(&img.volume_key),
        base64(&img.volume_key),
        otp.clone(),
        otp.replace('-', ""),
    ];
    for out in &outputs {
        for s in &secrets {
            assert!(
                !out.contains(s.as_str()),
                "a secret leaked into output:\n{out}"
            );
        }
    }
}

#[test]
fn luks1_volume_recovers_the_same_way() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk1.img", 1);
    let (packet, otp) = sb.escrow_and_issue(&img, &[]);
    let otp_file = sb.write("otp", &otp);
    sb.write("new.pass", "luks1 new passphrase");
    let mut args = recover_args(
        img.path.to_str().unwrap(),
        packet.to_str().unwrap(),
        "auth/minisign.pub",
    );
    args.extend([
        "--otp-file",
        otp_file.to_str().unwrap(),
        "--new-passphrase-file",
        "new.pass",
    ]);
    args.extend(["--pbkdf2-iterations", "1000"]);
    sb.lifeline(&args).ok();
    assert!(cryptsetup_accepts(&img.path, "luks1 new passphrase"));
    assert!(
        cryptsetup_accepts(&img.path, OLD_PASSPHRASE),
        "no --replace-slot: the old one stays"
    );
}

#[test]
fn header_backup_file_gets_the_new_passphrase_and_the_disk_is_untouched() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 2);
    let header = sb.path("header.img");
    cryptsetup(&[
        "luksHeaderBackup",
        img.path.to_str().unwrap(),
        "--header-backup-file",
        header.to_str().unwrap(),
    ])
    .ok();
    let disk_before = sha(&img.path);
    let (packet, otp) = sb.escrow_and_issue(&img, &[]);
    sb.write("new.pass", "header passphrase");
    let mut args = recover_args(
        header.to_str().unwrap(),
        packet.to_str().unwrap(),
        "auth/minisign.pub",
    );
    args.extend([
        "--new-passphrase-file",
        "new.pass",
        "--replace-slot",
        "0",
        "--pbkdf2-iterations",
        "1000",
    ]);
    sb.lifeline_stdin(&args, &format!("{otp}\n")).ok();

    assert!(cryptsetup_accepts(&header, "header passphrase"));
    assert!(!cryptsetup_accepts(&header, OLD_PASSPHRASE));
    assert_eq!(sha(&img.path), disk_before, "only the header file changes");
    // The user restores the header and the disk opens with the new passphrase.
    cryptsetup(&[
        "luksHeaderRestore",
        "-q",
        img.path.to_str().unwrap(),
        "--header-backup-file",
        header.to_str().unwrap(),
    ])
    .ok();
    assert!(cryptsetup_accepts(&img.path, "header passphrase"));
}

#[test]
fn wrong_otp_then_right_otp_at_the_prompt() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 2);
    let (packet, otp) = sb.escrow_and_issue(&img, &[]);
    let args = recover_args(
        img.path.to_str().unwrap(),
        packet.to_str().unwrap(),
        "auth/minisign.pub",
    );
    // valid shape and checksums, wrong code; then a typo in group 2; then the right one
    let typo = {
        let mut groups: Vec<String> = otp.split('-').map(str::to_string).collect();
        let d = groups[1].as_bytes()[0];
        groups[1].replace_range(0..1, &((d - b'0' + 1) % 10).to_string());
        groups.join("-")
    };
    let input = format!("000000-000011-000022-000033\n{typo}\n{otp}\n");
    let run = sb.lifeline_stdin(&args, &input);
    run.ok();
    assert!(
        run.stderr
            .contains("does not open the packet. 4 attempts left"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Group 2 is not valid"),
        "{}",
        run.stderr
    );
}

#[test]
fn wrong_otp_every_time_is_refused_without_changing_the_volume() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 2);
    let (packet, _otp) = sb.escrow_and_issue(&img, &[]);
    let before = sha(&img.path);
    sb.write("new.pass", "never set");
    let mut args = recover_args(
        img.path.to_str().unwrap(),
        packet.to_str().unwrap(),
        "auth/minisign.pub",
    );
    args.extend(["--new-passphrase-file", "new.pass", "--attempts", "2"]);
    sb.lifeline_stdin(
        &args,
        "000000-000011-000022-000033\n000000-000011-000022-000044\n",
    )
    .fails(DENIED, "does not open the packet");
    let file = sb.write("bad.otp", "123456-000011-000022-000033");
    let mut args = recover_args(
        img.path.to_str().unwrap(),
        packet.to_str().unwrap(),
        "auth/minisign.pub",
    );
    args.extend(["--otp-file", file.to_str().unwrap()]);
    sb.lifeline(&args).fails(DENIED, "group 1 is not valid");
    assert_eq!(sha(&img.path), before);
}

#[test]
fn packet_for_another_volume_or_machine_or_expired_is_refused_before_the_otp() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 2);
    let other = sb.luks_image("other.img", 2);
    let (packet, _) = sb.escrow_and_issue(&img, &[]);
    let p = packet.to_str().unwrap();
    // No OTP is given on stdin: a refusal must come before anyone is asked for one.
    sb.lifeline(&recover_args(
        other.path.to_str().unwrap(),
        p,
        "auth/minisign.pub",
    ))
    .fails(
        NOT_APPLICABLE,
        &format!("but this volume is {}", other.uuid),
    );
    let mut args = recover_args(img.path.to_str().unwrap(), p, "auth/minisign.pub");
    args.extend(["--machine-id", "00000000000000000000000000000000"]);
    sb.lifeline(&args).fails(NOT_APPLICABLE, "is for machine");

    let (short, _) = sb.escrow_and_issue(&img, &["--valid-for", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    sb.lifeline(&recover_args(
        img.path.to_str().unwrap(),
        short.to_str().unwrap(),
        "auth/minisign.pub",
    ))
    .fails(NOT_APPLICABLE, "expired at");
}

#[test]
fn packet_signed_by_another_authority_is_refused() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 2);
    let (packet, _) = sb.escrow_and_issue(&img, &[]);
    let other = sb.path("other-auth");
    sb.server(&[
        "init",
        "--dir",
        other.to_str().unwrap(),
        "--passphrase-file",
        "admin.pass",
    ])
    .ok();
    sb.lifeline(&recover_args(
        img.path.to_str().unwrap(),
        packet.to_str().unwrap(),
        "other-auth/minisign.pub",
    ))
    .fails(BAD_PACKET, "signed by a key that is not trusted");
    // An escrow packet for one authority cannot be issued by another.
    let escrow = sb.fresh_path("escrow");
    sb.escrow_run(&img, escrow.to_str().unwrap(), &[]).ok();
    sb.issue_run(
        "other-auth",
        escrow.to_str().unwrap(),
        "x",
        "admin.pass",
        &[],
    )
    .fails(BAD_PACKET, "not encrypted to this authority's key");
    assert!(!sb.path("x").exists());
}

#[test]
fn flipped_truncated_and_future_version_packets_are_refused() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 2);
    let (packet, otp) = sb.escrow_and_issue(&img, &[]);
    let bytes = std::fs::read(&packet).unwrap();
    let otp_file = sb.write("otp", &otp);
    let before = sha(&img.path);
    let try_packet = |name: &str, content: &[u8]| {
        let p = sb.write(name, content);
        let mut args = recover_args(
            img.path.to_str().unwrap(),
            p.to_str().unwrap(),
            "auth/minisign.pub",
        );
        args.extend(["--otp-file", otp_file.to_str().unwrap()]);
        sb.lifeline(&args)
    };
    // a flipped bit in the signature, in the trusted comment, and in the encrypted part
    let comment = bytes.windows(8).position(|w| w == b"machine=").unwrap();
    for (i, pos) in [20, comment + 9, bytes.len() - 60, bytes.len() / 2 + 200]
        .into_iter()
        .enumerate()
    {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x01;
        let run = try_packet(&format!("flip{i}"), &bad);
        assert_eq!(run.code, BAD_PACKET, "flip at {pos}: {}", run.stderr);
    }
    for cut in [0, 10, 200, bytes.len() / 2, bytes.len() - 40] {
        let run = try_packet(&format!("cut{cut}"), &bytes[..cut]);
        assert_eq!(run.code, BAD_PACKET, "cut at {cut}: {}", run.stderr);
        assert!(
            run.stderr.contains("damaged") || run.stderr.contains("altered"),
            "{}",
            run.stderr
        );
    }
    try_packet("huge", &vec![b'a'; 100 * 1024]).fails(BAD_PACKET, "larger than");
    // a packet from a future lifeline (the test vector, signed by the vector key)
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let vector = std::fs::read(vectors.join("recovery-unknown-version.vector")).unwrap();
    let body = &vector[vector.windows(2).position(|w| w == b"\n\n").unwrap() + 2..];
    let future = sb.write("future", body);
    sb.lifeline(&recover_args(
        img.path.to_str().unwrap(),
        future.to_str().unwrap(),
        vectors.join("keys/minisign.pub").to_str().unwrap(),
    ))
    .fails(
        BAD_PACKET,
        "format version 2, which this lifeline does not know",
    );
    try_packet("garbage", b"\x00\x01\x02 not a packet")
        .fails(BAD_PACKET, "damaged or not a lifeline packet");
    assert_eq!(sha(&img.path), before);
}

#[test]
fn wrong_passphrase_at_escrow_writes_nothing() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 2);
    let wrong = sb.write("wrong.key", "not the passphrase");
    let args = [
        "escrow",
        img.path.to_str().unwrap(),
        "--recipient",
        "auth/recipient.txt",
        "--out",
        "p",
        "--key-file",
        wrong.to_str().unwrap(),
    ];
    sb.lifeline(&args)
        .fails(DENIED, "no keyslot accepts that passphrase");
    assert!(!sb.path("p").exists());
    // at the prompt: three tries, then the same refusal
    let run = sb.lifeline_stdin(&args[..6], "a\nb\nc\n");
    run.fails(DENIED, "no keyslot accepts");
    assert_eq!(run.stderr.matches("Enter passphrase for").count(), 3);
    assert!(!sb.path("p").exists());
    // and a correct answer at the prompt works
    sb.lifeline_stdin(&args[..6], &format!("{OLD_PASSPHRASE}\n"))
        .ok();
    assert!(sb.path("p").exists());
    // never overwrites an existing packet
    sb.lifeline_stdin(&args[..6], &format!("{OLD_PASSPHRASE}\n"))
        .fails(EXISTS, "already exists");
}

#[test]
fn full_keyslots_are_named_before_anything_changes() {
    let sb = Sandbox::new();
    sb.authority("auth");
    let img = sb.luks_image("disk.img", 1);
    for i in 1..8 {
        let new = sb.write(&format!("k{i}"), format!("filler {i}"));
        cryptsetup(&[
            "luksAddKey",
            "-q",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            img.key_file.to_str().unwrap(),
            img.path.to_str().unwrap(),
            new.to_str().unwrap(),
        ])
        .ok();
    }
    let before = sha(&img.path);
    sb.escrow_run(&img, "p", &["--random-passphrase"])
        .fails(VOLUME, "all 8 keyslots are in use");
    assert!(!sb.path("p").exists());

    let (packet, _) = sb.escrow_and_issue(&img, &[]);
    sb.write("new.pass", "no room");
    let mut args = recover_args(
        img.path.to_str().unwrap(),
        packet.to_str().unwrap(),
        "auth/minisign.pub",
    );
    args.extend(["--new-passphrase-file", "new.pass"]);
    // stdin is empty: the refusal must come before the OTP prompt
    let run = sb.lifeline(&args);
    run.fails(VOLUME, "all 8 keyslots are in use");
    assert!(!run.stderr.contains("One-time password"));
    assert_eq!(sha(&img.path), before);
}

#[test]
fn authority_is_never_overwritten_and_wants_the_right_passphrase() {
    let sb = Sandbox::new();
    let auth = sb.authority("auth");
    let before = std::fs::read(auth.join("identity.age")).unwrap();
    sb.server(&["init", "--dir", "auth", "--passphrase-file", "admin.pass"])
        .fails(EXISTS, "never overwritten");
    assert_eq!(std::fs::read(auth.join("identity.age")).unwrap(), before);
    sb.write("short.pass", "short");
    sb.server(&[
        "init",
        "--dir",
        "new-auth",
        "--passphrase-file",
        "short.pass",
    ])
    .fails(2, "at least 12 characters");
    assert!(!sb.path("new-auth").exists());

    let img = sb.luks_image("disk.img", 2);
    let escrow = sb.path("e");
    sb.escrow_run(&img, "e", &[]).ok();
    sb.write("wrong.pass", "not the admin passphrase");
    sb.issue_run("auth", escrow.to_str().unwrap(), "r", "wrong.pass", &[])
        .fails(DENIED, "administrator passphrase is wrong");
    assert!(!sb.path("r").exists());
}

#[test]
fn usage_errors_name_the_problem() {
    let sb = Sandbox::new();
    sb.lifeline(&["recover"])
        .fails(2, "Required positional arguments not provided")
        .fails(2, "Run lifeline recover --help");
    // A mistyped option or subcommand gets the nearest real one.
    sb.lifeline(&["escrow", "disk.img", "--recipent", "r"])
        .fails(2, "Did you mean --recipient?");
    sb.server(&["admin", "aprove-recovery", "x"])
        .fails(2, "Did you mean approve-recovery?")
        .fails(2, "Run lifeline-server admin --help");
    for (run, name) in [
        (sb.lifeline(&["-V"]), "lifeline"),
        (sb.server(&["--version"]), "lifeline-server"),
    ] {
        assert_eq!(
            run.ok().stdout.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION"))
        );
    }
    assert!(sb
        .lifeline(&["escrow", "-h"])
        .ok()
        .stdout
        .starts_with("Usage: lifeline escrow "));
    sb.lifeline(&["inspect", "missing-file"])
        .fails(2, "missing-file");
    sb.write("not-luks.img", vec![0u8; 1 << 20]);
    sb.write("recipient.txt", "not a recipient");
    sb.lifeline(&[
        "escrow",
        "not-luks.img",
        "--recipient",
        "recipient.txt",
        "--out",
        "p",
    ])
    .fails(2, "does not hold an age recipient");
    let auth = sb.authority("auth");
    sb.lifeline(&[
        "escrow",
        "not-luks.img",
        "--recipient",
        auth.join("recipient.txt").to_str().unwrap(),
        "--out",
        "p",
    ])
    .fails(VOLUME, "is not a LUKS volume");
    let recipient = auth.join("recipient.txt");
    // `-` is standard input on every option that names a file: here the volume's key file.
    let img = sb.luks_image("stdin.img", 2);
    let key = std::fs::read_to_string(&img.key_file).unwrap();
    let from_stdin = [
        "escrow",
        img.path.to_str().unwrap(),
        "--recipient",
        recipient.to_str().unwrap(),
        "--out",
        "from-stdin.escrow",
        "--key-file",
        "-",
    ];
    sb.lifeline_stdin(&from_stdin, &key).ok();
    assert!(sb.path("from-stdin.escrow").exists());
    let args = [
        "escrow",
        "/dev/null",
        "--recipient",
        recipient.to_str().unwrap(),
        "--out",
        "p",
    ];
    sb.lifeline(&args)
        .fails(VOLUME, "/dev/null is not a LUKS volume");
    // A CA file that is not one is this side's mistake, not an answer from the server.
    sb.write("ca.txt", "not a certificate");
    let join = [
        "join",
        "--server",
        "https://127.0.0.1:1",
        "--ca",
        "ca.txt",
        "--token",
        "t",
    ];
    let run = sb.lifeline(&join);
    run.fails(2, "the CA file holds no certificate");
    assert!(!run.stderr.contains("answer"), "{}", run.stderr);
}

#[test]
fn a_2_of_3_authority_needs_two_shares() {
    let sb = Sandbox::new();
    let made = sb.server(&[
        "init",
        "--dir",
        "auth",
        "--shares",
        "2/3",
        "--shares-dir",
        "shares",
    ]);
    made.ok();
    assert!(made.stderr.contains("split 2-of-3"), "{}", made.stderr);
    for i in 1..=3 {
        assert!(
            std::fs::read_to_string(sb.path(&format!("shares/share-{i}.txt")))
                .unwrap()
                .starts_with("lifeline-share v1 2-of-3 ")
        );
    }
    sb.server(&[
        "init",
        "--dir",
        "auth2",
        "--shares",
        "2/3",
        "--shares-dir",
        "shares",
    ])
    .fails(EXISTS, "exists");
    assert!(!sb.path("auth2").exists());

    let img = sb.luks_image("disk.img", 2);
    sb.escrow_run(&img, "e", &[]).ok();
    let issue = |shares: &[&str], out: &str| {
        let mut args = vec![
            "recovery", "issue", "--dir", "auth", "--escrow", "e", "--out", out,
        ];
        for s in shares {
            args.extend(["--share-file", s]);
        }
        sb.server(&args)
    };
    issue(&["shares/share-2.txt"], "r1").fails(2, "1 distinct shares given, 2 needed");
    assert!(!sb.path("r1").exists());
    let otp = issue(&["shares/share-1.txt", "shares/share-3.txt"], "r2")
        .ok()
        .stdout
        .trim()
        .to_string();
    sb.lifeline_stdin(
        &recover_args(img.path.to_str().unwrap(), "r2", "auth/minisign.pub"),
        &format!("{otp}\n"),
    )
    .ok();
}
