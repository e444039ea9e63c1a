//! Escrow packets: stored per machine and volume, listed, retired.

use super::sql::args;
use super::*;

#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    New(String),
    AlreadyInEscrow(String),
}

/// What the server holds for one volume of a machine, for `lifeline status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowState {
    /// `api::ESCROW_CURRENT`, `_STALE`, `_MISSING` or `_UNKNOWN`.
    pub escrow: &'static str,
    /// The packet holding this key, else the newest in use.
    pub packet: Option<String>,
    pub revealed: bool,
}

#[derive(Debug, Clone)]
pub struct PacketRow {
    pub id: String,
    pub machine: String,
    pub host: String,
    pub volume_uuid: String,
    pub created: i64,
    pub obsolete: bool,
}

impl Store {
    /// Stores an escrow packet (ciphertext) for `machine`, unless the same key for the same volume
    /// is in escrow already; with `obsolete_older`, older packets of the volume become obsolete.
    /// `key_fingerprint` is the fingerprint of the key alone (see `escrow_state`).
    #[allow(clippy::too_many_arguments)]
    pub fn store_packet(
        &mut self,
        machine: &Machine,
        volume_uuid: &str,
        fingerprint: &str,
        key_fingerprint: &str,
        body: &[u8],
        limit: u32,
        obsolete_older: bool,
    ) -> Result<Stored> {
        self.conn.transaction(|tx| {
            let existing: Option<String> = tx
                .query_opt(
                    "SELECT id FROM packets WHERE machine = $1 AND volume_uuid = $2 AND fingerprint = $3 AND obsolete = 0",
                    args![machine.id, volume_uuid, fingerprint],
                )?
                .map(|r| r.get(0))
                .transpose()?;
            if let Some(id) = existing {
                return Ok(Stored::AlreadyInEscrow(id));
            }
            let count: u32 = tx
                .query_one(
                    "SELECT COUNT(*) FROM packets WHERE machine = $1",
                    args![machine.id],
                )?
                .get(0)?;
            if count >= limit {
                return Err(StoreError::Refused(format!(
                    "this machine has {count} packets in escrow, the most allowed; ask an administrator to delete obsolete ones"
                )));
            }
            let id = random_id().map_err(|e| StoreError::Refused(e.to_string()))?;
            if obsolete_older {
                tx.execute(
                    "UPDATE packets SET obsolete = 1 WHERE machine = $1 AND volume_uuid = $2",
                    args![machine.id, volume_uuid],
                )?;
            }
            tx.execute(
                "INSERT INTO packets (id, machine, volume_uuid, fingerprint, key_fingerprint, body, created) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                args![id, machine.id, volume_uuid, fingerprint, key_fingerprint, body, now()],
            )?;
            audit(tx, &machine.id, "escrow", &format!("{volume_uuid} {id}"))?;
            Ok(Stored::New(id))
        })
    }

    /// Whether a packet in use holds the key whose fingerprint (of the key alone) is `key`, and
    /// whether an administrator was shown its recovery passphrase.
    pub fn escrow_state(
        &mut self,
        machine: &Machine,
        volume_uuid: &str,
        key: Option<&str>,
    ) -> Result<EscrowState> {
        let rows = self
            .conn
            .query(
                "SELECT id, key_fingerprint, revealed IS NOT NULL FROM packets
                 WHERE machine = $1 AND volume_uuid = $2 AND obsolete = 0 ORDER BY created DESC, rowid DESC",
                args![machine.id, volume_uuid],
            )?
            .iter()
            .map(|r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<Option<String>>(1)?,
                    r.get::<bool>(2)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let held = key.and_then(|k| rows.iter().find(|(_, f, _)| f.as_deref() == Some(k)));
        let (escrow, row) = match (key, held, rows.first()) {
            (_, _, None) => (crate::api::ESCROW_MISSING, None),
            (None, _, Some(newest)) => (crate::api::ESCROW_UNKNOWN, Some(newest)),
            (Some(_), Some(held), _) => (crate::api::ESCROW_CURRENT, Some(held)),
            (Some(_), None, Some(newest)) => (crate::api::ESCROW_STALE, Some(newest)),
        };
        Ok(EscrowState {
            escrow,
            packet: row.map(|(id, _, _)| id.clone()),
            revealed: row.is_some_and(|(_, _, revealed)| *revealed),
        })
    }

    /// Records that an administrator was shown a packet's recovery passphrase (the machine
    /// replaces it at its next `lifeline status --repair`).
    pub fn mark_revealed(&mut self, admin: &str, packet: &str) -> Result<()> {
        self.conn.transaction(|tx| {
            let changed = tx.execute(
                "UPDATE packets SET revealed = COALESCE(revealed, $2) WHERE id = $1",
                args![packet, now()],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("no escrow packet {packet}")));
            }
            audit(tx, admin, "passphrase-revealed", packet)
        })
    }

    pub fn list_packets(&mut self) -> Result<Vec<PacketRow>> {
        let rows = self.conn.query(
            "SELECT p.id, p.machine, m.host, p.volume_uuid, p.created, p.obsolete FROM packets p JOIN machines m ON m.id = p.machine ORDER BY p.created",
            args![],
        )?;
        rows.iter()
            .map(|r| {
                Ok(PacketRow {
                    id: r.get(0)?,
                    machine: r.get(1)?,
                    host: r.get(2)?,
                    volume_uuid: r.get(3)?,
                    created: r.get(4)?,
                    obsolete: r.get(5)?,
                })
            })
            .collect()
    }

    /// Marks a packet obsolete (kept, but no longer used for recovery) or deletes it.
    pub fn retire_packet(&mut self, admin: &str, packet: &str, delete: bool) -> Result<()> {
        self.conn.transaction(|tx| {
            let changed = if delete {
                tx.execute("DELETE FROM packets WHERE id = $1", args![packet])?
            } else {
                tx.execute(
                    "UPDATE packets SET obsolete = 1 WHERE id = $1",
                    args![packet],
                )?
            };
            if changed == 0 {
                return Err(StoreError::NotFound(format!("no escrow packet {packet}")));
            }
            audit(
                tx,
                admin,
                if delete { "delete" } else { "obsolete" },
                packet,
            )
        })
    }

    /// An escrow packet's ciphertext, for an administrator about to decrypt it; the read is audited
    /// as `action` (and fails if the audit entry cannot be written).
    pub fn read_packet_for_admin(
        &mut self,
        admin: &str,
        packet: &str,
        action: &str,
    ) -> Result<Vec<u8>> {
        self.conn.transaction(|tx| {
            let body: Vec<u8> = tx
                .query_opt("SELECT body FROM packets WHERE id = $1", args![packet])?
                .ok_or_else(|| StoreError::NotFound(format!("no escrow packet {packet}")))?
                .get(0)?;
            audit(tx, admin, action, packet)?;
            Ok(body)
        })
    }
}
