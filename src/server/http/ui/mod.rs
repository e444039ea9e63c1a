//! The web console under `/ui/`: server-rendered pages for the helpdesk, no JavaScript.
//!
//! - Who may use it: the same administrators, from the same `admin_networks`, as the API. They
//!   sign in with their administrator credential; a session is a random ID in a cookie
//!   (`__Host-lifeline`: `Secure`, `HttpOnly`, `SameSite=Strict`, path `/`) that the server keeps
//!   in memory for [`SESSION_FOR`], and sign-out forgets it. A restart signs everyone out.
//! - Forgery: every form carries the session's CSRF token, checked before anything is done, and
//!   every POST must come from this origin (`Sec-Fetch-Site`, `Origin`) — sign-in included.
//! - Every page is sent with a Content-Security-Policy that allows only this server's style
//!   sheet and forms posting back to it, and is never cached.
//! - Sign-ins, refused ones too, are audited; refused ones are limited per address.
//!
//! The pages do what the admin API does, through the same functions (`super::admin`).

mod page;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{admin, peer, with_db, ApiError, Shared};
use crate::api;
use crate::secret::{Credential, Passphrase, ShareText};
use crate::server::config::AuthorityMode;
use page::{esc, facts, link, notice, seg, table, time, Who};

/// How long a console session lasts from sign-in.
pub const SESSION_FOR: Duration = Duration::from_secs(30 * 60);
const COOKIE: &str = "__Host-lifeline";
/// Refused sign-ins allowed per address and minute.
const SIGN_INS_PER_MINUTE: u32 = 5;
const STYLE: &str = include_str!("style.css");
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The console's sessions, in memory, by the SHA-256 of their ID.
#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<Vec<u8>, Session>>,
}

#[derive(Clone)]
struct Session {
    admin: String,
    csrf: String,
    ends: Instant,
}

impl Sessions {
    fn start(&self, admin: &str) -> Result<(Zeroizing<String>, Session), ApiError> {
        let id = super::new_secret(32)?;
        let session = Session {
            admin: admin.to_string(),
            csrf: super::new_secret(16)?.to_string(),
            ends: Instant::now() + SESSION_FOR,
        };
        let mut all = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, s| s.ends > Instant::now());
        all.insert(crate::server::store::sha256(id.as_bytes()), session.clone());
        Ok((id, session))
    }

    fn find(&self, id: &str) -> Option<Session> {
        let mut all = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let key = crate::server::store::sha256(id.as_bytes());
        match all.get(&key) {
            Some(s) if s.ends > Instant::now() => Some(s.clone()),
            Some(_) => {
                all.remove(&key);
                None
            }
            None => None,
        }
    }

    fn end(&self, id: &str) {
        let mut all = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        all.remove(&crate::server::store::sha256(id.as_bytes()));
    }
}

/// An HTML answer.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A page saying what went wrong, with the way back.
fn problem(status: StatusCode, who: Option<&Who<'_>>, what: &str, back: Option<&str>) -> Response {
    let mut body = notice("error", &esc(what));
    if let Some(back) = back {
        body.push_str(&format!("<p>{}</p>", link(back, "Back")));
    }
    let title = status.canonical_reason().unwrap_or("Refused");
    html(status, page::page(title, who, &body))
}

/// The console's failures are pages.
struct Page(Box<Response>);

impl Page {
    fn of(response: Response) -> Page {
        Page(Box::new(response))
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A signed-in administrator, from an administrator network, with their session.
struct Signed {
    session: Session,
    id: Zeroizing<String>,
}

impl Signed {
    fn who(&self) -> Who<'_> {
        Who {
            admin: &self.session.admin,
            csrf: &self.session.csrf,
        }
    }

    /// The form's CSRF token must be this session's.
    fn check(&self, csrf: &str) -> Result<(), Page> {
        if crate::secret::ct_eq(csrf.as_bytes(), self.session.csrf.as_bytes()) {
            return Ok(());
        }
        Err(Page::of(problem(
            StatusCode::FORBIDDEN,
            Some(&self.who()),
            "This form is stale or was not sent from the console (its CSRF token does not match this session). Nothing was done; open the page again.",
            Some("/ui/"),
        )))
    }

    fn problem(&self, e: ApiError, back: &str) -> Page {
        Page::of(problem(e.0, Some(&self.who()), &e.1, Some(back)))
    }
}

/// Only administrator networks reach any console page.
fn admin_network(parts: &Parts, s: &Shared) -> Result<(), Page> {
    let from = peer(parts).map_err(|e| Page::of(problem(e.0, None, &e.1, None)))?;
    if s.config.is_admin_address(from.ip()) {
        return Ok(());
    }
    Err(Page::of(problem(
        StatusCode::FORBIDDEN,
        None,
        &format!("{} is not in an administrator network.", from.ip()),
        None,
    )))
}

fn session_cookie(parts: &Parts) -> Option<Zeroizing<String>> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(|v| Zeroizing::new(v.to_string()))
}

impl FromRequestParts<Shared> for Signed {
    type Rejection = Page;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Self, Page> {
        admin_network(parts, s)?;
        let found = session_cookie(parts).and_then(|id| Some((s.sessions.find(&id)?, id)));
        match found {
            Some((session, id)) => {
                super::observe::Slot::actor(parts, format!("admin {} (console)", session.admin));
                Ok(Signed { session, id })
            }
            // Looking: off to sign in. Doing: refused, never done.
            None if parts.method == Method::GET => {
                Err(Page::of(Redirect::to("/ui/sign-in").into_response()))
            }
            None => Err(Page::of(problem(
                StatusCode::UNAUTHORIZED,
                None,
                "You are signed out (or your session ended). Nothing was done; sign in again.",
                Some("/ui/sign-in"),
            ))),
        }
    }
}

/// Every console answer: never cached, never framed, only this server's style sheet; and a
/// POST from anywhere but this origin is refused before any handler runs.
async fn guard(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let cross_site = request.method() == Method::POST && {
        let h = request.headers();
        let fetch_site = h.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        // HTTP/2 names the authority in the URI, HTTP/1.1 in Host.
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| h.get(header::HOST).and_then(|v| v.to_str().ok()));
        fetch_site.is_some_and(|site| site != "same-origin")
            || origin.is_some_and(|o| host.is_none_or(|host| o != format!("https://{host}")))
    };
    let mut response = match cross_site {
        true => problem(
            StatusCode::FORBIDDEN,
            None,
            "This form was sent from another site. Nothing was done.",
            None,
        ),
        false => next.run(request).await,
    };
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not no-referrer: with it, browsers send `Origin: null` even from this origin.
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(queue))
        .route("/ui/style.css", get(style))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/machines", get(machines))
        .route("/ui/machines/{id}", get(machine))
        .route("/ui/packets/{id}/retire", post(retire))
        .route("/ui/requests/{id}", get(request))
        .route("/ui/requests/{id}/approve", post(approve))
        .route("/ui/requests/{id}/share", post(share))
        .route("/ui/restores/{id}", get(restore))
        .route("/ui/restores/{id}/approve", post(approve_restore))
        .route("/ui/audit", get(audit))
        .layer(axum::middleware::from_fn(guard))
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

fn sign_in_form(message: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(m) = message {
        body.push_str(&notice("error", &esc(m)));
    }
    body.push_str(
        "<form class=\"card\" method=\"post\" action=\"/ui/sign-in\">\
         <label for=\"credential\">Administrator credential</label>\
         <input id=\"credential\" name=\"credential\" type=\"password\" autocomplete=\"off\" required autofocus>\
         <p class=\"hint\">The credential <code>lifeline-server admin add</code> printed for you.</p>\
         <button id=\"sign-in\">Sign in</button></form>",
    );
    page::page("Sign in", None, &body)
}

async fn sign_in_page(State(s): State<Shared>, parts: Parts) -> Result<Response, Page> {
    admin_network(&parts, &s)?;
    Ok(html(StatusCode::OK, sign_in_form(None)))
}

#[derive(Deserialize)]
struct SignInForm {
    credential: Credential,
}

async fn sign_in(
    State(s): State<Shared>,
    parts: Parts,
    Form(form): Form<SignInForm>,
) -> Result<Response, Page> {
    admin_network(&parts, &s)?;
    let from = peer(&parts).map_err(|e| Page::of(problem(e.0, None, &e.1, None)))?;
    // Refused sign-ins are counted per address; past the limit, nothing is even looked up.
    let limited = format!("ui sign-in {}", from.ip());
    if s.limits.exhausted(&limited, SIGN_INS_PER_MINUTE) {
        return Ok(problem(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            "Too many refused sign-ins from this address; wait a minute.",
            None,
        ));
    }
    let found = with_db(&s, move |db| {
        // expose_secret: looked up by hash.
        db.admin_by_credential(form.credential.expose_secret())
            .map_err(Into::into)
    })
    .await
    .map_err(|e| Page::of(problem(e.0, None, &e.1, None)))?;
    let Some(admin) = found else {
        s.limits.allow(&limited, SIGN_INS_PER_MINUTE);
        super::refused_credential(&s, from.ip(), "ui-sign-in-refused").await;
        return Ok(html(
            StatusCode::UNAUTHORIZED,
            sign_in_form(Some("That is not an administrator credential.")),
        ));
    };
    let (id, session) = s
        .sessions
        .start(&admin)
        .map_err(|e| Page::of(problem(e.0, None, &e.1, None)))?;
    let name = session.admin.clone();
    with_db(&s, move |db| {
        db.audit_event(&name, "ui-sign-in", "").map_err(Into::into)
    })
    .await
    .map_err(|e| Page::of(problem(e.0, None, &e.1, None)))?;
    let cookie = format!(
        "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        id.as_str(),
        SESSION_FOR.as_secs()
    );
    let mut response = Redirect::to("/ui/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|_| {
            Page::of(problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                "bad cookie",
                None,
            ))
        })?,
    );
    Ok(response)
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn sign_out(
    State(s): State<Shared>,
    me: Signed,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Page> {
    me.check(&form.csrf)?;
    s.sessions.end(&me.id);
    let mut response = Redirect::to("/ui/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-lifeline=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
}

/// The queue: waiting recovery and restore requests; a search finds any request by recovery
/// (restore) ID, request ID or host.
async fn queue(
    State(s): State<Shared>,
    me: Signed,
    Query(search): Query<Search>,
) -> Result<Response, Page> {
    let q = search.q.trim().to_ascii_lowercase();
    let matches = |fields: &[&str]| fields.iter().any(|f| f.to_ascii_lowercase() == q);
    let requests = admin::request_rows(&s)
        .await
        .map_err(|e| me.problem(e, "/ui/"))?;
    let restores = admin::restore_rows(&s)
        .await
        .map_err(|e| me.problem(e, "/ui/"))?;
    let requests: Vec<Vec<String>> = requests
        .iter()
        .rev()
        .filter(|r| match q.is_empty() {
            true => r.state == "pending",
            false => matches(&[&r.recovery_id, &r.request, &r.host]),
        })
        .map(|r| {
            vec![
                link(&format!("/ui/requests/{}", seg(&r.request)), &r.recovery_id),
                esc(&r.host),
                format!("<code>{}</code>", esc(&r.volume_uuid)),
                time(r.created),
                esc(&r.state),
            ]
        })
        .collect();
    let restores: Vec<Vec<String>> = restores
        .iter()
        .rev()
        .filter(|r| match q.is_empty() {
            true => r.state == "pending" || r.state == "challenged",
            false => matches(&[&r.restore_id, &r.request, r.host.as_deref().unwrap_or("")]),
        })
        .map(|r| {
            vec![
                link(&format!("/ui/restores/{}", seg(&r.request)), &r.restore_id),
                esc(r.host.as_deref().unwrap_or("—")),
                time(r.created),
                esc(&r.state),
                esc(if r.tpm_proven { "yes" } else { "no" }),
            ]
        })
        .collect();
    let what = match q.is_empty() {
        true => "waiting".to_string(),
        false => format!("matching “{}”", esc(search.q.trim())),
    };
    let body = format!(
        "<form class=\"search\" method=\"get\" action=\"/ui/\">\
         <label for=\"q\">Recovery ID, restore ID or host name</label>\
         <input id=\"q\" name=\"q\" value=\"{}\" placeholder=\"3d12-2535\" autofocus>\
         <button id=\"search\">Find</button></form>\
         <h2>Recovery requests {what}</h2>{}<h2>DRSK restore requests {what}</h2>{}",
        esc(search.q.trim()),
        table(
            "requests",
            &["Recovery ID", "Host", "Volume", "Requested", "State"],
            &requests,
            "None."
        ),
        table(
            "restores",
            &[
                "Restore ID",
                "Host",
                "Requested",
                "State",
                "TPM proved genuine"
            ],
            &restores,
            "None."
        ),
    );
    Ok(html(
        StatusCode::OK,
        page::page("Queue", Some(&me.who()), &body),
    ))
}

async fn machines(State(s): State<Shared>, me: Signed) -> Result<Response, Page> {
    let rows = admin::machine_rows(&s)
        .await
        .map_err(|e| me.problem(e, "/ui/"))?;
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|m| {
            vec![
                link(&format!("/ui/machines/{}", seg(&m.machine)), &m.host),
                format!("<code>{}</code>", esc(&m.machine_id)),
                time(m.created),
                m.packets.to_string(),
                m.last_report.map(time).unwrap_or_else(|| "-".into()),
                esc(&m.health),
            ]
        })
        .collect();
    let body = table(
        "machines",
        &[
            "Host",
            "Machine ID",
            "Joined",
            "Escrow packets",
            "Last report",
            "Health",
        ],
        &rows,
        "No machine has joined yet.",
    );
    Ok(html(
        StatusCode::OK,
        page::page("Machines", Some(&me.who()), &body),
    ))
}

/// A machine: its IDs, its escrow packets (to retire), its requests.
async fn machine(
    State(s): State<Shared>,
    me: Signed,
    Path(id): Path<String>,
) -> Result<Response, Page> {
    let back = "/ui/machines";
    let machines = admin::machine_rows(&s)
        .await
        .map_err(|e| me.problem(e, back))?;
    let m = machines.iter().find(|m| m.machine == id).ok_or_else(|| {
        Page::of(problem(
            StatusCode::NOT_FOUND,
            Some(&me.who()),
            &format!("No machine {id}."),
            Some(back),
        ))
    })?;
    let packets = admin::packet_rows(&s)
        .await
        .map_err(|e| me.problem(e, back))?;
    let requests = admin::request_rows(&s)
        .await
        .map_err(|e| me.problem(e, back))?;
    let retire_form = |packet: &str, action: &str, label: &str, confirm: bool| {
        let check = match confirm {
            true => "<label class=\"confirm\"><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> sure</label>",
            false => "",
        };
        format!(
            "<form class=\"inline\" method=\"post\" action=\"/ui/packets/{}/retire\">{}\
             <input type=\"hidden\" name=\"action\" value=\"{action}\">\
             <input type=\"hidden\" name=\"machine\" value=\"{}\">{check}<button>{label}</button></form>",
            seg(packet),
            page::csrf_field(&me.session.csrf),
            esc(&m.machine),
        )
    };
    let packet_rows: Vec<Vec<String>> = packets
        .iter()
        .filter(|p| p.machine == m.machine)
        .rev()
        .map(|p| {
            let actions = match p.obsolete {
                true => retire_form(&p.packet, "delete", "Delete", true),
                false => format!(
                    "{}{}",
                    retire_form(&p.packet, "obsolete", "Mark obsolete", false),
                    retire_form(&p.packet, "delete", "Delete", true)
                ),
            };
            vec![
                format!("<code>{}</code>", esc(&p.packet)),
                format!("<code>{}</code>", esc(&p.volume_uuid)),
                time(p.created),
                esc(if p.obsolete { "obsolete" } else { "in use" }),
                actions,
            ]
        })
        .collect();
    let request_rows: Vec<Vec<String>> = requests
        .iter()
        .filter(|r| r.machine_id == m.machine_id)
        .rev()
        .map(|r| {
            vec![
                link(&format!("/ui/requests/{}", seg(&r.request)), &r.recovery_id),
                format!("<code>{}</code>", esc(&r.volume_uuid)),
                time(r.created),
                esc(&r.state),
            ]
        })
        .collect();
    let body = format!(
        "{}<h2>Escrow packets</h2>{}<h2>Recovery requests</h2>{}",
        facts(&[
            ("Host", esc(&m.host)),
            ("Machine ID", format!("<code>{}</code>", esc(&m.machine_id))),
            (
                "Client ID (DRSK)",
                esc(m.client_id.as_deref().unwrap_or("—"))
            ),
            ("Joined", time(m.created)),
        ]),
        table(
            "packets",
            &["Packet", "Volume", "Escrowed", "State", ""],
            &packet_rows,
            "No escrow packets."
        ),
        table(
            "machine-requests",
            &["Recovery ID", "Volume", "Requested", "State"],
            &request_rows,
            "No recovery requests."
        ),
    );
    Ok(html(
        StatusCode::OK,
        page::page(&m.host, Some(&me.who()), &body),
    ))
}

#[derive(Deserialize)]
struct RetireForm {
    csrf: String,
    action: String,
    machine: String,
    #[serde(default)]
    confirm: String,
}

async fn retire(
    State(s): State<Shared>,
    me: Signed,
    Path(id): Path<String>,
    Form(form): Form<RetireForm>,
) -> Result<Response, Page> {
    me.check(&form.csrf)?;
    let back = format!("/ui/machines/{}", seg(&form.machine));
    let delete = match form.action.as_str() {
        "obsolete" => false,
        "delete" if form.confirm == "yes" => true,
        "delete" => {
            return Err(Page::of(problem(
                StatusCode::BAD_REQUEST,
                Some(&me.who()),
                "Tick “sure” to delete a packet.",
                Some(&back),
            )))
        }
        _ => {
            return Err(Page::of(problem(
                StatusCode::BAD_REQUEST,
                Some(&me.who()),
                "Unknown action.",
                Some(&back),
            )))
        }
    };
    let _done = admin::retire(s.clone(), me.session.admin.clone(), id, delete)
        .await
        .map_err(|e| me.problem(e, &back))?;
    Ok(Redirect::to(&back).into_response())
}

/// Finds a recovery request by ID among the listing.
async fn find_request(
    s: &Shared,
    me: &Signed,
    id: &str,
) -> Result<(api::RequestRow, Option<api::MachineRow>), Page> {
    let rows = admin::request_rows(s)
        .await
        .map_err(|e| me.problem(e, "/ui/"))?;
    let row = rows.into_iter().find(|r| r.request == id).ok_or_else(|| {
        Page::of(problem(
            StatusCode::NOT_FOUND,
            Some(&me.who()),
            &format!("No recovery request {id}."),
            Some("/ui/"),
        ))
    })?;
    let machines = admin::machine_rows(s)
        .await
        .map_err(|e| me.problem(e, "/ui/"))?;
    let machine = machines
        .into_iter()
        .find(|m| m.machine_id == row.machine_id);
    Ok((row, machine))
}

fn request_facts(r: &api::RequestRow, m: Option<&api::MachineRow>) -> String {
    let host = match m {
        Some(m) => link(&format!("/ui/machines/{}", seg(&m.machine)), &r.host),
        None => esc(&r.host),
    };
    facts(&[
        (
            "Recovery ID",
            format!("<span class=\"rid\">{}</span>", esc(&r.recovery_id)),
        ),
        ("Host", host),
        ("Volume", format!("<code>{}</code>", esc(&r.volume_uuid))),
        ("Machine ID", format!("<code>{}</code>", esc(&r.machine_id))),
        ("Requested", time(r.created)),
        (
            "State",
            format!("<span id=\"state\">{}</span>", esc(&r.state)),
        ),
    ])
}

/// A recovery request, and how to approve it.
async fn request(
    State(s): State<Shared>,
    me: Signed,
    Path(id): Path<String>,
) -> Result<Response, Page> {
    let (r, m) = find_request(&s, &me, &id).await?;
    let mut body = request_facts(&r, m.as_ref());
    let action = format!("/ui/requests/{}", seg(&r.request));
    match (r.state.as_str(), s.config.authority) {
        ("pending", AuthorityMode::Server) => body.push_str(&format!(
            "<div class=\"approve\"><form class=\"card\" method=\"post\" action=\"{action}/approve\">{csrf}\
             <h2>Approve with the administrator passphrase</h2>\
             <label for=\"passphrase\">Administrator passphrase</label>\
             <input id=\"passphrase\" name=\"passphrase\" type=\"password\" autocomplete=\"off\" required>\
             <button id=\"approve\">Approve and show the one-time password</button></form>\
             <form class=\"card\" method=\"post\" action=\"{action}/share\">{csrf}\
             <h2>Or give your share (K-of-N)</h2>\
             <label for=\"share\">Your share (<code>lifeline-share v1 …</code>)</label>\
             <input id=\"share\" name=\"share\" type=\"password\" autocomplete=\"off\" required>\
             <button id=\"give-share\">Give my share</button></form></div>",
            csrf = page::csrf_field(&me.session.csrf),
        )),
        ("pending", AuthorityMode::Offline) => body.push_str(&notice(
            "note",
            &format!(
                "This server holds no authority key. On the machine that keeps the authority, run:<br>\
                 <code>lifeline-server admin approve-recovery {} --authority DIR</code>",
                esc(&r.recovery_id)
            ),
        )),
        _ => body.push_str(&notice("note", "This request is not waiting for approval.")),
    }
    Ok(html(
        StatusCode::OK,
        page::page("Recovery request", Some(&me.who()), &body),
    ))
}

/// The page that shows the one-time password, once.
fn approved_page(
    me: &Signed,
    r: &api::RequestRow,
    m: Option<&api::MachineRow>,
    a: &api::Approved,
) -> Response {
    let body = format!(
        "{}<section class=\"card wide\"><h2>Read this one-time password to the user, group by group</h2>{}\
         <p class=\"hint\">It is shown only now: this page cannot be opened again, and the server keeps no copy. \
         The user types it at the recovery prompt; the packet can be fetched until {}.</p></section>",
        request_facts(r, m),
        // expose_secret: showing it once, to be read out, is this page's purpose.
        page::otp(a.otp.expose_secret()),
        esc(&a.expires),
    );
    html(
        StatusCode::OK,
        page::page("Recovery approved", Some(&me.who()), &body),
    )
}

#[derive(Deserialize)]
struct ApproveForm {
    csrf: String,
    passphrase: Passphrase,
}

async fn approve(
    State(s): State<Shared>,
    me: Signed,
    Path(id): Path<String>,
    Form(form): Form<ApproveForm>,
) -> Result<Response, Page> {
    me.check(&form.csrf)?;
    let back = format!("/ui/requests/{}", seg(&id));
    let approved = admin::approve_with(
        &s,
        me.session.admin.clone(),
        id.clone(),
        form.passphrase,
        None,
    )
    .await
    .map_err(|e| me.problem(e, &back))?;
    let (r, m) = find_request(&s, &me, &id).await?;
    Ok(approved_page(&me, &r, m.as_ref(), &approved))
}

#[derive(Deserialize)]
struct ShareForm {
    csrf: String,
    share: ShareText,
}

async fn share(
    State(s): State<Shared>,
    me: Signed,
    Path(id): Path<String>,
    Form(form): Form<ShareForm>,
) -> Result<Response, Page> {
    me.check(&form.csrf)?;
    let back = format!("/ui/requests/{}", seg(&id));
    let progress = admin::submit_share(
        &s,
        me.session.admin.clone(),
        id.clone(),
        api::Share {
            share: form.share,
            otp_groups: None,
        },
    )
    .await
    .map_err(|e| me.problem(e, &back))?;
    let (r, m) = find_request(&s, &me, &id).await?;
    if let Some(approved) = &progress.approved {
        return Ok(approved_page(&me, &r, m.as_ref(), approved));
    }
    let body = format!(
        "{}{}<p>{}</p>",
        request_facts(&r, m.as_ref()),
        notice(
            "ok",
            &format!(
                "<span id=\"progress\">Share {} of {} received</span> (from {}). {} more administrator(s) must give theirs within {}; the shares held are discarded after that.",
                progress.received,
                progress.needed,
                esc(&progress.from.join(", ")),
                progress.needed.saturating_sub(progress.received),
                esc(&humantime::format_duration(Duration::from_secs(progress.discarded_in)).to_string()),
            )
        ),
        link(&back, "Back to the request"),
    );
    Ok(html(
        StatusCode::OK,
        page::page("Share received", Some(&me.who()), &body),
    ))
}

async fn find_restore(s: &Shared, me: &Signed, id: &str) -> Result<api::RestoreRow, Page> {
    let rows = admin::restore_rows(s)
        .await
        .map_err(|e| me.problem(e, "/ui/"))?;
    rows.into_iter().find(|r| r.request == id).ok_or_else(|| {
        Page::of(problem(
            StatusCode::NOT_FOUND,
            Some(&me.who()),
            &format!("No restore request {id}."),
            Some("/ui/"),
        ))
    })
}

fn restore_facts(r: &api::RestoreRow) -> String {
    let genuine = match r.tpm_proven {
        true => "<span class=\"yes\" id=\"genuine\">yes</span>: it answered the challenge to its endorsement key, whose certificate chains to a TPM maker's CA",
        false => "<span class=\"no\" id=\"genuine\">no</span>: the server has no EK CA (ek-ca.pem), or the TPM has not answered its challenge",
    };
    facts(&[
        (
            "Restore ID",
            format!("<span class=\"rid\">{}</span>", esc(&r.restore_id)),
        ),
        ("Host", esc(r.host.as_deref().unwrap_or("—"))),
        (
            "Client ID (DRSK)",
            format!("<code>{}</code>", esc(&r.client_id)),
        ),
        ("Requested", time(r.created)),
        ("Expires", time(r.expires)),
        (
            "State",
            format!("<span id=\"state\">{}</span>", esc(&r.state)),
        ),
        ("New TPM proved genuine", genuine.to_string()),
    ])
}

async fn restore(
    State(s): State<Shared>,
    me: Signed,
    Path(id): Path<String>,
) -> Result<Response, Page> {
    let r = find_restore(&s, &me, &id).await?;
    let mut body = restore_facts(&r);
    match r.state.as_str() {
        "pending" => body.push_str(&format!(
            "<form class=\"card\" method=\"post\" action=\"/ui/restores/{}/approve\">{}\
             <p>The server's TPM re-wraps this machine's DRSK for the new TPM; only that TPM can load it.</p>\
             <button id=\"approve-restore\">Approve the restore</button></form>",
            seg(&r.request),
            page::csrf_field(&me.session.csrf)
        )),
        "challenged" => body.push_str(&notice("note", "Waiting for the new TPM to answer its challenge; it cannot be approved before.")),
        _ => body.push_str(&notice("note", "This request is not waiting for approval.")),
    }
    Ok(html(
        StatusCode::OK,
        page::page("DRSK restore request", Some(&me.who()), &body),
    ))
}

async fn approve_restore(
    State(s): State<Shared>,
    me: Signed,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Page> {
    me.check(&form.csrf)?;
    let back = format!("/ui/restores/{}", seg(&id));
    admin::restore_approval(&s, me.session.admin.clone(), id.clone())
        .await
        .map_err(|e| me.problem(e, &back))?;
    let r = find_restore(&s, &me, &id).await?;
    let body = format!(
        "{}{}",
        notice(
            "ok",
            "Approved. The machine can now run <code>lifeline restore --server</code>."
        ),
        restore_facts(&r)
    );
    Ok(html(
        StatusCode::OK,
        page::page("Restore approved", Some(&me.who()), &body),
    ))
}

/// How many entries the audit page shows.
const AUDIT_ROWS: u32 = 500;

async fn audit(State(s): State<Shared>, me: Signed) -> Result<Response, Page> {
    let (verified, rows) = with_db(&s, |db| {
        Ok((db.verify_audit()?, db.newest_audit(AUDIT_ROWS)?))
    })
    .await
    .map_err(|e| me.problem(e, "/ui/"))?;
    let verdict = match verified {
        Ok(n) => notice(
            "ok",
            &format!("<span id=\"verified\">The hash chain is intact: {n} entries.</span>"),
        ),
        Err(why) => notice(
            "error",
            &format!(
                "<span id=\"verified\">The hash chain is broken: {}.</span>",
                esc(&why)
            ),
        ),
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|a| {
            vec![
                a.seq.to_string(),
                time(a.time),
                esc(&a.actor),
                esc(&a.action),
                format!("<code>{}</code>", esc(&a.subject)),
            ]
        })
        .collect();
    let body = format!(
        "{verdict}<p class=\"hint\">Newest first (at most {AUDIT_ROWS}). <code>lifeline-server audit verify --stream</code> also checks the chain against the audit stream.</p>{}",
        table("audit", &["#", "Time", "Who", "What", "Subject"], &rows, "The audit log is empty."),
    );
    Ok(html(
        StatusCode::OK,
        page::page("Audit log", Some(&me.who()), &body),
    ))
}
