//! Usage-based prices and the rating engine: one usage event in, exact fees out.
//!
//! A [`UsagePrice`] arrives here already parsed (the HTTP layer turns JSON into these types) and
//! is checked by [`UsagePrice::validate`] before it is stored. [`rate`] then prices one event
//! against it, given what the customer has already used of the price in the current tier period.
//! The caller keeps those counters and stores the [`Fee::usage_after`] that `rate` returns;
//! [`period_start`] says which period an instant falls in.
//!
//! # What an event measures
//! - `unit` usage: every event is one unit, priced at `unit_price`.
//! - `volume` usage: the event field named by `volume_field` holds the volume: a number, or text
//!   holding a plain decimal numeral (the Credyt event schema carries only integer numbers, so a
//!   fractional volume travels as text). A missing, non-numeric or negative volume is an error.
//!   The fee is volume × `volume_rate`.
//! - `unit_and_volume` usage: both, so the fee is `unit_price` + volume × `volume_rate`.
//! - `custom` usage is refused: Tally does not evaluate custom expressions yet.
//!
//! A price value must state exactly the prices its usage type uses: `unit_price` when the usage
//! counts units, `volume_rate` when it reads a volume. A price the usage type would ignore is
//! refused, not ignored, because a price someone set and Tally never charged is a mispriced
//! product. For the same reason `volume_field` is refused on unit usage.
//!
//! The counters in [`Usage`] advance with every event: `units` by one, `volume` by the volume
//! read (unit usage reads none).
//!
//! # Pricing models
//! - `flat`: exactly one price value, without `up_to`.
//! - `package`: exactly one price value, with `package_size` greater than zero, for usage that
//!   reads a volume; `volume_rate` is then the price of one package. The volume is billed in whole
//!   packages rounded up, per event (a started package is a package, as for ad-hoc charges):
//!   2,500 tokens at 0.01 per 1,000 cost 3 × 0.01 = 0.03. Rounding is per event because rating is
//!   real time: the next event starts a fresh package.
//! - `package_size` under any other model, on usage that reads a volume, states the quantity
//!   its `volume_rate` is for, prorated (Credyt's "$1.25 per million tokens" is
//!   `{"volume_rate": 1.25, "package_size": 1000000}`): the volume part of the fee is
//!   volume × `volume_rate` / `package_size`, so 2,000 tokens cost 0.0025. The quotient is exact
//!   when it fits in 12 decimal places and is otherwise rounded toward zero to 12, so a customer
//!   is never charged more than the stated price. `package_size` is refused on unit usage.
//! - `tiered` (graduated) and `bulk`: a list of tiers. Each `up_to` is an inclusive bound on the
//!   quantity counted over the tier period: a tier covers the quantities above the previous
//!   tier's `up_to`, up to and including its own. Bounds are greater than zero and strictly
//!   increasing; every tier but the last has one and the last has none, so every quantity falls
//!   in a tier. The quantity counted is units for unit usage (whole-number bounds only, so one
//!   event never straddles a bound) and volume for volume usage. `unit_and_volume` usage has two
//!   quantities and Tally does not yet support a tiering basis to choose between them, so tiered
//!   and bulk pricing are refused for it.
//!   - tiered: the event's quantity is split across the tiers it crosses, counting on from the
//!     customer's usage before it, and each part is priced at its own tier's rate. Splitting
//!     makes fees additive: a hundred events of 1 cost exactly what one event of 100 would.
//!   - bulk: the whole event quantity is priced at the rate of the tier that contains the
//!     cumulative total after the event. Earlier events are not repriced when a later one reaches
//!     a cheaper tier: a real-time fee is final once charged. For unit usage every event is one
//!     unit, so bulk and tiered charge the same.
//!
//! Flat and package prices ignore the usage before the event.
//!
//! # Tier periods
//! Counters reset at the start of each tier period, in UTC: the calendar month, the calendar
//! quarter (starting January, April, July and October) or the calendar year; `lifetime` never
//! resets. `custom` periods are refused. Counters are kept per customer and per price, across
//! all of the price's dimensions and assets: dimensions choose which price values apply, they
//! do not split the count.
//!
//! # Dimensions
//! A price may list `billable_dimensions`: event fields that choose the price values. An asset's
//! pricing may then be dimensional, a list of entries that each name values for some billable
//! dimensions and carry their own price values. `*`, like leaving a dimension out, matches any
//! value, including an absent one. An event's dimension values are read from its data: text as
//! written (case-sensitive), booleans as `true` or `false`, numbers in their shortest decimal form
//! (`2.50` reads as `2.5`). Among the entries that match, the most specific one (the most
//! dimensions matched by a named value rather than `*`) wins; no match is an error. Validation
//! refuses an entry naming a dimension that is not billable, two entries with the same
//! dimensions, and two equally specific entries that one event could match unless a more
//! specific entry covers their overlap, so the winner is always unique. A fee reports the
//! winning entry's dimensions as written, `*` included.
//!
//! # Minimum and maximum
//! `min_amount` and `max_amount` bound the fee of each event, after everything else: a minimum
//! applies even where the fee would otherwise be zero. With tiers they come from the tier that
//! contains the cumulative total after the event, which is also the tier whose prices the fee
//! reports.
//!
//! # Exactness and limits
//! Fees are exact decimals and are never rounded here, not even to the asset's minor unit: a
//! price of 0.0004 USD per call is legitimate, and rounding every event would bias the total.
//! Prices, bounds and volumes obey the amount limits of [`crate::money`] (magnitude below 10^15,
//! at most 12 decimal places). A step that cannot be computed exactly within `Decimal`'s 28
//! significant digits fails with [`RatingError::TooLarge`] rather than rounding, and a fee that
//! comes to 10^15 or more (a large volume at a large rate) fails with
//! [`RatingError::FeeTooLarge`]: no fee is larger than an amount may be.
//!
//! # One event, every asset
//! [`rate`] returns one fee per asset pricing, in the order of `pricing`, or an error and no fee
//! at all: an event is never half charged. It re-checks the price definition first (everything
//! [`UsagePrice::validate`] checks except the pairwise overlap of dimensional entries, which it
//! detects as a tie when matching), so an unvalidated price is refused, never mispriced.

use crate::asset::AssetCode;
use crate::money::{check_amount, max_amount, AmountError};
use crate::Instant;
use chrono::{Datelike, TimeZone, Utc};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[cfg(test)]
mod tests;

/// The dimension value that matches any event value.
pub const ANY_VALUE: &str = "*";
/// The most assets one price may be priced in.
pub const MAX_ASSET_PRICINGS: usize = 20;
/// The most price values (tiers) one list may hold.
pub const MAX_PRICE_VALUES: usize = 100;
/// The most dimensional entries one asset pricing may hold. Validation compares every pair.
pub const MAX_DIMENSIONAL_ENTRIES: usize = 500;
/// The most billable dimensions one price may list.
pub const MAX_BILLABLE_DIMENSIONS: usize = 10;

/// A keyword the Credyt API defines but Tally cannot use, or one that it does not define at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeywordError {
    #[error("`{value}` is allowed by the Credyt API but Tally does not support it yet")]
    NotSupported { value: String },
    #[error("`{value}` is not one of: {expected}")]
    Unknown { value: String, expected: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageType {
    Unit,
    Volume,
    UnitAndVolume,
}

impl UsageType {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageType::Unit => "unit",
            UsageType::Volume => "volume",
            UsageType::UnitAndVolume => "unit_and_volume",
        }
    }

    pub fn parse(text: &str) -> Result<UsageType, KeywordError> {
        match text {
            "unit" => Ok(UsageType::Unit),
            "volume" => Ok(UsageType::Volume),
            "unit_and_volume" => Ok(UsageType::UnitAndVolume),
            "custom" => Err(KeywordError::NotSupported { value: text.to_string() }),
            _ => Err(KeywordError::Unknown { value: text.to_string(), expected: "unit, volume, unit_and_volume" }),
        }
    }

    /// The tiering basis this usage type implies (`tiering.basis` in the API), if it has one.
    /// Unit_and_volume usage has none, which is why it cannot be tiered.
    pub fn tier_basis(self) -> Option<&'static str> {
        match self {
            UsageType::Unit => Some("unit"),
            UsageType::Volume => Some("volume"),
            UsageType::UnitAndVolume => None,
        }
    }

    fn counts_units(self) -> bool {
        match self {
            UsageType::Unit | UsageType::UnitAndVolume => true,
            UsageType::Volume => false,
        }
    }

    fn reads_volume(self) -> bool {
        match self {
            UsageType::Volume | UsageType::UnitAndVolume => true,
            UsageType::Unit => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PricingModel {
    Flat,
    /// Graduated tiers.
    Tiered,
    Bulk,
    Package,
}

impl PricingModel {
    pub fn as_str(self) -> &'static str {
        match self {
            PricingModel::Flat => "flat",
            PricingModel::Tiered => "tiered",
            PricingModel::Bulk => "bulk",
            PricingModel::Package => "package",
        }
    }

    pub fn parse(text: &str) -> Result<PricingModel, KeywordError> {
        match text {
            "flat" => Ok(PricingModel::Flat),
            "tiered" => Ok(PricingModel::Tiered),
            "bulk" => Ok(PricingModel::Bulk),
            "package" => Ok(PricingModel::Package),
            _ => Err(KeywordError::Unknown { value: text.to_string(), expected: "flat, tiered, bulk, package" }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TierPeriod {
    Lifetime,
    Monthly,
    Quarterly,
    Yearly,
}

impl TierPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            TierPeriod::Lifetime => "lifetime",
            TierPeriod::Monthly => "monthly",
            TierPeriod::Quarterly => "quarterly",
            TierPeriod::Yearly => "yearly",
        }
    }

    pub fn parse(text: &str) -> Result<TierPeriod, KeywordError> {
        match text {
            "lifetime" => Ok(TierPeriod::Lifetime),
            "monthly" => Ok(TierPeriod::Monthly),
            "quarterly" => Ok(TierPeriod::Quarterly),
            "yearly" => Ok(TierPeriod::Yearly),
            "custom" => Err(KeywordError::NotSupported { value: text.to_string() }),
            _ => {
                Err(KeywordError::Unknown { value: text.to_string(), expected: "lifetime, monthly, quarterly, yearly" })
            }
        }
    }
}

/// When the tier period containing `at` began, in UTC; `None` for a lifetime period, whose
/// counters never reset.
pub fn period_start(period: TierPeriod, at: Instant) -> Option<Instant> {
    let first_month = match period {
        TierPeriod::Lifetime => return None,
        TierPeriod::Monthly => at.month(),
        TierPeriod::Quarterly => (at.month() - 1) / 3 * 3 + 1,
        TierPeriod::Yearly => 1,
    };
    Utc.with_ymd_and_hms(at.year(), first_month, 1, 0, 0, 0).single()
}

/// One price value, or one tier of a tiered or bulk price. Which fields must be present depends
/// on the usage type and pricing model; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceValue {
    pub up_to: Option<Decimal>,
    pub unit_price: Option<Decimal>,
    pub volume_rate: Option<Decimal>,
    pub package_size: Option<Decimal>,
    pub min_amount: Option<Decimal>,
    pub max_amount: Option<Decimal>,
}

/// Price values that apply to events whose dimensions match. A value of [`ANY_VALUE`] matches
/// anything, as does leaving a billable dimension out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimensionalValues {
    pub dimensions: BTreeMap<String, String>,
    pub values: Vec<PriceValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriceValues {
    Plain(Vec<PriceValue>),
    Dimensional(Vec<DimensionalValues>),
}

/// The price in one asset (a currency or a custom asset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetPricing {
    pub asset: String,
    pub values: PriceValues,
}

/// A usage-based price billed in real time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePrice {
    pub id: String,
    pub name: String,
    pub event_type: String,
    pub usage_type: UsageType,
    pub volume_field: Option<String>,
    pub billable_dimensions: Vec<String>,
    pub pricing_model: PricingModel,
    pub tier_period: TierPeriod,
    pub pricing: Vec<AssetPricing>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventValue {
    Text(String),
    Bool(bool),
    Number(Decimal),
}

/// The `data` of a usage event.
pub type EventData = BTreeMap<String, EventValue>;

/// What one customer has used of one price in one tier period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Events rated.
    pub units: Decimal,
    /// Volume rated.
    pub volume: Decimal,
}

impl Usage {
    pub const ZERO: Usage = Usage { units: Decimal::ZERO, volume: Decimal::ZERO };
}

/// The fee one event owes in one asset. The prices reported are those of the value that
/// applied: with tiers, the tier containing the cumulative total after the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fee {
    pub price_id: String,
    pub asset: String,
    /// The matched entry's dimensions as written; empty for plain price values.
    pub dimensions: BTreeMap<String, String>,
    pub usage_type: UsageType,
    /// The volume read from the event, for usage that reads one.
    pub volume: Option<Decimal>,
    pub unit_price: Option<Decimal>,
    pub volume_rate: Option<Decimal>,
    pub package_size: Option<Decimal>,
    /// Exact, never rounded.
    pub amount: Decimal,
    /// The customer's counters after this event, for the caller to store.
    pub usage_after: Usage,
}

/// One thing wrong with a price definition, at a path that mirrors the API's JSON
/// (`pricing[0].values[1].up_to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceProblem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for PriceProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    #[error("the event has no `{field}` field, which this price reads as its volume")]
    MissingVolume { field: String },
    #[error("the event's `{field}` field must be a number to be billed as a volume")]
    VolumeNotNumber { field: String },
    #[error("the event's `{field}` field must not be negative")]
    NegativeVolume { field: String },
    #[error("the event's `{field}` field {reason}")]
    VolumeOutOfRange { field: String, reason: AmountError },
    #[error("no price in {asset} matches the event's dimensions {dimensions:?}")]
    NoMatchingDimension { asset: String, dimensions: BTreeMap<String, String> },
    #[error("the price is invalid: {}", describe_problems(.0))]
    InvalidPrice(Vec<PriceProblem>),
    #[error("the fee is too large to compute exactly")]
    TooLarge,
    #[error("the fee in {asset} would be {amount}: a fee must be less than 1000000000000000")]
    FeeTooLarge { asset: String, amount: Decimal },
}

fn describe_problems(problems: &[PriceProblem]) -> String {
    problems.iter().map(PriceProblem::to_string).collect::<Vec<_>>().join("; ")
}

impl UsagePrice {
    /// Every problem with this definition, or `Ok` when it can be rated.
    pub fn validate(&self) -> Result<(), Vec<PriceProblem>> {
        let mut problems = definition_problems(self);
        for (index, asset_pricing) in self.pricing.iter().enumerate() {
            match &asset_pricing.values {
                PriceValues::Dimensional(entries) if entries.len() <= MAX_DIMENSIONAL_ENTRIES => {
                    check_overlaps(self, entries, &format!("pricing[{index}].values"), &mut problems);
                }
                PriceValues::Dimensional(_) | PriceValues::Plain(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Prices one event in every asset of `price`. `usage_before` is what the customer used of this
/// price earlier in the current tier period (see [`period_start`]).
pub fn rate(price: &UsagePrice, data: &EventData, usage_before: &Usage) -> Result<Vec<Fee>, RatingError> {
    let problems = definition_problems(price);
    if !problems.is_empty() {
        return Err(RatingError::InvalidPrice(problems));
    }
    let volume = read_volume(price, data)?;
    let usage_after = advance(usage_before, volume)?;
    let event_dimensions = event_dimensions(price, data);
    let mut fees = Vec::with_capacity(price.pricing.len());
    for (index, asset_pricing) in price.pricing.iter().enumerate() {
        let (dimensions, values) = select_values(asset_pricing, index, &event_dimensions)?;
        let (amount, value) = amount_owed(price, values, volume, usage_before, &usage_after)?;
        if amount.abs() >= max_amount() {
            return Err(RatingError::FeeTooLarge { asset: asset_pricing.asset.clone(), amount: amount.normalize() });
        }
        fees.push(Fee {
            price_id: price.id.clone(),
            asset: asset_pricing.asset.clone(),
            dimensions: dimensions.clone(),
            usage_type: price.usage_type,
            volume,
            unit_price: value.unit_price,
            volume_rate: value.volume_rate,
            package_size: value.package_size,
            amount: amount.normalize(),
            usage_after,
        });
    }
    Ok(fees)
}

// ---------------------------------------------------------------------------------------------
// Validation

/// Collects problems under their paths.
trait ProblemList {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>);
}

impl ProblemList for Vec<PriceProblem> {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(PriceProblem { path: path.into(), message: message.into() });
    }
}

/// Every problem but overlapping dimensional entries. Linear in the size of the price, so
/// `rate` can afford it on every event.
fn definition_problems(price: &UsagePrice) -> Vec<PriceProblem> {
    let mut problems = Vec::new();
    if price.event_type.trim().is_empty() {
        problems.add("usage_calculation.event_type", "must not be empty");
    }
    check_volume_field(price, &mut problems);
    check_billable_dimensions(price, &mut problems);
    check_model_fits_usage(price, &mut problems);
    check_pricing(price, &mut problems);
    problems
}

fn check_volume_field(price: &UsagePrice, problems: &mut Vec<PriceProblem>) {
    let path = "usage_calculation.volume_field";
    match (price.usage_type.reads_volume(), &price.volume_field) {
        (true, None) => problems.add(path, "is required for volume and unit_and_volume usage"),
        (true, Some(field)) if field.trim().is_empty() => problems.add(path, "must not be empty"),
        (false, Some(_)) => {
            problems.add(path, "is only read by volume and unit_and_volume usage: remove it or change usage_type")
        }
        (true, Some(_)) | (false, None) => {}
    }
}

fn check_billable_dimensions(price: &UsagePrice, problems: &mut Vec<PriceProblem>) {
    if price.billable_dimensions.len() > MAX_BILLABLE_DIMENSIONS {
        problems.add(
            "usage_calculation.billable_dimensions",
            format!("must list at most {MAX_BILLABLE_DIMENSIONS} dimensions"),
        );
    }
    let mut seen = BTreeSet::new();
    for (index, dimension) in price.billable_dimensions.iter().enumerate() {
        let path = format!("usage_calculation.billable_dimensions[{index}]");
        if dimension.trim().is_empty() {
            problems.add(path, "must not be empty");
        } else if !seen.insert(dimension) {
            problems.add(path, format!("`{dimension}` is listed twice"));
        }
    }
}

fn check_model_fits_usage(price: &UsagePrice, problems: &mut Vec<PriceProblem>) {
    let refusal = match (price.pricing_model, price.usage_type) {
        (PricingModel::Package, UsageType::Unit) => {
            Some("package pricing bills packages of volume, so it needs volume or unit_and_volume usage")
        }
        (PricingModel::Tiered | PricingModel::Bulk, UsageType::UnitAndVolume) => Some(
            "tiers count a single quantity and unit_and_volume usage has two: Tally does not support tiered or \
             bulk pricing for unit_and_volume usage yet",
        ),
        (PricingModel::Flat, _)
        | (PricingModel::Package, UsageType::Volume | UsageType::UnitAndVolume)
        | (PricingModel::Tiered | PricingModel::Bulk, UsageType::Unit | UsageType::Volume) => None,
    };
    if let Some(message) = refusal {
        problems.add("pricing_model", message);
    }
}

fn check_pricing(price: &UsagePrice, problems: &mut Vec<PriceProblem>) {
    if price.pricing.is_empty() {
        problems.add("pricing", "must price at least one asset");
    }
    if price.pricing.len() > MAX_ASSET_PRICINGS {
        problems.add("pricing", format!("may price at most {MAX_ASSET_PRICINGS} assets"));
        return;
    }
    let mut first_index_of_asset = BTreeMap::new();
    for (index, asset_pricing) in price.pricing.iter().enumerate() {
        let path = format!("pricing[{index}]");
        match AssetCode::parse(&asset_pricing.asset) {
            Err(error) => problems.add(format!("{path}.asset"), error.to_string()),
            Ok(code) => {
                if let Some(first) = first_index_of_asset.insert(code, index) {
                    problems.add(format!("{path}.asset"), format!("is already priced by pricing[{first}]"));
                }
            }
        }
        let values_path = format!("{path}.values");
        match &asset_pricing.values {
            PriceValues::Plain(values) => check_values(price, values, &values_path, problems),
            PriceValues::Dimensional(entries) => check_dimensional(price, entries, &values_path, problems),
        }
    }
}

fn check_dimensional(price: &UsagePrice, entries: &[DimensionalValues], path: &str, problems: &mut Vec<PriceProblem>) {
    if entries.is_empty() {
        problems.add(path, "must contain at least one dimensional price");
    }
    if entries.len() > MAX_DIMENSIONAL_ENTRIES {
        problems.add(path, format!("may contain at most {MAX_DIMENSIONAL_ENTRIES} dimensional prices"));
        return;
    }
    for (index, entry) in entries.iter().enumerate() {
        let entry_path = format!("{path}[{index}]");
        for (dimension, value) in &entry.dimensions {
            let dimension_path = format!("{entry_path}.dimensions.{dimension}");
            if !price.billable_dimensions.contains(dimension) {
                problems
                    .add(dimension_path, format!("`{dimension}` is not one of usage_calculation.billable_dimensions"));
            } else if value.is_empty() {
                problems.add(dimension_path, "must not be empty: use `*` to match any value");
            }
        }
        check_values(price, &entry.values, &format!("{entry_path}.values"), problems);
    }
}

fn check_values(price: &UsagePrice, values: &[PriceValue], path: &str, problems: &mut Vec<PriceProblem>) {
    if values.is_empty() {
        problems.add(path, "must contain at least one price value");
        return;
    }
    if values.len() > MAX_PRICE_VALUES {
        problems.add(path, format!("may contain at most {MAX_PRICE_VALUES} price values"));
        return;
    }
    match price.pricing_model {
        PricingModel::Flat | PricingModel::Package => {
            if values.len() != 1 {
                problems.add(path, format!("{} pricing takes exactly one price value", price.pricing_model.as_str()));
            }
        }
        PricingModel::Tiered | PricingModel::Bulk => check_tier_bounds(price.usage_type, values, path, problems),
    }
    for (index, value) in values.iter().enumerate() {
        check_value(price, value, &format!("{path}[{index}]"), problems);
    }
}

fn check_value(price: &UsagePrice, value: &PriceValue, path: &str, problems: &mut Vec<PriceProblem>) {
    let usage = price.usage_type;
    let is_package = price.pricing_model == PricingModel::Package;
    let field = |name: &str| format!("{path}.{name}");
    // Under unit_and_volume either part may be left out and is then zero (Credyt's own
    // examples do so), but not both: a price that charges nothing was not meant.
    let both_parts = usage == UsageType::UnitAndVolume;
    let unit_given = !both_parts || value.unit_price.is_some() || value.volume_rate.is_none();
    let volume_given = !both_parts || value.volume_rate.is_some() || value.unit_price.is_none();
    check_used(
        value.unit_price,
        usage.counts_units() && unit_given,
        "unit and unit_and_volume usage",
        field("unit_price"),
        problems,
    );
    check_used(
        value.volume_rate,
        usage.reads_volume() && volume_given,
        "volume and unit_and_volume usage",
        field("volume_rate"),
        problems,
    );
    check_used(
        value.package_size,
        is_package || (value.package_size.is_some() && usage.reads_volume()),
        "package pricing and usage that reads a volume",
        field("package_size"),
        problems,
    );
    if let Some(size) = value.package_size.filter(|size| *size <= Decimal::ZERO) {
        problems.add(field("package_size"), format!("must be greater than zero, not {size}"));
    }
    if let Some(minimum) = value.min_amount {
        check_price_amount(minimum, field("min_amount"), problems);
    }
    if let Some(maximum) = value.max_amount {
        check_price_amount(maximum, field("max_amount"), problems);
    }
    if let (Some(minimum), Some(maximum)) = (value.min_amount, value.max_amount) {
        if minimum > maximum {
            problems.add(field("max_amount"), format!("must not be less than min_amount ({minimum})"));
        }
    }
    match price.pricing_model {
        PricingModel::Flat | PricingModel::Package => {
            if value.up_to.is_some() {
                problems.add(field("up_to"), "is only used by tiered and bulk pricing: remove it");
            }
        }
        PricingModel::Tiered | PricingModel::Bulk => {}
    }
}

/// A price field must be present exactly when the usage type or model uses it, and then be a
/// valid, non-negative amount.
fn check_used(amount: Option<Decimal>, used: bool, user: &str, path: String, problems: &mut Vec<PriceProblem>) {
    match (amount, used) {
        (None, true) => problems.add(path, format!("is required for {user}")),
        (Some(_), false) => problems.add(path, format!("is only used by {user}: remove it")),
        (Some(amount), true) => check_price_amount(amount, path, problems),
        (None, false) => {}
    }
}

fn check_price_amount(amount: Decimal, path: String, problems: &mut Vec<PriceProblem>) {
    if let Err(error) = check_amount(amount) {
        problems.add(path, error.to_string());
    } else if amount < Decimal::ZERO {
        problems.add(path, "must not be negative");
    }
}

fn check_tier_bounds(usage: UsageType, tiers: &[PriceValue], path: &str, problems: &mut Vec<PriceProblem>) {
    let last = tiers.len() - 1;
    let mut previous: Option<Decimal> = None;
    for (index, tier) in tiers.iter().enumerate() {
        let path = format!("{path}[{index}].up_to");
        match (tier.up_to, index == last) {
            (Some(_), true) => problems.add(path, "the last tier must be open-ended: remove up_to"),
            (None, false) => problems.add(path, "is required on every tier but the last"),
            (Some(bound), false) => {
                check_tier_bound(usage, bound, previous, path, problems);
                previous = Some(bound);
            }
            (None, true) => {}
        }
    }
}

fn check_tier_bound(
    usage: UsageType,
    bound: Decimal,
    previous: Option<Decimal>,
    path: String,
    problems: &mut Vec<PriceProblem>,
) {
    if let Err(error) = check_amount(bound) {
        problems.add(path, error.to_string());
    } else if bound <= Decimal::ZERO {
        problems.add(path, "must be greater than zero");
    } else if let Some(previous) = previous.filter(|previous| bound <= *previous) {
        problems.add(path, format!("must be greater than the previous tier's up_to ({previous})"));
    } else if usage == UsageType::Unit && !bound.fract().is_zero() {
        problems.add(path, "must be a whole number: unit usage counts whole events");
    }
}

/// A dimensional entry reduced to one optional value per billable dimension, in the order of
/// `billable_dimensions`; `None` matches any value.
type Pattern<'price> = Vec<Option<&'price str>>;

fn pattern<'price>(price: &'price UsagePrice, entry: &'price DimensionalValues) -> Pattern<'price> {
    let named = |dimension: &String| entry.dimensions.get(dimension).map(String::as_str);
    price.billable_dimensions.iter().map(|dimension| named(dimension).filter(|value| *value != ANY_VALUE)).collect()
}

fn specificity(pattern: &Pattern) -> usize {
    pattern.iter().flatten().count()
}

/// The pattern matching exactly the events both patterns match, or `None` when no event can.
fn meet<'price>(left: &Pattern<'price>, right: &Pattern<'price>) -> Option<Pattern<'price>> {
    left.iter()
        .zip(right)
        .map(|pair| match pair {
            (Some(left), Some(right)) => (left == right).then_some(Some(*left)),
            (Some(value), None) | (None, Some(value)) => Some(Some(*value)),
            (None, None) => Some(None),
        })
        .collect()
}

/// Refuses entries that would leave an event without a unique most specific match: identical
/// entries, and equally specific entries that overlap where no more specific entry decides.
/// If the two best matches for an event tied, their meet would also match it and, being listed,
/// would be more specific than both; so checking pairs is enough.
fn check_overlaps(price: &UsagePrice, entries: &[DimensionalValues], path: &str, problems: &mut Vec<PriceProblem>) {
    let patterns: Vec<Pattern> = entries.iter().map(|entry| pattern(price, entry)).collect();
    let listed: BTreeSet<&Pattern> = patterns.iter().collect();
    for (later, later_pattern) in patterns.iter().enumerate() {
        for (earlier, earlier_pattern) in patterns.iter().enumerate().take(later) {
            let entry_path = format!("{path}[{later}].dimensions");
            if later_pattern == earlier_pattern {
                problems.add(entry_path, format!("repeats the dimensions of {path}[{earlier}]"));
                break;
            }
            if specificity(later_pattern) != specificity(earlier_pattern) {
                continue;
            }
            if let Some(overlap) = meet(later_pattern, earlier_pattern).filter(|overlap| !listed.contains(overlap)) {
                problems.add(
                    entry_path,
                    format!(
                        "an event with {} would match this and {path}[{earlier}] equally: add a price for those dimensions",
                        describe_pattern(price, &overlap)
                    ),
                );
            }
        }
    }
}

fn describe_pattern(price: &UsagePrice, pattern: &Pattern) -> String {
    let named: Vec<String> = price
        .billable_dimensions
        .iter()
        .zip(pattern)
        .filter_map(|(dimension, value)| value.map(|value| format!("{dimension} = {value}")))
        .collect();
    named.join(", ")
}

// ---------------------------------------------------------------------------------------------
// Rating

fn read_volume(price: &UsagePrice, data: &EventData) -> Result<Option<Decimal>, RatingError> {
    let field = match (&price.volume_field, price.usage_type.reads_volume()) {
        (Some(field), true) => field,
        (None, _) | (Some(_), false) => return Ok(None),
    };
    let volume = match data.get(field) {
        None => return Err(RatingError::MissingVolume { field: field.clone() }),
        Some(EventValue::Number(number)) => *number,
        Some(EventValue::Text(text)) => {
            parse_numeral(text).ok_or_else(|| RatingError::VolumeNotNumber { field: field.clone() })?
        }
        Some(EventValue::Bool(_)) => return Err(RatingError::VolumeNotNumber { field: field.clone() }),
    };
    if volume < Decimal::ZERO {
        return Err(RatingError::NegativeVolume { field: field.clone() });
    }
    let volume =
        check_amount(volume).map_err(|reason| RatingError::VolumeOutOfRange { field: field.clone(), reason })?;
    Ok(Some(volume))
}

/// A plain decimal numeral such as `12` or `-0.25`: no exponent, separators or spaces, which
/// `Decimal`'s own parser would accept or round.
fn parse_numeral(text: &str) -> Option<Decimal> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    if !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    Decimal::from_str_exact(text).ok()
}

fn advance(before: &Usage, volume: Option<Decimal>) -> Result<Usage, RatingError> {
    Ok(Usage {
        units: add(before.units, Decimal::ONE)?,
        volume: match volume {
            Some(volume) => add(before.volume, volume)?,
            None => before.volume,
        },
    })
}

fn event_dimensions(price: &UsagePrice, data: &EventData) -> BTreeMap<String, String> {
    price
        .billable_dimensions
        .iter()
        .filter_map(|dimension| data.get(dimension).map(|value| (dimension.clone(), dimension_value(value))))
        .collect()
}

fn dimension_value(value: &EventValue) -> String {
    match value {
        EventValue::Text(text) => text.clone(),
        EventValue::Bool(flag) => flag.to_string(),
        EventValue::Number(number) => number.normalize().to_string(),
    }
}

/// The price values that apply to the event in one asset, with the dimensions that chose them.
fn select_values<'price>(
    asset_pricing: &'price AssetPricing,
    asset_index: usize,
    event: &BTreeMap<String, String>,
) -> Result<(&'price BTreeMap<String, String>, &'price [PriceValue]), RatingError> {
    static NO_DIMENSIONS: BTreeMap<String, String> = BTreeMap::new();
    match &asset_pricing.values {
        PriceValues::Plain(values) => Ok((&NO_DIMENSIONS, values)),
        PriceValues::Dimensional(entries) => {
            let entry = best_match(entries, asset_index, event)?.ok_or_else(|| RatingError::NoMatchingDimension {
                asset: asset_pricing.asset.clone(),
                dimensions: event.clone(),
            })?;
            Ok((&entry.dimensions, &entry.values))
        }
    }
}

/// The most specific entry matching the event. A tie means validation was skipped; it is
/// refused rather than settled by list order.
fn best_match<'price>(
    entries: &'price [DimensionalValues],
    asset_index: usize,
    event: &BTreeMap<String, String>,
) -> Result<Option<&'price DimensionalValues>, RatingError> {
    let mut best: Option<(usize, usize)> = None;
    let mut tied_with_best: Option<usize> = None;
    for (index, entry) in entries.iter().enumerate() {
        let Some(specificity) = match_specificity(entry, event) else {
            continue;
        };
        match best {
            Some((best_specificity, _)) if specificity < best_specificity => {}
            Some((best_specificity, _)) if specificity == best_specificity => tied_with_best = Some(index),
            Some(_) | None => {
                best = Some((specificity, index));
                tied_with_best = None;
            }
        }
    }
    if let (Some((_, best_index)), Some(tied_index)) = (best, tied_with_best) {
        let path = format!("pricing[{asset_index}].values[{tied_index}].dimensions");
        let message = format!("matches the event as specifically as pricing[{asset_index}].values[{best_index}]");
        return Err(RatingError::InvalidPrice(vec![PriceProblem { path, message }]));
    }
    Ok(best.map(|(_, index)| &entries[index]))
}

/// How many dimensions the entry matches by a named value, or `None` when it does not match.
fn match_specificity(entry: &DimensionalValues, event: &BTreeMap<String, String>) -> Option<usize> {
    let mut specificity = 0;
    for (dimension, value) in &entry.dimensions {
        if value == ANY_VALUE {
            continue;
        }
        if event.get(dimension) != Some(value) {
            return None;
        }
        specificity += 1;
    }
    Some(specificity)
}

/// The event's fee in one asset, clamped to the minimum and maximum of the price value that
/// applied, together with that value.
fn amount_owed<'price>(
    price: &UsagePrice,
    values: &'price [PriceValue],
    volume: Option<Decimal>,
    before: &Usage,
    after: &Usage,
) -> Result<(Decimal, &'price PriceValue), RatingError> {
    let usage = price.usage_type;
    let (amount, value) = match price.pricing_model {
        PricingModel::Flat => {
            let value = single_value(values)?;
            (add(unit_part(value), volume_part(value, volume)?)?, value)
        }
        PricingModel::Package => {
            let value = single_value(values)?;
            (add(unit_part(value), package_part(value, volume)?)?, value)
        }
        PricingModel::Tiered => {
            let (from, to) = (counted(usage, before), counted(usage, after));
            (graduated_amount(usage, values, from, to)?, tier_containing(values, to)?)
        }
        PricingModel::Bulk => {
            let (from, to) = (counted(usage, before), counted(usage, after));
            let tier = tier_containing(values, to)?;
            (prorate(multiply(subtract(to, from)?, tier_rate(usage, tier))?, tier.package_size)?, tier)
        }
    };
    Ok((clamp(amount, value), value))
}

fn single_value(values: &[PriceValue]) -> Result<&PriceValue, RatingError> {
    values.first().ok_or_else(missing_values)
}

fn missing_values() -> RatingError {
    RatingError::InvalidPrice(vec![PriceProblem {
        path: "pricing".to_string(),
        message: "a price list has no price values".to_string(),
    }])
}

// Validation makes each price present exactly when the usage type uses it, so an absent price is
// one that does not apply and contributes nothing.

fn unit_part(value: &PriceValue) -> Decimal {
    value.unit_price.unwrap_or(Decimal::ZERO)
}

fn volume_part(value: &PriceValue, volume: Option<Decimal>) -> Result<Decimal, RatingError> {
    match (volume, value.volume_rate) {
        (Some(volume), Some(rate)) => prorate(multiply(volume, rate)?, value.package_size),
        (None, _) | (_, None) => Ok(Decimal::ZERO),
    }
}

/// `amount` (a volume priced at a rate stated per `package_size` units) divided by the
/// package size: exact when the quotient fits in [`crate::money::MAX_SCALE`] decimal places, otherwise
/// rounded toward zero to them, so the customer never pays more than the stated rate.
fn prorate(amount: Decimal, package_size: Option<Decimal>) -> Result<Decimal, RatingError> {
    let Some(size) = package_size else {
        return Ok(amount);
    };
    let quotient = amount.checked_div(size).ok_or(RatingError::TooLarge)?;
    Ok(crate::money::round_down(quotient, crate::money::MAX_SCALE).normalize())
}

fn package_part(value: &PriceValue, volume: Option<Decimal>) -> Result<Decimal, RatingError> {
    match (volume, value.volume_rate, value.package_size) {
        (Some(volume), Some(rate), Some(size)) => multiply(packages(volume, size)?, rate),
        (None, _, _) | (_, None, _) | (_, _, None) => Ok(Decimal::ZERO),
    }
}

/// Whole packages needed to hold `volume`, a started package counting as one.
fn packages(volume: Decimal, package_size: Decimal) -> Result<Decimal, RatingError> {
    let remainder = volume.checked_rem(package_size).ok_or(RatingError::TooLarge)?;
    let filled = subtract(volume, remainder)?;
    let full_packages = filled.checked_div(package_size).ok_or(RatingError::TooLarge)?;
    // `filled` is a whole multiple of the size, so the quotient is a whole number unless an
    // operation rounded: check rather than trust.
    if !full_packages.fract().is_zero() || multiply(full_packages, package_size)? != filled {
        return Err(RatingError::TooLarge);
    }
    if remainder.is_zero() {
        Ok(full_packages)
    } else {
        add(full_packages, Decimal::ONE)
    }
}

/// The quantity tiers count. Unit_and_volume usage never reaches tiers (validation refuses it).
fn counted(usage: UsageType, counters: &Usage) -> Decimal {
    match usage {
        UsageType::Unit => counters.units,
        UsageType::Volume | UsageType::UnitAndVolume => counters.volume,
    }
}

fn tier_rate(usage: UsageType, tier: &PriceValue) -> Decimal {
    match usage {
        UsageType::Unit => unit_part(tier),
        UsageType::Volume | UsageType::UnitAndVolume => tier.volume_rate.unwrap_or(Decimal::ZERO),
    }
}

/// The first tier whose inclusive bound reaches `total`. The last tier is open-ended.
fn tier_containing(tiers: &[PriceValue], total: Decimal) -> Result<&PriceValue, RatingError> {
    tiers.iter().find(|tier| tier.up_to.is_none_or(|bound| total <= bound)).ok_or_else(missing_values)
}

/// Prices the quantity between the counts `from` and `to`, each part at the rate of the tier it
/// falls in.
fn graduated_amount(
    usage: UsageType,
    tiers: &[PriceValue],
    from: Decimal,
    to: Decimal,
) -> Result<Decimal, RatingError> {
    let mut amount = Decimal::ZERO;
    let mut lower = Decimal::ZERO;
    for tier in tiers {
        let start = from.max(lower);
        let end = tier.up_to.map_or(to, |bound| to.min(bound));
        if end > start {
            let part = multiply(subtract(end, start)?, tier_rate(usage, tier))?;
            amount = add(amount, prorate(part, tier.package_size)?)?;
        }
        match tier.up_to {
            Some(bound) if bound < to => lower = bound,
            Some(_) | None => break,
        }
    }
    Ok(amount)
}

fn clamp(amount: Decimal, value: &PriceValue) -> Decimal {
    let raised = value.min_amount.map_or(amount, |minimum| amount.max(minimum));
    value.max_amount.map_or(raised, |maximum| raised.min(maximum))
}

// ---------------------------------------------------------------------------------------------
// Exact arithmetic. `Decimal` quietly drops low digits when a result needs more than its 28
// significant digits; a fee must never be rounded by accident, so each step checks that the
// result kept every digit of its operands and fails otherwise.

fn multiply(left: Decimal, right: Decimal) -> Result<Decimal, RatingError> {
    let (left, right) = (left.normalize(), right.normalize());
    if left.is_zero() || right.is_zero() {
        // `Decimal` gives a zero product scale zero; zero is exact whatever its scale.
        return Ok(Decimal::ZERO);
    }
    let product = left.checked_mul(right).ok_or(RatingError::TooLarge)?;
    if product.scale() == left.scale() + right.scale() {
        Ok(product)
    } else {
        Err(RatingError::TooLarge)
    }
}

fn add(left: Decimal, right: Decimal) -> Result<Decimal, RatingError> {
    let (left, right) = (left.normalize(), right.normalize());
    let sum = left.checked_add(right).ok_or(RatingError::TooLarge)?;
    kept_scale(sum, left.scale().max(right.scale()))
}

fn subtract(left: Decimal, right: Decimal) -> Result<Decimal, RatingError> {
    let (left, right) = (left.normalize(), right.normalize());
    let difference = left.checked_sub(right).ok_or(RatingError::TooLarge)?;
    kept_scale(difference, left.scale().max(right.scale()))
}

fn kept_scale(result: Decimal, scale: u32) -> Result<Decimal, RatingError> {
    if result.scale() >= scale {
        Ok(result)
    } else {
        Err(RatingError::TooLarge)
    }
}
