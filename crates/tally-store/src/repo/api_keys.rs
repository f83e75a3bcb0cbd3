//! API keys. Only a SHA-256 hash of each key is stored; the key itself is shown once.

use crate::conn::Conn;
use crate::{ids, params, StoreError};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub mode: Mode,
    pub name: Option<String>,
    /// The first characters of the key, enough to recognise it in a list.
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Creates a key and returns it with the one copy of its secret text.
pub fn create(
    conn: &mut dyn Conn,
    mode: Mode,
    name: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(ApiKey, String), StoreError> {
    let secret = format!("key_{}_{}", mode.as_str(), ids::new_secret(24));
    let record = ApiKey {
        id: ids::new_id("ak"),
        mode,
        name: name.map(str::to_owned),
        key_prefix: secret.chars().take(16).collect(),
        created_at: now,
        revoked_at: None,
    };
    conn.execute(
        "INSERT INTO api_keys (id, mode, name, key_hash, key_prefix, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        params![&record.id, mode.as_str(), record.name.clone(), hash_key(&secret), &record.key_prefix, now],
    )?;
    Ok((record, secret))
}

const COLUMNS: &str = "id, mode, name, key_prefix, created_at, revoked_at";

fn from_row(row: &crate::Row) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: row.text(0)?,
        mode: Mode::parse(&row.text(1)?).ok_or_else(|| StoreError::Corrupt("api key mode".into()))?,
        name: row.opt_text(2)?,
        key_prefix: row.text(3)?,
        created_at: row.time(4)?,
        revoked_at: row.opt_time(5)?,
    })
}

pub fn list(conn: &mut dyn Conn) -> Result<Vec<ApiKey>, StoreError> {
    conn.query(&format!("SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id"), &[])?.iter().map(from_row).collect()
}

/// Revokes a key; returns false when no such key exists. Revoking twice keeps the first time.
pub fn revoke(conn: &mut dyn Conn, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let exists = conn.query_optional("SELECT id FROM api_keys WHERE id = $1", params![id])?.is_some();
    conn.execute("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", params![id, now])?;
    REVOCATIONS.fetch_add(1, Ordering::SeqCst);
    Ok(exists)
}

/// Revocations made by this process. Caches of accepted keys (the HTTP layer keeps one)
/// compare it before and after they trust an entry, so that a key revoked here stops working
/// at once instead of when the cached entry expires.
static REVOCATIONS: AtomicU64 = AtomicU64::new(0);

/// How many times this process has revoked a key (see [`revoke`]).
pub fn revocations() -> u64 {
    REVOCATIONS.load(Ordering::SeqCst)
}

/// The mode of a live (unrevoked) key, or `None`.
pub fn authenticate(conn: &mut dyn Conn, key: &str) -> Result<Option<(String, Mode)>, StoreError> {
    let row = conn.query_optional(
        "SELECT id, mode FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        params![hash_key(key)],
    )?;
    row.map(|row| {
        let mode = Mode::parse(&row.text(1)?).ok_or_else(|| StoreError::Corrupt("api key mode".into()))?;
        Ok((row.text(0)?, mode))
    })
    .transpose()
}
