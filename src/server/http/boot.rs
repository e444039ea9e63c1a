//! What anyone may call, because the caller has no credential yet or any more: a booting
//! machine (its credential is on the encrypted disk) filing a recovery request, fetching the
//! approved recovery packet and reporting it used; a replacement machine asking for its DRSK
//! back. What they get is OTP-encrypted and signed, or loadable only by one TPM; each call is
//! rate-limited by address and audited as `anonymous@ADDRESS`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{bad, internal, recovery_id, restore_id, with_custody, with_db};
use super::{Anonymous, ApiError, Shared};
use crate::api;
use crate::server::authority;
use crate::server::custody::{self, CustodyError, Pending};
use crate::server::store;
use crate::tpm::{self, transfer};

/// `GET AUTHORITY`: the public halves of the authority, what clients encrypt to and trust.
pub async fn authority(State(s): State<Shared>) -> Result<Json<api::Authority>, ApiError> {
    let read = |f: &str| std::fs::read_to_string(s.dir.join(f)).map_err(internal);
    // The DRSK server key, when this server keeps DRSKs (lifeline backup --server needs it).
    let drsk = std::fs::read(s.dir.join("drsk.pub"))
        .ok()
        .map(|k| crate::hex::encode(&k));
    Ok(Json(api::Authority {
        recipient: read(authority::RECIPIENT_FILE)?.trim().to_string(),
        minisign: read(authority::TRUST_KEY_FILE)?,
        drsk,
    }))
}

/// `POST RECOVERY_REQUESTS`.
pub async fn request_recovery(
    State(s): State<Shared>,
    Anonymous(who): Anonymous,
    Json(req): Json<api::RecoveryRequest>,
) -> Result<Json<api::RecoveryRequested>, ApiError> {
    let volume =
        crate::id::volume_uuid(&req.volume_uuid).map_err(|e| bad(format!("volume_uuid: {e}")))?;
    let asked = volume.clone();
    let (id, machine) = with_db(&s, move |db| {
        db.request_recovery(&req.machine, &asked, &who)
            .map_err(Into::into)
    })
    .await?;
    Ok(Json(api::RecoveryRequested {
        request: id,
        recovery_id: recovery_id(&machine, &volume),
    }))
}

/// `GET RECOVERY_PACKET`: the approved packet, as text.
pub async fn recovery_packet(
    State(s): State<Shared>,
    Anonymous(who): Anonymous,
    Path((machine, volume)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let body = with_db(&s, move |db| {
        db.fetch_recovery(&machine, &volume, &who)
            .map_err(Into::into)
    })
    .await?;
    Ok(([("content-type", "text/plain")], body).into_response())
}

/// `POST RECOVERY_USED`: with the use token from inside the packet, which only whoever opened
/// it has, the packet is deleted.
pub async fn recovery_used(
    State(s): State<Shared>,
    Anonymous(who): Anonymous,
    Path(packet): Path<String>,
    Json(req): Json<api::PacketUsed>,
) -> Result<Json<api::Done>, ApiError> {
    with_db(&s, move |db| {
        // expose_secret: compared with the hash the server keeps.
        db.recovery_used(&packet, req.use_token.expose_secret(), &who)
            .map_err(Into::into)
    })
    .await?;
    Ok(Json(api::Done {
        status: "used".into(),
    }))
}

fn unhex(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    crate::hex::decode(text).ok_or_else(|| bad(format!("{field} is not hex")))
}

/// `POST RESTORE_REQUESTS`. When the server demands the genuine-TPM proof, the answer carries
/// the challenge.
pub async fn request_restore(
    State(s): State<Shared>,
    Anonymous(who): Anonymous,
    Json(req): Json<api::RestoreRequest>,
) -> Result<Json<api::RestoreFiled>, ApiError> {
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
    let hash = challenge.as_ref().map(|(_, p)| p.secret_hash.clone());
    let valid_for = s.restore_valid_for();
    let row = with_db(&s, move |db| {
        db.file_restore_request(
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
    let challenge = match (&challenge, row.state.as_str()) {
        (Some((c, _)), "challenged") => Some(c.to_text()),
        _ => None,
    };
    Ok(Json(api::RestoreFiled {
        restore_id: restore_id(&row),
        request: row.id,
        state: row.state,
        challenge,
    }))
}

/// `POST RESTORE_PROOF`: the answer to the challenge; the request then waits for an
/// administrator.
pub async fn prove(
    State(s): State<Shared>,
    Anonymous(who): Anonymous,
    Path(id): Path<String>,
    Json(req): Json<api::RestoreProof>,
) -> Result<Json<api::Proved>, ApiError> {
    let secret = transfer::parse_hex_record(&req.proof, transfer::PROOF_TAG, &["secret"])
        .map_err(|e| bad(format!("proof: {e}")))?
        .pop()
        .unwrap_or_default();
    let valid_for = s.restore_valid_for();
    with_db(&s, move |db| {
        let row = db.restore_in_state(&id, "challenged", valid_for)?;
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
        db.advance_restore(&id, step, valid_for, &who, "restore-proof")
            .map_err(Into::into)
    })
    .await?;
    Ok(Json(api::Proved {
        state: "pending".into(),
    }))
}

/// `GET RESTORE_FILE`: the approved restore file (useless to any TPM but the one holding that
/// storage key).
pub async fn restore_file(
    State(s): State<Shared>,
    Anonymous(who): Anonymous,
    Path((client, srk)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let client = custody::check_client_id(&client)?;
    let srk = srk.to_ascii_lowercase();
    let valid_for = s.restore_valid_for();
    let body = with_db(&s, move |db| {
        db.fetch_restore(&client, &srk, &who, valid_for)
            .map_err(Into::into)
    })
    .await?;
    Ok(([("content-type", "text/plain")], body).into_response())
}
