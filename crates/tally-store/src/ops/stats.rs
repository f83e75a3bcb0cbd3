//! Profitability: what usage earned against what it cost.
//!
//! Rules:
//! - Stats are reported in one fiat currency (USD unless asked otherwise).
//! - Revenue is the sum of usage fees. A fee in the report currency counts as it is; a fee in
//!   a custom asset is valued at that asset's rate from the report currency in force when the
//!   event occurred (`amount × rate`). Fees that cannot be valued (another fiat currency, or an
//!   asset with no rate from the report currency then) are left out.
//! - Costs are the sum of the events' vendor costs in the report currency; costs in other
//!   currencies are left out (Tally does not exchange between fiat currencies).
//! - `net_revenue = gross_revenue − total_costs`; `margin` is `net / gross × 100`, rounded
//!   half away from zero to 2 places, and 0 when there is no revenue. Amounts are exact.

use super::OpError;
use crate::conn::{Conn, Value};
use crate::repo::{assets, rollups};
use crate::StoreError;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::ops::Range;
use tally_core::money::round_display;
use tally_core::rate::{self, ScheduledRate};
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct Profitability {
    pub gross_revenue: Decimal,
    pub total_costs: Decimal,
    pub net_revenue: Decimal,
    pub margin: Decimal,
    pub currency: String,
}

/// Which fees and costs to count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    pub customer_id: Option<String>,
    pub event_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Values fees in the report currency, caching each asset's schedule.
struct Valuer {
    currency: String,
    schedules: HashMap<String, Vec<ScheduledRate>>,
}

impl Valuer {
    fn schedule(&mut self, conn: &mut dyn Conn, mode: Mode, asset: &str) -> Result<&[ScheduledRate], StoreError> {
        if !self.schedules.contains_key(asset) {
            let schedule = assets::rates(conn, mode, asset)?
                .into_iter()
                .filter(|row| row.source == self.currency)
                .map(|row| row.scheduled)
                .collect();
            self.schedules.insert(asset.to_owned(), schedule);
        }
        Ok(&self.schedules[asset])
    }

    fn value(
        &mut self,
        conn: &mut dyn Conn,
        mode: Mode,
        asset: &str,
        amount: Decimal,
        at: DateTime<Utc>,
    ) -> Result<Option<Decimal>, StoreError> {
        if asset == self.currency {
            return Ok(Some(amount));
        }
        let schedule = self.schedule(conn, mode, asset)?;
        Ok(rate::in_force(schedule, at).and_then(|entry| entry.rate.value_in_source(amount)))
    }

    /// The value of `total`, the sum of the fees in `asset` of one whole period `[start,
    /// end)` (of the customer, or of the whole mode). A period the asset's rate changes in is
    /// valued fee by fee, reading its fees; any other at the one rate in force throughout.
    fn value_total(
        &mut self,
        conn: &mut dyn Conn,
        mode: Mode,
        customer_id: Option<&str>,
        (asset, start, end): (&str, DateTime<Utc>, DateTime<Utc>),
        total: Decimal,
    ) -> Result<Decimal, StoreError> {
        if asset == self.currency {
            return Ok(total);
        }
        let schedule = self.schedule(conn, mode, asset)?;
        let changes_within = |at: Option<DateTime<Utc>>| at.is_some_and(|at| start < at && at < end);
        if !schedule.iter().any(|entry| changes_within(Some(entry.valid_from)) || changes_within(entry.valid_to)) {
            let value = rate::in_force(schedule, start).and_then(|entry| entry.rate.value_in_source(total));
            return Ok(value.unwrap_or_default());
        }
        // The period cut where the rates change: one rate is in force throughout each piece.
        // Each piece but the one with the most fees is read, its fees grouped by amount by
        // the database (equal fees have equal values) and valued exactly here; that one is
        // the period's total less theirs. Reading every fee of the hour instead took seconds
        // for an hour with a rate change and a few hundred thousand fees.
        let mut cuts: Vec<DateTime<Utc>> = schedule
            .iter()
            .flat_map(|entry| [Some(entry.valid_from), entry.valid_to])
            .flatten()
            .filter(|at| start < *at && *at < end)
            .collect();
        cuts.sort();
        cuts.dedup();
        let bounds: Vec<DateTime<Utc>> = std::iter::once(start).chain(cuts).chain(std::iter::once(end)).collect();
        let pieces: Vec<(DateTime<Utc>, DateTime<Utc>)> = bounds.windows(2).map(|pair| (pair[0], pair[1])).collect();
        let mut largest = (0, -1);
        for (index, (from, to)) in pieces.iter().enumerate() {
            let count = rollups::count_fees_between(conn, mode, customer_id, *from, *to)?;
            if count > largest.1 {
                largest = (index, count);
            }
        }
        let rate_at = |at: DateTime<Utc>| rate::in_force(schedule, at).map(|entry| entry.rate);
        let (mut value, mut rest) = (Decimal::ZERO, total);
        for (index, (from, to)) in pieces.iter().enumerate() {
            if index == largest.0 {
                continue;
            }
            let rate = rate_at(*from);
            for (amount, count) in rollups::fee_amounts_between(conn, mode, customer_id, asset, *from, *to)? {
                let count = Decimal::from(count);
                rest -= amount * count;
                value += rate.and_then(|rate| rate.value_in_source(amount)).unwrap_or_default() * count;
            }
        }
        let rate = rate_at(pieces[largest.0].0);
        value += rate.and_then(|rate| rate.value_in_source(rest)).unwrap_or_default();
        Ok(value)
    }
}

/// How a period falls on the rollups' periods of `size` microseconds (hours, days): the whole
/// ones in it, read from the rollups, and the parts at its edges (period, from, to), read from
/// the fees and costs themselves.
struct Spans {
    size: i64,
    whole: Range<i64>,
    parts: Vec<(i64, DateTime<Utc>, DateTime<Utc>)>,
}

impl Spans {
    fn of(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>, size: i64) -> Spans {
        let start = |period: i64| rollups::period_start(period, size);
        let starts_period = |at: DateTime<Utc>| start(rollups::period_of(at, size)) == at;
        let first = from.map_or(i64::MIN, |from| rollups::period_of(from, size) + i64::from(!starts_period(from)));
        let end = to.map_or(i64::MAX, |to| rollups::period_of(to, size));
        let mut parts = Vec::new();
        if let Some(from) = from.filter(|from| !starts_period(*from)) {
            let period = rollups::period_of(from, size);
            let part_end = start(period + 1);
            parts.push((period, from, to.map_or(part_end, |to| to.min(part_end))));
        }
        if let Some(to) = to.filter(|to| !starts_period(*to)) {
            let period = rollups::period_of(to, size);
            if parts.first().is_none_or(|(first, _, _)| *first != period) {
                parts.push((period, from.map_or(start(period), |from| from.max(start(period))), to));
            }
        }
        parts.retain(|(_, from, to)| from < to);
        Spans { size, whole: first..end.max(first), parts }
    }

    fn bounds(&self, period: i64) -> (DateTime<Utc>, DateTime<Utc>) {
        (rollups::period_start(period, self.size), rollups::period_start(period + 1, self.size))
    }

    /// Whether the part `[from, to)` of `period` is read directly (it is at most half of it),
    /// or as the whole period less the rest (`false`): either way as few rows as can be.
    fn read_directly(&self, period: i64, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        let (start, end) = self.bounds(period);
        (to - from) * 2 <= end - start
    }

    /// The rest of `period` outside `[from, to)`, where it is not empty.
    fn rest(&self, period: i64, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let (start, end) = self.bounds(period);
        [(start, from), (to, end)].into_iter().filter(|(from, to)| from < to).collect()
    }
}

fn scope_sql(scope: &Scope, mode: Mode, table: &str) -> (String, Vec<Value>) {
    let mut conditions = vec![format!("{table}.mode = $1")];
    let mut values: Vec<Value> = vec![mode.as_str().into()];
    let mut add = |condition: String, value: Value| {
        values.push(value);
        conditions.push(condition.replace('?', &format!("${}", values.len())));
    };
    if let Some(customer_id) = &scope.customer_id {
        add(format!("{table}.customer_id = ?"), customer_id.into());
    }
    if let Some(event_id) = &scope.event_id {
        add(format!("{table}.event_id = ?"), event_id.into());
    }
    if let Some(from) = scope.from {
        add(format!("{table}.occurred_at >= ?"), from.into());
    }
    if let Some(to) = scope.to {
        add(format!("{table}.occurred_at < ?"), to.into());
    }
    (conditions.join(" AND "), values)
}

/// Revenue and costs in `scope`. One event's are read from its fees and costs; a customer's
/// or the whole mode's from the rollups for whole hours and from the fees and costs for the
/// parts of hours at the period's edges (less than an hour each), which comes to the same
/// exact amounts.
pub fn profitability(conn: &mut dyn Conn, mode: Mode, scope: &Scope, currency: &str) -> Result<Profitability, OpError> {
    if scope.event_id.is_some() {
        return event_profitability(conn, mode, scope, currency);
    }
    let gross_revenue = revenue(conn, mode, scope, currency)?;
    let total_costs = costs(conn, mode, scope, currency)?;
    Ok(summarise(gross_revenue, total_costs, currency))
}

/// Usage fees in `scope` valued in `currency`, from the hourly rollups.
fn revenue(conn: &mut dyn Conn, mode: Mode, scope: &Scope, currency: &str) -> Result<Decimal, OpError> {
    let mut valuer = Valuer { currency: currency.to_owned(), schedules: HashMap::new() };
    let customer_id = scope.customer_id.as_deref();
    let spans = Spans::of(scope.from, scope.to, rollups::MICROS_PER_HOUR);
    let totals = |conn: &mut dyn Conn, periods: Range<i64>| match customer_id {
        Some(customer_id) => rollups::customer_usage_hours(conn, mode, customer_id, periods),
        None => rollups::usage_hours(conn, mode, periods),
    };
    let mut gross_revenue = Decimal::ZERO;
    let mut wholes = vec![spans.whole.clone()];
    let mut rests = Vec::new();
    for (period, from, to) in &spans.parts {
        if spans.read_directly(*period, *from, *to) {
            for (asset, amount, at) in rollups::fees_between(conn, mode, customer_id, *from, *to)? {
                gross_revenue += valuer.value(conn, mode, &asset, amount, at)?.unwrap_or_default();
            }
        } else {
            wholes.push(*period..*period + 1);
            rests.extend(spans.rest(*period, *from, *to));
        }
    }
    for periods in wholes.into_iter().filter(|periods| !periods.is_empty()) {
        for (asset, period, total) in totals(conn, periods)? {
            let (start, end) = spans.bounds(period);
            gross_revenue += valuer.value_total(conn, mode, customer_id, (&asset, start, end), total)?;
        }
    }
    for (from, to) in rests {
        for (asset, amount, at) in rollups::fees_between(conn, mode, customer_id, from, to)? {
            gross_revenue -= valuer.value(conn, mode, &asset, amount, at)?.unwrap_or_default();
        }
    }
    Ok(gross_revenue)
}

/// Vendor costs in `scope` in `currency`, from the hourly rollups.
fn costs(conn: &mut dyn Conn, mode: Mode, scope: &Scope, currency: &str) -> Result<Decimal, OpError> {
    let customer_id = scope.customer_id.as_deref();
    let spans = Spans::of(scope.from, scope.to, rollups::MICROS_PER_HOUR);
    let mut total_costs = Decimal::ZERO;
    if !spans.whole.is_empty() {
        total_costs += rollups::cost_total(conn, mode, customer_id, currency, spans.whole.clone())?;
    }
    for (day, from, to) in &spans.parts {
        if spans.read_directly(*day, *from, *to) {
            total_costs += rollups::costs_between(conn, mode, customer_id, currency, *from, *to)?;
            continue;
        }
        total_costs += rollups::cost_total(conn, mode, customer_id, currency, *day..*day + 1)?;
        for (from, to) in spans.rest(*day, *from, *to) {
            total_costs -= rollups::costs_between(conn, mode, customer_id, currency, from, to)?;
        }
    }
    Ok(total_costs)
}

/// One event's revenue and costs, from its own fees and costs.
fn event_profitability(
    conn: &mut dyn Conn,
    mode: Mode,
    scope: &Scope,
    currency: &str,
) -> Result<Profitability, OpError> {
    let mut valuer = Valuer { currency: currency.to_owned(), schedules: HashMap::new() };
    let (condition, values) = scope_sql(scope, mode, "f");
    let fees =
        conn.query(&format!("SELECT f.asset, f.amount, f.occurred_at FROM event_fees f WHERE {condition}"), &values)?;
    let mut gross_revenue = Decimal::ZERO;
    for row in &fees {
        if let Some(value) = valuer.value(conn, mode, &row.text(0)?, row.decimal(1)?, row.time(2)?)? {
            gross_revenue += value;
        }
    }
    let (condition, mut values) = scope_sql(scope, mode, "c");
    values.push(currency.into());
    let currency_index = values.len();
    let costs = conn.query(
        &format!("SELECT c.amount FROM event_costs c WHERE {condition} AND c.currency = ${currency_index}"),
        &values,
    )?;
    let total_costs: Decimal = costs.iter().map(|row| row.decimal(0)).collect::<Result<Vec<_>, _>>()?.into_iter().sum();
    Ok(summarise(gross_revenue, total_costs, currency))
}

pub fn summarise(gross_revenue: Decimal, total_costs: Decimal, currency: &str) -> Profitability {
    let net_revenue = gross_revenue - total_costs;
    let margin = if gross_revenue.is_zero() {
        Decimal::ZERO
    } else {
        round_display(net_revenue / gross_revenue * Decimal::ONE_HUNDRED, 2)
    };
    Profitability {
        gross_revenue: gross_revenue.normalize(),
        total_costs: total_costs.normalize(),
        net_revenue: net_revenue.normalize(),
        margin,
        currency: currency.to_owned(),
    }
}

/// A vendor's costs in a period by category, in `currency`: whole hours from the rollups,
/// the parts of hours at the period's edges from the costs themselves.
pub fn vendor_costs(
    conn: &mut dyn Conn,
    vendor_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    category: Option<&str>,
    currency: &str,
) -> Result<(Decimal, Vec<(String, Decimal)>), OpError> {
    // (category, amount, how many costs): a category is reported when it has costs in the
    // period, even costs that add up to zero.
    let mut sums: Vec<(String, Decimal, i64)> = Vec::new();
    let spans = Spans::of(Some(from), Some(to), rollups::MICROS_PER_HOUR);
    if !spans.whole.is_empty() {
        sums.extend(rollups::vendor_costs(conn, vendor_id, currency, spans.whole.clone())?);
    }
    for (day, from, to) in &spans.parts {
        if spans.read_directly(*day, *from, *to) {
            sums.extend(rollups::vendor_costs_between(conn, vendor_id, currency, *from, *to)?);
            continue;
        }
        sums.extend(rollups::vendor_costs(conn, vendor_id, currency, *day..*day + 1)?);
        for (from, to) in spans.rest(*day, *from, *to) {
            let rest = rollups::vendor_costs_between(conn, vendor_id, currency, from, to)?;
            sums.extend(rest.into_iter().map(|(name, amount, count)| (name, -amount, -count)));
        }
    }
    let mut by_category: Vec<(String, Decimal, i64)> = Vec::new();
    for (cost_category, amount, count) in sums {
        // Costs without a category are stored with an empty one (the API refuses empty ones).
        let name = if cost_category.is_empty() { "uncategorized".to_owned() } else { cost_category };
        if category.is_some_and(|wanted| wanted != name) {
            continue;
        }
        match by_category.iter_mut().find(|(existing, _, _)| *existing == name) {
            Some((_, sum, costs)) => {
                *sum += amount;
                *costs += count;
            }
            None => by_category.push((name, amount, count)),
        }
    }
    by_category.retain(|(_, _, count)| *count > 0);
    by_category.sort_by(|left, right| left.0.cmp(&right.0));
    let total: Decimal = by_category.iter().map(|(_, sum, _)| *sum).sum();
    Ok((total.normalize(), by_category.into_iter().map(|(name, sum, _)| (name, sum.normalize())).collect()))
}
