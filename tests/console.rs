//! The web console in a real headless Chromium against the real server: sign in, find a
//! request by the recovery ID the user reads out, approve it, read the OTP off the page, and
//! the real `lifeline recover` opens the volume; forged, cross-site and signed-out requests
//! do nothing; other networks are refused.

use serde_json::{json, Value};

use crate::approvals::{escrow_and_request, is_otp, recover_with};
use crate::support::browser::Browser;
use crate::support::server::Server;
use crate::support::*;

/// The newest request with recovery ID `rid`, as `admin requests --json` lists it.
fn newest(sb: &Sandbox, srv: &Server, rid: &str) -> Value {
    let listed = srv
        .admin(sb, &["requests", "--recovery-id", rid, "--json"])
        .ok()
        .stdout
        .clone();
    serde_json::from_str(listed.lines().last().unwrap()).unwrap()
}

/// The state of the newest request with recovery ID `rid`.
fn state(sb: &Sandbox, srv: &Server, rid: &str) -> String {
    newest(sb, srv, rid)["state"].as_str().unwrap().to_string()
}

#[test]
fn the_helpdesk_approves_a_recovery_in_the_browser() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[]);
    let img = sb.luks_image("disk.img", 2);
    let rid = escrow_and_request(&sb, &srv, "state", &img);
    let b = Browser::start(&sb, &sb.path("srv/tls/ca.pem"));
    let ui = format!("{}/ui/", srv.url);

    b.goto(&ui);
    assert!(b.url().ends_with("/ui/sign-in"), "{}", b.url());
    b.screenshot("console-sign-in");
    b.type_into("#credential", "not-a-credential");
    b.submit("#sign-in");
    let refused = b.text("main");
    assert!(
        refused.contains("That is not an administrator credential."),
        "{refused}"
    );
    b.sign_in(&srv.url, &srv.admin);
    let cookie = b.cookie("__Host-lifeline");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["secure"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert!(b.text("#requests").contains(&rid));
    b.screenshot("console-queue");

    // The user reads out the recovery ID; the search finds their request.
    b.type_into("#q", &rid);
    b.submit("#search");
    assert_eq!(b.count("#requests tbody tr"), 1);
    b.submit("#requests tbody a");
    assert_eq!(b.text(".rid"), rid);
    let request_page = b.url();

    // A form whose CSRF token is not the session's does nothing.
    b.script(
        "document.querySelector('form[action$=\"/approve\"] input[name=csrf]').value = 'forged';\
         arguments[arguments.length - 1](0);",
        json!([]),
    );
    b.type_into("#passphrase", ADMIN_PASSPHRASE);
    b.submit("#approve");
    assert!(
        b.text("main").contains("CSRF token does not match"),
        "{}",
        b.text("main")
    );
    assert_eq!(state(&sb, &srv, &rid), "pending");

    b.goto(&request_page);
    b.type_into("#passphrase", "not the passphrase at all");
    b.submit("#approve");
    assert!(b
        .text("main")
        .contains("the administrator passphrase is wrong"));
    assert_eq!(state(&sb, &srv, &rid), "pending");

    b.goto(&request_page);
    b.screenshot("console-request");
    b.type_into("#passphrase", ADMIN_PASSPHRASE);
    b.submit("#approve");
    let otp = b
        .text("#otp")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    assert!(is_otp(&otp), "{otp}");
    b.screenshot("console-otp");
    recover_with(&sb, &srv, "state", &img, &otp);

    // Shown once: the request's page has no password any more.
    b.goto(&request_page);
    assert_eq!(b.count("#otp"), 0);
    assert!(!b.text("main").contains(&otp[..6]));
    assert_eq!(b.text("#state"), "used");

    b.submit(".facts a");
    assert!(b.url().contains("/ui/machines/"), "{}", b.url());
    assert_eq!(b.count("#packets tbody tr"), 1);
    b.screenshot("console-machine");
    b.goto(&format!("{ui}audit"));
    assert!(
        b.text("#verified").contains("intact"),
        "{}",
        b.text("#verified")
    );
    let log = b.text("#audit");
    for action in [
        "ui-sign-in-refused",
        "ui-sign-in",
        "approve-recovery",
        "recovery-used",
    ] {
        assert!(
            log.contains(action),
            "{action} not on the audit page: {log}"
        );
    }
    b.screenshot("console-audit");

    // A new request, and a page on another site that posts the approval form to the console,
    // even with the right CSRF token: the browser sends no cookie, the server refuses.
    sb.lifeline_as(
        "state",
        &["recovery", "request", img.path.to_str().unwrap()],
        None,
    )
    .ok();
    let pending = newest(&sb, &srv, &rid)["request"]
        .as_str()
        .unwrap()
        .to_string();
    b.goto(&format!("{ui}requests/{pending}"));
    let csrf = b.script(
        "arguments[arguments.length - 1](document.querySelector('input[name=csrf]').value);",
        json!([]),
    );
    let csrf = csrf.as_str().unwrap();
    let forged = format!(
        "<form method=post action='{ui}requests/{pending}/approve'>\
         <input name=csrf value='{csrf}'><input name=passphrase value='{ADMIN_PASSPHRASE}'></form>\
         <script>document.forms[0].submit()</script>"
    );
    sb.write("forged.html", forged);
    b.goto(&format!("file://{}", sb.path("forged.html").display()));
    b.wait_for_url("the forged form was not sent", |u| {
        u.starts_with("https://")
    });
    assert!(
        b.text("main").contains("Nothing was done"),
        "{}",
        b.text("main")
    );
    assert_eq!(state(&sb, &srv, &rid), "pending");

    // Signed out, the old session cookie approves nothing.
    b.goto(&ui);
    let cookie = b.cookie("__Host-lifeline");
    b.submit("header .who button");
    assert!(b.url().ends_with("/ui/sign-in"), "{}", b.url());
    b.goto(&format!("{ui}requests/{pending}"));
    assert!(b.url().ends_with("/ui/sign-in"), "{}", b.url());
    b.add_cookie(json!({
        "name": "__Host-lifeline", "value": cookie["value"], "path": "/",
        "secure": true, "httpOnly": true, "sameSite": "Strict",
    }));
    // The old approval form, rebuilt on this page (the CSP lets forms post only to the console).
    b.script(
        "const [url, csrf, passphrase, done] = arguments;\
         const f = document.createElement('form');\
         f.method = 'post'; f.action = url;\
         for (const [name, value] of Object.entries({csrf, passphrase})) {\
           const i = document.createElement('input'); i.name = name; i.value = value; f.append(i);\
         }\
         document.body.append(f); f.id = 'replayed'; done(0);",
        json!([
            format!("{ui}requests/{pending}/approve"),
            csrf,
            ADMIN_PASSPHRASE
        ]),
    );
    b.script(
        "document.getElementById('replayed').submit(); arguments[arguments.length - 1](0);",
        json!([]),
    );
    b.wait_for_url("the replayed form was not sent", |u| {
        u.ends_with("/approve")
    });
    assert!(
        b.text("main").contains("You are signed out"),
        "{}",
        b.text("main")
    );
    assert_eq!(state(&sb, &srv, &rid), "pending");
}

#[test]
fn the_console_is_refused_outside_the_administrator_networks() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, &[("admin_networks", r#"["10.0.0.0/8"]"#)]);
    let b = Browser::start(&sb, &sb.path("srv/tls/ca.pem"));
    for page in ["", "sign-in", "audit"] {
        b.goto(&format!("{}/ui/{page}", srv.url));
        assert!(
            b.text("main")
                .contains("127.0.0.1 is not in an administrator network"),
            "/ui/{page}: {}",
            b.text("main")
        );
    }
}
