//! How amounts, dates and spend look on the portal's pages: numbers at the asset's precision
//! with digit grouping, the asset's label or the currency's sign, and a bar chart of daily
//! spend drawn as inline SVG on the server, with a table beside it for screen readers.

use crate::html::escape;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use tally_store::ops::assets::KnownAsset;

/// What the portal needs to show amounts of one asset.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetLook {
    pub code: String,
    /// The customer-facing name: "Video Generation Minutes", or the currency code.
    pub name: String,
    /// The short unit shown after numbers: "MIN", or the currency code.
    pub label: String,
    pub symbol: Option<String>,
    pub precision: u32,
    pub is_currency: bool,
}

impl AssetLook {
    pub fn of(known: &KnownAsset) -> AssetLook {
        match known {
            KnownAsset::Custom(asset) => AssetLook {
                code: asset.code.clone(),
                name: asset.name.clone(),
                label: asset.label.clone(),
                symbol: asset.symbol.clone(),
                precision: asset.precision,
                is_currency: false,
            },
            KnownAsset::Currency { code, minor_units } => AssetLook {
                code: code.clone(),
                name: code.clone(),
                label: code.clone(),
                symbol: currency_sign(code).map(str::to_owned),
                precision: *minor_units,
                is_currency: true,
            },
        }
    }

    /// An asset Tally no longer knows (deleted, say): shown by its code, exactly.
    pub fn unknown(code: &str) -> AssetLook {
        AssetLook {
            code: code.to_owned(),
            name: code.to_owned(),
            label: code.to_owned(),
            symbol: None,
            precision: 0,
            is_currency: false,
        }
    }

    /// The number alone, grouped, with at least the asset's precision in decimals (more only
    /// when the amount really has more digits: nothing is hidden by rounding).
    pub fn number(&self, value: Decimal) -> String {
        number(value.abs(), self.precision)
    }

    /// A signed amount with its unit: "-2.00 MIN", "$12.34", "-€0.50", "1,000 JPY" (text).
    pub fn amount(&self, value: Decimal) -> String {
        let sign = if value < Decimal::ZERO { "-" } else { "" };
        let digits = self.number(value);
        match (&self.symbol, self.is_currency) {
            (Some(symbol), true) => format!("{sign}{symbol}{digits}"),
            _ => format!("{sign}{digits} {}", self.label),
        }
    }
}

/// The sign of the commonest currencies; others are written by their code.
fn currency_sign(code: &str) -> Option<&'static str> {
    match code {
        "USD" => Some("$"),
        "EUR" => Some("€"),
        "GBP" => Some("£"),
        "JPY" => Some("¥"),
        "INR" => Some("₹"),
        _ => None,
    }
}

/// `value` (not negative) with thousands grouped by commas and at least `places` decimals.
pub fn number(value: Decimal, places: u32) -> String {
    let normalized = value.normalize();
    let mut shown = normalized;
    shown.rescale(places.max(normalized.scale()));
    let text = shown.to_string();
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole.to_owned(), Some(fraction.to_owned())),
        None => (text, None),
    };
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    match fraction {
        Some(fraction) => format!("{grouped}.{fraction}"),
        None => grouped,
    }
}

pub fn date_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

pub fn date(at: NaiveDate) -> String {
    at.format("%b %-d").to_string()
}

/// One asset's spend per day, oldest first, every day of the window present.
#[derive(Debug, Clone, PartialEq)]
pub struct DailySpend {
    pub look: AssetLook,
    pub days: Vec<(NaiveDate, Decimal)>,
}

/// Bars of daily spend as inline SVG (decorative to assistive technology, which gets the
/// table that follows it), plus that table.
pub fn spend_chart(spend: &DailySpend) -> String {
    const WIDTH: usize = 600;
    const HEIGHT: usize = 160;
    const AXIS: usize = 2;
    let look = &spend.look;
    let max = spend.days.iter().map(|(_, amount)| *amount).max().unwrap_or_default();
    let count = spend.days.len().max(1);
    let slot = WIDTH as f64 / count as f64;
    let mut bars = String::new();
    for (index, (day, amount)) in spend.days.iter().enumerate() {
        // Floats only place pixels here; amounts shown as text stay exact.
        let share = if max.is_zero() { 0.0 } else { (*amount / max).to_string().parse::<f64>().unwrap_or(0.0) };
        let height = (share * (HEIGHT - AXIS) as f64).max(if amount.is_zero() { 0.0 } else { 2.0 });
        bars.push_str(&format!(
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{height:.1}" rx="2"><title>{label}: {value}</title></rect>"#,
            x = index as f64 * slot + slot * 0.15,
            y = (HEIGHT - AXIS) as f64 - height,
            w = slot * 0.7,
            label = escape(&date(*day)),
            value = escape(&look.amount(*amount)),
        ));
    }
    let first = spend.days.first().map(|(day, _)| date(*day)).unwrap_or_default();
    let last = spend.days.last().map(|(day, _)| date(*day)).unwrap_or_default();
    let rows: String = spend
        .days
        .iter()
        .filter(|(_, amount)| !amount.is_zero())
        .map(|(day, amount)| {
            format!(
                r#"<tr><td>{}</td><td class="amount">{}</td></tr>"#,
                escape(&date(*day)),
                escape(&look.amount(*amount))
            )
        })
        .collect();
    let total: Decimal = spend.days.iter().map(|(_, amount)| *amount).sum();
    format!(
        r#"<figure class="chart"><figcaption>{name}: {total} over 30 days (highest day {max})</figcaption>
<svg viewBox="0 0 {WIDTH} {HEIGHT}" aria-hidden="true" focusable="false">
<line x1="0" y1="{axis_y}" x2="{WIDTH}" y2="{axis_y}" class="axis"/>{bars}</svg>
<div class="ticks" aria-hidden="true"><span>{first}</span><span>{last}</span></div>
<details><summary>Daily spend of {name} as a table</summary>
<table><thead><tr><th scope="col">Day</th><th scope="col" class="amount">Spent</th></tr></thead><tbody>{rows}</tbody></table>
<p class="muted">Days without spend are left out.</p></details></figure>"#,
        name = escape(&look.name),
        total = escape(&look.amount(total)),
        max = escape(&look.amount(max)),
        axis_y = HEIGHT - AXIS,
        first = escape(&first),
        last = escape(&last),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn minutes() -> AssetLook {
        AssetLook {
            code: "VIDMIN".into(),
            name: "Video minutes".into(),
            label: "video minutes".into(),
            symbol: Some("⏰".into()),
            precision: 2,
            is_currency: false,
        }
    }

    #[test]
    fn numbers_keep_precision_and_group_digits() {
        assert_eq!(number(d("120"), 2), "120.00");
        assert_eq!(number(d("1234567.5"), 2), "1,234,567.50");
        assert_eq!(number(d("0.001"), 2), "0.001", "real digits are never rounded away");
        assert_eq!(number(d("999"), 0), "999");
        assert_eq!(number(d("1000"), 0), "1,000");
        assert_eq!(minutes().amount(d("-2")), "-2.00 video minutes");
        assert_eq!(minutes().amount(d("120")), "120.00 video minutes");
        let dollars = AssetLook::of(&KnownAsset::Currency { code: "USD".into(), minor_units: 2 });
        assert_eq!(dollars.amount(d("12.3")), "$12.30");
        assert_eq!(dollars.amount(d("-0.5")), "-$0.50");
        let francs = AssetLook::of(&KnownAsset::Currency { code: "CHF".into(), minor_units: 2 });
        assert_eq!(francs.amount(d("5")), "5.00 CHF");
    }

    #[test]
    fn the_chart_has_a_bar_per_day_and_a_table_of_the_days_with_spend() {
        let start = NaiveDate::from_ymd_opt(2025, 3, 1).unwrap();
        let days: Vec<_> = (0..30)
            .map(|offset| (start + chrono::Days::new(offset), if offset == 4 { d("2.5") } else { Decimal::ZERO }))
            .collect();
        let chart = spend_chart(&DailySpend { look: minutes(), days });
        assert_eq!(chart.matches("<rect").count(), 30);
        assert_eq!(chart.matches("<tr><td>").count(), 1);
        assert!(chart.contains("Mar 5") && chart.contains("2.50 video minutes"), "{chart}");
    }
}
