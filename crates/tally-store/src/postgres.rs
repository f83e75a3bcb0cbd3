//! The PostgreSQL backend: a bounded pool of connections, read-committed transactions in
//! which writers lock the rows they change (`SELECT … FOR UPDATE`), and migrations under a
//! session advisory lock so that several servers starting at once apply each one once.

use crate::conn::{Conn, Dialect, Row, Value};
use crate::StoreError;
use postgres::types::{IsNull, ToSql, Type};
use std::sync::{Condvar, Mutex};

/// The advisory lock key migrations run under ("tally" in ASCII).
const MIGRATION_LOCK: i64 = 0x74616c6c79;

pub struct PostgresBackend {
    url: String,
    max_connections: usize,
    pool: Mutex<Pool>,
    returned: Condvar,
}

struct Pool {
    idle: Vec<postgres::Client>,
    open: usize,
}

impl PostgresBackend {
    pub fn open(url: &str) -> Result<PostgresBackend, StoreError> {
        let max_connections =
            std::env::var("TALLY_POSTGRES_POOL_SIZE").ok().and_then(|text| text.parse().ok()).unwrap_or(16usize).max(1);
        let backend = PostgresBackend {
            url: url.to_owned(),
            max_connections,
            pool: Mutex::new(Pool { idle: Vec::new(), open: 0 }),
            returned: Condvar::new(),
        };
        // Connect once now so that a wrong URL fails at start, not at the first request.
        let client = backend.checkout()?;
        backend.checkin(client);
        Ok(backend)
    }

    fn checkout(&self) -> Result<postgres::Client, StoreError> {
        let mut pool = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if let Some(client) = pool.idle.pop() {
                if !client.is_closed() {
                    return Ok(client);
                }
                pool.open -= 1;
                continue;
            }
            if pool.open < self.max_connections {
                pool.open += 1;
                drop(pool);
                return postgres::Client::connect(&self.url, postgres::NoTls).map_err(|error| {
                    self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).open -= 1;
                    self.returned.notify_one();
                    database(error)
                });
            }
            pool = self.returned.wait(pool).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn checkin(&self, client: postgres::Client) {
        let mut pool = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if client.is_closed() {
            pool.open -= 1;
        } else {
            pool.idle.push(client);
        }
        self.returned.notify_one();
    }

    fn run<R, E: From<StoreError>>(
        &self,
        begin: &str,
        work: impl FnOnce(&mut dyn Conn) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut client = self.checkout()?;
        let result = run_in_transaction(&mut client, begin, work);
        self.checkin(client);
        result
    }

    pub fn write<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        self.run("BEGIN ISOLATION LEVEL READ COMMITTED", work)
    }

    pub fn read<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        self.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", work)
    }

    pub fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let mut client = self.checkout()?;
        let result = (|| {
            client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).map_err(database)?;
            let applied = run_in_transaction(&mut client, "BEGIN", crate::migrate::apply);
            client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).map_err(database)?;
            applied
        })();
        self.checkin(client);
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

fn run_in_transaction<R, E: From<StoreError>>(
    client: &mut postgres::Client,
    begin: &str,
    work: impl FnOnce(&mut dyn Conn) -> Result<R, E>,
) -> Result<R, E> {
    client.batch_execute(begin).map_err(database)?;
    let mut conn = PostgresConn { client };
    match work(&mut conn) {
        Ok(value) => {
            conn.client.batch_execute("COMMIT").map_err(database)?;
            Ok(value)
        }
        Err(error) => {
            let _ = conn.client.batch_execute("ROLLBACK");
            Err(error)
        }
    }
}

struct PostgresConn<'a> {
    client: &'a mut postgres::Client,
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
        let statement = self.client.prepare(sql).map_err(database)?;
        let bound: Vec<Param> = params.iter().map(Param).collect();
        let references: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|param| param as &(dyn ToSql + Sync)).collect();
        self.client.execute(&statement, &references).map_err(database)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let statement = self.client.prepare(sql).map_err(database)?;
        let bound: Vec<Param> = params.iter().map(Param).collect();
        let references: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|param| param as &(dyn ToSql + Sync)).collect();
        let rows = self.client.query(&statement, &references).map_err(database)?;
        rows.iter().map(read_row).collect()
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
        if db_error.code() == &postgres::error::SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict(db_error.message().to_owned());
        }
    }
    StoreError::Database(error.to_string())
}
