//! Connected accounts (Credyt for Platforms): the businesses a platform runs billing for.
//! This table only names them; their data lives under their own [`Mode`], so it is
//! partitioned by the same `mode` column that keeps test and live apart.

use super::{metadata_from_text, metadata_to_text, Filter, Metadata};
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use tally_core::Environment;

#[derive(Debug, Clone, PartialEq)]
pub struct ConnectedAccount {
    pub id: String,
    pub name: String,
    pub external_id: Option<String>,
    pub metadata: Metadata,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, external_id, metadata, created_at";

fn from_row(row: &crate::Row) -> Result<ConnectedAccount, StoreError> {
    Ok(ConnectedAccount {
        id: row.text(0)?,
        name: row.text(1)?,
        external_id: row.opt_text(2)?,
        metadata: metadata_from_text(&row.text(3)?)?,
        created_at: row.time(4)?,
    })
}

pub fn insert(conn: &mut dyn Conn, environment: Environment, account: &ConnectedAccount) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO connected_accounts (id, environment, name, external_id, metadata, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        params![
            &account.id,
            environment.as_str(),
            &account.name,
            account.external_id.clone(),
            metadata_to_text(&account.metadata),
            account.created_at
        ],
    )?;
    Ok(())
}

pub fn get(conn: &mut dyn Conn, environment: Environment, id: &str) -> Result<Option<ConnectedAccount>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM connected_accounts WHERE environment = $1 AND id = $2"),
        params![environment.as_str(), id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

pub fn find_by_external_id(
    conn: &mut dyn Conn,
    environment: Environment,
    external_id: &str,
) -> Result<Option<ConnectedAccount>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM connected_accounts WHERE environment = $1 AND external_id = $2"),
        params![environment.as_str(), external_id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// The order of `GET /accounts`: oldest first.
pub const LIST_KEYS: super::Keys =
    super::Keys { tag: "accounts", columns: &["created_at", "id"], kinds: "it", descending: false };

pub fn list(
    conn: &mut dyn Conn,
    environment: Environment,
    external_id: Option<&str>,
    window: &super::Window,
) -> Result<super::Listing<ConnectedAccount>, StoreError> {
    let mut query = Filter::new("environment = ?", environment.as_str());
    if let Some(external_id) = external_id {
        query.and("external_id = ?", external_id);
    }
    query.page(conn, "connected_accounts", COLUMNS, &LIST_KEYS, window, from_row)
}
