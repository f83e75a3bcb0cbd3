//! Tally's storage. [`Conn`] is the one trait a backend implements; [`Store`] opens the
//! backend a database URL names, applies migrations, and runs work in transactions. The
//! repositories (`repo`) hold every line of SQL, and the operations (`ops`) load state, call
//! the pure core, and write the result and its ledger entry in the same transaction.

pub mod conn;
pub mod ids;
pub mod migrate;
pub mod ops;
pub mod postgres;
pub mod postgres_tls;
pub mod repo;
pub mod sqlite;

pub use conn::{Conn, Dialect, Row, Value};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    /// A unique or other constraint refused the write.
    #[error("constraint violated: {0}")]
    Conflict(String),
    #[error("stored data is not what Tally wrote: {0}")]
    Corrupt(String),
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
}

/// Which database to use, parsed from `--database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://PATH`, `sqlite:PATH` or a plain file path.
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`, passed to the driver unchanged.
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<DatabaseUrl, StoreError> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        if path.is_empty() || path.contains("://") {
            return Err(StoreError::InvalidUrl(format!(
                "{url:?}: use sqlite://PATH, a file path, or postgres://USER@HOST:PORT/DATABASE"
            )));
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    }
}

/// A snapshot of the database connections. What a backend does not track is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open, idle or in use (PostgreSQL).
    pub open: Option<usize>,
    /// Connections idle in the pool (on SQLite, read connections).
    pub idle: usize,
    /// The most connections the pool opens (PostgreSQL: `TALLY_POSTGRES_POOL_SIZE`).
    pub max: Option<usize>,
    /// Writers waiting for SQLite's one write connection.
    pub write_queue: Option<usize>,
}

enum Backend {
    /// Boxed: the SQLite backend holds its writer, files and threads, the other a pool handle.
    Sqlite(Box<sqlite::SqliteBackend>),
    Postgres(postgres::PostgresBackend),
}

/// An open database. Cheap to share behind an `Arc`; every method blocks, so async callers
/// run them on a blocking thread.
pub struct Store {
    backend: Backend,
}

impl Store {
    /// Opens the database. Does not migrate: call [`Store::migrate`].
    pub fn open(url: &DatabaseUrl) -> Result<Store, StoreError> {
        let backend = match url {
            DatabaseUrl::Sqlite(path) => Backend::Sqlite(Box::new(sqlite::SqliteBackend::open(path)?)),
            DatabaseUrl::Postgres(url) => Backend::Postgres(postgres::PostgresBackend::open(url)?),
        };
        Ok(Store { backend })
    }

    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Applies every migration not yet applied. Safe to run twice and from two processes at
    /// once. Returns the versions it applied.
    pub fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => self.write(|conn| migrate::apply(conn)),
            Backend::Postgres(backend) => backend.migrate(),
        }
    }

    /// Bulk loading for `tally seed` only: on SQLite, `synchronous=OFF` and a page cache of
    /// `cache_kib` KiB on the write connection while `on` (see
    /// [`sqlite::SqliteBackend::set_bulk_load`]: a crash may then lose or corrupt the
    /// database), the durable settings again when not, with what was written synced to disk.
    /// PostgreSQL's settings are left as they are (its seeding turns `synchronous_commit` off
    /// per transaction, which risks no corruption); when bulk loading starts and when it ends
    /// it gathers the tables' statistics (`ANALYZE`), which its planner would otherwise have
    /// only once autovacuum came round, if it runs: without them it took `mode = ?` for
    /// selective and looked a batch of 1,000 event ids up by reading every event of the mode
    /// (2 s a batch at 2 million events, docs/benchmarks.md "At size on PostgreSQL").
    pub fn set_bulk_load(&self, on: bool, cache_kib: u32) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(backend) => backend.set_bulk_load(on, cache_kib),
            Backend::Postgres(backend) => backend.write(|conn| conn.execute("ANALYZE", &[]).map(|_| ())),
        }
    }

    /// How busy the database connections are, for metrics.
    pub fn pool_status(&self) -> PoolStatus {
        match &self.backend {
            Backend::Sqlite(backend) => {
                let (write_queue, idle) = backend.status();
                PoolStatus { open: None, idle, max: None, write_queue: Some(write_queue) }
            }
            Backend::Postgres(backend) => {
                let (open, idle) = backend.connections();
                PoolStatus { open: Some(open), idle, max: Some(backend.pool_size()), write_queue: None }
            }
        }
    }

    /// Runs `work` in a read-write transaction: committed when it returns `Ok`, rolled back
    /// when it returns `Err`.
    pub fn write<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        match &self.backend {
            Backend::Sqlite(backend) => backend.write(work),
            Backend::Postgres(backend) => backend.write(work),
        }
    }

    /// [`write`](Self::write) for work that can run again from the start: it changes nothing
    /// outside the database that a rollback would leave wrong, and runs no DDL. SQLite then
    /// runs it without a savepoint when it can (see `sqlite.rs`), so it may run twice;
    /// PostgreSQL runs it again when it aborted the transaction to break a deadlock.
    pub fn write_rerunnable<R: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        work: impl FnMut(&mut dyn Conn) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E> {
        match &self.backend {
            Backend::Sqlite(backend) => backend.write_rerunnable(work),
            Backend::Postgres(backend) => backend.write_rerunnable(work),
        }
    }

    /// Runs `work` in a read-only transaction that sees one consistent snapshot.
    pub fn read<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        match &self.backend {
            Backend::Sqlite(backend) => backend.read(work),
            Backend::Postgres(backend) => backend.read(work),
        }
    }

    /// Runs `work` with two connections in read-only transactions that see one and the same
    /// snapshot, so that it can read on two threads what one transaction would have read.
    pub fn read_pair<R, E: From<StoreError>>(
        &self,
        work: impl FnOnce(&mut (dyn Conn + Send), &mut (dyn Conn + Send)) -> Result<R, E>,
    ) -> Result<R, E> {
        match &self.backend {
            Backend::Sqlite(backend) => backend.read_pair(work),
            Backend::Postgres(backend) => backend.read_pair(work),
        }
    }
}
