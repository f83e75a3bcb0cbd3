//! `tally backup PATH` and `tally restore PATH`, for SQLite: copies made with SQLite's online
//! backup API, so a backup taken while a server writes is a consistent snapshot (the whole
//! copy is made in one step, inside one read transaction, which in WAL mode never blocks the
//! writer), and a restore writes through SQLite's own locking rather than over the files.
//! PostgreSQL has its own tools (`docs/operations.md`).

use anyhow::{bail, Context};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tally_store::DatabaseUrl;

/// What a copy copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub pages: i64,
    pub bytes: u64,
    pub elapsed: Duration,
}

fn sqlite_path(database_url: &str, command: &str) -> anyhow::Result<PathBuf> {
    match DatabaseUrl::parse(database_url)? {
        DatabaseUrl::Sqlite(path) => Ok(path),
        DatabaseUrl::Postgres(_) => bail!(
            "tally {command} copies SQLite databases; for PostgreSQL use pg_dump / pg_restore, or \
             pg_basebackup with WAL archiving for point-in-time recovery (docs/operations.md, \"Backups\")"
        ),
    }
}

/// Opens an existing SQLite file without creating it.
pub(crate) fn open_existing(path: &Path) -> anyhow::Result<Connection> {
    if !path.is_file() {
        bail!("no SQLite database at {}", std::path::absolute(path).unwrap_or_else(|_| path.to_owned()).display());
    }
    let connection =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("cannot open {}", path.display()))?;
    connection.busy_timeout(Duration::from_secs(10))?;
    Ok(connection)
}

/// Refuses a file that is not a Tally database, or is damaged.
fn check_tally_database(connection: &Connection, path: &Path) -> anyhow::Result<()> {
    let tally: i64 = connection
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'tally_migrations'", [], |row| {
            row.get(0)
        })
        .with_context(|| format!("{} is not a SQLite database", path.display()))?;
    if tally == 0 {
        bail!("{} is a SQLite database without Tally's schema", path.display());
    }
    let check: String = connection.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
    if check != "ok" {
        bail!("{} is damaged: SQLite's quick_check says {check}", path.display());
    }
    Ok(())
}

/// Copies `source` into `destination`, all pages in one step: one consistent snapshot. (A
/// copy made in several steps starts over whenever another connection writes in between, so
/// under steady writes it might never finish.)
fn copy(source: &Connection, destination: &mut Connection) -> anyhow::Result<i64> {
    use rusqlite::backup::StepResult;
    let backup = rusqlite::backup::Backup::new(source, destination)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match backup.step(-1)? {
            StepResult::Done => break,
            // Cannot follow a step of every page; asked again, it finds nothing left to do.
            StepResult::More => continue,
            StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            StepResult::Busy | StepResult::Locked => bail!("the database stayed locked for 60 s"),
            other => bail!("SQLite's backup stopped: {other:?}"),
        }
    }
    Ok(backup.progress().pagecount as i64)
}

fn sync_directory_of(path: &Path) {
    // Makes the rename durable; where directories cannot be opened, there is nothing to do.
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        if let Ok(directory) = std::fs::File::open(parent) {
            let _ = directory.sync_all();
        }
    }
}

/// `tally backup PATH`: a consistent copy of the configured SQLite database in one file at
/// `destination` (journal mode DELETE, so the file is the whole backup), written beside it
/// first and renamed into place, so `destination` never holds half a backup.
pub fn backup(database_url: &str, destination: &Path, force: bool) -> anyhow::Result<Copied> {
    let started = Instant::now();
    let source_path = sqlite_path(database_url, "backup")?;
    let source = open_existing(&source_path)?;
    check_tally_database(&source, &source_path)?;
    if destination.exists() && !force {
        bail!("{} exists already: choose a new path, or pass --force to replace it", destination.display());
    }
    let file_name = destination.file_name().context("the backup path must name a file")?.to_string_lossy();
    let partial = destination.with_file_name(format!(".{file_name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let result = (|| {
        let mut copy_connection =
            Connection::open(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
        let pages = copy(&source, &mut copy_connection)?;
        let mode: String = copy_connection.query_row("PRAGMA journal_mode = DELETE", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("delete") {
            bail!("cannot make the backup a single file (journal mode {mode})");
        }
        copy_connection.close().map_err(|(_, error)| error)?;
        std::fs::File::open(&partial)?.sync_all()?;
        std::fs::rename(&partial, destination)
            .with_context(|| format!("cannot move the backup to {}", destination.display()))?;
        sync_directory_of(destination);
        anyhow::Ok(pages)
    })();
    let pages = match result {
        Ok(pages) => pages,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    let bytes = std::fs::metadata(destination)?.len();
    Ok(Copied { pages, bytes, elapsed: started.elapsed() })
}

/// `tally restore PATH`: copies the backup at `source` into the configured SQLite database.
/// A target that exists and is not empty is replaced only with `force`. Stop every server on
/// the target first: a running server keeps what it cached of the old data.
pub fn restore(database_url: &str, source_path: &Path, force: bool) -> anyhow::Result<Copied> {
    let started = Instant::now();
    let target = sqlite_path(database_url, "restore")?;
    let source = open_existing(source_path)?;
    check_tally_database(&source, source_path)?;
    let occupied = std::fs::metadata(&target).is_ok_and(|metadata| metadata.len() > 0);
    if occupied && !force {
        bail!(
            "{} holds a database already: stop the servers that use it and pass --force to replace it, \
             or restore into a new path (--database sqlite://NEW/PATH.db)",
            target.display()
        );
    }
    if let Some(parent) = target.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut destination = Connection::open(&target).with_context(|| format!("cannot open {}", target.display()))?;
    destination.busy_timeout(Duration::from_secs(10))?;
    let pages = copy(&source, &mut destination)?;
    destination.close().map_err(|(_, error)| error)?;
    let bytes = std::fs::metadata(&target)?.len();
    Ok(Copied { pages, bytes, elapsed: started.elapsed() })
}
