//! Reads for exports and copies: usage events and wallet transactions a page at a time, by
//! a cursor (keyset paging, so each page costs the same however far the export has gone and
//! an export's memory does not grow with the data), and row counts of the main tables.

use super::events::{event_from_row, EventWithCustomer, EVENT_COLUMNS};
use super::transactions::{self, Transaction};
use super::Filter;
use crate::conn::{Conn, Value};
use crate::StoreError;
use chrono::{DateTime, Utc};
use tally_core::Mode;

/// Which rows an export takes (all of the mode when every field is `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportFilter {
    pub customer_id: Option<String>,
    /// Inclusive lower bound: on an event's `occurred_at`, a transaction's `created_at`.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound, on the same instant.
    pub to: Option<DateTime<Utc>>,
}

/// Where the next page of events starts: after this event in (`created_at`, `id`) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCursor {
    pub created_at: DateTime<Utc>,
    pub id: String,
}

/// Where the next page of transactions starts: after this one in (`customer_id`,
/// `sequence`) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionCursor {
    pub customer_id: String,
    pub sequence: i64,
}

/// Adds `condition`, whose `?`s stand for `values` in order.
fn and_all(query: &mut Filter, condition: &str, values: Vec<Value>) {
    let mut numbered = String::with_capacity(condition.len() + 8);
    for (index, part) in condition.split('?').enumerate() {
        if index > 0 {
            numbered.push_str(&format!("${}", query.values.len() + index));
        }
        numbered.push_str(part);
    }
    query.values.extend(values);
    query.conditions.push(numbered);
}

fn event_filter(mode: Mode, filter: &ExportFilter) -> Filter {
    let mut query = Filter::new("e.mode = ?", mode.as_str());
    if let Some(customer_id) = &filter.customer_id {
        query.and("e.customer_id = ?", customer_id);
    }
    if let Some(from) = filter.from {
        query.and("e.occurred_at >= ?", from);
    }
    if let Some(to) = filter.to {
        query.and("e.occurred_at < ?", to);
    }
    query
}

const EVENTS_FROM: &str = "usage_events e JOIN customers c ON c.id = e.customer_id";

pub fn count_events(conn: &mut dyn Conn, mode: Mode, filter: &ExportFilter) -> Result<i64, StoreError> {
    let query = event_filter(mode, filter);
    conn.count(&format!("SELECT COUNT(*) FROM {EVENTS_FROM} WHERE {}", query.conditions.join(" AND ")), &query.values)
}

/// Up to `limit` events after `after`, in the order they were stored (`created_at`, then id),
/// each with its customer's external id.
pub fn events_page(
    conn: &mut dyn Conn,
    mode: Mode,
    filter: &ExportFilter,
    after: Option<&EventCursor>,
    limit: i64,
) -> Result<Vec<EventWithCustomer>, StoreError> {
    let mut query = event_filter(mode, filter);
    if let Some(cursor) = after {
        // Row-value comparison spelled out: both databases use the index on the first part.
        and_all(
            &mut query,
            "e.created_at >= ? AND (e.created_at > ? OR e.id > ?)",
            vec![cursor.created_at.into(), cursor.created_at.into(), cursor.id.as_str().into()],
        );
    }
    query.values.push(limit.into());
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM {EVENTS_FROM} WHERE {} ORDER BY e.created_at, e.id LIMIT ${}",
        query.conditions.join(" AND "),
        query.values.len()
    );
    conn.query(&sql, &query.values)?.iter().map(event_from_row).collect()
}

fn transaction_filter(mode: Mode, filter: &ExportFilter) -> Filter {
    let mut query = Filter::new("mode = ?", mode.as_str());
    if let Some(customer_id) = &filter.customer_id {
        query.and("customer_id = ?", customer_id);
    }
    if let Some(from) = filter.from {
        query.and("created_at >= ?", from);
    }
    if let Some(to) = filter.to {
        query.and("created_at < ?", to);
    }
    query
}

pub fn count_transactions(conn: &mut dyn Conn, mode: Mode, filter: &ExportFilter) -> Result<i64, StoreError> {
    let query = transaction_filter(mode, filter);
    conn.count(&format!("SELECT COUNT(*) FROM transactions WHERE {}", query.conditions.join(" AND ")), &query.values)
}

/// Up to `limit` transactions after `after`, customer by customer, each customer's in the
/// order they happened, with the cursor of the last one.
pub fn transactions_page(
    conn: &mut dyn Conn,
    mode: Mode,
    filter: &ExportFilter,
    after: Option<&TransactionCursor>,
    limit: i64,
) -> Result<Vec<(Transaction, TransactionCursor)>, StoreError> {
    let mut query = transaction_filter(mode, filter);
    if let Some(cursor) = after {
        and_all(
            &mut query,
            "customer_id >= ? AND (customer_id > ? OR sequence > ?)",
            vec![cursor.customer_id.as_str().into(), cursor.customer_id.as_str().into(), cursor.sequence.into()],
        );
    }
    query.values.push(limit.into());
    let sql = format!(
        "SELECT {}, sequence FROM transactions WHERE {} ORDER BY customer_id, sequence LIMIT ${}",
        transactions::COLUMNS,
        query.conditions.join(" AND "),
        query.values.len()
    );
    conn.query(&sql, &query.values)?
        .iter()
        .map(|row| {
            let transaction = transactions::from_row(row)?;
            let cursor = TransactionCursor { customer_id: transaction.customer_id.clone(), sequence: row.int(12)? };
            Ok((transaction, cursor))
        })
        .collect()
}

/// The tables whose rows [`row_counts`] counts: what a platform made, and the books.
pub const COUNTED_TABLES: [&str; 10] = [
    "api_keys",
    "assets",
    "products",
    "customers",
    "subscriptions",
    "top_ups",
    "usage_events",
    "transactions",
    "ledger_entries",
    "ledger_postings",
];

/// The number of rows of each of [`COUNTED_TABLES`], of every mode.
pub fn row_counts(conn: &mut dyn Conn) -> Result<Vec<(&'static str, i64)>, StoreError> {
    COUNTED_TABLES
        .iter()
        .map(|table| Ok((*table, conn.count(&format!("SELECT COUNT(*) FROM {table}"), &[])?)))
        .collect()
}
