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
    if q.fingerprint.len() != 64 || !q.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
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
        db.store_packet(&m, &volume, &q.fingerprint, &body, limit, q.obsolete_older)
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
