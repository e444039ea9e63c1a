//! The server's storage: one SQLite database (WAL, synchronous=FULL: a commit is on disk before
//! the response), or for several instances one PostgreSQL database (`database =
//! "postgresql://…"` in `server.toml`; a commit is durable before the response). Everything that touches key material writes its audit entry in the same
//! transaction as the change, so there is never a change without its entry, and a failed audit
//! write fails the request.
//!
//! This is the only module that speaks SQL, behind one type, [`Store`], with a method per
//! operation, by entity: `machines.rs` (administrators, enrollment tokens, machines),
//! `packets.rs` (escrow packets), `recovery.rs` (recovery requests and packets), `restores.rs`
//! (DRSK restore requests), `audit.rs` (the hash chain and its stream). Each query is written
//! once for both engines; `sql.rs` is the one place that knows which engine runs it.
//!
//! One thread owns the connection and commits in groups: it takes every operation waiting,
//! runs each in its own savepoint (a failing one rolls back alone), commits once — one fsync
//! for the group — and only then answers them all. A 2xx still means "on disk", at the cost of
//! one fsync per group instead of per request. On PostgreSQL each instance has such a thread;
//! their groups take turns through one advisory lock (see `sql.rs`).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::hex;

mod audit;
mod machines;
mod packets;
mod recovery;
mod restores;
mod sql;

use audit::{audit, stream_lines, STREAM_TAG};
pub use audit::{AuditRow, AuditStream, Counts};
pub use machines::{Machine, MachineRow};
pub use packets::{EscrowState, PacketRow, Stored};
pub use recovery::{NewRecovery, RequestRow};
pub use restores::{Advance, RestoreRow};
use sql::{args, Conn};

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug)]
pub enum StoreError {
    /// The request conflicts with what is stored (limit reached, token used, ...).
    Refused(String),
    /// The group commit failed; nothing of this request was stored.
    NotCommitted,
    NotFound(String),
    /// The database failed (its message).
    Db(String),
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

/// An operation run on the writer thread (given no store when no transaction could be opened);
/// returns what to do once the group is (or is not) committed.
type Job = Box<dyn FnOnce(Option<&mut Store>) -> Box<dyn FnOnce(bool) + Send> + Send>;

/// Most operations committed together.
const MAX_GROUP: usize = 512;

impl Db {
    /// Starts the writer thread; each group's new audit entries also go to `stream`.
    pub fn start(mut store: Store, mut stream: AuditStream) -> Result<Db> {
        let mut streamed: i64 = store
            .conn
            .query_one("SELECT COALESCE(MAX(seq), 0) FROM audit", args![])?
            .get(0)?;
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut group = vec![first];
                group.extend(queue.try_iter().take(MAX_GROUP - 1));
                store.conn.reconnect_if_lost();
                let began = store.conn.begin().is_ok();
                let answers: Vec<_> = group
                    .into_iter()
                    .map(|job| job(began.then_some(&mut store)))
                    .collect();
                // The stream gets the entries before they are committed: if it cannot take
                // them, nothing is committed and every request of the group fails (closed).
                let lines = match began {
                    true => stream_lines(&mut store.conn, streamed).ok(),
                    false => None,
                };
                let written = lines
                    .as_ref()
                    .is_some_and(|(text, _)| text.is_empty() || stream.write(text).is_ok());
                let committed = written && store.conn.commit().is_ok();
                if began && !written {
                    store.conn.rollback();
                }
                match (committed, lines) {
                    (true, Some((_, head))) => streamed = head,
                    (_, lines) => {
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
        let job: Job = Box::new(move |store| {
            let result = match store {
                Some(store) => f(store),
                None => Err(StoreError::NotCommitted.into()),
            };
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
    conn: Conn,
}

/// `database` in `server.toml` names PostgreSQL when it is a URL of this scheme.
fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgresql://") || database.starts_with("postgres://")
}

/// The database of the server directory `dir`: the one its `server.toml` names. A directory
/// without `server.toml` is refused, so that a mistyped `--dir` never makes a new database.
pub fn open_server(dir: &Path) -> Result<Store> {
    let config = super::config::Config::load(dir).map_err(|why| {
        StoreError::Refused(match dir.join(super::config::CONFIG_FILE).exists() {
            true => why,
            false => format!(
                "{} is not a server directory (it holds no {}): give the directory lifeline-server init made",
                dir.display(),
                super::config::CONFIG_FILE
            ),
        })
    })?;
    open_database(dir, &config.database)
}

/// The database `database` names (`server.toml`'s setting): a PostgreSQL URL, or an SQLite
/// file relative to `dir`.
pub fn open_database(dir: &Path, database: &str) -> Result<Store> {
    match is_postgres_url(database) {
        true => {
            let mut conn = Conn::postgres(database)?;
            migrate_postgres(&mut conn)?;
            Ok(Store { conn })
        }
        false => open(&dir.join(database)),
    }
}

/// The SQLite database at `path`, created when missing.
pub fn open(path: &Path) -> Result<Store> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&conn)?;
    Ok(Store {
        conn: Conn::sqlite(conn),
    })
}

/// The tables, with the columns a copy carries: every table there is.
const TABLES: [(&str, &str); 8] = [
    ("admins", "name, credential_hash, created"),
    ("enrollment_tokens", "token_hash, created, expires, used_by"),
    (
        "machines",
        "id, machine_id, client_id, host, credential_hash, created, report_time, report_problems",
    ),
    (
        "packets",
        "id, machine, volume_uuid, fingerprint, body, created, obsolete, key_fingerprint, revealed",
    ),
    (
        "recovery_requests",
        "id, machine, volume_uuid, created, state",
    ),
    (
        "recovery_packets",
        "id, request, machine_id, volume_uuid, body, expires, use_token_hash",
    ),
    (
        "restore_requests",
        "id, client_id, srk_name, srk_public, created, state, secret_hash, body, approved",
    ),
    ("audit", "seq, time, actor, action, subject, prev, hash"),
];

impl Store {
    /// Copies every row of `self` into `to`, which must hold none yet, in one transaction of
    /// each: `to` gets a consistent snapshot, and all of it or nothing. Packets keep their
    /// order (`rowid`, which the PostgreSQL schema names explicitly).
    pub fn copy_into(&mut self, to: &mut Store) -> Result<()> {
        if self.conn.is_postgres() {
            self.conn
                .batch("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        } else {
            self.conn.batch("BEGIN")?;
        }
        let copied = to.conn.transaction(|tx| {
            for (table, columns) in TABLES {
                let there: i64 = tx
                    .query_one(&format!("SELECT COUNT(*) FROM {table}"), args![])?
                    .get(0)?;
                if there != 0 {
                    return Err(StoreError::Refused(format!(
                        "the database to copy into holds {table} already: give an empty one"
                    )));
                }
                let order = match table {
                    "packets" => "rowid",
                    "audit" => "seq",
                    _ => "1",
                };
                let rows = self.conn.query(
                    &format!("SELECT {columns} FROM {table} ORDER BY {order}"),
                    args![],
                )?;
                let n = columns.split(',').count();
                let slots: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
                let insert = format!(
                    "INSERT INTO {table} ({columns}) VALUES ({})",
                    slots.join(", ")
                );
                for row in rows {
                    tx.execute(&insert, &row.into_values())?;
                }
            }
            Ok(())
        });
        let _ = self.conn.batch("COMMIT");
        copied
    }
}

/// Writes a consistent copy of the server directory `dir`'s database, as SQLite, to `out`
/// (which must not exist) while a server may be writing to it. For SQLite, `VACUUM INTO`
/// copies one snapshot; from PostgreSQL, every table is copied in one repeatable-read
/// transaction.
pub fn snapshot(dir: &Path, out: &Path) -> Result<()> {
    let config = super::config::Config::load(dir).map_err(StoreError::Refused)?;
    if is_postgres_url(&config.database) {
        let mut from = open_database(dir, &config.database)?;
        if out.exists() {
            return Err(StoreError::Refused(format!(
                "{} exists already",
                out.display()
            )));
        }
        return from.copy_into(&mut open(out)?);
    }
    let conn = rusqlite::Connection::open_with_flags(
        dir.join(&config.database),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let out = out
        .to_str()
        .ok_or_else(|| StoreError::Refused(format!("{}: not a UTF-8 path", out.display())))?;
    conn.execute("VACUUM INTO ?1", [out])?;
    Ok(())
}

/// The schema version this server writes (SQLite's `user_version`, PostgreSQL's
/// `schema_version` table). SQLite databases made before versions were recorded (lifeline
/// 0.1.0) have 0.
pub const SCHEMA_VERSION: i64 = 2;

fn newer_schema(version: i64) -> StoreError {
    StoreError::Refused(format!(
        "the database has schema version {version}, made by a newer lifeline-server; this one knows versions up to {SCHEMA_VERSION}: run the newer lifeline-server"
    ))
}

/// `MIGRATIONS[v]` brings a database from version `v` to `v + 1`.
const MIGRATIONS: [fn(&rusqlite::Connection) -> Result<()>; SCHEMA_VERSION as usize] =
    [to_v1, to_v2];

/// Brings a database made by this or an older server up to [`SCHEMA_VERSION`], one version at a
/// time, each step in its own transaction with the version it reaches. A database from a newer
/// server is refused: this one would not know what its newer tables mean.
fn migrate(conn: &rusqlite::Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(newer_schema(version));
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
fn to_v1(conn: &rusqlite::Connection) -> Result<()> {
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
fn to_v2(conn: &rusqlite::Connection) -> Result<()> {
    conn.execute_batch(
        "ALTER TABLE packets ADD COLUMN key_fingerprint TEXT;
         UPDATE packets SET key_fingerprint = fingerprint;
         ALTER TABLE packets ADD COLUMN revealed INTEGER;
         ALTER TABLE machines ADD COLUMN report_time INTEGER;
         ALTER TABLE machines ADD COLUMN report_problems TEXT;",
    )?;
    Ok(())
}

/// The tables of schema version 2 on PostgreSQL, which lifeline supports from that version on:
/// SQLite's, in PostgreSQL's types, and with the insertion order of packets that SQLite keeps
/// implicitly (its `rowid`) as a column of that name.
const PG_SCHEMA_V2: &str = "
CREATE TABLE admins (name TEXT PRIMARY KEY, credential_hash BYTEA NOT NULL, created BIGINT NOT NULL);
CREATE TABLE enrollment_tokens (token_hash BYTEA PRIMARY KEY, created BIGINT NOT NULL, expires BIGINT NOT NULL, used_by TEXT);
CREATE TABLE machines (
    id TEXT PRIMARY KEY, machine_id TEXT NOT NULL, client_id TEXT, host TEXT NOT NULL,
    credential_hash BYTEA NOT NULL UNIQUE, created BIGINT NOT NULL,
    report_time BIGINT, report_problems TEXT);
CREATE TABLE packets (
    rowid BIGSERIAL UNIQUE, id TEXT PRIMARY KEY, machine TEXT NOT NULL REFERENCES machines(id),
    volume_uuid TEXT NOT NULL, fingerprint TEXT NOT NULL, body BYTEA NOT NULL, created BIGINT NOT NULL,
    obsolete BIGINT NOT NULL DEFAULT 0, key_fingerprint TEXT, revealed BIGINT);
CREATE INDEX packets_by_machine ON packets(machine, volume_uuid, fingerprint);
CREATE TABLE recovery_requests (
    id TEXT PRIMARY KEY, machine TEXT NOT NULL REFERENCES machines(id), volume_uuid TEXT NOT NULL,
    created BIGINT NOT NULL, state TEXT NOT NULL);
CREATE TABLE recovery_packets (
    id TEXT PRIMARY KEY, request TEXT NOT NULL, machine_id TEXT NOT NULL, volume_uuid TEXT NOT NULL,
    body BYTEA NOT NULL, expires BIGINT NOT NULL, use_token_hash BYTEA NOT NULL);
CREATE INDEX recovery_by_volume ON recovery_packets(machine_id, volume_uuid);
CREATE TABLE restore_requests (
    id TEXT PRIMARY KEY, client_id TEXT NOT NULL, srk_name TEXT NOT NULL, srk_public BYTEA NOT NULL,
    created BIGINT NOT NULL, state TEXT NOT NULL, secret_hash BYTEA, body BYTEA, approved BIGINT);
CREATE INDEX restores_by_client ON restore_requests(client_id, srk_name);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY, time BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    subject TEXT NOT NULL, prev BYTEA NOT NULL, hash BYTEA NOT NULL);
";

/// PostgreSQL's migrations: each brings an older version (or an empty database, 0) to the
/// version it names. Later versions add entries, as SQLite's `MIGRATIONS` does.
const PG_MIGRATIONS: [(i64, &str); 1] = [(2, PG_SCHEMA_V2)];

/// `migrate` for PostgreSQL, under the advisory lock, so that instances starting together
/// migrate once.
fn migrate_postgres(conn: &mut Conn) -> Result<()> {
    conn.transaction(|tx| {
        tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
        let version = match tx.query_opt("SELECT version FROM schema_version", args![])? {
            Some(row) => row.get(0)?,
            None => {
                tx.execute("INSERT INTO schema_version (version) VALUES (0)", args![])?;
                0
            }
        };
        if version > SCHEMA_VERSION {
            return Err(newer_schema(version));
        }
        for (to, sql) in PG_MIGRATIONS.iter().filter(|(to, _)| *to > version) {
            tx.batch(sql)?;
            tx.execute("UPDATE schema_version SET version = $1", args![*to])?;
        }
        Ok(())
    })
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
    use rusqlite::Connection;

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
        let mut store = open(&path).unwrap();
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
