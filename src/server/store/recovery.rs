//! Recovery requests and the recovery packets published for them.

use super::machines::machine_at;
use super::sql::{args, Conn, Row};
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

fn request_row(r: &Row) -> Result<RequestRow> {
    Ok(RequestRow {
        id: r.get(0)?,
        machine: machine_at(r, 1)?,
        volume_uuid: r.get(5)?,
        created: r.get(6)?,
        state: r.get(7)?,
    })
}

/// A recovery request by ID.
fn request_by_id(conn: &mut Conn, request: &str) -> Result<RequestRow> {
    conn.query_opt(&format!("{REQUEST_SELECT} WHERE r.id = $1"), args![request])?
        .ok_or_else(|| StoreError::NotFound(format!("no recovery request {request}")))
        .and_then(|r| request_row(&r))
}

/// The newest escrow packet for pending request `request`.
fn packet_for_request(conn: &mut Conn, request: &str) -> Result<(RequestRow, Vec<u8>)> {
    let req = request_by_id(conn, request)?;
    if req.state != "pending" {
        return Err(StoreError::Refused(format!(
            "recovery request {request} is {}",
            req.state
        )));
    }
    let body: Vec<u8> = conn
        .query_opt(
            "SELECT body FROM packets WHERE machine = $1 AND volume_uuid = $2 AND obsolete = 0 ORDER BY created DESC LIMIT 1",
            args![req.machine.id, req.volume_uuid],
        )?
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "recovery request {request}: the volume's escrow packets were retired or deleted since it was filed; escrow the volume again"
            ))
        })?
        .get(0)?;
    Ok((req, body))
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
        self.conn.transaction(|tx| {
            let found = tx
                .query_opt(
                    "SELECT m.id, m.machine_id, m.client_id, m.host FROM machines m JOIN packets p ON p.machine = m.id
                     WHERE (m.machine_id = $1 OR m.client_id = $1) AND p.volume_uuid = $2 AND p.obsolete = 0 LIMIT 1",
                    args![machine_or_client, volume_uuid],
                )?
                .ok_or_else(|| {
                    StoreError::NotFound("no escrowed key for that machine and volume".into())
                })?;
            let found = machine_at(&found, 0)?;
            let machine = found.id.clone();
            let pending: Option<String> = tx
                .query_opt(
                    "SELECT id FROM recovery_requests WHERE machine = $1 AND volume_uuid = $2 AND state = 'pending'",
                    args![machine, volume_uuid],
                )?
                .map(|r| r.get(0))
                .transpose()?;
            if let Some(id) = pending {
                return Ok((id, found));
            }
            let id = random_id().map_err(|e| StoreError::Refused(e.to_string()))?;
            tx.execute(
                "INSERT INTO recovery_requests (id, machine, volume_uuid, created, state) VALUES ($1, $2, $3, $4, 'pending')",
                args![id, machine, volume_uuid, now()],
            )?;
            audit(tx, from, "recovery-request", &format!("{volume_uuid} {id}"))?;
            Ok((id, found))
        })
    }

    pub fn list_requests(&mut self) -> Result<Vec<RequestRow>> {
        let rows = self
            .conn
            .query(&format!("{REQUEST_SELECT} ORDER BY r.created"), args![])?;
        rows.iter().map(request_row).collect()
    }

    /// The newest escrow packet for a pending request (what an approval opens).
    pub fn packet_for_request(&mut self, request: &str) -> Result<(RequestRow, Vec<u8>)> {
        packet_for_request(&mut self.conn, request)
    }

    /// `packet_for_request` for an administrator who opens it on their own machine: audited.
    pub fn escrow_for_request(
        &mut self,
        admin: &str,
        request: &str,
    ) -> Result<(RequestRow, Vec<u8>)> {
        self.conn.transaction(|tx| {
            let found = packet_for_request(tx, request)?;
            let subject = format!("{} {request}", found.0.volume_uuid);
            audit(tx, admin, "read-escrow", &subject)?;
            Ok(found)
        })
    }

    /// Audits one administrator's share toward a K-of-N approval of a pending request.
    pub fn audit_share(
        &mut self,
        admin: &str,
        request: &str,
        received: u8,
        needed: u8,
    ) -> Result<()> {
        self.conn.transaction(|tx| {
            if request_by_id(tx, request)?.state != "pending" {
                return Err(StoreError::Refused(format!(
                    "recovery request {request} is not pending"
                )));
            }
            audit(
                tx,
                admin,
                "share-submitted",
                &format!("{request} {received}/{needed}"),
            )
        })
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
        self.conn.transaction(|tx| {
            // Approved twice at once: only the first publishes.
            if request_by_id(tx, &request.id)?.state != "pending" {
                return Err(StoreError::Refused(format!(
                    "recovery request {} was approved already",
                    request.id
                )));
            }
            tx.execute(
                "DELETE FROM recovery_packets WHERE machine_id = $1 AND volume_uuid = $2",
                args![request.machine.machine_id, request.volume_uuid],
            )?;
            tx.execute(
                "INSERT INTO recovery_packets (id, request, machine_id, volume_uuid, body, expires, use_token_hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                args![packet_id, request.id, request.machine.machine_id, request.volume_uuid, body, expires, use_token_hash],
            )?;
            tx.execute(
                "UPDATE recovery_requests SET state = 'approved' WHERE id = $1",
                args![request.id],
            )?;
            audit(
                tx,
                admin,
                action,
                &format!("{} {} {packet_id}", request.volume_uuid, request.id),
            )
        })
    }

    /// The published recovery packet for a machine (machine ID or client ID) and volume, if any
    /// and not expired. Fetches are audited: they hand out key material, encrypted.
    pub fn fetch_recovery(
        &mut self,
        machine_or_client: &str,
        volume_uuid: &str,
        from: &str,
    ) -> Result<Vec<u8>> {
        self.conn.transaction(|tx| {
            let found = tx
                .query_opt(
                    "SELECT rp.id, rp.body FROM recovery_packets rp
                     WHERE rp.volume_uuid = $2 AND rp.expires > $3 AND (rp.machine_id = $1
                        OR rp.machine_id IN (SELECT machine_id FROM machines WHERE client_id = $1))",
                    args![machine_or_client, volume_uuid, now()],
                )?
                .ok_or_else(|| {
                    StoreError::NotFound("no recovery packet is published for that volume".into())
                })?;
            let (id, body): (String, Vec<u8>) = (found.get(0)?, found.get(1)?);
            audit(tx, from, "fetch-recovery", &format!("{volume_uuid} {id}"))?;
            Ok(body)
        })
    }

    /// Marks a recovery packet used: it is deleted and cannot be fetched again. `use_token` is the
    /// token from inside the packet: only someone who opened it can report it used.
    pub fn recovery_used(&mut self, packet_id: &str, use_token: &[u8], from: &str) -> Result<()> {
        self.conn.transaction(|tx| {
            let found = tx
                .query_opt(
                    "SELECT request, use_token_hash FROM recovery_packets WHERE id = $1",
                    args![packet_id],
                )?
                .ok_or_else(|| StoreError::NotFound(format!("no recovery packet {packet_id}")))?;
            let (request, hash): (String, Vec<u8>) = (found.get(0)?, found.get(1)?);
            if !crate::secret::ct_eq(&sha256(use_token), &hash) {
                return Err(StoreError::Refused(
                    "the use token does not match: only the opened packet can report its use"
                        .into(),
                ));
            }
            tx.execute(
                "DELETE FROM recovery_packets WHERE id = $1",
                args![packet_id],
            )?;
            tx.execute(
                "UPDATE recovery_requests SET state = 'used' WHERE id = $1",
                args![request],
            )?;
            audit(tx, from, "recovery-used", packet_id)
        })
    }
}
