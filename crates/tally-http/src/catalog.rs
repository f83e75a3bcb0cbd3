//! Product definitions in the Credyt API's JSON shapes, their conversion into the core's
//! pricing types, and the cache of parsed versions (versions never change once written, so a
//! parsed version is cached for good).
//!
//! Everything the reference allows but Tally does not bill yet is refused with a 422 naming
//! the field, never accepted and mispriced: usage prices billed other than `real_time`,
//! `usage_type: custom`, aggregations other than `count` and `sum`, invoice collection,
//! funding destinations, tiering periods other than lifetime/monthly/quarterly/yearly.
//! Defaults: `pricing_model` flat; `tiering.period` monthly; `interval_count`, `quantity`
//! and `duration_count` 1; `priority` 0.

use crate::check::Checker;
use crate::limits::{MAX_DESCRIPTION_CHARS, MAX_TEXT_CHARS};
use crate::types::Amount;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tally_core::catalog::{
    Entitlement, FixedBilling, FixedPrice, Interval, ProductVersion, RefreshStrategy, MAX_INTERVAL_COUNT,
};
use tally_core::pricing::{
    AssetPricing, DimensionalValues, PriceValue, PriceValues, PricingModel, TierPeriod, UsagePrice, UsageType,
};
use tally_core::wallet::Purpose;
use tally_core::Mode;
use tally_store::ops::products::Catalog;
use tally_store::ops::OpError;
use tally_store::repo::products;
use tally_store::{Conn, StoreError};
use utoipa::ToSchema;

/// The most prices and entitlements one product version may have.
pub const MAX_PRICES: usize = 50;
pub const MAX_ENTITLEMENTS: usize = 20;

// A request type, parsed once per product version and never held in bulk, so the size
// difference between its variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PriceIn {
    UsageBased(UsageBasedPriceIn),
    Fixed(FixedPriceIn),
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct UsageBasedPriceIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiering: Option<TieringIn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<CollectionIn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub funding_destination: Option<serde_json::Value>,
    pub usage_calculation: UsageCalculationIn,
    pub billing_model: BillingModelIn,
    pub pricing: Vec<UsagePricingIn>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct TieringIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CollectionIn {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct UsageCalculationIn {
    pub event_type: String,
    pub usage_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_aggregation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_aggregation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billable_dimensions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_reference_field: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct BillingModelIn {
    /// `real_time`, `recurring` or `one_time`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurring: Option<RecurringIn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time: Option<OneTimeIn>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct RecurringIn {
    pub interval: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_count: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct OneTimeIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_period: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct UsagePricingIn {
    pub asset: String,
    pub values: Vec<PriceValueIn>,
}

/// A price value, or a dimensional price (when `dimensions` is present).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
pub struct PriceValueIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<BTreeMap<String, String>>,
    /// A dimensional price's values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<PlainPriceValueIn>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_rate: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_size: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_amount: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_amount: Option<Amount>,
}

/// One value of a dimensional price (or one tier of it).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
pub struct PlainPriceValueIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_rate: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_size: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_amount: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_amount: Option<Amount>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct FixedPriceIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<CollectionIn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub funding_destination: Option<serde_json::Value>,
    pub billing_model: BillingModelIn,
    pub pricing: Vec<FixedPricingIn>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct FixedPricingIn {
    pub asset: String,
    pub values: Vec<FixedValueIn>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct FixedValueIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub unit_price: Amount,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<Amount>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct EntitlementIn {
    pub name: String,
    pub asset: String,
    pub amount: Amount,
    /// `bundled` or `promotion`.
    pub purpose: String,
    pub lifecycle: LifecycleIn,
    /// Accepted and kept for reporting; it does not change billing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub accounting: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct LifecycleIn {
    pub duration: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshIn>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct RefreshIn {
    pub strategy: String,
}

/// What a version stores: its prices (with ids assigned) and entitlements.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Definition {
    pub prices: Vec<PriceIn>,
    #[serde(default)]
    pub entitlements: Vec<EntitlementIn>,
}

/// A definition checked and converted: what the version bills, and every asset it names.
pub struct Parsed {
    pub definition: Definition,
    pub usage_prices: Vec<UsagePrice>,
    pub fixed_prices: Vec<FixedPrice>,
    pub entitlements: Vec<Entitlement>,
    /// `(field, asset)`: every asset named, for the caller to check exists.
    pub assets: Vec<(String, String)>,
}

/// Checks a definition, gives every price without an id a new one, and converts it.
pub fn parse_definition(mut definition: Definition, checker: &mut Checker) -> Option<Parsed> {
    if definition.prices.len() > MAX_PRICES {
        checker.error("prices", format!("at most {MAX_PRICES} prices"));
    }
    if definition.entitlements.len() > MAX_ENTITLEMENTS {
        checker.error("entitlements", format!("at most {MAX_ENTITLEMENTS} entitlements"));
    }
    let mut parsed = Parsed {
        definition: Definition { prices: Vec::new(), entitlements: Vec::new() },
        usage_prices: Vec::new(),
        fixed_prices: Vec::new(),
        entitlements: Vec::new(),
        assets: Vec::new(),
    };
    let mut seen_ids: Vec<String> = Vec::new();
    for (index, price) in definition.prices.iter_mut().enumerate() {
        let id_slot = match price {
            PriceIn::UsageBased(usage) => &mut usage.id,
            PriceIn::Fixed(fixed) => &mut fixed.id,
        };
        let id = id_slot.get_or_insert_with(|| tally_store::ids::new_id("prc")).clone();
        let valid_id =
            !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_id {
            checker.error(format!("prices[{index}].id"), "must be 1 to 64 letters, digits, '_' or '-'");
        }
        if seen_ids.contains(&id) {
            checker.error(format!("prices[{index}].id"), "appears twice in this version");
        }
        seen_ids.push(id.clone());
        let prefix = format!("prices[{index}]");
        match price {
            PriceIn::UsageBased(usage) => {
                if let Some(price) = usage_price(usage, &id, &prefix, checker, &mut parsed.assets) {
                    parsed.usage_prices.push(price);
                }
            }
            PriceIn::Fixed(fixed) => {
                fixed_prices(fixed, &id, &prefix, checker, &mut parsed.assets, &mut parsed.fixed_prices)
            }
        }
    }
    for (index, entitlement) in definition.entitlements.iter().enumerate() {
        if let Some(parsed_entitlement) = entitlement_of(entitlement, &format!("entitlements[{index}]"), checker) {
            parsed.assets.push((format!("entitlements[{index}].asset"), parsed_entitlement.asset.clone()));
            parsed.entitlements.push(parsed_entitlement);
        }
    }
    parsed.definition = definition;
    Some(parsed)
}

fn check_collection(
    collection: &Option<CollectionIn>,
    funding: &Option<serde_json::Value>,
    prefix: &str,
    checker: &mut Checker,
) {
    if let Some(collection) = collection {
        if collection.kind != "balance" {
            checker.error(
                format!("{prefix}.collection.type"),
                "only balance collection is supported: fees are debited from the wallet",
            );
        }
        if collection.address.is_some() {
            checker.error(
                format!("{prefix}.collection.address"),
                "is not supported yet: fees are debited from the default account of their asset",
            );
        }
    }
    if funding.is_some() {
        checker.error(
            format!("{prefix}.funding_destination"),
            "is not supported yet: fees are debited from the default account of their asset",
        );
    }
    if let Some(timing) = collection.as_ref().and_then(|collection| collection.timing.as_deref()) {
        if timing != "in_advance" {
            checker.error(
                format!("{prefix}.collection.timing"),
                "only in_advance is supported: fees are collected when each period starts",
            );
        }
    }
}

/// Whether a price's fee must be paid before its subscription starts.
/// Whether an explicit `collection` asks for the fee before the subscription starts.
fn pays_first(collection: &Option<CollectionIn>) -> bool {
    collection.as_ref().and_then(|collection| collection.timing.as_deref()) == Some("in_advance")
}

/// Whether the fee must be paid before the subscription starts. An explicit `collection`
/// says so itself. Without one, a recurring fee in a fiat currency is paid first, as Credyt
/// documents for its `glitch_pro` example: a subscription whose customer's balance cannot pay
/// it waits for a payment instead of overdrawing the wallet (when the balance covers it, it is
/// charged from the balance at once, as before). One-time fees and fees in custom assets,
/// which no card can pay, are debited as any charge.
fn fee_paid_first(collection: &Option<CollectionIn>, billing: &FixedBilling, in_fiat: bool) -> bool {
    match collection {
        Some(_) => pays_first(collection),
        None => matches!(billing, FixedBilling::Recurring { .. }) && in_fiat,
    }
}

fn decimal(value: Option<Amount>) -> Option<rust_decimal::Decimal> {
    value.map(|amount| amount.0.normalize())
}

fn price_value(value: &PriceValueIn) -> PriceValue {
    plain_price_value(&PlainPriceValueIn {
        name: None,
        up_to: value.up_to,
        unit_price: value.unit_price,
        volume_rate: value.volume_rate,
        package_size: value.package_size,
        max_amount: value.max_amount,
        min_amount: value.min_amount,
    })
}

fn plain_price_value(value: &PlainPriceValueIn) -> PriceValue {
    PriceValue {
        up_to: decimal(value.up_to),
        unit_price: decimal(value.unit_price),
        volume_rate: decimal(value.volume_rate),
        package_size: decimal(value.package_size),
        min_amount: decimal(value.min_amount),
        max_amount: decimal(value.max_amount),
    }
}

fn usage_price(
    price: &UsageBasedPriceIn,
    id: &str,
    prefix: &str,
    checker: &mut Checker,
    assets: &mut Vec<(String, String)>,
) -> Option<UsagePrice> {
    let name = checker.text(&format!("{prefix}.name"), &price.name, MAX_TEXT_CHARS);
    let calculation = &price.usage_calculation;
    let event_type =
        checker.text(&format!("{prefix}.usage_calculation.event_type"), &calculation.event_type, MAX_TEXT_CHARS);
    check_collection(&price.collection, &price.funding_destination, prefix, checker);
    if price.billing_model.kind != "real_time" {
        checker.error(
            format!("{prefix}.billing_model.type"),
            format!("{:?} is not supported for usage prices yet: use real_time", price.billing_model.kind),
        );
    }
    if calculation.unit_aggregation.as_deref().is_some_and(|aggregation| aggregation != "count") {
        checker.error(format!("{prefix}.usage_calculation.unit_aggregation"), "only count is supported");
    }
    if calculation.volume_aggregation.as_deref().is_some_and(|aggregation| aggregation != "sum") {
        checker.error(format!("{prefix}.usage_calculation.volume_aggregation"), "only sum is supported");
    }
    let usage_type = match UsageType::parse(&calculation.usage_type) {
        Ok(usage_type) => Some(usage_type),
        Err(error) => {
            checker.error(format!("{prefix}.usage_calculation.usage_type"), error.to_string());
            None
        }
    };
    let pricing_model = match PricingModel::parse(price.pricing_model.as_deref().unwrap_or("flat")) {
        Ok(model) => Some(model),
        Err(error) => {
            checker.error(format!("{prefix}.pricing_model"), error.to_string());
            None
        }
    };
    let tiering = price.tiering.as_ref();
    let tier_period =
        match TierPeriod::parse(tiering.and_then(|tiering| tiering.period.as_deref()).unwrap_or("monthly")) {
            Ok(period) => Some(period),
            Err(error) => {
                checker.error(format!("{prefix}.tiering.period"), error.to_string());
                None
            }
        };
    if let (Some(basis), Some(usage_type)) = (tiering.and_then(|tiering| tiering.basis.as_deref()), usage_type) {
        if usage_type.tier_basis() != Some(basis) {
            checker.error(
                format!("{prefix}.tiering.basis"),
                format!("{basis:?} does not match usage_type {}", usage_type.as_str()),
            );
        }
    }
    if price.pricing.is_empty() {
        checker.error(format!("{prefix}.pricing"), "a price needs at least one asset's pricing");
    }
    let mut pricing = Vec::with_capacity(price.pricing.len());
    for (index, asset_pricing) in price.pricing.iter().enumerate() {
        let field = format!("{prefix}.pricing[{index}].asset");
        let Some(asset) = checker.asset_code(&field, &asset_pricing.asset) else {
            continue;
        };
        assets.push((field, asset.to_string()));
        let dimensional = asset_pricing.values.iter().any(|value| value.dimensions.is_some());
        let values = if dimensional {
            let mut entries = Vec::new();
            for (value_index, value) in asset_pricing.values.iter().enumerate() {
                match (&value.dimensions, &value.values) {
                    (Some(dimensions), Some(values)) => entries.push(DimensionalValues {
                        dimensions: dimensions.clone(),
                        values: values.iter().map(plain_price_value).collect(),
                    }),
                    _ => checker.error(
                        format!("{prefix}.pricing[{index}].values[{value_index}]"),
                        "mix of dimensional and plain values: a dimensional price has dimensions and values",
                    ),
                }
            }
            PriceValues::Dimensional(entries)
        } else {
            PriceValues::Plain(asset_pricing.values.iter().map(price_value).collect())
        };
        pricing.push(AssetPricing { asset: asset.to_string(), values });
    }
    let price = UsagePrice {
        id: id.to_owned(),
        name,
        event_type,
        usage_type: usage_type?,
        volume_field: calculation.volume_field.clone().filter(|field| !field.is_empty()),
        billable_dimensions: calculation.billable_dimensions.clone().unwrap_or_default(),
        pricing_model: pricing_model?,
        tier_period: tier_period?,
        pricing,
    };
    if let Err(problems) = price.validate() {
        for problem in problems {
            checker.error(format!("{prefix}.{}", problem.path), problem.message);
        }
        return None;
    }
    Some(price)
}

fn interval(
    checker: &mut Checker,
    field: &str,
    text: &str,
    count: Option<i64>,
    count_field: &str,
) -> Option<(Interval, u32)> {
    let parsed = Interval::parse(text);
    if parsed.is_none() {
        checker.error(field, "must be day, week, month or year");
    }
    let count = count.unwrap_or(1);
    if !(1..=MAX_INTERVAL_COUNT as i64).contains(&count) {
        checker.error(count_field, format!("must be from 1 to {MAX_INTERVAL_COUNT}"));
        return None;
    }
    parsed.map(|interval| (interval, count as u32))
}

fn fixed_prices(
    price: &FixedPriceIn,
    id: &str,
    prefix: &str,
    checker: &mut Checker,
    assets: &mut Vec<(String, String)>,
    out: &mut Vec<FixedPrice>,
) {
    let name = checker.text(&format!("{prefix}.name"), &price.name, MAX_TEXT_CHARS);
    check_collection(&price.collection, &price.funding_destination, prefix, checker);
    if price.pricing_model.as_deref().is_some_and(|model| model != "flat") {
        checker.error(format!("{prefix}.pricing_model"), "fixed prices are flat");
    }
    let billing = match (price.billing_model.kind.as_str(), &price.billing_model.recurring) {
        ("one_time", _) => Some(FixedBilling::OneTime),
        ("recurring", Some(recurring)) => interval(
            checker,
            &format!("{prefix}.billing_model.recurring.interval"),
            &recurring.interval,
            recurring.interval_count,
            &format!("{prefix}.billing_model.recurring.interval_count"),
        )
        .map(|(interval, count)| FixedBilling::Recurring { interval, count }),
        ("recurring", None) => {
            checker.error(format!("{prefix}.billing_model.recurring"), "a recurring price needs its interval");
            None
        }
        (other, _) => {
            checker.error(
                format!("{prefix}.billing_model.type"),
                format!("{other:?}: fixed prices are one_time or recurring"),
            );
            None
        }
    };
    if price.pricing.is_empty() {
        checker.error(format!("{prefix}.pricing"), "a price needs at least one asset's pricing");
    }
    for (index, asset_pricing) in price.pricing.iter().enumerate() {
        let field = format!("{prefix}.pricing[{index}].asset");
        let asset = checker.asset_code(&field, &asset_pricing.asset);
        let mut amount = rust_decimal::Decimal::ZERO;
        for (value_index, value) in asset_pricing.values.iter().enumerate() {
            let value_field = format!("{prefix}.pricing[{index}].values[{value_index}]");
            let unit_price = checker.amount(&format!("{value_field}.unit_price"), value.unit_price);
            let quantity = value.quantity.map_or(rust_decimal::Decimal::ONE, |quantity| {
                checker.positive(&format!("{value_field}.quantity"), quantity)
            });
            if unit_price < rust_decimal::Decimal::ZERO {
                checker.error(format!("{value_field}.unit_price"), "must not be negative");
            }
            match unit_price.checked_mul(quantity).and_then(|line| amount.checked_add(line)) {
                Some(sum) => amount = sum,
                None => checker.error(value_field, "the fee is too large"),
            }
        }
        if pays_first(&price.collection) && asset.as_ref().is_some_and(|asset| !asset.is_currency()) {
            checker.error(
                field.clone(),
                "a fee collected in_advance must be in a fiat currency: the customer pays it by card",
            );
        }
        if let (Some(asset), Some(billing)) = (asset, billing) {
            assets.push((field, asset.to_string()));
            let pay_first = fee_paid_first(&price.collection, &billing, asset.is_currency());
            out.push(FixedPrice {
                id: id.to_owned(),
                name: name.clone(),
                asset: asset.to_string(),
                amount: amount.normalize(),
                billing,
                pay_first,
            });
        }
    }
}

fn entitlement_of(entitlement: &EntitlementIn, prefix: &str, checker: &mut Checker) -> Option<Entitlement> {
    let name = checker.text(&format!("{prefix}.name"), &entitlement.name, MAX_DESCRIPTION_CHARS);
    let asset = checker.asset_code(&format!("{prefix}.asset"), &entitlement.asset);
    let amount = checker.positive(&format!("{prefix}.amount"), entitlement.amount);
    let purpose = match entitlement.purpose.as_str() {
        "bundled" => Some(Purpose::Bundled),
        "promotion" => Some(Purpose::Promotion),
        _ => {
            checker.error(format!("{prefix}.purpose"), "must be bundled or promotion");
            None
        }
    };
    let lifecycle = &entitlement.lifecycle;
    let duration = interval(
        checker,
        &format!("{prefix}.lifecycle.duration"),
        &lifecycle.duration,
        lifecycle.duration_count,
        &format!("{prefix}.lifecycle.duration_count"),
    );
    let refresh = match &lifecycle.refresh {
        None => Some(None),
        Some(refresh) => match RefreshStrategy::parse(&refresh.strategy) {
            Some(strategy) => Some(Some(strategy)),
            None => {
                checker.error(format!("{prefix}.lifecycle.refresh.strategy"), "must be expire_and_replace or rollover");
                None
            }
        },
    };
    let (duration, duration_count) = duration?;
    Some(Entitlement {
        name,
        asset: asset?.to_string(),
        amount,
        purpose: purpose?,
        priority: entitlement.priority.unwrap_or(0),
        duration,
        duration_count,
        refresh: refresh?,
    })
}

/// Parsed product versions, cached for good (they are immutable). Bounded: when it holds
/// `MAX_CACHED` versions it starts afresh.
#[derive(Default)]
pub struct CatalogCache {
    versions: Mutex<HashMap<(String, i64), Arc<ProductVersion>>>,
}

const MAX_CACHED: usize = 10_000;

impl Catalog for CatalogCache {
    fn version(
        &self,
        conn: &mut dyn Conn,
        mode: Mode,
        product_id: &str,
        version: i64,
    ) -> Result<Arc<ProductVersion>, OpError> {
        let key = (product_id.to_owned(), version);
        if let Some(found) = self.versions.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&key) {
            return Ok(found.clone());
        }
        let product = products::get(conn, mode, product_id)?
            .ok_or_else(|| OpError::NotFound(format!("product {product_id} not found")))?;
        let stored = products::get_version(conn, product_id, version)?
            .ok_or_else(|| OpError::NotFound(format!("product {product_id} has no version {version}")))?;
        let parsed = parse_stored(&stored.definition)?;
        let built = Arc::new(ProductVersion {
            product_id: product.id,
            product_code: product.code,
            product_name: product.name,
            version,
            usage_prices: parsed.usage_prices,
            fixed_prices: parsed.fixed_prices,
            entitlements: parsed.entitlements,
        });
        let mut cache = self.versions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, built.clone());
        Ok(built)
    }
}

/// Parses a definition Tally stored; it was checked when written, so a failure is corruption.
pub fn parse_stored(text: &str) -> Result<Parsed, StoreError> {
    let definition: Definition =
        serde_json::from_str(text).map_err(|error| StoreError::Corrupt(format!("product definition: {error}")))?;
    let mut checker = Checker::default();
    let parsed = parse_definition(definition, &mut checker);
    match (parsed, checker.finish()) {
        (Some(parsed), Ok(())) => Ok(parsed),
        _ => Err(StoreError::Corrupt("a stored product definition no longer validates".into())),
    }
}
