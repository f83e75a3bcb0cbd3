//! The PostgreSQL backend: a bounded pool of connections (r2d2), each keeping the statements it has
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

use crate::conn::{Conn, Dialect, Row, RowsStatement, Value};
use crate::StoreError;
use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

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
/// The most times [`PostgresBackend::write_rerunnable`] runs a job that deadlocks.
const MAX_RUNS: u32 = 3;

pub struct PostgresBackend {
    /// Taken out only by `drop`, which closes the connections on a plain thread.
    pool: Option<r2d2::Pool<Connector>>,
    max_connections: usize,
}

/// Opens connections for r2d2, the pool: the URL for the driver and the TLS it asked for
/// (`postgres_tls`). A connection is returned to the pool unless it broke or the thread is
/// unwinding from a panic (the connection may be inside a transaction); then it is closed and
/// its slot freed, so a failure never leaks a slot.
struct Connector(crate::postgres_tls::Connector);

impl Connector {
    fn open(&self) -> Result<Connection, postgres::Error> {
        let client = self.0.connect()?;
        Ok(Connection {
            client,
            statements: HashMap::new(),
            column_statements: HashMap::new(),
            broken: false,
            aborted_to_retry: false,
            used: false,
            lane: next_lane(),
        })
    }
}

/// A connection's lane (see [`Conn::lane`]): the smallest slot no other open connection of
/// this process holds, so that however connections come and go, those open at once have
/// different lanes, offset by a random number per process. Lanes repeat every
/// `rollups::SHARDS`: with two full servers of 16 connections each, each row is shared by one
/// connection of each (instead of by every customer that maps to it).
struct Lane {
    slot: u64,
    number: u64,
}

/// This process's lane offset and the slots its open connections hold.
struct Lanes {
    offset: u64,
    held: std::collections::BTreeSet<u64>,
}

fn lanes() -> MutexGuard<'static, Lanes> {
    static LANES: std::sync::OnceLock<Mutex<Lanes>> = std::sync::OnceLock::new();
    LANES
        .get_or_init(|| Mutex::new(Lanes { offset: rand::random::<u16>().into(), held: Default::default() }))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn next_lane() -> Lane {
    let mut lanes = lanes();
    let slot = (0..).find(|slot| !lanes.held.contains(slot)).unwrap_or_default();
    lanes.held.insert(slot);
    Lane { slot, number: slot + lanes.offset }
}

impl Drop for Lane {
    fn drop(&mut self) {
        lanes().held.remove(&self.slot);
    }
}

impl r2d2::ManageConnection for Connector {
    type Connection = Connection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Connection, postgres::Error> {
        self.open()
    }

    /// Not asked on checkout (`test_on_check_out(false)`): `begin` finds a dead connection at
    /// `BEGIN`, which costs no extra round trip.
    fn is_valid(&self, connection: &mut Connection) -> Result<(), postgres::Error> {
        connection.client.batch_execute("")
    }

    fn has_broken(&self, connection: &mut Connection) -> bool {
        connection.broken || connection.client.is_closed() || std::thread::panicking()
    }
}

/// One connection and the statements prepared on it, by SQL text. Prepared statements belong
/// to the PostgreSQL session, so each connection keeps its own.
struct Connection {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
    /// The one-statement form of each multi-row write (`Conn::insert_columns`), by the text of
    /// its one-row statement.
    column_statements: HashMap<String, std::sync::Arc<str>>,
    /// Set when an error showed the connection is unusable: it is then closed, not pooled.
    broken: bool,
    /// Set when PostgreSQL aborted the current transaction to break a deadlock (or a
    /// serialization conflict): nothing of it was applied, and running it again can succeed.
    /// Cleared when a transaction begins.
    aborted_to_retry: bool,
    /// Has begun a transaction before; a connection that has not is fresh from `connect`.
    used: bool,
    /// See [`Conn::lane`].
    lane: Lane,
}

type Checkout = r2d2::PooledConnection<Connector>;

/// How a read transaction begins: one snapshot for all its statements.
const READ_ONLY: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

impl PostgresBackend {
    /// Opens a pool of `TALLY_POSTGRES_POOL_SIZE` connections (16 when unset) and connects
    /// once, so that a wrong URL fails at start rather than at the first request.
    pub fn open(url: &str) -> Result<PostgresBackend, StoreError> {
        PostgresBackend::open_with_pool_size(url, pool_size_from_env()?)
    }

    pub fn open_with_pool_size(url: &str, max_connections: usize) -> Result<PostgresBackend, StoreError> {
        let connector = Connector(crate::postgres_tls::connector(url)?);
        let max_connections = max_connections.clamp(1, MAX_POOL_SIZE);
        // r2d2 retries a failing connect until its timeout; a wrong URL should fail at once.
        let first = connector.open().map_err(cannot_connect)?;
        let pool = r2d2::Pool::builder()
            .max_size(max_connections as u32)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(CHECKOUT_TIMEOUT)
            .error_handler(Box::new(LogConnectErrors))
            .build_unchecked(connector);
        std::thread::spawn(move || drop(first)).join().ok();
        Ok(PostgresBackend { pool: Some(pool), max_connections })
    }

    pub fn pool_size(&self) -> usize {
        self.max_connections
    }

    /// Connections open (idle or in use), and idle ones, for metrics.
    pub fn connections(&self) -> (usize, usize) {
        let state = self.pool().state();
        (state.connections as usize, state.idle_connections as usize)
    }

    fn pool(&self) -> &r2d2::Pool<Connector> {
        self.pool.as_ref().expect("the pool lives until the backend is dropped")
    }

    /// Takes an idle connection, or opens one while the pool has room, or waits for one.
    fn checkout(&self) -> Result<Checkout, StoreError> {
        self.pool().get().map_err(|error| {
            // r2d2 gives the last connect error, if connecting is what failed.
            let error = error.to_string();
            if error.contains("timed out waiting for connection:") {
                StoreError::Database(format!("cannot connect to PostgreSQL: {error}"))
            } else {
                StoreError::Database(format!(
                    "all {} PostgreSQL connections of this server stayed busy for {} s; raise \
                     TALLY_POSTGRES_POOL_SIZE (see docs/scaling.md) or look for a slow transaction",
                    self.max_connections,
                    CHECKOUT_TIMEOUT.as_secs()
                ))
            }
        })
    }

    /// Checks out a connection and opens a transaction on it. A pooled connection may have
    /// died while idle, which PostgreSQL reveals only when it is used; nothing has happened
    /// yet at `BEGIN`, so such a connection is dropped and the next one tried. A fresh
    /// connection that cannot begin is the answer.
    fn begin(&self, begin: &str) -> Result<Checkout, StoreError> {
        loop {
            let mut checkout = self.checkout()?;
            let connection = &mut *checkout;
            let fresh = !std::mem::replace(&mut connection.used, true);
            connection.aborted_to_retry = false;
            match connection.client.batch_execute(begin) {
                Ok(()) => return Ok(checkout),
                Err(error) => {
                    // Whatever failed, this connection's state is unknown: do not pool it.
                    connection.broken = true;
                    if fresh || !breaks_connection(&error) {
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
        run_in_transaction(&mut checkout, work)
    }

    pub fn write<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        self.run("BEGIN ISOLATION LEVEL READ COMMITTED", work)
    }

    /// [`write`](Self::write) for work that can run again from the start
    /// (`Store::write_rerunnable`): when PostgreSQL aborts its transaction to break a
    /// deadlock, it runs again, up to [`MAX_RUNS`] times in all, instead of failing. Two
    /// servers can deadlock on rows they both update in different orders (a platform-wide
    /// rollup row whose lane two connections share); the victim then loses nothing and its
    /// caller never sees the abort.
    pub fn write_rerunnable<R, E: From<StoreError>>(
        &self,
        mut work: impl FnMut(&mut dyn Conn) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut runs = 1;
        loop {
            let mut checkout = self.begin("BEGIN ISOLATION LEVEL READ COMMITTED")?;
            let result = run_in_transaction(&mut checkout, &mut work);
            if !(result.is_err() && checkout.aborted_to_retry && runs < MAX_RUNS) {
                return result;
            }
            metrics::counter!("tally_postgres_transactions_rerun_total").increment(1);
            runs += 1;
        }
    }

    pub fn read<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        self.run(READ_ONLY, work)
    }

    /// Two read transactions that see one snapshot, for work that reads on two threads: the
    /// second imports the first's snapshot (`pg_export_snapshot`) before it reads anything.
    pub fn read_pair<R, E: From<StoreError>>(
        &self,
        work: impl FnOnce(&mut (dyn Conn + Send), &mut (dyn Conn + Send)) -> Result<R, E>,
    ) -> Result<R, E> {
        // Read-only: ending a transaction is all there is to do, whatever the outcome.
        fn end(connection: &mut Connection) {
            if connection.client.batch_execute("ROLLBACK").is_err() {
                connection.broken = true;
            }
        }
        let mut first = self.begin(READ_ONLY)?;
        let snapshot = match first.client.query_one("SELECT pg_export_snapshot()", &[]) {
            Ok(row) => row.get::<_, String>(0),
            Err(error) => {
                let error = first.fail(error);
                end(&mut first);
                return Err(error.into());
            }
        };
        let mut second = match self.begin(READ_ONLY) {
            Ok(second) => second,
            Err(error) => {
                end(&mut first);
                return Err(error.into());
            }
        };
        // The id is PostgreSQL's own text (hex digits and dashes), not the caller's.
        if let Err(error) = second.client.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'")) {
            let error = second.fail(error);
            end(&mut first);
            end(&mut second);
            return Err(error.into());
        }
        let outcome = work(&mut PostgresConn { connection: &mut first }, &mut PostgresConn { connection: &mut second });
        end(&mut first);
        end(&mut second);
        outcome
    }

    /// Applies pending migrations under a session advisory lock, so that servers starting at
    /// once take turns: the first applies, the others then find nothing left to do. Should
    /// this process die meanwhile, its session ends and PostgreSQL releases the lock.
    pub fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let mut checkout = self.checkout()?;
        let connection = &mut *checkout;
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
        let pool = self.pool.take();
        let _ = std::thread::spawn(move || drop(pool)).join();
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
        if error.code().is_some_and(|code| {
            *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
        }) {
            self.aborted_to_retry = true;
        }
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
        let bound: Vec<Param> = params.iter().map(Param).collect();
        let references: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|param| param as &(dyn ToSql + Sync)).collect();
        self.run_bound(sql, &references, query)
    }

    /// `statement` for every row of `values` in one statement: `head SELECT * FROM UNNEST(…)
    /// tail`, one array a column, each typed as PostgreSQL infers the one-row statement's
    /// parameter there (from the column it fills), so that nothing declares the types twice.
    /// `UNNEST` yields the rows in the arrays' order.
    fn insert_columns(
        &mut self,
        statement: &RowsStatement<'_>,
        values: &[Value],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let sql = match self.column_statements.get(statement.one_row) {
            Some(sql) => sql.clone(),
            None => {
                let one_row = self.statement(statement.one_row).map_err(|error| self.fail(error))?;
                let arrays: Vec<String> = one_row
                    .params()
                    .iter()
                    .enumerate()
                    .map(|(index, ty)| format!("${}::{}[]", index + 1, ty.name()))
                    .collect();
                let sql: std::sync::Arc<str> =
                    format!("{} SELECT * FROM UNNEST({}){}", statement.head, arrays.join(", "), statement.tail).into();
                self.column_statements.insert(statement.one_row.to_owned(), sql.clone());
                sql
            }
        };
        let width = statement.width;
        let columns: Vec<Vec<Param>> =
            (0..width).map(|column| values.iter().skip(column).step_by(width).map(Param).collect()).collect();
        let references: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|column| column as &(dyn ToSql + Sync)).collect();
        match self.run_bound(&sql, &references, true)? {
            Outcome::Rows(rows) => Ok(rows),
            Outcome::Changed(_) => Ok(Vec::new()),
        }
    }

    fn run_bound(&mut self, sql: &str, references: &[&(dyn ToSql + Sync)], query: bool) -> Result<Outcome, StoreError> {
        let statement = self.statement(sql).map_err(|error| self.fail(error))?;
        let result = if query {
            self.client.query(&statement, references).map(Outcome::Rows)
        } else {
            self.client.execute(&statement, references).map(Outcome::Changed)
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

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.stream(sql, params, each)
    }

    fn lane(&self) -> u64 {
        self.connection.lane.number
    }

    fn insert_columns(
        &mut self,
        statement: &RowsStatement<'_>,
        values: &[Value],
    ) -> Option<Result<Vec<Row>, StoreError>> {
        let rows = self.connection.insert_columns(statement, values);
        Some(rows.and_then(|rows| rows.iter().map(read_row).collect()))
    }

    fn query_planned_for_values(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let bound: Vec<Param> = params.iter().map(Param).collect();
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = bound
            .iter()
            .map(|param| {
                let ty = match param.0 {
                    Value::Int(_) => Type::INT8,
                    Value::Null | Value::Text(_) => Type::TEXT,
                };
                (param as &(dyn ToSql + Sync), ty)
            })
            .collect();
        let rows = self.connection.client.query_typed(sql, &typed).map_err(|error| self.connection.fail(error))?;
        rows.iter().map(read_row).collect()
    }
}

impl PostgresConn<'_> {
    /// Streams a query's rows to `each` as they arrive (`query_raw`), one row of values
    /// refilled in place.
    fn stream(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        use postgres::fallible_iterator::FallibleIterator;
        let connection = &mut *self.connection;
        let statement = connection.statement(sql).map_err(|error| connection.fail(error))?;
        let bound: Vec<Param> = params.iter().map(Param).collect();
        let client = &mut connection.client;
        // The stream's own errors (outer) apart from `each`'s and the rows' (inner).
        let streamed = (|| -> Result<Result<(), StoreError>, postgres::Error> {
            let mut rows = client.query_raw(&statement, bound.iter())?;
            let mut current = Row(Vec::new());
            while let Some(row) = rows.next()? {
                if let Err(error) = fill_row(&row, &mut current).and_then(|()| each(&current)) {
                    return Ok(Err(error));
                }
            }
            Ok(Ok(()))
        })();
        match streamed {
            Ok(result) => result,
            Err(error) => Err(connection.fail(error)),
        }
    }
}

/// [`read_row`] into `into`, reusing its text buffers.
fn fill_row(row: &postgres::Row, into: &mut Row) -> Result<(), StoreError> {
    into.0.resize(row.len(), Value::Null);
    for (index, column) in row.columns().iter().enumerate() {
        let slot = &mut into.0[index];
        let value = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(index).map(|value| value.map(Value::Int)),
            Type::INT4 => row.try_get::<_, Option<i32>>(index).map(|value| value.map(|int| Value::Int(int.into()))),
            Type::INT2 => row.try_get::<_, Option<i16>>(index).map(|value| value.map(|int| Value::Int(int.into()))),
            Type::BOOL => row.try_get::<_, Option<bool>>(index).map(|value| value.map(|flag| Value::Int(flag.into()))),
            _ => match row.try_get::<_, Option<&str>>(index).map_err(database)? {
                Some(text) => {
                    slot.set_text(text);
                    continue;
                }
                None => Ok(None),
            },
        }
        .map_err(database)?;
        *slot = value.unwrap_or(Value::Null);
    }
    Ok(())
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

fn cannot_connect(error: postgres::Error) -> StoreError {
    StoreError::Database(format!("cannot connect to PostgreSQL: {}", describe(&error)))
}

/// Connect failures happen on r2d2's threads; they are logged here, and the last one is also
/// the answer to a checkout that timed out waiting.
#[derive(Debug)]
struct LogConnectErrors;

impl r2d2::HandleError<postgres::Error> for LogConnectErrors {
    fn handle_error(&self, error: postgres::Error) {
        tracing::warn!(error = %describe(&error), "cannot open a PostgreSQL connection");
    }
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
