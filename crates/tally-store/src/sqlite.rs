//! The embedded SQLite backend: one write connection (SQLite allows one writer at a time,
//! and taking the lock at `BEGIN IMMEDIATE` serialises every read-modify-write without row
//! locks) and a small pool of read connections, all in WAL mode with `synchronous=FULL` so
//! that a committed transaction is on disk before the response.

use crate::conn::{Conn, Dialect, Row, Value};
use crate::StoreError;
use rusqlite::types::ValueRef;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct SqliteBackend {
    path: PathBuf,
    writer: Mutex<rusqlite::Connection>,
    readers: Mutex<Vec<rusqlite::Connection>>,
}

const MAX_IDLE_READERS: usize = 8;

impl SqliteBackend {
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|error| StoreError::Database(format!("cannot create {}: {error}", parent.display())))?;
        }
        let writer = connect(path)?;
        Ok(SqliteBackend { path: path.to_owned(), writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) })
    }

    pub fn write<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        let mut connection = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        run_in_transaction(&mut connection, "BEGIN IMMEDIATE", work)
    }

    pub fn read<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        let pooled = self.readers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => connect(&self.path)?,
        };
        let result = run_in_transaction(&mut connection, "BEGIN", work);
        let mut readers = self.readers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if readers.len() < MAX_IDLE_READERS {
            readers.push(connection);
        }
        result
    }
}

fn connect(path: &Path) -> Result<rusqlite::Connection, StoreError> {
    let connection = rusqlite::Connection::open(path).map_err(database)?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 10000;",
        )
        .map_err(database)?;
    Ok(connection)
}

fn run_in_transaction<R, E: From<StoreError>>(
    connection: &mut rusqlite::Connection,
    begin: &str,
    work: impl FnOnce(&mut dyn Conn) -> Result<R, E>,
) -> Result<R, E> {
    connection.execute_batch(begin).map_err(database)?;
    let mut conn = SqliteConn { connection };
    match work(&mut conn) {
        Ok(value) => {
            if let Err(error) = conn.connection.execute_batch("COMMIT") {
                let _ = conn.connection.execute_batch("ROLLBACK");
                return Err(database(error).into());
            }
            Ok(value)
        }
        Err(error) => {
            let _ = conn.connection.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}

struct SqliteConn<'a> {
    connection: &'a mut rusqlite::Connection,
}

/// Rewrites `$1` placeholders to SQLite's numbered `?1`.
fn to_sqlite_placeholders(sql: &str) -> String {
    let mut rewritten = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|next| next.is_ascii_digit()) {
            rewritten.push('?');
        } else {
            rewritten.push(c);
        }
    }
    rewritten
}

fn bind(params: &[Value]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|value| match value {
            Value::Null => rusqlite::types::Value::Null,
            Value::Int(int) => rusqlite::types::Value::Integer(*int),
            Value::Text(text) => rusqlite::types::Value::Text(text.clone()),
        })
        .collect()
}

impl Conn for SqliteConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut statement = self.connection.prepare_cached(&to_sqlite_placeholders(sql)).map_err(database)?;
        let changed = statement.execute(rusqlite::params_from_iter(bind(params))).map_err(database)?;
        Ok(changed as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut statement = self.connection.prepare_cached(&to_sqlite_placeholders(sql)).map_err(database)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(bind(params))).map_err(database)?;
        let mut result = Vec::new();
        while let Some(row) = rows.next().map_err(database)? {
            let mut values = Vec::with_capacity(columns);
            for index in 0..columns {
                values.push(match row.get_ref(index).map_err(database)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(int) => Value::Int(int),
                    ValueRef::Text(bytes) => Value::Text(String::from_utf8_lossy(bytes).into_owned()),
                    ValueRef::Real(_) | ValueRef::Blob(_) => {
                        return Err(StoreError::Corrupt(format!("column {index} holds a float or blob")))
                    }
                });
            }
            result.push(Row(values));
        }
        Ok(result)
    }
}

fn database(error: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(failure, message) = &error {
        if failure.code == rusqlite::ErrorCode::ConstraintViolation {
            return StoreError::Conflict(message.clone().unwrap_or_default());
        }
    }
    StoreError::Database(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_only_where_numbered() {
        assert_eq!(to_sqlite_placeholders("a = $1 AND b = $12 AND c = '$x'"), "a = ?1 AND b = ?12 AND c = '$x'");
    }
}
