//! Assets, rates and quotes.

use super::OpError;
use crate::conn::Conn;
use crate::repo::assets::{self, Asset};
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use tally_core::asset::AssetCode;
use tally_core::rate::{self, ExchangeRate, ScheduledRate};
use tally_core::Mode;

/// How far in the past a new rate's `valid_from` may be and still count as "now": clocks of
/// client and server differ a little. Anything older would rewrite history and is refused.
pub const RATE_CLOCK_SKEW_SECONDS: i64 = 300;

#[derive(Debug, Clone, PartialEq)]
pub struct NewAsset {
    pub code: AssetCode,
    pub name: String,
    pub precision: u32,
    pub label: Option<String>,
    pub symbol: Option<String>,
    pub rates: Vec<(AssetCode, ExchangeRate)>,
    /// The billing portal's top-up settings, as JSON the HTTP layer checked (a Tally extension).
    pub top_up: Option<String>,
}

pub fn create(conn: &mut dyn Conn, mode: Mode, new: &NewAsset, now: DateTime<Utc>) -> Result<Asset, OpError> {
    if new.code.is_currency() {
        return Err(OpError::invalid("code", format!("{} is an ISO 4217 currency, which exists already", new.code)));
    }
    let mut problems = Vec::new();
    for (index, (source, _)) in new.rates.iter().enumerate() {
        if !source.is_currency() {
            problems.push(super::FieldError {
                field: format!("rates[{index}].source"),
                message: format!("{source} is not an ISO 4217 currency; rates are bought with fiat"),
            });
        }
        if new.rates[..index].iter().any(|(earlier, _)| earlier == source) {
            problems.push(super::FieldError {
                field: format!("rates[{index}].source"),
                message: format!("{source} appears more than once"),
            });
        }
    }
    if !problems.is_empty() {
        return Err(OpError::Invalid(problems));
    }
    if assets::get(conn, mode, new.code.as_str())?.is_some() {
        return Err(OpError::Conflict(format!("an asset with code {} exists already", new.code)));
    }
    let asset = Asset {
        code: new.code.to_string(),
        name: new.name.clone(),
        precision: new.precision,
        label: new.label.clone().unwrap_or_else(|| new.code.to_string()),
        symbol: new.symbol.clone(),
        top_up: new.top_up.clone(),
        created_at: now,
    };
    // Another request may have created the code since the check above.
    assets::insert(conn, mode, &asset).map_err(|error| match error {
        crate::StoreError::Conflict(_) => OpError::Conflict(format!("an asset with code {} exists already", new.code)),
        other => other.into(),
    })?;
    for (source, rate) in &new.rates {
        let entry = ScheduledRate { valid_from: now, valid_to: None, rate: *rate, sequence: 0 };
        assets::insert_rate(conn, mode, asset.code.as_str(), source.as_str(), &entry, now)?;
    }
    Ok(asset)
}

/// What every asset code resolves to: a custom asset of this mode, or a built-in currency.
#[derive(Debug, Clone, PartialEq)]
pub enum KnownAsset {
    Custom(Asset),
    Currency { code: String, minor_units: u32 },
}

impl KnownAsset {
    pub fn code(&self) -> &str {
        match self {
            KnownAsset::Custom(asset) => &asset.code,
            KnownAsset::Currency { code, .. } => code,
        }
    }

    pub fn precision(&self) -> u32 {
        match self {
            KnownAsset::Custom(asset) => asset.precision,
            KnownAsset::Currency { minor_units, .. } => *minor_units,
        }
    }
}

pub fn find(conn: &mut dyn Conn, mode: Mode, code: &AssetCode) -> Result<Option<KnownAsset>, OpError> {
    if let Some(minor_units) = code.currency_minor_units() {
        return Ok(Some(KnownAsset::Currency { code: code.to_string(), minor_units }));
    }
    Ok(assets::get(conn, mode, code.as_str())?.map(KnownAsset::Custom))
}

pub fn find_custom(conn: &mut dyn Conn, mode: Mode, code: &AssetCode) -> Result<Asset, OpError> {
    match find(conn, mode, code)? {
        Some(KnownAsset::Custom(asset)) => Ok(asset),
        Some(KnownAsset::Currency { .. }) => Err(OpError::invalid(
            "assetCode",
            format!("{code} is a fiat currency: it has no exchange rates of its own"),
        )),
        None => Err(OpError::NotFound(format!("asset {code} not found"))),
    }
}

/// Replaces a custom asset's top-up settings (JSON the HTTP layer checked).
pub fn set_top_up(conn: &mut dyn Conn, mode: Mode, code: &AssetCode, top_up: Option<&str>) -> Result<Asset, OpError> {
    let asset = find_custom(conn, mode, code)?;
    assets::set_top_up(conn, mode, &asset.code, top_up)?;
    Ok(Asset { top_up: top_up.map(str::to_owned), ..asset })
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewRate {
    pub source: AssetCode,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_to: Option<DateTime<Utc>>,
    pub rate: ExchangeRate,
}

/// Adds a rate. It applies from `valid_from` (default now) over the rate in force then; a
/// future `valid_from` schedules the change. Past instants are refused. A rate with
/// `valid_to` ends by itself, and the rate it interrupted applies again; it is refused when
/// no rate would be in force at its end.
pub fn add_rate(
    conn: &mut dyn Conn,
    mode: Mode,
    code: &AssetCode,
    new: &NewRate,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let asset = find_custom(conn, mode, code)?;
    if !new.source.is_currency() {
        return Err(OpError::invalid("source", format!("{} is not an ISO 4217 currency", new.source)));
    }
    let valid_from = match new.valid_from {
        None => now,
        Some(at) if at >= now => at,
        Some(at) if at >= now - Duration::seconds(RATE_CLOCK_SKEW_SECONDS) => now,
        Some(_) => return Err(OpError::invalid(
            "valid_from",
            "must not be in the past: rate history is never rewritten (up to 5 minutes of clock skew is taken as now)",
        )),
    };
    if let Some(valid_to) = new.valid_to {
        if valid_to <= valid_from {
            return Err(OpError::invalid("valid_to", "must be after valid_from"));
        }
    }
    let entry = ScheduledRate { valid_from, valid_to: new.valid_to, rate: new.rate, sequence: 0 };
    if let Some(valid_to) = new.valid_to {
        // A rate with an end interrupts the rates before it, which apply again when it ends.
        // With none to return to, quotes and top-ups would start failing then: refuse it.
        let schedule: Vec<ScheduledRate> = assets::rates(conn, mode, &asset.code)?
            .into_iter()
            .filter(|row| row.source == new.source.as_str())
            .map(|row| row.scheduled)
            .collect();
        if rate::in_force(&schedule, valid_to).is_none() {
            return Err(OpError::invalid(
                "valid_to",
                format!(
                    "no {} rate would be in force when this one ends, at {}: add the rate that applies \
                     after it first (a rate with valid_to interrupts the rates before it, which apply again \
                     when it ends)",
                    new.source,
                    valid_to.to_rfc3339()
                ),
            ));
        }
    }
    assets::insert_rate(conn, mode, &asset.code, new.source.as_str(), &entry, now)?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub source: String,
    pub source_amount: Decimal,
    pub destination: String,
    pub destination_amount: Decimal,
    pub rate: ExchangeRate,
}

/// How much of `code` a source amount buys at `at`. A currency quoted in itself is 1:1.
pub fn quote(
    conn: &mut dyn Conn,
    mode: Mode,
    code: &AssetCode,
    source: &AssetCode,
    amount: Decimal,
    at: DateTime<Utc>,
) -> Result<Quote, OpError> {
    let Some(asset) = find(conn, mode, code)? else {
        return Err(OpError::NotFound(format!("asset {code} not found")));
    };
    if !source.is_currency() {
        return Err(OpError::invalid("source", format!("{source} is not an ISO 4217 currency")));
    }
    let rate = match &asset {
        KnownAsset::Currency { code, .. } if code == source.as_str() => ExchangeRate::Rate(Decimal::ONE),
        KnownAsset::Currency { .. } => {
            return Err(OpError::invalid(
                "source",
                format!("Tally does not exchange between fiat currencies ({source} to {code})"),
            ))
        }
        KnownAsset::Custom(custom) => rate_at(conn, mode, &custom.code, source, at)?,
    };
    let destination_amount = rate
        .convert(amount, asset.precision())
        .ok_or_else(|| OpError::invalid("amount", "is too large to convert at this rate"))?;
    Ok(Quote {
        source: source.to_string(),
        source_amount: amount,
        destination: asset.code().to_owned(),
        destination_amount,
        rate,
    })
}

/// The rate in force for buying `asset_code` with `source` at `at`.
pub fn rate_at(
    conn: &mut dyn Conn,
    mode: Mode,
    asset_code: &str,
    source: &AssetCode,
    at: DateTime<Utc>,
) -> Result<ExchangeRate, OpError> {
    let schedule: Vec<_> = assets::rates(conn, mode, asset_code)?
        .into_iter()
        .filter(|row| row.source == source.as_str())
        .map(|row| row.scheduled)
        .collect();
    rate::in_force(&schedule, at).map(|entry| entry.rate).ok_or_else(|| {
        OpError::invalid("source", format!("{asset_code} has no rate from {source} in force at {}", at.to_rfc3339()))
    })
}
