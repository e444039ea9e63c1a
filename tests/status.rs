//! `lifeline status` and `--repair` on real swtpm TPMs, LUKS images and the real server.

use crate::approvals::recover_with;
use crate::support::server::Server;
use crate::support::swtpm::Swtpm;
use crate::support::*;

/// The `HEALTH` column of `admin machines` for the only machine.
fn health(sb: &Sandbox, srv: &Server) -> String {
    let rows = srv.admin(sb, &["machines", "--json"]).ok().stdout.clone();
    let row: serde_json::Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
    row["health"].as_str().unwrap().to_string()
}

/// A machine with TPM `tpm` and state in `state/`: `img` enrolled (sealed under its DRSK),
/// joined to `srv` and escrowed there with `escrow_extra`.
fn enrolled_and_escrowed(
    sb: &Sandbox,
    srv: &Server,
    tpm: &Swtpm,
    provision: &[&str],
    img: &Image,
    escrow_extra: &[&str],
) {
    let (image, key) = (img.path.to_str().unwrap(), img.key_file.to_str().unwrap());
    sb.provisioned_and_enrolled(tpm, provision, img);
    srv.join(sb, &[], |args| sb.lifeline_on(tpm, args));
    let mut escrow = vec!["escrow", image, "--server", &srv.url, "--key-file", key];
    escrow.extend_from_slice(escrow_extra);
    sb.lifeline_on(tpm, &escrow).ok();
}

#[test]
fn a_missing_drsk_backup_and_a_stale_escrow_after_reencrypt_are_found_and_repaired() {
    let sb = Sandbox::new();
    let b = Swtpm::start(&sb.path("tpm-b"));
    let srv = Server::start_with_tpm(&sb, &[], Some(&b));
    sb.server_on(&b, &["drsk", "init", "--dir", "srv"]).ok();
    let a = Swtpm::start(&sb.path("tpm-a"));
    let img = sb.luks_image("disk.img", 2);
    let image = img.path.to_str().unwrap();
    let provision = ["provision", "--backup-server-key", "srv/drsk.pub"];
    enrolled_and_escrowed(&sb, &srv, &a, &provision, &img, &[]);
    assert_eq!(health(&sb, &srv), "never reported");

    // Escrowed, but the DRSK was never backed up.
    let status = sb.lifeline_on(&a, &["status", image]);
    status.fails(10, "1 problem puts a disk at risk");
    assert!(
        status.stdout.contains("TPM: opens the volume"),
        "{}",
        status.all()
    );
    assert!(
        status.stdout.contains("escrow: current"),
        "{}",
        status.all()
    );
    assert!(
        status.stdout.contains("the DRSK is not backed up")
            && status
                .stdout
                .contains("or, with no passphrase: lifeline status --repair"),
        "{}",
        status.all()
    );
    assert!(
        status.stdout.contains("(the joined server): missing"),
        "{}",
        status.all()
    );
    assert!(health(&sb, &srv).starts_with("at risk: the DRSK is not backed up"));
    let repaired = sb.lifeline_on(&a, &["status", image, "--repair"]);
    assert!(
        repaired
            .ok()
            .stderr
            .contains("in the escrow server's custody")
            && repaired
                .stdout
                .contains("Every disk can be opened and recovered."),
        "{}",
        repaired.all()
    );
    assert_eq!(health(&sb, &srv), "healthy");

    // A new volume key: the TPM's copy and the escrow both hold the old one. Only a passphrase
    // can enroll it again, so --repair cannot help yet.
    cryptsetup(&[
        "reencrypt",
        "-q",
        "--force-offline-reencrypt",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        img.key_file.to_str().unwrap(),
        image,
    ])
    .ok();
    let broken = sb.lifeline_on(&a, &["status", image, "--repair"]);
    broken.fails(10, "problem");
    assert!(
        broken.stdout.contains("no longer opens the volume")
            && broken.stdout.contains(&format!("lifeline enroll {image}")),
        "{}",
        broken.all()
    );
    let key = img.key_file.to_str().unwrap();
    sb.lifeline_on(&a, &["enroll", image, "--key-file", key])
        .ok();

    // Enrolled again, but nobody escrowed the new key: a recovery would fail.
    let stale = sb.lifeline_on(&a, &["status", image, "--json"]);
    stale.fails(10, "1 problem");
    let json: serde_json::Value = serde_json::from_str(&stale.stdout).unwrap();
    assert_eq!(json["volumes"][0]["escrow"], "stale", "{}", stale.stdout);
    assert_eq!(json["at_risk"], true);
    assert!(health(&sb, &srv).contains("the escrow holds an older key"));
    let fixed = sb.lifeline_on(&a, &["status", image, "--repair"]);
    assert!(
        fixed.ok().stderr.contains("escrowed again as packet"),
        "{}",
        fixed.all()
    );
    assert_eq!(health(&sb, &srv), "healthy");
    // The packet now in escrow recovers the re-encrypted volume.
    let otp = {
        sb.lifeline_as("state", &["recovery", "request", image], None)
            .ok();
        srv.approve_newest_request(&sb).1
    };
    recover_with(&sb, &srv, "state", &img, &otp);
}

#[test]
fn a_recovery_passphrase_an_administrator_saw_is_replaced_and_stops_working() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[]);
    let a = Swtpm::start(&sb.path("tpm-a"));
    let img = sb.luks_image("disk.img", 2);
    let image = img.path.to_str().unwrap();
    let cheap = ["--pbkdf2-iterations", "1000"];
    let random = ["--random-passphrase", cheap[0], cheap[1]];
    enrolled_and_escrowed(&sb, &srv, &a, &["provision"], &img, &random);
    let ok = sb.lifeline_on(&a, &["status", image]);
    assert!(
        ok.ok().stdout.contains("recovery passphrase: keyslot 1"),
        "{}",
        ok.all()
    );
    assert_eq!(health(&sb, &srv), "healthy");

    let show = |sb: &Sandbox| -> String {
        let rows = srv.admin(sb, &["packets", "--json"]).ok().stdout.clone();
        let current = rows
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["obsolete"] == false)
            .unwrap();
        let packet = current["packet"].as_str().unwrap().to_string();
        let args = [
            "show-passphrase",
            &packet,
            "--passphrase-file",
            "admin.pass",
        ];
        srv.admin(sb, &args).ok().stdout.trim().to_string()
    };
    let seen = show(&sb);
    assert!(cryptsetup_accepts(&img.path, &seen));
    let at_risk = sb.lifeline_on(&a, &["status", image]);
    at_risk.fails(10, "1 problem");
    assert!(
        at_risk
            .stdout
            .contains("its random recovery passphrase was shown to an administrator"),
        "{}",
        at_risk.all()
    );
    let mut repair = vec!["status", image, "--repair"];
    repair.extend_from_slice(&cheap);
    let replaced = sb.lifeline_on(&a, &repair);
    assert!(
        replaced
            .ok()
            .stderr
            .contains("the one in keyslot 1 no longer opens the volume"),
        "{}",
        replaced.all()
    );
    assert!(
        !cryptsetup_accepts(&img.path, &seen),
        "the seen passphrase still opens it"
    );
    let new = show(&sb);
    assert_ne!(new, seen);
    assert!(cryptsetup_accepts(&img.path, &new));

    // Its keyslot removed by hand: named, and --repair adds a new one.
    let slot = sb.lifeline_on(&a, &["status", image, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&slot.stdout).unwrap();
    let recovery = json["volumes"][0]["recovery_passphrase"].as_str().unwrap();
    let n = recovery.split(' ').nth(1).unwrap();
    cryptsetup(&["luksKillSlot", "-q", image, n]).ok();
    let gone = sb.lifeline_on(&a, &["status", image]);
    gone.fails(10, "problem");
    assert!(gone.stdout.contains("keyslot removed"), "{}", gone.all());
    sb.lifeline_on(&a, &repair).ok();
    assert!(cryptsetup_accepts(&img.path, &show(&sb)));
}

#[test]
fn a_machine_that_stopped_reporting_shows_as_such() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[("report_overdue_after", r#""2s""#)]);
    // LUKS1: the recovery keyslot is noted in the state directory, not in a token.
    let img = sb.luks_image("disk.img", 1);
    let image = img.path.to_str().unwrap();
    srv.join(&sb, &[], |args| sb.lifeline_as("state", args, None));
    let key = img.key_file.to_str().unwrap();
    let escrow = [
        "escrow",
        image,
        "--server",
        &srv.url,
        "--key-file",
        key,
        "--random-passphrase",
        "--pbkdf2-iterations",
        "1000",
    ];
    sb.lifeline_as("state", &escrow, None).ok();
    assert_eq!(
        std::fs::read_to_string(sb.path("state").join("recovery").join(&img.uuid)).unwrap(),
        "1\n"
    );
    // Not enrolled in a TPM: the escrow is there, whether it is current cannot be told.
    let status = sb.lifeline_as("state", &["status", image], None);
    let out = &status.ok().stdout;
    for line in [
        "TPM: not enrolled",
        "escrow: unknown",
        "recovery passphrase: keyslot 1",
    ] {
        assert!(out.contains(line), "{line}: {}", status.all());
    }
    assert_eq!(health(&sb, &srv), "healthy");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(health(&sb, &srv), "not reporting");
    let listing = srv.admin(&sb, &["machines"]).ok().stdout.clone();
    assert!(
        listing.contains("REPORTED") && listing.contains("not reporting"),
        "{listing}"
    );
}
