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
pub mod ledger;
pub mod portal;
pub mod products;
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
