//! Rollups: per-hour totals of fees and costs, kept by the write path in the transaction of
//! the fees and costs themselves, so that stats and the portal add up hours instead of reading
//! every fee (see `migrate_rollups.sql` for the tables).
//!
//! Amounts are exact. A total is stored as whole units rounded down (`amount_units`) and a
//! fraction in two parts of 12 decimal places each: `amount_pico` (units of 10^-12) and
//! `amount_yocto` (units of 10^-24), each from 0 to 10^12 − 1. SQL adds the three as integers
//! and carries, so no amount is ever added as text or as a float, and a writer adds to a row
//! without reading it. Prices and volumes have at most 12 decimal places, so a fee (a volume
//! times a rate) has at most 24; costs have at most 12. Amounts stay below 10^15 (`money`
//! limits), so every part fits a BIGINT with room to spare, and a `SUM` of a part over fewer
//! than 9 million rows does too.
//!
//! Writers gather a batch's amounts per key in [`Rollups`], each a [`Total`] kept in the same
//! parts (a sum of `Decimal`s would round past its 28 or 29 significant digits), and write each
//! key once, in key order (so that two writers on PostgreSQL lock shared rows in the same order
//! and never deadlock): a batch of 100 events of one customer in one hour adds a statement per
//! (asset, price), not per event.

use crate::conn::{Conn, Value};
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::ops::Range;
use tally_core::Mode;

/// Microseconds in a UTC day: instants divided by this are days since the Unix epoch.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Microseconds in an hour: a customer's fees are totalled per hour.
pub const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// How many rows each platform-wide total is spread over: as many as a server's PostgreSQL
/// connections by default (`TALLY_POSTGRES_POOL_SIZE`), see [`shard_for`].
pub const SHARDS: i64 = 16;

/// 10^12: each fraction part counts this many of the next smaller unit in one of its own.
const PART: i128 = 1_000_000_000_000;

/// The `source` of usage-event fees in `fee_rollups`.
pub const USAGE: &str = "usage";
/// The `source` of subscription fees (transactions `tally_subscription_…`).
pub const PLAN: &str = "plan";
/// The `source` of every other fee transaction (charges).
pub const OTHER: &str = "other";

/// The `source` a fee transaction that did not come from a usage event is totalled under.
pub fn source_of(transaction_id: &str) -> &'static str {
    if transaction_id.starts_with("tally_subscription_") {
        PLAN
    } else {
        OTHER
    }
}

/// The period of `size` microseconds (a day, an hour) `at` falls in, counted since the Unix
/// epoch.
pub fn period_of(at: DateTime<Utc>, size: i64) -> i64 {
    at.timestamp_micros().div_euclid(size)
}

/// The instant period `period` of `size` microseconds starts.
pub fn period_start(period: i64, size: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(period.saturating_mul(size)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The UTC day `at` falls on, in days since the Unix epoch.
pub fn day_of(at: DateTime<Utc>) -> i64 {
    period_of(at, MICROS_PER_DAY)
}

/// The hour `at` falls in, in hours since the Unix epoch.
pub fn hour_of(at: DateTime<Utc>) -> i64 {
    period_of(at, MICROS_PER_HOUR)
}

/// The row of a platform-wide total a transaction on `conn` adds to. Every transaction that
/// bills adds to the total of its hour, and holds that row's lock until it commits: were the
/// row chosen by customer, as it was first, concurrent transactions of different customers
/// would queue for it (on PostgreSQL, 2 ms per request at 32 connections); chosen by
/// connection, the connections of one server never share one. Any row adds up the same.
pub fn shard_for(conn: &dyn Conn) -> i64 {
    (conn.lane() % SHARDS as u64) as i64
}

/// The amount of (whole units, 10^-12 units, 10^-24 units); the parts may be any size (sums),
/// and carry. Exact while the total fits `Decimal`'s 28 significant digits, as every sum of
/// amounts in Tally must.
pub fn from_parts(units: i64, pico: i64, yocto: i64) -> Result<Decimal, StoreError> {
    let out_of_range =
        || StoreError::Corrupt(format!("rollup total {units} + {pico}e-12 + {yocto}e-24 is out of range"));
    let (yocto, carry) = (i128::from(yocto).rem_euclid(PART), i128::from(yocto).div_euclid(PART));
    let pico = i128::from(pico) + carry;
    let (pico, carry) = (pico.rem_euclid(PART), pico.div_euclid(PART));
    let units = i128::from(units) + carry;
    let fraction = Decimal::try_from_i128_with_scale(pico * PART + yocto, 24).map_err(|_| out_of_range())?;
    let whole = Decimal::try_from_i128_with_scale(units, 0).map_err(|_| out_of_range())?;
    whole.checked_add(fraction).map(|amount| amount.normalize()).ok_or_else(out_of_range)
}

/// 10^24: a whole unit in units of 10^-24.
const YOCTO_PER_UNIT: i128 = PART * PART;

/// A total of amounts and how many rows it adds up, added exactly as the stored parts are:
/// whole units and a fraction in units of 10^-24. Added as a `Decimal` (a 96-bit mantissa), a
/// batch's 100,000 + 10^-24 would round to 100,000 and its rollup would lose the 10^-24 that
/// its fees hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Total {
    units: i128,
    /// The fraction, in units of 10^-24, from 0 to 10^24 − 1.
    yocto: i128,
    pub count: i64,
    /// An amount of more than 24 decimal places was added: no part can hold it.
    too_precise: bool,
}

impl Total {
    /// `rows` rows of `amount` each (`rows` counts rows of one table: far below the
    /// 1.7 × 10^14 at which a fraction times it would pass an `i128`). An amount is split into
    /// parts once, however many totals it is added to.
    fn rows(amount: Decimal, rows: i64) -> Total {
        let mut total = Total { count: rows, ..Total::default() };
        let amount = amount.normalize();
        match 24_u32.checked_sub(amount.scale()) {
            None => total.too_precise = true,
            Some(shift) => {
                let one = 10_i128.pow(amount.scale());
                let (whole, fraction) = (amount.mantissa().div_euclid(one), amount.mantissa().rem_euclid(one));
                let rows = i128::from(rows);
                total.add_parts(whole * rows, fraction * 10_i128.pow(shift) * rows, 0);
            }
        }
        total
    }

    /// One row of `amount`.
    fn row(amount: Decimal) -> Total {
        Total::rows(amount, 1)
    }

    /// Adds `rows` rows of `amount` each.
    fn add_each(&mut self, amount: Decimal, rows: i64) {
        self.absorb(&Total::rows(amount, rows));
    }

    /// Adds whole units and 10^-24 units of any size (a stored row's parts, or sums), carrying.
    fn add_parts(&mut self, units: i128, yocto: i128, count: i64) {
        let yocto = self.yocto + yocto;
        self.units += units + yocto.div_euclid(YOCTO_PER_UNIT);
        self.yocto = yocto.rem_euclid(YOCTO_PER_UNIT);
        self.count += count;
    }

    /// Adds another total.
    fn absorb(&mut self, other: &Total) {
        self.too_precise |= other.too_precise;
        self.add_parts(other.units, other.yocto, other.count);
    }

    /// A stored row's total: its three parts at `index` and its count.
    fn stored(row: &crate::Row, index: usize, count: i64) -> Result<Total, StoreError> {
        let mut total = Total::default();
        let (pico, yocto) = (i128::from(row.int(index + 1)?), i128::from(row.int(index + 2)?));
        total.add_parts(i128::from(row.int(index)?), pico * PART + yocto, count);
        Ok(total)
    }

    /// The total as (whole units rounded down, 10^-12 units, 10^-24 units), as stored.
    fn parts(&self) -> Result<(i64, i64, i64), StoreError> {
        if self.too_precise {
            return Err(StoreError::Corrupt("an amount has more than 24 decimal places".into()));
        }
        let units = i64::try_from(self.units)
            .map_err(|_| StoreError::Corrupt(format!("rollup total of {} units is too large", self.units)))?;
        Ok((units, (self.yocto / PART) as i64, (self.yocto % PART) as i64))
    }

    /// The amount, to show: exact while it fits a `Decimal`'s 28 significant digits.
    pub fn amount(&self) -> String {
        match self.parts() {
            Ok((units, pico, yocto)) => match from_parts(units, pico, yocto) {
                Ok(amount) => amount.to_string(),
                Err(_) => format!("{units} + {pico}e-12 + {yocto}e-24"),
            },
            Err(error) => error.to_string(),
        }
    }
}

/// (customer, mode, hour, source, asset, product, price).
pub type FeeKey = (String, String, i64, String, String, String, String);
/// (mode, hour, asset).
pub type ModeFeeKey = (String, i64, String);
/// (customer, mode, hour, currency).
pub type CostKey = (String, String, i64, String);
/// (vendor, hour, category, currency), with the vendor's mode.
pub type VendorCostKey = (String, i64, String, String);

/// What a batch adds to the rollups, gathered per key before anything is written.
#[derive(Debug, Default)]
pub struct Rollups {
    fees: BTreeMap<FeeKey, Total>,
    /// Platform-wide: which row (shard) of its total is chosen when written ([`shard_for`]).
    fees_by_mode: BTreeMap<ModeFeeKey, Total>,
    costs: BTreeMap<CostKey, Total>,
    costs_by_vendor: BTreeMap<VendorCostKey, (String, Total)>,
}

impl Rollups {
    pub fn is_empty(&self) -> bool {
        self.fees.is_empty() && self.fees_by_mode.is_empty() && self.costs.is_empty() && self.costs_by_vendor.is_empty()
    }

    /// A usage event's fee (zero fees count too), dated by when its event occurred.
    #[allow(clippy::too_many_arguments)]
    pub fn usage_fee(
        &mut self,
        mode: Mode,
        customer_id: &str,
        occurred_at: DateTime<Utc>,
        asset: &str,
        product_id: &str,
        price_id: &str,
        amount: Decimal,
    ) {
        let hour = hour_of(occurred_at);
        let key = (
            customer_id.to_owned(),
            mode.as_str().to_owned(),
            hour,
            USAGE.to_owned(),
            asset.to_owned(),
            product_id.to_owned(),
            price_id.to_owned(),
        );
        let row = Total::row(amount);
        self.fees.entry(key).or_default().absorb(&row);
        let by_mode = (mode.as_str().to_owned(), hour, asset.to_owned());
        self.fees_by_mode.entry(by_mode).or_default().absorb(&row);
    }

    /// Another fee transaction: what it took from the wallet (`spent`, positive for a fee),
    /// dated by when it was made.
    #[allow(clippy::too_many_arguments)]
    pub fn other_fee(
        &mut self,
        mode: Mode,
        customer_id: &str,
        transaction_id: &str,
        created_at: DateTime<Utc>,
        asset: &str,
        product_id: &str,
        price_id: &str,
        spent: Decimal,
    ) {
        let key = (
            customer_id.to_owned(),
            mode.as_str().to_owned(),
            hour_of(created_at),
            source_of(transaction_id).to_owned(),
            asset.to_owned(),
            product_id.to_owned(),
            price_id.to_owned(),
        );
        self.fees.entry(key).or_default().absorb(&Total::row(spent));
    }

    /// A usage event's vendor cost, dated by when its event occurred.
    #[allow(clippy::too_many_arguments)]
    pub fn cost(
        &mut self,
        mode: Mode,
        customer_id: &str,
        occurred_at: DateTime<Utc>,
        vendor_id: &str,
        category: Option<&str>,
        currency: &str,
        amount: Decimal,
    ) {
        let hour = hour_of(occurred_at);
        let key = (customer_id.to_owned(), mode.as_str().to_owned(), hour, currency.to_owned());
        let row = Total::row(amount);
        self.costs.entry(key).or_default().absorb(&row);
        let by_vendor = (vendor_id.to_owned(), hour, category.unwrap_or_default().to_owned(), currency.to_owned());
        self.costs_by_vendor
            .entry(by_vendor)
            .or_insert_with(|| (mode.as_str().to_owned(), Total::default()))
            .1
            .absorb(&row);
    }

    /// Adds everything gathered to the stored rollups, a multi-row upsert per table (an
    /// ingestion round gathers the keys of many customers), and forgets it. Rows go in key
    /// order, so two transactions adding to the same rows lock them in one order.
    pub fn write(&mut self, conn: &mut dyn Conn) -> Result<(), StoreError> {
        let mut values: Vec<Value> = Vec::new();
        for ((customer_id, mode, hour, source, asset, product_id, price_id), total) in std::mem::take(&mut self.fees) {
            push_row(&mut values, params![mode, customer_id, hour, source, asset, product_id, price_id], &total)?;
        }
        upsert_many(
            conn,
            "fee_rollups",
            "mode, customer_id, hour, source, asset, product_id, price_id",
            "customer_id, mode, hour, source, asset, product_id, price_id",
            "fee_count",
            &std::mem::take(&mut values),
        )?;
        let shard = shard_for(conn);
        for ((mode, hour, asset), total) in std::mem::take(&mut self.fees_by_mode) {
            push_row(&mut values, params![mode, hour, asset, shard], &total)?;
        }
        upsert_many(
            conn,
            "fee_rollups_by_mode",
            "mode, hour, asset, shard",
            "mode, hour, asset, shard",
            "fee_count",
            &std::mem::take(&mut values),
        )?;
        for ((customer_id, mode, hour, currency), total) in std::mem::take(&mut self.costs) {
            push_row(&mut values, params![mode, customer_id, hour, currency], &total)?;
        }
        upsert_many(
            conn,
            "cost_rollups",
            "mode, customer_id, hour, currency",
            "customer_id, mode, hour, currency",
            "cost_count",
            &std::mem::take(&mut values),
        )?;
        for ((vendor_id, hour, category, currency), (mode, total)) in std::mem::take(&mut self.costs_by_vendor) {
            push_row(&mut values, params![mode, vendor_id, hour, category, currency, shard], &total)?;
        }
        upsert_many(
            conn,
            "cost_rollups_by_vendor",
            "mode, vendor_id, hour, category, currency, shard",
            "vendor_id, hour, category, currency, shard",
            "cost_count",
            &values,
        )
    }
}

/// Appends a row for [`upsert_many`]: its key columns, then the total's three parts and count.
fn push_row(values: &mut Vec<Value>, keys: &[Value], total: &Total) -> Result<(), StoreError> {
    let (units, pico, yocto) = total.parts()?;
    values.extend_from_slice(keys);
    values.extend_from_slice(params![units, pico, yocto, total.count]);
    Ok(())
}

/// Adds each row of `values` (the key columns, the amount's three parts and the count) to
/// `table`'s row of the same key, in one statement or few (`repo::write_rows`), the head and
/// tail built once per thread. The keys of one call
/// must differ (PostgreSQL refuses to update a row twice in one statement): each comes from
/// one map key.
fn upsert_many(
    conn: &mut dyn Conn,
    table: &'static str,
    key_columns: &'static str,
    conflict_columns: &'static str,
    count: &'static str,
    values: &[Value],
) -> Result<(), StoreError> {
    let width = key_columns.split(", ").count() + 4;
    let key = [table, key_columns, conflict_columns, count];
    let head = super::statement_text(&key, &[0], || upsert_head(table, key_columns, count));
    let tail = super::statement_text(&key, &[1], || upsert_tail(table, conflict_columns, count));
    super::write_rows(conn, &key, &head, width, values, &tail).map(drop)
}

/// The head of [`upsert_many`]'s statement: the key columns, the amount's parts, the count.
fn upsert_head(table: &str, key_columns: &str, count: &str) -> String {
    format!("INSERT INTO {table} ({key_columns}, amount_units, amount_pico, amount_yocto, {count})")
}

/// The tail of [`upsert_many`]'s statement: adds each row's amount and count to the stored
/// row of its key, carrying the fractions.
fn upsert_tail(table: &str, conflict_columns: &str, count: &str) -> String {
    let yocto = format!("({table}.amount_yocto + excluded.amount_yocto)");
    let pico = format!("({table}.amount_pico + excluded.amount_pico + {yocto} / {PART})");
    format!(
        " ON CONFLICT ({conflict_columns}) DO UPDATE SET
             amount_units = {table}.amount_units + excluded.amount_units + {pico} / {PART},
             amount_pico = {pico} % {PART},
             amount_yocto = {yocto} % {PART},
             {count} = {table}.{count} + excluded.{count}"
    )
}

/// The exact sum of the rows a query groups, from its `SUM`s of the three parts.
const SUMS: &str =
    "CAST(SUM(amount_units) AS BIGINT), CAST(SUM(amount_pico) AS BIGINT), CAST(SUM(amount_yocto) AS BIGINT)";

/// The total of the three parts from column `index` on.
fn total_at(row: &crate::Row, index: usize) -> Result<Decimal, StoreError> {
    from_parts(row.int(index)?, row.int(index + 1)?, row.int(index + 2)?)
}

/// Usage fees per (asset, hour) over the hours `hours`, of one customer.
pub fn customer_usage_hours(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    hours: Range<i64>,
) -> Result<Vec<(String, i64, Decimal)>, StoreError> {
    conn.query(
        &format!(
            "SELECT asset, hour, {SUMS} FROM fee_rollups
             WHERE customer_id = $1 AND mode = $2 AND hour >= $3 AND hour < $4 AND source = '{USAGE}'
             GROUP BY asset, hour"
        ),
        params![customer_id, mode.as_str(), hours.start, hours.end],
    )?
    .iter()
    .map(|row| Ok((row.text(0)?, row.int(1)?, total_at(row, 2)?)))
    .collect()
}

/// Usage fees per (asset, hour) over the hours `hours`, of the whole mode.
pub fn usage_hours(
    conn: &mut dyn Conn,
    mode: Mode,
    hours: Range<i64>,
) -> Result<Vec<(String, i64, Decimal)>, StoreError> {
    conn.query(
        &format!(
            "SELECT asset, hour, {SUMS} FROM fee_rollups_by_mode WHERE mode = $1 AND hour >= $2 AND hour < $3
             GROUP BY asset, hour"
        ),
        params![mode.as_str(), hours.start, hours.end],
    )?
    .iter()
    .map(|row| Ok((row.text(0)?, row.int(1)?, total_at(row, 2)?)))
    .collect()
}

/// Vendor costs in `currency` over the hours `hours`: the customer's, or the whole mode's.
pub fn cost_total(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: Option<&str>,
    currency: &str,
    hours: Range<i64>,
) -> Result<Decimal, StoreError> {
    let row = match customer_id {
        Some(customer_id) => conn.query_one(
            &format!(
                "SELECT {SUMS} FROM cost_rollups
                 WHERE customer_id = $1 AND mode = $2 AND hour >= $3 AND hour < $4 AND currency = $5"
            ),
            params![customer_id, mode.as_str(), hours.start, hours.end, currency],
        )?,
        None => conn.query_one(
            &format!(
                "SELECT {SUMS} FROM cost_rollups_by_vendor WHERE mode = $1 AND hour >= $2 AND hour < $3 AND currency = $4"
            ),
            params![mode.as_str(), hours.start, hours.end, currency],
        )?,
    };
    from_parts(row.opt_int(0)?.unwrap_or(0), row.opt_int(1)?.unwrap_or(0), row.opt_int(2)?.unwrap_or(0))
}

/// A vendor's costs in `currency` over the hours `hours`, by category (empty: none), with
/// how many costs each is.
pub fn vendor_costs(
    conn: &mut dyn Conn,
    vendor_id: &str,
    currency: &str,
    hours: Range<i64>,
) -> Result<Vec<(String, Decimal, i64)>, StoreError> {
    conn.query(
        &format!(
            "SELECT category, {SUMS}, CAST(SUM(cost_count) AS BIGINT) FROM cost_rollups_by_vendor
             WHERE vendor_id = $1 AND hour >= $2 AND hour < $3 AND currency = $4 GROUP BY category"
        ),
        params![vendor_id, hours.start, hours.end, currency],
    )?
    .iter()
    .map(|row| Ok((row.text(0)?, total_at(row, 1)?, row.int(4)?)))
    .collect()
}

/// One row of a customer's spend: what their fees of one source, asset, product and price
/// took in one hour, and how many fees that was.
#[derive(Debug, Clone, PartialEq)]
pub struct HourSpend {
    /// Hours since the Unix epoch.
    pub hour: i64,
    /// [`USAGE`], [`PLAN`] or [`OTHER`].
    pub source: String,
    pub asset: String,
    /// Empty for a fee whose details name no product (a charge).
    pub product_id: String,
    pub price_id: String,
    pub spent: Decimal,
    pub fee_count: i64,
}

/// Everything a customer spent on fees in the hours `hours`, per hour, source, asset,
/// product and price: usage fees by the hour their event occurred, other fees by the hour
/// they were made.
pub fn customer_spend(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    hours: Range<i64>,
) -> Result<Vec<HourSpend>, StoreError> {
    conn.query(
        "SELECT hour, source, asset, product_id, price_id, amount_units, amount_pico, amount_yocto, fee_count FROM fee_rollups
         WHERE customer_id = $1 AND mode = $2 AND hour >= $3 AND hour < $4
         ORDER BY hour, source, asset, product_id, price_id",
        params![customer_id, mode.as_str(), hours.start, hours.end],
    )?
    .iter()
    .map(|row| {
        Ok(HourSpend {
            hour: row.int(0)?,
            source: row.text(1)?,
            asset: row.text(2)?,
            product_id: row.text(3)?,
            price_id: row.text(4)?,
            spent: total_at(row, 5)?,
            fee_count: row.int(8)?,
        })
    })
    .collect()
}

/// One fee of a customer as `fee_rollups` counts it: when it counts (a usage fee when its
/// event occurred, any other fee when it was made), its rollup key and what it took.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerFee {
    pub at: DateTime<Utc>,
    /// [`USAGE`], [`PLAN`] or [`OTHER`].
    pub source: &'static str,
    pub asset: String,
    pub product_id: String,
    pub price_id: String,
    /// What the fee took from the wallet (positive for a fee).
    pub spent: Decimal,
}

/// The customer's fees that count within any of `spans` (each `[from, to)`), read from the
/// fees themselves: usage fees from `event_fees` and every other fee from `transactions`,
/// each span a range of the index on (customer, time). Two statements however many spans;
/// the spans are short (parts of hours at the edges of the portal's days), so few rows. No
/// `mode = …`: a customer's id names its mode, and with it SQLite (no statistics) may read the
/// mode's index by time, every customer's fees of the span, as it did for the stats (see
/// [`fees_between`]).
pub fn customer_fees_within(
    conn: &mut dyn Conn,
    customer_id: &str,
    spans: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Result<Vec<CustomerFee>, StoreError> {
    let spans: Vec<&(DateTime<Utc>, DateTime<Utc>)> = spans.iter().filter(|(from, to)| from < to).collect();
    if spans.is_empty() {
        return Ok(Vec::new());
    }
    let mut values: Vec<Value> = params![customer_id].to_vec();
    let mut ranges = Vec::new();
    for (from, to) in spans {
        values.push((*from).into());
        values.push((*to).into());
        ranges.push((values.len() - 1, values.len()));
    }
    let union = |select: &str, time: &str, condition: &str| {
        ranges
            .iter()
            .map(|(from, to)| {
                format!("{select} WHERE customer_id = $1 AND {time} >= ${from} AND {time} < ${to}{condition}")
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    };
    let mut fees = Vec::new();
    let usage = union("SELECT occurred_at, asset, product_id, price_id, amount FROM event_fees", "occurred_at", "");
    for row in conn.query(&usage, &values)? {
        fees.push(CustomerFee {
            at: row.time(0)?,
            source: USAGE,
            asset: row.text(1)?,
            product_id: row.text(2)?,
            price_id: row.text(3)?,
            spent: row.decimal(4)?,
        });
    }
    let others = union(
        "SELECT created_at, id, asset, detail, amount FROM transactions",
        "created_at",
        &format!(" AND {OTHER_FEE_CONDITION}"),
    );
    for row in conn.query(&others, &values)? {
        let (product_id, price_id) = product_and_price(&row.text(3)?);
        fees.push(CustomerFee {
            at: row.time(0)?,
            source: source_of(&row.text(1)?),
            asset: row.text(2)?,
            product_id,
            price_id,
            spent: -row.decimal(4)?,
        });
    }
    Ok(fees)
}

/// The product and price a fee transaction's details name, empty when they name none.
pub fn product_and_price(detail: &str) -> (String, String) {
    let value: serde_json::Value = serde_json::from_str(detail).unwrap_or_default();
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    (field("product_id"), field("price_id"))
}

/// Whether a transaction is a fee that `fee_rollups` counts under [`OTHER`]: a fee that did
/// not come from a usage event (those are counted from `event_fees`, by when they occurred).
pub fn is_other_fee(kind: &str, transaction_id: &str) -> bool {
    kind == "fee" && !transaction_id.starts_with("tally_event_")
}

/// [`is_other_fee`] as a condition on `transactions`, spelled as the partial index
/// `transactions_other_fees` is, so that it serves the queries that name it.
pub const OTHER_FEE_CONDITION: &str = "kind = 'fee' AND substr(id, 1, 12) <> 'tally_event_'";

/// What the rollups should hold for the customers from `first` to `last` (inclusive), from
/// the fees and costs themselves: the database groups equal amounts and counts them, Rust
/// multiplies and adds exactly.
pub fn expected_for_customers(conn: &mut dyn Conn, first: &str, last: &str) -> Result<Rollups, StoreError> {
    let mut expected = Rollups::default();
    let fees = conn.query(
        &format!(
            "SELECT customer_id, mode, occurred_at / {MICROS_PER_HOUR}, asset, product_id, price_id, amount, COUNT(*)
             FROM event_fees WHERE customer_id >= $1 AND customer_id <= $2
             GROUP BY customer_id, mode, occurred_at / {MICROS_PER_HOUR}, asset, product_id, price_id, amount"
        ),
        params![first, last],
    )?;
    for row in &fees {
        let (customer_id, mode, hour) = (row.text(0)?, row.text(1)?, row.int(2)?);
        let (amount, rows) = (row.decimal(6)?, row.int(7)?);
        let key = (customer_id.clone(), mode.clone(), hour, USAGE.to_owned(), row.text(3)?, row.text(4)?, row.text(5)?);
        expected.fees.entry(key).or_default().add_each(amount, rows);
        let by_mode = (mode, hour, row.text(3)?);
        expected.fees_by_mode.entry(by_mode).or_default().add_each(amount, rows);
    }
    let others = conn.query(
        &format!(
            "SELECT customer_id, mode, created_at / {MICROS_PER_HOUR}, asset, amount, detail, COUNT(*), substr(id, 1, 19)
             FROM transactions
             WHERE customer_id >= $1 AND customer_id <= $2 AND {OTHER_FEE_CONDITION}
             GROUP BY customer_id, mode, created_at / {MICROS_PER_HOUR}, asset, amount, detail, substr(id, 1, 19)"
        ),
        params![first, last],
    )?;
    for row in &others {
        let (product_id, price_id) = product_and_price(&row.text(5)?);
        let source = source_of(&row.text(7)?).to_owned();
        let key = (row.text(0)?, row.text(1)?, row.int(2)?, source, row.text(3)?, product_id, price_id);
        expected.fees.entry(key).or_default().add_each(-row.decimal(4)?, row.int(6)?);
    }
    let costs = conn.query(
        &format!(
            "SELECT customer_id, mode, occurred_at / {MICROS_PER_HOUR}, currency, vendor_id, category, amount, COUNT(*)
             FROM event_costs WHERE customer_id >= $1 AND customer_id <= $2
             GROUP BY customer_id, mode, occurred_at / {MICROS_PER_HOUR}, currency, vendor_id, category, amount"
        ),
        params![first, last],
    )?;
    for row in &costs {
        let (mode, hour, currency) = (row.text(1)?, row.int(2)?, row.text(3)?);
        let (amount, rows) = (row.decimal(6)?, row.int(7)?);
        expected.costs.entry((row.text(0)?, mode.clone(), hour, currency.clone())).or_default().add_each(amount, rows);
        let by_vendor = (row.text(4)?, hour, row.opt_text(5)?.unwrap_or_default(), currency);
        expected.costs_by_vendor.entry(by_vendor).or_insert_with(|| (mode, Total::default())).1.add_each(amount, rows);
    }
    Ok(expected)
}

impl Rollups {
    /// Per-customer fee totals, in key order.
    pub fn fees(&self) -> &BTreeMap<FeeKey, Total> {
        &self.fees
    }

    /// Per-customer cost totals, in key order.
    pub fn costs(&self) -> &BTreeMap<CostKey, Total> {
        &self.costs
    }

    /// Platform-wide fee totals (all shards together), in key order.
    pub fn fees_by_mode(&self) -> &BTreeMap<ModeFeeKey, Total> {
        &self.fees_by_mode
    }

    /// Per-vendor cost totals (all shards together) with their mode, in key order.
    pub fn costs_by_vendor(&self) -> &BTreeMap<VendorCostKey, (String, Total)> {
        &self.costs_by_vendor
    }

    /// Adds every total of `other` to this one's: an ingestion round gathers its requests'
    /// rollups and writes each key once.
    pub fn absorb(&mut self, other: Rollups) {
        for (key, total) in other.fees {
            self.fees.entry(key).or_default().absorb(&total);
        }
        for (key, total) in other.costs {
            self.costs.entry(key).or_default().absorb(&total);
        }
        self.absorb_shared(&Rollups {
            fees_by_mode: other.fees_by_mode,
            costs_by_vendor: other.costs_by_vendor,
            ..Rollups::default()
        });
    }

    /// Adds `other`'s platform-wide totals to this one's (per-customer totals are left out).
    pub fn absorb_shared(&mut self, other: &Rollups) {
        for (key, total) in &other.fees_by_mode {
            self.fees_by_mode.entry(key.clone()).or_default().absorb(total);
        }
        for (key, (mode, total)) in &other.costs_by_vendor {
            self.costs_by_vendor.entry(key.clone()).or_insert_with(|| (mode.clone(), Total::default())).1.absorb(total);
        }
    }
}

/// The stored per-customer rollups of the customers from `first` to `last` (inclusive).
pub fn stored_for_customers(conn: &mut dyn Conn, first: &str, last: &str) -> Result<Rollups, StoreError> {
    let mut stored = Rollups::default();
    for row in conn.query(
        "SELECT customer_id, mode, hour, source, asset, product_id, price_id, amount_units, amount_pico, amount_yocto,
                fee_count
         FROM fee_rollups WHERE customer_id >= $1 AND customer_id <= $2",
        params![first, last],
    )? {
        let key = (row.text(0)?, row.text(1)?, row.int(2)?, row.text(3)?, row.text(4)?, row.text(5)?, row.text(6)?);
        stored.fees.entry(key).or_default().absorb(&Total::stored(&row, 7, row.int(10)?)?);
    }
    for row in conn.query(
        "SELECT customer_id, mode, hour, currency, amount_units, amount_pico, amount_yocto, cost_count
         FROM cost_rollups WHERE customer_id >= $1 AND customer_id <= $2",
        params![first, last],
    )? {
        let key = (row.text(0)?, row.text(1)?, row.int(2)?, row.text(3)?);
        stored.costs.entry(key).or_default().absorb(&Total::stored(&row, 4, row.int(7)?)?);
    }
    Ok(stored)
}

/// The stored platform-wide rollups, all shards of a key together.
pub fn stored_shared(conn: &mut dyn Conn) -> Result<Rollups, StoreError> {
    let mut stored = Rollups::default();
    for row in conn.query(
        &format!(
            "SELECT mode, hour, asset, {SUMS}, CAST(SUM(fee_count) AS BIGINT) FROM fee_rollups_by_mode
             GROUP BY mode, hour, asset"
        ),
        &[],
    )? {
        stored.fees_by_mode.insert((row.text(0)?, row.int(1)?, row.text(2)?), Total::stored(&row, 3, row.int(6)?)?);
    }
    for row in conn.query(
        &format!(
            "SELECT vendor_id, hour, category, currency,
                    CASE WHEN MIN(mode) = MAX(mode) THEN MIN(mode) ELSE MIN(mode) || ' and ' || MAX(mode) END,
                    {SUMS}, CAST(SUM(cost_count) AS BIGINT)
             FROM cost_rollups_by_vendor GROUP BY vendor_id, hour, category, currency"
        ),
        &[],
    )? {
        stored.costs_by_vendor.insert(
            (row.text(0)?, row.int(1)?, row.text(2)?, row.text(3)?),
            (row.text(4)?, Total::stored(&row, 5, row.int(8)?)?),
        );
    }
    Ok(stored)
}

/// How many per-customer rollup rows exist: (fee rows, cost rows).
pub fn count_customer_rows(conn: &mut dyn Conn) -> Result<(i64, i64), StoreError> {
    Ok((conn.count("SELECT COUNT(*) FROM fee_rollups", &[])?, conn.count("SELECT COUNT(*) FROM cost_rollups", &[])?))
}

/// Customer ids after `after`, in order, `limit` of them.
pub fn customers_after(conn: &mut dyn Conn, after: &str, limit: i64) -> Result<Vec<String>, StoreError> {
    conn.query("SELECT id FROM customers WHERE id > $1 ORDER BY id LIMIT $2", params![after, limit])?
        .iter()
        .map(|row| row.text(0))
        .collect()
}

/// Fills the rollups from the fees and costs already stored, a chunk of customers at a time
/// (the migration that made the tables calls it, in its transaction). Everything goes into
/// the shard of the platform-wide totals its connection writes: any shard adds up the same.
pub fn backfill(conn: &mut dyn Conn) -> Result<(), StoreError> {
    let mut shared = Rollups::default();
    let mut after = String::new();
    loop {
        let customers = customers_after(conn, &after, 500)?;
        let (Some(first), Some(last)) = (customers.first(), customers.last()) else { break };
        let mut expected = expected_for_customers(conn, first, last)?;
        shared.absorb_shared(&expected);
        expected.fees_by_mode.clear();
        expected.costs_by_vendor.clear();
        expected.write(conn)?;
        after = last.clone();
    }
    shared.write(conn)
}

/// Fees (asset, amount, occurred_at) of usage events that occurred in `[from, to)`: the
/// customer's, or the whole mode's. For the parts of hours at a period's edges.
pub fn fees_between(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(String, Decimal, DateTime<Utc>)>, StoreError> {
    // A customer's by its own index: its id names its mode, and with `mode = …` as well SQLite
    // (no statistics) read the mode's index by time instead, every customer's fees of the
    // part (27 ms a customer's stats at 11 million events, where its own fees are a few).
    let (sql, values): (&str, Vec<Value>) = match customer_id {
        Some(customer_id) => (
            "SELECT asset, amount, occurred_at FROM event_fees WHERE customer_id = $1 AND occurred_at >= $2 AND occurred_at < $3",
            params![customer_id, from, to].to_vec(),
        ),
        None => (
            "SELECT asset, amount, occurred_at FROM event_fees WHERE mode = $1 AND occurred_at >= $2 AND occurred_at < $3",
            params![mode.as_str(), from, to].to_vec(),
        ),
    };
    conn.query(sql, &values)?.iter().map(|row| Ok((row.text(0)?, row.decimal(1)?, row.time(2)?))).collect()
}

/// How many fees (of any asset) occurred in `[from, to)`: the customer's, or the whole
/// mode's. Read from the index alone.
pub fn count_fees_between(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<i64, StoreError> {
    match customer_id {
        Some(customer_id) => conn.count(
            "SELECT COUNT(*) FROM event_fees WHERE customer_id = $1 AND occurred_at >= $2 AND occurred_at < $3",
            params![customer_id, from, to],
        ),
        None => conn.count(
            "SELECT COUNT(*) FROM event_fees WHERE mode = $1 AND occurred_at >= $2 AND occurred_at < $3",
            params![mode.as_str(), from, to],
        ),
    }
}

/// The fees in `asset` that occurred in `[from, to)` (the customer's, or the whole mode's),
/// as (amount, how many fees of that amount): the database groups, exactly, since the
/// amounts are compared as the canonical text they are stored as.
pub fn fee_amounts_between(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: Option<&str>,
    asset: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(Decimal, i64)>, StoreError> {
    let (sql, values): (&str, Vec<Value>) = match customer_id {
        Some(customer_id) => (
            "SELECT amount, COUNT(*) FROM event_fees WHERE customer_id = $1 AND occurred_at >= $2 AND occurred_at < $3
             AND mode = $4 AND asset = $5 GROUP BY amount",
            params![customer_id, from, to, mode.as_str(), asset].to_vec(),
        ),
        None => (
            "SELECT amount, COUNT(*) FROM event_fees WHERE mode = $1 AND occurred_at >= $2 AND occurred_at < $3
             AND asset = $4 GROUP BY amount",
            params![mode.as_str(), from, to, asset].to_vec(),
        ),
    };
    conn.query(sql, &values)?.iter().map(|row| Ok((row.decimal(0)?, row.int(1)?))).collect()
}

/// Costs in `currency` of usage events that occurred in `[from, to)`: the customer's, or
/// the whole mode's.
pub fn costs_between(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: Option<&str>,
    currency: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Decimal, StoreError> {
    let (sql, values): (&str, Vec<Value>) = match customer_id {
        // By the customer's own index, as `fees_between` reads fees.
        Some(customer_id) => (
            "SELECT amount FROM event_costs WHERE customer_id = $1 AND occurred_at >= $2 AND occurred_at < $3 AND currency = $4",
            params![customer_id, from, to, currency].to_vec(),
        ),
        None => (
            "SELECT amount FROM event_costs WHERE mode = $1 AND occurred_at >= $2 AND occurred_at < $3 AND currency = $4",
            params![mode.as_str(), from, to, currency].to_vec(),
        ),
    };
    conn.query(sql, &values)?.iter().map(|row| row.decimal(0)).sum()
}

/// A vendor's costs in `currency` of events that occurred in `[from, to)`, each with its
/// category (empty: none) and a count of 1.
pub fn vendor_costs_between(
    conn: &mut dyn Conn,
    vendor_id: &str,
    currency: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(String, Decimal, i64)>, StoreError> {
    conn.query(
        "SELECT category, amount FROM event_costs WHERE vendor_id = $1 AND occurred_at >= $2 AND occurred_at < $3 AND currency = $4",
        params![vendor_id, from, to, currency],
    )?
    .iter()
    .map(|row| Ok((row.opt_text(0)?.unwrap_or_default(), row.decimal(1)?, 1)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_split_into_whole_units_and_fractions_and_back_exactly() {
        const E12: i64 = 1_000_000_000_000;
        for (text, parts) in [
            ("0", (0, 0, 0)),
            ("1.5", (1, E12 / 2, 0)),
            ("-0.5", (-1, E12 / 2, 0)),
            ("0.000000000001", (0, 1, 0)),
            ("-0.000000000001", (-1, E12 - 1, 0)),
            ("0.000000000789299", (0, 789, 299_000_000_000)),
            ("-0.000000000000000000000001", (-1, E12 - 1, E12 - 1)),
            ("999999999999999.999999999999", (999_999_999_999_999, E12 - 1, 0)),
            ("12.340000000000", (12, 340_000_000_000, 0)),
            ("-999999999999999.000000000001", (-1_000_000_000_000_000, E12 - 1, 0)),
            ("999999999999999", (999_999_999_999_999, 0, 0)),
        ] {
            let amount: Decimal = text.parse().unwrap();
            let mut total = Total::default();
            total.add_each(amount, 1);
            assert_eq!(total.parts().unwrap(), parts, "{text}");
            assert_eq!(from_parts(parts.0, parts.1, parts.2).unwrap(), amount.normalize(), "{text}");
        }
        // A sum's fractions may pass a unit: they carry.
        assert_eq!(from_parts(1, E12 + E12 / 2, 3 * E12).unwrap(), "2.500000000003".parse::<Decimal>().unwrap());
    }

    #[test]
    fn totals_add_exactly_past_a_decimals_28_digits() {
        const E12: i64 = 1_000_000_000_000;
        let amount = |text: &str| text.parse::<Decimal>().unwrap();
        // 100,000 and 10^-24 need 30 digits: added as `Decimal`s the 10^-24 is lost, and a
        // batch's total keeps both.
        let (large, tiny) = (amount("100000"), amount("0.000000000000000000000001"));
        assert_eq!(large + tiny, large, "Decimal rounds past its 96-bit mantissa");
        let mut total = Total::default();
        total.add_each(large, 1);
        total.add_each(tiny, 1);
        assert_eq!((total.parts().unwrap(), total.count), ((100_000, 0, 1), 2));
        // A negative amount borrows from the units.
        total.add_each(amount("-0.000000000000000000000002"), 1);
        assert_eq!(total.parts().unwrap(), (99_999, E12 - 1, E12 - 1));
        // Rows of one amount add as each row does; a stored row's parts add as the amount.
        let (mut rows, mut each) = (Total::default(), Total::default());
        rows.add_each(amount("12.000000000000000000000007"), 3);
        for _ in 0..3 {
            each.add_each(amount("12.000000000000000000000007"), 1);
        }
        assert_eq!(rows, each);
        assert_eq!((rows.parts().unwrap(), rows.count), ((36, 0, 21), 3));
        let mut absorbed = Total::default();
        absorbed.absorb(&rows);
        absorbed.add_parts(-36, -21, 0);
        assert_eq!(absorbed.parts().unwrap(), (0, 0, 0));
        // More than 24 decimal places cannot be stored: the write fails instead of rounding.
        let mut too_precise = Total::default();
        too_precise.add_each(amount("0.0000000000000000000000001"), 1);
        assert!(too_precise.parts().is_err());
    }
}
