//! Wallet accounts and their credit grants.

use super::grant_cache;
use super::Filter;
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::wallet::{AccountState, Grant, GrantState, Purpose};
use tally_core::Mode;

/// Identifies one account of one customer's wallet: `{name}:{ASSET}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountKey {
    pub customer_id: String,
    pub name: String,
    pub asset: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub key: AccountKey,
    pub state: AccountState,
    pub created_at: DateTime<Utc>,
}

/// What a new grant carries beyond the core's view of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GrantOrigin {
    pub transaction_id: Option<String>,
    /// Fiat paid per unit, for paid grants bought through a top-up.
    pub cost_basis: Option<Decimal>,
    /// The currency of `cost_basis` (the top-up's).
    pub cost_currency: Option<String>,
}

const ACCOUNT_COLUMNS: &str = "customer_id, name, asset, available, pending_in, pending_out, debt, created_at";

fn account_from_row(row: &crate::Row) -> Result<Account, StoreError> {
    Ok(Account {
        key: AccountKey { customer_id: row.text(0)?, name: row.text(1)?, asset: row.text(2)? },
        state: AccountState {
            available: row.decimal(3)?,
            pending_in: row.decimal(4)?,
            pending_out: row.decimal(5)?,
            debt: row.decimal(6)?,
            grants: Vec::new(),
        },
        created_at: row.time(7)?,
    })
}

/// When something on an account next falls due (a grant's start or expiry), if ever.
pub type NextDue = Option<DateTime<Utc>>;

/// Loads an account with its open grants, locking it for the rest of the transaction, and
/// the instant its row says something next falls due (see [`AccountState::next_due_at`]):
/// every save writes it, so nothing is due before it.
pub fn load_for_update(conn: &mut dyn Conn, key: &AccountKey) -> Result<Option<(Account, NextDue)>, StoreError> {
    let sql = format!(
        "SELECT {ACCOUNT_COLUMNS}, state_token, next_due_at FROM wallet_accounts
         WHERE customer_id = $1 AND name = $2 AND asset = $3{}",
        conn.for_update()
    );
    let Some(row) = conn.query_optional(&sql, params![&key.customer_id, &key.name, &key.asset])? else {
        return Ok(None);
    };
    let mut account = account_from_row(&row)?;
    let token = row.int(8)?;
    let next_due_at = row.opt_time(9)?;
    // Loaded to be changed: the save that follows files the grants in the cache again.
    account.state.grants = grants_under(conn, key, token)?;
    Ok(Some((account, next_due_at)))
}

/// Creates the account if it does not exist yet. Accounts are created on first use.
pub fn ensure(conn: &mut dyn Conn, mode: Mode, key: &AccountKey, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO wallet_accounts (mode, customer_id, name, asset, available, pending_in, pending_out, debt, created_at)
         VALUES ($1, $2, $3, $4, '0', '0', '0', '0', $5) ON CONFLICT DO NOTHING",
        params![mode.as_str(), &key.customer_id, &key.name, &key.asset, now],
    )?;
    Ok(())
}

/// Writes the balances and the grants that changed since `before` was loaded.
pub fn save(
    conn: &mut dyn Conn,
    mode: Mode,
    before: &AccountState,
    account: &Account,
    new_grant_origin: &GrantOrigin,
) -> Result<(), StoreError> {
    save_issuing(conn, mode, before, account, &|_| new_grant_origin)
}

/// [`save`] for a change that issued several grants of different origins: `origin_of` gives
/// each new grant's.
pub fn save_issuing<'origin>(
    conn: &mut dyn Conn,
    mode: Mode,
    before: &AccountState,
    account: &Account,
    origin_of: &dyn Fn(&Grant) -> &'origin GrantOrigin,
) -> Result<(), StoreError> {
    let token = write_changes(conn, mode, before, account, origin_of)?;
    // What a load under this token would read: the open grants, in burn order.
    grant_cache::put(&account.key, token, account.state.grants.iter().filter(|grant| is_open(grant)).cloned());
    Ok(())
}

/// [`save`] for an account that is not used after it: its open grants move into the cache
/// instead of being copied there (the hot path saves every account it debited this way).
pub fn save_and_release(
    conn: &mut dyn Conn,
    mode: Mode,
    before: &AccountState,
    account: Account,
    new_grant_origin: &GrantOrigin,
) -> Result<(), StoreError> {
    let token = write_changes(conn, mode, before, &account, &|_| new_grant_origin)?;
    grant_cache::put(&account.key, token, account.state.grants.into_iter().filter(is_open));
    Ok(())
}

/// Writes the balances, a new state token and the grants that changed; returns the token.
fn write_changes<'origin>(
    conn: &mut dyn Conn,
    mode: Mode,
    before: &AccountState,
    account: &Account,
    origin_of: &dyn Fn(&Grant) -> &'origin GrantOrigin,
) -> Result<i64, StoreError> {
    let token = write_balances(conn, before, account, account.state.next_due_at())?;
    for (grant, old) in pair_by_id(&before.grants, &account.state.grants) {
        match old {
            None => insert_grant(conn, mode, &account.key, grant, origin_of(grant))?,
            Some(old) if old != grant => update_grant(conn, grant)?,
            Some(_) => {}
        }
    }
    Ok(token)
}

/// Writes the account's row (balances, `next_due_at`, a new state token) and flags it for an
/// auto top-up check when its available balance went down; returns the token.
fn write_balances(
    conn: &mut dyn Conn,
    before: &AccountState,
    account: &Account,
    next_due_at: NextDue,
) -> Result<i64, StoreError> {
    let state = &account.state;
    let token = grant_cache::new_token();
    conn.execute(
        "UPDATE wallet_accounts SET available = $4, pending_in = $5, debt = $6, next_due_at = $7, state_token = $8,
         pending_out = $9 WHERE customer_id = $1 AND name = $2 AND asset = $3",
        params![
            &account.key.customer_id,
            &account.key.name,
            &account.key.asset,
            state.available,
            state.pending_in,
            state.debt,
            next_due_at,
            token,
            state.pending_out
        ],
    )?;
    if state.available < before.available {
        super::auto_top_ups::flag_if_low(conn, &account.key, state.available)?;
    }
    Ok(token)
}

/// What a change that only debits, captures and settles an account did to it, noted as it
/// happens, so that saving costs what the change touched and not what the account holds: a
/// debit walks its grants from the front and stops when it is covered, and an account may
/// hold thousands. Such a change never adds or removes a grant, and every grant it changes
/// is named by a posting it returned or by a settlement, so those names are the grants to
/// write. (Debug builds keep the whole state as loaded and check exactly that on save.)
pub struct Touched {
    /// The balances as loaded (without the grants).
    pub before: AccountState,
    /// When something falls due, as the row said when loaded.
    next_due_at: NextDue,
    /// Whether a settlement ran: it can start or expire any grant, so the due time is found again.
    settled: bool,
    grants: std::collections::HashSet<String>,
    #[cfg(debug_assertions)]
    loaded: AccountState,
}

impl Touched {
    pub fn new(state: &AccountState, next_due_at: NextDue) -> Touched {
        debug_assert_eq!(
            as_stored(next_due_at),
            as_stored(state.next_due_at()),
            "the row's next_due_at is the grants' next due time"
        );
        Touched {
            before: AccountState { grants: Vec::new(), ..*state },
            next_due_at,
            settled: false,
            grants: Default::default(),
            #[cfg(debug_assertions)]
            loaded: state.clone(),
        }
    }

    /// Notes the grants a change's postings move.
    pub fn postings(&mut self, postings: &[tally_core::ledger::Posting]) {
        for grant_id in postings.iter().filter_map(|posting| posting.grant_id.as_deref()) {
            if !self.grants.contains(grant_id) {
                self.grants.insert(grant_id.to_owned());
            }
        }
    }

    /// Notes that the account is being settled: the due time is then found again on save.
    pub fn settling(&mut self) {
        self.settled = true;
    }

    /// Notes a settlement: its grant changed state even when no amount moved.
    pub fn settlement(&mut self, settlement: &tally_core::wallet::Settlement) {
        self.settled = true;
        self.grants.insert(settlement.grant_id.clone());
        self.postings(&settlement.postings);
    }
}

/// An instant as a row stores it, in whole microseconds. Grants made at a clock finer than
/// that (the store's operations called with `Utc::now()`, as `tally bench` and `tally seed`
/// do) carry nanoseconds in memory and in the grant cache, so a due time read back from a row
/// may be up to a microsecond earlier than the grants' own: a settlement then runs that
/// early, finds nothing due, and the due time is found again (`Touched::settling`).
fn as_stored(at: NextDue) -> Option<i64> {
    at.map(|at| at.timestamp_micros())
}

/// An account changed only as [`Touched`] describes, ready to be written with others by
/// [`save_touched_many`]: its balances, the grants the change moved, and its open grants for
/// the cache.
pub struct TouchedSave {
    account: Account,
    changed: Vec<Grant>,
    next_due_at: NextDue,
    available_before: Decimal,
}

impl TouchedSave {
    pub fn key(&self) -> &AccountKey {
        &self.account.key
    }
}

/// Makes ready the save of an account changed only as [`Touched`] describes: its row, and the
/// rows of the grants it names.
pub fn prepare_touched(account: Account, touched: &Touched) -> Result<TouchedSave, StoreError> {
    let mut changed: Vec<Grant> = Vec::with_capacity(touched.grants.len());
    if !touched.grants.is_empty() {
        for grant in &account.state.grants {
            if touched.grants.contains(grant.id.as_ref()) {
                changed.push(grant.clone());
                if changed.len() == touched.grants.len() {
                    break;
                }
            }
        }
    }
    if changed.len() != touched.grants.len() {
        return Err(StoreError::Corrupt(format!(
            "account {}:{} of {} lost a grant it moved",
            account.key.name, account.key.asset, account.key.customer_id
        )));
    }
    #[cfg(debug_assertions)]
    for (grant, old) in pair_by_id(&touched.loaded.grants, &account.state.grants) {
        assert!(old == Some(grant) || touched.grants.contains(grant.id.as_ref()), "grant {} changed unnoted", grant.id);
    }
    // Only a grant the change touched can have closed, and only a closed or settled grant
    // can move the due time: an open grant's due time is its start or its expiry.
    let closed = changed.iter().any(|grant| !is_open(grant));
    let next_due_at = if touched.settled || closed { account.state.next_due_at() } else { touched.next_due_at };
    debug_assert_eq!(as_stored(next_due_at), as_stored(account.state.next_due_at()));
    let mut account = account;
    if closed {
        account.state.grants.retain(is_open);
    }
    Ok(TouchedSave { account, changed, next_due_at, available_before: touched.before.available })
}

/// Writes accounts made ready by [`prepare_touched`], of `mode`, each at most once: their rows
/// in one multi-row statement, the grants they moved in another (an upsert that always finds
/// the row: the account was loaded and locked, and its grants with it; written so because
/// both backends take a multi-row upsert, where a multi-row update needs each's own syntax),
/// flagging for an auto top-up check
/// each account whose available balance went down and whose customer `may_top_up` (one without
/// any auto top-up row has nothing to flag). Their open grants move into the cache.
pub fn save_touched_many(
    conn: &mut dyn Conn,
    mode: Mode,
    saves: Vec<TouchedSave>,
    may_top_up: &dyn Fn(&str) -> bool,
) -> Result<(), StoreError> {
    if saves.is_empty() {
        return Ok(());
    }
    debug_assert_eq!(
        saves.iter().map(TouchedSave::key).collect::<std::collections::HashSet<_>>().len(),
        saves.len(),
        "one write saves each account once"
    );
    let tokens: Vec<i64> = saves.iter().map(|_| grant_cache::new_token()).collect();
    let mut rows: Vec<crate::conn::Value> = Vec::with_capacity(saves.len() * 11);
    let mut grant_rows: Vec<crate::conn::Value> = Vec::new();
    for (save, token) in saves.iter().zip(&tokens) {
        let (key, state) = (&save.account.key, &save.account.state);
        rows.extend_from_slice(params![
            mode.as_str(),
            &key.customer_id,
            &key.name,
            &key.asset,
            state.available,
            state.pending_in,
            state.pending_out,
            state.debt,
            save.next_due_at,
            save.account.created_at,
            *token
        ]);
        for grant in &save.changed {
            push_grant_values(&mut grant_rows, mode, key, grant);
        }
    }
    super::execute_rows(
        conn,
        "INSERT INTO wallet_accounts (mode, customer_id, name, asset, available, pending_in, pending_out, debt,
                                      next_due_at, created_at, state_token)",
        11,
        &rows,
        " ON CONFLICT (customer_id, name, asset) DO UPDATE SET available = excluded.available,
           pending_in = excluded.pending_in, pending_out = excluded.pending_out, debt = excluded.debt,
           next_due_at = excluded.next_due_at, state_token = excluded.state_token",
    )?;
    super::execute_rows(
        conn,
        "INSERT INTO grants (id, mode, customer_id, account_name, asset, purpose, priority, amount, remaining, state,
                             is_open, effective_at, expires_at, created_at)",
        GRANT_WIDTH,
        &grant_rows,
        " ON CONFLICT (id) DO UPDATE SET remaining = excluded.remaining, state = excluded.state,
           is_open = excluded.is_open",
    )?;
    for (save, token) in saves.into_iter().zip(tokens) {
        let account = save.account;
        if account.state.available < save.available_before && may_top_up(&account.key.customer_id) {
            super::auto_top_ups::flag_if_low(conn, &account.key, account.state.available)?;
        }
        grant_cache::put(&account.key, token, account.state.grants.into_iter());
    }
    Ok(())
}

/// Locked accounts by customer id and asset.
pub type LockedAccounts = std::collections::HashMap<String, std::collections::HashMap<String, LockedAccount>>;

/// An account's row, read and locked for the rest of the transaction, its grants not read yet
/// ([`LockedAccount::with_grants`] reads them when the account is used).
pub struct LockedAccount {
    account: Account,
    token: i64,
    next_due_at: NextDue,
}

impl LockedAccount {
    pub fn key(&self) -> &AccountKey {
        &self.account.key
    }

    /// When something next falls due on it, as its row says.
    pub fn next_due_at(&self) -> NextDue {
        self.next_due_at
    }

    /// Whether its balances are `stored`'s (debug builds check preloads with it).
    pub fn has_balances_of(&self, stored: &Account) -> bool {
        let balances = |state: &AccountState| (state.available, state.pending_in, state.pending_out, state.debt);
        balances(&self.account.state) == balances(&stored.state)
    }

    /// The account with its open grants, as [`load_for_update`] would answer.
    pub fn with_grants(self, conn: &mut dyn Conn) -> Result<(Account, NextDue), StoreError> {
        let LockedAccount { mut account, token, next_due_at } = self;
        account.state.grants = grants_under(conn, &account.key, token)?;
        Ok((account, next_due_at))
    }
}

/// The `default` accounts of `customer_ids` (sorted, distinct), locked for the rest of the
/// transaction, by customer and asset, in one statement (or a few) for an ingestion round. Their grants
/// are read only for the accounts used: taking them out of the cache for an account not
/// debited would leave its next load to read them all.
pub fn load_defaults_for_update(conn: &mut dyn Conn, customer_ids: &[&str]) -> Result<LockedAccounts, StoreError> {
    let for_update = conn.for_update();
    let mut accounts = LockedAccounts::new();
    super::query_for_ids(
        conn,
        customer_ids,
        &[],
        |list| {
            format!(
                "SELECT {ACCOUNT_COLUMNS}, state_token, next_due_at FROM wallet_accounts
                 WHERE name = 'default' AND customer_id IN ({list}) ORDER BY customer_id, asset{for_update}"
            )
        },
        |row| {
            let locked =
                LockedAccount { account: account_from_row(row)?, token: row.int(8)?, next_due_at: row.opt_time(9)? };
            let key = &locked.account.key;
            accounts.entry(key.customer_id.clone()).or_default().insert(key.asset.clone(), locked);
            Ok(())
        },
    )?;
    Ok(accounts)
}

/// The account's open grants in burn order: from the cache when filed under `token`, the
/// token its row holds, or else from the database.
fn grants_under(conn: &mut dyn Conn, key: &AccountKey, token: i64) -> Result<Vec<Grant>, StoreError> {
    match grant_cache::take(key, token) {
        Some(grants) => Ok(grants),
        None => open_grants_in_burn_order(conn, key),
    }
}

/// Each grant of `after` with the grant of the same id in `before`, if any. Most changes
/// (a debit, a credit to debt) keep the grants and their order, so the lists are first
/// walked side by side; only when their ids differ somewhere are they matched by id, which
/// stays linear for thousands of grants.
fn pair_by_id<'a>(before: &'a [Grant], after: &'a [Grant]) -> Vec<(&'a Grant, Option<&'a Grant>)> {
    // The ids of a loaded account's grants are shared with its copy: comparing the pointers
    // first spares reading every id.
    let same_id = |old: &Grant, new: &Grant| std::sync::Arc::ptr_eq(&old.id, &new.id) || old.id == new.id;
    let same_ids = before.len() == after.len() && before.iter().zip(after).all(|(old, new)| same_id(old, new));
    if same_ids {
        return after.iter().zip(before).map(|(new, old)| (new, Some(old))).collect();
    }
    let loaded: std::collections::HashMap<&str, &Grant> =
        before.iter().map(|grant| (grant.id.as_ref(), grant)).collect();
    after.iter().map(|grant| (grant, loaded.get(grant.id.as_ref()).copied())).collect()
}

fn is_open(grant: &Grant) -> bool {
    match grant.state {
        GrantState::Pending => true,
        // A spent grant can move no more: it leaves the working set the burn loop loads.
        GrantState::Active => !grant.remaining.is_zero(),
        GrantState::Expired => false,
    }
}

fn insert_grant(
    conn: &mut dyn Conn,
    mode: Mode,
    key: &AccountKey,
    grant: &Grant,
    origin: &GrantOrigin,
) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(GRANT_WIDTH + 2);
    push_grant_values(&mut values, mode, key, grant);
    values.extend_from_slice(params![origin.transaction_id.clone(), origin.cost_basis]);
    conn.execute(
        "INSERT INTO grants (id, mode, customer_id, account_name, asset, purpose, priority, amount, remaining, state, is_open,
                             effective_at, expires_at, created_at, transaction_id, cost_basis)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        &values,
    )?;
    // The ledger keeps its own note of the issue, which `ledger verify` checks the row against.
    super::ledger::record_grant(conn, mode, key, grant, origin)
}

/// Appends the values of a grant's row to `values`, in the column order `id, mode,
/// customer_id, account_name, asset, purpose, priority, amount, remaining, state, is_open,
/// effective_at, expires_at, created_at` ([`GRANT_WIDTH`] of them), which every insert of a
/// grant starts with.
fn push_grant_values(values: &mut Vec<crate::conn::Value>, mode: Mode, key: &AccountKey, grant: &Grant) {
    values.extend_from_slice(params![
        &grant.id,
        mode.as_str(),
        &key.customer_id,
        &key.name,
        &key.asset,
        grant.purpose.as_str(),
        grant.priority,
        grant.amount,
        grant.remaining,
        grant.state.as_str(),
        is_open(grant),
        grant.effective_at,
        grant.expires_at,
        grant.created_at
    ]);
}

const GRANT_WIDTH: usize = 14;

fn update_grant(conn: &mut dyn Conn, grant: &Grant) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE grants SET remaining = $2, state = $3, is_open = $4 WHERE id = $1",
        params![&grant.id, grant.remaining, grant.state.as_str(), is_open(grant)],
    )?;
    Ok(())
}

const GRANT_COLUMNS: &str = "id, purpose, priority, amount, remaining, effective_at, expires_at, created_at, state";

fn grant_from_row(row: &crate::Row) -> Result<Grant, StoreError> {
    Ok(Grant {
        id: row.text(0)?.into(),
        purpose: Purpose::parse(&row.text(1)?).ok_or_else(|| StoreError::Corrupt("grant purpose".into()))?,
        priority: row.int(2)?,
        amount: row.decimal(3)?,
        remaining: row.decimal(4)?,
        effective_at: row.time(5)?,
        expires_at: row.opt_time(6)?,
        created_at: row.time(7)?,
        state: GrantState::parse(&row.text(8)?).ok_or_else(|| StoreError::Corrupt("grant state".into()))?,
    })
}

fn open_grants(conn: &mut dyn Conn, key: &AccountKey) -> Result<Vec<Grant>, StoreError> {
    conn.query(
        &format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE customer_id = $1 AND account_name = $2 AND asset = $3 AND is_open = 1"
        ),
        params![&key.customer_id, &key.name, &key.asset],
    )?
    .iter()
    .map(grant_from_row)
    .collect()
}

/// An account's open grants in burn order, for reading (the billing portal's balance cards).
pub fn open_grants_in_burn_order(conn: &mut dyn Conn, key: &AccountKey) -> Result<Vec<Grant>, StoreError> {
    let mut grants = open_grants(conn, key)?;
    grants.sort_by(Grant::burn_order);
    Ok(grants)
}

pub fn get(conn: &mut dyn Conn, key: &AccountKey) -> Result<Option<Account>, StoreError> {
    conn.query_optional(
        &format!("SELECT {ACCOUNT_COLUMNS} FROM wallet_accounts WHERE customer_id = $1 AND name = $2 AND asset = $3"),
        params![&key.customer_id, &key.name, &key.asset],
    )?
    .as_ref()
    .map(account_from_row)
    .transpose()
}

pub fn list_for_customer(conn: &mut dyn Conn, customer_id: &str) -> Result<Vec<Account>, StoreError> {
    conn.query(
        &format!(
            "SELECT {ACCOUNT_COLUMNS} FROM wallet_accounts WHERE customer_id = $1 ORDER BY created_at, name, asset"
        ),
        params![customer_id],
    )?
    .iter()
    .map(account_from_row)
    .collect()
}

/// True when some start or expiry on this account is due at `now`.
pub fn is_due(conn: &mut dyn Conn, key: &AccountKey, now: DateTime<Utc>) -> Result<bool, StoreError> {
    Ok(conn
        .query_optional(
            "SELECT 1 FROM wallet_accounts WHERE customer_id = $1 AND name = $2 AND asset = $3 AND next_due_at <= $4",
            params![&key.customer_id, &key.name, &key.asset, now],
        )?
        .is_some())
}

/// Claims the customer with the most overdue grant start or expiry at `now`, for the
/// background worker, and returns it with its mode; `None` when nothing is due.
///
/// The claim is the customer row's lock, the same lock every wallet change takes first, so
/// the claimer may go on to lock and settle the customer's accounts in the same transaction
/// without breaking the lock order. On PostgreSQL customers another transaction holds are
/// passed over (`FOR UPDATE … SKIP LOCKED`): several servers draining due work at once each
/// claim different customers, and none waits behind a request. Under READ COMMITTED a claim
/// can still land on a customer whose due item another server settled a moment ago, so the
/// caller re-checks what is due after claiming (`ops::wallet::settle_account` does).
pub fn claim_due(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<(Mode, String)>, StoreError> {
    let sql = format!(
        "SELECT c.mode, c.id FROM wallet_accounts a JOIN customers c ON c.id = a.customer_id
         WHERE a.next_due_at <= $1{} ORDER BY a.next_due_at LIMIT 1{}",
        crate::repo::job_retries::not_waiting(crate::repo::job_retries::SETTLE_GRANTS, "c.id"),
        conn.skip_locked_of("c")
    );
    let Some(row) = conn.query_optional(&sql, params![now])? else {
        return Ok(None);
    };
    let mode = Mode::parse(&row.text(0)?).ok_or_else(|| StoreError::Corrupt("customer mode".into()))?;
    Ok(Some((mode, row.text(1)?)))
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GrantFilter {
    pub purpose: Option<Purpose>,
    /// Leave out grants whose expiry is at or before this instant.
    pub exclude_expired_at: Option<DateTime<Utc>>,
    pub effective_from: Option<DateTime<Utc>>,
    pub effective_to: Option<DateTime<Utc>>,
    pub expired_from: Option<DateTime<Utc>>,
    pub expired_to: Option<DateTime<Utc>>,
}

/// Grants of one account, newest first. Range filters are inclusive of `from`, exclusive of `to`.
/// The order of the grants list: newest first.
pub const GRANT_KEYS: super::Keys =
    super::Keys { tag: "grants", columns: &["created_at", "id"], kinds: "it", descending: true };

pub fn list_grants(
    conn: &mut dyn Conn,
    key: &AccountKey,
    filter: &GrantFilter,
    window: &super::Window,
) -> Result<super::Listing<Grant>, StoreError> {
    let mut query = Filter::new("customer_id = ?", &key.customer_id);
    query.and("account_name = ?", &key.name);
    query.and("asset = ?", &key.asset);
    if let Some(purpose) = filter.purpose {
        query.and("purpose = ?", purpose.as_str());
    }
    if let Some(at) = filter.exclude_expired_at {
        query.and("(expires_at IS NULL OR expires_at > ?)", at);
    }
    if let Some(at) = filter.effective_from {
        query.and("effective_at >= ?", at);
    }
    if let Some(at) = filter.effective_to {
        query.and("effective_at < ?", at);
    }
    if let Some(at) = filter.expired_from {
        query.and("expires_at >= ?", at);
    }
    if let Some(at) = filter.expired_to {
        query.and("expires_at < ?", at);
    }
    query.page(conn, "grants", GRANT_COLUMNS, &GRANT_KEYS, window, grant_from_row)
}

/// Every grant in the database, for `ledger verify`.
pub fn all_grants(conn: &mut dyn Conn) -> Result<Vec<(AccountKey, Grant)>, StoreError> {
    conn.query(&format!("SELECT customer_id, account_name, asset, {GRANT_COLUMNS} FROM grants"), &[])?
        .iter()
        .map(|row| {
            let key = AccountKey { customer_id: row.text(0)?, name: row.text(1)?, asset: row.text(2)? };
            let rest = crate::Row(row.0[3..].to_vec());
            Ok((key, grant_from_row(&rest)?))
        })
        .collect()
}

pub fn all_accounts(conn: &mut dyn Conn) -> Result<Vec<Account>, StoreError> {
    conn.query(&format!("SELECT {ACCOUNT_COLUMNS} FROM wallet_accounts"), &[])?.iter().map(account_from_row).collect()
}
