//! Adjustments, charges, and settling due grant starts and expiries.
//!
//! Locking order, the same everywhere so that concurrent writers cannot deadlock: the
//! customer row first, then the wallet account row. On SQLite the single writer makes this
//! moot; on PostgreSQL it serialises all changes to one customer's wallet.

use super::assets::{self as asset_ops, KnownAsset};
use super::customers::not_found;
use super::{request_hash, OpError};
use crate::conn::Conn;
use crate::repo::customers;
use crate::repo::ledger::{self, EntryHeader};
use crate::repo::transactions::{self, Transaction};
use crate::repo::wallets::{self, Account, AccountKey, GrantOrigin, NextDue, Touched};
use crate::repo::Metadata;
use crate::{ids, StoreError};
use chrono::{DateTime, Months, Utc};
use rust_decimal::Decimal;
use std::collections::{HashMap, HashSet};
use tally_core::asset::AssetCode;
use tally_core::charge::ChargeInputs;
use tally_core::ledger::SystemAccount;
use tally_core::wallet::{AccountState, Grant, GrantState, Purpose, Settlement, SettlementKind, WalletError};
use tally_core::Mode;

/// Transaction ids Tally makes itself start with this; clients may not use it.
pub const RESERVED_TRANSACTION_PREFIX: &str = "tally_";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustmentReason {
    Gift,
    ExternalTopup,
    ExternalRefund,
    Other,
}

impl AdjustmentReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AdjustmentReason::Gift => "gift",
            AdjustmentReason::ExternalTopup => "external_topup",
            AdjustmentReason::ExternalRefund => "external_refund",
            AdjustmentReason::Other => "other",
        }
    }

    pub fn parse(text: &str) -> Option<AdjustmentReason> {
        match text {
            "gift" => Some(AdjustmentReason::Gift),
            "external_topup" => Some(AdjustmentReason::ExternalTopup),
            "external_refund" => Some(AdjustmentReason::ExternalRefund),
            "other" => Some(AdjustmentReason::Other),
            _ => None,
        }
    }

    /// The purpose of the grant a credit with this reason makes: money the customer paid
    /// outside Tally is `paid`; everything else given is `promotion`. Refunds only debit.
    fn credit_purpose(self) -> Option<Purpose> {
        match self {
            AdjustmentReason::ExternalTopup => Some(Purpose::Paid),
            AdjustmentReason::Gift | AdjustmentReason::Other => Some(Purpose::Promotion),
            AdjustmentReason::ExternalRefund => None,
        }
    }

    fn allows_debit(self) -> bool {
        match self {
            AdjustmentReason::ExternalRefund | AdjustmentReason::Other => true,
            AdjustmentReason::Gift | AdjustmentReason::ExternalTopup => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Adjustment {
    pub transaction_id: String,
    pub account_name: String,
    pub asset: AssetCode,
    /// Positive credits the account, negative debits it. Never zero.
    pub amount: Decimal,
    pub description: Option<String>,
    pub reason: AdjustmentReason,
    pub effective_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: Metadata,
}

impl Adjustment {
    fn canonical(&self) -> String {
        format!(
            "adjustment|{}|{}|{}|{:?}|{}|{:?}|{:?}|{:?}",
            self.account_name,
            self.asset,
            self.amount.normalize(),
            self.description,
            self.reason.as_str(),
            self.effective_at.map(|at| at.timestamp_micros()),
            self.expires_at.map(|at| at.timestamp_micros()),
            self.metadata
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub transaction_id: String,
    pub account_name: String,
    pub asset: AssetCode,
    /// What to debit, > 0. When inputs are given it must equal what they come to.
    pub amount: Decimal,
    pub inputs: ChargeInputs,
    pub subject: Option<String>,
    pub description: Option<String>,
    pub metadata: Metadata,
}

impl Charge {
    fn canonical(&self) -> String {
        format!(
            "charge|{}|{}|{}|{:?}|{:?}|{:?}|{:?}",
            self.account_name,
            self.asset,
            self.amount.normalize(),
            self.inputs,
            self.subject,
            self.description,
            self.metadata
        )
    }
}

/// The transaction an operation made, and whether this call only replayed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub transaction: Transaction,
    pub replayed: bool,
}

/// Paid grants expire after one year unless told otherwise.
pub fn default_expiry(purpose: Purpose, effective_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match purpose {
        Purpose::Paid => effective_at.checked_add_months(Months::new(12)),
        Purpose::Promotion | Purpose::Bundled => None,
    }
}

pub fn adjust(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    adjustment: &Adjustment,
    now: DateTime<Utc>,
) -> Result<Outcome, OpError> {
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| not_found(customer_id))?;
    let hash = request_hash(&adjustment.canonical());
    if let Some(outcome) = replay(conn, customer_id, &adjustment.transaction_id, &hash)? {
        return Ok(outcome);
    }
    let asset = require_asset(conn, mode, &adjustment.asset)?;
    let credit_purpose = check_adjustment(adjustment, now)?;
    let key = AccountKey {
        customer_id: customer_id.to_owned(),
        name: adjustment.account_name.clone(),
        asset: asset.code().to_owned(),
    };
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    let mut origin = GrantOrigin { transaction_id: Some(adjustment.transaction_id.clone()), ..GrantOrigin::default() };
    let postings = match credit_purpose {
        Some(purpose) => {
            let grant = adjustment_grant(adjustment, purpose, now);
            origin.cost_basis = None;
            account.state.credit(grant, SystemAccount::Issuance, now).map_err(|error| wallet_error(error, "amount"))?
        }
        // A refund gives back paid credit, newest first, before any promotional credit.
        None if adjustment.reason == AdjustmentReason::ExternalRefund => account
            .state
            .refund(-adjustment.amount, SystemAccount::Issuance)
            .map_err(|error| wallet_error(error, "amount"))?,
        None => debit(&mut account.state, -adjustment.amount, SystemAccount::Issuance)?,
    };
    save_account(conn, mode, &loaded, &account, &origin, now)?;
    let transaction = adjustment_transaction(customer_id, &key, adjustment, hash, now);
    record(conn, mode, &key, &transaction, &postings, now)?;
    Ok(Outcome { transaction, replayed: false })
}

/// Makes several credits to one account at one instant, each exactly as [`adjust`] makes it
/// (its own transaction, ledger entry and grant; one whose transaction id was used already
/// is replayed as `adjust` replays it), but loads and saves the account once: as many calls
/// of `adjust` would take time quadratic in the account's grants. `tally bench --grants`
/// sets up its accounts with it. Every adjustment must credit the same account.
pub fn adjust_many(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    adjustments: &[Adjustment],
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>, OpError> {
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| not_found(customer_id))?;
    let Some(first) = adjustments.first() else {
        return Ok(Vec::new());
    };
    let asset = require_asset(conn, mode, &first.asset)?;
    let key = AccountKey {
        customer_id: customer_id.to_owned(),
        name: first.account_name.clone(),
        asset: asset.code().to_owned(),
    };
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    let mut origins: HashMap<String, GrantOrigin> = HashMap::with_capacity(adjustments.len());
    let mut made: HashSet<&str> = HashSet::with_capacity(adjustments.len());
    let mut outcomes = Vec::with_capacity(adjustments.len());
    let mut entries = Vec::with_capacity(adjustments.len());
    for adjustment in adjustments {
        if adjustment.account_name != first.account_name || adjustment.asset != first.asset {
            return Err(OpError::invalid("account_name", "every adjustment of a batch must go to the same account"));
        }
        let hash = request_hash(&adjustment.canonical());
        if let Some(outcome) = replay(conn, customer_id, &adjustment.transaction_id, &hash)? {
            outcomes.push(outcome);
            continue;
        }
        if !made.insert(&adjustment.transaction_id) {
            return Err(OpError::Conflict(format!(
                "transaction_id {} appears more than once in the batch",
                adjustment.transaction_id
            )));
        }
        let Some(purpose) = check_adjustment(adjustment, now)? else {
            return Err(OpError::invalid("amount", "every adjustment of a batch must be a credit"));
        };
        let grant = adjustment_grant(adjustment, purpose, now);
        let origin = GrantOrigin { transaction_id: Some(adjustment.transaction_id.clone()), ..GrantOrigin::default() };
        origins.insert(grant.id.to_string(), origin);
        let postings =
            account.state.credit(grant, SystemAccount::Issuance, now).map_err(|error| wallet_error(error, "amount"))?;
        let transaction = adjustment_transaction(customer_id, &key, adjustment, hash, now);
        outcomes.push(Outcome { transaction: transaction.clone(), replayed: false });
        entries.push((transaction, postings));
    }
    // What `save_account` does, with each new grant's own origin.
    let none = GrantOrigin::default();
    wallets::save_issuing(conn, mode, &loaded, &account, &|grant| origins.get(&*grant.id).unwrap_or(&none))?;
    super::webhooks::balance_changed(conn, mode, &loaded, &account, now)?;
    for (transaction, postings) in &entries {
        record(conn, mode, &key, transaction, postings, now)?;
    }
    Ok(outcomes)
}

/// The grant a credit adjustment issues.
fn adjustment_grant(adjustment: &Adjustment, purpose: Purpose, now: DateTime<Utc>) -> Grant {
    let effective_at = adjustment.effective_at.unwrap_or(now).max(now);
    Grant {
        id: ids::new_id("grt").into(),
        purpose,
        priority: 0,
        amount: adjustment.amount,
        remaining: adjustment.amount,
        effective_at,
        expires_at: adjustment.expires_at.or_else(|| default_expiry(purpose, effective_at)),
        created_at: now,
        state: GrantState::Pending,
    }
}

fn adjustment_transaction(
    customer_id: &str,
    key: &AccountKey,
    adjustment: &Adjustment,
    request_hash: String,
    now: DateTime<Utc>,
) -> Transaction {
    Transaction {
        customer_id: customer_id.to_owned(),
        id: adjustment.transaction_id.clone(),
        kind: "adjustment".to_owned(),
        account_name: key.name.clone(),
        asset: key.asset.clone(),
        amount: adjustment.amount,
        description: adjustment.description.clone(),
        metadata: adjustment.metadata.clone(),
        request_hash,
        detail: serde_json::json!({ "reason": adjustment.reason.as_str() }).to_string(),
        created_at: now,
        executed_at: Some(now),
    }
}

/// Checks what the parser could not (it needs the clock) and returns the purpose of the
/// grant a credit makes, or `None` for a debit.
fn check_adjustment(adjustment: &Adjustment, now: DateTime<Utc>) -> Result<Option<Purpose>, OpError> {
    let is_credit = adjustment.amount > Decimal::ZERO;
    if !is_credit {
        if !adjustment.reason.allows_debit() {
            return Err(OpError::invalid(
                "amount",
                format!(
                    "a {} adjustment must be positive: only external_refund and other may debit",
                    adjustment.reason.as_str()
                ),
            ));
        }
        for (field, value) in [("effective_at", adjustment.effective_at), ("expires_at", adjustment.expires_at)] {
            if value.is_some() {
                return Err(OpError::invalid(field, "applies only to credits (a positive amount)"));
            }
        }
        return Ok(None);
    }
    let Some(purpose) = adjustment.reason.credit_purpose() else {
        return Err(OpError::invalid("amount", "an external_refund adjustment must be negative: it takes money out"));
    };
    let effective_at = adjustment.effective_at.unwrap_or(now).max(now);
    if let Some(expires_at) = adjustment.expires_at {
        if expires_at <= now {
            return Err(OpError::invalid("expires_at", "must be in the future"));
        }
        if expires_at <= effective_at {
            return Err(OpError::invalid("expires_at", "must be after effective_at"));
        }
    }
    Ok(Some(purpose))
}

pub fn charge(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    charge: &Charge,
    now: DateTime<Utc>,
) -> Result<Outcome, OpError> {
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| not_found(customer_id))?;
    let hash = request_hash(&charge.canonical());
    if let Some(outcome) = replay(conn, customer_id, &charge.transaction_id, &hash)? {
        return Ok(outcome);
    }
    let asset = require_asset(conn, mode, &charge.asset)?;
    let key = AccountKey {
        customer_id: customer_id.to_owned(),
        name: charge.account_name.clone(),
        asset: asset.code().to_owned(),
    };
    let (mut account, loaded) = open_account(conn, mode, &key, now)?;
    let postings = debit(&mut account.state, charge.amount, SystemAccount::Revenue)?;
    save_account(conn, mode, &loaded, &account, &GrantOrigin::default(), now)?;
    let detail = serde_json::json!({
        "subject": charge.subject,
        "input_units": json_number(charge.inputs.units),
        "unit_price": json_number(charge.inputs.unit_price),
        "input_volume": json_number(charge.inputs.volume),
        "volume_rate": json_number(charge.inputs.volume_rate),
        "package_size": json_number(charge.inputs.package_size),
    });
    let transaction = Transaction {
        customer_id: customer_id.to_owned(),
        id: charge.transaction_id.clone(),
        kind: "fee".to_owned(),
        account_name: key.name.clone(),
        asset: key.asset.clone(),
        amount: -charge.amount,
        description: charge.description.clone(),
        metadata: charge.metadata.clone(),
        request_hash: hash,
        detail: detail.to_string(),
        created_at: now,
        executed_at: Some(now),
    };
    record(conn, mode, &key, &transaction, &postings, now)?;
    Ok(Outcome { transaction, replayed: false })
}

/// An exact decimal as a JSON number (serde_json keeps the digits: arbitrary precision).
pub(crate) fn json_number(value: Option<Decimal>) -> serde_json::Value {
    value
        .and_then(|value| value.normalize().to_string().parse::<serde_json::Number>().ok())
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// Overdraft is allowed: a debit never fails for a low balance, so billing stays complete.
pub(crate) fn debit(
    state: &mut AccountState,
    amount: Decimal,
    destination: SystemAccount,
) -> Result<Vec<tally_core::ledger::Posting>, OpError> {
    state.debit(amount, destination, None).map_err(|error| wallet_error(error, "amount"))
}

/// The refusal a wallet change gets: a balance or debt limit names the request's `field`.
pub(crate) fn wallet_error(error: WalletError, field: &str) -> OpError {
    match error {
        WalletError::InsufficientFunds => OpError::Conflict(error.to_string()),
        WalletError::BalanceLimit(_) | WalletError::DebtLimit(_) => OpError::invalid(field, error.to_string()),
        WalletError::NotHeld => OpError::Store(StoreError::Corrupt(error.to_string())),
    }
}

pub(crate) fn require_asset(conn: &mut dyn Conn, mode: Mode, code: &AssetCode) -> Result<KnownAsset, OpError> {
    asset_ops::find(conn, mode, code)?
        .ok_or_else(|| OpError::invalid("asset", format!("{code} is neither a custom asset nor an ISO 4217 currency")))
}

fn replay(
    conn: &mut dyn Conn,
    customer_id: &str,
    transaction_id: &str,
    hash: &str,
) -> Result<Option<Outcome>, OpError> {
    match transactions::get(conn, customer_id, transaction_id)? {
        None => Ok(None),
        Some(existing) if existing.request_hash == hash => Ok(Some(Outcome { transaction: existing, replayed: true })),
        Some(_) => Err(OpError::Conflict(format!(
            "transaction_id {transaction_id} was already used for a different request; use a new id for a new transaction"
        ))),
    }
}

/// Creates the account on first use, loads and locks it, and settles whatever is due, writing
/// those entries. Returns the account and the state as loaded, which `save` diffs against.
pub(crate) fn open_account(
    conn: &mut dyn Conn,
    mode: Mode,
    key: &AccountKey,
    now: DateTime<Utc>,
) -> Result<(Account, AccountState), OpError> {
    let (mut account, _) = load_or_create(conn, mode, key, now)?;
    let loaded = account.state.clone();
    for settlement in settle(&mut account, now)? {
        record_settlement(conn, mode, &account, &settlement, now)?;
    }
    Ok((account, loaded))
}

/// [`open_account`] for a change made only of debits and hold captures (usage fees): instead
/// of a copy of the state to diff against, it returns a [`Touched`] to note the change in,
/// and settles only when the row says something is due, so that opening and saving cost
/// what the change touches, not what the account holds (`wallets::prepare_touched`).
/// `loaded` is the account as read and locked already in this transaction, if it was (an
/// ingestion round reads its customers' accounts together). Also answers whether opening
/// settled anything, which writes ledger entries and transactions of its own.
pub(crate) fn open_account_for_debits(
    conn: &mut dyn Conn,
    mode: Mode,
    key: &AccountKey,
    loaded: Option<wallets::LockedAccount>,
    now: DateTime<Utc>,
) -> Result<(Account, Touched, bool), OpError> {
    let (mut account, next_due_at) = match loaded {
        Some(loaded) => loaded.with_grants(conn)?,
        None => load_or_create(conn, mode, key, now)?,
    };
    let mut touched = Touched::new(&account.state, next_due_at);
    let mut settled = false;
    if next_due_at.is_some_and(|due| due <= now) {
        touched.settling();
        for settlement in settle(&mut account, now)? {
            touched.settlement(&settlement);
            record_settlement(conn, mode, &account, &settlement, now)?;
            settled = true;
        }
    }
    Ok((account, touched, settled))
}

/// Loads and locks an account, creating it first when it is missing (accounts are made on
/// first use), with the instant its row says something next falls due.
fn load_or_create(
    conn: &mut dyn Conn,
    mode: Mode,
    key: &AccountKey,
    now: DateTime<Utc>,
) -> Result<(Account, NextDue), OpError> {
    if let Some(loaded) = wallets::load_for_update(conn, key)? {
        return Ok(loaded);
    }
    wallets::ensure(conn, mode, key, now)?;
    Ok(wallets::load_for_update(conn, key)?
        .ok_or_else(|| StoreError::Corrupt(format!("account {}:{} vanished", key.name, key.asset)))?)
}

fn settle(account: &mut Account, now: DateTime<Utc>) -> Result<Vec<Settlement>, OpError> {
    let key = &account.key;
    Ok(account.state.settle(now).map_err(|error| {
        StoreError::Corrupt(format!("account {}:{} of {} cannot settle: {error}", key.name, key.asset, key.customer_id))
    })?)
}

/// Writes a settlement's ledger entry and, for an expiry that took something, its transaction.
fn record_settlement(
    conn: &mut dyn Conn,
    mode: Mode,
    account: &Account,
    settlement: &Settlement,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let key = &account.key;
    let header = EntryHeader {
        mode,
        account: key,
        kind: match settlement.kind {
            SettlementKind::Activation => "activation",
            SettlementKind::Expiry => "expiry",
        },
        transaction_id: None,
        grant_id: Some(&settlement.grant_id),
        effective_at: settlement.at,
        created_at: now,
    };
    ledger::append(conn, &header, &settlement.postings)?;
    if settlement.kind != SettlementKind::Expiry || settlement.postings.is_empty() {
        return Ok(());
    }
    let expired: Decimal =
        settlement.postings.iter().filter(|posting| posting.amount < Decimal::ZERO).map(|posting| posting.amount).sum();
    let transaction = Transaction {
        customer_id: key.customer_id.clone(),
        id: format!("{RESERVED_TRANSACTION_PREFIX}expiry_{}", settlement.grant_id),
        kind: "expiry".to_owned(),
        account_name: key.name.clone(),
        asset: key.asset.clone(),
        amount: expired,
        description: Some("Unused credit expired".to_owned()),
        metadata: Metadata::new(),
        request_hash: String::new(),
        detail: serde_json::json!({ "grant_id": settlement.grant_id }).to_string(),
        created_at: settlement.at,
        executed_at: Some(settlement.at),
    };
    transactions::insert(conn, mode, &transaction)?;
    super::webhooks::expiry_recorded(conn, mode, key, &account.state, &transaction, now)?;
    Ok(())
}

pub(crate) fn record(
    conn: &mut dyn Conn,
    mode: Mode,
    key: &AccountKey,
    transaction: &Transaction,
    postings: &[tally_core::ledger::Posting],
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let sequence = transactions::next_sequence(conn, &transaction.customer_id)?;
    let destinations = crate::repo::webhooks::enabled_destinations(conn, mode.platform())?;
    record_numbered(conn, mode, key, transaction, postings, sequence, &destinations, now)
}

/// [`record`] for a writer of many transactions in one go (a batch of usage events): the
/// transaction takes number `sequence`, and its webhook goes to `destinations`, the enabled
/// destinations the writer read once for the batch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_numbered(
    conn: &mut dyn Conn,
    mode: Mode,
    key: &AccountKey,
    transaction: &Transaction,
    postings: &[tally_core::ledger::Posting],
    sequence: i64,
    destinations: &[crate::repo::webhooks::Destination],
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let header = EntryHeader {
        mode,
        account: key,
        kind: &transaction.kind,
        transaction_id: Some(&transaction.id),
        grant_id: None,
        effective_at: now,
        created_at: now,
    };
    ledger::append(conn, &header, postings)?;
    transactions::insert_numbered(conn, mode, transaction, sequence)?;
    super::webhooks::transaction_completed_to(conn, mode, destinations, transaction, now)?;
    Ok(())
}

/// Saves an account after a change (see `wallets::save`) and tells webhooks when its available
/// balance ran out. Every change to an account is saved through here (`adjust_many` does the
/// same with a grant origin of its own for each grant it issues).
pub(crate) fn save_account(
    conn: &mut dyn Conn,
    mode: Mode,
    loaded: &AccountState,
    account: &Account,
    origin: &GrantOrigin,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    wallets::save(conn, mode, loaded, account, origin)?;
    super::webhooks::balance_changed(conn, mode, loaded, account, now)?;
    Ok(())
}

/// Settles one account if something on it is due. Returns whether anything changed.
pub fn settle_account(conn: &mut dyn Conn, mode: Mode, key: &AccountKey, now: DateTime<Utc>) -> Result<bool, OpError> {
    customers::get_for_update(conn, mode, &key.customer_id)?.ok_or_else(|| not_found(&key.customer_id))?;
    if !wallets::is_due(conn, key, now)? {
        return Ok(false);
    }
    let (account, loaded) = open_account(conn, mode, key, now)?;
    save_account(conn, mode, &loaded, &account, &GrantOrigin::default(), now)?;
    Ok(true)
}

/// True when any account of the customer has something due: reads settle first when so.
pub fn customer_has_due(conn: &mut dyn Conn, customer_id: &str, now: DateTime<Utc>) -> Result<bool, OpError> {
    Ok(conn
        .query_optional(
            "SELECT 1 FROM wallet_accounts WHERE customer_id = $1 AND next_due_at <= $2",
            crate::params![customer_id, now],
        )?
        .is_some())
}

/// Settles every account of one customer that has something due.
pub fn settle_customer(conn: &mut dyn Conn, mode: Mode, customer_id: &str, now: DateTime<Utc>) -> Result<(), OpError> {
    for account in wallets::list_for_customer(conn, customer_id)? {
        settle_account(conn, mode, &account.key, now)?;
    }
    Ok(())
}
