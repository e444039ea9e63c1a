//! What administrators call (an [`Admin`] caller): enrollment tokens, the listings, approving
//! recoveries and DRSK restores, retiring packets, and reading an escrowed recovery passphrase.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::{internal, recovery_id, restore_id, with_custody, with_db, Admin, ApiError, Shared};
use crate::api;
use crate::secret::{EnrollmentToken, Passphrase};
use crate::server::authority::{self, AuthorityError, Unlocked};
use crate::server::store;

/// `POST ADMIN_ENROLLMENT_TOKENS`.
pub async fn enrollment_token(
    State(s): State<Shared>,
    Admin(name): Admin,
) -> Result<Json<api::EnrollmentTokenIssued>, ApiError> {
    let token = super::new_secret(16)?;
    let valid = s.config.token_valid_for().map_err(internal)?;
    let t = token.clone();
    with_db(&s, move |db| {
        db.add_enrollment_token(&name, &t, valid.as_secs() as i64)
            .map_err(Into::into)
    })
    .await?;
    Ok(Json(api::EnrollmentTokenIssued {
        token: EnrollmentToken::new(token),
        valid_for: s.config.enrollment_token_valid_for.clone(),
    }))
}

/// `GET ADMIN_PACKETS`.
pub async fn packets(
    State(s): State<Shared>,
    _: Admin,
) -> Result<Json<Vec<api::PacketRow>>, ApiError> {
    let rows = with_db(&s, |db| db.list_packets().map_err(Into::into)).await?;
    Ok(Json(
        rows.into_iter()
            .map(|p| api::PacketRow {
                packet: p.id,
                machine: p.machine,
                host: p.host,
                volume_uuid: p.volume_uuid,
                created: p.created,
                obsolete: p.obsolete,
            })
            .collect(),
    ))
}

/// `GET ADMIN_REQUESTS`.
pub async fn requests(
    State(s): State<Shared>,
    _: Admin,
) -> Result<Json<Vec<api::RequestRow>>, ApiError> {
    let rows = with_db(&s, |db| db.list_requests().map_err(Into::into)).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| api::RequestRow {
                recovery_id: recovery_id(&r.machine, &r.volume_uuid),
                request: r.id,
                host: r.machine.host,
                machine_id: r.machine.machine_id,
                volume_uuid: r.volume_uuid,
                created: r.created,
                state: r.state,
            })
            .collect(),
    ))
}

/// `GET ADMIN_MACHINES`.
pub async fn machines(
    State(s): State<Shared>,
    _: Admin,
) -> Result<Json<Vec<api::MachineRow>>, ApiError> {
    let rows = with_db(&s, |db| db.list_machines().map_err(Into::into)).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| api::MachineRow {
                machine: r.machine.id,
                host: r.machine.host,
                machine_id: r.machine.machine_id,
                client_id: r.machine.client_id,
                created: r.created,
                packets: r.packets,
            })
            .collect(),
    ))
}

/// Runs `f` with the authority unlocked by the administrator passphrase, in a blocking task
/// (scrypt takes a second; it does not hold up the database). The authority's keys exist
/// decrypted only inside it.
async fn with_authority<T: Send + 'static>(
    s: &Shared,
    passphrase: Passphrase,
    f: impl FnOnce(Unlocked) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let dir = s.dir.clone();
    tokio::task::spawn_blocking(move || {
        let unlocked = authority::unlock(&dir, &passphrase).map_err(|e| match e {
            AuthorityError::WrongPassphrase => ApiError(StatusCode::FORBIDDEN, e.to_string()),
            other => internal(other),
        })?;
        f(unlocked)
    })
    .await
    .map_err(|_| internal("the authority's task failed"))?
}

/// `POST ADMIN_REQUEST_APPROVE`: issues the recovery packet and answers its OTP, once.
pub async fn approve(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
    Json(req): Json<api::Approve>,
) -> Result<Json<api::Approved>, ApiError> {
    let valid_for = s.config.recovery_valid_for().map_err(internal)?;
    let groups = req.otp_groups.unwrap_or(crate::escrow::otp::DEFAULT_GROUPS);
    let (request, escrow) =
        with_db(&s, move |db| db.packet_for_request(&id).map_err(Into::into)).await?;
    let issued = with_authority(&s, req.passphrase, move |unlocked| {
        unlocked
            .issue_recovery(&escrow, valid_for, groups)
            .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
    })
    .await?;
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
        db.publish_recovery(
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
    Ok(Json(api::Approved {
        expires: humantime::format_rfc3339_seconds(issued.binding.expires).to_string(),
        recovery_id: recovery_id(&request.machine, &request.volume_uuid),
        packet: issued.binding.packet_id,
        otp: issued.otp,
    }))
}

async fn retire(
    s: Shared,
    name: String,
    id: String,
    delete: bool,
) -> Result<Json<api::Done>, ApiError> {
    with_db(&s, move |db| {
        db.retire_packet(&name, &id, delete).map_err(Into::into)
    })
    .await?;
    let status = if delete { "deleted" } else { "obsolete" };
    Ok(Json(api::Done {
        status: status.into(),
    }))
}

/// `POST ADMIN_PACKET_OBSOLETE`.
pub async fn obsolete(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
) -> Result<Json<api::Done>, ApiError> {
    retire(s, name, id, false).await
}

/// `POST ADMIN_PACKET_DELETE`.
pub async fn delete(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
) -> Result<Json<api::Done>, ApiError> {
    retire(s, name, id, true).await
}

/// `POST ADMIN_PACKET_PASSPHRASE`: decrypts an escrow packet and returns its recovery
/// passphrase: the same controls as an approval (admin network, credential, administrator
/// passphrase), audited before it is read.
pub async fn show_passphrase(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
    Json(req): Json<api::AdminPassphrase>,
) -> Result<Json<api::RecoveryPassphrase>, ApiError> {
    let body = with_db(&s, move |db| {
        db.read_packet_for_admin(&name, &id).map_err(Into::into)
    })
    .await?;
    let recovery_passphrase = with_authority(&s, req.passphrase, move |unlocked| {
        let record = unlocked
            .open_escrow(&body)
            .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        Ok(record.recovery_passphrase)
    })
    .await?;
    Ok(Json(api::RecoveryPassphrase {
        recovery_passphrase,
    }))
}

/// `GET ADMIN_RESTORES`.
pub async fn restores(
    State(s): State<Shared>,
    _: Admin,
) -> Result<Json<Vec<api::RestoreRow>>, ApiError> {
    let rows = with_db(&s, |db| db.list_restores().map_err(Into::into)).await?;
    let valid_for = s.restore_valid_for();
    Ok(Json(
        rows.iter()
            .map(|r| api::RestoreRow {
                request: r.id.clone(),
                restore_id: restore_id(r),
                client_id: r.client_id.clone(),
                host: r.host.clone(),
                created: r.created,
                state: match r.expired(valid_for) {
                    true => "expired".into(),
                    false => r.state.clone(),
                },
                expires: r.expires(valid_for),
                tpm_proven: r.secret_hash.is_some() && r.state != "challenged",
            })
            .collect(),
    ))
}

/// `POST ADMIN_RESTORE_DELETE`: withdraws a restore request, approved or not.
pub async fn delete_restore(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
) -> Result<Json<api::Done>, ApiError> {
    with_db(&s, move |db| {
        db.delete_restore(&id, &name).map_err(Into::into)
    })
    .await?;
    Ok(Json(api::Done {
        status: "deleted".into(),
    }))
}

/// `POST ADMIN_RESTORE_APPROVE`: the server's TPM re-duplicates the DRSK to the request's
/// storage key; the machine can then fetch it.
pub async fn approve_restore(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
) -> Result<Json<api::RestoreApproved>, ApiError> {
    let id2 = id.clone();
    let valid_for = s.restore_valid_for();
    // Checked before the TPM works, and again when the result is stored.
    let row = with_db(&s, move |db| {
        db.restore_in_state(&id2, "pending", valid_for)
            .map_err(Into::into)
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
        db.advance_restore(&id, step, valid_for, &name, "approve-restore")
            .map_err(Into::into)
    })
    .await?;
    Ok(Json(api::RestoreApproved {
        status: "approved".into(),
        restore_id: restore_id(&row),
        client_id: row.client_id,
        host: row.host,
    }))
}
