//! The `tally` command: configuration and the commands behind the CLI. `main.rs` only parses
//! arguments and calls in here, so tests can drive the same code.

pub mod backup;
pub mod bench;
pub mod config;
pub mod copy;
pub mod demo;
pub mod export;
pub mod report;
pub mod seed;
#[cfg(test)]
mod test_postgres;

use anyhow::{bail, Context};
use config::redact_database_url;
use std::sync::Arc;
use tally_store::{DatabaseUrl, Store};

/// Opens the database and applies pending migrations. Must run outside an async runtime:
/// the PostgreSQL driver is synchronous.
pub fn open_store(database_url: &str) -> anyhow::Result<Arc<Store>> {
    let url = DatabaseUrl::parse(database_url)?;
    let store = Store::open(&url)
        .with_context(|| format!("cannot open the database at {}", redact_database_url(database_url)))?;
    let applied = store.migrate().context("cannot apply migrations")?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied migrations");
    }
    Ok(Arc::new(store))
}

/// `tally migrate --status`: every migration of this build and of the database, with where it
/// stands, as lines of text, and whether the database is exactly current (every migration
/// applied, none changed since, none unknown to this build). Reads only: a missing SQLite file
/// is refused as the administrative commands refuse it, never created.
pub fn migration_status(database_url: &str) -> anyhow::Result<(Vec<String>, bool)> {
    use tally_store::migrate::MigrationState;
    let url = DatabaseUrl::parse(database_url)?;
    let shown = redact_database_url(database_url);
    if let DatabaseUrl::Sqlite(path) = &url {
        if !path.is_file() {
            bail!("no Tally database at {} (database URL {shown})", path.display());
        }
    }
    let store = Store::open(&url).with_context(|| format!("cannot open the database at {shown}"))?;
    let Some(lines) = store.read(tally_store::migrate::status).with_context(|| format!("cannot read {shown}"))? else {
        bail!(
            "the database at {shown} holds no Tally schema: every migration is pending; `tally migrate` applies them"
        );
    };
    let at = |at: &chrono::DateTime<chrono::Utc>| at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let mut current = true;
    let mut out = vec![format!("{:>7}  {:<28}  {}", "version", "name", "state")];
    for line in &lines {
        let state = match &line.state {
            MigrationState::Applied { at: when } => format!("applied {}", at(when)),
            MigrationState::Pending => "PENDING".to_owned(),
            MigrationState::Changed { at: when, .. } => {
                format!("CHANGED since it was applied {} (checksum differs)", at(when))
            }
            MigrationState::Unknown { at: when } => format!("UNKNOWN to this build, applied {}", at(when)),
        };
        current &= matches!(line.state, MigrationState::Applied { .. });
        out.push(format!("{:>7}  {:<28}  {state}", line.version, line.name));
    }
    Ok((out, current))
}

/// Opens a database that Tally has already made, for the administrative commands, without
/// creating or migrating anything. A SQLite file that does not exist, a database without
/// Tally's schema, or one whose schema is older than this build is refused with what was
/// looked at and what to run, so that a mistyped path never leaves a new empty database (and
/// an API key nobody's server reads) behind.
pub fn open_existing_store(database_url: &str) -> anyhow::Result<Arc<Store>> {
    let url = DatabaseUrl::parse(database_url)?;
    let shown = redact_database_url(database_url);
    if let DatabaseUrl::Sqlite(path) = &url {
        if !path.is_file() {
            let looked_at = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            bail!(
                "no Tally database at {} (database URL {shown}): start `tally serve` or run `tally migrate` \
                 to create one, or point --database, TALLY_DATABASE_URL or DATABASE_URL at the existing one",
                looked_at.display()
            );
        }
    }
    let store = Store::open(&url).with_context(|| format!("cannot open the database at {shown}"))?;
    match store.read(tally_store::migrate::pending).with_context(|| format!("cannot read the database at {shown}"))? {
        None => bail!(
            "the database at {shown} holds no Tally schema: start `tally serve` or run `tally migrate` to set it up, \
             or point --database, TALLY_DATABASE_URL or DATABASE_URL at the database Tally uses"
        ),
        Some(pending) if !pending.is_empty() => {
            let versions: Vec<String> = pending.iter().map(i64::to_string).collect();
            bail!(
                "the database at {shown} lacks migrations {} of this version of Tally: run `tally migrate` first",
                versions.join(", ")
            )
        }
        Some(_) => Ok(Arc::new(store)),
    }
}
