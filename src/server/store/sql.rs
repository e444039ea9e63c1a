//! The two SQL engines behind one connection: SQLite (a file in the server directory, the
//! default) and PostgreSQL (`database = "postgresql://…"`, for several instances). The store's
//! queries are written once, in the SQL both accept, with `$1`-style parameters; values cross
//! as [`Value`]s (integers, text, bytes; each maybe NULL), so no engine's types leave here.
//!
//! Transactions nest: the outermost is a real transaction, inner ones are savepoints. On
//! PostgreSQL every outermost transaction first takes one advisory lock, so that writers on
//! several instances take turns: the audit chain stays one linear chain and limits counted
//! in the database (packets per machine) hold across instances.

use super::{Result, StoreError};

/// A value bound to a query or read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

/// What can be bound as a parameter.
pub trait ToValue {
    fn value(&self) -> Value;
}

impl ToValue for i64 {
    fn value(&self) -> Value {
        Value::Int(Some(*self))
    }
}
impl ToValue for u32 {
    fn value(&self) -> Value {
        Value::Int(Some(i64::from(*self)))
    }
}
impl ToValue for Option<i64> {
    fn value(&self) -> Value {
        Value::Int(*self)
    }
}
impl ToValue for str {
    fn value(&self) -> Value {
        Value::Text(Some(self.to_string()))
    }
}
impl ToValue for String {
    fn value(&self) -> Value {
        Value::Text(Some(self.clone()))
    }
}
impl ToValue for Option<String> {
    fn value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn value(&self) -> Value {
        Value::Blob(Some(self.to_vec()))
    }
}
impl ToValue for Vec<u8> {
    fn value(&self) -> Value {
        Value::Blob(Some(self.clone()))
    }
}
impl ToValue for Option<&[u8]> {
    fn value(&self) -> Value {
        Value::Blob(self.map(<[u8]>::to_vec))
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn value(&self) -> Value {
        (**self).value()
    }
}

/// Query parameters: `args![a, b]`.
macro_rules! args {
    ($($x:expr),* $(,)?) => { &[$($crate::server::store::sql::ToValue::value(&$x)),*][..] };
}
pub(crate) use args;

/// What a column can be read as.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(Some(n)) => Some(*n),
            _ => None,
        }
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|n| u32::try_from(n).ok())
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|n| n != 0)
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(Some(s)) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(Some(b)) => Some(b.clone()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(None) | Value::Text(None) | Value::Blob(None) => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One row of a result.
pub struct Row(Vec<Value>);

impl Row {
    /// Column `i` as a `T`; an error names the column when it is missing or of another type.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T> {
        self.0.get(i).and_then(T::from_value).ok_or_else(|| {
            StoreError::Db(format!(
                "column {i} is missing or not a {}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// The row's values, to bind to another query (a copy).
    pub fn into_values(self) -> Vec<Value> {
        self.0
    }
}

enum Engine {
    Sqlite(rusqlite::Connection),
    Pg(Box<Pg>),
}

struct Pg {
    client: postgres::Client,
    /// To connect again with when the connection is lost.
    url: String,
    /// Each query prepared once per connection: its parameter types say how to bind NULLs.
    statements: std::collections::HashMap<String, postgres::Statement>,
}

impl Pg {
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64> {
        let statement = self.statement(sql)?;
        let params = pg_params(statement.params(), args);
        Ok(self.client.execute(&statement, &borrowed(&params))?)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<postgres::Row>> {
        let statement = self.statement(sql)?;
        let params = pg_params(statement.params(), args);
        Ok(self.client.query(&statement, &borrowed(&params))?)
    }
}

/// A connection to either engine.
pub struct Conn {
    engine: Engine,
    /// Transactions open: 0 outside one.
    depth: u32,
}

/// The advisory lock every PostgreSQL transaction takes first (any number, the same for
/// every instance: "lifeline" in ASCII).
const PG_LOCK: i64 = 0x6c69_6665_6c69_6e65;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // The server's own message, not the client library's wrapping of it.
        StoreError::Db(match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        })
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Value::Int(v) => v.to_sql(),
            Value::Text(v) => v.to_sql(),
            Value::Blob(v) => v.to_sql(),
        }
    }
}

/// `$1` to SQLite's `?1`; the queries hold no other `$`.
fn sqlite_text(sql: &str) -> String {
    sql.replace('$', "?")
}

impl Conn {
    pub fn sqlite(conn: rusqlite::Connection) -> Conn {
        Conn {
            engine: Engine::Sqlite(conn),
            depth: 0,
        }
    }

    /// Connects to PostgreSQL at `url` (`postgresql://user@host/db`, or with `?host=/run/…`
    /// for a unix socket). Errors never repeat the URL: it may hold a password.
    pub fn postgres(url: &str) -> Result<Conn> {
        let client = postgres::Client::connect(url, postgres::NoTls)
            .map_err(|e| StoreError::Db(format!("cannot connect to PostgreSQL: {e}")))?;
        Ok(Conn {
            engine: Engine::Pg(Box::new(Pg {
                client,
                url: url.to_string(),
                statements: Default::default(),
            })),
            depth: 0,
        })
    }

    /// After PostgreSQL restarted or the network failed, connects again (outside any
    /// transaction); if it cannot, the next queries fail and the next call tries again.
    pub fn reconnect_if_lost(&mut self) {
        if let (0, Engine::Pg(pg)) = (self.depth, &mut self.engine) {
            if pg.client.is_closed() {
                if let Ok(fresh) = postgres::Client::connect(&pg.url, postgres::NoTls) {
                    pg.client = fresh;
                    pg.statements.clear();
                }
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.engine, Engine::Pg(..))
    }

    /// Runs statements without parameters.
    pub fn batch(&mut self, sql: &str) -> Result<()> {
        match &mut self.engine {
            Engine::Sqlite(c) => c.execute_batch(sql)?,
            Engine::Pg(pg) => pg.client.batch_execute(sql)?,
        }
        Ok(())
    }

    /// Runs one statement; returns how many rows it changed.
    pub fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64> {
        Ok(match &mut self.engine {
            Engine::Sqlite(c) => {
                let params = rusqlite::params_from_iter(args.iter());
                c.execute(&sqlite_text(sql), params)? as u64
            }
            Engine::Pg(pg) => pg.execute(sql, args)?,
        })
    }

    /// Every row of a query.
    pub fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>> {
        match &mut self.engine {
            Engine::Sqlite(c) => {
                let mut stmt = c.prepare(&sqlite_text(sql))?;
                let columns = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let row = (0..columns)
                        .map(|i| sqlite_value(r.get_ref(i)?))
                        .collect::<Result<Vec<_>>>()?;
                    out.push(Row(row));
                }
                Ok(out)
            }
            Engine::Pg(pg) => pg
                .query(sql, args)?
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| pg_value(r, i))
                        .collect::<Result<Vec<_>>>()
                        .map(Row)
                })
                .collect(),
        }
    }

    /// The first row of a query, if any.
    pub fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first row of a query that always returns one (a count).
    pub fn query_one(&mut self, sql: &str, args: &[Value]) -> Result<Row> {
        self.query_opt(sql, args)?
            .ok_or_else(|| StoreError::Db("the query returned no row".into()))
    }

    /// Opens a transaction (the outermost one) or a savepoint in it.
    pub fn begin(&mut self) -> Result<()> {
        let sql = match (self.depth, &self.engine) {
            (0, Engine::Sqlite(_)) => "BEGIN IMMEDIATE".to_string(),
            (0, Engine::Pg(..)) => format!("BEGIN; SELECT pg_advisory_xact_lock({PG_LOCK})"),
            (n, _) => format!("SAVEPOINT s{n}"),
        };
        self.batch(&sql)?;
        self.depth += 1;
        Ok(())
    }

    /// Commits what `begin` opened.
    pub fn commit(&mut self) -> Result<()> {
        let sql = match self.depth {
            0 => return Err(StoreError::Db("commit outside a transaction".into())),
            1 => "COMMIT".to_string(),
            n => format!("RELEASE SAVEPOINT s{}", n - 1),
        };
        let done = self.batch(&sql);
        if done.is_err() && self.depth == 1 {
            let _ = self.batch("ROLLBACK");
        }
        self.depth -= 1;
        done
    }

    /// Undoes what `begin` opened.
    pub fn rollback(&mut self) {
        let sql = match self.depth {
            0 => return,
            1 => "ROLLBACK".to_string(),
            n => format!("ROLLBACK TO SAVEPOINT s{0}; RELEASE SAVEPOINT s{0}", n - 1),
        };
        let _ = self.batch(&sql);
        self.depth -= 1;
    }

    /// Runs `f` in a transaction (or a savepoint of the open one): committed when it returns
    /// `Ok`, undone when it returns `Err`.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T>) -> Result<T> {
        self.begin()?;
        match f(self) {
            Ok(v) => self.commit().map(|()| v),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }
}

type PgParam = Box<dyn postgres::types::ToSql + Sync>;

/// `args` as the statement's parameter `types` want them: a NULL of the parameter's type (a
/// NULL read from SQLite has none). Every integer column is a BIGINT.
fn pg_params(types: &[postgres::types::Type], args: &[Value]) -> Vec<PgParam> {
    use postgres::types::Type;
    args.iter()
        .enumerate()
        .map(|(i, v)| -> PgParam {
            let ty = types.get(i).unwrap_or(&Type::UNKNOWN);
            match v {
                Value::Int(None) | Value::Text(None) | Value::Blob(None) => match *ty {
                    Type::BYTEA => Box::new(None::<Vec<u8>>),
                    Type::TEXT | Type::VARCHAR => Box::new(None::<String>),
                    _ => Box::new(None::<i64>),
                },
                Value::Int(n) => Box::new(*n),
                Value::Text(t) => Box::new(t.clone()),
                Value::Blob(b) => Box::new(b.clone()),
            }
        })
        .collect()
}

fn borrowed(params: &[PgParam]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params.iter().map(|p| p.as_ref()).collect()
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Result<Value> {
    use rusqlite::types::ValueRef;
    Ok(match v {
        // An untyped NULL reads as whichever kind the caller asks for (see `FromValue`).
        ValueRef::Null => Value::Int(None),
        ValueRef::Integer(n) => Value::Int(Some(n)),
        ValueRef::Text(t) => Value::Text(Some(String::from_utf8_lossy(t).into_owned())),
        ValueRef::Blob(b) => Value::Blob(Some(b.to_vec())),
        ValueRef::Real(_) => return Err(StoreError::Db("a column holds a real number".into())),
    })
}

fn pg_value(row: &postgres::Row, i: usize) -> Result<Value> {
    use postgres::types::Type;
    let ty = row.columns()[i].type_().clone();
    Ok(match ty {
        Type::INT8 => Value::Int(row.try_get(i)?),
        Type::INT4 => Value::Int(row.try_get::<_, Option<i32>>(i)?.map(i64::from)),
        Type::INT2 => Value::Int(row.try_get::<_, Option<i16>>(i)?.map(i64::from)),
        Type::BOOL => Value::Int(row.try_get::<_, Option<bool>>(i)?.map(i64::from)),
        Type::TEXT | Type::VARCHAR | Type::NAME => Value::Text(row.try_get(i)?),
        Type::BYTEA => Value::Blob(row.try_get(i)?),
        other => {
            return Err(StoreError::Db(format!(
                "column {i} has type {other}, which the store does not read"
            )))
        }
    })
}
