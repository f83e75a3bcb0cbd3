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
//!   grant whose cost basis is the fiat paid per unit, expiring at `credit_expires_at` or one
//!   year after. Failure or expiry releases `pending_in`. Those three ends are final.

use super::assets::{find as find_asset, rate_at, KnownAsset};
use super::wallet::{default_expiry, open_account, record, save_account, RESERVED_TRANSACTION_PREFIX};
use super::webhooks;
use super::OpError;
use crate::conn::Conn;
use crate::ids;
use crate::repo::ledger::{self, EntryHeader};
use crate::repo::topups::{self, PaymentMethod, TopUp, TopUpStatus};
use crate::repo::transactions::Transaction;
use crate::repo::wallets::{AccountKey, GrantOrigin};
use crate::repo::{customers, Metadata};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
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

/// A payment method a provider reported when a payment succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPaymentMethod {
    pub provider_reference: String,
    pub provider_customer: Option<String>,
    pub brand: Option<String>,
    pub last4: Option<String>,
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
    };
    topups::insert(conn, mode, &top_up)?;
    let key = account_key(&top_up);
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    let postings = account.state.expect_incoming(asset_amount);
    save_account(conn, mode, &loaded, &account, &GrantOrigin::default(), now)?;
    append(conn, mode, &key, "top_up_pending", &top_up.id, &postings, now)?;
    Ok(top_up)
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

/// The customer reached the payment page or submitted a payment: `initiated` → `pending`.
pub fn mark_pending(conn: &mut dyn Conn, mode: Mode, id: &str, now: DateTime<Utc>) -> Result<TopUp, OpError> {
    let mut top_up = lock(conn, mode, id)?;
    if top_up.status == TopUpStatus::Initiated {
        top_up.status = TopUpStatus::Pending;
        topups::update(conn, &top_up, now)?;
    }
    Ok(top_up)
}

/// How a call to [`succeed`] ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub top_up: TopUp,
    /// False when the top-up had already been credited: nothing moved this time.
    pub credited: bool,
    pub payment_method: Option<PaymentMethod>,
}

/// The payment succeeded: credit the wallet, once.
pub fn succeed(
    conn: &mut dyn Conn,
    mode: Mode,
    id: &str,
    method: Option<&NewPaymentMethod>,
    now: DateTime<Utc>,
) -> Result<Settled, OpError> {
    let mut top_up = lock(conn, mode, id)?;
    match top_up.status {
        TopUpStatus::Succeeded => return Ok(Settled { top_up, credited: false, payment_method: None }),
        TopUpStatus::Failed | TopUpStatus::Expired => {
            return Err(OpError::Conflict(format!("top-up {id} already ended as {}", top_up.status.as_str())))
        }
        TopUpStatus::Initiated | TopUpStatus::Pending => {}
    }
    let key = account_key(&top_up);
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    let mut postings = account.state.cancel_incoming(top_up.asset_amount);
    let grant = Grant {
        id: ids::new_id("grt"),
        purpose: Purpose::Paid,
        priority: 0,
        amount: top_up.asset_amount,
        remaining: top_up.asset_amount,
        effective_at: now,
        expires_at: top_up.credit_expires_at.or_else(|| default_expiry(Purpose::Paid, now)),
        created_at: now,
        state: GrantState::Pending,
    };
    postings.extend(account.state.credit(grant, SystemAccount::Issuance, now));
    let transaction_id = format!("{RESERVED_TRANSACTION_PREFIX}top_up_{}", top_up.id);
    let cost_basis = top_up.amount.checked_div(top_up.asset_amount).map(|basis| basis.normalize());
    let origin = GrantOrigin { transaction_id: Some(transaction_id.clone()), cost_basis };
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
    topups::update(conn, &top_up, now)?;
    webhooks::top_up(conn, mode, true, &notice(&top_up, Some(transaction.id.clone())), now)?;
    if let Some(subscription_id) = &top_up.subscription_id {
        // The payment a subscription waited for: the worker starts it on its next pass.
        crate::repo::subscriptions::wake(conn, subscription_id, now)?;
    }
    // The customer asked to keep the card (for auto top-up): remember it.
    let payment_method = match method.filter(|_| top_up.save_payment_method) {
        Some(method) => {
            let saved = PaymentMethod {
                id: ids::new_id("pm"),
                customer_id: top_up.customer_id.clone(),
                provider: top_up.provider.clone(),
                provider_reference: method.provider_reference.clone(),
                provider_customer: method.provider_customer.clone(),
                brand: method.brand.clone(),
                last4: method.last4.clone(),
                created_at: now,
            };
            topups::insert_payment_method(conn, mode, &saved)?;
            Some(saved)
        }
        None => None,
    };
    Ok(Settled { top_up, credited: true, payment_method })
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
    let postings = account.state.cancel_incoming(top_up.asset_amount);
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
    if !top_up.status.is_open() || top_up.expires_at > now {
        return Ok(Some(false));
    }
    fail(conn, mode, &id, "the payment window closed before the top-up was paid", true, now)?;
    Ok(Some(true))
}
