//! The `tally` command: configuration and the commands behind the CLI. `main.rs` only parses
//! arguments and calls in here, so tests can drive the same code.

pub mod bench;
pub mod config;

use anyhow::Context;
use std::sync::Arc;
use tally_store::{DatabaseUrl, Store};

/// Opens the database and applies pending migrations. Must run outside an async runtime:
/// the PostgreSQL driver is synchronous.
pub fn open_store(database_url: &str) -> anyhow::Result<Arc<Store>> {
    let url = DatabaseUrl::parse(database_url)?;
    let store = Store::open(&url).with_context(|| format!("cannot open the database at {database_url}"))?;
    let applied = store.migrate().context("cannot apply migrations")?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied migrations");
    }
    Ok(Arc::new(store))
}
