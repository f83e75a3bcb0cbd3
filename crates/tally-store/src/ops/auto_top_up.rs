//! Auto top-up: when an account's `available` falls below the customer's threshold, buy more
//! with a saved payment method, without the customer.
//!
//! Rules:
//! - At most one attempt per account is in flight (`in_flight_top_up_id`): it is set in the
//!   transaction that claims the account and creates the top-up, and cleared only when that
//!   top-up has ended.
//! - The top-up is an ordinary one (origin `auto`): its asset amount waits in `pending_in`
//!   until the payment succeeds, then is credited once through `ops::topups::succeed`.
//! - The payment itself is network IO and runs between two transactions: [`start_next`]
//!   claims and records, the caller charges, [`record_outcome`] records what happened.
//! - A failed attempt waits [`RETRY_DELAYS_SECONDS`] before the next; after [`MAX_FAILURES`]
//!   failures in a row the customer's auto top-up turns itself off and keeps the last error,
//!   and every failure emits `auto_top_up.failed`. A success, or the customer saving the
//!   settings again, starts the count afresh.
//! - A provider that cannot be reached leaves the top-up open: the charge may have gone
//!   through, and a later notification settles it, or it expires and counts as a failure. A
//!   charge is never given up while it might still succeed, so it is never paid and lost.

use super::assets::{find as find_asset, rate_at, KnownAsset};
use super::topups::{self as topup_ops, NewTopUp};
use super::webhooks::{self, AutoTopUpFailure};
use super::OpError;
use crate::conn::Conn;
use crate::repo::auto_top_ups::{self, AutoTopUp};
use crate::repo::topups::{self, PaymentMethod, TopUpStatus};
use crate::repo::wallets::{self, AccountKey};
use crate::repo::{customers, Metadata};
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use tally_core::asset::AssetCode;
use tally_core::money::{check_amount, check_positive};
use tally_core::rate::ExchangeRate;
use tally_core::Mode;

/// Failures in a row after which auto top-up turns itself off.
pub const MAX_FAILURES: i64 = 3;
/// How long to wait after the first, second, … failure before trying again.
pub const RETRY_DELAYS_SECONDS: [i64; 3] = [60, 300, 1800];

/// What a customer sets for one account.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub key: AccountKey,
    pub enabled: bool,
    pub threshold: Decimal,
    pub amount: Decimal,
    pub currency: AssetCode,
    pub payment_method_id: Option<String>,
}

/// Saves a customer's auto top-up settings for one of their accounts.
pub fn configure(
    conn: &mut dyn Conn,
    mode: Mode,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<AutoTopUp, OpError> {
    let key = &settings.key;
    customers::get_for_update(conn, mode, &key.customer_id)?
        .ok_or_else(|| OpError::NotFound(format!("customer {} not found", key.customer_id)))?;
    if wallets::get(conn, key)?.is_none() {
        return Err(OpError::NotFound(format!("account {}:{} not found in this wallet", key.name, key.asset)));
    }
    let asset_code = AssetCode::parse(&key.asset)
        .map_err(|_| OpError::NotFound(format!("account {}:{} not found", key.name, key.asset)))?;
    let asset = find_asset(conn, mode, &asset_code)?
        .ok_or_else(|| OpError::NotFound(format!("asset {} not found", key.asset)))?;
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: String| {
        problems.push(super::FieldError { field: field.to_owned(), message });
    };
    match check_amount(settings.threshold) {
        Ok(threshold) if threshold < Decimal::ZERO => problem("threshold", "must be zero or more".into()),
        Ok(threshold) if threshold.scale() > asset.precision() => {
            problem("threshold", format!("{} takes at most {} decimal places", asset.code(), asset.precision()))
        }
        Ok(_) => {}
        Err(error) => problem("threshold", error.to_string()),
    }
    let minor_units = settings.currency.currency_minor_units();
    match (check_positive(settings.amount), minor_units) {
        (Err(error), _) => problem("amount", error.to_string()),
        (Ok(_), None) => problem("currency", format!("{} is not an ISO 4217 currency", settings.currency)),
        (Ok(amount), Some(places)) if amount.scale() > places => {
            problem("amount", format!("{} takes at most {places} decimal places", settings.currency))
        }
        (Ok(amount), Some(_)) => {
            let rate = match &asset {
                KnownAsset::Currency { code, .. } if code == settings.currency.as_str() => {
                    Some(ExchangeRate::Rate(Decimal::ONE))
                }
                KnownAsset::Currency { code, .. } => {
                    problem("currency", format!("a {code} account is topped up in {code}"));
                    None
                }
                KnownAsset::Custom(custom) => match rate_at(conn, mode, &custom.code, &settings.currency, now) {
                    Ok(rate) => Some(rate),
                    Err(_) => {
                        problem("currency", format!("{} cannot be bought with {}", custom.code, settings.currency));
                        None
                    }
                },
            };
            let buys = rate.and_then(|rate| rate.convert(amount, asset.precision()));
            if rate.is_some() && buys.is_none_or(|units| units <= Decimal::ZERO) {
                problem("amount", format!("is too small to buy any {}", asset.code()));
            }
        }
    }
    let methods = topups::payment_methods(conn, &key.customer_id)?;
    match &settings.payment_method_id {
        Some(id) if !methods.iter().any(|method| &method.id == id) => {
            problem("payment_method_id", "is not one of this customer's saved payment methods".into())
        }
        None if settings.enabled => problem("payment_method_id", "choose a saved payment method".into()),
        Some(_) | None => {}
    }
    if !problems.is_empty() {
        return Err(OpError::Invalid(problems));
    }
    let existing = auto_top_ups::get(conn, mode, key)?;
    let setting = AutoTopUp {
        mode,
        key: key.clone(),
        enabled: settings.enabled,
        threshold: settings.threshold.normalize(),
        amount: settings.amount.normalize(),
        currency: settings.currency.to_string(),
        payment_method_id: settings.payment_method_id.clone(),
        failures: 0,
        retry_at: None,
        // An attempt already under way finishes whatever the new settings say.
        in_flight_top_up_id: existing.as_ref().and_then(|old| old.in_flight_top_up_id.clone()),
        last_error: None,
        updated_at: now,
    };
    auto_top_ups::put(conn, &setting)?;
    Ok(setting)
}

/// A payment to make off-session, outside any transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCharge {
    pub mode: Mode,
    pub key: AccountKey,
    pub top_up_id: String,
    pub amount: Decimal,
    pub currency: String,
    /// The saved method's provider reference and the provider's customer.
    pub payment_method: String,
    pub provider_customer: Option<String>,
    pub description: String,
}

/// What one claim led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A top-up was made and its payment is to be charged now.
    Charge(Box<PlannedCharge>),
    /// No top-up could be made; the failure is recorded.
    Failed,
    /// The claim found nothing to do after all (re-checked under the lock).
    Nothing,
}

/// Claims one account whose auto top-up is due and makes its top-up, holding `pending_in`.
/// `provider_for` names the payment provider of a mode, if it has one. `None`: nothing due.
pub fn start_next(
    conn: &mut dyn Conn,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    provider_for: &dyn Fn(Mode) -> Option<&'static str>,
) -> Result<Option<Step>, OpError> {
    let Some(ClaimedAccount(mode, key)) = claim_due(conn, now)? else {
        return Ok(None);
    };
    start(conn, mode, &key, now, expires_at, provider_for).map(Some)
}

/// An account a job claimed. Shown as its id in `job_retries`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedAccount(pub Mode, pub AccountKey);

impl std::fmt::Display for ClaimedAccount {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&auto_top_ups::item_id(&self.1))
    }
}

/// Claims one account whose auto top-up is due (see `repo::auto_top_ups::claim_due`).
pub fn claim_due(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<ClaimedAccount>, OpError> {
    Ok(auto_top_ups::claim_due(conn, now)?.map(|(mode, key)| ClaimedAccount(mode, key)))
}

/// Claims one account whose in-flight top-up has ended (see [`settle_next`]).
pub fn claim_settled(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<ClaimedAccount>, OpError> {
    Ok(auto_top_ups::claim_settled(conn, now)?.map(|(mode, key)| ClaimedAccount(mode, key)))
}

/// Re-checks a claimed account under its customer's lock and, if its auto top-up is still due,
/// makes the top-up, holding `pending_in`.
pub fn start(
    conn: &mut dyn Conn,
    mode: Mode,
    key: &AccountKey,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    provider_for: &dyn Fn(Mode) -> Option<&'static str>,
) -> Result<Step, OpError> {
    let key = key.clone();
    let Some(setting) = auto_top_ups::get(conn, mode, &key)? else {
        return Ok(Step::Nothing);
    };
    let Some(account) = wallets::get(conn, &key)? else {
        return Ok(Step::Nothing);
    };
    let available = account.state.available;
    let due = setting.enabled
        && setting.in_flight_top_up_id.is_none()
        && setting.retry_at.is_none_or(|at| at <= now)
        && available < setting.threshold;
    if !due {
        return Ok(Step::Nothing);
    }
    let methods = topups::payment_methods(conn, &key.customer_id)?;
    let method = setting.payment_method_id.as_ref().and_then(|id| methods.into_iter().find(|method| &method.id == id));
    let provider = provider_for(mode);
    let refusal = match (&method, provider) {
        (None, _) => Some("the saved payment method no longer exists".to_owned()),
        (Some(_), None) => Some(format!("{} payments are not configured", mode.as_str())),
        (Some(method), Some(provider)) if method.provider != provider => {
            Some(format!("the saved payment method belongs to the {} provider, not {provider}", method.provider))
        }
        (Some(_), Some(_)) => None,
    };
    if let Some(reason) = refusal {
        register_failure(conn, mode, setting, available, &reason, None, now)?;
        return Ok(Step::Failed);
    }
    let (method, provider) = (method.expect("checked"), provider.expect("checked"));
    match create_top_up(conn, mode, &setting, provider, expires_at, now)? {
        Ok(top_up_id) => {
            let charge = planned_charge(mode, &setting, &method, top_up_id.clone());
            auto_top_ups::put(conn, &AutoTopUp { in_flight_top_up_id: Some(top_up_id), updated_at: now, ..setting })?;
            Ok(Step::Charge(Box::new(charge)))
        }
        Err(reason) => {
            register_failure(conn, mode, setting, available, &reason, None, now)?;
            Ok(Step::Failed)
        }
    }
}

/// Makes the top-up; a refusal (a rate no longer in force, say) comes back as its message.
fn create_top_up(
    conn: &mut dyn Conn,
    mode: Mode,
    setting: &AutoTopUp,
    provider: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Result<String, String>, OpError> {
    let (Ok(currency), Ok(asset)) = (AssetCode::parse(&setting.currency), AssetCode::parse(&setting.key.asset)) else {
        return Ok(Err("the stored currency or asset is not a valid code".into()));
    };
    let new = NewTopUp {
        customer_id: setting.key.customer_id.clone(),
        amount: setting.amount,
        currency,
        account_name: setting.key.name.clone(),
        asset: Some(asset),
        exchange_rate: None,
        credit_expires_at: None,
        return_url: String::new(),
        failure_url: String::new(),
        description: Some(format!("Automatic top-up of {} {}", setting.amount, setting.currency)),
        metadata: Metadata::new(),
        origin: "auto".into(),
        save_payment_method: false,
        subscription_id: None,
    };
    match topup_ops::initiate(conn, mode, &new, provider, expires_at, now) {
        Ok(top_up) => Ok(Ok(top_up.id)),
        Err(OpError::Invalid(fields)) => Ok(Err(fields
            .iter()
            .map(|field| format!("{} {}", field.field, field.message))
            .collect::<Vec<_>>()
            .join("; "))),
        Err(other) => Err(other),
    }
}

fn planned_charge(mode: Mode, setting: &AutoTopUp, method: &PaymentMethod, top_up_id: String) -> PlannedCharge {
    PlannedCharge {
        mode,
        key: setting.key.clone(),
        top_up_id,
        amount: setting.amount,
        currency: setting.currency.clone(),
        payment_method: method.provider_reference.clone(),
        provider_customer: method.provider_customer.clone(),
        description: format!("Automatic top-up of {} {}", setting.amount, setting.currency),
    }
}

/// How an off-session charge ended, as the provider said.
#[derive(Debug, Clone, PartialEq)]
pub enum ChargeResult {
    Succeeded {
        reference: String,
    },
    /// Still processing: a provider notification will settle the top-up.
    Processing {
        reference: String,
    },
    Declined {
        reason: String,
    },
    /// The provider could not be reached or answered oddly: the charge may or may not exist.
    Unknown {
        reason: String,
    },
}

/// Records what the charge of `charge` came to, in a transaction of its own.
pub fn record_outcome(
    conn: &mut dyn Conn,
    charge: &PlannedCharge,
    result: &ChargeResult,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let mode = charge.mode;
    customers::get_for_update(conn, mode, &charge.key.customer_id)?;
    let id = charge.top_up_id.as_str();
    match result {
        ChargeResult::Succeeded { reference } => {
            set_reference(conn, mode, id, reference, now)?;
            topup_ops::succeed(conn, mode, id, None, now)?;
        }
        ChargeResult::Processing { reference } => {
            set_reference(conn, mode, id, reference, now)?;
            topup_ops::mark_processing(conn, mode, id, now)?;
        }
        ChargeResult::Declined { reason } => {
            topup_ops::fail(conn, mode, id, reason, false, now)?;
        }
        ChargeResult::Unknown { reason } => {
            if let Some(setting) = auto_top_ups::get(conn, mode, &charge.key)? {
                let last_error = Some(format!("waiting for the payment provider: {reason}"));
                auto_top_ups::put(conn, &AutoTopUp { last_error, updated_at: now, ..setting })?;
            }
            return Ok(());
        }
    }
    finish(conn, mode, &charge.key, id, now)?;
    Ok(())
}

fn set_reference(
    conn: &mut dyn Conn,
    mode: Mode,
    id: &str,
    reference: &str,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let mut top_up = topups::get(conn, mode, id)?.ok_or_else(|| OpError::NotFound(format!("top-up {id} not found")))?;
    if top_up.provider_reference.is_none() {
        top_up.provider_reference = Some(reference.to_owned());
        topups::update(conn, &top_up, now)?;
    }
    Ok(())
}

/// Frees the account once its in-flight top-up `top_up_id` has ended, counting a failure or
/// a success. Returns false when there was nothing to do.
fn finish(
    conn: &mut dyn Conn,
    mode: Mode,
    key: &AccountKey,
    top_up_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, OpError> {
    let Some(setting) = auto_top_ups::get(conn, mode, key)? else {
        return Ok(false);
    };
    if setting.in_flight_top_up_id.as_deref() != Some(top_up_id) {
        return Ok(false);
    }
    let Some(top_up) = topups::get(conn, mode, top_up_id)? else {
        return Ok(false);
    };
    match top_up.status {
        TopUpStatus::Initiated | TopUpStatus::Pending => Ok(false),
        TopUpStatus::Succeeded => {
            let done = AutoTopUp {
                failures: 0,
                retry_at: None,
                in_flight_top_up_id: None,
                last_error: None,
                updated_at: now,
                ..setting
            };
            auto_top_ups::put(conn, &done)?;
            Ok(true)
        }
        TopUpStatus::Failed | TopUpStatus::Expired => {
            let available = wallets::get(conn, key)?.map_or(Decimal::ZERO, |account| account.state.available);
            let reason = top_up.failure_reason.unwrap_or_else(|| format!("the top-up {}", top_up.status.as_str()));
            register_failure(conn, mode, setting, available, &reason, Some(top_up_id), now)?;
            Ok(true)
        }
    }
}

/// Counts a failed attempt: back off, or turn auto top-up off after too many; tell webhooks.
fn register_failure(
    conn: &mut dyn Conn,
    mode: Mode,
    setting: AutoTopUp,
    available: Decimal,
    reason: &str,
    top_up_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let failures = setting.failures + 1;
    let give_up = failures >= MAX_FAILURES;
    let delay = RETRY_DELAYS_SECONDS[usize::try_from(failures - 1).unwrap_or(0).min(RETRY_DELAYS_SECONDS.len() - 1)];
    let failure = AutoTopUpFailure {
        customer_id: setting.key.customer_id.clone(),
        account_name: setting.key.name.clone(),
        asset: setting.key.asset.clone(),
        available,
        amount: setting.amount,
        currency: setting.currency.clone(),
        failure_reason: reason.to_owned(),
        top_up_id: top_up_id.map(str::to_owned),
    };
    let updated = AutoTopUp {
        enabled: setting.enabled && !give_up,
        failures,
        retry_at: (!give_up).then(|| now + Duration::seconds(delay)),
        in_flight_top_up_id: None,
        last_error: Some(reason.to_owned()),
        updated_at: now,
        ..setting
    };
    auto_top_ups::put(conn, &updated)?;
    webhooks::auto_top_up_failed(conn, mode, &failure, now)?;
    Ok(())
}

/// Claims one account whose in-flight top-up ended without the worker seeing it (settled by
/// a provider notification, or expired) and frees it. `None`: nothing to claim.
pub fn settle_next(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<bool>, OpError> {
    let Some(ClaimedAccount(mode, key)) = claim_settled(conn, now)? else {
        return Ok(None);
    };
    settle(conn, mode, &key, now).map(Some)
}

/// Frees a claimed account whose in-flight top-up has ended. Returns whether anything changed.
pub fn settle(conn: &mut dyn Conn, mode: Mode, key: &AccountKey, now: DateTime<Utc>) -> Result<bool, OpError> {
    let Some(top_up_id) = auto_top_ups::get(conn, mode, key)?.and_then(|setting| setting.in_flight_top_up_id) else {
        return Ok(false);
    };
    finish(conn, mode, key, &top_up_id, now)
}
