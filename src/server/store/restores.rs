//! DRSK restore requests: filed, challenged, approved, fetched, expired.

use super::sql::{args, Conn, Row};
use super::*;

/// A request to restore a DRSK to a replacement TPM's storage key. `state`: `challenged`
/// (waiting for the genuine-TPM proof), `pending` (waiting for an administrator), `approved`
/// (`body` holds the restore file).
#[derive(Debug, Clone)]
pub struct RestoreRow {
    pub id: String,
    pub client_id: String,
    pub srk_public: Vec<u8>,
    pub created: i64,
    pub state: String,
    pub secret_hash: Option<Vec<u8>>,
    /// The host that backed the DRSK up, if it joined.
    pub host: Option<String>,
    /// When it was approved.
    pub approved: Option<i64>,
}

impl RestoreRow {
    /// When it expires: `valid_for` seconds after it was filed, or after it was approved.
    pub fn expires(&self, valid_for: i64) -> i64 {
        self.approved
            .unwrap_or(self.created)
            .saturating_add(valid_for)
    }

    pub fn expired(&self, valid_for: i64) -> bool {
        now() >= self.expires(valid_for)
    }
}

const RESTORE_SELECT: &str =
    "SELECT r.id, r.client_id, r.srk_public, r.created, r.state, r.secret_hash,
            (SELECT host FROM machines m WHERE m.client_id = r.client_id), r.approved
     FROM restore_requests r";

fn restore_row(r: &Row) -> Result<RestoreRow> {
    Ok(RestoreRow {
        id: r.get(0)?,
        client_id: r.get(1)?,
        srk_public: r.get(2)?,
        created: r.get(3)?,
        state: r.get(4)?,
        secret_hash: r.get(5)?,
        host: r.get(6)?,
        approved: r.get(7)?,
    })
}

fn expired(id: &str, at: i64) -> StoreError {
    StoreError::NotFound(format!(
        "restore request {id} expired at {}; the machine must ask again (lifeline restore --server)",
        humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(at.max(0) as u64))
    ))
}

pub(super) fn restore_request(conn: &mut Conn, id: &str) -> Result<RestoreRow> {
    conn.query_opt(&format!("{RESTORE_SELECT} WHERE r.id = $1"), args![id])?
        .ok_or_else(|| StoreError::NotFound(format!("no restore request {id}")))
        .and_then(|r| restore_row(&r))
}

/// Restore request `id`, refused unless it is in `state` and has not expired.
pub(super) fn restore_in_state(
    conn: &mut Conn,
    id: &str,
    state: &str,
    valid_for: i64,
) -> Result<RestoreRow> {
    let row = restore_request(conn, id)?;
    if row.expired(valid_for) {
        return Err(expired(id, row.expires(valid_for)));
    }
    if row.state != state {
        return Err(StoreError::Refused(match row.state.as_str() {
            "challenged" => {
                format!("restore request {id} waits for the machine's genuine-TPM proof")
            }
            other => format!("restore request {id} is {other}"),
        }));
    }
    Ok(row)
}

/// How restore request `id` moves on: from state `from` to `to`, storing `body` when given.
pub struct Advance<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub body: Option<&'a [u8]>,
}

impl Store {
    /// Files a restore request for `client_id` to the storage key named `srk_name` (hex), replacing
    /// any earlier unapproved (or expired) one for the same pair. With `secret_hash` the request
    /// waits for the genuine-TPM proof first. An approved request for the same pair that has not
    /// expired is returned as it is.
    pub fn file_restore_request(
        &mut self,
        client_id: &str,
        srk_name: &str,
        srk_public: &[u8],
        secret_hash: Option<&[u8]>,
        from: &str,
        valid_for: i64,
    ) -> Result<RestoreRow> {
        self.conn.transaction(|tx| {
            let approved = tx
                .query_opt(
                    &format!("{RESTORE_SELECT} WHERE r.client_id = $1 AND r.srk_name = $2 AND r.state = 'approved'"),
                    args![client_id, srk_name],
                )?
                .map(|r| restore_row(&r))
                .transpose()?;
            if let Some(row) = approved.filter(|r| !r.expired(valid_for)) {
                return Ok(row);
            }
            tx.execute(
                "DELETE FROM restore_requests WHERE client_id = $1 AND srk_name = $2",
                args![client_id, srk_name],
            )?;
            let id = random_id().map_err(|e| StoreError::Refused(e.to_string()))?;
            let state = if secret_hash.is_some() {
                "challenged"
            } else {
                "pending"
            };
            tx.execute(
                "INSERT INTO restore_requests (id, client_id, srk_name, srk_public, created, state, secret_hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                args![id, client_id, srk_name, srk_public, now(), state, secret_hash],
            )?;
            audit(tx, from, "restore-request", &format!("{client_id} {id}"))?;
            restore_request(tx, &id)
        })
    }

    pub fn restore_request(&mut self, id: &str) -> Result<RestoreRow> {
        restore_request(&mut self.conn, id)
    }

    pub fn list_restores(&mut self) -> Result<Vec<RestoreRow>> {
        let rows = self
            .conn
            .query(&format!("{RESTORE_SELECT} ORDER BY r.created"), args![])?;
        rows.iter().map(restore_row).collect()
    }

    /// Restore request `id`, refused unless it is in `state` and has not expired.
    pub fn restore_in_state(
        &mut self,
        id: &str,
        state: &str,
        valid_for: i64,
    ) -> Result<RestoreRow> {
        restore_in_state(&mut self.conn, id, state, valid_for)
    }

    /// Moves restore request `id` as `step` says, audited as `action` by `actor` (an approval
    /// starts its validity anew). Refused if the request is not in state `from` (any more) or
    /// expired.
    pub fn advance_restore(
        &mut self,
        id: &str,
        step: Advance<'_>,
        valid_for: i64,
        actor: &str,
        action: &str,
    ) -> Result<()> {
        self.conn.transaction(|tx| {
            let row = restore_in_state(tx, id, step.from, valid_for)?;
            let approved = (step.to == "approved").then(now);
            tx.execute(
                "UPDATE restore_requests SET state = $1, body = COALESCE($2, body),
                 approved = COALESCE($3, approved) WHERE id = $4",
                args![step.to, step.body, approved, id],
            )?;
            audit(tx, actor, action, &format!("{} {id}", row.client_id))
        })
    }

    /// The approved restore file for `client_id` and the storage key named `srk_name`; the fetch is
    /// audited. Not found says whether a request waits.
    pub fn fetch_restore(
        &mut self,
        client_id: &str,
        srk_name: &str,
        from: &str,
        valid_for: i64,
    ) -> Result<Vec<u8>> {
        self.conn.transaction(|tx| {
            let row = tx
                .query_opt(
                    &format!("{RESTORE_SELECT} WHERE r.client_id = $1 AND r.srk_name = $2"),
                    args![client_id, srk_name],
                )?
                .ok_or_else(|| {
                    StoreError::NotFound("no restore request for this client and TPM".into())
                })?;
            let row = restore_row(&row)?;
            if row.expired(valid_for) {
                return Err(expired(&row.id, row.expires(valid_for)));
            }
            let body: Option<Vec<u8>> = tx
                .query_one(
                    "SELECT body FROM restore_requests WHERE id = $1",
                    args![row.id],
                )?
                .get(0)?;
            let body = match body {
                Some(body) if row.state == "approved" => body,
                _ => {
                    return Err(StoreError::NotFound(format!(
                        "restore request {} is {}, not approved yet",
                        row.id, row.state
                    )))
                }
            };
            audit(
                tx,
                from,
                "fetch-restore",
                &format!("{client_id} {}", row.id),
            )?;
            Ok(body)
        })
    }

    /// Deletes restore request `id` (whatever its state), audited.
    pub fn delete_restore(&mut self, id: &str, actor: &str) -> Result<()> {
        self.conn.transaction(|tx| {
            let row = restore_request(tx, id)?;
            tx.execute("DELETE FROM restore_requests WHERE id = $1", args![id])?;
            audit(
                tx,
                actor,
                "delete-restore",
                &format!("{} {id}", row.client_id),
            )
        })
    }
}
