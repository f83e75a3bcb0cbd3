//! Usage events: priced and debited in real time, exactly once per event id.
//!
//! One call handles one batch for one customer in one transaction: events already stored
//! (by id, per mode) are skipped and change nothing; every other event is matched by
//! `event_type` against the usage prices of the customer's active subscriptions, rated with
//! the customer's tier counters, stored with its fees, and each fee is debited from the
//! default account of its asset with a ledger entry. Any invalid event refuses the whole
//! batch (nothing is stored) with an error per event. Events no price matches are stored
//! without fees. A price listing several assets bills the event in each of them.

use super::products::Catalog;
use super::subscriptions::active_versions;
use super::wallet::{debit, json_number, open_account, record, save_account, RESERVED_TRANSACTION_PREFIX};
use super::{FieldError, OpError};
use crate::conn::Conn;
use crate::ids;
use crate::repo::events::{self, StoredCost, StoredEvent, StoredFee};
use crate::repo::transactions::Transaction;
use crate::repo::wallets::{Account, AccountKey, GrantOrigin};
use crate::repo::{customers, vendors, Metadata};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tally_core::catalog::ProductVersion;
use tally_core::ledger::SystemAccount;
use tally_core::pricing::{self, EventData, Usage, UsagePrice};
use tally_core::wallet::AccountState;
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerRef {
    Id(String),
    ExternalId(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VendorRef {
    Id(String),
    ExternalId(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewCost {
    pub id: String,
    pub vendor: VendorRef,
    pub category: Option<String>,
    pub description: Option<String>,
    pub amount: Decimal,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub subject: Option<String>,
    pub description: Option<String>,
    pub data: EventData,
    /// `data` as the JSON it arrived as, to store and show back.
    pub data_json: String,
    /// `costs` as JSON, to store and show back.
    pub costs_json: String,
    pub costs: Vec<NewCost>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub stored: usize,
    pub duplicates: usize,
    pub fees: usize,
}

/// One fee rated for one event, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RatedFee {
    pub version: Arc<ProductVersion>,
    pub price_name: String,
    pub fee: pricing::Fee,
    pub volume_field: Option<String>,
}

/// Rates one event against every usage price of `versions` for its type, reading and
/// advancing the tier counters through `counter`.
pub fn rate_event(
    versions: &[Arc<ProductVersion>],
    event: &NewEvent,
    counter: &mut dyn FnMut(&UsagePrice, i64) -> Result<Usage, OpError>,
    store_counter: &mut dyn FnMut(&UsagePrice, i64, Usage),
) -> Result<Vec<RatedFee>, Result<String, OpError>> {
    let mut rated = Vec::new();
    for version in versions {
        for price in version.usage_prices.iter().filter(|price| price.event_type == event.event_type) {
            let period =
                pricing::period_start(price.tier_period, event.occurred_at).map_or(0, |start| start.timestamp_micros());
            let before = counter(price, period).map_err(Err)?;
            let fees = pricing::rate(price, &event.data, &before).map_err(|error| Ok(error.to_string()))?;
            if let Some(first) = fees.first() {
                store_counter(price, period, first.usage_after);
            }
            rated.extend(fees.into_iter().map(|fee| RatedFee {
                version: version.clone(),
                price_name: price.name.clone(),
                fee,
                volume_field: price.volume_field.clone(),
            }));
        }
    }
    Ok(rated)
}

pub fn ingest(
    conn: &mut dyn Conn,
    mode: Mode,
    customer: &CustomerRef,
    batch: &[NewEvent],
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<IngestReport, OpError> {
    let customer_id = lock_customer(conn, mode, customer)?;
    let mut errors: Vec<FieldError> = Vec::new();
    let mut seen_in_batch: HashSet<&str> = HashSet::new();
    for (index, event) in batch.iter().enumerate() {
        if !seen_in_batch.insert(event.id.as_str()) {
            errors.push(FieldError {
                field: format!("events[{index}].id"),
                message: format!("{} appears more than once in the batch", event.id),
            });
        }
    }
    let ids: Vec<&str> = batch.iter().map(|event| event.id.as_str()).collect();
    let existing = events::existing_ids(conn, mode, &ids)?;
    let fresh: Vec<(usize, &NewEvent)> =
        batch.iter().enumerate().filter(|(_, event)| !existing.contains(&event.id)).collect();
    let mut report = IngestReport { duplicates: batch.len() - fresh.len(), ..IngestReport::default() };
    if fresh.is_empty() && errors.is_empty() {
        return Ok(report);
    }
    let versions = active_versions(conn, mode, &customer_id, catalog, now)?;
    let mut vendor_ids: HashMap<VendorRef, String> = HashMap::new();
    let mut counters: HashMap<(String, i64), Usage> = HashMap::new();
    let mut rated_events: Vec<(&NewEvent, Vec<RatedFee>)> = Vec::with_capacity(fresh.len());
    for (index, event) in &fresh {
        for (cost_index, cost) in event.costs.iter().enumerate() {
            if let Err(message) = resolve_vendor(conn, mode, &cost.vendor, &mut vendor_ids)? {
                errors.push(FieldError { field: format!("events[{index}].costs[{cost_index}].vendor_id"), message });
            }
        }
        let mut load = |price: &UsagePrice, period: i64| -> Result<Usage, OpError> {
            let key = (price.id.clone(), period);
            if let Some(usage) = counters.get(&key) {
                return Ok(*usage);
            }
            Ok(events::counter(conn, &customer_id, &price.id, period)?)
        };
        let mut pending_counters: Vec<((String, i64), Usage)> = Vec::new();
        let mut keep =
            |price: &UsagePrice, period: i64, usage: Usage| pending_counters.push(((price.id.clone(), period), usage));
        match rate_event(&versions, event, &mut load, &mut keep) {
            Ok(fees) => rated_events.push((event, fees)),
            Err(Ok(message)) => errors.push(FieldError { field: format!("events[{index}]"), message }),
            Err(Err(error)) => return Err(error),
        }
        counters.extend(pending_counters);
    }
    if !errors.is_empty() {
        return Err(OpError::Invalid(errors));
    }
    let mut accounts: HashMap<String, (Account, AccountState)> = HashMap::new();
    for (event, fees) in &rated_events {
        store_event(conn, mode, &customer_id, event, fees, &vendor_ids, &mut accounts, now)?;
        report.stored += 1;
        report.fees += fees.len();
    }
    for (account, loaded) in accounts.values() {
        save_account(conn, mode, loaded, account, &GrantOrigin::default(), now)?;
    }
    for ((price_id, period), usage) in &counters {
        events::put_counter(conn, &customer_id, price_id, *period, usage)?;
    }
    Ok(report)
}

fn lock_customer(conn: &mut dyn Conn, mode: Mode, customer: &CustomerRef) -> Result<String, OpError> {
    let id = match customer {
        CustomerRef::Id(id) => id.clone(),
        CustomerRef::ExternalId(external_id) => {
            customers::find_by_external_id(conn, mode, external_id)?
                .ok_or_else(|| {
                    OpError::invalid("customer_external_id", format!("no customer with external_id {external_id:?}"))
                })?
                .id
        }
    };
    customers::get_for_update(conn, mode, &id)?
        .ok_or_else(|| OpError::invalid("customer_id", format!("no customer {id}")))?;
    Ok(id)
}

/// The vendor's id, or a message when it does not exist.
fn resolve_vendor(
    conn: &mut dyn Conn,
    mode: Mode,
    reference: &VendorRef,
    known: &mut HashMap<VendorRef, String>,
) -> Result<Result<String, String>, OpError> {
    if let Some(id) = known.get(reference) {
        return Ok(Ok(id.clone()));
    }
    let found = match reference {
        VendorRef::Id(id) => vendors::get(conn, mode, id)?,
        VendorRef::ExternalId(external_id) => vendors::find_by_external_id(conn, mode, external_id)?,
    };
    Ok(match found {
        Some(vendor) => {
            known.insert(reference.clone(), vendor.id.clone());
            Ok(vendor.id)
        }
        None => Err(format!("no vendor {reference:?}")),
    })
}

#[allow(clippy::too_many_arguments)]
fn store_event(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    event: &NewEvent,
    fees: &[RatedFee],
    vendor_ids: &HashMap<VendorRef, String>,
    accounts: &mut HashMap<String, (Account, AccountState)>,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let single_asset = fees
        .first()
        .map(|first| first.fee.asset.clone())
        .filter(|asset| fees.iter().all(|rated| &rated.fee.asset == asset));
    let stored = StoredEvent {
        id: event.id.clone(),
        customer_id: customer_id.to_owned(),
        event_type: event.event_type.clone(),
        occurred_at: event.occurred_at,
        subject: event.subject.clone(),
        description: event.description.clone(),
        data: event.data_json.clone(),
        costs: event.costs_json.clone(),
        has_fees: !fees.is_empty(),
        total_fees: single_asset.as_ref().map(|_| fees.iter().map(|rated| rated.fee.amount).sum()),
        fee_currency: single_asset,
        created_at: now,
    };
    events::insert(conn, mode, &stored)?;
    for (line, rated) in fees.iter().enumerate() {
        store_fee(conn, mode, customer_id, event, rated, line as i64, accounts, now)?;
    }
    for (line, cost) in event.costs.iter().enumerate() {
        let vendor_id = vendor_ids.get(&cost.vendor).cloned().unwrap_or_default();
        events::insert_cost(
            conn,
            mode,
            &StoredCost {
                event_id: event.id.clone(),
                line: line as i64,
                customer_id: customer_id.to_owned(),
                cost_id: cost.id.clone(),
                vendor_id,
                category: cost.category.clone(),
                description: cost.description.clone(),
                amount: cost.amount,
                currency: cost.currency.clone(),
                occurred_at: event.occurred_at,
            },
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn store_fee(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    event: &NewEvent,
    rated: &RatedFee,
    line: i64,
    accounts: &mut HashMap<String, (Account, AccountState)>,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let fee = &rated.fee;
    let detail = serde_json::json!({
        "dimensions": fee.dimensions,
        "usage_type": fee.usage_type.as_str(),
        "volume_field": rated.volume_field,
        "input_volume": json_number(fee.volume),
        "unit_price": json_number(fee.unit_price),
        "volume_rate": json_number(fee.volume_rate),
        "package_size": json_number(fee.package_size),
        "description": event.description,
    });
    events::insert_fee(
        conn,
        mode,
        &StoredFee {
            id: ids::new_id("fee"),
            event_id: event.id.clone(),
            customer_id: customer_id.to_owned(),
            line,
            product_id: rated.version.product_id.clone(),
            product_code: rated.version.product_code.clone(),
            product_version: rated.version.version,
            price_id: fee.price_id.clone(),
            price_name: rated.price_name.clone(),
            asset: fee.asset.clone(),
            account_name: "default".into(),
            detail: detail.to_string(),
            amount: fee.amount,
            occurred_at: event.occurred_at,
            created_at: now,
        },
    )?;
    if fee.amount.is_zero() {
        return Ok(());
    }
    let key = AccountKey { customer_id: customer_id.to_owned(), name: "default".into(), asset: fee.asset.clone() };
    if !accounts.contains_key(&fee.asset) {
        let opened = open_account(conn, mode, &key, now)?;
        accounts.insert(fee.asset.clone(), opened);
    }
    let (account, _) = accounts.get_mut(&fee.asset).expect("opened above");
    let postings = debit(&mut account.state, fee.amount, SystemAccount::Revenue)?;
    let transaction = Transaction {
        customer_id: customer_id.to_owned(),
        id: format!("{RESERVED_TRANSACTION_PREFIX}event_{}_{line}", event.id),
        kind: "fee".into(),
        account_name: key.name.clone(),
        asset: key.asset.clone(),
        amount: -fee.amount,
        description: event
            .description
            .clone()
            .or_else(|| Some(format!("{}: {}", rated.version.product_name, rated.price_name))),
        metadata: Metadata::new(),
        request_hash: String::new(),
        detail: serde_json::json!({
            "event_id": event.id,
            "event_type": event.event_type,
            "subject": event.subject,
            "product_id": rated.version.product_id,
            "product_name": rated.version.product_name,
            "price_id": fee.price_id,
        })
        .to_string(),
        created_at: now,
        executed_at: Some(now),
    };
    record(conn, mode, &key, &transaction, &postings, now)
}

/// Fees by the id of the event that owes them, and a warning per event that owes none.
pub type Simulation = (Vec<(String, RatedFee)>, Vec<String>);

/// Prices `batch` against one product version as a brand-new customer would be priced, and
/// changes nothing. Returns the fees and a warning for every event that produced none.
pub fn simulate(version: &Arc<ProductVersion>, batch: &[NewEvent]) -> Result<Simulation, OpError> {
    let versions = vec![version.clone()];
    let mut counters: HashMap<(String, i64), Usage> = HashMap::new();
    let mut fees = Vec::new();
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for (index, event) in batch.iter().enumerate() {
        let snapshot = counters.clone();
        let mut load = |price: &UsagePrice, period: i64| {
            Ok(snapshot.get(&(price.id.clone(), period)).copied().unwrap_or(Usage::ZERO))
        };
        let mut updates = Vec::new();
        let mut keep =
            |price: &UsagePrice, period: i64, usage: Usage| updates.push(((price.id.clone(), period), usage));
        match rate_event(&versions, event, &mut load, &mut keep) {
            Ok(rated) if rated.is_empty() => warnings.push(format!(
                "event {} ({}): no price of this product matches its event type",
                event.id, event.event_type
            )),
            Ok(rated) => fees.extend(rated.into_iter().map(|fee| (event.id.clone(), fee))),
            Err(Ok(message)) => errors.push(FieldError { field: format!("events[{index}]"), message }),
            Err(Err(error)) => return Err(error),
        }
        counters.extend(updates);
    }
    if !errors.is_empty() {
        return Err(OpError::Invalid(errors));
    }
    Ok((fees, warnings))
}
