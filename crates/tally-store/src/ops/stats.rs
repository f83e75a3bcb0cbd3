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
use crate::repo::assets;
use crate::StoreError;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;
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
        if !self.schedules.contains_key(asset) {
            let schedule = assets::rates(conn, mode, asset)?
                .into_iter()
                .filter(|row| row.source == self.currency)
                .map(|row| row.scheduled)
                .collect();
            self.schedules.insert(asset.to_owned(), schedule);
        }
        let schedule = &self.schedules[asset];
        Ok(rate::in_force(schedule, at).and_then(|entry| entry.rate.value_in_source(amount)))
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

pub fn profitability(conn: &mut dyn Conn, mode: Mode, scope: &Scope, currency: &str) -> Result<Profitability, OpError> {
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

/// A vendor's costs in a period by category, in `currency`.
pub fn vendor_costs(
    conn: &mut dyn Conn,
    vendor_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    category: Option<&str>,
    currency: &str,
) -> Result<(Decimal, Vec<(String, Decimal)>), OpError> {
    let mut by_category: Vec<(String, Decimal)> = Vec::new();
    let mut total = Decimal::ZERO;
    for (cost_category, amount, cost_currency) in crate::repo::vendors::costs(conn, vendor_id, from, to)? {
        let name = cost_category.unwrap_or_else(|| "uncategorized".to_owned());
        if cost_currency != currency || category.is_some_and(|wanted| wanted != name) {
            continue;
        }
        total += amount;
        match by_category.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, sum)) => *sum += amount,
            None => by_category.push((name, amount)),
        }
    }
    by_category.sort_by(|left, right| left.0.cmp(&right.0));
    Ok((total.normalize(), by_category.into_iter().map(|(name, sum)| (name, sum.normalize())).collect()))
}
