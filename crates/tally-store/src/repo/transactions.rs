//! Wallet transactions: the customer-facing record of each adjustment, charge and expiry,
//! keyed by the client's transaction id, which is also the idempotency key.

use super::{metadata_from_text, metadata_to_text, Filter, Keys, Listing, Metadata, Window};
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub customer_id: String,
    pub id: String,
    /// `adjustment`, `fee` or `expiry`.
    pub kind: String,
    pub account_name: String,
    pub asset: String,
    /// Signed from the wallet's side: credits positive, debits negative.
    pub amount: Decimal,
    pub description: Option<String>,
    pub metadata: Metadata,
    /// A hash of the request that made it, to tell a replay from a reused id.
    pub request_hash: String,
    /// Kind-specific details (JSON text), such as a charge's units and unit price.
    pub detail: String,
    pub created_at: DateTime<Utc>,
    pub executed_at: Option<DateTime<Utc>>,
}

pub fn insert(conn: &mut dyn Conn, mode: tally_core::Mode, transaction: &Transaction) -> Result<(), StoreError> {
    let sequence = next_sequence(conn, &transaction.customer_id)?;
    insert_numbered(conn, mode, transaction, sequence)
}

/// The number the customer's next transaction takes. Callers hold the customer's lock, so
/// it cannot be taken twice; a caller inserting several in a row may count on from it, as
/// long as nothing else inserts one of the customer's transactions in between.
pub fn next_sequence(conn: &mut dyn Conn, customer_id: &str) -> Result<i64, StoreError> {
    conn.count("SELECT COALESCE(MAX(sequence), 0) + 1 FROM transactions WHERE customer_id = $1", params![customer_id])
}

/// Inserts `transaction` as the customer's transaction number `sequence`.
pub fn insert_numbered(
    conn: &mut dyn Conn,
    mode: tally_core::Mode,
    transaction: &Transaction,
    sequence: i64,
) -> Result<(), StoreError> {
    insert_many_numbered(conn, mode, &[(transaction, sequence)])
}

/// Inserts transactions, each with its number, with multi-row `INSERT`s.
pub fn insert_many_numbered(
    conn: &mut dyn Conn,
    mode: tally_core::Mode,
    numbered: &[(&Transaction, i64)],
) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(numbered.len() * 14);
    for (transaction, sequence) in numbered {
        values.extend_from_slice(params![
            mode.as_str(),
            &transaction.customer_id,
            &transaction.id,
            *sequence,
            &transaction.kind,
            &transaction.account_name,
            &transaction.asset,
            transaction.amount,
            transaction.description.clone(),
            metadata_to_text(&transaction.metadata),
            &transaction.request_hash,
            &transaction.detail,
            transaction.created_at,
            transaction.executed_at
        ]);
    }
    super::insert_rows(
        conn,
        "INSERT INTO transactions (mode, customer_id, id, sequence, kind, account_name, asset, amount, description, metadata,
                                   request_hash, detail, created_at, executed_at)",
        14,
        &values,
        "",
    )?;
    // Every fee transaction passes here: those that did not come from a usage event (whose
    // fees a batch adds to the rollups itself, once per key) are added to the rollups now.
    let mut rollups = super::rollups::Rollups::default();
    let mut any = false;
    for (transaction, _) in numbered {
        if super::rollups::is_other_fee(&transaction.kind, &transaction.id) {
            let (product_id, price_id) = super::rollups::product_and_price(&transaction.detail);
            let (customer_id, asset) = (&transaction.customer_id, &transaction.asset);
            let (id, at) = (&transaction.id, transaction.created_at);
            rollups.other_fee(mode, customer_id, id, at, asset, &product_id, &price_id, -transaction.amount);
            any = true;
        }
    }
    if any {
        rollups.write(conn)?;
    }
    Ok(())
}

pub(crate) const COLUMNS: &str =
    "customer_id, id, kind, account_name, asset, amount, description, metadata, request_hash, detail, created_at, executed_at";

pub(crate) fn from_row(row: &crate::Row) -> Result<Transaction, StoreError> {
    Ok(Transaction {
        customer_id: row.text(0)?,
        id: row.text(1)?,
        kind: row.text(2)?,
        account_name: row.text(3)?,
        asset: row.text(4)?,
        amount: row.decimal(5)?,
        description: row.opt_text(6)?,
        metadata: metadata_from_text(&row.text(7)?)?,
        request_hash: row.text(8)?,
        detail: row.text(9)?,
        created_at: row.time(10)?,
        executed_at: row.opt_time(11)?,
    })
}

pub fn get(conn: &mut dyn Conn, customer_id: &str, id: &str) -> Result<Option<Transaction>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM transactions WHERE customer_id = $1 AND id = $2"),
        params![customer_id, id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// The order of an account's transactions: newest first.
pub const LIST_KEYS: Keys = Keys { tag: "transactions", columns: &["sequence"], kinds: "i", descending: true };

/// An account's transactions, newest first.
pub fn list_for_account(
    conn: &mut dyn Conn,
    customer_id: &str,
    account_name: &str,
    asset: &str,
    window: &Window,
) -> Result<Listing<Transaction>, StoreError> {
    let mut query = Filter::new("customer_id = ?", customer_id);
    query.and("account_name = ?", account_name);
    query.and("asset = ?", asset);
    query.page(conn, "transactions", COLUMNS, &LIST_KEYS, window, from_row)
}
