//! Holds (pre-authorisation): reserve an estimate before a long job, capture what it used
//! when it ends, give back the rest.
//!
//! A hold reserves an amount of one account, not particular grants (`AccountState::hold`):
//! its amount moves from `available` to `pending_out` at once. A capture first gives the
//! captured part of the hold back to `available` (a `hold_capture` ledger entry) and then
//! debits the whole captured amount exactly as a usage fee is debited (a `fee` transaction,
//! grants in burn order, overdraft allowed), so what it burns is decided at capture, from the
//! grants as they stand then. What a capture asks beyond what the hold still holds is debited
//! the same way and reported as `beyond_hold`. A release, or the worker at `expires_at`, gives
//! back what is left (`hold_release`, `hold_expiry`). Every entry of a hold carries the
//! transaction id `tally_hold_{id}` (`repo::holds::ledger_id`), so `ledger verify` finds them.
//!
//! Every change locks the customer first, as every wallet change does, so concurrent
//! captures of one hold run one after the other and never take more than it holds.

use super::customers::not_found;
use super::wallet::{debit, open_account, record, require_asset, save_account, RESERVED_TRANSACTION_PREFIX};
use super::{request_hash, webhooks, OpError};
use crate::conn::Conn;
use crate::repo::holds::{self as repo, Hold, HoldStatus};
use crate::repo::ledger::{self, EntryHeader};
use crate::repo::transactions::{self, Transaction};
use crate::repo::wallets::{AccountKey, GrantOrigin};
use crate::repo::{customers, Metadata};
use crate::{ids, StoreError};
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use tally_core::asset::AssetCode;
use tally_core::ledger::{Posting, SystemAccount};
use tally_core::wallet::{AccountState, WalletError};
use tally_core::Mode;

/// How long holds last: `default` when a request names no `expires_at`, and at most `max`.
/// Server settings (`hold_expiry_seconds`, `hold_max_expiry_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimits {
    pub default_expiry: Duration,
    pub max_expiry: Duration,
}

impl Default for HoldLimits {
    fn default() -> HoldLimits {
        HoldLimits { default_expiry: Duration::days(1), max_expiry: Duration::days(7) }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewHold {
    pub transaction_id: String,
    pub account_name: String,
    pub asset: AssetCode,
    /// > 0, at most the asset's precision in decimal places (checked here, which knows it).
    pub amount: Decimal,
    /// Hold even when `available` cannot cover the amount (it then goes below zero).
    pub allow_overdraft: bool,
    /// `None`: now + the default expiry.
    pub expires_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
    pub metadata: Metadata,
}

impl NewHold {
    fn canonical(&self) -> String {
        format!(
            "hold|{}|{}|{}|{}|{:?}|{:?}|{:?}",
            self.account_name,
            self.asset,
            self.amount.normalize(),
            self.allow_overdraft,
            self.expires_at.map(|at| at.timestamp_micros()),
            self.description,
            self.metadata
        )
    }
}

/// A hold and whether this call only replayed the request that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldOutcome {
    pub hold: Hold,
    pub replayed: bool,
}

pub fn create(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    new: &NewHold,
    limits: HoldLimits,
    now: DateTime<Utc>,
) -> Result<HoldOutcome, OpError> {
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| not_found(customer_id))?;
    let hash = request_hash(&new.canonical());
    if let Some(existing) = repo::get(conn, mode, customer_id, &new.transaction_id)? {
        if existing.request_hash == hash {
            return Ok(HoldOutcome { hold: existing, replayed: true });
        }
        return Err(OpError::Conflict(format!(
            "transaction_id {} was already used for a different hold; use a new id for a new hold",
            new.transaction_id
        )));
    }
    let asset = require_asset(conn, mode, &new.asset)?;
    check_precision("amount", new.amount, asset.code(), asset.precision())?;
    let expires_at = match new.expires_at {
        None => now + limits.default_expiry,
        Some(at) if at <= now => return Err(OpError::invalid("expires_at", "must be in the future")),
        Some(at) if at > now + limits.max_expiry => {
            return Err(OpError::invalid(
                "expires_at",
                format!(
                    "must be at most {} seconds from now (the server's hold_max_expiry_seconds)",
                    limits.max_expiry.num_seconds()
                ),
            ))
        }
        Some(at) => at,
    };
    let key = AccountKey {
        customer_id: customer_id.to_owned(),
        name: new.account_name.clone(),
        asset: asset.code().to_owned(),
    };
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    let limit = if new.allow_overdraft { None } else { Some(Decimal::ZERO) };
    let available = account.state.available;
    let postings = account.state.hold(new.amount, limit).map_err(|error| match error {
        WalletError::InsufficientFunds => OpError::invalid(
            "amount",
            format!(
                "{}:{} has {available} available, {} short of the {} to hold; send allow_overdraft: true to hold it anyway",
                key.name,
                key.asset,
                new.amount - available.max(Decimal::ZERO),
                new.amount
            ),
        ),
        other => super::wallet::wallet_error(other, "amount"),
    })?;
    save_account(conn, mode, &loaded, &account, &GrantOrigin::default(), now)?;
    let hold = Hold {
        customer_id: customer_id.to_owned(),
        id: new.transaction_id.clone(),
        account_name: key.name.clone(),
        asset: key.asset.clone(),
        amount: new.amount,
        captured: Decimal::ZERO,
        released: Decimal::ZERO,
        status: HoldStatus::Held,
        allow_overdraft: new.allow_overdraft,
        description: new.description.clone(),
        metadata: new.metadata.clone(),
        request_hash: hash,
        expires_at,
        created_at: now,
        updated_at: now,
        closed_at: None,
    };
    append(conn, mode, &hold, "hold", &postings, now)?;
    repo::insert(conn, mode, &hold).map_err(|error| match error {
        StoreError::Conflict(_) => OpError::Conflict(format!("hold {} was just made by another request", hold.id)),
        other => other.into(),
    })?;
    webhooks::hold_changed(conn, mode, webhooks::Topic::HoldCreated, &hold, None, now)?;
    Ok(HoldOutcome { hold, replayed: false })
}

/// Refuses an amount with more decimal places than its asset has: a hold and its captures
/// are in the asset's own units, never rounded.
fn check_precision(field: &str, amount: Decimal, asset: &str, precision: u32) -> Result<(), OpError> {
    if amount.normalize().scale() > precision {
        return Err(OpError::invalid(field, format!("{asset} amounts have at most {precision} decimal places")));
    }
    Ok(())
}

fn append(
    conn: &mut dyn Conn,
    mode: Mode,
    hold: &Hold,
    kind: &str,
    postings: &[Posting],
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let key = hold.key();
    let ledger_id = hold.ledger_id();
    let header = EntryHeader {
        mode,
        account: &key,
        kind,
        transaction_id: Some(&ledger_id),
        grant_id: None,
        effective_at: now,
        created_at: now,
    };
    ledger::append(conn, &header, postings)?;
    Ok(())
}

/// A capture as a client asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    pub hold_id: String,
    /// > 0.
    pub amount: Decimal,
    /// The fee transaction's id, and the capture's idempotency key. `None`: Tally makes one,
    /// and the capture is not idempotent.
    pub transaction_id: Option<String>,
}

/// What one capture did.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureOutcome {
    /// The hold after the capture.
    pub hold: Hold,
    /// The fee transaction (its amount is minus the whole capture).
    pub transaction: Transaction,
    /// Of the capture, what came out of the hold...
    pub from_hold: Decimal,
    /// ...and what was debited beyond it, as usage is.
    pub beyond_hold: Decimal,
    pub replayed: bool,
}

pub fn capture(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    capture: &Capture,
    now: DateTime<Utc>,
) -> Result<CaptureOutcome, OpError> {
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| not_found(customer_id))?;
    let mut hold = require(conn, mode, customer_id, &capture.hold_id)?;
    let hash = request_hash(&format!("hold_capture|{}|{}", capture.hold_id, capture.amount.normalize()));
    if let Some(transaction_id) = &capture.transaction_id {
        if let Some(existing) = transactions::get(conn, customer_id, transaction_id)? {
            if existing.request_hash != hash {
                return Err(OpError::Conflict(format!(
                    "transaction_id {transaction_id} was already used for a different request; use a new id for a new capture"
                )));
            }
            let detail: serde_json::Value = serde_json::from_str(&existing.detail).unwrap_or_default();
            let part = |name: &str| detail[name].as_str().and_then(|text| text.parse().ok()).unwrap_or_default();
            let (from_hold, beyond_hold) = (part("captured_from_hold"), part("debited_beyond_hold"));
            return Ok(CaptureOutcome { hold, transaction: existing, from_hold, beyond_hold, replayed: true });
        }
    }
    require_open(&hold, now)?;
    let asset = require_asset(
        conn,
        mode,
        &AssetCode::parse(&hold.asset).map_err(|error| StoreError::Corrupt(error.to_string()))?,
    )?;
    check_precision("amount", capture.amount, asset.code(), asset.precision())?;
    let key = hold.key();
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    let (from_hold, postings) = capture_from(conn, mode, &mut hold, &mut account.state, capture.amount, now)?;
    save_account(conn, mode, &loaded, &account, &GrantOrigin::default(), now)?;
    let beyond_hold = capture.amount - from_hold;
    let transaction = Transaction {
        customer_id: customer_id.to_owned(),
        id: capture
            .transaction_id
            .clone()
            .unwrap_or_else(|| format!("{RESERVED_TRANSACTION_PREFIX}capture_{}", ids::new_id("cap"))),
        kind: "fee".to_owned(),
        account_name: key.name.clone(),
        asset: key.asset.clone(),
        amount: -capture.amount,
        description: Some(hold.description.clone().unwrap_or_else(|| format!("Capture of hold {}", hold.id))),
        metadata: hold.metadata.clone(),
        request_hash: if capture.transaction_id.is_some() { hash } else { String::new() },
        detail: capture_detail(&hold, from_hold, beyond_hold).to_string(),
        created_at: now,
        executed_at: Some(now),
    };
    record(conn, mode, &key, &transaction, &postings, now)?;
    webhooks::hold_changed(
        conn,
        mode,
        webhooks::Topic::HoldCaptured,
        &hold,
        Some((&transaction, from_hold, beyond_hold)),
        now,
    )?;
    Ok(CaptureOutcome { hold, transaction, from_hold, beyond_hold, replayed: false })
}

/// What a capture's fee transaction records of its hold (amounts as text, exactly).
pub(crate) fn capture_detail(hold: &Hold, from_hold: Decimal, beyond_hold: Decimal) -> serde_json::Value {
    serde_json::json!({
        "hold_id": hold.id,
        "captured_from_hold": from_hold.normalize().to_string(),
        "debited_beyond_hold": beyond_hold.normalize().to_string(),
    })
}

/// Captures `amount` (> 0) with `hold` (open, on the account `state` is, which is settled and
/// locked): gives the part the hold still holds back to `available` in a `hold_capture`
/// entry, then debits all of `amount` as a usage fee is debited. Writes the hold; returns the
/// part taken from the hold and the fee's postings, for the caller to record with its fee
/// transaction (and to send `hold.captured`).
pub(crate) fn capture_from(
    conn: &mut dyn Conn,
    mode: Mode,
    hold: &mut Hold,
    state: &mut AccountState,
    amount: Decimal,
    now: DateTime<Utc>,
) -> Result<(Decimal, Vec<Posting>), OpError> {
    // Zero when usage named a hold that an earlier fee of the same batch used up: the fee is
    // then debited beyond the hold, as the rest of an over-capture is.
    let from_hold = amount.min(hold.remaining());
    if !from_hold.is_zero() {
        let released = state.release_hold(from_hold).map_err(|error| super::wallet::wallet_error(error, "amount"))?;
        append(conn, mode, hold, "hold_capture", &released, now)?;
    }
    let postings = debit(state, amount, SystemAccount::Revenue)?;
    if !from_hold.is_zero() {
        hold.captured += from_hold;
        hold.updated_at = now;
        if hold.remaining().is_zero() {
            hold.status = HoldStatus::Captured;
            hold.closed_at = Some(now);
        }
        repo::update(conn, hold)?;
    }
    Ok((from_hold, postings))
}

/// Returns what the hold still holds to `available`. Releasing a released hold changes
/// nothing and answers it again; a captured or expired hold cannot be released (409).
pub fn release(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    hold_id: &str,
    now: DateTime<Utc>,
) -> Result<Hold, OpError> {
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| not_found(customer_id))?;
    let mut hold = require(conn, mode, customer_id, hold_id)?;
    match hold.status {
        HoldStatus::Released => return Ok(hold),
        HoldStatus::Captured | HoldStatus::Expired => return Err(closed(&hold)),
        HoldStatus::Held => {}
    }
    close(conn, mode, &mut hold, HoldStatus::Released, now)?;
    Ok(hold)
}

/// Expires every open hold of the customer whose `expires_at` passed at `now`. Returns
/// whether there was any. For the worker, which claimed the customer.
pub fn expire_due(conn: &mut dyn Conn, mode: Mode, customer_id: &str, now: DateTime<Utc>) -> Result<bool, OpError> {
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| not_found(customer_id))?;
    let due = repo::due_for_customer(conn, customer_id, now)?;
    for id in &due {
        let mut hold = require(conn, mode, customer_id, id)?;
        close(conn, mode, &mut hold, HoldStatus::Expired, now)?;
    }
    Ok(!due.is_empty())
}

/// Gives back what an open hold still holds and closes it as `status` (released or expired).
fn close(
    conn: &mut dyn Conn,
    mode: Mode,
    hold: &mut Hold,
    status: HoldStatus,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let key = hold.key();
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    let left = hold.remaining();
    let postings = account.state.release_hold(left).map_err(|error| super::wallet::wallet_error(error, "amount"))?;
    save_account(conn, mode, &loaded, &account, &GrantOrigin::default(), now)?;
    let kind = if status == HoldStatus::Expired { "hold_expiry" } else { "hold_release" };
    append(conn, mode, hold, kind, &postings, now)?;
    hold.released += left;
    hold.status = status;
    hold.updated_at = now;
    hold.closed_at = Some(now);
    repo::update(conn, hold)?;
    let topic =
        if status == HoldStatus::Expired { webhooks::Topic::HoldExpired } else { webhooks::Topic::HoldReleased };
    webhooks::hold_changed(conn, mode, topic, hold, None, now)?;
    Ok(())
}

pub fn require(conn: &mut dyn Conn, mode: Mode, customer_id: &str, hold_id: &str) -> Result<Hold, OpError> {
    repo::get(conn, mode, customer_id, hold_id)?
        .ok_or_else(|| OpError::NotFound(format!("hold {hold_id} not found for customer {customer_id}")))
}

/// Refuses a capture on a hold that holds nothing any more, or whose time is up.
pub(crate) fn require_open(hold: &Hold, now: DateTime<Utc>) -> Result<(), OpError> {
    if hold.status != HoldStatus::Held {
        return Err(closed(hold));
    }
    if hold.expires_at <= now {
        return Err(OpError::Conflict(format!(
            "hold {} expired at {}: it can no longer be captured, and what it held is being released",
            hold.id,
            hold.expires_at.to_rfc3339()
        )));
    }
    Ok(())
}

fn closed(hold: &Hold) -> OpError {
    OpError::Conflict(format!(
        "hold {} is {}: it holds nothing any more (captured {}, released {})",
        hold.id,
        hold.status.as_str(),
        hold.captured.normalize(),
        hold.released.normalize()
    ))
}
