//! Recovery requests and the recovery packets published for them.

use rusqlite::{params, OptionalExtension};

use super::machines::machine_at;
use super::*;

#[derive(Debug, Clone)]
pub struct RequestRow {
    pub id: String,
    pub machine: Machine,
    pub volume_uuid: String,
    pub created: i64,
    pub state: String,
}

const REQUEST_SELECT: &str =
    "SELECT r.id, m.id, m.machine_id, m.client_id, m.host, r.volume_uuid, r.created, r.state
     FROM recovery_requests r JOIN machines m ON m.id = r.machine";

fn request_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRow> {
    Ok(RequestRow {
        id: r.get(0)?,
        machine: machine_at(r, 1)?,
        volume_uuid: r.get(5)?,
        created: r.get(6)?,
        state: r.get(7)?,
    })
}

/// A recovery request by ID.
fn request_by_id(conn: &Connection, request: &str) -> Result<RequestRow> {
    conn.query_row(
        &format!("{REQUEST_SELECT} WHERE r.id = ?1"),
        params![request],
        request_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("no recovery request {request}")))
}

/// A recovery packet to publish: its ID, the file, when it expires (seconds since the epoch),
/// and the SHA-256 of the use token inside.
pub struct NewRecovery<'a> {
    pub id: &'a str,
    pub body: &'a [u8],
    pub expires: i64,
    pub use_token_hash: &'a [u8],
}

impl Store {
    /// Files a recovery request for a machine (named by its machine ID or client ID) and volume
    /// that have a packet in escrow. Returns the request ID and the machine.
    pub fn request_recovery(
        &mut self,
        machine_or_client: &str,
        volume_uuid: &str,
        from: &str,
    ) -> Result<(String, Machine)> {
        let conn = &mut self.conn;
        let tx = conn.savepoint()?;
        let found: Option<Machine> = tx
            .query_row(
                "SELECT m.id, m.machine_id, m.client_id, m.host FROM machines m JOIN packets p ON p.machine = m.id
                 WHERE (m.machine_id = ?1 OR m.client_id = ?1) AND p.volume_uuid = ?2 AND p.obsolete = 0 LIMIT 1",
                params![machine_or_client, volume_uuid],
                |r| machine_at(r, 0),
            )
            .optional()?;
        let found = found.ok_or_else(|| {
            StoreError::NotFound("no escrowed key for that machine and volume".into())
        })?;
        let machine = found.id.clone();
        let pending: Option<String> = tx
            .query_row(
                "SELECT id FROM recovery_requests WHERE machine = ?1 AND volume_uuid = ?2 AND state = 'pending'",
                params![machine, volume_uuid],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = pending {
            return Ok((id, found));
        }
        let id = random_id().map_err(|e| StoreError::Refused(e.to_string()))?;
        tx.execute(
            "INSERT INTO recovery_requests (id, machine, volume_uuid, created, state) VALUES (?1, ?2, ?3, ?4, 'pending')",
            params![id, machine, volume_uuid, now()],
        )?;
        audit(
            &tx,
            from,
            "recovery-request",
            &format!("{volume_uuid} {id}"),
        )?;
        tx.commit()?;
        Ok((id, found))
    }

    pub fn list_requests(&self) -> Result<Vec<RequestRow>> {
        let conn = &self.conn;
        let mut stmt = conn.prepare(&format!("{REQUEST_SELECT} ORDER BY r.created"))?;
        let rows = stmt.query_map([], request_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The newest escrow packet for a pending request (what an approval opens).
    pub fn packet_for_request(&self, request: &str) -> Result<(RequestRow, Vec<u8>)> {
        let conn = &self.conn;
        let req = request_by_id(conn, request)?;
        if req.state != "pending" {
            return Err(StoreError::Refused(format!(
                "recovery request {request} is {}",
                req.state
            )));
        }
        let body: Option<Vec<u8>> = conn
            .query_row(
                "SELECT body FROM packets WHERE machine = ?1 AND volume_uuid = ?2 AND obsolete = 0 ORDER BY created DESC LIMIT 1",
                params![req.machine.id, req.volume_uuid],
                |r| r.get(0),
            )
            .optional()?;
        let body = body.ok_or_else(|| {
            StoreError::NotFound(format!(
                "recovery request {request}: the volume's escrow packets were retired or deleted since it was filed; escrow the volume again"
            ))
        })?;
        Ok((req, body))
    }

    /// `packet_for_request` for an administrator who opens it on their own machine: audited.
    pub fn escrow_for_request(
        &mut self,
        admin: &str,
        request: &str,
    ) -> Result<(RequestRow, Vec<u8>)> {
        let found = self.packet_for_request(request)?;
        let tx = self.conn.savepoint()?;
        audit(
            &tx,
            admin,
            "read-escrow",
            &format!("{} {request}", found.0.volume_uuid),
        )?;
        tx.commit()?;
        Ok(found)
    }

    /// Audits one administrator's share toward a K-of-N approval of a pending request.
    pub fn audit_share(
        &mut self,
        admin: &str,
        request: &str,
        received: u8,
        needed: u8,
    ) -> Result<()> {
        let tx = self.conn.savepoint()?;
        if request_by_id(&tx, request)?.state != "pending" {
            return Err(StoreError::Refused(format!(
                "recovery request {request} is not pending"
            )));
        }
        audit(
            &tx,
            admin,
            "share-submitted",
            &format!("{request} {received}/{needed}"),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Publishes an approved recovery packet (replacing any earlier one for that volume),
    /// audited as `action` by `admin`.
    pub fn publish_recovery(
        &mut self,
        admin: &str,
        action: &str,
        request: &RequestRow,
        packet: &NewRecovery<'_>,
    ) -> Result<()> {
        let NewRecovery {
            id: packet_id,
            body,
            expires,
            use_token_hash,
        } = *packet;
        let conn = &mut self.conn;
        let tx = conn.savepoint()?;
        // Approved twice at once: only the first publishes.
        if request_by_id(&tx, &request.id)?.state != "pending" {
            return Err(StoreError::Refused(format!(
                "recovery request {} was approved already",
                request.id
            )));
        }
        tx.execute(
            "DELETE FROM recovery_packets WHERE machine_id = ?1 AND volume_uuid = ?2",
            params![request.machine.machine_id, request.volume_uuid],
        )?;
        tx.execute(
            "INSERT INTO recovery_packets (id, request, machine_id, volume_uuid, body, expires, use_token_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![packet_id, request.id, request.machine.machine_id, request.volume_uuid, body, expires, use_token_hash],
        )?;
        tx.execute(
            "UPDATE recovery_requests SET state = 'approved' WHERE id = ?1",
            params![request.id],
        )?;
        audit(
            &tx,
            admin,
            action,
            &format!("{} {} {packet_id}", request.volume_uuid, request.id),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The published recovery packet for a machine (machine ID or client ID) and volume, if any
    /// and not expired. Fetches are audited: they hand out key material, encrypted.
    pub fn fetch_recovery(
        &mut self,
        machine_or_client: &str,
        volume_uuid: &str,
        from: &str,
    ) -> Result<Vec<u8>> {
        let conn = &mut self.conn;
        let tx = conn.savepoint()?;
        let found: Option<(String, Vec<u8>)> = tx
            .query_row(
                "SELECT rp.id, rp.body FROM recovery_packets rp
                 WHERE rp.volume_uuid = ?2 AND rp.expires > ?3 AND (rp.machine_id = ?1
                    OR rp.machine_id IN (SELECT machine_id FROM machines WHERE client_id = ?1))",
                params![machine_or_client, volume_uuid, now()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (id, body) = found.ok_or_else(|| {
            StoreError::NotFound("no recovery packet is published for that volume".into())
        })?;
        audit(&tx, from, "fetch-recovery", &format!("{volume_uuid} {id}"))?;
        tx.commit()?;
        Ok(body)
    }

    /// Marks a recovery packet used: it is deleted and cannot be fetched again. `use_token` is the
    /// token from inside the packet: only someone who opened it can report it used.
    pub fn recovery_used(&mut self, packet_id: &str, use_token: &[u8], from: &str) -> Result<()> {
        let conn = &mut self.conn;
        let tx = conn.savepoint()?;
        let found: Option<(String, Vec<u8>)> = tx
            .query_row(
                "SELECT request, use_token_hash FROM recovery_packets WHERE id = ?1",
                params![packet_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (request, hash) =
            found.ok_or_else(|| StoreError::NotFound(format!("no recovery packet {packet_id}")))?;
        if !crate::secret::ct_eq(&sha256(use_token), &hash) {
            return Err(StoreError::Refused(
                "the use token does not match: only the opened packet can report its use".into(),
            ));
        }
        tx.execute(
            "DELETE FROM recovery_packets WHERE id = ?1",
            params![packet_id],
        )?;
        tx.execute(
            "UPDATE recovery_requests SET state = 'used' WHERE id = ?1",
            params![request],
        )?;
        audit(&tx, from, "recovery-used", packet_id)?;
        tx.commit()?;
        Ok(())
    }
}
