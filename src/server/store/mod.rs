//! The server's storage: one SQLite database (WAL, synchronous=FULL: a commit is on disk before
//! the response). Everything that touches key material writes its audit entry in the same
//! transaction as the change, so there is never a change without its entry, and a failed audit
//! write fails the request.
//!
//! This is the only module that speaks SQL, behind one type, [`Store`], with a method per
//! operation, by entity: `machines.rs` (administrators, enrollment tokens, machines),
//! `packets.rs` (escrow packets), `recovery.rs` (recovery requests and packets), `restores.rs`
//! (DRSK restore requests), `audit.rs` (the hash chain and its stream). No `rusqlite` type
//! leaves it, so a PostgreSQL backend can replace it later.
//!
//! One thread owns the connection and commits in groups: it takes every operation waiting,
//! runs each in its own savepoint (a failing one rolls back alone), commits once — one fsync
//! for the group — and only then answers them all. A 2xx still means "on disk", at the cost of
//! one fsync per group instead of per request.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};

use crate::hex;

mod audit;
mod machines;
mod packets;
mod recovery;
mod restores;

use audit::{audit, stream_lines, STREAM_TAG};
pub use audit::{AuditRow, AuditStream, Counts};
pub use machines::{Machine, MachineRow};
pub use packets::{EscrowState, PacketRow, Stored};
pub use recovery::{NewRecovery, RequestRow};
pub use restores::{Advance, RestoreRow};

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

/// The tables of schema version 1. Never edited: a later change is a new entry in
/// `MIGRATIONS`, so that every database, new or old, goes through the same steps.
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

/// The writer thread's handle.
#[derive(Clone)]
pub struct Db {
    jobs: std::sync::mpsc::Sender<Job>,
}

/// An operation run on the writer thread; returns what to do once the group is (or is not)
/// committed.
type Job = Box<dyn FnOnce(&mut Store) -> Box<dyn FnOnce(bool) + Send> + Send>;

/// Most operations committed together.
const MAX_GROUP: usize = 512;

impl Db {
    /// Starts the writer thread; each group's new audit entries also go to `stream`.
    pub fn start(mut store: Store, mut stream: AuditStream) -> Result<Db> {
        let mut streamed: i64 =
            store
                .conn
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))?;
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut group = vec![first];
                group.extend(queue.try_iter().take(MAX_GROUP - 1));
                let began = store.conn.execute_batch("BEGIN IMMEDIATE").is_ok();
                let answers: Vec<_> = group.into_iter().map(|job| job(&mut store)).collect();
                // The stream gets the entries before they are committed: if it cannot take
                // them, nothing is committed and every request of the group fails (closed).
                let lines = match began {
                    true => stream_lines(&store.conn, streamed).ok(),
                    false => None,
                };
                let written = lines
                    .as_ref()
                    .is_some_and(|(text, _)| text.is_empty() || stream.write(text).is_ok());
                let committed = written && store.conn.execute_batch("COMMIT").is_ok();
                match (committed, lines) {
                    (true, Some((_, head))) => streamed = head,
                    (_, lines) => {
                        let _ = store.conn.execute_batch("ROLLBACK");
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
        f: impl FnOnce(&mut Store) -> std::result::Result<T, E> + Send + 'static,
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

/// The database: the connection, owned by one thread at a time (the writer thread of [`Db`]
/// while serving).
pub struct Store {
    conn: Connection,
}

pub fn open(path: &Path) -> Result<Store> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&conn)?;
    Ok(Store { conn })
}

/// Writes a consistent copy of the database at `path` to `out` (which must not exist) while a
/// server may be writing to it: SQLite's `VACUUM INTO` copies one snapshot.
pub fn snapshot(path: &Path, out: &Path) -> Result<()> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let out = out
        .to_str()
        .ok_or_else(|| StoreError::Refused(format!("{}: not a UTF-8 path", out.display())))?;
    conn.execute("VACUUM INTO ?1", params![out])?;
    Ok(())
}

/// The schema version this server writes (SQLite's `user_version`). Databases made before
/// versions were recorded (lifeline 0.1.0) have 0.
pub const SCHEMA_VERSION: i64 = 2;

/// `MIGRATIONS[v]` brings a database from version `v` to `v + 1`.
const MIGRATIONS: [fn(&Connection) -> Result<()>; SCHEMA_VERSION as usize] = [to_v1, to_v2];

/// Brings a database made by this or an older server up to [`SCHEMA_VERSION`], one version at a
/// time, each step in its own transaction with the version it reaches. A database from a newer
/// server is refused: this one would not know what its newer tables mean.
fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Refused(format!(
            "the database has schema version {version}, made by a newer lifeline-server; this one knows versions up to {SCHEMA_VERSION}: run the newer lifeline-server"
        )));
    }
    for (from, step) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let done = step(conn).and_then(|()| {
            conn.pragma_update(None, "user_version", from as i64 + 1)?;
            Ok(conn.execute_batch("COMMIT")?)
        });
        if done.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        done?;
    }
    Ok(())
}

/// Version 1: the tables of lifeline 0.1.0 (created when missing), with `approved` on restore
/// requests, which restore expiry counts from and which early 0.1.0 databases lack.
fn to_v1(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('restore_requests')")?;
    let has_approved = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<std::result::Result<Vec<_>, _>>()?
        .iter()
        .any(|c| c == "approved");
    if !has_approved {
        conn.execute_batch("ALTER TABLE restore_requests ADD COLUMN approved INTEGER")?;
    }
    Ok(())
}

/// Version 2, for `lifeline status`: each packet's fingerprint of the key alone (a client can
/// compute it without the recovery passphrase; for older packets it is their fingerprint, which
/// is the same unless they hold a random passphrase: those show as stale and are escrowed
/// again), when its recovery passphrase was shown, and each machine's last report.
fn to_v2(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "ALTER TABLE packets ADD COLUMN key_fingerprint TEXT;
         UPDATE packets SET key_fingerprint = fingerprint;
         ALTER TABLE packets ADD COLUMN revealed INTEGER;
         ALTER TABLE machines ADD COLUMN report_time INTEGER;
         ALTER TABLE machines ADD COLUMN report_problems TEXT;",
    )?;
    Ok(())
}

/// A random identifier or credential: 32 hex digits.
pub fn random_id() -> std::io::Result<String> {
    let mut raw = [0u8; 16];
    crate::secret::random_bytes(&mut raw)?;
    Ok(hex::encode(&raw))
}

/// A random secret (a credential: 32 bytes, an enrollment token: 16), as hex, in wiped memory.
pub fn random_secret(bytes: usize) -> std::io::Result<zeroize::Zeroizing<String>> {
    let mut raw = zeroize::Zeroizing::new(vec![0u8; bytes]);
    crate::secret::random_bytes(&mut raw)?;
    Ok(hex::encode_secret(&raw))
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
        let store = open(&path).unwrap();
        let row = store.restore_request("r1").unwrap();
        assert_eq!(row.approved, None);
        // Approved before the column existed: it counts from its filing, long expired.
        assert!(row.expired(3600));
        drop(store);
        open(&path).unwrap();
    }

    #[test]
    fn a_new_database_has_the_current_version_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        drop(open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        match open(&path) {
            Err(StoreError::Refused(why)) => {
                assert!(why.contains("newer lifeline-server"), "{why}")
            }
            other => panic!("a newer database was opened: {:?}", other.map(|_| ())),
        }
    }
}
