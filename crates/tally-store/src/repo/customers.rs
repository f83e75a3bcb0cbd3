//! Customers.

use super::{metadata_from_text, metadata_to_text, Filter, Keys, Listing, Metadata, Window};
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub id: String,
    pub name: String,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub metadata: Metadata,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerFilter {
    pub customer_id: Option<String>,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    /// `Some(true)`: only customers with an active subscription; `Some(false)`: only those
    /// without one.
    pub active: Option<bool>,
}

pub fn insert(conn: &mut dyn Conn, mode: Mode, customer: &Customer) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO customers (id, mode, name, external_id, email, metadata, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        params![
            &customer.id,
            mode.as_str(),
            &customer.name,
            customer.external_id.clone(),
            customer.email.clone(),
            metadata_to_text(&customer.metadata),
            customer.created_at
        ],
    )?;
    Ok(())
}

const COLUMNS: &str = "id, name, external_id, email, metadata, created_at";

fn from_row(row: &crate::Row) -> Result<Customer, StoreError> {
    Ok(Customer {
        id: row.text(0)?,
        name: row.text(1)?,
        external_id: row.opt_text(2)?,
        email: row.opt_text(3)?,
        metadata: metadata_from_text(&row.text(4)?)?,
        created_at: row.time(5)?,
    })
}

pub fn get(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Option<Customer>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM customers WHERE mode = $1 AND id = $2"),
        params![mode.as_str(), id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// Locks the customer row for the rest of the transaction (PostgreSQL), so that concurrent
/// changes to one customer's wallet run one after the other.
pub fn get_for_update(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Option<Customer>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM customers WHERE mode = $1 AND id = $2{}", conn.for_update());
    conn.query_optional(&sql, params![mode.as_str(), id])?.as_ref().map(from_row).transpose()
}

/// Locks the customers among `ids` (sorted, without repeats) that exist in `mode`, in id
/// order, and returns their ids. Every caller that locks several customers locks them in
/// this one order, so two such transactions wait for each other instead of deadlocking.
/// In chunks, padded as [`super::query_for_ids`] pads them.
pub fn lock_many(conn: &mut dyn Conn, mode: Mode, ids: &[&str]) -> Result<Vec<String>, StoreError> {
    debug_assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "lock_many takes sorted, distinct ids");
    let mut locked = Vec::with_capacity(ids.len());
    let for_update = conn.for_update();
    super::query_for_ids(
        conn,
        ids,
        &[mode.as_str().into()],
        |list| format!("SELECT id FROM customers WHERE mode = $1 AND id IN ({list}) ORDER BY id{for_update}"),
        |row| {
            locked.push(row.text(0)?);
            Ok(())
        },
    )?;
    Ok(locked)
}

/// What debiting a customer needs beside its accounts: the number its next transaction
/// takes, and whether it has any auto top-up (set or not), whose check a debit may flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebitContext {
    pub next_sequence: i64,
    pub has_auto_top_ups: bool,
}

/// The [`DebitContext`] of each of `ids` (sorted, distinct), in one statement, for an
/// ingestion round. Read after the customers are locked: their transactions and auto top-ups
/// are written under that lock, so what is read holds until the transaction ends. (Not in the
/// statement that locks them: in PostgreSQL that statement's subqueries see the rows as they
/// were when it began, before the lock it may have waited for.)
pub fn debit_contexts(conn: &mut dyn Conn, ids: &[&str]) -> Result<HashMap<String, DebitContext>, StoreError> {
    let mut contexts = HashMap::with_capacity(ids.len());
    super::query_for_ids(
        conn,
        ids,
        &[],
        |list| {
            format!(
                "SELECT c.id,
                        (SELECT COALESCE(MAX(t.sequence), 0) + 1 FROM transactions t WHERE t.customer_id = c.id),
                        CASE WHEN EXISTS (SELECT 1 FROM auto_top_ups a WHERE a.customer_id = c.id) THEN 1 ELSE 0 END
                 FROM customers c WHERE c.id IN ({list})"
            )
        },
        |row| {
            let context = DebitContext { next_sequence: row.int(1)?, has_auto_top_ups: row.int(2)? != 0 };
            contexts.insert(row.text(0)?, context);
            Ok(())
        },
    )?;
    Ok(contexts)
}

pub fn find_by_external_id(conn: &mut dyn Conn, mode: Mode, external_id: &str) -> Result<Option<Customer>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM customers WHERE mode = $1 AND external_id = $2"),
        params![mode.as_str(), external_id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// The order of `GET /customers`: oldest first.
pub const LIST_KEYS: Keys = Keys { tag: "customers", columns: &["created_at", "id"], kinds: "it", descending: false };

/// Filters match exactly, except `email` (case-insensitive) and `name` (a case-insensitive
/// prefix). Both are served by indexes on `lower(email)` and `lower(name)`.
pub fn list(
    conn: &mut dyn Conn,
    mode: Mode,
    filter: &CustomerFilter,
    window: &Window,
) -> Result<Listing<Customer>, StoreError> {
    let mut query = Filter::new("mode = ?", mode.as_str());
    if let Some(id) = &filter.customer_id {
        query.and("id = ?", id);
    }
    if let Some(external_id) = &filter.external_id {
        query.and("external_id = ?", external_id);
    }
    if let Some(email) = &filter.email {
        query.and("lower(email) = lower(?)", email);
    }
    if let Some(name) = &filter.name {
        // A range on `lower(name)` (byte order: the prefix, up to the prefix followed by the
        // greatest character) that the index serves; LIKE then keeps exactly the prefix's rows.
        let prefix = name.to_lowercase();
        let pattern = format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        query.and("lower(name) >= ?", prefix.clone());
        query.and("lower(name) < ?", format!("{prefix}{}", char::MAX));
        query.and("lower(name) LIKE ? ESCAPE '\\'", pattern);
    }
    if let Some(active) = filter.active {
        // EXISTS stops at the first active subscription where a COUNT would read them all.
        let negation = if active { "" } else { "NOT " };
        query.and_sql(&format!(
            "{negation}EXISTS (SELECT 1 FROM subscriptions s WHERE s.customer_id = customers.id AND s.status = 'active')"
        ));
    }
    query.page(conn, "customers", COLUMNS, &LIST_KEYS, window, from_row)
}

pub fn update(conn: &mut dyn Conn, mode: Mode, customer: &Customer, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE customers SET name = $3, external_id = $4, email = $5, metadata = $6, updated_at = $7 WHERE mode = $1 AND id = $2",
        params![
            mode.as_str(),
            &customer.id,
            &customer.name,
            customer.external_id.clone(),
            customer.email.clone(),
            metadata_to_text(&customer.metadata),
            now
        ],
    )?;
    Ok(())
}
