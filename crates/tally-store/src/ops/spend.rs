//! A customer's spend per period of their own calendar (the portal's month and days), exact
//! in every time zone, in three statements however long the periods are.
//!
//! The hourly rollups (`repo::rollups`) give whole hours. A period's edge on the hour (a day
//! in UTC, Tokyo or New York) splits no hour. An edge inside an hour (midnight in Kolkata,
//! +05:30, is 18:30 UTC; in Kathmandu, +05:45, 18:15 UTC) splits one: its rollup rows are
//! counted in the period of one side of the edge, and the fees of the other side, the
//! smaller part of the hour, are read from the fees themselves (by index, `repo::rollups::
//! customer_fees_within`) and moved to the period they fall in. That is what adding every fee
//! by its own time gives, as `ops::stats` does at a stat period's edges.

use super::OpError;
use crate::conn::Conn;
use crate::repo::rollups::{self, MICROS_PER_HOUR};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use tally_core::Mode;

/// What a customer's fees of one source, asset, product and price took within one period.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodSpend {
    /// The period's index: it runs from `bounds[period]` to `bounds[period + 1]`.
    pub period: usize,
    /// `rollups::USAGE`, `PLAN` or `OTHER`.
    pub source: String,
    pub asset: String,
    /// Empty for a fee whose details name no product (a charge).
    pub product_id: String,
    pub price_id: String,
    pub spent: Decimal,
    pub fee_count: i64,
}

/// Where the rollup rows of an hour that a period edge splits are counted, and which part of
/// the hour is read fee by fee instead.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Split {
    /// The rollup rows of the hour count in the period of this instant.
    anchor: DateTime<Utc>,
    /// The fees in `[from, to)` are moved from the anchor's period to their own.
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// The hours that the edges `bounds` fall inside, each with how it is split: the smaller
/// side of a single edge is read; an hour two edges fall in is read whole.
fn splits(bounds: &[DateTime<Utc>]) -> BTreeMap<i64, Split> {
    let mut inside: BTreeMap<i64, Vec<DateTime<Utc>>> = BTreeMap::new();
    for bound in bounds {
        let hour = rollups::hour_of(*bound);
        if rollups::period_start(hour, MICROS_PER_HOUR) != *bound {
            inside.entry(hour).or_default().push(*bound);
        }
    }
    inside
        .into_iter()
        .map(|(hour, edges)| {
            let (start, end) =
                (rollups::period_start(hour, MICROS_PER_HOUR), rollups::period_start(hour + 1, MICROS_PER_HOUR));
            let split = match edges.as_slice() {
                [edge] if *edge - start <= end - *edge => Split { anchor: *edge, from: start, to: *edge },
                [edge] => Split { anchor: start, from: *edge, to: end },
                _ => Split { anchor: start, from: start, to: end },
            };
            (hour, split)
        })
        .collect()
}

/// The period of `bounds` that `at` falls in, if any.
fn period_of(bounds: &[DateTime<Utc>], at: DateTime<Utc>) -> Option<usize> {
    let after = bounds.partition_point(|bound| *bound <= at);
    (after > 0 && after < bounds.len()).then(|| after - 1)
}

type Key = (usize, &'static str, String, String, String);

/// A customer's spend within each period `[bounds[i], bounds[i + 1])`, per source, asset,
/// product and price: usage fees by when their event occurred, other fees by when they were
/// made. `bounds` must ascend; keys with no fee in a period are left out. Reads the rollups
/// once and the fees of the parts of hours that edges split (less than an hour per edge)
/// once per table.
pub fn customer_spend(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    bounds: &[DateTime<Utc>],
) -> Result<Vec<PeriodSpend>, OpError> {
    let (Some(first), Some(last)) = (bounds.first(), bounds.last()) else { return Ok(Vec::new()) };
    if bounds.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(OpError::invalid("bounds", "period bounds must ascend"));
    }
    let splits = splits(bounds);
    let anchor = |hour: i64| {
        splits.get(&hour).map_or_else(|| rollups::period_start(hour, MICROS_PER_HOUR), |split| split.anchor)
    };
    // The hours from the one the first edge is in to the one the last edge ends.
    let hours =
        rollups::hour_of(*first)..rollups::period_of(*last - chrono::Duration::microseconds(1), MICROS_PER_HOUR) + 1;
    let mut totals: BTreeMap<Key, (Decimal, i64)> = BTreeMap::new();
    let source = |name: &str| match name {
        rollups::PLAN => rollups::PLAN,
        rollups::OTHER => rollups::OTHER,
        _ => rollups::USAGE,
    };
    for row in rollups::customer_spend(conn, mode, customer_id, hours)? {
        let Some(period) = period_of(bounds, anchor(row.hour)) else { continue };
        let total = totals.entry((period, source(&row.source), row.asset, row.product_id, row.price_id)).or_default();
        total.0 += row.spent;
        total.1 += row.fee_count;
    }
    let spans: Vec<_> = splits.values().map(|split| (split.from, split.to)).collect();
    for fee in rollups::customer_fees_within(conn, customer_id, &spans)? {
        let counted = period_of(bounds, anchor(rollups::hour_of(fee.at)));
        let own = period_of(bounds, fee.at);
        if counted == own {
            continue;
        }
        let key = |period: usize| (period, fee.source, fee.asset.clone(), fee.product_id.clone(), fee.price_id.clone());
        if let Some(period) = counted {
            let total = totals.entry(key(period)).or_default();
            total.0 -= fee.spent;
            total.1 -= 1;
        }
        if let Some(period) = own {
            let total = totals.entry(key(period)).or_default();
            total.0 += fee.spent;
            total.1 += 1;
        }
    }
    Ok(totals
        .into_iter()
        .filter(|(_, (_, count))| *count > 0)
        .map(|((period, source, asset, product_id, price_id), (spent, fee_count))| PeriodSpend {
            period,
            source: source.to_owned(),
            asset,
            product_id,
            price_id,
            spent: spent.normalize(),
            fee_count,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 31, hour, minute, 0).unwrap()
    }

    #[test]
    fn edges_on_the_hour_split_nothing() {
        assert!(splits(&[at(0, 0), at(5, 0), at(23, 0)]).is_empty());
    }

    #[test]
    fn the_smaller_side_of_an_edge_is_read() {
        // Midnight in Kolkata (18:30 UTC): half and half, the first half read.
        let kolkata = splits(&[at(18, 30)]);
        assert_eq!(kolkata.values().next(), Some(&Split { anchor: at(18, 30), from: at(18, 0), to: at(18, 30) }));
        // Midnight in Kathmandu (18:15 UTC): the first quarter read.
        let kathmandu = splits(&[at(18, 15)]);
        assert_eq!(kathmandu.values().next(), Some(&Split { anchor: at(18, 15), from: at(18, 0), to: at(18, 15) }));
        // An edge at 14:45 UTC: the last quarter read.
        let late = splits(&[at(14, 45)]);
        assert_eq!(late.values().next(), Some(&Split { anchor: at(14, 0), from: at(14, 45), to: at(15, 0) }));
        // Two edges in one hour: the hour is read whole.
        let both = splits(&[at(3, 10), at(3, 40)]);
        assert_eq!(both.values().next(), Some(&Split { anchor: at(3, 0), from: at(3, 0), to: at(4, 0) }));
    }

    #[test]
    fn instants_fall_in_the_period_that_starts_at_or_before_them() {
        let bounds = [at(1, 0), at(2, 30), at(3, 0)];
        assert_eq!(period_of(&bounds, at(0, 59)), None);
        assert_eq!(period_of(&bounds, at(1, 0)), Some(0));
        assert_eq!(period_of(&bounds, at(2, 29)), Some(0));
        assert_eq!(period_of(&bounds, at(2, 30)), Some(1));
        assert_eq!(period_of(&bounds, at(3, 0)), None);
    }
}
