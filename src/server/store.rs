//! The server's storage: one SQLite database (WAL, synchronous=FULL: a commit is on disk before
//! the response). Everything that touches key material writes its audit entry in the same
//! transaction as the change, so there is never a change without its entry, and a failed audit
//! write fails the request.
//!
//! This is the only module that speaks SQL, so a PostgreSQL backend can replace it later.
//!
//! One thread owns the connection and commits in groups: it takes every operation waiting,
//! runs each in its own savepoint (a failing one rolls back alone), commits once — one fsync
//! for the group — and only then answers them all. A 2xx still means "on disk", at the cost of
//! one fsync per group instead of per request.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub use rusqlite::Connection;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::hex;

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug)]
pub enum StoreError {
    /// The request conflicts with what is stored (limit reached, token used, ...).
    Refused(String),
    /// The group commit failed; nothing of this request was stored.
    NotCommitted,
    NotFound(String),
    Db(rusqlite::Error),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Refused(m) | StoreError::NotFound(m) => f.write_str(m),
            StoreError::NotCommitted => {
                f.write_str("the database could not commit; nothing was stored")
            }
            StoreError::Db(e) => write!(f, "database: {e}"),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e)
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS admins (name TEXT PRIMARY KEY, credential_hash BLOB NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS enrollment_tokens (token_hash BLOB PRIMARY KEY, created INTEGER NOT NULL, expires INTEGER NOT NULL, used_by TEXT);
CREATE TABLE IF NOT EXISTS machines (
    id TEXT PRIMARY KEY, machine_id TEXT NOT NULL, client_id TEXT, host TEXT NOT NULL,
    credential_hash BLOB NOT NULL UNIQUE, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS packets (
    id TEXT PRIMARY KEY, machine TEXT NOT NULL REFERENCES machines(id), volume_uuid TEXT NOT NULL,
    fingerprint TEXT NOT NULL, body BLOB NOT NULL, created INTEGER NOT NULL, obsolete INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS packets_by_machine ON packets(machine, volume_uuid, fingerprint);
CREATE TABLE IF NOT EXISTS recovery_requests (
    id TEXT PRIMARY KEY, machine TEXT NOT NULL REFERENCES machines(id), volume_uuid TEXT NOT NULL,
    created INTEGER NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS recovery_packets (
    id TEXT PRIMARY KEY, request TEXT NOT NULL, machine_id TEXT NOT NULL, volume_uuid TEXT NOT NULL,
    body BLOB NOT NULL, expires INTEGER NOT NULL, use_token_hash BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS recovery_by_volume ON recovery_packets(machine_id, volume_uuid);
CREATE TABLE IF NOT EXISTS restore_requests (
    id TEXT PRIMARY KEY, client_id TEXT NOT NULL, srk_name TEXT NOT NULL, srk_public BLOB NOT NULL,
    created INTEGER NOT NULL, state TEXT NOT NULL, secret_hash BLOB, body BLOB, approved INTEGER);
CREATE INDEX IF NOT EXISTS restores_by_client ON restore_requests(client_id, srk_name);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    subject TEXT NOT NULL, prev BLOB NOT NULL, hash BLOB NOT NULL);
";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

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
pub fn audit(tx: &Connection, actor: &str, action: &str, subject: &str) -> Result<()> {
    let last: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match last {
        Some((s, h)) => (s + 1, h),
        None => (1, vec![0; 32]),
    };
    let time = now();
    let hash = entry_hash(&prev, seq, time, actor, action, subject);
    tx.execute(
        "INSERT INTO audit (seq, time, actor, action, subject, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![seq, time, actor, action, subject, prev, hash],
    )?;
    Ok(())
}

/// Walks the audit chain; `Err` names the first entry that is not what the chain says.
pub fn verify_audit(conn: &Connection) -> Result<std::result::Result<usize, String>> {
    let mut stmt = conn.prepare(
        "SELECT seq, time, actor, action, subject, prev, hash FROM audit ORDER BY rowid",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Vec<u8>>(5)?,
            r.get::<_, Vec<u8>>(6)?,
        ))
    })?;
    let mut prev = vec![0u8; 32];
    let mut count = 0;
    for (expected_seq, row) in (1i64..).zip(rows) {
        let (seq, time, actor, action, subject, stored_prev, hash) = row?;
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

    fn write(&mut self, lines: &str) -> std::io::Result<()> {
        use std::io::Write;
        match self {
            AuditStream::None => Ok(()),
            AuditStream::Stderr => std::io::stderr().write_all(lines.as_bytes()),
            AuditStream::File(f) => f.write_all(lines.as_bytes()).and_then(|()| f.sync_data()),
        }
    }
}

/// The key that marks a line of the audit stream (other log lines may be mixed in).
const STREAM_TAG: &str = "lifeline_audit";

/// The entries after `after`, as stream lines, and the newest entry's number.
fn stream_lines(conn: &Connection, after: i64) -> Result<(String, i64)> {
    let mut stmt = conn.prepare(
        "SELECT seq, time, actor, action, subject, prev, hash FROM audit WHERE seq > ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![after])?;
    let (mut text, mut head) = (String::new(), after);
    while let Some(r) = rows.next()? {
        head = r.get(0)?;
        let line = serde_json::json!({
            STREAM_TAG: 1,
            "seq": head,
            "time": r.get::<_, i64>(1)?,
            "actor": r.get::<_, String>(2)?,
            "action": r.get::<_, String>(3)?,
            "subject": r.get::<_, String>(4)?,
            "prev": hex::encode(&r.get::<_, Vec<u8>>(5)?),
            "hash": hex::encode(&r.get::<_, Vec<u8>>(6)?),
        });
        text.push_str(&format!("{line}\n"));
    }
    Ok((text, head))
}

/// Checks the database's audit log against a captured audit stream: every entry the stream
/// holds must be in the database, unchanged. `Ok(Err(why))` names the first that is not;
/// `Ok(Ok(None))`: the stream holds no entries at all.
pub fn verify_against_stream(
    conn: &Connection,
    stream: &str,
) -> Result<std::result::Result<Option<i64>, String>> {
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
            .query_row("SELECT hash FROM audit WHERE seq = ?1", params![seq], |r| {
                r.get(0)
            })
            .optional()?;
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

/// The writer thread's handle.
#[derive(Clone)]
pub struct Db {
    jobs: std::sync::mpsc::Sender<Job>,
}

/// An operation run on the writer thread; returns what to do once the group is (or is not)
/// committed.
type Job = Box<dyn FnOnce(&mut Connection) -> Box<dyn FnOnce(bool) + Send> + Send>;

/// Most operations committed together.
const MAX_GROUP: usize = 512;

impl Db {
    /// Starts the writer thread; each group's new audit entries also go to `stream`.
    pub fn start(mut conn: Connection, mut stream: AuditStream) -> Result<Db> {
        let mut streamed: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))?;
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut group = vec![first];
                group.extend(queue.try_iter().take(MAX_GROUP - 1));
                let began = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
                let answers: Vec<_> = group.into_iter().map(|job| job(&mut conn)).collect();
                // The stream gets the entries before they are committed: if it cannot take
                // them, nothing is committed and every request of the group fails (closed).
                let lines = match began {
                    true => stream_lines(&conn, streamed).ok(),
                    false => None,
                };
                let written = lines
                    .as_ref()
                    .is_some_and(|(text, _)| text.is_empty() || stream.write(text).is_ok());
                let committed = written && conn.execute_batch("COMMIT").is_ok();
                match (committed, lines) {
                    (true, Some((_, head))) => streamed = head,
                    (_, lines) => {
                        let _ = conn.execute_batch("ROLLBACK");
                        // Streamed, then not committed: the stream says so.
                        if let Some((_, head)) = lines.filter(|(t, _)| written && !t.is_empty()) {
                            let marker = serde_json::json!({
                                STREAM_TAG: 1, "rolled_back": [streamed + 1, head],
                            });
                            let _ = stream.write(&format!("{marker}\n"));
                        }
                    }
                }
                for answer in answers {
                    answer(committed);
                }
            }
        });
        Ok(Db { jobs })
    }

    /// Runs `f` on the writer thread; its result arrives once it is durable.
    pub async fn run<T, E>(
        &self,
        f: impl FnOnce(&mut Connection) -> std::result::Result<T, E> + Send + 'static,
    ) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            Box::new(move |committed| {
                let _ = reply.send(if committed {
                    result
                } else {
                    Err(StoreError::NotCommitted.into())
                });
            })
        });
        if self.jobs.send(job).is_err() {
            return Err(StoreError::NotCommitted.into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::NotCommitted.into()))
    }
}

pub fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Brings a database made by an older server up to `SCHEMA`.
fn migrate(conn: &Connection) -> Result<()> {
    let has = |table: &str, column: &str| -> Result<bool> {
        let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for name in names {
            if name? == column {
                return Ok(true);
            }
        }
        Ok(false)
    };
    // Restore approvals expire from the time they were approved.
    if !has("restore_requests", "approved")? {
        conn.execute_batch("ALTER TABLE restore_requests ADD COLUMN approved INTEGER")?;
    }
    Ok(())
}

/// A random identifier or credential: 32 hex digits.
pub fn random_id() -> std::io::Result<String> {
    let mut raw = [0u8; 16];
    crate::secret::random_bytes(&mut raw)?;
    Ok(hex::encode(&raw))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub id: String,
    pub machine_id: String,
    pub client_id: Option<String>,
    pub host: String,
}

/// A `Machine` from four consecutive columns (id, machine_id, client_id, host) from `first`.
fn machine_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Machine> {
    Ok(Machine {
        id: r.get(first)?,
        machine_id: r.get(first + 1)?,
        client_id: r.get(first + 2)?,
        host: r.get(first + 3)?,
    })
}

pub fn add_admin(conn: &mut Connection, name: &str, credential: &str) -> Result<()> {
    let tx = conn.savepoint()?;
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO admins (name, credential_hash, created) VALUES (?1, ?2, ?3)",
        params![name, sha256(credential.as_bytes()), now()],
    )?;
    if inserted == 0 {
        return Err(StoreError::Refused(format!(
            "administrator {name} exists already"
        )));
    }
    audit(&tx, "local", "add-admin", name)?;
    tx.commit()?;
    Ok(())
}

pub fn admin_by_credential(conn: &Connection, credential: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT name FROM admins WHERE credential_hash = ?1",
            params![sha256(credential.as_bytes())],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn machine_by_credential(conn: &Connection, credential: &str) -> Result<Option<Machine>> {
    Ok(conn
        .query_row(
            "SELECT id, machine_id, client_id, host FROM machines WHERE credential_hash = ?1",
            params![sha256(credential.as_bytes())],
            |r| machine_at(r, 0),
        )
        .optional()?)
}

pub fn add_enrollment_token(
    conn: &mut Connection,
    admin: &str,
    token: &str,
    valid_secs: i64,
) -> Result<()> {
    let tx = conn.savepoint()?;
    let now = now();
    tx.execute(
        "INSERT INTO enrollment_tokens (token_hash, created, expires) VALUES (?1, ?2, ?3)",
        params![sha256(token.as_bytes()), now, now + valid_secs],
    )?;
    audit(&tx, admin, "enrollment-token", "")?;
    tx.commit()?;
    Ok(())
}

/// Uses an enrollment token once and registers the machine with its credential.
pub fn join(conn: &mut Connection, token: &str, m: &Machine, credential: &str) -> Result<()> {
    let tx = conn.savepoint()?;
    let used = tx.execute(
        "UPDATE enrollment_tokens SET used_by = ?1 WHERE token_hash = ?2 AND used_by IS NULL AND expires > ?3",
        params![m.id, sha256(token.as_bytes()), now()],
    )?;
    if used != 1 {
        return Err(StoreError::Refused(
            "the enrollment token is unknown, used or expired".into(),
        ));
    }
    tx.execute(
        "INSERT INTO machines (id, machine_id, client_id, host, credential_hash, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![m.id, m.machine_id, m.client_id, m.host, sha256(credential.as_bytes()), now()],
    )?;
    audit(&tx, &m.id, "join", &format!("{} {}", m.host, m.machine_id))?;
    tx.commit()?;
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    New(String),
    AlreadyInEscrow(String),
}

/// Stores an escrow packet (ciphertext) for `machine`, unless the same key for the same volume
/// is in escrow already; with `obsolete_older`, older packets of the volume become obsolete.
pub fn store_packet(
    conn: &mut Connection,
    machine: &Machine,
    volume_uuid: &str,
    fingerprint: &str,
    body: &[u8],
    limit: u32,
    obsolete_older: bool,
) -> Result<Stored> {
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

#[derive(Debug, Clone)]
pub struct PacketRow {
    pub id: String,
    pub machine: String,
    pub host: String,
    pub volume_uuid: String,
    pub created: i64,
    pub obsolete: bool,
}

pub fn list_packets(conn: &Connection) -> Result<Vec<PacketRow>> {
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

/// Files a recovery request for a machine (named by its machine ID or client ID) and volume
/// that have a packet in escrow. Returns the request ID and the machine.
pub fn request_recovery(
    conn: &mut Connection,
    machine_or_client: &str,
    volume_uuid: &str,
    from: &str,
) -> Result<(String, Machine)> {
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

pub fn list_requests(conn: &Connection) -> Result<Vec<RequestRow>> {
    let mut stmt = conn.prepare(&format!("{REQUEST_SELECT} ORDER BY r.created"))?;
    let rows = stmt.query_map([], request_row)?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
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

/// The newest escrow packet for a pending request (what an approval opens).
pub fn packet_for_request(conn: &Connection, request: &str) -> Result<(RequestRow, Vec<u8>)> {
    let req = request_by_id(conn, request)?;
    if req.state != "pending" {
        return Err(StoreError::Refused(format!(
            "recovery request {request} is {}",
            req.state
        )));
    }
    let body: Vec<u8> = conn.query_row(
        "SELECT body FROM packets WHERE machine = ?1 AND volume_uuid = ?2 AND obsolete = 0 ORDER BY created DESC LIMIT 1",
        params![req.machine.id, req.volume_uuid],
        |r| r.get(0),
    )?;
    Ok((req, body))
}

/// Publishes an approved recovery packet (replacing any earlier one for that volume).
pub fn publish_recovery(
    conn: &mut Connection,
    admin: &str,
    request: &RequestRow,
    packet_id: &str,
    body: &[u8],
    expires: i64,
    use_token_hash: &[u8],
) -> Result<()> {
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
        "approve-recovery",
        &format!("{} {} {packet_id}", request.volume_uuid, request.id),
    )?;
    tx.commit()?;
    Ok(())
}

/// The published recovery packet for a machine (machine ID or client ID) and volume, if any
/// and not expired. Fetches are audited: they hand out key material, encrypted.
pub fn fetch_recovery(
    conn: &mut Connection,
    machine_or_client: &str,
    volume_uuid: &str,
    from: &str,
) -> Result<Vec<u8>> {
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
pub fn recovery_used(
    conn: &mut Connection,
    packet_id: &str,
    use_token: &[u8],
    from: &str,
) -> Result<()> {
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

#[derive(Debug, Clone)]
pub struct MachineRow {
    pub machine: Machine,
    pub created: i64,
    pub packets: u32,
}

pub fn list_machines(conn: &Connection) -> Result<Vec<MachineRow>> {
    let mut stmt = conn.prepare(
        "SELECT m.id, m.machine_id, m.client_id, m.host, m.created,
                (SELECT COUNT(*) FROM packets p WHERE p.machine = m.id AND p.obsolete = 0)
         FROM machines m ORDER BY m.created",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(MachineRow {
            machine: machine_at(r, 0)?,
            created: r.get(4)?,
            packets: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// Marks a packet obsolete (kept, but no longer used for recovery) or deletes it.
pub fn retire_packet(conn: &mut Connection, admin: &str, packet: &str, delete: bool) -> Result<()> {
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
/// (and fails if the audit entry cannot be written).
pub fn read_packet_for_admin(conn: &mut Connection, admin: &str, packet: &str) -> Result<Vec<u8>> {
    let tx = conn.savepoint()?;
    let body: Option<Vec<u8>> = tx
        .query_row(
            "SELECT body FROM packets WHERE id = ?1",
            params![packet],
            |r| r.get(0),
        )
        .optional()?;
    let body = body.ok_or_else(|| StoreError::NotFound(format!("no escrow packet {packet}")))?;
    audit(&tx, admin, "show-passphrase", packet)?;
    tx.commit()?;
    Ok(body)
}

/// Before a DRSK backup of `client_id` from machine `m`: refused when another machine holds
/// that client ID.
pub fn check_drsk_owner(conn: &Connection, m: &Machine, client_id: &str) -> Result<()> {
    let other: Option<String> = conn
        .query_row(
            "SELECT host FROM machines WHERE client_id = ?1 AND id != ?2",
            params![client_id, m.id],
            |r| r.get(0),
        )
        .optional()?;
    match other {
        Some(host) => Err(StoreError::Refused(format!(
            "client {client_id} belongs to another machine ({host})"
        ))),
        None => Ok(()),
    }
}

/// Records that the DRSK `client_id` of machine `m` is in custody (the machine's client ID
/// becomes `client_id`: a re-provisioned machine has a new one).
pub fn record_drsk_backup(conn: &mut Connection, m: &Machine, client_id: &str) -> Result<()> {
    let tx = conn.savepoint()?;
    check_drsk_owner(&tx, m, client_id)?;
    tx.execute(
        "UPDATE machines SET client_id = ?1 WHERE id = ?2",
        params![client_id, m.id],
    )?;
    audit(&tx, &m.id, "drsk-backup", client_id)?;
    tx.commit()?;
    Ok(())
}

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

fn restore_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RestoreRow> {
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

/// Files a restore request for `client_id` to the storage key named `srk_name` (hex), replacing
/// any earlier unapproved (or expired) one for the same pair. With `secret_hash` the request
/// waits for the genuine-TPM proof first. An approved request for the same pair that has not
/// expired is returned as it is.
pub fn file_restore_request(
    conn: &mut Connection,
    client_id: &str,
    srk_name: &str,
    srk_public: &[u8],
    secret_hash: Option<&[u8]>,
    from: &str,
    valid_for: i64,
) -> Result<RestoreRow> {
    let tx = conn.savepoint()?;
    let approved = tx
        .query_row(
            &format!("{RESTORE_SELECT} WHERE r.client_id = ?1 AND r.srk_name = ?2 AND r.state = 'approved'"),
            params![client_id, srk_name],
            restore_row,
        )
        .optional()?;
    if let Some(row) = approved.filter(|r| !r.expired(valid_for)) {
        return Ok(row);
    }
    tx.execute(
        "DELETE FROM restore_requests WHERE client_id = ?1 AND srk_name = ?2",
        params![client_id, srk_name],
    )?;
    let id = random_id().map_err(|e| StoreError::Refused(e.to_string()))?;
    let state = if secret_hash.is_some() {
        "challenged"
    } else {
        "pending"
    };
    tx.execute(
        "INSERT INTO restore_requests (id, client_id, srk_name, srk_public, created, state, secret_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, client_id, srk_name, srk_public, now(), state, secret_hash],
    )?;
    audit(&tx, from, "restore-request", &format!("{client_id} {id}"))?;
    let row = restore_request(&tx, &id)?;
    tx.commit()?;
    Ok(row)
}

pub fn restore_request(conn: &Connection, id: &str) -> Result<RestoreRow> {
    conn.query_row(
        &format!("{RESTORE_SELECT} WHERE r.id = ?1"),
        params![id],
        restore_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("no restore request {id}")))
}

pub fn list_restores(conn: &Connection) -> Result<Vec<RestoreRow>> {
    let mut stmt = conn.prepare(&format!("{RESTORE_SELECT} ORDER BY r.created"))?;
    let rows = stmt.query_map([], restore_row)?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// Restore request `id`, refused unless it is in `state` and has not expired.
pub fn restore_in_state(
    conn: &Connection,
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

/// Moves restore request `id` as `step` says, audited as `action` by `actor` (an approval
/// starts its validity anew). Refused if the request is not in state `from` (any more) or
/// expired.
pub fn advance_restore(
    conn: &mut Connection,
    id: &str,
    step: Advance<'_>,
    valid_for: i64,
    actor: &str,
    action: &str,
) -> Result<()> {
    let tx = conn.savepoint()?;
    let row = restore_in_state(&tx, id, step.from, valid_for)?;
    let approved = (step.to == "approved").then(now);
    tx.execute(
        "UPDATE restore_requests SET state = ?1, body = COALESCE(?2, body),
         approved = COALESCE(?3, approved) WHERE id = ?4",
        params![step.to, step.body, approved, id],
    )?;
    audit(&tx, actor, action, &format!("{} {id}", row.client_id))?;
    tx.commit()?;
    Ok(())
}

/// The approved restore file for `client_id` and the storage key named `srk_name`; the fetch is
/// audited. Not found says whether a request waits.
pub fn fetch_restore(
    conn: &mut Connection,
    client_id: &str,
    srk_name: &str,
    from: &str,
    valid_for: i64,
) -> Result<Vec<u8>> {
    let tx = conn.savepoint()?;
    let row = tx
        .query_row(
            &format!("{RESTORE_SELECT} WHERE r.client_id = ?1 AND r.srk_name = ?2"),
            params![client_id, srk_name],
            restore_row,
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound("no restore request for this client and TPM".into()))?;
    if row.expired(valid_for) {
        return Err(expired(&row.id, row.expires(valid_for)));
    }
    let body: Option<Vec<u8>> = tx.query_row(
        "SELECT body FROM restore_requests WHERE id = ?1",
        params![row.id],
        |r| r.get(0),
    )?;
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
        &tx,
        from,
        "fetch-restore",
        &format!("{client_id} {}", row.id),
    )?;
    tx.commit()?;
    Ok(body)
}

/// Deletes restore request `id` (whatever its state), audited.
pub fn delete_restore(conn: &mut Connection, id: &str, actor: &str) -> Result<()> {
    let tx = conn.savepoint()?;
    let row = restore_request(&tx, id)?;
    tx.execute("DELETE FROM restore_requests WHERE id = ?1", params![id])?;
    audit(
        &tx,
        actor,
        "delete-restore",
        &format!("{} {id}", row.client_id),
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_from_before_restore_expiry_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE restore_requests (
                id TEXT PRIMARY KEY, client_id TEXT NOT NULL, srk_name TEXT NOT NULL,
                srk_public BLOB NOT NULL, created INTEGER NOT NULL, state TEXT NOT NULL,
                secret_hash BLOB, body BLOB);
             INSERT INTO restore_requests VALUES ('r1', 'c', 'n', x'00', 1, 'approved', NULL, x'01');",
        )
        .unwrap();
        drop(old);
        let conn = open(&path).unwrap();
        let row = restore_request(&conn, "r1").unwrap();
        assert_eq!(row.approved, None);
        // Approved before the column existed: it counts from its filing, long expired.
        assert!(row.expired(3600));
        drop(conn);
        open(&path).unwrap();
    }
}
