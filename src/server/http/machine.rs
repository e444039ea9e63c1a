//! What machines call: joining (with an enrollment token), then, with their credential,
//! escrowing packets and backing up their DRSK.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{bad, internal, new_secret, with_custody, with_db, ApiError, Caller, Shared};
use crate::api;
use crate::escrow::EscrowPacket;
use crate::server::custody::Custody;
use crate::server::store::{self, Machine, StoreError, Stored};
use crate::tpm::transfer;

/// `POST JOIN`: the enrollment token is spent; the machine gets its credential.
pub async fn join(
    State(s): State<Shared>,
    Json(req): Json<api::Join>,
) -> Result<Json<api::Joined>, ApiError> {
    let machine_id = crate::id::machine_id(&req.machine_id)
        .map_err(|e| bad(format!("machine_id: {e} (/etc/machine-id)")))?;
    let client_id = match req.client_id.as_deref() {
        Some(c) => Some(crate::id::client_id(c).map_err(|e| bad(format!("client_id: {e}")))?),
        None => None,
    };
    if req.host.is_empty() || req.host.len() > 255 || req.host.chars().any(char::is_control) {
        return Err(bad("host must be a host name"));
    }
    let credential = new_secret(32)?;
    let m = Machine {
        id: store::random_id().map_err(internal)?,
        machine_id,
        client_id,
        host: req.host,
    };
    let (id, cred, token) = (m.id.clone(), credential.clone(), req.token);
    with_db(&s, move |db| {
        // expose_secret: the token is looked up (by hash) and spent.
        db.join(token.expose_secret(), &m, &cred)
            .map_err(|e| match e {
                StoreError::Refused(m) => ApiError(StatusCode::FORBIDDEN, m),
                other => other.into(),
            })
    })
    .await?;
    Ok(Json(api::Joined {
        machine: id,
        credential: crate::secret::Credential::new(credential),
    }))
}

/// `POST ESCROW`: stores an escrow packet for the calling machine.
pub async fn escrow(
    State(s): State<Shared>,
    Caller(m): Caller,
    Query(q): Query<api::EscrowQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = q.key.clone().unwrap_or_else(|| q.fingerprint.clone());
    if !is_fingerprint(&q.fingerprint) || !is_fingerprint(&key) {
        return Err(bad("fingerprint and key must be 64 hex digits"));
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
        db.store_packet(
            &m,
            &volume,
            &q.fingerprint,
            &key,
            &body,
            limit,
            q.obsolete_older,
        )
        .map_err(Into::into)
    })
    .await?;
    let (status, packet, code) = match stored {
        Stored::New(id) => (api::STORED, id, StatusCode::CREATED),
        Stored::AlreadyInEscrow(id) => (api::ALREADY_IN_ESCROW, id, StatusCode::OK),
    };
    let answer = api::Escrowed {
        status: status.into(),
        packet,
    };
    Ok((code, Json(answer)).into_response())
}

fn is_fingerprint(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Most volumes and problem lines one status report may carry.
const MAX_REPORT_LINES: usize = 64;

/// `POST STATUS`: what the server holds for the calling machine's volumes and DRSK. What is
/// wrong, found by the machine or here, is kept as the machine's health.
pub async fn status(
    State(s): State<Shared>,
    Caller(m): Caller,
    Json(report): Json<api::StatusReport>,
) -> Result<Json<api::StatusAnswer>, ApiError> {
    if report.volumes.len() > MAX_REPORT_LINES || report.problems.len() > MAX_REPORT_LINES {
        return Err(bad(format!(
            "a report names at most {MAX_REPORT_LINES} volumes and problems"
        )));
    }
    for v in &report.volumes {
        crate::id::volume_uuid(&v.uuid).map_err(|e| bad(format!("volume: {e}")))?;
        if v.key.as_deref().is_some_and(|k| !is_fingerprint(k)) {
            return Err(bad("key must be 64 hex digits"));
        }
    }
    if report
        .problems
        .iter()
        .any(|p| p.is_empty() || p.len() > 300 || p.chars().any(char::is_control))
    {
        return Err(bad("each problem is one line of at most 300 characters"));
    }
    let drsk = match report.client_id.as_deref() {
        None => api::DRSK_NOT_KEPT,
        Some(client) => {
            let client =
                crate::id::client_id(client).map_err(|e| bad(format!("client_id: {e}")))?;
            match Custody::open(&s.dir) {
                Err(_) => api::DRSK_NOT_KEPT,
                Ok(custody) if custody.has(&client)? => api::DRSK_IN_CUSTODY,
                Ok(_) => api::DRSK_MISSING,
            }
        }
    };
    let answer = with_db(&s, move |db| {
        let mut problems = report.problems;
        let mut volumes = Vec::new();
        for v in report.volumes {
            let state = db.escrow_state(&m, &v.uuid, v.key.as_deref())?;
            let uuid = &v.uuid;
            match state.escrow {
                api::ESCROW_MISSING => problems.push(format!("volume {uuid}: not in escrow")),
                api::ESCROW_STALE => {
                    problems.push(format!("volume {uuid}: the escrow holds an older key"))
                }
                _ => {}
            }
            if state.revealed {
                problems.push(format!(
                    "volume {uuid}: its recovery passphrase was shown to an administrator"
                ));
            }
            volumes.push(api::VolumeEscrow {
                uuid: v.uuid,
                escrow: state.escrow.into(),
                packet: state.packet,
                passphrase_revealed: state.revealed,
            });
        }
        if drsk == api::DRSK_MISSING {
            problems.push("the DRSK is not backed up to this server".into());
        }
        db.record_report(&m, &problems)?;
        Ok::<_, ApiError>(api::StatusAnswer {
            volumes,
            drsk: drsk.into(),
            health: if problems.is_empty() {
                "healthy"
            } else {
                "at risk"
            }
            .into(),
        })
    })
    .await?;
    Ok(Json(answer))
}

/// `POST DRSK_BACKUP`: the body is `lifeline backup`'s file, imported into the server's TPM
/// before the answer.
pub async fn drsk_backup(
    State(s): State<Shared>,
    Caller(m): Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let text = std::str::from_utf8(&body).map_err(|_| bad("not a DRSK backup file"))?;
    let file =
        transfer::DrskFile::parse(text).map_err(|e| bad(format!("not a DRSK backup file: {e}")))?;
    let client = file.client_id.clone();
    let (m2, c2) = (m.clone(), client.clone());
    with_db(&s, move |db| {
        db.check_drsk_owner(&m2, &c2).map_err(|e| match e {
            StoreError::Refused(why) => ApiError(StatusCode::FORBIDDEN, why),
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
        db.record_drsk_backup(&m, &c2).map_err(Into::into)
    })
    .await?;
    let answer = api::BackedUp {
        status: "in custody".into(),
        client_id: client,
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}
