//! Administrators, enrollment tokens and machines: who may call the server.

use super::sql::{args, Conn, Row};
use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub id: String,
    pub machine_id: String,
    pub client_id: Option<String>,
    pub host: String,
}

/// A `Machine` from four consecutive columns (id, machine_id, client_id, host) from `first`.
pub(super) fn machine_at(r: &Row, first: usize) -> Result<Machine> {
    Ok(Machine {
        id: r.get(first)?,
        machine_id: r.get(first + 1)?,
        client_id: r.get(first + 2)?,
        host: r.get(first + 3)?,
    })
}

#[derive(Debug, Clone)]
pub struct MachineRow {
    pub machine: Machine,
    pub created: i64,
    pub packets: u32,
    /// The last `lifeline status` report: when, and what was wrong ("" when nothing).
    pub report: Option<(i64, String)>,
}

/// Before a DRSK backup of `client_id` from machine `m`: refused when another machine holds
/// that client ID.
pub(super) fn check_drsk_owner(conn: &mut Conn, m: &Machine, client_id: &str) -> Result<()> {
    let other: Option<String> = conn
        .query_opt(
            "SELECT host FROM machines WHERE client_id = $1 AND id != $2",
            args![client_id, m.id],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    match other {
        Some(host) => Err(StoreError::Refused(format!(
            "client {client_id} belongs to another machine ({host})"
        ))),
        None => Ok(()),
    }
}

impl Store {
    pub fn add_admin(&mut self, name: &str, credential: &str) -> Result<()> {
        self.conn.transaction(|tx| {
            let inserted = tx.execute(
                "INSERT INTO admins (name, credential_hash, created) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                args![name, sha256(credential.as_bytes()), now()],
            )?;
            if inserted == 0 {
                return Err(StoreError::Refused(format!(
                    "administrator {name} exists already"
                )));
            }
            audit(tx, "local", "add-admin", name)
        })
    }

    pub fn admin_by_credential(&mut self, credential: &str) -> Result<Option<String>> {
        self.conn
            .query_opt(
                "SELECT name FROM admins WHERE credential_hash = $1",
                args![sha256(credential.as_bytes())],
            )?
            .map(|r| r.get(0))
            .transpose()
    }

    pub fn machine_by_credential(&mut self, credential: &str) -> Result<Option<Machine>> {
        self.conn
            .query_opt(
                "SELECT id, machine_id, client_id, host FROM machines WHERE credential_hash = $1",
                args![sha256(credential.as_bytes())],
            )?
            .map(|r| machine_at(&r, 0))
            .transpose()
    }

    pub fn add_enrollment_token(
        &mut self,
        admin: &str,
        token: &str,
        valid_secs: i64,
    ) -> Result<()> {
        self.conn.transaction(|tx| {
            let now = now();
            tx.execute(
                "INSERT INTO enrollment_tokens (token_hash, created, expires) VALUES ($1, $2, $3)",
                args![sha256(token.as_bytes()), now, now + valid_secs],
            )?;
            audit(tx, admin, "enrollment-token", "")
        })
    }

    /// Uses an enrollment token once and registers the machine with its credential.
    pub fn join(&mut self, token: &str, m: &Machine, credential: &str) -> Result<()> {
        self.conn.transaction(|tx| {
            let used = tx.execute(
                "UPDATE enrollment_tokens SET used_by = $1 WHERE token_hash = $2 AND used_by IS NULL AND expires > $3",
                args![m.id, sha256(token.as_bytes()), now()],
            )?;
            if used != 1 {
                return Err(StoreError::Refused(
                    "the enrollment token is unknown, used or expired".into(),
                ));
            }
            tx.execute(
                "INSERT INTO machines (id, machine_id, client_id, host, credential_hash, created) VALUES ($1, $2, $3, $4, $5, $6)",
                args![m.id, m.machine_id, m.client_id, m.host, sha256(credential.as_bytes()), now()],
            )?;
            audit(tx, &m.id, "join", &format!("{} {}", m.host, m.machine_id))
        })
    }

    pub fn list_machines(&mut self) -> Result<Vec<MachineRow>> {
        let rows = self.conn.query(
            "SELECT m.id, m.machine_id, m.client_id, m.host, m.created,
                    (SELECT COUNT(*) FROM packets p WHERE p.machine = m.id AND p.obsolete = 0),
                    m.report_time, COALESCE(m.report_problems, '')
             FROM machines m ORDER BY m.created",
            args![],
        )?;
        rows.iter()
            .map(|r| {
                let report = match r.get::<Option<i64>>(6)? {
                    Some(time) => Some((time, r.get(7)?)),
                    None => None,
                };
                Ok(MachineRow {
                    machine: machine_at(r, 0)?,
                    created: r.get(4)?,
                    packets: r.get(5)?,
                    report,
                })
            })
            .collect()
    }

    /// Keeps machine `m`'s latest `lifeline status` report: now, and what is wrong (one line
    /// per problem; none: healthy). Not audited: it changes no key material, and arrives daily
    /// from every machine.
    pub fn record_report(&mut self, m: &Machine, problems: &[String]) -> Result<()> {
        self.conn.execute(
            "UPDATE machines SET report_time = $1, report_problems = $2 WHERE id = $3",
            args![now(), problems.join("\n"), m.id],
        )?;
        Ok(())
    }

    /// Before a DRSK backup of `client_id` from machine `m`: refused when another machine holds
    /// that client ID.
    pub fn check_drsk_owner(&mut self, m: &Machine, client_id: &str) -> Result<()> {
        check_drsk_owner(&mut self.conn, m, client_id)
    }

    /// Records that the DRSK `client_id` of machine `m` is in custody (the machine's client ID
    /// becomes `client_id`: a re-provisioned machine has a new one).
    pub fn record_drsk_backup(&mut self, m: &Machine, client_id: &str) -> Result<()> {
        self.conn.transaction(|tx| {
            check_drsk_owner(tx, m, client_id)?;
            tx.execute(
                "UPDATE machines SET client_id = $1 WHERE id = $2",
                args![client_id, m.id],
            )?;
            audit(tx, &m.id, "drsk-backup", client_id)
        })
    }
}
