//! The escrow server over HTTPS on 127.0.0.1, with the real `lifeline` client.

use std::process::{Command, Stdio};
use std::time::Duration;

use lifeline::escrow::https::{CertProblem, FetchError, Https};
use lifeline::secret::Credential;
use serde_json::Value;

use crate::support::server::Server;
use crate::support::*;

/// A credential as the tests hold it: plain text from a file.
fn cred(text: &str) -> Credential {
    Credential::new(zeroize::Zeroizing::new(text.to_string()))
}

const MACHINE_B: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

/// Joins the machine with state dir `state` (and machine ID, if given) to `srv`.
fn join(sb: &Sandbox, srv: &Server, state: &str, machine_id: Option<&str>) {
    let extra: Vec<&str> = machine_id.map_or(vec![], |m| vec!["--machine-id", m]);
    srv.join(sb, &extra, |args| sb.lifeline_as(state, args, None));
}

fn escrow(sb: &Sandbox, srv: &Server, state: &str, img: &Image) -> Run {
    let args = [
        "escrow",
        img.path.to_str().unwrap(),
        "--server",
        &srv.url,
        "--key-file",
        img.key_file.to_str().unwrap(),
    ];
    sb.lifeline_as(state, &args, None)
}

/// An escrow packet for `img` made off-line, as bytes to upload by hand.
fn escrow_file(sb: &Sandbox, img: &Image) -> Vec<u8> {
    std::fs::read(sb.escrow_to("srv", &img.path, &img.key_file, &[])).unwrap()
}

/// The machine `state` asks for recovery of `img`; alice approves. Returns the OTP.
fn request_and_approve(sb: &Sandbox, srv: &Server, state: &str, img: &Image) -> String {
    sb.lifeline_as(
        state,
        &["recovery", "request", img.path.to_str().unwrap()],
        None,
    )
    .ok();
    srv.approve_newest_request(sb).1
}

fn client(srv: &Server, sb: &Sandbox) -> Https {
    Https::new(
        &srv.url,
        &std::fs::read(sb.path("srv/tls/ca.pem")).unwrap(),
        Duration::from_secs(30),
    )
    .unwrap()
}

/// Asserts the server refused with `status` and a reason containing `text`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, FetchError>, status: u16, text: &str) {
    match result {
        Err(FetchError::Refused { status: s, reason }) if s == status => {
            assert!(reason.contains(text), "{reason}")
        }
        Err(FetchError::NotFound(reason)) if status == 404 => {
            assert!(reason.contains(text), "{reason}")
        }
        other => panic!("expected {status} {text}: {other:?}"),
    }
}

fn credential(sb: &Sandbox, state: &str) -> String {
    std::fs::read_to_string(sb.path(state).join("credential")).unwrap()
}

#[test]
fn escrow_request_approve_fetch_recover_over_https() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[]);
    join(&sb, &srv, "state", None);
    let img = sb.luks_image("disk.img", 2);
    assert!(escrow(&sb, &srv, "state", &img)
        .ok()
        .stderr
        .contains("escrowed on the server"));
    assert!(escrow(&sb, &srv, "state", &img)
        .ok()
        .stderr
        .contains("already in escrow"));

    let recovery_id = sb
        .lifeline_as(
            "state",
            &["recovery", "request", img.path.to_str().unwrap()],
            None,
        )
        .ok()
        .stdout
        .trim()
        .to_string();
    let requests = srv.admin(&sb, &["requests", "--json"]).ok().stdout.clone();
    let request: serde_json::Value =
        serde_json::from_str(requests.lines().next().unwrap()).unwrap();
    assert_eq!(request["recovery_id"], recovery_id.as_str());
    let approve = srv.admin(
        &sb,
        &[
            "approve-recovery",
            request["request"].as_str().unwrap(),
            "--passphrase-file",
            "admin.pass",
        ],
    );
    let otp = approve.ok().stdout.trim().to_string();
    assert_eq!(otp.len(), 27);

    // Anyone can fetch the packet (it is OTP-encrypted), but reporting it used, which deletes
    // it, needs the token from inside: a fetch alone cannot make the user's packet disappear.
    let machine = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    let anonymous = client(&srv, &sb);
    let fetched = String::from_utf8(
        anonymous
            .get(&format!("/v1/recovery/{machine}/{}", img.uuid))
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let packet_id = fetched
        .split("packet=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let guess = serde_json::json!({ "use_token": "00".repeat(16) });
    match anonymous.post_json::<Value>(&format!("/v1/recovery/{packet_id}/used"), &guess) {
        Err(FetchError::Refused {
            status: 409,
            reason,
        }) => assert!(reason.contains("use token does not match"), "{reason}"),
        other => panic!("a guessed use token deleted the packet: {other:?}"),
    }
    // A dry run (no new passphrase) changes nothing, so it leaves the packet for the real one.
    let dry = ["recover", img.path.to_str().unwrap(), "--server", &srv.url];
    let run = sb.lifeline_as("state", &dry, Some(&format!("{otp}\n")));
    run.ok();
    assert!(run.stderr.contains("Nothing was changed"), "{}", run.all());
    assert!(
        anonymous
            .get(&format!("/v1/recovery/{machine}/{}", img.uuid))
            .is_ok(),
        "a dry run burnt the one-time packet"
    );
    sb.write("new.pass", "set after network recovery");
    let args = [
        "recover",
        img.path.to_str().unwrap(),
        "--server",
        &srv.url,
        "--new-passphrase-file",
        "new.pass",
        "--pbkdf2-iterations",
        "1000",
    ];
    sb.lifeline_as("state", &args, Some(&format!("{otp}\n")))
        .ok();
    assert!(cryptsetup_accepts(&img.path, "set after network recovery"));
    // One-time use: the packet is gone.
    sb.lifeline_as("state", &args, Some(&format!("{otp}\n")))
        .fails(5, "no recovery packet is published");

    sb.server(&["audit", "verify", "--dir", "srv"]).ok();
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(
        !log.contains(&otp) && !log.contains(&hex(&img.volume_key)),
        "a secret in the server log"
    );
    let haystack = srv.contents();
    assert!(
        !haystack.contains(&hex(&img.volume_key)) && !haystack.contains(&otp),
        "a secret stored in clear"
    );
}

#[test]
fn refusals_are_named() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[]);
    join(&sb, &srv, "a", None);
    join(&sb, &srv, "b", Some(MACHINE_B));
    let img = sb.luks_image("disk.img", 2);
    escrow(&sb, &srv, "a", &img).ok();
    let packet = escrow_file(&sb, &img);
    let path = format!("/v1/escrow?fingerprint={}", "0".repeat(64));

    // No credential; another machine's credential; a machine credential on admin endpoints.
    let anonymous = client(&srv, &sb);
    assert!(matches!(
        anonymous.post_bytes::<Value>(&path, &packet),
        Err(FetchError::Refused { status: 401, .. })
    ));
    let b = client(&srv, &sb).with_credential(cred(credential(&sb, "b").trim()));
    match b.post_bytes::<Value>(&path, &packet) {
        Err(FetchError::Refused {
            status: 403,
            reason,
        }) => assert!(reason.contains("another machine"), "{reason}"),
        other => panic!("machine B stored machine A's packet: {other:?}"),
    }
    assert!(matches!(
        b.get_json::<Value>("/v1/admin/packets"),
        Err(FetchError::Refused { status: 401, .. })
    ));
    // An enrollment token works once.
    let token = srv.token(&sb);
    let join_body = serde_json::json!({"token": token, "machine_id": MACHINE_B, "host": "x"});
    anonymous
        .post_json::<Value>("/v1/join", &join_body)
        .unwrap();
    assert!(matches!(
        anonymous.post_json::<Value>("/v1/join", &join_body),
        Err(FetchError::Refused { status: 403, .. })
    ));
    // Oversized body.
    let a = client(&srv, &sb).with_credential(cred(credential(&sb, "a").trim()));
    // The server answers 413 and closes; a client still sending may see the reset instead.
    let before = srv
        .admin(&sb, &["packets", "--json"])
        .ok()
        .stdout
        .lines()
        .count();
    let big = a.post_bytes::<Value>(&path, &vec![b'x'; 100 * 1024]);
    assert!(
        matches!(
            big,
            Err(FetchError::Refused { status: 413, .. }) | Err(FetchError::Unreachable(_))
        ),
        "{big:?}"
    );
    assert_eq!(
        srv.admin(&sb, &["packets", "--json"])
            .ok()
            .stdout
            .lines()
            .count(),
        before
    );
    // TLS with a CA that did not sign the server's certificate.
    let other = Sandbox::new();
    other.write("pass", "another authority passphrase");
    other
        .server(&[
            "init",
            "--dir",
            "o",
            "--passphrase-file",
            "pass",
            "--tls-name",
            "127.0.0.1",
        ])
        .ok();
    let wrong = Https::new(
        &srv.url,
        &std::fs::read(other.path("o/tls/ca.pem")).unwrap(),
        Duration::from_secs(10),
    )
    .unwrap();
    match wrong.get("/v1/authority") {
        Err(FetchError::Certificate(CertProblem::UnknownIssuer)) => {}
        other => panic!("TLS with the wrong CA: {other:?}"),
    }
    sb.lifeline_as(
        "c",
        &[
            "join",
            "--server",
            &srv.url,
            "--ca",
            other.path("o/tls/ca.pem").to_str().unwrap(),
            "--token",
            "x",
        ],
        None,
    )
    .fails(
        1,
        "certificate was refused: it is not signed by the configured CA",
    );

    // Every refusal is the documented JSON, also those axum makes itself (a body that is not
    // JSON, one over the limit, an unknown path, a wrong method).
    let ca = srv.dir.join("tls/ca.pem");
    for (method, path, body, status) in [
        ("POST", "/v1/recovery-requests", "not json".to_string(), 400),
        (
            "POST",
            "/v1/recovery-requests",
            r#"{"machine": 1}"#.to_string(),
            422,
        ),
        ("POST", "/v1/join", "x".repeat(100 * 1024), 413),
        ("GET", "/v1/no-such-endpoint", String::new(), 404),
        ("DELETE", "/v1/authority", String::new(), 405),
    ] {
        let out = Command::new("curl")
            .args(["-s", "-X", method, "--cacert"])
            .arg(&ca)
            .args([
                "-H",
                "content-type: application/json",
                "--data-binary",
                "@-",
            ])
            .args(["-w", "\n%{http_code} %{content_type}"])
            .arg(format!("{}{path}", srv.url))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                let _ = c.stdin.take().unwrap().write_all(body.as_bytes());
                c.wait_with_output()
            })
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (answer, tail) = text.rsplit_once('\n').unwrap();
        assert!(
            tail.starts_with(&format!("{status} application/json")),
            "{method} {path}: {tail}: {answer}"
        );
        let v: serde_json::Value = serde_json::from_str(answer).expect(answer);
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {answer}"
        );
    }
}

#[test]
fn the_helpdesk_finds_a_request_by_the_recovery_id_the_user_reads_out() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[]);
    join(&sb, &srv, "a", None);
    join(&sb, &srv, "b", Some(MACHINE_B));
    // One disk each (recovery IDs differ by volume).
    let images = [sb.luks_image("a.img", 2), sb.luks_image("b.img", 2)];
    let img = |state: &str| &images[usize::from(state == "b")];
    let machine = |state: &str| match state {
        "b" => vec!["--machine-id", MACHINE_B],
        _ => vec![],
    };
    for state in ["a", "b"] {
        let mut args = vec![
            "escrow",
            img(state).path.to_str().unwrap(),
            "--server",
            &srv.url,
        ];
        args.extend(["--key-file", img(state).key_file.to_str().unwrap()]);
        args.extend(machine(state));
        sb.lifeline_as(state, &args, None).ok();
    }
    let empty = srv.admin(&sb, &["requests"]);
    empty.ok();
    assert_eq!(empty.stdout, "");
    assert!(
        empty.stderr.contains("No recovery requests."),
        "{}",
        empty.stderr
    );

    let ask = |state: &str| {
        let mut args = vec!["recovery", "request", img(state).path.to_str().unwrap()];
        args.extend(machine(state));
        sb.lifeline_as(state, &args, None)
            .ok()
            .stdout
            .trim()
            .to_string()
    };
    let (id_a, id_b) = (ask("a"), ask("b"));
    assert_ne!(id_a, id_b);
    let table = srv.admin(&sb, &["requests"]).ok().stdout.clone();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("REQUEST ") && lines[0].contains("RECOVERY-ID"),
        "{table}"
    );
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].contains(&id_a) && lines[2].contains(&id_b),
        "{table}"
    );
    // ISO 8601 times, not seconds since the epoch.
    assert!(
        lines[1].contains("T") && lines[1].contains("Z  pending"),
        "{table}"
    );
    let only_b = srv
        .admin(&sb, &["requests", "--recovery-id", &id_b, "--json"])
        .ok()
        .stdout
        .clone();
    assert_eq!(only_b.lines().count(), 1, "{only_b}");
    let row: Value = serde_json::from_str(only_b.trim()).unwrap();
    assert_eq!(row["recovery_id"], id_b.as_str());

    // Both machines joined from this host: its name alone does not say which.
    let host = row["host"].as_str().unwrap().to_string();
    let ambiguous = srv.admin(
        &sb,
        &["approve-recovery", &host, "--passphrase-file", "admin.pass"],
    );
    ambiguous.fails(2, "matches 2 waiting recovery requests");
    assert!(ambiguous.stderr.contains(&id_a) && ambiguous.stderr.contains(&id_b));
    srv.admin(
        &sb,
        &[
            "approve-recovery",
            "0000-0000",
            "--passphrase-file",
            "admin.pass",
        ],
    )
    .fails(5, "no recovery requests match '0000-0000'");

    // A helpdesk shell names the server once, in the environment.
    let env = [
        ("LIFELINE_SERVER", srv.url.clone()),
        (
            "LIFELINE_CA",
            sb.path("srv/tls/ca.pem").display().to_string(),
        ),
        ("LIFELINE_CREDENTIAL_FILE", srv.admin.display().to_string()),
    ];
    let approved = sb.server_env(
        &[
            "admin",
            "approve-recovery",
            &id_a,
            "--passphrase-file",
            "admin.pass",
        ],
        &env,
    );
    approved.ok();
    assert!(
        approved.stderr.contains(&format!("recovery-id: {id_a}")),
        "{}",
        approved.stderr
    );
    assert_eq!(
        approved.stdout.trim().split('-').count(),
        4,
        "{}",
        approved.stdout
    );
    let listed = sb.server_env(
        &["admin", "requests", "--state", "approved", "--json"],
        &env,
    );
    assert!(listed.ok().stdout.contains(&id_a) && !listed.stdout.contains(&id_b));
    sb.server_env(&["admin", "requests"], &[])
        .fails(2, "no administrator credential");
}

#[test]
fn admin_calls_only_from_admin_networks_and_with_a_credential() {
    let sb = Sandbox::new();
    let srv = Server::start(
        &sb,
        &[
            ("admin_networks", r#"["10.0.0.0/8"]"#),
            ("metrics_networks", r#"["10.0.0.0/8"]"#),
        ],
    );
    srv.admin(&sb, &["requests", "--json"])
        .fails(3, "is not in an administrator network");
    assert_refused(
        client(&srv, &sb).get("/metrics"),
        403,
        "127.0.0.1 is not in metrics_networks",
    );
    let srv2_sb = Sandbox::new();
    let srv2 = Server::start(&srv2_sb, &[]);
    srv2_sb.write("nobody.cred", "not a credential");
    srv2_sb
        .server(&[
            "admin",
            "requests",
            "--dir",
            "srv",
            "--credential-file",
            "nobody.cred",
        ])
        .fails(3, "an administrator credential is needed");
    srv2.admin(&srv2_sb, &["requests", "--json"]).ok();
}

#[test]
fn the_1001st_packet_is_refused() {
    let sb = Sandbox::new();
    let srv = Server::start(
        &sb,
        &[
            ("requests_per_minute_per_address", "1000000000"),
            ("requests_per_minute_per_machine", "1000000000"),
        ],
    );
    join(&sb, &srv, "a", None);
    let img = sb.luks_image("disk.img", 2);
    let packet = escrow_file(&sb, &img);
    let a = client(&srv, &sb).with_credential(cred(credential(&sb, "a").trim()));
    for i in 0..1000u32 {
        let (status, _) = a
            .post_bytes::<Value>(&format!("/v1/escrow?fingerprint={i:064}"), &packet)
            .unwrap();
        assert_eq!(status, 201);
    }
    match a.post_bytes::<Value>(&format!("/v1/escrow?fingerprint={:064}", 1000), &packet) {
        Err(FetchError::Refused {
            status: 409,
            reason,
        }) => assert!(reason.contains("1000 packets"), "{reason}"),
        other => panic!("the 1001st packet: {other:?}"),
    }
}

#[test]
fn an_expired_recovery_packet_cannot_be_fetched() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[("recovery_valid_for", r#""1s""#)]);
    join(&sb, &srv, "state", None);
    let img = sb.luks_image("disk.img", 2);
    escrow(&sb, &srv, "state", &img).ok();
    request_and_approve(&sb, &srv, "state", &img);
    std::thread::sleep(Duration::from_millis(2100));
    sb.lifeline_as(
        "state",
        &["recover", img.path.to_str().unwrap(), "--server", &srv.url],
        None,
    )
    .fails(5, "no recovery packet is published");
}

#[test]
fn audit_verify_names_edited_deleted_and_reordered_entries() {
    let sb = Sandbox::new();
    let mut srv = Server::start(&sb, &[]);
    join(&sb, &srv, "a", None);
    join(&sb, &srv, "b", Some(MACHINE_B));
    srv.kill();
    sb.server(&["audit", "verify", "--dir", "srv"]).ok();
    srv.keep_database();
    let tamper = |sql: &str, expect: &str| {
        srv.reset_database();
        srv.execute(sql);
        sb.server(&["audit", "verify", "--dir", "srv"])
            .fails(4, expect);
    };
    tamper(
        "UPDATE audit SET subject = 'someone else' WHERE seq = 3",
        "entry 3",
    );
    tamper("DELETE FROM audit WHERE seq = 2", "entry 2 is missing");
    tamper(
        "UPDATE audit SET seq = 100 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 100;",
        "does not follow",
    );
}

/// Uploads from `clients` threads with distinct fingerprints until `stop`; returns the
/// (packet ID, fingerprint) of every upload the server acknowledged with a 2xx.
/// An upload acknowledged: the packet ID, its fingerprint, and the instance (index in `urls`)
/// that acknowledged it.
type Ack = (String, String, usize);

/// `clients` threads upload packets of machine "a" until `stop`, spread over the instances at
/// `urls`. A client whose instance dies moves on to the next one, as behind a load balancer,
/// and stops when none is left.
fn upload_storm(
    urls: &[&str],
    sb: &Sandbox,
    clients: usize,
    packet: &[u8],
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<Ack> {
    let credential = credential(sb, "a");
    let ca = std::fs::read(sb.path("srv/tls/ca.pem")).unwrap();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|t| {
                let (credential, ca) = (credential.clone(), ca.clone());
                scope.spawn(move || {
                    let connect = |n: usize| {
                        Https::new(urls[n % urls.len()], &ca, Duration::from_secs(10))
                            .unwrap()
                            .with_credential(cred(credential.trim()))
                    };
                    let (mut at, mut tried) = (t % urls.len(), 1);
                    let mut c = connect(at);
                    let mut acked = Vec::new();
                    for i in 0u64.. {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let fp = format!("{t:032x}{i:032x}");
                        match c.post_bytes::<Value>(&format!("/v1/escrow?fingerprint={fp}"), packet)
                        {
                            Ok((201, answer)) => acked.push((
                                answer["packet"].as_str().unwrap().to_string(),
                                fp,
                                at % urls.len(),
                            )),
                            Ok(other) => panic!("unexpected answer {other:?}"),
                            // The instance died under us.
                            Err(_) if tried == urls.len() => break,
                            Err(_) => {
                                (at, tried) = (at + 1, tried + 1);
                                c = connect(at);
                            }
                        }
                    }
                    acked
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

#[test]
fn kill_9_during_200_concurrent_uploads_loses_nothing_acknowledged() {
    let sb = Sandbox::new();
    let mut srv = Server::start(
        &sb,
        &[
            ("max_packets_per_machine", "1000000"),
            ("requests_per_minute_per_address", "1000000000"),
            ("requests_per_minute_per_machine", "1000000000"),
        ],
    );
    join(&sb, &srv, "a", None);
    let img = sb.luks_image("disk.img", 2);
    let packet = escrow_file(&sb, &img);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked = std::thread::scope(|scope| {
        let storm = scope.spawn(|| upload_storm(&[&srv.url], &sb, 200, &packet, &stop));
        std::thread::sleep(Duration::from_millis(1500));
        kill_9(&srv);
        let acked = storm.join().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        acked
    });
    assert!(
        acked.len() >= 200,
        "too few uploads acknowledged before the kill: {}",
        acked.len()
    );
    srv.crash_and_restart();
    srv.kill();
    let stored = every_acknowledged_upload_is_stored(&sb, &srv, &acked, &packet);
    eprintln!(
        "{} uploads acknowledged before kill -9, all present; {stored} stored in all",
        acked.len()
    );
}

#[test]
fn two_instances_on_one_postgresql_serve_as_one_and_survive_kill_9_of_either() {
    let sb = Sandbox::new();
    let no_limits = [
        ("max_packets_per_machine", "1000000"),
        ("requests_per_minute_per_address", "1000000000"),
        ("requests_per_minute_per_machine", "1000000000"),
    ];
    let mut a = Server::start_on_postgres(&sb, &no_limits);
    let b = a.second_instance(&sb, "srv-b");
    join(&sb, &a, "a", None);
    let img = sb.luks_image("disk.img", 2);
    let packet = escrow_file(&sb, &img);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked = std::thread::scope(|scope| {
        let storm = scope.spawn(|| upload_storm(&[&a.url, &b.url], &sb, 200, &packet, &stop));
        std::thread::sleep(Duration::from_millis(2000));
        kill_9(&a);
        std::thread::sleep(Duration::from_millis(2000));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        storm.join().unwrap()
    });
    let on = |instance: usize| acked.iter().filter(|ack| ack.2 == instance).count();
    // Client t started on instance t % 2 (its number leads the fingerprint).
    let moved = acked
        .iter()
        .filter(|(_, fp, at)| *at == 1 && u64::from_str_radix(&fp[..32], 16).unwrap() % 2 == 0)
        .count();
    eprintln!(
        "{} uploads acknowledged: {} by the instance killed, {} by the other ({moved} of them from clients that moved over after the kill)",
        acked.len(),
        on(0),
        on(1)
    );
    assert!(on(0) >= 50 && on(1) >= 50, "uploads not spread over both");
    assert!(moved > 0, "the other instance stopped serving too");
    // Every acknowledged upload, whichever instance took it, is in the one database; the two
    // instances wrote one linear audit chain.
    every_acknowledged_upload_is_stored(&sb, &b, &acked, &packet);

    // An approval on one instance is fetched from the other.
    a.crash_and_restart();
    let disk = sb.luks_image("second.img", 2);
    escrow(&sb, &a, "a", &disk).ok();
    let otp = request_and_approve(&sb, &a, "a", &disk);
    crate::approvals::recover_with(&sb, &b, "a", &disk, &otp);
    let log = crate::approvals::audit(&b);
    assert!(
        log.iter().any(|(_, action, _)| action == "fetch-recovery"),
        "{log:?}"
    );
}

#[test]
fn the_packet_limit_holds_across_instances() {
    let sb = Sandbox::new();
    let a = Server::start_on_postgres(&sb, &[("max_packets_per_machine", "2")]);
    let b = a.second_instance(&sb, "srv-b");
    join(&sb, &a, "state", None);
    for (srv, name) in [(&a, "one.img"), (&b, "two.img")] {
        escrow(&sb, srv, "state", &sb.luks_image(name, 2)).ok();
    }
    for srv in [&a, &b] {
        escrow(&sb, srv, "state", &sb.luks_image("three.img", 2)).fails(1, "the most allowed");
    }
}

#[test]
fn a_lost_postgresql_connection_fails_only_the_requests_of_that_moment() {
    let sb = Sandbox::new();
    let srv = Server::start_on_postgres(&sb, &[]);
    srv.admin(&sb, &["machines"]).ok();
    let name = crate::support::pg::database_name(srv.database.as_ref().unwrap());
    // What a PostgreSQL restart or a network failure does to the server's session.
    let ended = crate::support::pg::cluster()
        .client("postgres")
        .unwrap()
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .unwrap();
    assert!(!ended.is_empty(), "the server had no session to end");
    let first = srv.admin(&sb, &["machines"]);
    eprintln!(
        "after the session ended: exit {}: {}",
        first.code,
        first.stderr.trim()
    );
    if first.code != 0 {
        assert!(first.stderr.contains("503"), "{}", first.stderr);
    }
    srv.admin(&sb, &["machines"]).ok();
    join(&sb, &srv, "a", None);
}

/// kill -9 of the server: no chance to flush anything.
fn kill_9(srv: &Server) {
    let pid = std::process::Command::new("pgrep")
        .args(["-f", &format!("serve --dir {}$", srv.dir.display())])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pid.stdout)
        .trim()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        !pid.is_empty(),
        "no server process for {}",
        srv.dir.display()
    );
    std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
}

/// After a crash: every acknowledged upload is in the database intact, every stored packet has
/// its audit entry and no more, and the audit chain verifies. Returns how many are stored.
fn every_acknowledged_upload_is_stored(
    sb: &Sandbox,
    srv: &Server,
    acked: &[Ack],
    packet: &[u8],
) -> usize {
    if srv.database.is_none() {
        assert_eq!(srv.rows("PRAGMA integrity_check"), [["ok"]]);
    }
    let stored: std::collections::HashMap<String, (String, String)> = srv
        .rows("SELECT id, fingerprint, body FROM packets")
        .into_iter()
        .map(|r| (r[0].clone(), (r[1].clone(), r[2].clone())))
        .collect();
    for (id, fp, _) in acked {
        let (stored_fp, body) = stored
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged packet {id} is gone"));
        assert_eq!(stored_fp, fp);
        assert_eq!(body, &hex(packet), "packet {id} is not intact");
    }
    let audited: usize = srv.rows("SELECT COUNT(*) FROM audit WHERE action = 'escrow'")[0][0]
        .parse()
        .unwrap();
    assert_eq!(
        stored.len(),
        audited,
        "every stored packet has its audit entry, and no more"
    );
    sb.server(&["audit", "verify", "--dir", srv.dir.to_str().unwrap()])
        .ok();
    stored.len()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

/// Runs `op` from `clients` threads for `secs` seconds; prints throughput and latencies.
fn load(
    label: &str,
    clients: usize,
    secs: u64,
    op: impl Fn(&Https, usize, u64) + Sync,
    make: impl Fn(usize) -> Https + Sync,
) -> String {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let started = std::time::Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|t| {
                let (op, make, stop) = (&op, &make, &stop);
                scope.spawn(move || {
                    let c = make(t);
                    let mut lat = Vec::new();
                    for i in 0u64.. {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let t0 = std::time::Instant::now();
                        op(&c, t, i);
                        lat.push(t0.elapsed());
                    }
                    lat
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    table_row(
        label,
        &clients.to_string(),
        started.elapsed(),
        &mut latencies,
    )
}

/// One row of the benchmark's tables: what, how loaded, requests per second, p50, p99.
fn table_row(label: &str, load: &str, elapsed: Duration, latencies: &mut [Duration]) -> String {
    latencies.sort();
    let line = format!(
        "| {label} | {load} | {:.0} | {:.1} ms | {:.1} ms |",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(latencies, 0.99).as_secs_f64() * 1000.0
    );
    eprintln!("{line}");
    line
}

/// Sends `op` at a fixed `rate` per second for `secs` seconds, whatever the answers' pace
/// (open loop: `workers` threads take the next slot of the schedule), and reports each
/// request's latency from the moment it was due, so that a server falling behind shows in
/// the figures instead of slowing the load down.
fn open_loop(
    label: &str,
    rate: u32,
    secs: u64,
    workers: usize,
    op: impl Fn(&Https, usize, u64) + Sync,
    make: impl Fn(usize) -> Https + Sync,
) -> String {
    let total = u64::from(rate) * secs;
    let next = std::sync::atomic::AtomicU64::new(0);
    // Every worker connects (TLS) before the clock starts.
    let (ready, go) = (
        std::sync::Barrier::new(workers + 1),
        std::sync::Barrier::new(workers + 1),
    );
    let started = std::sync::OnceLock::new();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|t| {
                let (op, make, next) = (&op, &make, &next);
                let (ready, go, started) = (&ready, &go, &started);
                scope.spawn(move || {
                    let c = &make(t);
                    c.get("/v1/health").unwrap();
                    ready.wait();
                    go.wait();
                    let started: &std::time::Instant = started.get().unwrap();
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= total {
                            break lat;
                        }
                        let due = *started + Duration::from_secs_f64(i as f64 / f64::from(rate));
                        std::thread::sleep(
                            due.saturating_duration_since(std::time::Instant::now()),
                        );
                        op(c, t, i);
                        lat.push(due.elapsed());
                    }
                })
            })
            .collect();
        ready.wait();
        let _ = started.set(std::time::Instant::now());
        go.wait();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let elapsed = started.get().unwrap().elapsed();
    table_row(label, &format!("{rate}/s"), elapsed, &mut latencies)
}

/// The load benchmark of docs/benchmarks.md, on SQLite and on PostgreSQL in the same run. Not
/// a timed test: it asserts nothing about speed.
/// `cargo test --release --all-features --test tests -- --ignored load_benchmark --nocapture`
#[test]
#[ignore = "benchmark; run by hand"]
fn load_benchmark() {
    let (mut closed, mut open) = (Vec::new(), Vec::new());
    for postgres in [false, true] {
        let engine = if postgres { "PostgreSQL" } else { "SQLite" };
        let (c, o) = load_benchmark_on(postgres);
        closed.extend(c.into_iter().map(|r| format!("| {engine} {r}")));
        open.extend(o.into_iter().map(|r| format!("| {engine} {r}")));
    }
    println!(
        "| database | operation | clients | requests/s | p50 | p99 |\n|---|---|---|---|---|---|"
    );
    for r in closed {
        println!("{r}");
    }
    println!(
        "\n| database | operation | offered | served/s | p50 | p99 |\n|---|---|---|---|---|---|"
    );
    for r in open {
        println!("{r}");
    }
}

/// One server's figures: closed-loop rows, then open-loop rows.
fn load_benchmark_on(postgres: bool) -> (Vec<String>, Vec<String>) {
    let sb = Sandbox::new();
    let no_limits = [
        ("max_packets_per_machine", "100000000"),
        ("requests_per_minute_per_address", "1000000000"),
        ("requests_per_minute_per_machine", "1000000000"),
    ];
    let srv = match postgres {
        true => Server::start_on_postgres(&sb, &no_limits),
        false => Server::start(&sb, &no_limits),
    };
    join(&sb, &srv, "a", None);
    let img = sb.luks_image("disk.img", 2);
    let packet = escrow_file(&sb, &img);
    // One approved recovery packet to fetch.
    escrow(&sb, &srv, "a", &img).ok();
    request_and_approve(&sb, &srv, "a", &img);
    let machine = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    let fetch_path = format!("/v1/recovery/{machine}/{}", img.uuid);
    let ca = std::fs::read(sb.path("srv/tls/ca.pem")).unwrap();
    // A fleet: every client is a machine of its own, with its own credential and packets.
    let admin = client(&srv, &sb)
        .with_credential(cred(std::fs::read_to_string(&srv.admin).unwrap().trim()));
    let anonymous = client(&srv, &sb);
    let text = String::from_utf8(packet.clone()).unwrap();
    let fleet: Vec<(String, Vec<u8>)> = (0..500u32)
        .map(|n| {
            let token = admin
                .post_json::<Value>("/v1/admin/enrollment-tokens", &serde_json::json!({}))
                .unwrap()["token"]
                .as_str()
                .unwrap()
                .to_string();
            let id = format!("{n:032x}");
            let joined = anonymous
                .post_json::<Value>(
                    "/v1/join",
                    &serde_json::json!({"token": token, "machine_id": id, "host": format!("m{n}")}),
                )
                .unwrap();
            // The server reads only the clear header; the machine ID there must be the machine's.
            let body = text
                .replace(
                    &format!("machine-id: {machine}"),
                    &format!("machine-id: {id}"),
                )
                .into_bytes();
            (joined["credential"].as_str().unwrap().to_string(), body)
        })
        .collect();
    let anonymous_client = |_: usize| Https::new(&srv.url, &ca, Duration::from_secs(60)).unwrap();
    let machine_client = |t: usize| anonymous_client(t).with_credential(cred(&fleet[t].0));
    let upload = |tag: u32| {
        let fleet = &fleet;
        move |c: &Https, t: usize, i: u64| {
            let (status, _) = c
                .post_bytes::<Value>(
                    &format!("/v1/escrow?fingerprint={tag:08x}{t:024x}{i:032x}"),
                    &fleet[t].1,
                )
                .unwrap();
            assert_eq!(status, 201);
        }
    };
    let fetch = |c: &Https, _: usize, _: u64| drop(c.get(&fetch_path).unwrap());
    let mut closed = Vec::new();
    for clients in [50, 500] {
        closed.push(load(
            "escrow upload",
            clients,
            10,
            upload(clients as u32),
            machine_client,
        ));
        closed.push(load(
            "recovery-packet fetch",
            clients,
            10,
            fetch,
            anonymous_client,
        ));
    }
    let mut open = Vec::new();
    for rate in [200, 1000] {
        open.push(open_loop(
            "escrow upload",
            rate,
            10,
            500,
            upload(rate + 1),
            machine_client,
        ));
        open.push(open_loop(
            "recovery-packet fetch",
            rate,
            10,
            500,
            fetch,
            anonymous_client,
        ));
    }
    (closed, open)
}

#[test]
fn rate_limits_per_address_and_per_machine() {
    let sb = Sandbox::new();
    let srv = Server::start(
        &sb,
        &[
            ("requests_per_minute_per_address", "40"),
            ("requests_per_minute_per_machine", "3"),
        ],
    );
    join(&sb, &srv, "a", None);
    let img = sb.luks_image("disk.img", 2);
    let packet = escrow_file(&sb, &img);
    let a = client(&srv, &sb).with_credential(cred(credential(&sb, "a").trim()));
    for i in 0..3u32 {
        a.post_bytes::<Value>(&format!("/v1/escrow?fingerprint={i:064}"), &packet)
            .unwrap();
    }
    match a.post_bytes::<Value>(&format!("/v1/escrow?fingerprint={:064}", 3), &packet) {
        Err(FetchError::Refused {
            status: 429,
            reason,
        }) => assert!(reason.contains("too many requests"), "{reason}"),
        other => panic!("the 4th upload in a minute: {other:?}"),
    }
    // Fetching recovery packets needs no credential, so the address limit guards it.
    let anonymous = client(&srv, &sb);
    let refused = (0..60)
        .map(|_| anonymous.get(&format!("/v1/recovery/{}/{}", "0".repeat(32), img.uuid)))
        .filter(|r| matches!(r, Err(FetchError::Refused { status: 429, .. })))
        .count();
    assert!(refused >= 20, "only {refused} of 60 fetches were limited");
}

#[test]
fn a_state_file_only_root_can_read_is_named_not_called_missing() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[]);
    join(&sb, &srv, "state", None);
    let img = sb.luks_image("disk.img", 2);
    for path in [sb.path(""), img.path.clone(), img.key_file.clone()] {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // An administrator who forgot sudo: the credential is root's.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_lifeline"))
        .args(["escrow", img.path.to_str().unwrap(), "--server", &srv.url])
        .args(["--key-file", img.key_file.to_str().unwrap()])
        .env("LIFELINE_STATE_DIR", sb.path("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("credential: Permission denied") && stderr.contains("run it as root"),
        "{stderr}"
    );
    assert!(!stderr.contains("has not joined"), "{stderr}");
}

#[test]
fn every_request_is_logged_and_counted_and_refusals_are_audited() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[]);
    let health: Value = client(&srv, &sb).get_json("/v1/health").unwrap();
    assert_eq!(
        health,
        serde_json::json!({"storage": "ok", "tpm": "not configured"})
    );
    join(&sb, &srv, "state", None);
    let img = sb.luks_image("disk.img", 2);
    escrow(&sb, &srv, "state", &img).ok();
    sb.lifeline_as(
        "state",
        &["recovery", "request", img.path.to_str().unwrap()],
        None,
    )
    .ok();
    let rid = img_recovery_id(&sb, &srv);
    sb.write("wrong.pass", "not the administrator passphrase");
    srv.admin(
        &sb,
        &["approve-recovery", &rid, "--passphrase-file", "wrong.pass"],
    )
    .fails(3, "administrator passphrase is wrong");
    let intruder = client(&srv, &sb).with_credential(cred("guessed credential"));
    assert_refused(
        intruder.get_json::<Value>("/v1/admin/requests"),
        401,
        "administrator credential",
    );

    let metrics = String::from_utf8(client(&srv, &sb).get("/metrics").unwrap().to_vec()).unwrap();
    for line in [
        r#"lifeline_requests_total{route="/v1/escrow",status="201"} 1"#,
        r#"lifeline_requests_total{route="/v1/admin/requests/{id}/approve",status="403"} 1"#,
        r#"lifeline_requests_total{route="/v1/admin/requests",status="401"} 1"#,
        r#"lifeline_request_duration_seconds_count{route="/v1/escrow"} 1"#,
        "lifeline_pending_recovery_requests 1",
        "lifeline_storage_errors_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in:\n{metrics}"
        );
    }
    let audited = &srv.rows("SELECT COUNT(*) FROM audit")[0][0];
    assert!(
        metrics.contains(&format!("lifeline_audit_entries {audited}\n")),
        "{metrics}"
    );
    let actions: Vec<(String, String)> = srv
        .rows("SELECT actor, action FROM audit")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert!(
        actions.contains(&("alice".into(), "wrong-passphrase".into())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&(
            "anonymous@127.0.0.1".into(),
            "admin-credential-refused".into()
        )),
        "{actions:?}"
    );

    // One line per request: the route's template, the status, who; no IDs, no secrets.
    let log = std::fs::read_to_string(&srv.log).unwrap();
    let requests: Vec<&str> = log.lines().filter(|l| l.contains(" actor=")).collect();
    for expected in [
        "POST /v1/admin/requests/{id}/approve 403 actor=admin alice",
        "GET /v1/admin/requests 401 actor=anonymous",
        "POST /v1/escrow 201 actor=machine ",
        "GET /v1/health 200 actor=none",
    ] {
        assert!(
            requests.iter().any(|l| l.contains(expected)),
            "no {expected:?} in:\n{}",
            requests.join("\n")
        );
    }
    let secrets = [
        std::fs::read_to_string(&srv.admin).unwrap(),
        credential(&sb, "state"),
        ADMIN_PASSPHRASE.to_string(),
        "guessed credential".to_string(),
    ];
    for secret in secrets {
        assert!(!log.contains(secret.trim()), "a secret in the server log");
    }
    assert!(
        !requests.iter().any(|l| l.contains(&img.uuid)),
        "an ID in a request line"
    );
}

#[test]
fn a_backup_taken_while_serving_restores_a_server_that_still_recovers() {
    let sb = Sandbox::new();
    let mut srv = Server::start(&sb, &[]);
    join(&sb, &srv, "state", None);
    let img = sb.luks_image("disk.img", 2);
    escrow(&sb, &srv, "state", &img).ok();
    // Taken while the server runs, and writes: another machine joins at the same time.
    let joining = std::thread::scope(|scope| {
        let second = scope.spawn(|| join(&sb, &srv, "other", Some(MACHINE_B)));
        let taken = sb.server(&["backup", "--dir", "srv", "--out", "srv.tar"]);
        second.join().unwrap();
        taken
    });
    joining.ok();
    sb.server(&["backup", "--dir", "srv", "--out", "srv.tar"])
        .fails(7, "srv.tar exists already");
    // Stock tar reads it.
    let listed = Command::new("tar")
        .args(["-tf", "srv.tar"])
        .current_dir(sb.path(""))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for name in [
        "lifeline.db",
        "identity.age",
        "minisign.key",
        "server.toml",
        "tls/ca.pem",
    ] {
        assert!(listed.lines().any(|l| l == name), "{name} not in: {listed}");
    }
    assert!(!listed.contains("lifeline.db-wal"), "{listed}");

    // The server's disk is lost: restore, serve, and the escrowed key still recovers.
    srv.kill();
    std::fs::rename(sb.path("srv"), sb.path("lost-srv")).unwrap();
    sb.write("garbage.tar", vec![7u8; 4096]);
    sb.server(&["restore", "--from", "garbage.tar", "--dir", "srv"])
        .fails(2, "garbage.tar is not a lifeline backup");
    assert!(
        !sb.path("srv").exists(),
        "a failed restore left a directory"
    );
    sb.server(&["restore", "--from", "srv.tar", "--dir", "lost-srv"])
        .fails(7, "exists already");
    let mut restore = vec!["restore", "--from", "srv.tar", "--dir", "srv"];
    let fresh = srv
        .database
        .as_ref()
        .map(|_| crate::support::pg::cluster().new_database());
    if let Some(fresh) = &fresh {
        // PostgreSQL outlived the server's disk: a restore never mixes into what it holds.
        sb.server(&restore).fails(2, "give an empty one");
        assert!(
            !sb.path("srv").exists(),
            "a failed restore left a directory"
        );
        restore.extend(["--database", fresh]);
        srv.database = Some(fresh.clone());
    }
    sb.server(&restore).ok();
    // The same backup moves the server to a new PostgreSQL database, whatever it ran on.
    let moved = crate::support::pg::cluster().new_database();
    let to_postgres = [
        "restore",
        "--from",
        "srv.tar",
        "--dir",
        "moved",
        "--database",
        &moved,
    ];
    sb.server(&to_postgres).ok();
    let entries = |dir: &str| {
        let verified = sb.server(&["audit", "verify", "--dir", dir]);
        verified.ok().stderr.clone()
    };
    assert_eq!(entries("moved"), entries("srv"));
    assert!(
        std::fs::read_to_string(sb.path("moved/server.toml"))
            .unwrap()
            .contains(&format!("database = \"{moved}\"")),
        "the restored server.toml does not name the new database"
    );
    assert!(!sb.path("moved/lifeline.db").exists());

    srv.crash_and_restart();
    let otp = request_and_approve(&sb, &srv, "state", &img);
    crate::approvals::recover_with(&sb, &srv, "state", &img, &otp);
    sb.server(&["audit", "verify", "--dir", "srv"]).ok();
}

#[test]
fn a_database_made_by_lifeline_0_1_0_is_upgraded_in_place() {
    // Made by lifeline-server 0.1.0 (before schema versions): one machine, one escrow packet,
    // one recovery request, five audit entries.
    let sb = Sandbox::new();
    // A mistyped --dir is refused, and no database is made there.
    for command in [&["admin", "add", "--name", "bob"][..], &["audit", "verify"]] {
        sb.server(&[command, &["--dir", "typo"]].concat())
            .fails(2, "typo is not a server directory");
    }
    assert!(!sb.path("typo").exists());
    std::fs::create_dir(sb.path("srv")).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/server-db-0.1.0.sqlite");
    std::fs::copy(&fixture, sb.path("srv/lifeline.db")).unwrap();
    // 0.1.0's server.toml has no `database` line: the default is that file.
    sb.write(
        "srv/server.toml",
        "listen = \"127.0.0.1:8443\"\ntls_cert = \"tls/server.pem\"\ntls_key = \"tls/server.key\"\n",
    );
    let verified = sb.server(&["audit", "verify", "--dir", "srv"]);
    assert!(
        verified.ok().stderr.contains("Audit log intact: 5 entries"),
        "{}",
        verified.stderr
    );
    let db = rusqlite::Connection::open(sb.path("srv/lifeline.db")).unwrap();
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    // Its packet held no random passphrase: the key's own fingerprint is its fingerprint.
    let same: bool = db
        .query_row(
            "SELECT key_fingerprint = fingerprint AND revealed IS NULL FROM packets",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(same);
    let count = |table: &str| -> i64 {
        db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(
        (
            count("machines"),
            count("packets"),
            count("recovery_requests")
        ),
        (1, 1, 1)
    );
    // A database from a newer server is refused, not written to.
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    sb.server(&["audit", "verify", "--dir", "srv"])
        .fails(1, "made by a newer lifeline-server");
}

#[test]
fn join_writes_the_servers_lines_into_lifeline_toml() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[]);
    let config = sb.write(
        "lifeline.toml",
        "# mine\nserver = \"https://old.example.org:8443\"\ntimeout = 60\n\n[[volume]]\nuuid = \"8f14e45f-ceea-467a-9af3-6b1d2c3e4f50\"\nname = \"cryptroot\"\n",
    );
    let extra = ["--config", config.to_str().unwrap()];
    srv.join(&sb, &extra, |args| sb.lifeline_as("state", args, None));
    let text = std::fs::read_to_string(&config).unwrap();
    let state = sb.path("state");
    for line in [
        format!("server = \"{}\"", srv.url),
        format!("ca = \"{}\"", state.join("server-ca.pem").display()),
        format!("trust = \"{}\"", state.join("minisign.pub").display()),
        "timeout = 60".to_string(),
        "name = \"cryptroot\"".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
    }
    assert!(!text.contains("old.example.org"), "{text}");
    // What the initramfs glue asks of it: it parses, and names the files to carry.
    let listed = sb
        .lifeline(&[
            "unlock",
            "--config",
            config.to_str().unwrap(),
            "--cmdline",
            "/dev/null",
            "--list-files",
        ])
        .ok()
        .stdout
        .clone();
    assert!(
        listed.contains("server-ca.pem") && listed.contains("minisign.pub"),
        "{listed}"
    );
    // A file that does not parse is left alone, and the token is not spent on it.
    let broken = sb.write("broken.toml", "server = unquoted\n");
    let extra = ["--config", broken.to_str().unwrap()];
    let token = srv.token(&sb);
    sb.lifeline_as(
        "state2",
        &[
            &[
                "join",
                "--server",
                &srv.url,
                "--ca",
                "srv/tls/ca.pem",
                "--token",
                &token,
            ][..],
            &extra[..],
        ]
        .concat(),
        None,
    )
    .fails(2, "is not a quoted string");
    assert_eq!(
        std::fs::read_to_string(&broken).unwrap(),
        "server = unquoted\n"
    );
}

/// The recovery ID of the only recovery request.
fn img_recovery_id(sb: &Sandbox, srv: &Server) -> String {
    let listed = srv.admin(sb, &["requests", "--json"]).ok().stdout.clone();
    let row: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    row["recovery_id"].as_str().unwrap().to_string()
}

#[test]
fn admin_lists_shows_the_recovery_passphrase_retires_and_deletes() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[]);
    join(&sb, &srv, "a", None);
    let img = sb.luks_image("disk.img", 2);
    let args = [
        "escrow",
        img.path.to_str().unwrap(),
        "--server",
        &srv.url,
        "--key-file",
        img.key_file.to_str().unwrap(),
        "--random-passphrase",
        "--pbkdf2-iterations",
        "1000",
    ];
    sb.lifeline_as("a", &args, None).ok();
    let machines = srv.admin(&sb, &["machines", "--json"]).ok().stdout.clone();
    assert!(machines.contains(r#""packets":1"#), "{machines}");
    let packets = srv.admin(&sb, &["packets", "--json"]).ok().stdout.clone();
    let packet: serde_json::Value = serde_json::from_str(packets.lines().next().unwrap()).unwrap();
    let id = packet["packet"].as_str().unwrap();

    sb.write("wrong.pass", "not the administrator passphrase");
    srv.admin(
        &sb,
        &["show-passphrase", id, "--passphrase-file", "wrong.pass"],
    )
    .fails(3, "administrator passphrase is wrong");
    let shown = srv
        .admin(
            &sb,
            &["show-passphrase", id, "--passphrase-file", "admin.pass"],
        )
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(
        cryptsetup_accepts(&img.path, &shown),
        "the escrowed recovery passphrase opens the volume"
    );

    // A request filed before its packet was retired cannot be approved, and says why.
    sb.lifeline_as(
        "a",
        &["recovery", "request", img.path.to_str().unwrap()],
        None,
    )
    .ok();
    srv.admin(&sb, &["obsolete", id]).ok();
    let stale = srv.admin(
        &sb,
        &[
            "approve-recovery",
            &img_recovery_id(&sb, &srv),
            "--passphrase-file",
            "admin.pass",
        ],
    );
    stale.fails(
        5,
        "escrow packets were retired or deleted since it was filed",
    );
    assert!(!stale.stderr.contains("Query returned"), "{}", stale.stderr);
    sb.lifeline_as(
        "a",
        &["recovery", "request", img.path.to_str().unwrap()],
        None,
    )
    .fails(5, "no escrowed key");
    srv.admin(&sb, &["delete", id]).ok();
    assert_eq!(
        srv.admin(&sb, &["packets", "--json"]).ok().stdout.trim(),
        ""
    );
    srv.admin(&sb, &["delete", id]).fails(5, "no escrow packet");
    let actions: Vec<String> = srv
        .rows("SELECT action FROM audit ORDER BY seq")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    for expected in ["escrow", "show-passphrase", "obsolete", "delete"] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} not audited: {actions:?}"
        );
    }
}

/// seeds/003's board swap through the server: machine A backs its DRSK up over HTTPS (imported
/// into the server's TPM at once); A's TPM is gone; the replacement TPM C files a restore
/// request, proving it is genuine (the server has EK CAs); alice approves; C fetches, restores,
/// and unseals A's old token. Refusals on the way: another machine's backup, a request without
/// the EK, a wrong proof, approving before the proof, an unknown client.
#[test]
fn drsk_backup_and_board_swap_restore_over_https() {
    use crate::support::swtpm::{manufacture, Swtpm};
    let sb = Sandbox::new();
    let ca_pem = manufacture(&sb.path("tpm-c"), &sb.path("ca"));
    sb.write("ek-ca.pem", &ca_pem);
    let b = Swtpm::start(&sb.path("tpm-b"));
    let srv = Server::start_with_tpm(&sb, &[], Some(&b));
    sb.server_on(
        &b,
        &["drsk", "init", "--dir", "srv", "--ek-ca", "ek-ca.pem"],
    )
    .ok();

    let img = sb.luks_image("disk.img", 2);
    let image = img.path.to_str().unwrap();
    let a = Swtpm::start(&sb.path("tpm-a"));
    let provision = ["provision", "--backup-server-key", "srv/drsk.pub"];
    let client_id = sb.provisioned_and_enrolled(&a, &provision, &img);
    join(&sb, &srv, "state", None);
    assert!(sb
        .lifeline_on(&a, &["backup", "--server", &srv.url])
        .ok()
        .stderr
        .contains("in the escrow server's custody"));
    assert!(srv.dir.join(format!("clients/{client_id}.drsk")).exists());

    // Another machine cannot claim A's DRSK as its own.
    sb.lifeline_on(
        &a,
        &["backup", "--server-key", "srv/drsk.pub", "--out", "a.dup"],
    )
    .ok();
    join(&sb, &srv, "other", Some(MACHINE_B));
    let other = client(&srv, &sb).with_credential(cred(credential(&sb, "other").trim()));
    assert_refused(
        other.post_bytes::<Value>("/v1/drsk/backup", &std::fs::read(sb.path("a.dup")).unwrap()),
        403,
        "belongs to another machine",
    );
    drop(a);

    // The replacement board: its first run files the request and answers the challenge.
    let c = Swtpm::start(&sb.path("tpm-c"));
    let restore = ["restore", "--server", &srv.url, "--device", image];
    let first = sb.lifeline_on(&c, &restore);
    first.fails(5, "is not approved yet");
    assert!(
        first
            .stderr
            .contains("proved to the server that it is genuine"),
        "{}",
        first.all()
    );
    let rows = srv.admin(&sb, &["restores", "--json"]).ok().stdout.clone();
    let row: serde_json::Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
    assert_eq!(row["client_id"], client_id.as_str());
    assert_eq!(row["state"], "pending");
    assert_eq!(row["tpm_proven"], true);
    let request = row["request"].as_str().unwrap().to_string();

    // Refusals, by hand: no EK, a wrong answer, approval before the answer, unknown client.
    let anyone = client(&srv, &sb);
    sb.lifeline_on(&c, &["srk-public", "--out", "c.srk", "--ek-out", "c.ek"])
        .ok();
    let srk = hex(&std::fs::read(sb.path("c.srk")).unwrap());
    let refused = |body: serde_json::Value, status: u16, text: &str| {
        assert_refused(
            anyone.post_json::<Value>("/v1/drsk/restore-requests", &body),
            status,
            text,
        )
    };
    refused(
        serde_json::json!({ "client_id": client_id, "srk_public": srk }),
        403,
        "requires proof of a genuine TPM",
    );
    refused(
        serde_json::json!({ "client_id": "ab".repeat(32), "srk_public": srk }),
        404,
        "no DRSK in custody",
    );
    let ek = std::fs::read_to_string(sb.path("c.ek")).unwrap();
    let field = |name: &str| {
        ek.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap()
            .to_string()
    };
    let answer = anyone
        .post_json::<Value>(
            "/v1/drsk/restore-requests",
            &serde_json::json!({ "client_id": client_id, "srk_public": srk,
                "ek_public": field("public"), "ek_certificate": field("certificate") }),
        )
        .unwrap();
    assert_eq!(answer["state"], "challenged");
    let second = answer["request"].as_str().unwrap().to_string();
    srv.admin(&sb, &["approve-restore", &second])
        .fails(1, "waits for the machine's genuine-TPM proof");
    srv.admin(&sb, &["approve-restore", &request])
        .fails(5, "no restore request");
    let forged = format!("lifeline-tpm-proof v1\nsecret: {}\n", "00".repeat(32));
    assert_refused(
        anyone.post_json::<Value>(
            &format!("/v1/drsk/restore-requests/{second}/proof"),
            &serde_json::json!({ "proof": forged }),
        ),
        403,
        "does not match the challenge",
    );

    // The real client again: a new challenge, answered; alice approves; C restores and unseals.
    sb.lifeline_on(&c, &restore).fails(5, "is not approved yet");
    let rows = srv.admin(&sb, &["restores", "--json"]).ok().stdout.clone();
    let row: serde_json::Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
    assert_eq!(row["state"], "pending");
    // Approved in the web console, which shows that the new TPM proved genuine.
    let browser = crate::support::browser::Browser::start(&sb, &sb.path("srv/tls/ca.pem"));
    browser.sign_in(&srv.url, &srv.admin);
    browser.submit("#restores tbody a");
    assert_eq!(browser.text("#genuine"), "yes");
    browser.screenshot("console-restore");
    browser.submit("#approve-restore");
    assert!(
        browser.text("main").contains("Approved."),
        "{}",
        browser.text("main")
    );
    assert_eq!(browser.text("#state"), "approved");
    let restored = sb
        .lifeline_on(&c, &[&restore[..], &["--persist"]].concat())
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(restored, client_id);
    sb.lifeline_on(&c, &["unseal-check", image]).ok();
    sb.server(&["audit", "verify", "--dir", "srv"]).ok();

    // Health names the server's TPM: reachable, then gone.
    let health = |expect: u16| -> Value {
        match client(&srv, &sb).get_json::<Value>("/v1/health") {
            Ok(v) if expect == 200 => v,
            Err(FetchError::Refused { status, reason }) if status == expect => {
                serde_json::json!({ "reason": reason })
            }
            other => panic!("health: expected {expect}: {other:?}"),
        }
    };
    assert_eq!(
        health(200),
        serde_json::json!({"storage": "ok", "tpm": "ok"})
    );
    drop(b);
    let down = health(503);
    assert!(down["reason"].as_str().unwrap().contains("TPM"), "{down}");
}

#[test]
fn restore_requests_and_approvals_expire_and_can_be_deleted() {
    use crate::support::swtpm::Swtpm;
    let sb = Sandbox::new();
    let b = Swtpm::start(&sb.path("tpm-b"));
    let srv = Server::start_with_tpm(&sb, &[("restore_valid_for", "\"3s\"")], Some(&b));
    sb.server_on(&b, &["drsk", "init", "--dir", "srv"]).ok();
    let img = sb.luks_image("disk.img", 2);
    let image = img.path.to_str().unwrap();
    let a = Swtpm::start(&sb.path("tpm-a"));
    sb.lifeline_on(&a, &["provision", "--backup-server-key", "srv/drsk.pub"])
        .ok();
    sb.lifeline_on(
        &a,
        &[
            "enroll",
            image,
            "--key-file",
            img.key_file.to_str().unwrap(),
        ],
    )
    .ok();
    join(&sb, &srv, "state", None);
    sb.lifeline_on(&a, &["backup", "--server", &srv.url]).ok();
    drop(a);

    let c = Swtpm::start(&sb.path("tpm-c"));
    let restore = ["restore", "--server", &srv.url, "--device", image];
    let rows = |sb: &Sandbox| -> Vec<serde_json::Value> {
        srv.admin(sb, &["restores", "--json"])
            .ok()
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Not approved in time: the request expires and cannot be approved any more.
    sb.lifeline_on(&c, &restore).fails(5, "is not approved yet");
    let row = rows(&sb).remove(0);
    assert_eq!(row["state"], "pending");
    assert!(row["expires"].as_i64().unwrap() > row["created"].as_i64().unwrap());
    std::thread::sleep(Duration::from_secs(4));
    let row = rows(&sb).remove(0);
    assert_eq!(row["state"], "expired");
    let request = row["request"].as_str().unwrap().to_string();
    srv.admin(&sb, &["approve-restore", &request])
        .fails(5, "expired at");
    // An administrator withdraws it.
    srv.admin(&sb, &["delete-restore", &request]).ok();
    assert!(rows(&sb).is_empty());
    srv.admin(&sb, &["delete-restore", &request])
        .fails(5, "no restore request");

    // Approved, but not fetched in time: the approval expires too; the next attempt asks anew.
    sb.lifeline_on(&c, &restore).fails(5, "is not approved yet");
    let request = rows(&sb).remove(0)["request"].as_str().unwrap().to_string();
    srv.admin(&sb, &["approve-restore", &request]).ok();
    std::thread::sleep(Duration::from_secs(4));
    sb.lifeline_on(&c, &restore).fails(5, "is not approved yet");
    let row = rows(&sb).remove(0);
    assert_ne!(
        row["request"],
        request.as_str(),
        "a new request replaced it"
    );
    assert_eq!(row["state"], "pending");
    sb.server(&["audit", "verify", "--dir", "srv"]).ok();
}

#[test]
fn two_servers_keep_the_drsk_each_in_its_own_tpm_and_either_restores_it() {
    use crate::support::swtpm::Swtpm;
    // The machine and server 1 here; server 2 elsewhere, with its own TPM.
    let sb = Sandbox::new();
    let sb2 = Sandbox::new();
    let b1 = Swtpm::start(&sb.path("tpm-b"));
    let b2 = Swtpm::start(&sb2.path("tpm-b"));
    let srv1 = Server::start_with_tpm(&sb, &[], Some(&b1));
    let srv2 = Server::start_with_tpm(&sb2, &[], Some(&b2));
    sb.server_on(&b1, &["drsk", "init", "--dir", "srv"]).ok();
    sb2.server_on(&b2, &["drsk", "init", "--dir", "srv"]).ok();
    std::fs::copy(sb2.path("srv/drsk.pub"), sb.path("srv2-drsk.pub")).unwrap();
    std::fs::copy(sb2.path("srv/tls/ca.pem"), sb.path("srv2-ca.pem")).unwrap();

    let img = sb.luks_image("disk.img", 2);
    let image = img.path.to_str().unwrap();
    let a = Swtpm::start(&sb.path("tpm-a"));
    let provision = [
        "provision",
        "--backup-server-key",
        "srv/drsk.pub",
        "--backup-server-key",
        "srv2-drsk.pub",
    ];
    let client_id = sb.provisioned_and_enrolled(&a, &provision, &img);
    // A machine is joined to one server at a time: backed up to server 1, then joined to
    // server 2 (which replaces the server in its state) and backed up there too.
    join(&sb, &srv1, "state", None);
    sb.lifeline_on(&a, &["backup", "--server", &srv1.url]).ok();
    let token = srv2.token(&sb2);
    let join2 = [
        "join",
        "--server",
        &srv2.url,
        "--ca",
        "srv2-ca.pem",
        "--token",
        &token,
    ];
    sb.lifeline_on(&a, &join2).ok();
    // lifeline status asks the joined server, and knows server 1's backup as recorded here.
    let status = |expect: &[&str]| {
        let run = sb.lifeline_on(&a, &["status", image]);
        run.fails(10, "problem"); // nothing is escrowed in these servers
        for line in expect {
            assert!(run.stdout.contains(line), "{line}: {}", run.all());
        }
    };
    status(&["(the joined server): missing", ": backed up 20"]);
    sb.lifeline_on(&a, &["backup", "--server", &srv2.url]).ok();
    status(&["(the joined server): in custody", ": backed up 20"]);
    std::fs::remove_file(sb.path("state/drsk-backups")).unwrap();
    status(&["the DRSK is not backed up to the server whose key is"]);
    let custody = |srv: &Server| std::fs::read(srv.dir.join(format!("clients/{client_id}.drsk")));
    let (in1, in2) = (custody(&srv1).unwrap(), custody(&srv2).unwrap());
    assert_ne!(
        in1, in2,
        "each server holds the DRSK wrapped by its own TPM"
    );
    drop(a);

    // Server 1 and its TPM are gone; the replacement board restores from server 2.
    drop(srv1);
    drop(b1);
    let c = Swtpm::start(&sb.path("tpm-c"));
    let restore = ["restore", "--server", &srv2.url, "--device", image];
    sb.lifeline_on(&c, &restore).fails(5, "is not approved yet");
    let rows = srv2
        .admin(&sb2, &["restores", "--json"])
        .ok()
        .stdout
        .clone();
    let row: Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
    assert_eq!(row["client_id"], client_id.as_str());
    srv2.admin(&sb2, &["approve-restore", row["request"].as_str().unwrap()])
        .ok();
    let restored = sb
        .lifeline_on(&c, &[&restore[..], &["--persist"]].concat())
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(restored, client_id);
    sb.lifeline_on(&c, &["unseal-check", image]).ok();
}

#[test]
fn deleting_the_newest_audit_entries_shows_against_the_audit_stream() {
    let sb = Sandbox::new();
    let mut srv = Server::start(&sb, &[("audit_stream", "\"audit.jsonl\"")]);
    join(&sb, &srv, "a", None);
    join(&sb, &srv, "b", Some(MACHINE_B));
    let img = sb.luks_image("disk.img", 2);
    escrow(&sb, &srv, "a", &img).ok();
    srv.kill();
    let verify = [
        "audit",
        "verify",
        "--dir",
        "srv",
        "--stream",
        "srv/audit.jsonl",
    ];
    assert!(sb
        .server(&verify)
        .ok()
        .stderr
        .contains("is in the database unchanged"));
    srv.keep_database();
    let newest: i64 = srv.rows("SELECT MAX(seq) FROM audit")[0][0]
        .parse()
        .unwrap();
    assert!(newest >= 4, "{newest} entries");
    for (sql, said) in [
        (
            format!("DELETE FROM audit WHERE seq = {newest}"),
            format!("entry {newest} is in the audit stream but not in the database"),
        ),
        (
            format!("DELETE FROM audit WHERE seq > {}", newest - 3),
            format!("3 entries ({} to {newest})", newest - 2),
        ),
        (
            // Entry 1 (the administrator added before serving) was never streamed.
            "DELETE FROM audit".to_string(),
            format!("{} entries (2 to {newest})", newest - 1),
        ),
    ] {
        srv.reset_database();
        srv.execute(&sql);
        // The chain alone cannot tell: what is left is a whole chain.
        sb.server(&["audit", "verify", "--dir", "srv"]).ok();
        sb.server(&verify).fails(4, &said);
    }
    // The stream can be a journal export, with other lines around ours.
    srv.reset_database();
    let lines = std::fs::read_to_string(sb.path("srv/audit.jsonl")).unwrap();
    let journal: String = lines
        .lines()
        .map(|l| format!("lifeline-server: listening\nDec 01 lifeline-server[42]: {l}\n"))
        .collect();
    sb.write("journal.txt", journal);
    sb.server(&["audit", "verify", "--dir", "srv", "--stream", "journal.txt"])
        .ok();
    sb.write("empty.txt", "nothing here\n");
    sb.server(&["audit", "verify", "--dir", "srv", "--stream", "empty.txt"])
        .fails(2, "holds no audit entries");
}
