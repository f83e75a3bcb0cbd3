//! What the home page adds to reconcile a balance: each account's grants (paid,
//! promotional, included in the plan) with what remains and when each expires or renews,
//! credit on its way and holds, an overdrawn account's debt with a way to pay it, the
//! subscription (plan, what it includes, next renewal), and spend per product per day of the
//! customer's calendar, plan fees apart.

use super::format::AssetLook;
use super::locale::{plural_label, Viewer};
use super::{account_id, look_of, TopUpOption};
use crate::html::escape;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use std::collections::{BTreeMap, HashMap};
use tally_core::catalog::{FixedBilling, Interval};
use tally_core::wallet::{Grant, GrantState, Purpose};
use tally_store::ops::products::Catalog;
use tally_store::ops::OpError;
use tally_store::repo::activity::{self as activity_repo, ProductSpend};
use tally_store::repo::rollups;
use tally_store::repo::subscriptions::{self as subscription_repo, SubscriptionStatus};
use tally_store::repo::wallets::Account;
use tally_store::Conn;

/// Days the spend charts cover.
pub const CHART_DAYS: i64 = 30;

/// A subscription as the customer reads it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub status: SubscriptionStatus,
    /// "150 credits every month".
    pub includes: Vec<String>,
    pub renews_at: Option<DateTime<Utc>>,
    /// What the next renewal costs, per asset.
    pub renewal: Vec<(AssetLook, Decimal)>,
}

/// One asset's spend per day of the chart's window, per product; plan fees apart.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductChart {
    pub look: AssetLook,
    pub days: Vec<NaiveDate>,
    /// Each product (charges without one as "Other charges") with its spend per day.
    pub products: Vec<(String, Vec<Decimal>)>,
    /// Plan fees per day: drawn apart from usage.
    pub plan_fees: Vec<Decimal>,
}

/// Interval names for "every month", "every 3 months".
fn every(interval: Interval, count: u32) -> String {
    let unit = match interval {
        Interval::Day => "day",
        Interval::Week => "week",
        Interval::Month => "month",
        Interval::Year => "year",
    };
    match count {
        1 => format!("every {unit}"),
        count => format!("every {count} {unit}s"),
    }
}

/// The customer's subscriptions that are not over, with their product versions.
pub fn plans(
    conn: &mut dyn Conn,
    mode: tally_core::Mode,
    customer_id: &str,
    catalog: &dyn Catalog,
    looks: &dyn Fn(&mut dyn Conn, &str) -> Result<AssetLook, OpError>,
    viewer: &Viewer,
) -> Result<Vec<Plan>, OpError> {
    let mut plans = Vec::new();
    for subscription in subscription_repo::for_customer(conn, customer_id)? {
        if subscription.status == SubscriptionStatus::Inactive {
            continue;
        }
        let mut names = Vec::new();
        let mut includes = Vec::new();
        let mut renewal: BTreeMap<String, Decimal> = BTreeMap::new();
        for pinned in &subscription.products {
            let version = catalog.version(conn, mode, &pinned.product_id, pinned.version)?;
            names.push(version.product_name.clone());
            for entitlement in &version.entitlements {
                let look = looks(conn, &entitlement.asset)?;
                let kind = match entitlement.purpose {
                    Purpose::Promotion => "promotional ",
                    Purpose::Bundled | Purpose::Paid => "",
                };
                includes.push(format!(
                    "{} {kind}{}",
                    viewer.amount(&look, entitlement.amount),
                    every(entitlement.duration, entitlement.duration_count)
                ));
            }
            for price in &version.fixed_prices {
                if let FixedBilling::Recurring { interval, count } = price.billing {
                    *renewal.entry(price.asset.clone()).or_default() += price.amount;
                    let look = looks(conn, &price.asset)?;
                    includes.push(format!(
                        "{}: {} {}",
                        price.name,
                        viewer.amount(&look, price.amount),
                        every(interval, count)
                    ));
                }
            }
        }
        let mut priced = Vec::new();
        for (asset, amount) in renewal {
            priced.push((looks(conn, &asset)?, amount));
        }
        plans.push(Plan {
            name: names.join(" + "),
            status: subscription.status,
            includes,
            renews_at: subscription.renews_at,
            renewal: priced,
        });
    }
    Ok(plans)
}

/// Spend per product per day of the customer's calendar, the last [`CHART_DAYS`] days to
/// `today`, added exactly from groups of equal fees.
pub fn product_charts(
    conn: &mut dyn Conn,
    mode: tally_core::Mode,
    customer_id: &str,
    viewer: &Viewer,
    now: DateTime<Utc>,
    looks: &HashMap<String, AssetLook>,
) -> Result<Vec<ProductChart>, OpError> {
    let today = viewer.local_day(now);
    let first = today - Duration::days(CHART_DAYS - 1);
    // Hourly totals (`repo::rollups`): an hour falls on the customer's day it starts in,
    // exact for every zone whose offset is whole hours.
    let hours = rollups::customer_spend(conn, mode, customer_id, rollups::hour_of(viewer.day_start(first)))?;
    let mut ids: Vec<String> = hours.iter().map(|hour| hour.product_id.clone()).filter(|id| !id.is_empty()).collect();
    ids.sort();
    ids.dedup();
    let names: HashMap<String, String> = activity_repo::product_names(conn, mode, &ids)?.into_iter().collect();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let groups: Vec<ProductSpend> = hours
        .into_iter()
        .map(|hour| {
            let day = viewer.local_day(rollups::period_start(hour.hour, rollups::MICROS_PER_HOUR));
            ProductSpend {
                product: (!hour.product_id.is_empty())
                    .then(|| names.get(&hour.product_id).cloned().unwrap_or(hour.product_id.clone())),
                plan_fee: hour.source == rollups::PLAN,
                asset: hour.asset,
                spent: hour.spent,
                day: (day - epoch).num_days(),
                count: 1,
            }
        })
        .collect();
    Ok(charts_of(&groups, looks, first))
}

fn charts_of(groups: &[ProductSpend], looks: &HashMap<String, AssetLook>, first: NaiveDate) -> Vec<ProductChart> {
    let days: Vec<NaiveDate> = (0..CHART_DAYS).map(|offset| first + Duration::days(offset)).collect();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    /// Per product the spend of each day, and the plan fees of each day.
    type Days = (BTreeMap<String, Vec<Decimal>>, Vec<Decimal>);
    let mut by_asset: BTreeMap<&str, Days> = BTreeMap::new();
    for group in groups {
        let day = epoch + Duration::days(group.day);
        let Some(index) = days.iter().position(|candidate| *candidate == day) else { continue };
        let (products, plan_fees) =
            by_asset.entry(&group.asset).or_insert_with(|| (BTreeMap::new(), vec![Decimal::ZERO; days.len()]));
        let spent = group.spent * Decimal::from(group.count);
        if group.plan_fee {
            plan_fees[index] += spent;
        } else {
            let name = group.product.clone().unwrap_or_else(|| "Other charges".to_owned());
            products.entry(name).or_insert_with(|| vec![Decimal::ZERO; days.len()])[index] += spent;
        }
    }
    by_asset
        .into_iter()
        .map(|(asset, (products, plan_fees))| ProductChart {
            look: look_of(looks, asset),
            days: days.clone(),
            products: products
                .into_iter()
                .map(|(name, spent)| (name, spent.into_iter().map(|amount| amount.normalize()).collect()))
                .collect(),
            plan_fees: plan_fees.into_iter().map(|amount| amount.normalize()).collect(),
        })
        .collect()
}

/// What `owed` of an account's asset costs in the first currency that buys it, rounded up to
/// that currency's minor units: the amount the "pay now" link fills in.
pub fn pay_now_link(account: &Account, options: &[TopUpOption]) -> Option<String> {
    let owed = -account.state.available;
    if owed <= Decimal::ZERO {
        return None;
    }
    let option = options.iter().find(|option| option.asset.code == account.key.asset)?;
    let price = option.rate.value_in_source(owed)?;
    let amount = price.round_dp_with_strategy(option.currency.precision, RoundingStrategy::AwayFromZero).normalize();
    let mut amount = amount;
    amount.rescale(option.currency.precision.max(amount.scale()));
    Some(format!("/portal/top-ups?option={}&amount={amount}", super::url_escape(&option.value())))
}

/// A day soon shown without its year; one further off with it.
fn when(viewer: &Viewer, at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let day = viewer.local_day(at);
    if at - now < Duration::days(300) {
        viewer.day_month(day)
    } else {
        viewer.date(day)
    }
}

/// "150 included credits" for a custom asset, "$5.00 included" for a currency, and whether
/// it is one (for the verb that follows).
fn described(viewer: &Viewer, look: &AssetLook, amount: Decimal, kind: &str) -> (String, bool) {
    if look.is_currency {
        return (format!("{} {kind}", viewer.amount(look, amount)), false);
    }
    let number = viewer.number(amount, look.precision);
    let one = number == "1";
    (format!("{number} {kind} {}", plural_label(&look.label, one)), one)
}

/// One line per grant with something left, in burn order: "150 included credits, renew 2
/// Jan", "20 promotional credits expire 15 Jan", "1 paid credit arrives 3 Jan".
pub fn grant_lines(
    viewer: &Viewer,
    look: &AssetLook,
    grants: &[Grant],
    renewing: bool,
    now: DateTime<Utc>,
) -> Vec<String> {
    grants
        .iter()
        .filter(|grant| grant.remaining > Decimal::ZERO)
        .map(|grant| {
            let kind = match grant.purpose {
                Purpose::Paid => "paid",
                Purpose::Promotion => "promotional",
                Purpose::Bundled => "included",
            };
            let (text, one) = described(viewer, look, grant.remaining, kind);
            let verb = |plural: &str| if one { format!("{plural}s") } else { plural.to_owned() };
            if grant.state == GrantState::Pending {
                return format!("{text} {} {}", verb("arrive"), when(viewer, grant.effective_at, now));
            }
            match (grant.purpose, grant.expires_at) {
                (Purpose::Bundled, Some(at)) if renewing => {
                    format!("{text}, {} {}", verb("renew"), when(viewer, at, now))
                }
                (_, Some(at)) => format!("{text} {} {}", verb("expire"), when(viewer, at, now)),
                (_, None) => text,
            }
        })
        .collect()
}

/// Grant lines shown on a card before "and N more".
const MAX_GRANT_LINES: usize = 6;

/// A balance card: the balance, its grants, holds, and for an overdrawn account what is
/// owed and a way to pay it.
pub fn account_card(
    viewer: &Viewer,
    account: &Account,
    look: &AssetLook,
    pay_now: Option<&str>,
    renewing: bool,
    now: DateTime<Utc>,
) -> String {
    let key = &account.key;
    let state = &account.state;
    let name = if key.name == "default" { String::new() } else { format!(" · {}", escape(&key.name)) };
    let mut lines = grant_lines(viewer, look, &state.grants, renewing, now);
    let more = lines.len().saturating_sub(MAX_GRANT_LINES);
    lines.truncate(MAX_GRANT_LINES);
    if more > 0 {
        lines.push(format!("and {more} more"));
    }
    if !state.pending_out.is_zero() {
        lines.push(format!("{} on hold", viewer.amount(look, state.pending_out)));
    }
    let grants: String = lines.iter().map(|line| format!("<li>{}</li>", escape(line))).collect();
    let grants = if grants.is_empty() { String::new() } else { format!(r#"<ul class="grants">{grants}</ul>"#) };
    let overdrawn = state.available < Decimal::ZERO;
    let warning = if overdrawn {
        let pay = pay_now
            .map(|href| format!(r#" <a class="button pay-now" href="{}">Pay now</a>"#, escape(href)))
            .unwrap_or_default();
        format!(
            r#"<p class="owed" role="alert">Overdrawn: you owe {}.{pay}</p>"#,
            escape(&viewer.amount(look, -state.available))
        )
    } else {
        String::new()
    };
    format!(
        r#"<div class="card{class}" data-account="{id}"><h2>{asset}</h2><p class="balance">{balance}</p><p class="muted">{status}{name}</p>{warning}{grants}</div>"#,
        class = if overdrawn { " overdrawn" } else { "" },
        id = escape(&account_id(key)),
        asset = escape(&look.name),
        balance = escape(&viewer.amount(look, state.available)),
        status = if overdrawn { "owed" } else { "available" },
    )
}

pub fn plan_cards(viewer: &Viewer, plans: &[Plan], now: DateTime<Utc>) -> String {
    if plans.is_empty() {
        return String::new();
    }
    let cards: String = plans
        .iter()
        .map(|plan| {
            let includes: String = plan.includes.iter().map(|line| format!("<li>{}</li>", escape(line))).collect();
            let renewal = match plan.renews_at {
                Some(at) if plan.renewal.is_empty() => format!("Renews {}.", viewer.date(viewer.local_day(at))),
                Some(at) => format!(
                    "Renews {} for {}.",
                    viewer.date(viewer.local_day(at)),
                    plan.renewal
                        .iter()
                        .map(|(look, amount)| viewer.amount(look, *amount))
                        .collect::<Vec<_>>()
                        .join(" + ")
                ),
                None => String::new(),
            };
            let status = match plan.status {
                SubscriptionStatus::Active => String::new(),
                SubscriptionStatus::Scheduled => " (starts later)".to_owned(),
                SubscriptionStatus::ActionRequired => " (waiting for a payment)".to_owned(),
                SubscriptionStatus::Inactive => " (ended)".to_owned(),
            };
            let _ = now;
            format!(
                r#"<div class="card plan"><h3>{name}{status}</h3>{includes}<p class="renewal">{renewal}</p></div>"#,
                name = escape(&plan.name),
                status = escape(&status),
                includes =
                    if includes.is_empty() { String::new() } else { format!(r#"<ul class="grants">{includes}</ul>"#) },
                renewal = escape(&renewal),
            )
        })
        .collect();
    format!(r#"<h2>Your plan</h2>{cards}"#)
}

/// The chart's value axis: a round step so that 4 steps cover `max`.
fn axis_step(max: Decimal) -> Decimal {
    if max <= Decimal::ZERO {
        return Decimal::ONE;
    }
    let rough = max / Decimal::from(4);
    let mut magnitude = Decimal::ONE;
    while magnitude * Decimal::TEN <= rough {
        magnitude *= Decimal::TEN;
    }
    while magnitude > rough && magnitude > Decimal::new(1, 12) {
        magnitude /= Decimal::TEN;
    }
    for factor in [1, 2, 5, 10] {
        let step = magnitude * Decimal::from(factor);
        if step * Decimal::from(4) >= max {
            return step.normalize();
        }
    }
    (magnitude * Decimal::TEN).normalize()
}

/// Stacked bars of one asset's daily spend by product, as inline SVG with a labelled value
/// axis and a date label every five days; each bar names its day, product and amount on
/// hover (`title`) and, through the page's script, on tap. Plan fees are drawn in their
/// own row of bars under the usage. The table that follows is the same data for screen
/// readers and anyone who prefers it.
pub fn product_chart(viewer: &Viewer, chart: &ProductChart) -> String {
    const WIDTH: f64 = 640.0;
    const LEFT: f64 = 70.0;
    const TOP: f64 = 10.0;
    const HEIGHT: f64 = 170.0;
    const BOTTOM: f64 = 24.0;
    let look = &chart.look;
    let count = chart.days.len().max(1);
    let totals: Vec<Decimal> = (0..chart.days.len())
        .map(|index| chart.products.iter().map(|(_, spent)| spent[index]).sum::<Decimal>())
        .collect();
    let max = totals.iter().copied().max().unwrap_or_default();
    let step = axis_step(max);
    let top_value = step * Decimal::from(4);
    let plot = HEIGHT - TOP - BOTTOM;
    let slot = (WIDTH - LEFT) / count as f64;
    // The axis names amounts of a currency with its sign; a custom asset's numbers stand
    // alone, its unit named in the caption, so that long labels fit.
    let axis_label = |value: Decimal| {
        if look.is_currency {
            viewer.amount(look, value)
        } else {
            viewer.number(value, look.precision)
        }
    };
    let share = |amount: Decimal| -> f64 {
        // Floats only place pixels; every amount shown as text stays exact.
        if top_value.is_zero() {
            0.0
        } else {
            (amount / top_value).to_string().parse::<f64>().unwrap_or(0.0)
        }
    };
    let mut svg = String::new();
    for tick in 0..=4 {
        let value = step * Decimal::from(tick);
        let y = TOP + plot - share(value) * plot;
        svg.push_str(&format!(
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{WIDTH}" y2="{y:.1}" class="grid-line"/><text x="{x:.1}" y="{ty:.1}" class="axis-label" text-anchor="end">{label}</text>"#,
            x = LEFT - 6.0,
            ty = y + 4.0,
            label = escape(&axis_label(value)),
        ));
    }
    for (index, day) in chart.days.iter().enumerate() {
        let mut base = 0.0;
        for (series, (product, spent)) in chart.products.iter().enumerate() {
            let amount = spent[index];
            if amount.is_zero() {
                continue;
            }
            let height = (share(amount) * plot).max(2.0);
            let label = format!("{}: {} {}", viewer.day_month(*day), product, viewer.amount(look, amount));
            svg.push_str(&format!(
                r#"<rect class="series-{class}" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{height:.1}" data-value="{label}"><title>{label}</title></rect>"#,
                class = series % 6,
                x = LEFT + index as f64 * slot + slot * 0.15,
                y = TOP + plot - base - height,
                w = slot * 0.7,
                label = escape(&label),
            ));
            base += height;
        }
        let last = index + 1 == chart.days.len();
        if index % 5 == 0 || last {
            svg.push_str(&format!(
                r#"<text x="{x:.1}" y="{y:.1}" class="axis-label" text-anchor="{anchor}">{label}</text>"#,
                anchor = if last { "end" } else { "middle" },
                x = if last { WIDTH } else { LEFT + index as f64 * slot + slot / 2.0 },
                y = HEIGHT - 6.0,
                label = escape(&viewer.day_month(*day)),
            ));
        }
    }
    let legend: String = chart
        .products
        .iter()
        .enumerate()
        .map(|(series, (product, spent))| {
            format!(
                r#"<li><span class="swatch series-{}" aria-hidden="true"></span>{}: {}</li>"#,
                series % 6,
                escape(product),
                escape(&viewer.amount(look, spent.iter().copied().sum())),
            )
        })
        .collect();
    let plan_total: Decimal = chart.plan_fees.iter().copied().sum();
    let plan = if plan_total.is_zero() {
        String::new()
    } else {
        let days: Vec<String> = chart
            .days
            .iter()
            .zip(&chart.plan_fees)
            .filter(|(_, amount)| !amount.is_zero())
            .map(|(day, amount)| format!("{} {}", viewer.day_month(*day), viewer.amount(look, *amount)))
            .collect();
        format!(
            r#"<p class="plan-fees">Plan fees, apart from usage: {} ({})</p>"#,
            escape(&viewer.amount(look, plan_total)),
            escape(&days.join(", "))
        )
    };
    let rows: String = chart
        .days
        .iter()
        .enumerate()
        .flat_map(|(index, day)| {
            chart
                .products
                .iter()
                .filter(move |(_, spent)| !spent[index].is_zero())
                .map(move |(product, spent)| (index, day, product.clone(), spent[index]))
                .chain((!chart.plan_fees[index].is_zero()).then(|| (index, day, "Plan fees".to_owned(), chart.plan_fees[index])))
        })
        .map(|(_, day, product, amount)| {
            format!(
                r#"<tr><td data-label="Day">{}</td><td data-label="Product">{}</td><td data-label="Spent" class="amount">{}</td></tr>"#,
                escape(&viewer.day_month(*day)),
                escape(&product),
                escape(&viewer.amount(look, amount))
            )
        })
        .collect();
    let usage_total: Decimal = totals.iter().copied().sum();
    format!(
        r#"<figure class="chart" data-asset="{code}"><figcaption>{name}: {total} of usage over {CHART_DAYS} days{unit}</figcaption>
<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{name}: daily usage by product; the table below has the same figures">{svg}</svg>
<output class="chart-value" aria-live="polite"></output><ul class="legend">{legend}</ul>{plan}
<details><summary>Daily spend of {name} as a table</summary>
<table class="stack"><thead><tr><th scope="col">Day</th><th scope="col">Product</th><th scope="col" class="amount">Spent</th></tr></thead><tbody>{rows}</tbody></table>
<p class="muted">Days without spend are left out.</p></details></figure>"#,
        code = escape(&look.code),
        name = escape(&look.name),
        total = escape(&viewer.amount(look, usage_total)),
        unit = if look.is_currency {
            String::new()
        } else {
            format!(" <span class=\"muted\">(axis in {})</span>", escape(&look.label))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn axis_steps_are_round() {
        assert_eq!(axis_step(d("7")), d("2"));
        assert_eq!(axis_step(d("100")), d("50"));
        assert_eq!(axis_step(d("0.03")), d("0.01"));
        assert_eq!(axis_step(Decimal::ZERO), Decimal::ONE);
        assert_eq!(axis_step(d("20")), d("5"));
    }

    #[test]
    fn charts_split_products_and_keep_plan_fees_apart() {
        let first = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let day = (first - epoch).num_days() + 2;
        let group = |product: Option<&str>, plan_fee: bool, spent: &str, count: i64| ProductSpend {
            asset: "CRED".into(),
            product: product.map(str::to_owned),
            plan_fee,
            spent: d(spent),
            day,
            count,
        };
        let charts = charts_of(
            &[group(Some("Video"), false, "2", 3), group(Some("Audio"), false, "0.5", 1), group(None, true, "10", 1)],
            &HashMap::new(),
            first,
        );
        assert_eq!(charts.len(), 1);
        let chart = &charts[0];
        assert_eq!(chart.products.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["Audio", "Video"]);
        assert_eq!(chart.products[1].1[2], d("6"));
        assert_eq!(chart.plan_fees[2], d("10"));
        let svg = product_chart(&Viewer::default(), chart);
        assert_eq!(svg.matches("<rect").count(), 2, "two products on one day, plan fees not stacked on usage");
        assert!(svg.contains("Plan fees, apart from usage: 10 CRED"), "{svg}");
    }
}
