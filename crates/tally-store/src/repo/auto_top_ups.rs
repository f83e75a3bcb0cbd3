//! Auto top-up settings, one row per wallet account, and the worker's claim on them.

use crate::conn::Conn;
use crate::repo::wallets::AccountKey;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct AutoTopUp {
    pub mode: Mode,
    pub key: AccountKey,
    pub enabled: bool,
    /// Top up when `available` falls below this, in the account's asset.
    pub threshold: Decimal,
    /// What to pay each time, in major units of `currency`.
    pub amount: Decimal,
    pub currency: String,
    pub payment_method_id: Option<String>,
    /// Failed attempts in a row; reset by a success or by the customer saving the settings.
    pub failures: i64,
    /// No attempt before this instant (the back-off after a failure).
    pub retry_at: Option<DateTime<Utc>>,
    /// The top-up this account is waiting on. While set no other attempt starts.
    pub in_flight_top_up_id: Option<String>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "mode, customer_id, account_name, asset, enabled, threshold, amount, currency, payment_method_id, \
                       failures, retry_at, in_flight_top_up_id, last_error, updated_at";

fn from_row(row: &crate::Row) -> Result<AutoTopUp, StoreError> {
    Ok(AutoTopUp {
        mode: Mode::parse(&row.text(0)?).ok_or_else(|| StoreError::Corrupt("auto top-up mode".into()))?,
        key: AccountKey { customer_id: row.text(1)?, name: row.text(2)?, asset: row.text(3)? },
        enabled: row.bool(4)?,
        threshold: row.decimal(5)?,
        amount: row.decimal(6)?,
        currency: row.text(7)?,
        payment_method_id: row.opt_text(8)?,
        failures: row.int(9)?,
        retry_at: row.opt_time(10)?,
        in_flight_top_up_id: row.opt_text(11)?,
        last_error: row.opt_text(12)?,
        updated_at: row.time(13)?,
    })
}

pub fn get(conn: &mut dyn Conn, mode: Mode, key: &AccountKey) -> Result<Option<AutoTopUp>, StoreError> {
    conn.query_optional(
        &format!(
            "SELECT {COLUMNS} FROM auto_top_ups WHERE mode = $1 AND customer_id = $2 AND account_name = $3 AND asset = $4"
        ),
        params![mode.as_str(), &key.customer_id, &key.name, &key.asset],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

pub fn for_customer(conn: &mut dyn Conn, mode: Mode, customer_id: &str) -> Result<Vec<AutoTopUp>, StoreError> {
    conn.query(
        &format!(
            "SELECT {COLUMNS} FROM auto_top_ups WHERE mode = $1 AND customer_id = $2 ORDER BY account_name, asset"
        ),
        params![mode.as_str(), customer_id],
    )?
    .iter()
    .map(from_row)
    .collect()
}

/// Inserts or replaces the row of `setting.key`.
pub fn put(conn: &mut dyn Conn, setting: &AutoTopUp) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT INTO auto_top_ups ({COLUMNS}, maybe_due) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $5)
             ON CONFLICT (customer_id, account_name, asset) DO UPDATE SET enabled = excluded.enabled,
               maybe_due = excluded.maybe_due,
               threshold = excluded.threshold, amount = excluded.amount, currency = excluded.currency,
               payment_method_id = excluded.payment_method_id, failures = excluded.failures,
               retry_at = excluded.retry_at, in_flight_top_up_id = excluded.in_flight_top_up_id,
               last_error = excluded.last_error, updated_at = excluded.updated_at"
        ),
        params![
            setting.mode.as_str(),
            &setting.key.customer_id,
            &setting.key.name,
            &setting.key.asset,
            setting.enabled,
            setting.threshold,
            setting.amount,
            &setting.currency,
            setting.payment_method_id.clone(),
            setting.failures,
            setting.retry_at,
            setting.in_flight_top_up_id.clone(),
            setting.last_error.clone(),
            setting.updated_at
        ],
    )?;
    Ok(())
}

/// Accounts read per query while looking for one to claim.
const CLAIM_PAGE: i64 = 100;

/// The id of an account's auto top-up in `job_retries`: `{customer_id}/{name}:{ASSET}`.
pub fn item_id(key: &AccountKey) -> String {
    format!("{}/{}:{}", key.customer_id, key.name, key.asset)
}

/// [`item_id`] in SQL, for the auto top-up row `t`.
const ITEM_SQL: &str = "t.customer_id || '/' || t.account_name || ':' || t.asset";

/// The claim's candidates: settings flagged `maybe_due` (through their partial index, so the
/// claim never reads the accounts that are above their threshold), enabled, past their
/// back-off, with nothing in flight and not waiting to be retried after an error.
pub fn claim_candidates_sql() -> String {
    format!(
        "SELECT t.mode, t.customer_id, t.account_name, t.asset, t.threshold FROM auto_top_ups t
         WHERE t.maybe_due = 1 AND t.enabled = 1 AND t.in_flight_top_up_id IS NULL
           AND (t.retry_at IS NULL OR t.retry_at <= $1) AND t.payment_method_id IS NOT NULL{}
         ORDER BY t.updated_at, t.customer_id, t.account_name, t.asset LIMIT $2 OFFSET $3",
        super::job_retries::not_waiting(super::job_retries::AUTO_TOP_UP, ITEM_SQL)
    )
}

/// Claims, for the background worker, one account whose auto top-up is due at `now`: one of
/// [`claim_candidates_sql`] whose `available` is below the threshold. Returns its mode and
/// account, having locked the customer (the lock every wallet change takes first), skipping
/// customers other transactions hold (PostgreSQL).
///
/// Balances are exact decimal text, which SQL cannot compare portably, so the comparison that
/// decides is made here, exactly, in `Decimal`, on the balance read under the customer's lock.
/// A candidate found not below its threshold has its flag cleared, under that same lock, so
/// that no balance change can slip between the read and the clearing.
pub fn claim_due(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<(Mode, AccountKey)>, StoreError> {
    let sql = claim_candidates_sql();
    let lock = format!("SELECT id FROM customers WHERE id = $1{}", conn.skip_locked());
    let mut offset = 0;
    loop {
        let rows = conn.query(&sql, params![now, CLAIM_PAGE, offset])?;
        let mut cleared = 0;
        for row in &rows {
            let threshold = row.decimal(4)?;
            let Some((mode, key)) = claimed(Some(row.clone()))? else {
                continue;
            };
            if conn.query_optional(&lock, params![&key.customer_id])?.is_none() {
                continue;
            }
            let available = conn.query_optional(
                "SELECT available FROM wallet_accounts WHERE customer_id = $1 AND name = $2 AND asset = $3",
                params![&key.customer_id, &key.name, &key.asset],
            )?;
            let Some(available) = available else {
                continue;
            };
            if available.decimal(0)? < threshold {
                return Ok(Some((mode, key)));
            }
            conn.execute(
                "UPDATE auto_top_ups SET maybe_due = 0 WHERE customer_id = $1 AND account_name = $2 AND asset = $3",
                params![&key.customer_id, &key.name, &key.asset],
            )?;
            cleared += 1;
        }
        if (rows.len() as i64) < CLAIM_PAGE {
            return Ok(None);
        }
        offset += CLAIM_PAGE - cleared;
    }
}

/// Flags the account's auto top-up (if it has one, enabled) as maybe due, when `available`
/// is at or under its threshold. Called whenever a balance drops. The SQL comparison may be
/// a double's (SQLite): rounding never turns `a < b` into `a > b`, so it errs towards the flag.
pub fn flag_if_low(conn: &mut dyn Conn, key: &AccountKey, available: Decimal) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE auto_top_ups SET maybe_due = 1
         WHERE customer_id = $1 AND account_name = $2 AND asset = $3 AND maybe_due = 0 AND enabled = 1
           AND CAST(CAST($4 AS TEXT) AS NUMERIC) <= CAST(threshold AS NUMERIC)",
        params![&key.customer_id, &key.name, &key.asset, available],
    )?;
    Ok(())
}

/// Claims one account whose in-flight top-up has ended (settled by a provider notification, or
/// expired), so that the worker can record how it ended and free the account.
/// Accounts waiting to be retried after an error (at `now`) are passed over.
pub fn claim_settled(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<(Mode, AccountKey)>, StoreError> {
    let sql = format!(
        "SELECT t.mode, t.customer_id, t.account_name, t.asset FROM auto_top_ups t
         JOIN top_ups u ON u.id = t.in_flight_top_up_id
         JOIN customers c ON c.id = t.customer_id
         WHERE u.status NOT IN ('initiated', 'pending'){}
         ORDER BY t.updated_at LIMIT 1{}",
        super::job_retries::not_waiting(super::job_retries::AUTO_TOP_UP_SETTLE, ITEM_SQL),
        conn.skip_locked_of("c")
    );
    claimed(conn.query_optional(&sql, params![now])?)
}

fn claimed(row: Option<crate::Row>) -> Result<Option<(Mode, AccountKey)>, StoreError> {
    let Some(row) = row else {
        return Ok(None);
    };
    let mode = Mode::parse(&row.text(0)?).ok_or_else(|| StoreError::Corrupt("auto top-up mode".into()))?;
    Ok(Some((mode, AccountKey { customer_id: row.text(1)?, name: row.text(2)?, asset: row.text(3)? })))
}
