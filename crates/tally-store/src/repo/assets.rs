//! Custom assets and their exchange-rate schedules.

use super::{Filter, Keys, Listing, Window};
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::rate::{ExchangeRate, ScheduledRate};
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct Asset {
    pub code: String,
    pub name: String,
    pub precision: u32,
    pub label: String,
    pub symbol: Option<String>,
    /// What the billing portal's top-up form offers (a Tally extension): JSON kept as the
    /// HTTP layer wrote it, or `None`.
    pub top_up: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateRow {
    pub source: String,
    pub scheduled: ScheduledRate,
}

pub fn insert(conn: &mut dyn Conn, mode: Mode, asset: &Asset) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO assets (mode, code, name, precision, label, symbol, created_at, top_up) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        params![mode.as_str(), &asset.code, &asset.name, asset.precision as i64, &asset.label, asset.symbol.clone(), asset.created_at, asset.top_up.clone()],
    )?;
    Ok(())
}

const COLUMNS: &str = "code, name, precision, label, symbol, created_at, top_up";

fn from_row(row: &crate::Row) -> Result<Asset, StoreError> {
    Ok(Asset {
        code: row.text(0)?,
        name: row.text(1)?,
        precision: row.int(2)? as u32,
        label: row.text(3)?,
        symbol: row.opt_text(4)?,
        created_at: row.time(5)?,
        top_up: row.opt_text(6)?,
    })
}

/// Replaces an asset's top-up settings; false when there is no such asset.
pub fn set_top_up(conn: &mut dyn Conn, mode: Mode, code: &str, top_up: Option<&str>) -> Result<bool, StoreError> {
    let changed = conn.execute(
        "UPDATE assets SET top_up = $3 WHERE mode = $1 AND code = $2",
        params![mode.as_str(), code, top_up.map(str::to_owned)],
    )?;
    Ok(changed > 0)
}

pub fn get(conn: &mut dyn Conn, mode: Mode, code: &str) -> Result<Option<Asset>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM assets WHERE mode = $1 AND code = $2"),
        params![mode.as_str(), code],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// The order of `GET /assets`: by code.
pub const LIST_KEYS: Keys = Keys { tag: "assets", columns: &["code"], kinds: "t", descending: false };

pub fn list(conn: &mut dyn Conn, mode: Mode, window: &Window) -> Result<Listing<Asset>, StoreError> {
    Filter::new("mode = ?", mode.as_str()).page(conn, "assets", COLUMNS, &LIST_KEYS, window, from_row)
}

/// Writes one rate of `asset_code` bought with `source` (its `sequence` is assigned here).
pub fn insert_rate(
    conn: &mut dyn Conn,
    mode: Mode,
    asset_code: &str,
    source: &str,
    entry: &ScheduledRate,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (kind, value) = match entry.rate {
        ExchangeRate::Rate(value) => ("rate", value),
        ExchangeRate::Inverse(value) => ("inverse_rate", value),
    };
    conn.execute(
        "INSERT INTO asset_rates (mode, asset_code, source, valid_from, valid_to, rate_kind, rate_value, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        params![mode.as_str(), asset_code, source, entry.valid_from, entry.valid_to, kind, value, now],
    )?;
    Ok(())
}

/// Every rate of an asset, every source, in writing order.
pub fn rates(conn: &mut dyn Conn, mode: Mode, asset_code: &str) -> Result<Vec<RateRow>, StoreError> {
    conn.query(
        "SELECT source, valid_from, valid_to, rate_kind, rate_value, sequence FROM asset_rates
         WHERE mode = $1 AND asset_code = $2 ORDER BY sequence",
        params![mode.as_str(), asset_code],
    )?
    .iter()
    .map(|row| {
        let value: Decimal = row.decimal(4)?;
        let rate = match row.text(3)?.as_str() {
            "rate" => ExchangeRate::Rate(value),
            "inverse_rate" => ExchangeRate::Inverse(value),
            other => return Err(StoreError::Corrupt(format!("rate kind {other}"))),
        };
        Ok(RateRow {
            source: row.text(0)?,
            scheduled: ScheduledRate {
                valid_from: row.time(1)?,
                valid_to: row.opt_time(2)?,
                rate,
                sequence: row.int(5)?,
            },
        })
    })
    .collect()
}
