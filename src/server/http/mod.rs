//! The HTTPS API (`lifeline-server serve`). docs/SERVER.md lists the endpoints.
//!
//! Machines authenticate with the credential they got at join; administrators with theirs, and
//! only from the configured admin networks. Fetching a recovery packet and filing a recovery
//! request need no credential (a booting machine has none: its credential file is on the
//! encrypted disk); what they return is OTP-encrypted and signed, and they are audited.
//! Every database change commits (with its audit entry) before the response is sent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{json, Value};

use super::authority;
use super::config::Config;
use super::store::{self, Machine, StoreError, Stored};
use crate::escrow::EscrowPacket;
use crate::secret::Passphrase;

mod drsk;

pub struct AppState {
    pub dir: PathBuf,
    /// The server's TPM (DRSK custody), used by one request at a time.
    pub tpm: std::sync::Mutex<String>,
    pub config: Config,
    pub db: store::Db,
    pub limits: super::limits::Limits,
}

fn too_many() -> ApiError {
    ApiError(
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests; try again in a minute".into(),
    )
}

/// Every request counts against its source address.
async fn limit_address(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !s.limits.allow(
        &format!("addr {}", from.ip()),
        s.config.requests_per_minute_per_address,
    ) {
        return too_many().into_response();
    }
    next.run(request).await
}

type Shared = Arc<AppState>;

/// An API failure: a status and one line saying why.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(m) => ApiError(StatusCode::CONFLICT, m),
            StoreError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
            StoreError::NotCommitted => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            // Fail closed: nothing was committed, and the client is told so.
            StoreError::Db(e) => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("storage failed, nothing was stored: {e}"),
            ),
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Runs a database operation on the writer thread; answers once it is on disk.
async fn with_db<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&mut Connection) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    s.db.run(f).await
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

async fn machine(s: &Shared, headers: &HeaderMap) -> Result<Machine, ApiError> {
    let unauthorized = || {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "a machine credential is needed (lifeline join)".into(),
        )
    };
    let credential = bearer(headers).ok_or_else(unauthorized)?;
    let m = with_db(s, move |db| {
        store::machine_by_credential(db, &credential).map_err(Into::into)
    })
    .await?
    .ok_or_else(unauthorized)?;
    if !s.limits.allow(
        &format!("machine {}", m.id),
        s.config.requests_per_minute_per_machine,
    ) {
        return Err(too_many());
    }
    Ok(m)
}

async fn admin(s: &Shared, headers: &HeaderMap, from: SocketAddr) -> Result<String, ApiError> {
    if !s.config.is_admin_address(from.ip()) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("{} is not in an administrator network", from.ip()),
        ));
    }
    let unauthorized = || {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "an administrator credential is needed".into(),
        )
    };
    let credential = bearer(headers).ok_or_else(unauthorized)?;
    with_db(s, move |db| {
        store::admin_by_credential(db, &credential).map_err(Into::into)
    })
    .await?
    .ok_or_else(unauthorized)
}

pub fn router(state: Shared) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/authority", get(authority_keys))
        .route("/v1/join", post(join))
        .route("/v1/escrow", post(escrow))
        .route("/v1/recovery-requests", post(request_recovery))
        .route("/v1/recovery/{machine}/{volume}", get(fetch_recovery))
        .route("/v1/recovery/{packet}/used", post(recovery_used))
        .route("/v1/drsk/backup", post(drsk::backup))
        .route("/v1/drsk/restore-requests", post(drsk::request_restore))
        .route("/v1/drsk/restore-requests/{id}/proof", post(drsk::prove))
        .route("/v1/drsk/restores/{client}/{srk}", get(drsk::fetch))
        .route("/v1/admin/restores", get(drsk::list))
        .route("/v1/admin/restores/{id}/approve", post(drsk::approve))
        .route("/v1/admin/restores/{id}/delete", post(drsk::delete))
        .route("/v1/admin/enrollment-tokens", post(enrollment_token))
        .route("/v1/admin/packets", get(list_packets))
        .route("/v1/admin/requests", get(list_requests))
        .route("/v1/admin/requests/{id}/approve", post(approve))
        .route("/v1/admin/machines", get(list_machines))
        .route("/v1/admin/packets/{id}/obsolete", post(obsolete))
        .route("/v1/admin/packets/{id}/delete", post(delete))
        .route(
            "/v1/admin/packets/{id}/recovery-passphrase",
            post(show_passphrase),
        )
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_address,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// axum answers a request it rejects itself (JSON that does not parse, a body over the limit,
/// an unknown path) in plain text, or with no body at all; every error leaves as the
/// documented `{"error": …}`.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let text = match text.is_empty() {
        true => status
            .canonical_reason()
            .unwrap_or("refused")
            .to_ascii_lowercase(),
        false => text,
    };
    ApiError(status, text).into_response()
}

/// The public halves of the authority: what clients encrypt to and trust.
async fn authority_keys(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let read = |f: &str| {
        std::fs::read_to_string(s.dir.join(f))
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    };
    // The DRSK server key, when this server keeps DRSKs (lifeline backup --server needs it).
    let drsk = std::fs::read(s.dir.join("drsk.pub"))
        .ok()
        .map(|k| crate::hex::encode(&k));
    Ok(Json(json!({
        "recipient": read(authority::RECIPIENT_FILE)?.trim(),
        "minisign": read(authority::TRUST_KEY_FILE)?,
        "drsk": drsk,
    })))
}

#[derive(Deserialize)]
struct JoinRequest {
    token: String,
    machine_id: String,
    client_id: Option<String>,
    host: String,
}

fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn join(
    State(s): State<Shared>,
    Json(req): Json<JoinRequest>,
) -> Result<Json<Value>, ApiError> {
    let machine_id = crate::id::machine_id(&req.machine_id)
        .map_err(|e| bad(format!("machine_id: {e} (/etc/machine-id)")))?;
    let client_id = match req.client_id.as_deref() {
        Some(c) => Some(crate::id::client_id(c).map_err(|e| bad(format!("client_id: {e}")))?),
        None => None,
    };
    if req.host.is_empty() || req.host.len() > 255 || req.host.chars().any(char::is_control) {
        return Err(bad("host must be a host name"));
    }
    let credential = store::random_id()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        + &store::random_id()
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let m = Machine {
        id: store::random_id()
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        machine_id,
        client_id,
        host: req.host,
    };
    let (id, cred) = (m.id.clone(), credential.clone());
    with_db(&s, move |db| {
        store::join(db, &req.token, &m, &cred).map_err(|e| match e {
            StoreError::Refused(m) => ApiError(StatusCode::FORBIDDEN, m),
            other => other.into(),
        })
    })
    .await?;
    Ok(Json(json!({ "machine": id, "credential": credential })))
}

#[derive(Deserialize)]
struct EscrowQuery {
    fingerprint: String,
    #[serde(default)]
    obsolete_older: bool,
}

async fn escrow(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<EscrowQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let m = machine(&s, &headers).await?;
    if !is_hex_id(&q.fingerprint, 64) {
        return Err(bad("fingerprint must be 64 hex digits"));
    }
    let packet = EscrowPacket::parse(&body).map_err(|e| bad(e.to_string()))?;
    if packet.info.machine_id != m.machine_id {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "the packet is for another machine".into(),
        ));
    }
    let volume = packet.info.volume_uuid.clone();
    let limit = s.config.max_packets_per_machine;
    let stored = with_db(&s, move |db| {
        store::store_packet(
            db,
            &m,
            &volume,
            &q.fingerprint,
            &body,
            limit,
            q.obsolete_older,
        )
        .map_err(Into::into)
    })
    .await?;
    Ok(match stored {
        Stored::New(id) => (
            StatusCode::CREATED,
            Json(json!({ "status": "stored", "packet": id })),
        )
            .into_response(),
        Stored::AlreadyInEscrow(id) => {
            Json(json!({ "status": "already in escrow", "packet": id })).into_response()
        }
    })
}

#[derive(Deserialize)]
struct RecoveryRequest {
    /// Machine ID or client ID.
    machine: String,
    volume_uuid: String,
}

async fn request_recovery(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(req): Json<RecoveryRequest>,
) -> Result<Json<Value>, ApiError> {
    let who = format!("anonymous@{}", from.ip());
    let volume =
        crate::id::volume_uuid(&req.volume_uuid).map_err(|e| bad(format!("volume_uuid: {e}")))?;
    let asked = volume.clone();
    let (id, machine) = with_db(&s, move |db| {
        store::request_recovery(db, &req.machine, &asked, &who).map_err(Into::into)
    })
    .await?;
    Ok(Json(
        json!({ "request": id, "recovery_id": recovery_id(&machine, &volume) }),
    ))
}

async fn fetch_recovery(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path((machine, volume)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let who = format!("anonymous@{}", from.ip());
    let body = with_db(&s, move |db| {
        store::fetch_recovery(db, &machine, &volume, &who).map_err(Into::into)
    })
    .await?;
    Ok(([("content-type", "text/plain")], body).into_response())
}

#[derive(Deserialize)]
struct Used {
    use_token: String,
}

async fn recovery_used(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(packet): Path<String>,
    Json(req): Json<Used>,
) -> Result<Json<Value>, ApiError> {
    let who = format!("anonymous@{}", from.ip());
    let token = crate::hex::decode(&req.use_token).ok_or_else(|| bad("use_token is not hex"))?;
    with_db(&s, move |db| {
        store::recovery_used(db, &packet, &token, &who).map_err(Into::into)
    })
    .await?;
    Ok(Json(json!({ "status": "used" })))
}

async fn enrollment_token(
    State(s): State<Shared>,
    headers: HeaderMap,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Result<Json<Value>, ApiError> {
    let name = admin(&s, &headers, from).await?;
    let token = store::random_id()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let valid = s
        .config
        .token_valid_for()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let t = token.clone();
    with_db(&s, move |db| {
        store::add_enrollment_token(db, &name, &t, valid.as_secs() as i64).map_err(Into::into)
    })
    .await?;
    Ok(Json(
        json!({ "token": token, "valid_for": s.config.enrollment_token_valid_for }),
    ))
}

async fn list_packets(
    State(s): State<Shared>,
    headers: HeaderMap,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Result<Json<Value>, ApiError> {
    admin(&s, &headers, from).await?;
    let rows = with_db(&s, |db| store::list_packets(db).map_err(Into::into)).await?;
    Ok(Json(json!(rows
        .iter()
        .map(|p| json!({"packet": p.id, "machine": p.machine, "host": p.host, "volume_uuid": p.volume_uuid, "created": p.created, "obsolete": p.obsolete}))
        .collect::<Vec<_>>())))
}

async fn list_requests(
    State(s): State<Shared>,
    headers: HeaderMap,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Result<Json<Value>, ApiError> {
    admin(&s, &headers, from).await?;
    let rows = with_db(&s, |db| store::list_requests(db).map_err(Into::into)).await?;
    Ok(Json(json!(rows
        .iter()
        .map(|r| json!({
            "request": r.id, "recovery_id": recovery_id(&r.machine, &r.volume_uuid), "host": r.machine.host,
            "machine_id": r.machine.machine_id, "volume_uuid": r.volume_uuid, "created": r.created, "state": r.state,
        }))
        .collect::<Vec<_>>())))
}

/// The recovery ID of a machine's volume, as its boot screen shows it.
pub fn recovery_id(m: &Machine, volume_uuid: &str) -> String {
    crate::unlock::recovery_id(m.client_id.as_deref().unwrap_or(&m.machine_id), volume_uuid)
}

#[derive(Deserialize)]
struct Approve {
    /// Wiped when dropped (the request body's own buffer is not ours to wipe).
    passphrase: zeroize::Zeroizing<String>,
    otp_groups: Option<usize>,
}

async fn approve(
    State(s): State<Shared>,
    headers: HeaderMap,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    Json(req): Json<Approve>,
) -> Result<Json<Value>, ApiError> {
    let name = admin(&s, &headers, from).await?;
    let valid_for = s
        .config
        .recovery_valid_for()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let groups = req.otp_groups.unwrap_or(crate::escrow::otp::DEFAULT_GROUPS);
    let passphrase = Passphrase::from_slice(req.passphrase.as_bytes());
    drop(req);
    let (request, escrow) = with_db(&s, move |db| {
        store::packet_for_request(db, &id).map_err(Into::into)
    })
    .await?;
    // The authority's keys exist decrypted only inside this blocking task (scrypt takes a
    // second; it does not hold up the database).
    let dir = s.dir.clone();
    let issued = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let unlocked = authority::unlock(&dir, &passphrase).map_err(|e| match e {
            authority::AuthorityError::WrongPassphrase => {
                ApiError(StatusCode::FORBIDDEN, e.to_string())
            }
            other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        })?;
        unlocked
            .issue_recovery(&escrow, valid_for, groups)
            .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
    })
    .await
    .map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the approval failed".into(),
        )
    })??;
    let expires = issued
        .binding
        .expires
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (packet_id, body, request_for_db, token_hash) = (
        issued.binding.packet_id.clone(),
        issued.packet.clone(),
        request.clone(),
        issued.use_token_hash.clone(),
    );
    with_db(&s, move |db| {
        store::publish_recovery(
            db,
            &name,
            &request_for_db,
            &packet_id,
            &body,
            expires,
            &token_hash,
        )
        .map_err(Into::into)
    })
    .await?;
    // expose_secret: the OTP goes to the approving administrator once, in this response.
    Ok(Json(json!({
        "otp": issued.otp.expose_secret(),
        "packet": issued.binding.packet_id,
        "expires": humantime::format_rfc3339_seconds(issued.binding.expires).to_string(),
        "recovery_id": recovery_id(&request.machine, &request.volume_uuid),
    })))
}

async fn list_machines(
    State(s): State<Shared>,
    headers: HeaderMap,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Result<Json<Value>, ApiError> {
    admin(&s, &headers, from).await?;
    let rows = with_db(&s, |db| store::list_machines(db).map_err(Into::into)).await?;
    Ok(Json(json!(rows
        .iter()
        .map(|r| json!({
            "machine": r.machine.id, "host": r.machine.host, "machine_id": r.machine.machine_id,
            "client_id": r.machine.client_id, "created": r.created, "packets": r.packets,
        }))
        .collect::<Vec<_>>())))
}

async fn retire(
    s: Shared,
    headers: HeaderMap,
    from: SocketAddr,
    id: String,
    delete: bool,
) -> Result<Json<Value>, ApiError> {
    let name = admin(&s, &headers, from).await?;
    with_db(&s, move |db| {
        store::retire_packet(db, &name, &id, delete).map_err(Into::into)
    })
    .await?;
    Ok(Json(
        json!({ "status": if delete { "deleted" } else { "obsolete" } }),
    ))
}

async fn obsolete(
    State(s): State<Shared>,
    headers: HeaderMap,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    retire(s, headers, from, id, false).await
}

async fn delete(
    State(s): State<Shared>,
    headers: HeaderMap,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    retire(s, headers, from, id, true).await
}

#[derive(Deserialize)]
struct Unlock {
    passphrase: zeroize::Zeroizing<String>,
}

/// Decrypts an escrow packet and returns its recovery passphrase: the same controls as an
/// approval (admin network, credential, administrator passphrase), audited before it is read.
async fn show_passphrase(
    State(s): State<Shared>,
    headers: HeaderMap,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    Json(req): Json<Unlock>,
) -> Result<Json<Value>, ApiError> {
    let name = admin(&s, &headers, from).await?;
    let passphrase = Passphrase::from_slice(req.passphrase.as_bytes());
    drop(req);
    let body = with_db(&s, move |db| {
        store::read_packet_for_admin(db, &name, &id).map_err(Into::into)
    })
    .await?;
    let dir = s.dir.clone();
    let text = tokio::task::spawn_blocking(move || -> Result<Option<String>, ApiError> {
        let unlocked = authority::unlock(&dir, &passphrase).map_err(|e| match e {
            authority::AuthorityError::WrongPassphrase => {
                ApiError(StatusCode::FORBIDDEN, e.to_string())
            }
            other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        })?;
        let record = unlocked
            .open_escrow(&body)
            .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        // expose_secret: showing it to the administrator is the purpose of this endpoint.
        Ok(record
            .recovery_passphrase
            .map(|p| String::from_utf8_lossy(p.expose_secret()).into_owned()))
    })
    .await
    .map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "decryption failed".into(),
        )
    })??;
    Ok(Json(json!({ "recovery_passphrase": text })))
}

/// Serves until interrupted.
/// `tcti` names the server's TPM, which holds the DRSKs in custody.
pub fn serve(dir: PathBuf, tcti: String) -> Result<(), String> {
    let config = Config::load(&dir)?;
    let db = store::open(&dir.join("lifeline.db")).map_err(|e| e.to_string())?;
    let stream = store::AuditStream::open(&config.audit_stream, &dir)
        .map_err(|e| format!("audit_stream {}: {e}", config.audit_stream))?;
    let db = store::Db::start(db, stream).map_err(|e| e.to_string())?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(
            dir.join(&config.tls_cert),
            dir.join(&config.tls_key),
        )
        .await
        .map_err(|e| format!("TLS certificate or key: {e}"))?;
        let listen = config.listen;
        let state = Arc::new(AppState {
            dir,
            tpm: std::sync::Mutex::new(tcti),
            config,
            db,
            limits: Default::default(),
        });
        let app = router(state);
        let handle = axum_server::Handle::new();
        let shutdown = handle.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.graceful_shutdown(Some(Duration::from_secs(5)));
        });
        eprintln!("lifeline-server: listening on https://{listen}");
        let mut server = axum_server::bind_rustls(listen, tls).handle(handle);
        server
            .http_builder()
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        server
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .map_err(|e| format!("cannot serve on {listen}: {e}"))
    })
}
