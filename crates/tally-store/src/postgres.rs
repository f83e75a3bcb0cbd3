//! The PostgreSQL backend: a bounded pool of connections, each keeping the statements it has
//! prepared; read-committed transactions in which writers lock the rows they change
//! (`SELECT … FOR UPDATE`); and migrations under a session advisory lock so that several
//! servers starting at once apply each one once.
//!
//! A connection that breaks (PostgreSQL restarted, a proxy or an administrator cut it) is
//! dropped from the pool and never handed out again. When the break shows at `BEGIN`, nothing
//! has happened yet, so the transaction starts again on another connection. When it shows
//! inside a transaction, PostgreSQL has rolled that transaction back and the caller gets a
//! [`StoreError::Database`] that says so; only a break during `COMMIT` leaves the outcome
//! unknown, which the message says too (Tally's writes are idempotent by their ids, so the
//! client retries with the same id).

use crate::conn::{Conn, Dialect, Row, Value};
use crate::StoreError;
use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The advisory lock key migrations run under ("tally" in ASCII).
const MIGRATION_LOCK: i64 = 0x74616c6c79;

/// Connections per server unless `TALLY_POSTGRES_POOL_SIZE` says otherwise.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// The largest pool `TALLY_POSTGRES_POOL_SIZE` may ask for.
pub const MAX_POOL_SIZE: usize = 1000;

/// How long a transaction waits for a free connection before it fails.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

/// Prepared statements kept per connection. Tally's SQL is a fixed set of texts (a filtered
/// listing makes one per combination of filters), a few hundred at most, so this only guards
/// against a future caller that formats values into SQL.
const MAX_CACHED_STATEMENTS: usize = 512;

pub struct PostgresBackend {
    url: String,
    max_connections: usize,
    pool: Mutex<Pool>,
    returned: Condvar,
}

struct Pool {
    idle: Vec<Connection>,
    /// Connections that exist, idle or checked out.
    open: usize,
}

/// One connection and the statements prepared on it, by SQL text. Prepared statements belong
/// to the PostgreSQL session, so each connection keeps its own.
struct Connection {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
    /// Set when an error showed the connection is unusable: it is then closed, not pooled.
    broken: bool,
}

/// A connection taken from the pool. Dropping it returns it, unless it broke or the thread
/// is unwinding from a panic (the connection may be inside a transaction), in which case it
/// is closed and its pool slot freed, so a failure never leaks a slot.
struct Checkout<'a> {
    backend: &'a PostgresBackend,
    connection: Option<Connection>,
    /// Made for this checkout rather than taken idle from the pool.
    fresh: bool,
}

impl Checkout<'_> {
    fn connection(&mut self) -> &mut Connection {
        self.connection.as_mut().expect("a checkout holds its connection until dropped")
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else { return };
        let reusable = !connection.broken && !connection.client.is_closed() && !std::thread::panicking();
        let mut pool = self.backend.lock_pool();
        if reusable {
            pool.idle.push(connection);
        } else {
            pool.open -= 1;
        }
        drop(pool);
        self.backend.returned.notify_one();
    }
}

impl PostgresBackend {
    /// Opens a pool of `TALLY_POSTGRES_POOL_SIZE` connections (16 when unset) and connects
    /// once, so that a wrong URL fails at start rather than at the first request.
    pub fn open(url: &str) -> Result<PostgresBackend, StoreError> {
        PostgresBackend::open_with_pool_size(url, pool_size_from_env()?)
    }

    pub fn open_with_pool_size(url: &str, max_connections: usize) -> Result<PostgresBackend, StoreError> {
        let backend = PostgresBackend {
            url: url.to_owned(),
            max_connections: max_connections.clamp(1, MAX_POOL_SIZE),
            pool: Mutex::new(Pool { idle: Vec::new(), open: 0 }),
            returned: Condvar::new(),
        };
        drop(backend.checkout()?);
        Ok(backend)
    }

    pub fn pool_size(&self) -> usize {
        self.max_connections
    }

    /// Connections open (idle or in use), and idle ones, for metrics.
    pub fn connections(&self) -> (usize, usize) {
        let pool = self.lock_pool();
        (pool.open, pool.idle.len())
    }

    fn lock_pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes an idle connection, or opens one while the pool has room, or waits for one.
    fn checkout(&self) -> Result<Checkout<'_>, StoreError> {
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        let mut pool = self.lock_pool();
        loop {
            if let Some(connection) = pool.idle.pop() {
                if connection.client.is_closed() {
                    pool.open -= 1;
                    continue;
                }
                return Ok(Checkout { backend: self, connection: Some(connection), fresh: false });
            }
            if pool.open < self.max_connections {
                pool.open += 1;
                drop(pool);
                return match postgres::Client::connect(&self.url, postgres::NoTls) {
                    Ok(client) => Ok(Checkout {
                        backend: self,
                        connection: Some(Connection { client, statements: HashMap::new(), broken: false }),
                        fresh: true,
                    }),
                    Err(error) => {
                        self.lock_pool().open -= 1;
                        self.returned.notify_one();
                        Err(StoreError::Database(format!("cannot connect to PostgreSQL: {}", describe(&error))))
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Database(format!(
                    "all {} PostgreSQL connections of this server stayed busy for {} s; raise \
                     TALLY_POSTGRES_POOL_SIZE (see docs/scaling.md) or look for a slow transaction",
                    self.max_connections,
                    CHECKOUT_TIMEOUT.as_secs()
                )));
            }
            pool = self.returned.wait_timeout(pool, deadline - now).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
    }

    /// Checks out a connection and opens a transaction on it. A pooled connection may have
    /// died while idle, which PostgreSQL reveals only when it is used; nothing has happened
    /// yet at `BEGIN`, so such a connection is dropped and the next one tried. A fresh
    /// connection that cannot begin is the answer.
    fn begin(&self, begin: &str) -> Result<Checkout<'_>, StoreError> {
        loop {
            let mut checkout = self.checkout()?;
            let connection = checkout.connection();
            match connection.client.batch_execute(begin) {
                Ok(()) => return Ok(checkout),
                Err(error) => {
                    // Whatever failed, this connection's state is unknown: do not pool it.
                    connection.broken = true;
                    if checkout.fresh || !breaks_connection(&error) {
                        return Err(connection_lost_or(error, "before the transaction began; nothing was written"));
                    }
                    tracing::debug!(error = %describe(&error), "dropped a pooled PostgreSQL connection that had died while idle");
                }
            }
        }
    }

    fn run<R, E: From<StoreError>>(
        &self,
        begin: &str,
        work: impl FnOnce(&mut dyn Conn) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut checkout = self.begin(begin)?;
        run_in_transaction(checkout.connection(), work)
    }

    pub fn write<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        self.run("BEGIN ISOLATION LEVEL READ COMMITTED", work)
    }

    pub fn read<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        self.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", work)
    }

    /// Applies pending migrations under a session advisory lock, so that servers starting at
    /// once take turns: the first applies, the others then find nothing left to do. Should
    /// this process die meanwhile, its session ends and PostgreSQL releases the lock.
    pub fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let mut checkout = self.checkout()?;
        let connection = checkout.connection();
        let locked = connection.client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]);
        if let Err(error) = locked {
            connection.broken = true;
            return Err(connection_lost_or(error, "while waiting for the migration lock; nothing was applied"));
        }
        let result = match connection.client.batch_execute("BEGIN") {
            Ok(()) => run_in_transaction(connection, crate::migrate::apply),
            Err(error) => Err(connection.fail(error)),
        };
        if let Err(error) = connection.client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]) {
            // Closing the session releases the lock anyway.
            connection.broken = true;
            tracing::warn!(error = %describe(&error), "could not release the migration lock; closing the connection instead");
        }
        // The schema may have changed under the statements this connection prepared.
        connection.statements.clear();
        result
    }
}

impl Drop for PostgresBackend {
    /// The synchronous driver blocks when a connection closes, which panics on an async
    /// runtime's thread; the store may be dropped there, so connections close on a plain one.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.pool.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()).idle);
        let _ = std::thread::spawn(move || drop(idle)).join();
    }
}

fn pool_size_from_env() -> Result<usize, StoreError> {
    let Some(text) = std::env::var("TALLY_POSTGRES_POOL_SIZE").ok().filter(|text| !text.trim().is_empty()) else {
        return Ok(DEFAULT_POOL_SIZE);
    };
    text.trim().parse().ok().filter(|size| (1..=MAX_POOL_SIZE).contains(size)).ok_or_else(|| {
        StoreError::Database(format!(
            "TALLY_POSTGRES_POOL_SIZE is {text:?}: give a whole number of connections from 1 to {MAX_POOL_SIZE}"
        ))
    })
}

/// Runs `work` inside the transaction the caller began, then commits or rolls back.
fn run_in_transaction<R, E: From<StoreError>>(
    connection: &mut Connection,
    work: impl FnOnce(&mut dyn Conn) -> Result<R, E>,
) -> Result<R, E> {
    let outcome = work(&mut PostgresConn { connection: &mut *connection });
    if connection.broken {
        // PostgreSQL has rolled the transaction back. The error `work` returned says so; if
        // it swallowed that error, its result must not pass for committed.
        return match outcome {
            Ok(_) => Err(StoreError::Database(
                "lost the connection to PostgreSQL during the transaction; PostgreSQL rolled it back".into(),
            )
            .into()),
            Err(error) => Err(error),
        };
    }
    match outcome {
        Ok(value) => match connection.client.batch_execute("COMMIT") {
            Ok(()) => Ok(value),
            Err(error) if breaks_connection(&error) || connection.client.is_closed() => {
                connection.broken = true;
                Err(StoreError::Database(format!(
                    "lost the connection to PostgreSQL while committing ({}): the transaction may or may \
                     not have been applied; retry with the same ids, which makes a repeat a no-op",
                    describe(&error)
                ))
                .into())
            }
            // PostgreSQL ends a transaction whose COMMIT fails, so the connection is reusable.
            Err(error) => Err(database(error).into()),
        },
        Err(error) => {
            if connection.client.batch_execute("ROLLBACK").is_err() {
                connection.broken = true;
            }
            Err(error)
        }
    }
}

impl Connection {
    /// The statement for `sql`, prepared on first use on this connection.
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        if self.statements.len() >= MAX_CACHED_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Notes what `error` says about the connection and turns it into a [`StoreError`].
    fn fail(&mut self, error: postgres::Error) -> StoreError {
        if breaks_connection(&error) || self.client.is_closed() {
            self.broken = true;
            return StoreError::Database(format!(
                "lost the connection to PostgreSQL ({}); PostgreSQL rolled the transaction back, so nothing \
                 was written: retry it",
                describe(&error)
            ));
        }
        database(error)
    }

    fn run(&mut self, sql: &str, params: &[Value], query: bool) -> Result<Outcome, StoreError> {
        let statement = self.statement(sql).map_err(|error| self.fail(error))?;
        let bound: Vec<Param> = params.iter().map(Param).collect();
        let references: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|param| param as &(dyn ToSql + Sync)).collect();
        let result = if query {
            self.client.query(&statement, &references).map(Outcome::Rows)
        } else {
            self.client.execute(&statement, &references).map(Outcome::Changed)
        };
        result.map_err(|error| {
            // A plan PostgreSQL can no longer use (the schema changed under it) is prepared
            // afresh next time rather than failing forever.
            if error.code().is_some_and(|code| *code == SqlState::FEATURE_NOT_SUPPORTED) {
                self.statements.remove(sql);
            }
            self.fail(error)
        })
    }
}

enum Outcome {
    Rows(Vec<postgres::Row>),
    Changed(u64),
}

/// Whether an error means the connection itself is gone, as opposed to one statement failing.
fn breaks_connection(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
        }
        None => std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>()),
    }
}

fn connection_lost_or(error: postgres::Error, when: &str) -> StoreError {
    if breaks_connection(&error) {
        StoreError::Database(format!("lost the connection to PostgreSQL ({}) {when}", describe(&error)))
    } else {
        database(error)
    }
}

struct PostgresConn<'a> {
    connection: &'a mut Connection,
}

/// Binds our portable values to whatever column type PostgreSQL inferred for the parameter.
#[derive(Debug)]
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(int) => match *ty {
                Type::INT2 => i16::try_from(*int)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*int)?.to_sql(ty, out),
                Type::BOOL => (*int != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => int.to_string().to_sql(ty, out),
                _ => int.to_sql(ty, out),
            },
            Value::Text(text) => match *ty {
                Type::INT8 => text.parse::<i64>()?.to_sql(ty, out),
                _ => text.as_str().to_sql(&Type::TEXT, out),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl Conn for PostgresConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        match self.connection.run(sql, params, false)? {
            Outcome::Changed(count) => Ok(count),
            Outcome::Rows(rows) => Ok(rows.len() as u64),
        }
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        match self.connection.run(sql, params, true)? {
            Outcome::Rows(rows) => rows.iter().map(read_row).collect(),
            Outcome::Changed(_) => Ok(Vec::new()),
        }
    }
}

fn read_row(row: &postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        let value = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(index).map(|value| value.map(Value::Int)),
            Type::INT4 => row.try_get::<_, Option<i32>>(index).map(|value| value.map(|int| Value::Int(int.into()))),
            Type::INT2 => row.try_get::<_, Option<i16>>(index).map(|value| value.map(|int| Value::Int(int.into()))),
            Type::BOOL => row.try_get::<_, Option<bool>>(index).map(|value| value.map(|flag| Value::Int(flag.into()))),
            _ => row.try_get::<_, Option<String>>(index).map(|value| value.map(Value::Text)),
        }
        .map_err(database)?;
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

fn database(error: postgres::Error) -> StoreError {
    if let Some(db_error) = error.as_db_error() {
        if db_error.code() == &SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict(db_error.message().to_owned());
        }
    }
    StoreError::Database(describe(&error))
}

/// The driver's message with its cause: its own text alone says only "db error".
fn describe(error: &postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}
