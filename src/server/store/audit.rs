//! The audit log: a hash chain in the database, each entry written in the same transaction as
//! the change it records, and the stream of entries to an external sink (`audit_stream`) that
//! makes a truncated chain detectable.

use super::sql::{args, Conn};
use super::*;

/// An audit entry's hash: over the previous hash and every field, length-prefixed.
fn entry_hash(
    prev: &[u8],
    seq: i64,
    time: i64,
    actor: &str,
    action: &str,
    subject: &str,
) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    for part in [
        &seq.to_be_bytes()[..],
        &time.to_be_bytes(),
        actor.as_bytes(),
        action.as_bytes(),
        subject.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().to_vec()
}

/// Appends an audit entry inside `tx`.
pub(super) fn audit(tx: &mut Conn, actor: &str, action: &str, subject: &str) -> Result<()> {
    let last = tx.query_opt(
        "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
        args![],
    )?;
    let (seq, prev) = match last {
        Some(r) => (r.get::<i64>(0)? + 1, r.get(1)?),
        None => (1, vec![0; 32]),
    };
    let time = now();
    let hash = entry_hash(&prev, seq, time, actor, action, subject);
    tx.execute(
        "INSERT INTO audit (seq, time, actor, action, subject, prev, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        args![seq, time, actor, action, subject, prev, hash],
    )?;
    Ok(())
}

/// Where every committed audit entry is also written, as a JSON line: somewhere the operator
/// keeps and whoever can write the database cannot rewrite — standard error (journald, under
/// systemd) or an append-only file — so that `audit verify --stream` notices when the newest
/// entries were deleted from the database, which the hash chain alone cannot show.
pub enum AuditStream {
    None,
    Stderr,
    File(std::fs::File),
}

impl AuditStream {
    /// `none`, `stderr`, or a file path (relative to `dir`), opened for appending.
    pub fn open(setting: &str, dir: &Path) -> std::io::Result<AuditStream> {
        Ok(match setting {
            "none" => AuditStream::None,
            "stderr" => AuditStream::Stderr,
            path => AuditStream::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(path))?,
            ),
        })
    }

    pub(super) fn write(&mut self, lines: &str) -> std::io::Result<()> {
        use std::io::Write;
        match self {
            AuditStream::None => Ok(()),
            AuditStream::Stderr => std::io::stderr().write_all(lines.as_bytes()),
            AuditStream::File(f) => f.write_all(lines.as_bytes()).and_then(|()| f.sync_data()),
        }
    }
}

/// The key that marks a line of the audit stream (other log lines may be mixed in).
pub(super) const STREAM_TAG: &str = "lifeline_audit";

/// The entries after `after`, as stream lines, and the newest entry's number.
pub(super) fn stream_lines(conn: &mut Conn, after: i64) -> Result<(String, i64)> {
    let rows = conn.query(
        "SELECT seq, time, actor, action, subject, prev, hash FROM audit WHERE seq > $1 ORDER BY seq",
        args![after],
    )?;
    let (mut text, mut head) = (String::new(), after);
    for r in rows {
        head = r.get(0)?;
        let line = serde_json::json!({
            STREAM_TAG: 1,
            "seq": head,
            "time": r.get::<i64>(1)?,
            "actor": r.get::<String>(2)?,
            "action": r.get::<String>(3)?,
            "subject": r.get::<String>(4)?,
            "prev": hex::encode(&r.get::<Vec<u8>>(5)?),
            "hash": hex::encode(&r.get::<Vec<u8>>(6)?),
        });
        text.push_str(&format!("{line}\n"));
    }
    Ok((text, head))
}

/// Sizes an operator watches.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub pending_recoveries: u64,
    pub pending_restores: u64,
    pub audit_entries: u64,
}

/// An audit entry as the web console shows it.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub seq: i64,
    pub time: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
}

impl Store {
    /// Writes an audit entry that records no other change (a sign-in, a refused one).
    pub fn audit_event(&mut self, actor: &str, action: &str, subject: &str) -> Result<()> {
        self.conn
            .transaction(|tx| audit(tx, actor, action, subject))
    }

    /// What `/metrics` and `/v1/health` count.
    pub fn counts(&mut self) -> Result<Counts> {
        let mut count = |sql: &str| -> Result<u64> {
            Ok(self.conn.query_one(sql, args![])?.get::<i64>(0)?.max(0) as u64)
        };
        Ok(Counts {
            pending_recoveries: count(
                "SELECT COUNT(*) FROM recovery_requests WHERE state = 'pending'",
            )?,
            pending_restores: count(
                "SELECT COUNT(*) FROM restore_requests WHERE state IN ('pending', 'challenged')",
            )?,
            audit_entries: count("SELECT COUNT(*) FROM audit")?,
        })
    }

    /// The newest `limit` audit entries, newest first.
    pub fn newest_audit(&mut self, limit: u32) -> Result<Vec<AuditRow>> {
        let rows = self.conn.query(
            "SELECT seq, time, actor, action, subject FROM audit ORDER BY seq DESC LIMIT $1",
            args![limit],
        )?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    seq: r.get(0)?,
                    time: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    subject: r.get(4)?,
                })
            })
            .collect()
    }

    /// Walks the audit chain; `Err` names the first entry that is not what the chain says.
    pub fn verify_audit(&mut self) -> Result<std::result::Result<usize, String>> {
        let rows = self.conn.query(
            "SELECT seq, time, actor, action, subject, prev, hash FROM audit ORDER BY seq",
            args![],
        )?;
        let mut prev = vec![0u8; 32];
        let mut count = 0;
        for (expected_seq, r) in (1i64..).zip(rows) {
            let (seq, time, actor, action, subject, stored_prev, hash): (
                i64,
                i64,
                String,
                String,
                String,
                Vec<u8>,
                Vec<u8>,
            ) = (
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            );
            if seq != expected_seq {
                return Ok(Err(format!(
                    "entry {expected_seq} is missing or out of order (found {seq} in its place)"
                )));
            }
            if stored_prev != prev {
                return Ok(Err(format!(
                    "entry {seq} does not follow entry {}",
                    seq - 1
                )));
            }
            if entry_hash(&prev, seq, time, &actor, &action, &subject) != hash {
                return Ok(Err(format!("entry {seq} ({action} {subject}) was altered")));
            }
            prev = hash;
            count += 1;
        }
        Ok(Ok(count))
    }

    /// Checks the database's audit log against a captured audit stream: every entry the stream
    /// holds must be in the database, unchanged. `Ok(Err(why))` names the first that is not;
    /// `Ok(Ok(None))`: the stream holds no entries at all.
    pub fn verify_against_stream(
        &mut self,
        stream: &str,
    ) -> Result<std::result::Result<Option<i64>, String>> {
        let conn = &mut self.conn;
        let mut streamed: std::collections::BTreeMap<i64, String> = Default::default();
        for line in stream.lines() {
            // Only our lines count, wherever they are in a log (journalctl -o cat, a file).
            let Some(v) = line
                .find('{')
                .and_then(|i| serde_json::from_str::<serde_json::Value>(&line[i..]).ok())
                .filter(|v| v[STREAM_TAG] == 1)
            else {
                continue;
            };
            if let Some([from, to]) = v["rolled_back"].as_array().map(|r| {
                [r.first(), r.get(1)].map(|n| n.and_then(serde_json::Value::as_i64).unwrap_or(0))
            }) {
                streamed.retain(|seq, _| !(from..=to).contains(seq));
                continue;
            }
            if let (Some(seq), Some(hash)) = (v["seq"].as_i64(), v["hash"].as_str()) {
                // The same number twice with other contents: the database went back and wrote on.
                if streamed
                    .insert(seq, hash.to_string())
                    .is_some_and(|h| h != hash)
                {
                    return Ok(Err(format!(
                        "entry {seq} was streamed twice with different contents: the log was rolled back and written again from there"
                    )));
                }
            }
        }
        let Some((&newest, _)) = streamed.last_key_value() else {
            return Ok(Ok(None));
        };
        let mut missing = Vec::new();
        for (seq, hash) in &streamed {
            let stored: Option<Vec<u8>> = conn
                .query_opt("SELECT hash FROM audit WHERE seq = $1", args![*seq])?
                .map(|r| r.get(0))
                .transpose()?;
            match stored {
                None => missing.push(*seq),
                Some(h) if hex::encode(&h) != *hash => {
                    return Ok(Err(format!(
                        "entry {seq} differs from the audit stream: it was rewritten"
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(match (missing.first(), missing.last()) {
            (Some(a), Some(b)) if a == b => Err(format!(
                "entry {a} is in the audit stream but not in the database: it was deleted"
            )),
            (Some(a), Some(b)) => Err(format!(
                "{} entries ({a} to {b}) are in the audit stream but not in the database: they were deleted",
                missing.len()
            )),
            _ => Ok(Some(newest)),
        })
    }
}
