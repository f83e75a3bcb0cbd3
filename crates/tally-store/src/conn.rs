//! The one trait every storage backend implements: run a statement, run a query, inside a
//! transaction the backend opened. Everything above it (repositories, operations, migrations
//! apart from column types) is written once and shared by SQLite and PostgreSQL.
//!
//! SQL is written with PostgreSQL's `$1` placeholders and portable types only: `TEXT` for
//! strings, exact decimals (canonical decimal strings) and JSON; `BIGINT` for integers,
//! booleans (0/1) and instants (microseconds since the Unix epoch, UTC).

use crate::StoreError;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::str::FromStr;

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

/// A statement that writes many rows: `head VALUES (…), (…) tail`, `width` values a row.
#[derive(Debug, Clone, Copy)]
pub struct RowsStatement<'a> {
    /// `INSERT INTO table (columns)`.
    pub head: &'a str,
    pub width: usize,
    /// What follows the rows: `ON CONFLICT …`, `RETURNING …`, or nothing.
    pub tail: &'a str,
    /// The statement for one row, with this dialect's placeholders: what the database infers
    /// each column's type from, and the key under which a backend keeps its own form.
    pub one_row: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

pub trait Conn {
    fn dialect(&self) -> Dialect;
    /// Runs a statement and returns the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    /// Runs a query and returns every row.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Runs a query and hands its rows to `each` one at a time, as the database returns them,
    /// instead of collecting them: memory stays one row, however many the query returns. The
    /// row passed may reuse the previous one's buffers (copy out what outlives the call). The
    /// backends stream; this default, for wrappers, collects first.
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for row in self.query(sql, params)? {
            each(&row)?;
        }
        Ok(())
    }

    /// Runs a query planned for these very values, never from a plan the database kept: for
    /// a lookup of a list of keys on a table that grows. PostgreSQL keeps a generic plan of a
    /// prepared statement after five runs, chosen by the costs it estimated then; a generic plan
    /// of `mode = $1 AND id IN ($2, …)` chosen while `usage_events` was small (or never
    /// analysed) read every event of the mode and filtered them, and stayed that way as the
    /// table grew (2 s a batch at a million events). SQLite plans every statement for its values,
    /// so this default is `query`; PostgreSQL sends the statement unnamed, with its parameters'
    /// types, in one round trip.
    fn query_planned_for_values(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.query(sql, params)
    }

    /// Runs `statement` for every row of `values` (rows of `statement.width` values, one after
    /// another) in one statement, where the backend can bind each column's values as one
    /// array: PostgreSQL runs `head SELECT * FROM UNNEST($1::type[], …) tail`, a parameter a
    /// column whatever the number of rows. Multi-row `VALUES` take a statement for each chunk
    /// of at most 64 rows, one chunk for each power of two, so a round of 15 single events
    /// ran four statements a table, each a round trip and an executor's start-up. Returns the
    /// rows `tail` returns. `None` when the backend has no such form (SQLite, whose statements
    /// cost no round trip): the caller sends multi-row `VALUES` in chunks.
    fn insert_columns(
        &mut self,
        _statement: &RowsStatement<'_>,
        _values: &[Value],
    ) -> Option<Result<Vec<Row>, StoreError>> {
        None
    }

    /// Which of the rows a platform-wide total is spread over this connection's transactions
    /// add to (`repo::rollups::SHARDS`): transactions on different connections of one server
    /// then never wait for each other's row lock there, however many customers share a row.
    /// SQLite has one writer, so one lane.
    fn lane(&self) -> u64 {
        0
    }
}

impl dyn Conn + '_ {
    /// The rows of `sql`, each made into a `T` as it streams by ([`Conn::query_each`]): only
    /// what `make` takes of a row is kept, not the row's values (a chunk of `ledger verify`'s
    /// accounts and grants allocated every value of every row twice through `query`).
    pub fn query_map<T>(
        &mut self,
        sql: &str,
        params: &[Value],
        mut make: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut made = Vec::new();
        self.query_each(sql, params, &mut |row| {
            made.push(make(row)?);
            Ok(())
        })?;
        Ok(made)
    }

    pub fn query_optional(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    pub fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_optional(sql, params)?
            .ok_or_else(|| StoreError::Corrupt("a query that returns one row returned none".into()))
    }

    /// `" FOR UPDATE"` where the database needs row locks to serialise writers. SQLite takes
    /// the database write lock at `BEGIN IMMEDIATE`, so it needs none.
    pub fn for_update(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// `" FOR UPDATE SKIP LOCKED"` on PostgreSQL: lock the rows a query returns and pass over
    /// rows another transaction holds, so that several servers claiming due work each take
    /// different items instead of queueing behind one another. SQLite has one writer at a
    /// time, so whatever a write transaction reads is already its own.
    pub fn skip_locked(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// [`skip_locked`](Self::skip_locked) for a join: lock and skip only the rows of `table`
    /// (a table name or alias in the query), leaving the other tables' rows unlocked.
    pub fn skip_locked_of(&self, table: &str) -> String {
        match self.dialect() {
            Dialect::Sqlite => String::new(),
            Dialect::Postgres => format!(" FOR UPDATE OF {table} SKIP LOCKED"),
        }
    }

    pub fn count(&mut self, sql: &str, params: &[Value]) -> Result<i64, StoreError> {
        self.query_one(sql, params)?.int(0)
    }
}

/// One result row. Getters name the column index and convert with a clear error.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn get(&self, index: usize) -> Result<&Value, StoreError> {
        self.0.get(index).ok_or_else(|| StoreError::Corrupt(format!("no column {index}")))
    }

    pub fn int(&self, index: usize) -> Result<i64, StoreError> {
        match self.get(index)? {
            Value::Int(value) => Ok(*value),
            Value::Text(text) => text.parse().map_err(|_| corrupt(index, "an integer")),
            Value::Null => Err(corrupt(index, "an integer")),
        }
    }

    pub fn opt_int(&self, index: usize) -> Result<Option<i64>, StoreError> {
        match self.get(index)? {
            Value::Null => Ok(None),
            _ => self.int(index).map(Some),
        }
    }

    pub fn text(&self, index: usize) -> Result<String, StoreError> {
        match self.get(index)? {
            Value::Text(text) => Ok(text.clone()),
            Value::Int(value) => Ok(value.to_string()),
            Value::Null => Err(corrupt(index, "text")),
        }
    }

    /// A text column, borrowed (no copy). Integers are refused: use [`text`](Self::text).
    pub fn str(&self, index: usize) -> Result<&str, StoreError> {
        match self.get(index)? {
            Value::Text(text) => Ok(text),
            _ => Err(corrupt(index, "text")),
        }
    }

    /// [`str`](Self::str), or `None` for NULL.
    pub fn opt_str(&self, index: usize) -> Result<Option<&str>, StoreError> {
        match self.get(index)? {
            Value::Null => Ok(None),
            _ => self.str(index).map(Some),
        }
    }

    pub fn opt_text(&self, index: usize) -> Result<Option<String>, StoreError> {
        match self.get(index)? {
            Value::Null => Ok(None),
            _ => self.text(index).map(Some),
        }
    }

    pub fn decimal(&self, index: usize) -> Result<Decimal, StoreError> {
        let parsed = match self.get(index)? {
            Value::Text(text) => Decimal::from_str(text),
            Value::Int(value) => Ok(Decimal::from(*value)),
            Value::Null => return Err(corrupt(index, "a decimal")),
        };
        parsed.map_err(|_| corrupt(index, "a decimal"))
    }

    pub fn opt_decimal(&self, index: usize) -> Result<Option<Decimal>, StoreError> {
        match self.get(index)? {
            Value::Null => Ok(None),
            _ => self.decimal(index).map(Some),
        }
    }

    pub fn time(&self, index: usize) -> Result<DateTime<Utc>, StoreError> {
        let micros = self.int(index)?;
        DateTime::from_timestamp_micros(micros).ok_or_else(|| corrupt(index, "an instant"))
    }

    pub fn opt_time(&self, index: usize) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.get(index)? {
            Value::Null => Ok(None),
            _ => self.time(index).map(Some),
        }
    }

    pub fn bool(&self, index: usize) -> Result<bool, StoreError> {
        Ok(self.int(index)? != 0)
    }
}

fn corrupt(index: usize, expected: &str) -> StoreError {
    StoreError::Corrupt(format!("column {index} is not {expected}"))
}

impl Value {
    /// Makes this value `text`, reusing its buffer when it already holds text (streamed rows
    /// refill one row's values in place).
    pub(crate) fn set_text(&mut self, text: &str) {
        match self {
            Value::Text(buffer) => {
                buffer.clear();
                buffer.push_str(text);
            }
            other => *other = Value::Text(text.to_owned()),
        }
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Int(value)
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Int(value as i64)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Text(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Text(value)
    }
}

impl From<&std::sync::Arc<str>> for Value {
    fn from(value: &std::sync::Arc<str>) -> Value {
        Value::Text(value.to_string())
    }
}

impl From<&String> for Value {
    fn from(value: &String) -> Value {
        Value::Text(value.clone())
    }
}

/// Decimals are stored in canonical form (no trailing zeros) so equal amounts compare equal
/// as text.
impl From<Decimal> for Value {
    fn from(value: Decimal) -> Value {
        Value::Text(value.normalize().to_string())
    }
}

impl From<DateTime<Utc>> for Value {
    fn from(value: DateTime<Utc>) -> Value {
        Value::Int(value.timestamp_micros())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
}

/// Builds a parameter list: `params![a, b, c]`.
#[macro_export]
macro_rules! params {
    ($($value:expr),* $(,)?) => { &[$($crate::conn::Value::from($value)),*][..] };
}
