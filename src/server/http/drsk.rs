//! DRSK custody over HTTPS: a machine backs its DRSK up (imported into the server's TPM at
//! once); a replacement machine files a restore request with its new storage key (and answers
//! the genuine-TPM challenge when the server demands one); an administrator approves; the
//! machine fetches the restore file, which only its own TPM can load.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{admin, bad, machine, with_db, ApiError, Shared};
use crate::server::custody::{self, Custody, CustodyError, Pending};
use crate::server::store::{self, RestoreRow};
use crate::tpm::{self, transfer, TssTpm};

/// How long a request waits for the server's TPM to answer.
const TPM_WAIT: Duration = Duration::from_secs(5);

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
    .map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the TPM task failed".into(),
        )
    })?
}

/// `POST /v1/drsk/backup` (machine credential): the body is `lifeline backup`'s file.
pub async fn backup(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let m = machine(&s, &headers).await?;
    let text = std::str::from_utf8(&body).map_err(|_| bad("not a DRSK backup file"))?;
    let file =
        transfer::DrskFile::parse(text).map_err(|e| bad(format!("not a DRSK backup file: {e}")))?;
    let client = file.client_id.clone();
    let (m2, c2) = (m.clone(), client.clone());
    with_db(&s, move |db| {
        store::check_drsk_owner(db, &m2, &c2).map_err(|e| match e {
            store::StoreError::Refused(why) => ApiError(StatusCode::FORBIDDEN, why),
            other => other.into(),
        })
    })
    .await?;
    with_custody(&s, move |custody, tpm| {
        custody.import(tpm, file, None).map(|_| ())
    })
    .await?;
    let c2 = client.clone();
    with_db(&s, move |db| {
        store::record_drsk_backup(db, &m, &c2).map_err(Into::into)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "status": "in custody", "client_id": client })),
    )
        .into_response())
}

fn unhex(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    crate::hex::decode(text).ok_or_else(|| bad(format!("{field} is not hex")))
}

#[derive(Deserialize)]
pub struct RestoreRequest {
    client_id: String,
    srk_public: String,
    ek_public: Option<String>,
    ek_certificate: Option<String>,
}

/// The short ID a user reads over the phone for a restore request.
/// `restore_valid_for`, in seconds (checked when the configuration was loaded).
fn valid_for(s: &Shared) -> i64 {
    s.config.restore_valid_for().unwrap_or(0)
}

fn restore_id(row: &RestoreRow) -> String {
    crate::unlock::recovery_id(&row.client_id, &row.id)
}

/// `POST /v1/drsk/restore-requests` (no credential: the replacement machine has none). When
/// the server demands the genuine-TPM proof, the answer carries the challenge.
pub async fn request_restore(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(req): Json<RestoreRequest>,
) -> Result<Json<Value>, ApiError> {
    let client = custody::check_client_id(&req.client_id)?;
    let srk = unhex("srk_public", &req.srk_public)?;
    let srk_name = tpm::name_of_public(&srk).map_err(|e| bad(format!("srk_public: {e}")))?;
    let ek = match (&req.ek_public, &req.ek_certificate) {
        (Some(p), Some(c)) => Some((unhex("ek_public", p)?, unhex("ek_certificate", c)?)),
        _ => None,
    };
    let (c2, srk2) = (client.clone(), srk.clone());
    let challenge = with_custody(&s, move |custody, tpm| {
        if !custody.has(&c2)? {
            return Err(CustodyError::UnknownClient(format!(
                "no DRSK in custody for client {c2}"
            )));
        }
        if !custody.requires_proof() {
            return Ok(None);
        }
        let (ek_public, ek_cert) = ek.ok_or_else(|| {
            CustodyError::Refused(
                "this server requires proof of a genuine TPM: send the endorsement key and its certificate".into(),
            )
        })?;
        custody
            .challenge(tpm, &c2, &srk2, &ek_public, &ek_cert)
            .map(Some)
    })
    .await?;
    let who = format!("anonymous@{}", from.ip());
    let hash = challenge.as_ref().map(|(_, p)| p.secret_hash.clone());
    let valid_for = valid_for(&s);
    let row = with_db(&s, move |db| {
        store::file_restore_request(
            db,
            &client,
            &crate::hex::encode(&srk_name),
            &srk,
            hash.as_deref(),
            &who,
            valid_for,
        )
        .map_err(Into::into)
    })
    .await?;
    let mut answer =
        json!({ "request": row.id, "restore_id": restore_id(&row), "state": row.state });
    if let (Some((c, _)), "challenged") = (&challenge, row.state.as_str()) {
        answer["challenge"] = json!(c.to_text());
    }
    Ok(Json(answer))
}

#[derive(Deserialize)]
pub struct Proof {
    /// The `lifeline activate` answer (a `lifeline-tpm-proof` record).
    proof: String,
}

/// `POST /v1/drsk/restore-requests/{id}/proof`: the answer to the challenge; the request then
/// waits for an administrator.
pub async fn prove(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    Json(req): Json<Proof>,
) -> Result<Json<Value>, ApiError> {
    let secret = transfer::parse_hex_record(&req.proof, transfer::PROOF_TAG, &["secret"])
        .map_err(|e| bad(format!("proof: {e}")))?
        .pop()
        .unwrap_or_default();
    let who = format!("anonymous@{}", from.ip());
    let valid_for = valid_for(&s);
    with_db(&s, move |db| {
        let row = store::restore_in_state(db, &id, "challenged", valid_for)?;
        let pending = Pending {
            new_parent_name: tpm::name_of_public(&row.srk_public)
                .map_err(|e| bad(e.to_string()))?,
            secret_hash: row.secret_hash.unwrap_or_default(),
        };
        pending.check(&row.srk_public, &secret)?;
        let step = store::Advance {
            from: "challenged",
            to: "pending",
            body: None,
        };
        store::advance_restore(db, &id, step, valid_for, &who, "restore-proof").map_err(Into::into)
    })
    .await?;
    Ok(Json(json!({ "state": "pending" })))
}

/// `GET /v1/drsk/restores/{client}/{srk-name}`: the approved restore file (useless to any
/// TPM but the one holding that storage key).
pub async fn fetch(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path((client, srk)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let client = custody::check_client_id(&client)?;
    let srk = srk.to_ascii_lowercase();
    let who = format!("anonymous@{}", from.ip());
    let valid_for = valid_for(&s);
    let body = with_db(&s, move |db| {
        store::fetch_restore(db, &client, &srk, &who, valid_for).map_err(Into::into)
    })
    .await?;
    Ok(([("content-type", "text/plain")], body).into_response())
}

/// `GET /v1/admin/restores`.
pub async fn list(
    State(s): State<Shared>,
    headers: HeaderMap,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Result<Json<Value>, ApiError> {
    admin(&s, &headers, from).await?;
    let rows = with_db(&s, |db| store::list_restores(db).map_err(Into::into)).await?;
    let valid_for = valid_for(&s);
    Ok(Json(json!(rows
        .iter()
        .map(|r| json!({
            "request": r.id, "restore_id": restore_id(r), "client_id": r.client_id,
            "host": r.host, "created": r.created,
            "state": if r.expired(valid_for) { "expired" } else { r.state.as_str() },
            "expires": r.expires(valid_for),
            "tpm_proven": r.secret_hash.is_some() && r.state != "challenged",
        }))
        .collect::<Vec<_>>())))
}

/// `POST /v1/admin/restores/{id}/delete`: withdraws a restore request, approved or not.
pub async fn delete(
    State(s): State<Shared>,
    headers: HeaderMap,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = admin(&s, &headers, from).await?;
    with_db(&s, move |db| {
        store::delete_restore(db, &id, &name).map_err(Into::into)
    })
    .await?;
    Ok(Json(json!({ "status": "deleted" })))
}

/// `POST /v1/admin/restores/{id}/approve`: the server's TPM re-duplicates the DRSK to the
/// request's storage key; the machine can then fetch it.
pub async fn approve(
    State(s): State<Shared>,
    headers: HeaderMap,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = admin(&s, &headers, from).await?;
    let id2 = id.clone();
    let valid_for = valid_for(&s);
    // Checked before the TPM works, and again when the result is stored.
    let row = with_db(&s, move |db| {
        store::restore_in_state(db, &id2, "pending", valid_for).map_err(Into::into)
    })
    .await?;
    let (client, srk) = (row.client_id.clone(), row.srk_public.clone());
    let file = with_custody(&s, move |custody, tpm| {
        custody.restore(tpm, &client, &srk, None)
    })
    .await?;
    let body = file.to_text().into_bytes();
    with_db(&s, move |db| {
        let step = store::Advance {
            from: "pending",
            to: "approved",
            body: Some(&body),
        };
        store::advance_restore(db, &id, step, valid_for, &name, "approve-restore")
            .map_err(Into::into)
    })
    .await?;
    Ok(Json(
        json!({ "status": "approved", "restore_id": restore_id(&row), "client_id": row.client_id, "host": row.host }),
    ))
}
