//! How amounts and dates look on the portal's pages: numbers at the asset's precision with
//! digit grouping, the asset's label or the currency's sign.

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
}
