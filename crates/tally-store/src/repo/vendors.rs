//! Vendors: who a platform pays for the work behind usage (model providers, GPU clouds).

use super::Filter;
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct Vendor {
    pub id: String,
    pub name: String,
    pub external_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub fn insert(conn: &mut dyn Conn, mode: Mode, vendor: &Vendor) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO vendors (id, mode, name, external_id, created_at) VALUES ($1, $2, $3, $4, $5)",
        params![&vendor.id, mode.as_str(), &vendor.name, vendor.external_id.clone(), vendor.created_at],
    )?;
    Ok(())
}

const COLUMNS: &str = "id, name, external_id, created_at";

fn from_row(row: &crate::Row) -> Result<Vendor, StoreError> {
    Ok(Vendor { id: row.text(0)?, name: row.text(1)?, external_id: row.opt_text(2)?, created_at: row.time(3)? })
}

pub fn get(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Option<Vendor>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM vendors WHERE mode = $1 AND id = $2"),
        params![mode.as_str(), id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

pub fn find_by_external_id(conn: &mut dyn Conn, mode: Mode, external_id: &str) -> Result<Option<Vendor>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM vendors WHERE mode = $1 AND external_id = $2"),
        params![mode.as_str(), external_id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// The order of `GET /vendors`: oldest first.
pub const LIST_KEYS: super::Keys =
    super::Keys { tag: "vendors", columns: &["created_at", "id"], kinds: "it", descending: false };

pub fn list(
    conn: &mut dyn Conn,
    mode: Mode,
    external_id: Option<&str>,
    window: &super::Window,
) -> Result<super::Listing<Vendor>, StoreError> {
    let mut query = Filter::new("mode = ?", mode.as_str());
    if let Some(external_id) = external_id {
        query.and("external_id = ?", external_id);
    }
    query.page(conn, "vendors", COLUMNS, &LIST_KEYS, window, from_row)
}

/// A vendor's costs in a period, as (category, amount, currency) rows.
pub fn costs(
    conn: &mut dyn Conn,
    vendor_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(Option<String>, Decimal, String)>, StoreError> {
    conn.query(
        "SELECT category, amount, currency FROM event_costs WHERE vendor_id = $1 AND occurred_at >= $2 AND occurred_at < $3",
        params![vendor_id, from, to],
    )?
    .iter()
    .map(|row| Ok((row.opt_text(0)?, row.decimal(1)?, row.text(2)?)))
    .collect()
}
