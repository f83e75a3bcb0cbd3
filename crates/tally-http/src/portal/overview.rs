//! What the home page adds to reconcile a balance: each account's grants (paid,
//! promotional, included in the plan) with what remains and when each expires or renews,
//! credit on its way and holds, an overdrawn account's debt with a way to pay it, the
//! subscription (plan, what it includes, next renewal), and spend per product per day of the
//! customer's calendar, plan fees apart.

use super::format::AssetLook;
use super::locale::{plural_label, Viewer};
use super::{account_id, look_of, TopUpOption};
use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, Utc};
use maud::{html, Markup};
use rust_decimal::{Decimal, RoundingStrategy};
use std::collections::{BTreeMap, HashMap};
use tally_core::catalog::{FixedBilling, Interval};
use tally_core::wallet::{Grant, GrantState, Purpose};
use tally_store::ops::products::Catalog;
use tally_store::ops::spend as spend_ops;
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

/// What the customer spent on their own calendar (the `Viewer`'s zone): this month and
/// each of the last [`CHART_DAYS`] days.
#[derive(Debug, Clone, PartialEq)]
pub struct Spend {
    /// The first day of the customer's month.
    pub month_start: NaiveDate,
    /// This month's spend per asset, fees of every kind, in asset order.
    pub month: Vec<(String, Decimal)>,
    /// The first of the charts' days; the last is today.
    pub first_day: NaiveDate,
    /// Spend per asset, product and day of the charts' days, plan fees apart.
    pub days: Vec<ProductSpend>,
}

impl Spend {
    /// Every asset spent in.
    pub fn assets(&self) -> impl Iterator<Item = &String> {
        self.month.iter().map(|(asset, _)| asset).chain(self.days.iter().map(|group| &group.asset))
    }
}

/// The customer's spend this month and on each of the last [`CHART_DAYS`] days to today,
/// their month and days starting at midnight in their zone. Exact in any zone, including
/// those whose offset from UTC is not whole hours (`ops::spend`): three statements, however
/// many fees.
pub fn spend(
    conn: &mut dyn Conn,
    mode: tally_core::Mode,
    customer_id: &str,
    viewer: &Viewer,
    now: DateTime<Utc>,
) -> Result<Spend, OpError> {
    let today = viewer.local_day(now);
    let month_start = today.with_day(1).unwrap_or(today);
    let next_month = month_start.checked_add_months(Months::new(1)).unwrap_or(today + Duration::days(1));
    let first_day = today - Duration::days(CHART_DAYS - 1);
    let mut days: Vec<NaiveDate> = (0..=CHART_DAYS).map(|offset| first_day + Duration::days(offset)).collect();
    days.extend([month_start, next_month]);
    // Each period runs from the start of a day to the start of the next bound's day. (A day a
    // zone skipped whole starts where the next one does, and drops out.)
    let mut starts: Vec<(DateTime<Utc>, NaiveDate)> = days.iter().map(|day| (viewer.day_start(*day), *day)).collect();
    starts.sort();
    starts.dedup_by_key(|(at, _)| *at);
    let bounds: Vec<DateTime<Utc>> = starts.iter().map(|(at, _)| *at).collect();
    let periods = spend_ops::customer_spend(conn, mode, customer_id, &bounds)?;
    let mut ids: Vec<String> = periods.iter().map(|row| row.product_id.clone()).filter(|id| !id.is_empty()).collect();
    ids.sort();
    ids.dedup();
    let names: HashMap<String, String> = activity_repo::product_names(conn, mode, &ids)?.into_iter().collect();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let mut month: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut by_day = Vec::new();
    for row in periods {
        let day = starts[row.period].1;
        if month_start <= day && day < next_month {
            *month.entry(row.asset.clone()).or_default() += row.spent;
        }
        if first_day <= day && day <= today {
            by_day.push(ProductSpend {
                product: (!row.product_id.is_empty())
                    .then(|| names.get(&row.product_id).cloned().unwrap_or(row.product_id.clone())),
                plan_fee: row.source == rollups::PLAN,
                asset: row.asset,
                spent: row.spent,
                day: (day - epoch).num_days(),
                count: 1,
            });
        }
    }
    Ok(Spend {
        month_start,
        month: month.into_iter().map(|(asset, total)| (asset, total.normalize())).collect(),
        first_day,
        days: by_day,
    })
}

/// Spend per product per day of the customer's calendar, the last [`CHART_DAYS`] days to
/// today.
pub fn product_charts(spend: &Spend, looks: &HashMap<String, AssetLook>) -> Vec<ProductChart> {
    charts_of(&spend.days, looks, spend.first_day)
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
) -> Markup {
    let key = &account.key;
    let state = &account.state;
    let mut lines = grant_lines(viewer, look, &state.grants, renewing, now);
    let more = lines.len().saturating_sub(MAX_GRANT_LINES);
    lines.truncate(MAX_GRANT_LINES);
    if more > 0 {
        lines.push(format!("and {more} more"));
    }
    if !state.pending_out.is_zero() {
        lines.push(format!("{} on hold", viewer.amount(look, state.pending_out)));
    }
    let overdrawn = state.available < Decimal::ZERO;
    html! {
        div.card.overdrawn[overdrawn] data-account=(account_id(key)) {
            h2 { (look.name) }
            p class="balance" { (viewer.amount(look, state.available)) }
            p class="muted" {
                (if overdrawn { "owed" } else { "available" })
                @if key.name != "default" { " \u{b7} " (key.name) }
            }
            @if overdrawn {
                p class="owed" role="alert" {
                    "Overdrawn: you owe " (viewer.amount(look, -state.available)) "."
                    @if let Some(href) = pay_now { " " a class="button pay-now" href=(href) { "Pay now" } }
                }
            }
            @if !lines.is_empty() { ul class="grants" { @for line in &lines { li { (line) } } } }
        }
    }
}

pub fn plan_cards(viewer: &Viewer, plans: &[Plan], now: DateTime<Utc>) -> Markup {
    let _ = now;
    let renewal = |plan: &Plan| match plan.renews_at {
        Some(at) if plan.renewal.is_empty() => format!("Renews {}.", viewer.date(viewer.local_day(at))),
        Some(at) => format!(
            "Renews {} for {}.",
            viewer.date(viewer.local_day(at)),
            plan.renewal.iter().map(|(look, amount)| viewer.amount(look, *amount)).collect::<Vec<_>>().join(" + ")
        ),
        None => String::new(),
    };
    let status = |plan: &Plan| match plan.status {
        SubscriptionStatus::Active => "",
        SubscriptionStatus::Scheduled => " (starts later)",
        SubscriptionStatus::ActionRequired => " (waiting for a payment)",
        SubscriptionStatus::Inactive => " (ended)",
    };
    html! {
        @if !plans.is_empty() {
            h2 { "Your plan" }
            @for plan in plans {
                div class="card plan" {
                    h3 { (plan.name) (status(plan)) }
                    @if !plan.includes.is_empty() { ul class="grants" { @for line in &plan.includes { li { (line) } } } }
                    p class="renewal" { (renewal(plan)) }
                }
            }
        }
    }
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
pub fn product_chart(viewer: &Viewer, chart: &ProductChart) -> Markup {
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
    // Coordinates to a tenth of a pixel.
    let px = |value: f64| format!("{value:.1}");
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
    let ticks: Vec<(f64, String)> = (0..=4)
        .map(|tick| {
            let value = step * Decimal::from(tick);
            (TOP + plot - share(value) * plot, axis_label(value))
        })
        .collect();
    /// One bar of one product on one day: series, x, y, height, and what it shows.
    struct Bar {
        series: usize,
        x: f64,
        y: f64,
        height: f64,
        label: String,
    }
    let mut bars = Vec::new();
    for (index, day) in chart.days.iter().enumerate() {
        let mut base = 0.0;
        for (series, (product, spent)) in chart.products.iter().enumerate() {
            let amount = spent[index];
            if amount.is_zero() {
                continue;
            }
            let height = (share(amount) * plot).max(2.0);
            bars.push(Bar {
                series: series % 6,
                x: LEFT + index as f64 * slot + slot * 0.15,
                y: TOP + plot - base - height,
                height,
                label: format!("{}: {} {}", viewer.day_month(*day), product, viewer.amount(look, amount)),
            });
            base += height;
        }
    }
    // A date every five days, and the last day at the right edge.
    let last = chart.days.len().saturating_sub(1);
    let dates: Vec<(f64, &str, String)> = chart
        .days
        .iter()
        .enumerate()
        .filter(|(index, _)| index.is_multiple_of(5) || *index == last)
        .map(|(index, day)| {
            let (x, anchor) =
                if index == last { (WIDTH, "end") } else { (LEFT + index as f64 * slot + slot / 2.0, "middle") };
            (x, anchor, viewer.day_month(*day))
        })
        .collect();
    let plan_total: Decimal = chart.plan_fees.iter().copied().sum();
    let plan_days: Vec<String> = chart
        .days
        .iter()
        .zip(&chart.plan_fees)
        .filter(|(_, amount)| !amount.is_zero())
        .map(|(day, amount)| format!("{} {}", viewer.day_month(*day), viewer.amount(look, *amount)))
        .collect();
    let rows: Vec<(NaiveDate, String, Decimal)> = chart
        .days
        .iter()
        .enumerate()
        .flat_map(|(index, day)| {
            chart
                .products
                .iter()
                .filter(move |(_, spent)| !spent[index].is_zero())
                .map(move |(product, spent)| (*day, product.clone(), spent[index]))
                .chain(
                    (!chart.plan_fees[index].is_zero()).then(|| (*day, "Plan fees".to_owned(), chart.plan_fees[index])),
                )
        })
        .collect();
    let usage_total: Decimal = totals.iter().copied().sum();
    html! {
        figure class="chart" data-asset=(look.code) {
            figcaption {
                (look.name) ": " (viewer.amount(look, usage_total)) " of usage over " (CHART_DAYS) " days"
                @if !look.is_currency { " " span class="muted" { "(axis in " (look.label) ")" } }
            }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
                aria-label={ (look.name) ": daily usage by product; the table below has the same figures" } {
                @for (y, label) in &ticks {
                    line x1=(LEFT) y1=(px(*y)) x2=(WIDTH) y2=(px(*y)) class="grid-line" {}
                    text x=(px(LEFT - 6.0)) y=(px(y + 4.0)) class="axis-label" text-anchor="end" { (label) }
                }
                @for bar in &bars {
                    rect class={ "series-" (bar.series) } x=(px(bar.x)) y=(px(bar.y)) width=(px(slot * 0.7))
                        height=(px(bar.height)) data-value=(bar.label) { title { (bar.label) } }
                }
                @for (x, anchor, label) in &dates {
                    text x=(px(*x)) y=(px(HEIGHT - 6.0)) class="axis-label" text-anchor=(anchor) { (label) }
                }
            }
            output class="chart-value" aria-live="polite" {}
            ul class="legend" {
                @for (series, (product, spent)) in chart.products.iter().enumerate() {
                    li {
                        span class={ "swatch series-" (series % 6) } aria-hidden="true" {}
                        (product) ": " (viewer.amount(look, spent.iter().copied().sum()))
                    }
                }
            }
            @if !plan_total.is_zero() {
                p class="plan-fees" {
                    "Plan fees, apart from usage: " (viewer.amount(look, plan_total)) " (" (plan_days.join(", ")) ")"
                }
            }
            details {
                summary { "Daily spend of " (look.name) " as a table" }
                table class="stack" {
                    thead {
                        tr { th scope="col" { "Day" } th scope="col" { "Product" } th scope="col" class="amount" { "Spent" } }
                    }
                    tbody {
                        @for (day, product, amount) in &rows {
                            tr {
                                td data-label="Day" { (viewer.day_month(*day)) }
                                td data-label="Product" { (product) }
                                td data-label="Spent" class="amount" { (viewer.amount(look, *amount)) }
                            }
                        }
                    }
                }
                p class="muted" { "Days without spend are left out." }
            }
        }
    }
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
        let svg = product_chart(&Viewer::default(), chart).into_string();
        assert_eq!(svg.matches("<rect").count(), 2, "two products on one day, plan fees not stacked on usage");
        assert!(svg.contains("Plan fees, apart from usage: 10 CRED"), "{svg}");
    }
}
