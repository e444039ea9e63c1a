//! What administrators call (an [`Admin`] caller): enrollment tokens, the listings, approving
//! recoveries and DRSK restores, retiring packets, and reading an escrowed recovery passphrase.

use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::{
    bad, internal, recovery_id, restore_id, with_custody, with_db, Admin, ApiError, Shared,
};
use crate::api;
use crate::escrow::{Binding, RecoveryPacket};
use crate::secret::{EnrollmentToken, Passphrase};
use crate::server::authority::{self, AuthorityError, Unlocked};
use crate::server::config::AuthorityMode;
use crate::server::shares::{Added, Refusal};
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
    Ok(Json(packet_rows(&s).await?))
}

/// `GET ADMIN_REQUESTS`.
pub async fn requests(
    State(s): State<Shared>,
    _: Admin,
) -> Result<Json<Vec<api::RequestRow>>, ApiError> {
    Ok(Json(request_rows(&s).await?))
}

/// `GET ADMIN_MACHINES`.
pub async fn machines(
    State(s): State<Shared>,
    _: Admin,
) -> Result<Json<Vec<api::MachineRow>>, ApiError> {
    Ok(Json(machine_rows(&s).await?))
}

// The listings, as the API answers them and the web console shows them.

pub(super) async fn packet_rows(s: &Shared) -> Result<Vec<api::PacketRow>, ApiError> {
    let rows = with_db(s, |db| db.list_packets().map_err(Into::into)).await?;
    Ok(rows
        .into_iter()
        .map(|p| api::PacketRow {
            packet: p.id,
            machine: p.machine,
            host: p.host,
            volume_uuid: p.volume_uuid,
            created: p.created,
            obsolete: p.obsolete,
        })
        .collect())
}

pub(super) async fn request_rows(s: &Shared) -> Result<Vec<api::RequestRow>, ApiError> {
    let rows = with_db(s, |db| db.list_requests().map_err(Into::into)).await?;
    Ok(rows
        .into_iter()
        .map(|r| api::RequestRow {
            recovery_id: recovery_id(&r.machine, &r.volume_uuid),
            request: r.id,
            host: r.machine.host,
            machine_id: r.machine.machine_id,
            volume_uuid: r.volume_uuid,
            created: r.created,
            state: r.state,
        })
        .collect())
}

pub(super) async fn machine_rows(s: &Shared) -> Result<Vec<api::MachineRow>, ApiError> {
    let rows = with_db(s, |db| db.list_machines().map_err(Into::into)).await?;
    let overdue = s.config.report_overdue_after().unwrap_or(i64::MAX);
    let now = store::now();
    Ok(rows
        .into_iter()
        .map(|r| api::MachineRow {
            health: health(r.report.as_ref(), now, overdue),
            last_report: r.report.map(|(time, _)| time),
            machine: r.machine.id,
            host: r.machine.host,
            machine_id: r.machine.machine_id,
            client_id: r.machine.client_id,
            created: r.created,
            packets: r.packets,
        })
        .collect())
}

/// A machine's health as `admin machines` shows it, from its last `lifeline status` report.
fn health(report: Option<&(i64, String)>, now: i64, overdue: i64) -> String {
    match report {
        None => "never reported".into(),
        Some((time, _)) if now.saturating_sub(*time) > overdue => "not reporting".into(),
        Some((_, problems)) if problems.is_empty() => "healthy".into(),
        Some((_, problems)) => format!("at risk: {}", problems.replace('\n', "; ")),
    }
}

pub(super) async fn restore_rows(s: &Shared) -> Result<Vec<api::RestoreRow>, ApiError> {
    let rows = with_db(s, |db| db.list_restores().map_err(Into::into)).await?;
    let valid_for = s.restore_valid_for();
    Ok(rows
        .iter()
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
        .collect())
}

/// Who wants the authority unlocked, and for what: named in the audit when the passphrase is
/// wrong.
#[derive(Clone)]
struct Asking {
    admin: String,
    /// The audit subject: the request or packet it was for.
    subject: String,
}

/// Runs `f` with the authority unlocked by the administrator passphrase, in a blocking task
/// (scrypt takes a second; it does not hold up the database). The authority's keys exist
/// decrypted only inside it. A wrong passphrase is logged and audited (`wrong-passphrase`).
async fn with_authority<T: Send + 'static>(
    s: &Shared,
    asking: Asking,
    passphrase: Passphrase,
    f: impl FnOnce(Unlocked) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let dir = s.dir.clone();
    let result = tokio::task::spawn_blocking(move || {
        let unlocked = authority::unlock(&dir, &passphrase).map_err(|e| match e {
            AuthorityError::WrongPassphrase => ApiError(StatusCode::FORBIDDEN, e.to_string()),
            other => internal(other),
        })?;
        f(unlocked)
    })
    .await
    .map_err(|_| internal("the authority's task failed"))?;
    if matches!(&result, Err(ApiError(StatusCode::FORBIDDEN, _))) {
        tracing::warn!(
            target: "lifeline_server::auth",
            "wrong administrator passphrase from admin {} for {}",
            asking.admin,
            asking.subject
        );
        with_db(s, move |db| {
            db.audit_event(&asking.admin, "wrong-passphrase", &asking.subject)
                .map_err(Into::into)
        })
        .await?;
    }
    result
}

/// Refuses what would unlock the authority on the server when it holds no secret key.
fn refuse_offline(s: &Shared) -> Result<(), ApiError> {
    match s.config.authority {
        AuthorityMode::Server => Ok(()),
        AuthorityMode::Offline => Err(ApiError(
            StatusCode::CONFLICT,
            "this server holds no authority key (authority = \"offline\"): make the recovery packet on the administrator's machine with lifeline-server admin approve-recovery ID --authority DIR".into(),
        )),
    }
}

/// Stores a recovery packet for a pending request, audited as `action` by `actor`.
async fn publish(
    s: &Shared,
    actor: String,
    action: &'static str,
    request: store::RequestRow,
    packet: Vec<u8>,
    binding: &Binding,
    use_token_hash: Vec<u8>,
) -> Result<api::Published, ApiError> {
    let expires = binding
        .expires
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let packet_id = binding.packet_id.clone();
    let recovery_id = recovery_id(&request.machine, &request.volume_uuid);
    with_db(s, move |db| {
        let new = store::NewRecovery {
            id: &packet_id,
            body: &packet,
            expires,
            use_token_hash: &use_token_hash,
        };
        db.publish_recovery(&actor, action, &request, &new)
            .map_err(Into::into)
    })
    .await?;
    Ok(api::Published {
        packet: binding.packet_id.clone(),
        expires: humantime::format_rfc3339_seconds(binding.expires).to_string(),
        recovery_id,
    })
}

/// Unlocks the authority with `passphrase`, issues the recovery packet for pending request
/// `id`, publishes it, and answers its OTP, once.
pub(super) async fn approve_with(
    s: &Shared,
    actor: String,
    id: String,
    passphrase: Passphrase,
    otp_groups: Option<usize>,
) -> Result<api::Approved, ApiError> {
    let valid_for = s.config.recovery_valid_for().map_err(internal)?;
    let groups = otp_groups.unwrap_or(crate::escrow::otp::DEFAULT_GROUPS);
    let asking = Asking {
        admin: actor.clone(),
        subject: id.clone(),
    };
    let (request, escrow) =
        with_db(s, move |db| db.packet_for_request(&id).map_err(Into::into)).await?;
    let issued = with_authority(s, asking, passphrase, move |unlocked| {
        unlocked
            .issue_recovery(&escrow, valid_for, groups)
            .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
    })
    .await?;
    let published = publish(
        s,
        actor,
        "approve-recovery",
        request,
        issued.packet,
        &issued.binding,
        issued.use_token_hash,
    )
    .await?;
    Ok(api::Approved {
        otp: issued.otp,
        packet: published.packet,
        expires: published.expires,
        recovery_id: published.recovery_id,
    })
}

/// `POST ADMIN_REQUEST_APPROVE`: issues the recovery packet and answers its OTP, once.
pub async fn approve(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
    Json(req): Json<api::Approve>,
) -> Result<Json<api::Approved>, ApiError> {
    refuse_offline(&s)?;
    Ok(Json(
        approve_with(&s, name, id, req.passphrase, req.otp_groups).await?,
    ))
}

/// `POST ADMIN_REQUEST_SHARES`: one administrator's share toward a K-of-N approval. The K-th
/// completes the approval (its caller gets the OTP); before that, the answer says how many
/// are held. Each submission is audited with who sent it.
pub async fn share(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
    Json(req): Json<api::Share>,
) -> Result<Json<api::ShareProgress>, ApiError> {
    Ok(Json(submit_share(&s, name, id, req).await?))
}

pub(super) async fn submit_share(
    s: &Shared,
    name: String,
    id: String,
    req: api::Share,
) -> Result<api::ShareProgress, ApiError> {
    refuse_offline(s)?;
    let window = s.config.share_window().map_err(internal)?;
    let id2 = id.clone();
    // A share is held only for a request that is waiting for approval.
    with_db(s, move |db| {
        db.packet_for_request(&id2).map(|_| ()).map_err(Into::into)
    })
    .await?;
    // expose_secret: the board keeps it, in wiped memory, until the approval or the window ends.
    let added = s
        .shares
        .add(&id, &name, req.share.expose_secret(), window)
        .map_err(|r| match r {
            Refusal::Bad(m) => bad(m),
            Refusal::Twice(m) => ApiError(StatusCode::CONFLICT, m),
        })?;
    let (received, needed): (u8, u8) = match &added {
        Added::Waiting { from, needed, .. } => (from.len() as u8, *needed),
        Added::Complete { from, .. } => (from.len() as u8, from.len() as u8),
    };
    let (who, request) = (name.clone(), id.clone());
    let audited = with_db(s, move |db| {
        db.audit_share(&who, &request, received, needed)
            .map_err(Into::into)
    })
    .await;
    if let Err(e) = audited {
        s.shares.withdraw(&id, &name);
        return Err(e);
    }
    match added {
        Added::Waiting { from, needed, left } => Ok(api::ShareProgress {
            received,
            needed,
            from,
            discarded_in: left.as_secs(),
            approved: None,
        }),
        Added::Complete { shares, from } => {
            let discarded = |e: String| {
                ApiError(
                    StatusCode::FORBIDDEN,
                    format!("{e}; the {received} shares held were discarded: submit them again"),
                )
            };
            let passphrase = crate::server::shares::combine(shares.iter().map(|s| s.as_str()))
                .map_err(discarded)?;
            drop(shares);
            let approved = approve_with(s, from.join("+"), id, passphrase, req.otp_groups)
                .await
                .map_err(|e| match e.0 {
                    StatusCode::FORBIDDEN => discarded(
                        "the shares do not rebuild this authority's administrator passphrase"
                            .into(),
                    ),
                    _ => e,
                })?;
            Ok(api::ShareProgress {
                received,
                needed,
                from,
                discarded_in: 0,
                approved: Some(approved),
            })
        }
    }
}

/// `GET ADMIN_REQUEST_ESCROW`: the escrow packet a pending request opens, for an administrator
/// who keeps the authority on their own machine (audited).
pub async fn request_escrow(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
) -> Result<Json<api::EscrowCopy>, ApiError> {
    let (_, body) = with_db(&s, move |db| {
        db.escrow_for_request(&name, &id).map_err(Into::into)
    })
    .await?;
    escrow_copy(&s, body)
}

/// `GET ADMIN_PACKET`: an escrow packet by ID (audited).
pub async fn packet(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
) -> Result<Json<api::EscrowCopy>, ApiError> {
    let body = with_db(&s, move |db| {
        db.read_packet_for_admin(&name, &id, "read-escrow")
            .map_err(Into::into)
    })
    .await?;
    escrow_copy(&s, body)
}

fn escrow_copy(s: &Shared, body: Vec<u8>) -> Result<Json<api::EscrowCopy>, ApiError> {
    Ok(Json(api::EscrowCopy {
        escrow_packet: String::from_utf8(body)
            .map_err(|_| internal("a stored escrow packet is not text"))?,
        recovery_valid_for: s.config.recovery_valid_for.clone(),
    }))
}

/// Clock difference allowed between the administrator's machine and the server.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// `POST ADMIN_REQUEST_PUBLISH`: a recovery packet made on the administrator's machine. The
/// server checks it as the booting machine will (the authority's signature, the request's
/// machine and volume, not expired) and that it lives no longer than `recovery_valid_for`,
/// then serves it exactly as one it made; the audit names who published it.
pub async fn publish_made(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
    Json(req): Json<api::Publish>,
) -> Result<Json<api::Published>, ApiError> {
    let refused = |e: &dyn std::fmt::Display| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the recovery packet is refused: {e}"),
        )
    };
    let trusted = authority::trust_key(&s.dir).map_err(internal)?;
    let body = req.recovery_packet.into_bytes();
    let packet = RecoveryPacket::verify(&body, &trusted).map_err(|e| refused(&e))?;
    let hash = crate::hex::decode(&req.use_token_hash)
        .filter(|h| h.len() == 32)
        .ok_or_else(|| bad("use_token_hash is not a SHA-256 in hex"))?;
    let (request, _) =
        with_db(&s, move |db| db.packet_for_request(&id).map_err(Into::into)).await?;
    let now = SystemTime::now();
    packet
        .check_binding(&request.machine.machine_id, &request.volume_uuid, now)
        .map_err(|e| refused(&e))?;
    let valid_for = s.config.recovery_valid_for().map_err(internal)?;
    if packet.binding.expires > now + valid_for + CLOCK_SKEW {
        return Err(refused(&format!(
            "it is valid until {}, longer than this server's recovery_valid_for ({})",
            humantime::format_rfc3339_seconds(packet.binding.expires),
            s.config.recovery_valid_for
        )));
    }
    Ok(Json(
        publish(
            &s,
            name,
            "publish-recovery",
            request,
            body,
            &packet.binding,
            hash,
        )
        .await?,
    ))
}

pub(super) async fn retire(
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
    refuse_offline(&s)?;
    let asking = Asking {
        admin: name.clone(),
        subject: id.clone(),
    };
    let body = with_db(&s, move |db| {
        db.read_packet_for_admin(&name, &id, "show-passphrase")
            .map_err(Into::into)
    })
    .await?;
    let recovery_passphrase = with_authority(&s, asking.clone(), req.passphrase, move |unlocked| {
        let record = unlocked
            .open_escrow(&body)
            .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        Ok(record.recovery_passphrase)
    })
    .await?;
    // Shown only once the machine is sure to learn it was, and replaces it.
    if recovery_passphrase.is_some() {
        mark_revealed(&s, asking.admin, asking.subject).await?;
    }
    Ok(Json(api::RecoveryPassphrase {
        recovery_passphrase,
    }))
}

/// `POST ADMIN_PACKET_REVEALED`: an administrator who keeps the authority on their own
/// machine is about to read a packet's recovery passphrase there (`admin show-passphrase
/// --authority`), which is shown only after this answer.
pub async fn revealed(
    State(s): State<Shared>,
    Admin(name): Admin,
    Path(id): Path<String>,
) -> Result<Json<api::Done>, ApiError> {
    mark_revealed(&s, name, id).await?;
    Ok(Json(api::Done {
        status: "revealed".into(),
    }))
}

async fn mark_revealed(s: &Shared, admin: String, packet: String) -> Result<(), ApiError> {
    with_db(s, move |db| {
        db.mark_revealed(&admin, &packet).map_err(Into::into)
    })
    .await
}

/// `GET ADMIN_RESTORES`.
pub async fn restores(
    State(s): State<Shared>,
    _: Admin,
) -> Result<Json<Vec<api::RestoreRow>>, ApiError> {
    Ok(Json(restore_rows(&s).await?))
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
    Ok(Json(restore_approval(&s, name, id).await?))
}

pub(super) async fn restore_approval(
    s: &Shared,
    name: String,
    id: String,
) -> Result<api::RestoreApproved, ApiError> {
    let id2 = id.clone();
    let valid_for = s.restore_valid_for();
    // Checked before the TPM works, and again when the result is stored.
    let row = with_db(s, move |db| {
        db.restore_in_state(&id2, "pending", valid_for)
            .map_err(Into::into)
    })
    .await?;
    let (client, srk) = (row.client_id.clone(), row.srk_public.clone());
    let file = with_custody(s, move |custody, tpm| {
        custody.restore(tpm, &client, &srk, None)
    })
    .await?;
    let body = file.to_text().into_bytes();
    with_db(s, move |db| {
        let step = store::Advance {
            from: "pending",
            to: "approved",
            body: Some(&body),
        };
        db.advance_restore(&id, step, valid_for, &name, "approve-restore")
            .map_err(Into::into)
    })
    .await?;
    Ok(api::RestoreApproved {
        status: "approved".into(),
        restore_id: restore_id(&row),
        client_id: row.client_id,
        host: row.host,
    })
}
