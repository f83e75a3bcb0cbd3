//! Subscriptions: a customer pinned to product versions.
//!
//! Lifecycle and rules:
//! - A subscription starting now activates at once; one starting later is `scheduled` and
//!   activates by itself at `starts_at` (the background worker, or the next event for the
//!   customer). A `starts_at` more than 5 minutes in the past is refused.
//! - A customer holds a product in one subscription at a time: a second subscription to it
//!   while one is active, scheduled or waiting for payment is a conflict (so is resuming one
//!   while another holds the product).
//! - Activation creates the default wallet account of every asset the versions price or
//!   grant, collects every fixed fee (one-time and the first recurring one) from the wallet
//!   balance, and grants every entitlement.
//! - `renews_at` is given, or else derived from the first recurring fixed fee's interval. At
//!   each renewal the recurring fees are collected again. Renewals fall whole intervals after
//!   the cycle's anchor (the activation, or a given `renews_at`), each computed from the
//!   anchor: a monthly cycle from 31 January renews on 28 (29) February, 31 March, 30 April.
//!   Without recurring fees a subscription is perpetual.
//! - Entitlements with a refresh strategy are re-granted at the end of each period, their
//!   periods likewise counted from their first grant.
//! - Fixed fees are debited like charges: overdraft is allowed (the top-up issue adds
//!   `action_required` for fees that must be paid first).
//! - `inactive` stops rating and every scheduled action. Setting it `active` again never
//!   collects a one-time fee again and never grants an entitlement twice in one period:
//!   inside the billing period already paid for the schedule simply continues; once that
//!   period has passed a new cycle starts at that moment (recurring fees collected, renewals
//!   anchored there). An entitlement whose period ended meanwhile is granted anew then; a
//!   one-off entitlement is granted once in a subscription's life.
//! - Moving a product to another version changes rating at once; the new version's fixed
//!   fees apply from the next renewal. Entitlements the new version lacks stop refreshing;
//!   entitlements it adds are granted at the subscription's next renewal or refresh (at once
//!   when it has none scheduled).

use super::products::{self as product_ops, Catalog, VersionRef};
use super::wallet::{debit, open_account, record, save_account, wallet_error, RESERVED_TRANSACTION_PREFIX};
use super::OpError;
use crate::conn::Conn;
use crate::ids;
use crate::repo::customers;
use crate::repo::idempotency::{self, IdempotencyRecord};
use crate::repo::products::{self, VersionStatus};
use crate::repo::subscriptions::{self, EntitlementPeriod, PinnedProduct, Subscription, SubscriptionStatus};
use crate::repo::transactions::Transaction;
use crate::repo::wallets::{self, AccountKey, GrantOrigin};
use crate::repo::Metadata;
use crate::StoreError;
use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;
use tally_core::catalog::{FixedBilling, ProductVersion};
use tally_core::ledger::SystemAccount;
use tally_core::wallet::{Grant, GrantState};
use tally_core::Mode;

/// The most scheduled actions one subscription may catch up on in one pass.
const MAX_CATCH_UP: usize = 1000;
const START_CLOCK_SKEW_SECONDS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductRef {
    Id(String),
    Code(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewSubscription {
    pub starts_at: Option<DateTime<Utc>>,
    pub renews_at: Option<DateTime<Utc>>,
    pub products: Vec<(ProductRef, VersionRef)>,
}

/// Creates a subscription (the customer's row is locked by the caller or here).
pub fn create(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    new: &NewSubscription,
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<Subscription, OpError> {
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| super::customers::not_found(customer_id))?;
    let mut pinned: Vec<PinnedProduct> = Vec::new();
    for (index, (product, version)) in new.products.iter().enumerate() {
        let field = format!("products[{index}]");
        let product_id = match product {
            ProductRef::Id(id) => id.clone(),
            ProductRef::Code(code) => {
                products::find_by_code(conn, mode, code)?
                    .ok_or_else(|| OpError::invalid(format!("{field}.code"), format!("no product with code {code}")))?
                    .id
            }
        };
        let (found, version) =
            product_ops::resolve_for_subscribing(conn, mode, &product_id, *version).map_err(|error| match error {
                OpError::NotFound(message) => OpError::invalid(field.clone(), message),
                other => other,
            })?;
        if found.archived_at.is_some() || version.status != VersionStatus::Published {
            return Err(OpError::invalid(
                format!("{field}.version"),
                format!(
                    "version {} of {} is {}: only published versions can be subscribed to",
                    version.version,
                    found.code,
                    version.status.as_str()
                ),
            ));
        }
        if pinned.iter().any(|existing| existing.product_id == found.id) {
            return Err(OpError::invalid(field, format!("product {} appears twice", found.code)));
        }
        refuse_second_subscription(conn, customer_id, &found.id, &found.code, None)?;
        pinned.push(PinnedProduct { product_id: found.id, version: version.version });
    }
    if pinned.is_empty() {
        return Err(OpError::invalid("products", "a subscription needs at least one product"));
    }
    let starts_at = match new.starts_at {
        Some(at) if at < now - Duration::seconds(START_CLOCK_SKEW_SECONDS) => {
            return Err(OpError::invalid("starts_at", "must not be in the past"))
        }
        Some(at) => at.max(now),
        None => now,
    };
    if let Some(renews_at) = new.renews_at {
        if renews_at <= starts_at {
            return Err(OpError::invalid("renews_at", "must be after starts_at"));
        }
    }
    let mut subscription = Subscription {
        id: ids::new_id("sub"),
        customer_id: customer_id.to_owned(),
        status: SubscriptionStatus::Scheduled,
        starts_at,
        started_at: None,
        renews_at: new.renews_at,
        renewal_anchor_at: None,
        next_action_at: Some(starts_at),
        products: pinned,
        created_at: now,
    };
    subscriptions::insert(conn, mode, &subscription)?;
    if starts_at <= now {
        start_or_wait_for_payment(conn, mode, &mut subscription, catalog, now)?;
    }
    Ok(subscription)
}

/// A customer holds a product in one subscription at a time (the customer's row is locked).
fn refuse_second_subscription(
    conn: &mut dyn Conn,
    customer_id: &str,
    product_id: &str,
    product_code: &str,
    except: Option<&str>,
) -> Result<(), OpError> {
    match subscriptions::holding_product(conn, customer_id, product_id, except)? {
        Some(holder) => Err(OpError::Conflict(format!(
            "customer {customer_id} is already subscribed to product {product_code} (subscription {holder}): \
             a product is held in one subscription at a time; move that one to another version, or make it \
             inactive first"
        ))),
        None => Ok(()),
    }
}

/// The scope of `POST /customers/{customerId}/subscriptions` idempotency keys.
pub const IDEMPOTENCY_SCOPE: &str = "POST /customers/{customerId}/subscriptions";

/// What [`create_once`] found or made.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    New(Subscription),
    /// The subscription an earlier request with the same idempotency key made, as it is now.
    /// Nothing was created.
    Replay(Subscription),
}

/// [`create`], once per idempotency key: a retry with the same key and request (`request_hash`
/// covers the customer and everything the request says) finds the first subscription; the
/// same key with a different request is a conflict. The key is recorded in the transaction
/// that makes the subscription.
#[allow(clippy::too_many_arguments)]
pub fn create_once(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    new: &NewSubscription,
    key: &str,
    request_hash: &str,
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<Created, OpError> {
    // The customer's lock serialises retries of one request, so the second finds the first's key.
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| super::customers::not_found(customer_id))?;
    let made_before = super::replayed_resource(conn, mode, IDEMPOTENCY_SCOPE, key, request_hash, "subscription")?;
    if let Some(id) = made_before {
        let subscription =
            subscriptions::get(conn, mode, &id)?.ok_or_else(|| super::vanished_resource(key, "subscription", &id))?;
        return Ok(Created::Replay(subscription));
    }
    let subscription = create(conn, mode, customer_id, new, catalog, now)?;
    let record = IdempotencyRecord {
        scope: IDEMPOTENCY_SCOPE.to_owned(),
        key: key.to_owned(),
        customer_id: Some(customer_id.to_owned()),
        request_hash: request_hash.to_owned(),
        resource_id: subscription.id.clone(),
        created_at: now,
    };
    idempotency::insert(conn, mode, &record).map_err(|error| match error {
        // The same key for another customer, in flight at the same moment.
        StoreError::Conflict(_) => {
            OpError::Conflict(format!("another request with the Idempotency-Key {key:?} is in progress; retry it"))
        }
        other => OpError::Store(other),
    })?;
    Ok(Created::New(subscription))
}

/// Activates now, unless fees that must be paid first are not covered by the balance: then
/// the subscription waits in `action_required` until a payment wakes it.
fn start_or_wait_for_payment(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &mut Subscription,
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    if payment_due(conn, mode, subscription, catalog)?.is_empty() {
        activate(conn, mode, subscription, catalog, now, now)
    } else {
        subscription.status = SubscriptionStatus::ActionRequired;
        reschedule(conn, subscription, now)
    }
}

/// What the customer must pay before the subscription can start: per asset, the part of the
/// fees collected `in_advance` that the account's available balance does not cover.
pub fn payment_due(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &Subscription,
    catalog: &dyn Catalog,
) -> Result<Vec<(String, rust_decimal::Decimal)>, OpError> {
    let mut needed: Vec<(String, rust_decimal::Decimal)> = Vec::new();
    let due_now = FeesDue::on_activation(subscription);
    for version in versions(conn, mode, subscription, catalog)? {
        for price in version.fixed_prices.iter().filter(|price| price.pay_first && due_now.includes(price.billing)) {
            match needed.iter_mut().find(|(asset, _)| *asset == price.asset) {
                Some((_, sum)) => *sum += price.amount,
                None => needed.push((price.asset.clone(), price.amount)),
            }
        }
    }
    let mut due = Vec::new();
    for (asset, amount) in needed {
        let key =
            AccountKey { customer_id: subscription.customer_id.clone(), name: "default".into(), asset: asset.clone() };
        let available =
            wallets::get(conn, &key)?.map_or(rust_decimal::Decimal::ZERO, |account| account.state.available);
        if available < amount {
            due.push((asset, amount - available));
        }
    }
    Ok(due)
}

fn versions(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &Subscription,
    catalog: &dyn Catalog,
) -> Result<Vec<Arc<ProductVersion>>, OpError> {
    subscription.products.iter().map(|pinned| catalog.version(conn, mode, &pinned.product_id, pinned.version)).collect()
}

/// Activates at `at`: accounts, fixed fees, entitlements, and the schedule that follows.
fn activate(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &mut Subscription,
    catalog: &dyn Catalog,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let versions = versions(conn, mode, subscription, catalog)?;
    for version in &versions {
        for asset in version.assets() {
            let key = AccountKey { customer_id: subscription.customer_id.clone(), name: "default".into(), asset };
            wallets::ensure(conn, mode, &key, now)?;
        }
    }
    let fees = FeesDue::on_activation(subscription);
    let first_activation = subscription.started_at.is_none();
    subscription.status = SubscriptionStatus::Active;
    subscription.started_at.get_or_insert(at);
    // Events that occurred from `at` on are priced by these versions (a late start counts from `at`).
    subscriptions::record_history(conn, subscription, at)?;
    // The period the recurring fees pay for ends where the cycle computed below renews.
    let period_end = match subscription.renews_at {
        Some(renews_at) if renews_at > at => Some(renews_at),
        Some(_) | None => next_renewal(&versions, at, at),
    };
    collect_fixed_fees(conn, mode, subscription, &versions, at, period_end, fees, now)?;
    let periods = subscriptions::entitlement_periods(conn, &subscription.id)?;
    for version in &versions {
        for index in 0..version.entitlements.len() {
            // Granted once per period: not again when resuming inside the period of an earlier
            // grant, and a one-off entitlement (no next refresh) never again.
            let granted = periods.iter().any(|period| {
                period.product_id == version.product_id
                    && period.entitlement_index == index as i64
                    && period.next_refresh_at.is_none_or(|next| next > at)
            });
            if !granted {
                grant_entitlement(conn, mode, subscription, version, index, at, at, now)?;
            }
        }
    }
    if subscription.renews_at.is_none_or(|renews_at| renews_at <= at) {
        // The cycle starts here.
        subscription.renewal_anchor_at = Some(at);
        subscription.renews_at = next_renewal(&versions, at, at);
    } else if first_activation {
        // A `renews_at` given at creation anchors the cycle.
        subscription.renewal_anchor_at = subscription.renews_at;
    }
    super::webhooks::subscription_activated(conn, mode, subscription, now)?;
    reschedule(conn, subscription, now)
}

/// Which fixed fees fall due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FeesDue {
    one_time: bool,
    /// A billing period starts: recurring fees are collected.
    new_period: bool,
}

impl FeesDue {
    const RENEWAL: FeesDue = FeesDue { one_time: false, new_period: true };

    /// On (re)activation: one-time fees only the first time; recurring fees unless the
    /// subscription resumes inside a billing period already paid for (`renews_at` still ahead;
    /// a resume clears a `renews_at` that has passed).
    fn on_activation(subscription: &Subscription) -> FeesDue {
        let first = subscription.started_at.is_none();
        FeesDue { one_time: first, new_period: first || subscription.renews_at.is_none() }
    }

    fn includes(self, billing: FixedBilling) -> bool {
        match billing {
            FixedBilling::OneTime => self.one_time,
            FixedBilling::Recurring { .. } => self.new_period,
        }
    }
}

/// The first renewal after `after` of the cycle anchored at `anchor`, at the versions'
/// recurring cadence; `None` for a perpetual subscription.
fn next_renewal(
    versions: &[Arc<ProductVersion>],
    anchor: DateTime<Utc>,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let (interval, count) = versions.iter().find_map(|version| version.renewal_interval())?;
    interval.next_period_end(anchor, count, after)
}

/// Debits the fixed fees `due` at `at`. A recurring fee pays for the period to `period_end`,
/// which the ledger records beside its entry (the revenue report recognises it over that time).
#[allow(clippy::too_many_arguments)]
fn collect_fixed_fees(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &Subscription,
    versions: &[Arc<ProductVersion>],
    at: DateTime<Utc>,
    period_end: Option<DateTime<Utc>>,
    due: FeesDue,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    for version in versions {
        for price in &version.fixed_prices {
            if !due.includes(price.billing) || price.amount.is_zero() {
                continue;
            }
            let key = AccountKey {
                customer_id: subscription.customer_id.clone(),
                name: "default".into(),
                asset: price.asset.clone(),
            };
            let (mut account, loaded) = open_account(conn, mode, &key, now)?;
            let postings = debit(&mut account.state, price.amount, SystemAccount::Revenue)?;
            save_account(conn, mode, &loaded, &account, &GrantOrigin::default(), now)?;
            let transaction = Transaction {
                customer_id: subscription.customer_id.clone(),
                id: format!(
                    "{RESERVED_TRANSACTION_PREFIX}subscription_{}_{}_{}",
                    subscription.id,
                    price.id,
                    at.timestamp_micros()
                ),
                kind: "fee".into(),
                account_name: key.name.clone(),
                asset: key.asset.clone(),
                amount: -price.amount,
                description: Some(format!("{}: {}", version.product_name, price.name)),
                metadata: Metadata::new(),
                request_hash: String::new(),
                detail: serde_json::json!({
                    "subscription_id": subscription.id,
                    "product_id": version.product_id,
                    "product_version": version.version,
                    "price_id": price.id,
                })
                .to_string(),
                created_at: at,
                executed_at: Some(at),
            };
            record(conn, mode, &key, &transaction, &postings, now)?;
            if let (FixedBilling::Recurring { .. }, Some(until)) = (price.billing, period_end) {
                if until > at {
                    crate::repo::ledger::record_fee_period(conn, mode, &key.customer_id, &transaction.id, at, until)?;
                }
            }
        }
    }
    Ok(())
}

/// Grants entitlement `index` of `version` at `at`, in the cycle of periods anchored at
/// `anchor` (its first grant), and records when it refreshes next.
#[allow(clippy::too_many_arguments)]
fn grant_entitlement(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &Subscription,
    version: &ProductVersion,
    index: usize,
    anchor: DateTime<Utc>,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let entitlement = &version.entitlements[index];
    let key = AccountKey {
        customer_id: subscription.customer_id.clone(),
        name: "default".into(),
        asset: entitlement.asset.clone(),
    };
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    let transaction_id = format!(
        "{RESERVED_TRANSACTION_PREFIX}entitlement_{}_{}_{index}_{}",
        subscription.id,
        version.product_id,
        at.timestamp_micros()
    );
    let grant = Grant {
        id: ids::new_id("grt").into(),
        purpose: entitlement.purpose,
        priority: entitlement.priority,
        amount: entitlement.amount,
        remaining: entitlement.amount,
        effective_at: at,
        expires_at: entitlement.grant_expiry(anchor, at),
        created_at: at,
        state: GrantState::Pending,
    };
    let postings =
        account.state.credit(grant, SystemAccount::Issuance, now).map_err(|error| wallet_error(error, "products"))?;
    let origin = GrantOrigin { transaction_id: Some(transaction_id.clone()), ..GrantOrigin::default() };
    save_account(conn, mode, &loaded, &account, &origin, now)?;
    let transaction = Transaction {
        customer_id: subscription.customer_id.clone(),
        id: transaction_id,
        kind: "adjustment".into(),
        account_name: key.name.clone(),
        asset: key.asset.clone(),
        amount: entitlement.amount,
        description: Some(format!("{}: {}", version.product_name, entitlement.name)),
        metadata: Metadata::new(),
        request_hash: String::new(),
        detail: serde_json::json!({
            "reason": "entitlement",
            "subscription_id": subscription.id,
            "product_id": version.product_id,
            "product_version": version.version,
        })
        .to_string(),
        created_at: at,
        executed_at: Some(at),
    };
    record(conn, mode, &key, &transaction, &postings, now)?;
    let next_refresh_at = entitlement.refresh.and_then(|_| entitlement.period_end(anchor, at));
    let period = EntitlementPeriod {
        subscription_id: subscription.id.clone(),
        product_id: version.product_id.clone(),
        entitlement_index: index as i64,
        period_start: at,
        next_refresh_at,
        anchor_at: anchor,
    };
    subscriptions::upsert_entitlement_period(conn, &subscription.customer_id, &period)?;
    Ok(())
}

/// Sets `next_action_at` to the earliest pending action and saves the subscription.
fn reschedule(conn: &mut dyn Conn, subscription: &mut Subscription, now: DateTime<Utc>) -> Result<(), OpError> {
    subscription.next_action_at = match subscription.status {
        SubscriptionStatus::Scheduled => Some(subscription.starts_at),
        SubscriptionStatus::Active => {
            let refreshes = subscriptions::entitlement_periods(conn, &subscription.id)?;
            refreshes.iter().filter_map(|period| period.next_refresh_at).chain(subscription.renews_at).min()
        }
        SubscriptionStatus::Inactive | SubscriptionStatus::ActionRequired => None,
    };
    // Every status change passes here: the history of active intervals follows it.
    subscriptions::record_history(conn, subscription, now)?;
    subscriptions::update(conn, subscription, now)?;
    Ok(())
}

/// Runs every action of one subscription due at `now`, in time order. Returns whether any ran.
pub fn process_due(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription_id: &str,
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<bool, OpError> {
    let Some(mut subscription) = subscriptions::get(conn, mode, subscription_id)? else {
        return Ok(false);
    };
    customers::get_for_update(conn, mode, &subscription.customer_id)?;
    // Re-read under the lock: another server may have just done the work.
    let Some(fresh) = subscriptions::get(conn, mode, subscription_id)? else {
        return Ok(false);
    };
    subscription = fresh;
    let mut ran = false;
    for _ in 0..MAX_CATCH_UP {
        let Some(due_at) = subscription.next_action_at.filter(|at| *at <= now) else {
            break;
        };
        ran = true;
        match subscription.status {
            SubscriptionStatus::Scheduled => activate(conn, mode, &mut subscription, catalog, due_at, now)?,
            SubscriptionStatus::Active => run_active_action(conn, mode, &mut subscription, catalog, due_at, now)?,
            // Woken by a payment: start if what had to be paid first is now covered.
            SubscriptionStatus::ActionRequired => {
                start_or_wait_for_payment(conn, mode, &mut subscription, catalog, now)?
            }
            SubscriptionStatus::Inactive => {
                subscription.next_action_at = None;
                subscriptions::update(conn, &subscription, now)?;
            }
        }
    }
    Ok(ran)
}

fn run_active_action(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &mut Subscription,
    catalog: &dyn Catalog,
    due_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let versions = versions(conn, mode, subscription, catalog)?;
    if subscription.renews_at == Some(due_at) {
        let anchor = *subscription.renewal_anchor_at.get_or_insert(due_at);
        let period_end = next_renewal(&versions, anchor, due_at);
        collect_fixed_fees(conn, mode, subscription, &versions, due_at, period_end, FeesDue::RENEWAL, now)?;
        subscription.renews_at = period_end;
    }
    for period in subscriptions::entitlement_periods(conn, &subscription.id)? {
        if period.next_refresh_at != Some(due_at) {
            continue;
        }
        let index = period.entitlement_index as usize;
        match versions
            .iter()
            .find(|version| version.product_id == period.product_id && index < version.entitlements.len())
        {
            Some(version) => {
                grant_entitlement(conn, mode, subscription, version, index, period.anchor_at, due_at, now)?
            }
            // The pinned version no longer has this entitlement: its refreshes end here
            // (otherwise this refresh would stay due, and be claimed, forever).
            None => subscriptions::delete_entitlement_period(conn, &period)?,
        }
    }
    grant_added_entitlements(conn, mode, subscription, &versions, due_at, now)?;
    reschedule(conn, subscription, now)
}

/// Grants, at `at`, the entitlements that a version change added (those with no period on
/// this subscription yet), starting their cycles there.
fn grant_added_entitlements(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &Subscription,
    versions: &[Arc<ProductVersion>],
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let periods = subscriptions::entitlement_periods(conn, &subscription.id)?;
    for version in versions {
        for index in 0..version.entitlements.len() {
            let known = periods
                .iter()
                .any(|period| period.product_id == version.product_id && period.entitlement_index == index as i64);
            if !known {
                grant_entitlement(conn, mode, subscription, version, index, at, at, now)?;
            }
        }
    }
    Ok(())
}

/// Sets a subscription active or inactive.
pub fn set_status(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    subscription_id: &str,
    active: bool,
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| super::customers::not_found(customer_id))?;
    let mut subscription = require(conn, mode, customer_id, subscription_id)?;
    match (active, subscription.status) {
        (true, SubscriptionStatus::Active) | (false, SubscriptionStatus::Inactive) => Ok(()),
        (false, _) => {
            subscription.status = SubscriptionStatus::Inactive;
            reschedule(conn, &mut subscription, now)
        }
        (true, SubscriptionStatus::Scheduled) => Ok(()),
        (true, SubscriptionStatus::Inactive | SubscriptionStatus::ActionRequired) => {
            for pinned in &subscription.products {
                let code = products::get(conn, mode, &pinned.product_id)?
                    .map_or_else(|| pinned.product_id.clone(), |product| product.code);
                refuse_second_subscription(conn, customer_id, &pinned.product_id, &code, Some(&subscription.id))?;
            }
            // Inside the billing period already paid for, the schedule continues as it was;
            // once that period has passed, a new cycle starts now.
            if subscription.renews_at.is_some_and(|renews_at| renews_at <= now) {
                subscription.renews_at = None;
            }
            start_or_wait_for_payment(conn, mode, &mut subscription, catalog, now)
        }
    }
}

pub fn require(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    subscription_id: &str,
) -> Result<Subscription, OpError> {
    subscriptions::get(conn, mode, subscription_id)?
        .filter(|subscription| subscription.customer_id == customer_id)
        .ok_or_else(|| {
            OpError::NotFound(format!("subscription {subscription_id} not found for customer {customer_id}"))
        })
}

/// Moves one product of a subscription to another published version.
#[allow(clippy::too_many_arguments)]
pub fn change_version(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    subscription_id: &str,
    product_id: &str,
    version: VersionRef,
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| super::customers::not_found(customer_id))?;
    let subscription = require(conn, mode, customer_id, subscription_id)?;
    if !subscription.products.iter().any(|pinned| pinned.product_id == product_id) {
        return Err(OpError::NotFound(format!("subscription {subscription_id} has no product {product_id}")));
    }
    let (product, target) =
        product_ops::resolve_for_subscribing(conn, mode, product_id, version).map_err(|error| match error {
            OpError::NotFound(message) => OpError::invalid("version", message),
            other => other,
        })?;
    if product.archived_at.is_some() || target.status != VersionStatus::Published {
        return Err(OpError::invalid(
            "version",
            format!(
                "version {} is {}: only published versions can be subscribed to",
                target.version,
                target.status.as_str()
            ),
        ));
    }
    subscriptions::set_product_version(conn, subscription_id, product_id, target.version)?;
    // Events that occurred before now stay priced by the version they occurred on.
    let moved = require(conn, mode, customer_id, subscription_id)?;
    subscriptions::record_history(conn, &moved, now)?;
    // Entitlements the new version adds wait for the next renewal or refresh; with none
    // scheduled, they are granted now.
    if moved.status == SubscriptionStatus::Active && moved.next_action_at.is_none() {
        let mut moved = moved;
        let versions = versions(conn, mode, &moved, catalog)?;
        grant_added_entitlements(conn, mode, &moved, &versions, now, now)?;
        reschedule(conn, &mut moved, now)?;
    }
    Ok(())
}

/// Runs the customer's subscription actions that fell due by `now` (a scheduled start, a
/// renewal), oldest subscription first, so that its subscription history is complete before
/// usage is priced. Reads only the due subscriptions' ids: on the usage-event hot path it
/// runs once per request and almost always finds none.
pub fn run_due(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    for subscription_id in subscriptions::due_for_customer(conn, customer_id, now)? {
        process_due(conn, mode, &subscription_id, catalog, now)?;
    }
    Ok(())
}
