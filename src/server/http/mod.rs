//! The HTTPS API (`lifeline-server serve`): the routes of `api`, by who calls them —
//! machines with their credential (`machine.rs`), anyone at boot or on a replacement machine
//! (`boot.rs`), administrators (`admin.rs`). docs/SERVER.md lists the endpoints.
//!
//! Who the caller is, is an extractor: a handler that takes [`Admin`] runs only for an
//! administrator with a valid credential from an administrator network, one that takes
//! [`Caller`] only for a joined machine, and [`Anonymous`] names everyone else for the audit.
//! Fetching a recovery packet and filing a recovery request need no credential (a booting
//! machine has none: its credential file is on the encrypted disk); what they return is
//! OTP-encrypted and signed, and they are audited. Every database change commits (with its
//! audit entry) before the response is sent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::config::Config;
use super::custody::{Custody, CustodyError};
use super::store::{self, Machine, StoreError};
use crate::api;
use crate::secret::Credential;
use crate::tpm::TssTpm;

mod admin;
mod boot;
mod machine;
mod observe;
mod ui;

pub struct AppState {
    pub dir: PathBuf,
    /// The server's TPM (DRSK custody), used by one request at a time.
    pub tpm: std::sync::Mutex<String>,
    pub config: Config,
    pub db: store::Db,
    pub limits: super::limits::Limits,
    /// Shares toward K-of-N approvals, in memory only.
    pub shares: super::shares::Board,
    /// The web console's sessions, in memory only.
    pub sessions: ui::Sessions,
    pub metrics: observe::Metrics,
}

type Shared = Arc<AppState>;

/// An API failure: a status and one line saying why.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(api::Failure { error: self.1 })).into_response()
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

impl From<CustodyError> for ApiError {
    fn from(e: CustodyError) -> Self {
        let status = match e {
            CustodyError::NotSetUp(_) | CustodyError::UnknownClient(_) => StatusCode::NOT_FOUND,
            CustodyError::Refused(_) => StatusCode::FORBIDDEN,
            CustodyError::Bad(_) => StatusCode::BAD_REQUEST,
            CustodyError::Tpm(_) | CustodyError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg.to_string())
}

fn too_many() -> ApiError {
    ApiError(
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests; try again in a minute".into(),
    )
}

/// A fresh secret of `bytes` random bytes, as hex, in wiped memory.
fn new_secret(bytes: usize) -> Result<zeroize::Zeroizing<String>, ApiError> {
    store::random_secret(bytes).map_err(internal)
}

/// Runs a database operation on the writer thread; answers once it is on disk.
async fn with_db<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&mut store::Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let result = s.db.run(f).await;
    if matches!(&result, Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, _))) {
        s.metrics.storage_error();
    }
    result
}

/// How long a request waits for the server's TPM to answer.
const TPM_WAIT: Duration = Duration::from_secs(5);

/// Runs `f` with the custody and the server's TPM, one request at a time (a TPM holds only a
/// few loaded objects), off the async threads.
async fn with_custody<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&Custody, &mut TssTpm) -> Result<T, CustodyError> + Send + 'static,
) -> Result<T, ApiError> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || {
        let tcti = s
            .tpm
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let custody = Custody::open(&s.dir)?;
        let mut tpm = TssTpm::open(&tcti, TPM_WAIT).map_err(CustodyError::from)?;
        f(&custody, &mut tpm).map_err(ApiError::from)
    })
    .await
    .map_err(|_| internal("the TPM task failed"))?
}

fn peer(parts: &Parts) -> Result<SocketAddr, ApiError> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .ok_or_else(|| internal("no peer address"))
}

fn bearer(parts: &Parts) -> Option<Credential> {
    let value = parts.headers.get("authorization")?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?;
    Some(Credential::new(zeroize::Zeroizing::new(token.to_string())))
}

/// An administrator: from an administrator network, with a valid administrator credential.
/// Holds their name, for the audit.
pub struct Admin(pub String);

impl FromRequestParts<Shared> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Self, ApiError> {
        let from = peer(parts)?;
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
        let Some(credential) = bearer(parts) else {
            observe::Slot::actor(parts, "anonymous");
            return Err(unauthorized());
        };
        let found = with_db(s, move |db| {
            // expose_secret: looked up by hash.
            db.admin_by_credential(credential.expose_secret())
                .map_err(Into::into)
        })
        .await?;
        match found {
            Some(name) => {
                observe::Slot::actor(parts, format!("admin {name}"));
                Ok(Admin(name))
            }
            None => {
                observe::Slot::actor(parts, "anonymous");
                refused_credential(s, from.ip(), "admin-credential-refused").await;
                Err(unauthorized())
            }
        }
    }
}

/// Refused administrator credentials per address and minute that are audited (every one is
/// logged): enough to see an attack in the audit log, too few to flood it.
const AUDITED_REFUSALS_PER_MINUTE: u32 = 10;

/// Audits a refused administrator credential (API or console) from `ip`.
async fn refused_credential(s: &Shared, ip: std::net::IpAddr, action: &'static str) {
    tracing::warn!(target: "lifeline_server::auth", "{action} from={ip}");
    if s.limits
        .allow(&format!("audit {action} {ip}"), AUDITED_REFUSALS_PER_MINUTE)
    {
        let actor = format!("anonymous@{ip}");
        let _ = with_db(s, move |db| {
            db.audit_event(&actor, action, "").map_err(Into::into)
        })
        .await;
    }
}

/// A joined machine, by its credential; its requests count against its own limit.
pub struct Caller(pub Machine);

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Self, ApiError> {
        let unauthorized = || {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "a machine credential is needed (lifeline join)".into(),
            )
        };
        let credential = bearer(parts).ok_or_else(unauthorized)?;
        let m = with_db(s, move |db| {
            // expose_secret: looked up by hash.
            db.machine_by_credential(credential.expose_secret())
                .map_err(Into::into)
        })
        .await?
        .ok_or_else(unauthorized)?;
        observe::Slot::actor(parts, format!("machine {}", m.id));
        if !s.limits.allow(
            &format!("machine {}", m.id),
            s.config.requests_per_minute_per_machine,
        ) {
            return Err(too_many());
        }
        Ok(Caller(m))
    }
}

/// Someone without a credential, as the audit names them: `anonymous@ADDRESS`.
pub struct Anonymous(pub String);

impl FromRequestParts<Shared> for Anonymous {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Shared) -> Result<Self, ApiError> {
        observe::Slot::actor(parts, "anonymous");
        Ok(Anonymous(format!("anonymous@{}", peer(parts)?.ip())))
    }
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

impl AppState {
    /// `restore_valid_for`, in seconds (checked when the configuration was loaded).
    fn restore_valid_for(&self) -> i64 {
        self.config.restore_valid_for().unwrap_or(0)
    }
}

/// The short ID a user reads over the phone for a restore request.
fn restore_id(row: &store::RestoreRow) -> String {
    crate::unlock::recovery_id(&row.client_id, &row.id)
}

/// The recovery ID of a machine's volume, as its boot screen shows it.
pub fn recovery_id(m: &Machine, volume_uuid: &str) -> String {
    crate::unlock::recovery_id(m.client_id.as_deref().unwrap_or(&m.machine_id), volume_uuid)
}

pub fn router(state: Shared) -> Router {
    let limit = state.config.max_body_bytes;
    let r = |route: api::Route| route.template();
    Router::new()
        .route(r(api::AUTHORITY), get(boot::authority))
        .route(r(api::HEALTH), get(observe::health))
        .route(r(api::METRICS), get(observe::metrics))
        .route(r(api::JOIN), post(machine::join))
        .route(r(api::ESCROW), post(machine::escrow))
        .route(r(api::DRSK_BACKUP), post(machine::drsk_backup))
        .route(r(api::STATUS), post(machine::status))
        .route(r(api::RECOVERY_REQUESTS), post(boot::request_recovery))
        .route(r(api::RECOVERY_PACKET), get(boot::recovery_packet))
        .route(r(api::RECOVERY_USED), post(boot::recovery_used))
        .route(r(api::RESTORE_REQUESTS), post(boot::request_restore))
        .route(r(api::RESTORE_PROOF), post(boot::prove))
        .route(r(api::RESTORE_FILE), get(boot::restore_file))
        .route(
            r(api::ADMIN_ENROLLMENT_TOKENS),
            post(admin::enrollment_token),
        )
        .route(r(api::ADMIN_MACHINES), get(admin::machines))
        .route(r(api::ADMIN_PACKETS), get(admin::packets))
        .route(r(api::ADMIN_PACKET), get(admin::packet))
        .route(r(api::ADMIN_PACKET_OBSOLETE), post(admin::obsolete))
        .route(r(api::ADMIN_PACKET_DELETE), post(admin::delete))
        .route(r(api::ADMIN_PACKET_REVEALED), post(admin::revealed))
        .route(
            r(api::ADMIN_PACKET_PASSPHRASE),
            post(admin::show_passphrase),
        )
        .route(r(api::ADMIN_REQUESTS), get(admin::requests))
        .route(r(api::ADMIN_REQUEST_APPROVE), post(admin::approve))
        .route(r(api::ADMIN_REQUEST_SHARES), post(admin::share))
        .route(r(api::ADMIN_REQUEST_ESCROW), get(admin::request_escrow))
        .route(r(api::ADMIN_REQUEST_PUBLISH), post(admin::publish_made))
        .route(r(api::ADMIN_RESTORES), get(admin::restores))
        .route(r(api::ADMIN_RESTORE_APPROVE), post(admin::approve_restore))
        .route(r(api::ADMIN_RESTORE_DELETE), post(admin::delete_restore))
        .merge(ui::router())
        .route_layer(axum::middleware::from_fn(observe::note_route))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_address,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}

/// axum answers a request it rejects itself (JSON that does not parse, a body over the limit,
/// an unknown path) in plain text, or with no body at all; every error leaves as the
/// documented `{"error": …}` (the web console's own error pages stay pages).
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let kept = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
        });
    if status.as_u16() < 400 || kept {
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

/// Serves until interrupted.
/// `tcti` names the server's TPM, which holds the DRSKs in custody.
pub fn serve(dir: PathBuf, tcti: String) -> Result<(), String> {
    let config = Config::load(&dir)?;
    if config.authority == super::config::AuthorityMode::Server
        && !super::authority::holds_secret_keys(&dir)
    {
        return Err(format!(
            "{} holds no authority secret keys: set authority = \"offline\" in {} (approvals then use admin approve-recovery --authority DIR)",
            dir.display(),
            super::config::CONFIG_FILE
        ));
    }
    let db = store::open_database(&dir, &config.database).map_err(|e| e.to_string())?;
    let stream = store::AuditStream::open(&config.audit_stream, &dir)
        .map_err(|e| format!("audit_stream {}: {e}", config.audit_stream))?;
    let db = store::Db::start(db, stream).map_err(|e| e.to_string())?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
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
            shares: Default::default(),
            sessions: Default::default(),
            metrics: Default::default(),
        });
        let app = router(state);
        let handle = axum_server::Handle::new();
        let shutdown = handle.clone();
        // Interrupted, or stopped by systemd (SIGTERM): answer what is in flight, then stop.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
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
