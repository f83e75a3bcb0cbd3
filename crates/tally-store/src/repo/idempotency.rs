//! Idempotency keys for requests that carry no client id of their own (the `Idempotency-Key`
//! header): per mode and scope (the kind of request), the first request's hash and the id of
//! what it made, written in the transaction that made it. A retry with the same key finds
//! the record and returns what was made; the same key with a different request is refused.

use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use tally_core::Mode;

/// The longest key accepted, in bytes.
pub const MAX_KEY_LENGTH: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub scope: String,
    pub key: String,
    pub customer_id: Option<String>,
    pub request_hash: String,
    /// What the first request made, such as a subscription id.
    pub resource_id: String,
    pub created_at: DateTime<Utc>,
}

pub fn get(conn: &mut dyn Conn, mode: Mode, scope: &str, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
    conn.query_optional(
        "SELECT scope, idempotency_key, customer_id, request_hash, resource_id, created_at FROM idempotency_keys
         WHERE mode = $1 AND scope = $2 AND idempotency_key = $3",
        params![mode.as_str(), scope, key],
    )?
    .map(|row| {
        Ok(IdempotencyRecord {
            scope: row.text(0)?,
            key: row.text(1)?,
            customer_id: row.opt_text(2)?,
            request_hash: row.text(3)?,
            resource_id: row.text(4)?,
            created_at: row.time(5)?,
        })
    })
    .transpose()
}

/// Records a key. A key already recorded (by a concurrent request) is a `StoreError::Conflict`.
pub fn insert(conn: &mut dyn Conn, mode: Mode, record: &IdempotencyRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO idempotency_keys (mode, scope, idempotency_key, customer_id, request_hash, resource_id, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        params![
            mode.as_str(),
            &record.scope,
            &record.key,
            record.customer_id.clone(),
            &record.request_hash,
            &record.resource_id,
            record.created_at
        ],
    )?;
    Ok(())
}
