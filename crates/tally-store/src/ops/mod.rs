//! Operations: one function per thing a platform can do. Each runs inside a transaction the
//! caller opened, loads what it needs (locking what it will change), asks the pure core what
//! happens, and writes the new state, its ledger entry and its idempotency record together.
//! Inputs are already-parsed domain values; every refusal is an [`OpError`] the HTTP edge maps
//! to a status code.

pub mod assets;
pub mod auto_top_up;
pub mod connected_accounts;
pub mod customers;
pub mod events;
pub mod holds;
pub mod ledger;
pub mod portal;
pub mod products;
pub mod rebill;
pub mod revenue;
pub mod spend;
pub mod stats;
pub mod subscriptions;
pub mod topups;
pub mod vendors;
pub mod wallet;
pub mod webhooks;

use crate::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The JSON path of the offending field, such as `rates[0].source`.
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The named resource does not exist (in this mode).
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with what exists: a duplicate code, a reused transaction id.
    #[error("{0}")]
    Conflict(String),
    /// Some fields hold values Tally cannot accept.
    #[error("the request has invalid fields")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OpError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> OpError {
        OpError::Invalid(vec![FieldError { field: field.into(), message: message.into() }])
    }
}

/// A stable hash of a request's meaningful content, to tell an idempotent replay from a
/// different request that reuses the same id.
pub fn request_hash(canonical: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// What an earlier request with Idempotency-Key `key` (in `scope`) made: its id when the key
/// was used before for the same request (`request_hash`), a 409 when it was used for another,
/// `None` for a key not seen yet. `what` names the resource in the message.
pub(crate) fn replayed_resource(
    conn: &mut dyn crate::conn::Conn,
    mode: tally_core::Mode,
    scope: &str,
    key: &str,
    request_hash: &str,
    what: &str,
) -> Result<Option<String>, OpError> {
    let Some(record) = crate::repo::idempotency::get(conn, mode, scope, key)? else {
        return Ok(None);
    };
    if record.request_hash != request_hash {
        return Err(OpError::Conflict(format!(
            "the Idempotency-Key {key:?} was already used with a different request; use a new key for a new {what}"
        )));
    }
    Ok(Some(record.resource_id))
}

/// The error when an idempotency record names a resource that is gone: Tally never deletes
/// what such a record names, so the store is not as Tally wrote it.
pub(crate) fn vanished_resource(key: &str, what: &str, id: &str) -> crate::StoreError {
    crate::StoreError::Corrupt(format!("idempotency key {key:?} names {what} {id} that does not exist"))
}
