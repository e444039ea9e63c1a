//! How recoveries are approved on the real server: K administrators each from their own seat,
//! and an authority kept off the server (`authority = "offline"`).

use lifeline::escrow::https::{FetchError, Https};
use lifeline::secret::Credential;
use serde_json::Value;

use crate::support::browser::Browser;
use crate::support::server::Server;
use crate::support::*;

/// The machine `state` joins, escrows `img` and asks for its recovery; returns the recovery ID.
pub fn escrow_and_request(sb: &Sandbox, srv: &Server, state: &str, img: &Image) -> String {
    srv.join(sb, &[], |args| sb.lifeline_as(state, args, None));
    let disk = img.path.to_str().unwrap();
    let key = img.key_file.to_str().unwrap();
    sb.lifeline_as(
        state,
        &["escrow", disk, "--server", &srv.url, "--key-file", key],
        None,
    )
    .ok();
    sb.lifeline_as(state, &["recovery", "request", disk], None)
        .ok()
        .stdout
        .trim()
        .to_string()
}

/// `lifeline recover` over the server with `otp`; the volume then takes the new passphrase.
pub fn recover_with(sb: &Sandbox, srv: &Server, state: &str, img: &Image, otp: &str) {
    sb.write("new.pass", "set after the approval");
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
    sb.lifeline_as(state, &args, Some(&format!("{otp}\n"))).ok();
    assert!(cryptsetup_accepts(&img.path, "set after the approval"));
}

/// The audit log as (actor, action, subject).
pub fn audit(srv: &Server) -> Vec<(String, String, String)> {
    srv.rows("SELECT actor, action, subject FROM audit ORDER BY seq")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect()
}

pub fn is_otp(text: &str) -> bool {
    text.trim().len() == 27 && text.trim().split('-').count() == 4
}

#[test]
fn k_of_n_each_administrator_submits_their_own_share() {
    let sb = Sandbox::new();
    let srv = Server::start_with(
        &sb,
        &["--shares", "2/3", "--shares-dir", "shares"],
        &[],
        None,
    );
    let bob = srv.add_admin(&sb, "bob");
    let carol = srv.add_admin(&sb, "carol");
    let img = sb.luks_image("disk.img", 2);
    let id = escrow_and_request(&sb, &srv, "state", &img);

    let first = srv.admin(
        &sb,
        &[
            "approve-recovery",
            &id,
            "--share-file",
            "shares/share-1.txt",
        ],
    );
    first.ok();
    assert_eq!(first.stdout, "", "one share approved alone");
    assert!(
        first.stderr.contains("Share 1 of 2 received") && first.stderr.contains("(from alice)"),
        "{}",
        first.stderr
    );
    // The same administrator cannot bring a second share: K seats, not K files.
    srv.admin(
        &sb,
        &[
            "approve-recovery",
            &id,
            "--share-file",
            "shares/share-2.txt",
        ],
    )
    .fails(1, "alice gave a share for this request already");
    // A share of another sharing with the same K rebuilds a wrong passphrase: all are dropped.
    sb.server(&[
        "init",
        "--dir",
        "other",
        "--shares",
        "2/2",
        "--shares-dir",
        "other-shares",
    ])
    .ok();
    srv.admin_as(
        &sb,
        &carol,
        &[
            "approve-recovery",
            &id,
            "--share-file",
            "other-shares/share-1.txt",
        ],
    )
    .fails(3, "the 2 shares held were discarded");

    srv.admin(
        &sb,
        &[
            "approve-recovery",
            &id,
            "--share-file",
            "shares/share-1.txt",
        ],
    )
    .ok();
    let last = srv.admin_as(
        &sb,
        &bob,
        &[
            "approve-recovery",
            &id,
            "--share-file",
            "shares/share-3.txt",
        ],
    );
    last.ok();
    assert!(
        last.stderr
            .contains("Share 2 of 2 received (from alice, bob): approved"),
        "{}",
        last.stderr
    );
    assert!(is_otp(&last.stdout), "{}", last.stdout);
    recover_with(&sb, &srv, "state", &img, last.stdout.trim());

    // Again, with alice's share given in the web console, which shows how far it got.
    sb.lifeline_as(
        "state",
        &["recovery", "request", img.path.to_str().unwrap()],
        None,
    )
    .ok();
    let browser = Browser::start(&sb, &sb.path("srv/tls/ca.pem"));
    browser.sign_in(&srv.url, &srv.admin);
    browser.type_into("#q", &id);
    browser.submit("#search");
    browser.submit("#requests tbody a");
    let share = std::fs::read_to_string(sb.path("shares/share-2.txt")).unwrap();
    browser.type_into("#share", share.trim());
    browser.submit("#give-share");
    assert_eq!(browser.text("#progress"), "Share 1 of 2 received");
    browser.screenshot("console-share");
    let last = srv.admin_as(
        &sb,
        &carol,
        &[
            "approve-recovery",
            &id,
            "--share-file",
            "shares/share-1.txt",
        ],
    );
    assert!(
        last.ok().stderr.contains("(from alice, carol): approved"),
        "{}",
        last.stderr
    );
    assert!(is_otp(&last.stdout), "{}", last.stdout);

    let log = audit(&srv);
    let shares: Vec<&str> = log
        .iter()
        .filter(|(_, action, _)| action == "share-submitted")
        .map(|(actor, _, _)| actor.as_str())
        .collect();
    assert_eq!(
        shares,
        ["alice", "carol", "alice", "bob", "alice", "carol"],
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|(actor, action, _)| actor == "alice+bob" && action == "approve-recovery"),
        "{log:?}"
    );
    sb.server(&["audit", "verify", "--dir", "srv"]).ok();
    // The shares never reach a file or the log.
    let db = srv.contents();
    let server_log = std::fs::read_to_string(&srv.log).unwrap();
    for i in 1..=3 {
        let share = std::fs::read_to_string(sb.path(&format!("shares/share-{i}.txt"))).unwrap();
        let hex = share.split_whitespace().last().unwrap();
        assert!(
            !db.contains(hex) && !server_log.contains(hex),
            "share {i} stored"
        );
    }
}

#[test]
fn an_offline_authority_never_reaches_the_server() {
    let sb = Sandbox::new();
    sb.write("admin.pass", format!("{ADMIN_PASSPHRASE}\n"));
    sb.server(&["init", "--dir", "auth", "--passphrase-file", "admin.pass"])
        .ok();
    let srv = Server::start_with(&sb, &["--authority-public", "auth"], &[], None);
    for secret in ["identity.age", "minisign.key"] {
        assert!(!srv.dir.join(secret).exists(), "{secret} on the server");
    }
    let toml = std::fs::read_to_string(srv.dir.join("server.toml")).unwrap();
    assert!(toml.contains("authority = \"offline\""), "{toml}");

    let img = sb.luks_image("disk.img", 2);
    let id = escrow_and_request(&sb, &srv, "state", &img);
    srv.admin(
        &sb,
        &["approve-recovery", &id, "--passphrase-file", "admin.pass"],
    )
    .fails(1, "this server holds no authority key");

    // A packet the server's authority did not sign is refused, and the request stays pending.
    let ca = std::fs::read(sb.path("srv/tls/ca.pem")).unwrap();
    let credential = std::fs::read_to_string(&srv.admin).unwrap();
    let https = Https::new(&srv.url, &ca, std::time::Duration::from_secs(30))
        .unwrap()
        .with_credential(Credential::new(zeroize::Zeroizing::new(credential)));
    let requests: Vec<Value> = srv
        .admin(&sb, &["requests", "--json"])
        .ok()
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let request = requests[0]["request"].as_str().unwrap();
    sb.server(&["init", "--dir", "other", "--passphrase-file", "admin.pass"])
        .ok();
    let foreign = sb.escrow_to("other", &img.path, &img.key_file, &[]);
    let (forged, _) = sb.issue_from("other", &foreign, &[]);
    let body = serde_json::json!({
        "recovery_packet": std::fs::read_to_string(forged).unwrap(),
        "use_token_hash": "00".repeat(32),
    });
    match https.post_json::<Value>(&format!("/v1/admin/requests/{request}/publish"), &body) {
        Err(FetchError::Refused {
            status: 422,
            reason,
        }) => {
            assert!(
                reason.contains("the recovery packet is refused"),
                "{reason}"
            )
        }
        other => panic!("a packet of another authority was published: {other:?}"),
    }

    // The console lists and shows the request, and says what to run instead of approving.
    let browser = Browser::start(&sb, &sb.path("srv/tls/ca.pem"));
    browser.sign_in(&srv.url, &srv.admin);
    browser.submit("#requests tbody a");
    assert_eq!(browser.count("#approve") + browser.count("#give-share"), 0);
    assert!(
        browser.text("main").contains(&format!(
            "lifeline-server admin approve-recovery {id} --authority DIR"
        )),
        "{}",
        browser.text("main")
    );
    drop(browser);

    let approved = srv.admin(
        &sb,
        &[
            "approve-recovery",
            &id,
            "--authority",
            "auth",
            "--passphrase-file",
            "admin.pass",
        ],
    );
    approved.ok();
    assert!(is_otp(&approved.stdout), "{}", approved.all());
    recover_with(&sb, &srv, "state", &img, approved.stdout.trim());
    let log = audit(&srv);
    for action in ["read-escrow", "publish-recovery"] {
        assert!(
            log.iter()
                .any(|(actor, a, _)| actor == "alice" && a == action),
            "{action} not audited: {log:?}"
        );
    }
    // Told it holds the authority, a server without its secret keys does not start.
    let online = toml.replace("authority = \"offline\"", "authority = \"server\"");
    std::fs::write(srv.dir.join("server.toml"), online).unwrap();
    sb.server(&["serve", "--dir", "srv"]).fails(
        1,
        "holds no authority secret keys: set authority = \"offline\"",
    );
}
