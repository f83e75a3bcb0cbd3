//! Every line of SQL Tally runs. Functions take an open transaction (`&mut dyn Conn`) and
//! plain records; they do no business logic and no JSON beyond (de)serialising metadata.

pub mod api_keys;
pub mod assets;
pub mod auto_top_ups;
pub mod customers;
pub mod events;
pub mod ledger;
pub mod portal;
pub mod products;
pub mod subscriptions;
pub mod topups;
pub mod transactions;
pub mod vendors;
pub mod wallets;
pub mod webhooks;

use crate::conn::Conn;
use crate::{params, StoreError};
use std::collections::BTreeMap;

/// One page of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: i64,
    pub limit: i64,
}

pub type Metadata = BTreeMap<String, String>;

pub fn metadata_to_text(metadata: &Metadata) -> String {
    serde_json::to_string(metadata).unwrap_or_else(|_| "{}".to_owned())
}

pub fn metadata_from_text(text: &str) -> Result<Metadata, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt(format!("metadata: {error}")))
}

/// The identifier of this Tally installation, made at the first migration.
pub fn platform_account_id(conn: &mut dyn Conn) -> Result<String, StoreError> {
    conn.query_one("SELECT value FROM tally_meta WHERE key = $1", params!["platform_account_id"])?.text(0)
}
