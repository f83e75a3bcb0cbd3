//! Top-ups: fiat in through a payment provider, asset out into the wallet.
//!
//! Rules:
//! - The asset amount is fixed when the top-up is made: the fiat amount at the rate in force
//!   then (or the platform's `exchange_rate` override, in source units per asset unit, like an
//!   asset's `rate`), rounded down to the asset's precision. Topping up a currency account
//!   with the same currency is one to one. The fiat amount must fit the currency's minor
//!   units (10.005 USD cannot be paid).
//! - While a top-up is open (`initiated`, `pending`) its asset amount shows in the account's
//!   `pending_in`, through ledger postings against the `incoming` system account.
//! - On success the amount is credited once, whatever the number of notifications, as a `paid`
//!   grant whose cost basis is the fiat paid per unit, expiring at `credit_expires_at`, or one
//!   year after the payment (the default lifetime of paid credit) when none was asked or the
//!   asked instant has passed by the time the payment succeeds: paid credit never arrives
//!   already expired.
//! - Failure or expiry releases `pending_in`. Money received is always credited: a success
//!   reported after the top-up failed or expired still credits it, once.
//! - A top-up whose provider says the payment is on its way (`processing_since`, a bank
//!   debit) is never expired for want of payment: it waits for the outcome.
//! - A subscription waiting for a payment always has a payable top-up: when its top-up ends
//!   unpaid, [`renew_subscription_payments`] makes another one.

use super::assets::{find as find_asset, rate_at, KnownAsset};
use super::wallet::{default_expiry, open_account, record, save_account, wallet_error, RESERVED_TRANSACTION_PREFIX};
use super::webhooks;
use super::OpError;
use crate::conn::Conn;
use crate::ids;
use crate::repo::idempotency::{self, IdempotencyRecord};
use crate::repo::ledger::{self, EntryHeader};
use crate::repo::subscriptions::{self as subscription_repo, SubscriptionStatus};
use crate::repo::topups::{self, PaymentMethod, TopUp, TopUpStatus};
use crate::repo::transactions::Transaction;
use crate::repo::wallets::{AccountKey, GrantOrigin};
use crate::repo::{customers, Metadata};
use crate::StoreError;
use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use tally_core::asset::AssetCode;
use tally_core::ledger::SystemAccount;
use tally_core::money::round_down;
use tally_core::rate::ExchangeRate;
use tally_core::wallet::{Grant, GrantState, Purpose};
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct NewTopUp {
    pub customer_id: String,
    pub amount: Decimal,
    pub currency: AssetCode,
    pub account_name: String,
    /// The asset to credit; the currency itself when `None`.
    pub asset: Option<AssetCode>,
    /// Source units per asset unit, overriding the asset's rate.
    pub exchange_rate: Option<Decimal>,
    pub credit_expires_at: Option<DateTime<Utc>>,
    pub return_url: String,
    pub failure_url: String,
    pub description: Option<String>,
    pub metadata: Metadata,
    /// `api`, `portal` or `auto`.
    pub origin: String,
    pub save_payment_method: bool,
    pub subscription_id: Option<String>,
}

impl NewTopUp {
    /// The request's meaningful content in a fixed form, to tell an idempotent retry from a
    /// different request that reuses its idempotency key.
    pub fn canonical(&self) -> String {
        serde_json::json!({
            "customer_id": self.customer_id,
            "amount": self.amount.normalize().to_string(),
            "currency": self.currency.as_str(),
            "account_name": self.account_name,
            "asset": self.asset.as_ref().map(|asset| asset.as_str().to_owned()),
            "exchange_rate": self.exchange_rate.map(|rate| rate.normalize().to_string()),
            "credit_expires_at": self.credit_expires_at.map(|at| at.timestamp_micros()),
            "return_url": self.return_url,
            "failure_url": self.failure_url,
            "description": self.description,
            "metadata": self.metadata,
            "origin": self.origin,
            "save_payment_method": self.save_payment_method,
            "subscription_id": self.subscription_id,
        })
        .to_string()
    }
}

/// A payment method a provider reported when a payment succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPaymentMethod {
    pub provider_reference: String,
    pub provider_customer: Option<String>,
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub expiry: Option<topups::CardExpiry>,
}

pub fn initiate(
    conn: &mut dyn Conn,
    mode: Mode,
    new: &NewTopUp,
    provider: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<TopUp, OpError> {
    customers::get_for_update(conn, mode, &new.customer_id)?
        .ok_or_else(|| OpError::invalid("customer_id", format!("no customer {}", new.customer_id)))?;
    let minor_units = new
        .currency
        .currency_minor_units()
        .ok_or_else(|| OpError::invalid("currency", format!("{} is not an ISO 4217 currency", new.currency)))?;
    if new.amount.normalize().scale() > minor_units {
        return Err(OpError::invalid("amount", format!("{} takes at most {minor_units} decimal places", new.currency)));
    }
    let asset_code = new.asset.clone().unwrap_or_else(|| new.currency.clone());
    let asset = find_asset(conn, mode, &asset_code)?.ok_or_else(|| {
        OpError::invalid("destination.asset", format!("{asset_code} is neither a custom asset nor a currency"))
    })?;
    let rate = match (&asset, new.exchange_rate) {
        (KnownAsset::Currency { code, .. }, None) if code == new.currency.as_str() => ExchangeRate::Rate(Decimal::ONE),
        (KnownAsset::Currency { .. }, _) => {
            return Err(OpError::invalid("destination.asset", "a currency account is topped up in its own currency"))
        }
        (KnownAsset::Custom(_), Some(rate)) => ExchangeRate::Rate(rate),
        (KnownAsset::Custom(custom), None) => rate_at(conn, mode, &custom.code, &new.currency, now)?,
    };
    let asset_amount = rate
        .convert_exact(new.amount)
        .map(|exact| round_down(exact, asset.precision()))
        .ok_or_else(|| OpError::invalid("amount", "is too large to convert"))?;
    if asset_amount <= Decimal::ZERO {
        return Err(OpError::invalid("amount", format!("is too small to buy any {}", asset.code())));
    }
    if let Some(expiry) = new.credit_expires_at {
        if expiry <= now {
            return Err(OpError::invalid("credit_expires_at", "must be in the future"));
        }
    }
    let top_up = TopUp {
        id: ids::new_id("top"),
        customer_id: new.customer_id.clone(),
        amount: new.amount.normalize(),
        currency: new.currency.to_string(),
        account_name: new.account_name.clone(),
        asset: asset.code().to_owned(),
        asset_amount,
        rate,
        rate_overridden: new.exchange_rate.is_some(),
        credit_expires_at: new.credit_expires_at,
        return_url: new.return_url.clone(),
        failure_url: new.failure_url.clone(),
        description: new.description.clone(),
        metadata: new.metadata.clone(),
        status: TopUpStatus::Initiated,
        provider: provider.to_owned(),
        provider_reference: None,
        redirect_url: None,
        checkout_token: ids::new_secret(16),
        failure_reason: None,
        origin: new.origin.clone(),
        subscription_id: new.subscription_id.clone(),
        save_payment_method: new.save_payment_method,
        created_at: now,
        expires_at,
        completed_at: None,
        processing_since: None,
        granted_credit_expires_at: None,
    };
    topups::insert(conn, mode, &top_up)?;
    let key = account_key(&top_up);
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    let postings = account.state.expect_incoming(asset_amount).map_err(|error| wallet_error(error, "amount"))?;
    save_account(conn, mode, &loaded, &account, &GrantOrigin::default(), now)?;
    append(conn, mode, &key, "top_up_pending", &top_up.id, &postings, now)?;
    Ok(top_up)
}

/// The scope of `POST /top-ups` idempotency keys.
pub const IDEMPOTENCY_SCOPE: &str = "POST /top-ups";

/// What [`initiate_once`] found or made.
#[derive(Debug, Clone, PartialEq)]
pub enum Initiated {
    /// A new top-up: its checkout is still to be opened.
    New(TopUp),
    /// The top-up an earlier request with the same idempotency key made. Nothing was created.
    Replay(TopUp),
}

/// [`initiate`], once per idempotency key: a retry with the same key and request finds the
/// first top-up; the same key with a different request is a conflict. The key is recorded in
/// the transaction that makes the top-up.
pub fn initiate_once(
    conn: &mut dyn Conn,
    mode: Mode,
    new: &NewTopUp,
    key: &str,
    provider: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Initiated, OpError> {
    // The customer's lock serialises retries of one request, so the second finds the first's key.
    customers::get_for_update(conn, mode, &new.customer_id)?;
    let request_hash = super::request_hash(&new.canonical());
    if let Some(id) = super::replayed_resource(conn, mode, IDEMPOTENCY_SCOPE, key, &request_hash, "top-up")? {
        let top_up = topups::get(conn, mode, &id)?.ok_or_else(|| super::vanished_resource(key, "top-up", &id))?;
        return Ok(Initiated::Replay(top_up));
    }
    let top_up = initiate(conn, mode, new, provider, expires_at, now)?;
    let record = IdempotencyRecord {
        scope: IDEMPOTENCY_SCOPE.to_owned(),
        key: key.to_owned(),
        customer_id: Some(top_up.customer_id.clone()),
        request_hash,
        resource_id: top_up.id.clone(),
        created_at: now,
    };
    idempotency::insert(conn, mode, &record).map_err(|error| match error {
        // The same key for another customer, in flight at the same moment.
        StoreError::Conflict(_) => {
            OpError::Conflict(format!("another request with the Idempotency-Key {key:?} is in progress; retry it"))
        }
        other => OpError::Store(other),
    })?;
    Ok(Initiated::New(top_up))
}

/// What the `top_up.*` webhook events say about a settled top-up.
fn notice(top_up: &TopUp, transaction_id: Option<String>) -> webhooks::TopUpNotice {
    webhooks::TopUpNotice {
        id: top_up.id.clone(),
        customer_id: top_up.customer_id.clone(),
        amount: top_up.amount,
        currency: top_up.currency.clone(),
        account_name: top_up.account_name.clone(),
        asset: top_up.asset.clone(),
        status: top_up.status.as_str().to_owned(),
        failure_reason: top_up.failure_reason.clone(),
        transaction_id,
        created_at: top_up.created_at,
    }
}

fn account_key(top_up: &TopUp) -> AccountKey {
    AccountKey {
        customer_id: top_up.customer_id.clone(),
        name: top_up.account_name.clone(),
        asset: top_up.asset.clone(),
    }
}

fn append(
    conn: &mut dyn Conn,
    mode: Mode,
    key: &AccountKey,
    kind: &str,
    top_up_id: &str,
    postings: &[tally_core::ledger::Posting],
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let header = EntryHeader {
        mode,
        account: key,
        kind,
        transaction_id: Some(top_up_id),
        grant_id: None,
        effective_at: now,
        created_at: now,
    };
    ledger::append(conn, &header, postings)?;
    Ok(())
}

/// Loads a top-up and locks its customer.
fn lock(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<TopUp, OpError> {
    let top_up = topups::get(conn, mode, id)?.ok_or_else(|| OpError::NotFound(format!("top-up {id} not found")))?;
    customers::get_for_update(conn, mode, &top_up.customer_id)?;
    Ok(topups::get(conn, mode, id)?.unwrap_or(top_up))
}

/// Records the provider's checkout for a top-up.
pub fn attach_checkout(
    conn: &mut dyn Conn,
    mode: Mode,
    id: &str,
    reference: &str,
    redirect_url: &str,
    now: DateTime<Utc>,
) -> Result<TopUp, OpError> {
    let mut top_up = lock(conn, mode, id)?;
    top_up.provider_reference = Some(reference.to_owned());
    top_up.redirect_url = Some(redirect_url.to_owned());
    topups::update(conn, &top_up, now)?;
    Ok(top_up)
}

/// Expires the top-up now if its payment window has closed unpaid (the worker would, on its
/// next pass), so that a checkout page never takes a payment for it.
pub fn expire_if_window_closed(
    conn: &mut dyn Conn,
    mode: Mode,
    id: &str,
    now: DateTime<Utc>,
) -> Result<TopUp, OpError> {
    let top_up = lock(conn, mode, id)?;
    if top_up.status.is_open() && !top_up.is_payable(now) {
        return fail(conn, mode, id, "the payment window closed before the top-up was paid", true, now);
    }
    Ok(top_up)
}

/// The customer reached the payment page: `initiated` → `pending` (or `expired`, when its
/// payment window has closed).
pub fn mark_pending(conn: &mut dyn Conn, mode: Mode, id: &str, now: DateTime<Utc>) -> Result<TopUp, OpError> {
    let mut top_up = expire_if_window_closed(conn, mode, id, now)?;
    if top_up.status == TopUpStatus::Initiated {
        top_up.status = TopUpStatus::Pending;
        topups::update(conn, &top_up, now)?;
    }
    Ok(top_up)
}

/// The provider says the payment is on its way (a delayed method such as a bank debit): the
/// top-up goes `pending` and waits for the outcome, however long past its payment window.
pub fn mark_processing(conn: &mut dyn Conn, mode: Mode, id: &str, now: DateTime<Utc>) -> Result<TopUp, OpError> {
    let mut top_up = lock(conn, mode, id)?;
    if top_up.status.is_open() && top_up.processing_since.is_none() {
        top_up.status = TopUpStatus::Pending;
        top_up.processing_since = Some(now);
        topups::update(conn, &top_up, now)?;
    }
    Ok(top_up)
}

/// When the credit of a top-up paid at `now` expires: as asked, unless that instant has
/// passed; then (or when none was asked) the default lifetime of paid credit from `now`.
pub fn credit_expiry(top_up: &TopUp, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match top_up.credit_expires_at {
        Some(asked) if asked > now => Some(asked),
        _ => default_expiry(Purpose::Paid, now),
    }
}

/// How a call to [`succeed`] ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub top_up: TopUp,
    /// False when the top-up had already been credited: nothing moved this time.
    pub credited: bool,
    /// Credited although the top-up had already failed or expired (the payment came late).
    pub late: bool,
    pub payment_method: Option<PaymentMethod>,
}

/// The payment succeeded: credit the wallet, once. Money received is always credited, so a
/// top-up that already failed or expired is credited too.
pub fn succeed(
    conn: &mut dyn Conn,
    mode: Mode,
    id: &str,
    method: Option<&NewPaymentMethod>,
    now: DateTime<Utc>,
) -> Result<Settled, OpError> {
    let mut top_up = lock(conn, mode, id)?;
    let late = match top_up.status {
        TopUpStatus::Succeeded => return Ok(Settled { top_up, credited: false, late: false, payment_method: None }),
        TopUpStatus::Failed | TopUpStatus::Expired => true,
        TopUpStatus::Initiated | TopUpStatus::Pending => false,
    };
    let key = account_key(&top_up);
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    // An open top-up's amount waits in `pending_in`; an ended one released it when it ended.
    let mut postings = if late {
        Vec::new()
    } else {
        account.state.cancel_incoming(top_up.asset_amount).map_err(|error| wallet_error(error, "amount"))?
    };
    let expires_at = credit_expiry(&top_up, now);
    let grant = Grant {
        id: ids::new_id("grt").into(),
        purpose: Purpose::Paid,
        priority: 0,
        amount: top_up.asset_amount,
        remaining: top_up.asset_amount,
        effective_at: now,
        expires_at,
        created_at: now,
        state: GrantState::Pending,
    };
    postings.extend(
        account.state.credit(grant, SystemAccount::Issuance, now).map_err(|error| wallet_error(error, "amount"))?,
    );
    let transaction_id = format!("{RESERVED_TRANSACTION_PREFIX}top_up_{}", top_up.id);
    let cost_basis = top_up.amount.checked_div(top_up.asset_amount).map(|basis| basis.normalize());
    let origin = GrantOrigin {
        transaction_id: Some(transaction_id.clone()),
        cost_basis,
        cost_currency: Some(top_up.currency.clone()),
    };
    save_account(conn, mode, &loaded, &account, &origin, now)?;
    let transaction = Transaction {
        customer_id: top_up.customer_id.clone(),
        id: transaction_id,
        kind: "top_up".into(),
        account_name: key.name.clone(),
        asset: key.asset.clone(),
        amount: top_up.asset_amount,
        description: top_up
            .description
            .clone()
            .or_else(|| Some(format!("Top-up of {} {}", top_up.amount, top_up.currency))),
        metadata: top_up.metadata.clone(),
        request_hash: String::new(),
        detail: serde_json::json!({
            "top_up_id": top_up.id,
            "paid_amount": super::wallet::json_number(Some(top_up.amount)),
            "paid_currency": top_up.currency,
        })
        .to_string(),
        created_at: now,
        executed_at: Some(now),
    };
    record(conn, mode, &key, &transaction, &postings, now)?;
    top_up.status = TopUpStatus::Succeeded;
    top_up.completed_at = Some(now);
    top_up.failure_reason = None;
    top_up.granted_credit_expires_at = expires_at;
    topups::update(conn, &top_up, now)?;
    webhooks::top_up(conn, mode, true, &notice(&top_up, Some(transaction.id.clone())), now)?;
    if let Some(subscription_id) = &top_up.subscription_id {
        // The payment a subscription waited for: the worker starts it on its next pass.
        crate::repo::subscriptions::wake(conn, subscription_id, now)?;
    }
    // The customer asked to keep the card (for auto top-up): remember it.
    let payment_method = match method.filter(|_| top_up.save_payment_method) {
        Some(method) => Some(save_card(conn, mode, &top_up.customer_id, &top_up.provider, method, now)?),
        None => None,
    };
    Ok(Settled { top_up, credited: true, late, payment_method })
}

/// Saves a card for the customer; the first card they have becomes their default.
pub fn save_card(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    provider: &str,
    method: &NewPaymentMethod,
    now: DateTime<Utc>,
) -> Result<PaymentMethod, OpError> {
    let saved = PaymentMethod {
        id: ids::new_id("pm"),
        customer_id: customer_id.to_owned(),
        provider: provider.to_owned(),
        provider_reference: method.provider_reference.clone(),
        provider_customer: method.provider_customer.clone(),
        brand: method.brand.clone(),
        last4: method.last4.clone(),
        expiry: method.expiry,
        created_at: now,
    };
    topups::insert_payment_method(conn, mode, &saved)?;
    if topups::default_payment_method(conn, customer_id)?.is_none() {
        topups::set_default_payment_method(conn, mode, customer_id, &saved.id)?;
    }
    Ok(saved)
}

/// Saves a card a provider reports set up without a payment (Stripe's setup-mode Checkout),
/// once however often the provider repeats it: a card already saved, or saved and removed
/// since, is returned as it is (`false`), never saved again. The customer's row is locked so
/// that two deliveries at once save one card.
pub fn save_card_once(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    provider: &str,
    method: &NewPaymentMethod,
    now: DateTime<Utc>,
) -> Result<(PaymentMethod, bool), OpError> {
    customers::get_for_update(conn, mode, customer_id)?
        .ok_or_else(|| OpError::NotFound(format!("customer {customer_id} not found")))?;
    let reference = &method.provider_reference;
    if let Some(saved) = topups::payment_method_by_reference(conn, mode, customer_id, provider, reference)? {
        return Ok((saved, false));
    }
    Ok((save_card(conn, mode, customer_id, provider, method, now)?, true))
}

/// The payment failed (or the top-up expired): release `pending_in`. Final.
pub fn fail(
    conn: &mut dyn Conn,
    mode: Mode,
    id: &str,
    reason: &str,
    expired: bool,
    now: DateTime<Utc>,
) -> Result<TopUp, OpError> {
    let mut top_up = lock(conn, mode, id)?;
    if !top_up.status.is_open() {
        return match (top_up.status, expired) {
            (TopUpStatus::Failed, false) | (TopUpStatus::Expired, true) => Ok(top_up),
            _ => Err(OpError::Conflict(format!("top-up {id} already ended as {}", top_up.status.as_str()))),
        };
    }
    let key = account_key(&top_up);
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    let postings = account.state.cancel_incoming(top_up.asset_amount).map_err(|error| wallet_error(error, "amount"))?;
    save_account(conn, mode, &loaded, &account, &GrantOrigin::default(), now)?;
    append(conn, mode, &key, if expired { "top_up_expired" } else { "top_up_failed" }, &top_up.id, &postings, now)?;
    top_up.status = if expired { TopUpStatus::Expired } else { TopUpStatus::Failed };
    top_up.failure_reason = Some(reason.to_owned());
    top_up.completed_at = Some(now);
    topups::update(conn, &top_up, now)?;
    // An expired top-up is a payment that never came: platforms hear of it as a failure.
    webhooks::top_up(conn, mode, false, &notice(&top_up, None), now)?;
    Ok(top_up)
}

/// Expires one open top-up whose payment window has passed, if the claim finds one.
pub fn expire_next(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<bool>, OpError> {
    let Some((mode, id)) = topups::claim_expired(conn, now)? else {
        return Ok(None);
    };
    let top_up = lock(conn, mode, &id)?;
    if top_up.is_payable(now) || !top_up.status.is_open() {
        return Ok(Some(false));
    }
    fail(conn, mode, &id, "the payment window closed before the top-up was paid", true, now)?;
    Ok(Some(true))
}

/// What a customer's subscriptions waiting for payment lack, at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionPayments {
    /// Open top-ups whose payment window has closed: to expire.
    pub stale: Vec<String>,
    /// Payments no payable top-up takes: to make, with the URLs of the subscription's last one.
    pub missing: Vec<NewTopUp>,
    /// Payable top-ups whose checkout is not open yet (a request still opening it, or one
    /// that stopped before it could).
    pub unlinked: Vec<TopUp>,
}

impl SubscriptionPayments {
    pub fn is_empty(&self) -> bool {
        self.stale.is_empty() && self.missing.is_empty() && self.unlinked.is_empty()
    }
}

/// Looks at each `action_required` subscription of the customer: every amount it must be paid
/// first needs a payable top-up in that currency. Reads only.
pub fn subscription_payments(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    catalog: &dyn super::products::Catalog,
    now: DateTime<Utc>,
) -> Result<SubscriptionPayments, OpError> {
    let mut found = SubscriptionPayments::default();
    if customers::get(conn, mode, customer_id)?.is_none() {
        return Ok(found);
    }
    for subscription in subscription_repo::for_customer(conn, customer_id)? {
        if subscription.status != SubscriptionStatus::ActionRequired {
            continue;
        }
        let top_ups = topups::for_subscription(conn, &subscription.id)?;
        // Without a top-up made for it, Tally knows no URLs to send the customer back to:
        // the request creating the subscription is still opening its first checkout.
        let Some(latest) = top_ups.first() else {
            continue;
        };
        let payable: Vec<&TopUp> = top_ups.iter().filter(|top_up| top_up.is_payable(now)).collect();
        found.stale.extend(
            top_ups
                .iter()
                .filter(|top_up| top_up.status.is_open() && !top_up.is_payable(now))
                .map(|top_up| top_up.id.clone()),
        );
        found
            .unlinked
            .extend(payable.iter().filter(|top_up| top_up.redirect_url.is_none()).map(|top_up| (*top_up).clone()));
        for (currency, amount) in super::subscriptions::payment_due(conn, mode, &subscription, catalog)? {
            if payable.iter().any(|top_up| top_up.currency == currency) {
                continue;
            }
            let Ok(code) = AssetCode::parse(&currency) else {
                continue;
            };
            let Some(minor_units) = code.currency_minor_units() else {
                continue;
            };
            found.missing.push(NewTopUp {
                customer_id: customer_id.to_owned(),
                // Rounded up: the payment must cover the fee.
                amount: amount.round_dp_with_strategy(minor_units, RoundingStrategy::AwayFromZero),
                currency: code,
                account_name: "default".into(),
                asset: None,
                exchange_rate: None,
                credit_expires_at: None,
                return_url: latest.return_url.clone(),
                failure_url: latest.failure_url.clone(),
                description: latest.description.clone(),
                metadata: Default::default(),
                origin: "subscription".into(),
                save_payment_method: latest.save_payment_method,
                subscription_id: Some(subscription.id.clone()),
            });
        }
    }
    Ok(found)
}

/// Gives each payment a customer's waiting subscriptions need a payable top-up: expires those
/// whose window closed and makes new ones where none is left. Returns the payable top-ups
/// whose checkout is still to be opened (outside this transaction).
pub fn renew_subscription_payments(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    catalog: &dyn super::products::Catalog,
    provider: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<TopUp>, OpError> {
    if customers::get_for_update(conn, mode, customer_id)?.is_none() {
        return Ok(Vec::new());
    }
    let found = subscription_payments(conn, mode, customer_id, catalog, now)?;
    for id in &found.stale {
        fail(conn, mode, id, "the payment window closed before the top-up was paid", true, now)?;
    }
    let mut unlinked = found.unlinked;
    for new in &found.missing {
        unlinked.push(initiate(conn, mode, new, provider, expires_at, now)?);
    }
    Ok(unlinked)
}
