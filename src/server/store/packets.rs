//! Escrow packets: stored per machine and volume, listed, retired.

use rusqlite::{params, OptionalExtension};

use super::*;

#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    New(String),
    AlreadyInEscrow(String),
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
    pub fn store_packet(
        &mut self,
        machine: &Machine,
        volume_uuid: &str,
        fingerprint: &str,
        body: &[u8],
        limit: u32,
        obsolete_older: bool,
    ) -> Result<Stored> {
        let conn = &mut self.conn;
        let tx = conn.savepoint()?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT id FROM packets WHERE machine = ?1 AND volume_uuid = ?2 AND fingerprint = ?3 AND obsolete = 0",
                params![machine.id, volume_uuid, fingerprint],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            return Ok(Stored::AlreadyInEscrow(id));
        }
        let count: u32 = tx.query_row(
            "SELECT COUNT(*) FROM packets WHERE machine = ?1",
            params![machine.id],
            |r| r.get(0),
        )?;
        if count >= limit {
            return Err(StoreError::Refused(format!(
                "this machine has {count} packets in escrow, the most allowed; ask an administrator to delete obsolete ones"
            )));
        }
        let id = random_id().map_err(|e| StoreError::Refused(e.to_string()))?;
        if obsolete_older {
            tx.execute(
                "UPDATE packets SET obsolete = 1 WHERE machine = ?1 AND volume_uuid = ?2",
                params![machine.id, volume_uuid],
            )?;
        }
        tx.execute(
            "INSERT INTO packets (id, machine, volume_uuid, fingerprint, body, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, machine.id, volume_uuid, fingerprint, body, now()],
        )?;
        audit(&tx, &machine.id, "escrow", &format!("{volume_uuid} {id}"))?;
        tx.commit()?;
        Ok(Stored::New(id))
    }

    pub fn list_packets(&self) -> Result<Vec<PacketRow>> {
        let conn = &self.conn;
        let mut stmt = conn.prepare(
            "SELECT p.id, p.machine, m.host, p.volume_uuid, p.created, p.obsolete FROM packets p JOIN machines m ON m.id = p.machine ORDER BY p.created",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PacketRow {
                id: r.get(0)?,
                machine: r.get(1)?,
                host: r.get(2)?,
                volume_uuid: r.get(3)?,
                created: r.get(4)?,
                obsolete: r.get::<_, i64>(5)? != 0,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Marks a packet obsolete (kept, but no longer used for recovery) or deletes it.
    pub fn retire_packet(&mut self, admin: &str, packet: &str, delete: bool) -> Result<()> {
        let conn = &mut self.conn;
        let tx = conn.savepoint()?;
        let changed = if delete {
            tx.execute("DELETE FROM packets WHERE id = ?1", params![packet])?
        } else {
            tx.execute(
                "UPDATE packets SET obsolete = 1 WHERE id = ?1",
                params![packet],
            )?
        };
        if changed == 0 {
            return Err(StoreError::NotFound(format!("no escrow packet {packet}")));
        }
        audit(
            &tx,
            admin,
            if delete { "delete" } else { "obsolete" },
            packet,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// An escrow packet's ciphertext, for an administrator about to decrypt it; the read is audited
    /// as `action` (and fails if the audit entry cannot be written).
    pub fn read_packet_for_admin(
        &mut self,
        admin: &str,
        packet: &str,
        action: &str,
    ) -> Result<Vec<u8>> {
        let conn = &mut self.conn;
        let tx = conn.savepoint()?;
        let body: Option<Vec<u8>> = tx
            .query_row(
                "SELECT body FROM packets WHERE id = ?1",
                params![packet],
                |r| r.get(0),
            )
            .optional()?;
        let body =
            body.ok_or_else(|| StoreError::NotFound(format!("no escrow packet {packet}")))?;
        audit(&tx, admin, action, packet)?;
        tx.commit()?;
        Ok(body)
    }
}
