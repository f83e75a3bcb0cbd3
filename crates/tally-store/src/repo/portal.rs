//! Billing-portal links and sessions, and the reads the portal's pages make.
//!
//! Links and sessions are found by a SHA-256 hash of their token: the tokens themselves are
//! never stored, so a copy of the database cannot be used to open anyone's portal.

use super::Page;
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct PortalLink {
    pub token_hash: String,
    pub mode: Mode,
    pub customer_id: String,
    pub return_url: String,
    pub failure_url: String,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PortalSession {
    pub token_hash: String,
    pub mode: Mode,
    pub customer_id: String,
    /// The secret every form of this session carries.
    pub csrf_token: String,
    pub return_url: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

fn parse_mode(text: &str) -> Result<Mode, StoreError> {
    Mode::parse(text).ok_or_else(|| StoreError::Corrupt(format!("portal mode {text}")))
}

pub fn insert_link(conn: &mut dyn Conn, link: &PortalLink) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO portal_links (token_hash, mode, customer_id, return_url, failure_url, expires_at, used_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        params![
            &link.token_hash,
            link.mode.as_str(),
            &link.customer_id,
            &link.return_url,
            &link.failure_url,
            link.expires_at,
            link.used_at,
            link.created_at
        ],
    )?;
    Ok(())
}

/// Loads a link, locking it (PostgreSQL) so that two first uses at once cannot both win.
pub fn get_link_for_update(conn: &mut dyn Conn, token_hash: &str) -> Result<Option<PortalLink>, StoreError> {
    let sql = format!(
        "SELECT token_hash, mode, customer_id, return_url, failure_url, expires_at, used_at, created_at
         FROM portal_links WHERE token_hash = $1{}",
        conn.for_update()
    );
    conn.query_optional(&sql, params![token_hash])?
        .map(|row| {
            Ok(PortalLink {
                token_hash: row.text(0)?,
                mode: parse_mode(&row.text(1)?)?,
                customer_id: row.text(2)?,
                return_url: row.text(3)?,
                failure_url: row.text(4)?,
                expires_at: row.time(5)?,
                used_at: row.opt_time(6)?,
                created_at: row.time(7)?,
            })
        })
        .transpose()
}

/// Marks a link used. Returns false when it already was: only one use ever wins.
pub fn use_link(conn: &mut dyn Conn, token_hash: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let changed = conn.execute(
        "UPDATE portal_links SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
        params![token_hash, now],
    )?;
    Ok(changed == 1)
}

pub fn insert_session(conn: &mut dyn Conn, session: &PortalSession) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO portal_sessions (token_hash, mode, customer_id, csrf_token, return_url, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        params![
            &session.token_hash,
            session.mode.as_str(),
            &session.customer_id,
            &session.csrf_token,
            &session.return_url,
            session.expires_at,
            session.created_at
        ],
    )?;
    Ok(())
}

/// Where the session whose token hashes to `token_hash` sends the customer back to, live or
/// ended (until it is purged): the "session ended" page links there.
pub fn session_return_url(conn: &mut dyn Conn, token_hash: &str) -> Result<Option<String>, StoreError> {
    conn.query_optional("SELECT return_url FROM portal_sessions WHERE token_hash = $1", params![token_hash])?
        .map(|row| row.text(0))
        .transpose()
}

/// The session whose token hashes to `token_hash`, if it has not expired at `now`.
pub fn live_session(
    conn: &mut dyn Conn,
    token_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<PortalSession>, StoreError> {
    conn.query_optional(
        "SELECT token_hash, mode, customer_id, csrf_token, return_url, expires_at, created_at
         FROM portal_sessions WHERE token_hash = $1 AND expires_at > $2",
        params![token_hash, now],
    )?
    .map(|row| {
        Ok(PortalSession {
            token_hash: row.text(0)?,
            mode: parse_mode(&row.text(1)?)?,
            customer_id: row.text(2)?,
            csrf_token: row.text(3)?,
            return_url: row.text(4)?,
            expires_at: row.time(5)?,
            created_at: row.time(6)?,
        })
    })
    .transpose()
}

/// Deletes links and sessions that expired before `before`. Returns how many rows went.
pub fn purge(conn: &mut dyn Conn, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let links = conn.execute("DELETE FROM portal_links WHERE expires_at < $1", params![before])?;
    let sessions = conn.execute("DELETE FROM portal_sessions WHERE expires_at < $1", params![before])?;
    Ok(links + sessions)
}

/// One fee from a customer's wallet: a usage event's fee, a charge or a subscription fee.
#[derive(Debug, Clone, PartialEq)]
pub struct FeeLine {
    pub transaction_id: String,
    pub account_name: String,
    pub asset: String,
    /// Signed from the wallet's side: fees are negative.
    pub amount: Decimal,
    pub description: Option<String>,
    /// The transaction's details (JSON text): product name, subject, event id.
    pub detail: String,
    pub created_at: DateTime<Utc>,
}

const FEE_COLUMNS: &str = "id, account_name, asset, amount, description, detail, created_at";

fn fee_from_row(row: &crate::Row) -> Result<FeeLine, StoreError> {
    Ok(FeeLine {
        transaction_id: row.text(0)?,
        account_name: row.text(1)?,
        asset: row.text(2)?,
        amount: row.decimal(3)?,
        description: row.opt_text(4)?,
        detail: row.text(5)?,
        created_at: row.time(6)?,
    })
}

/// A customer's fees, newest first, and how many there are: exact up to
/// [`super::COUNT_LIMIT`]; past it counting stops and the count is `COUNT_LIMIT + 1`, "more".
/// Counting every fee read a row per fee (no index holds `kind`): 88 ms for a customer with
/// 100,000 fees, and growing with them, on every portal page that shows the count.
pub fn fees(conn: &mut dyn Conn, mode: Mode, customer_id: &str, page: Page) -> Result<(Vec<FeeLine>, i64), StoreError> {
    let total = super::count_up_to_limit(
        conn,
        "transactions",
        "mode = $1 AND customer_id = $2 AND kind = 'fee'",
        params![mode.as_str(), customer_id],
    )?;
    let items = conn
        .query(
            &format!(
                "SELECT {FEE_COLUMNS} FROM transactions WHERE mode = $1 AND customer_id = $2 AND kind = 'fee'
                 ORDER BY sequence DESC LIMIT $3 OFFSET $4"
            ),
            params![mode.as_str(), customer_id, page.limit, page.offset],
        )?
        .iter()
        .map(fee_from_row)
        .collect::<Result<_, _>>()?;
    Ok((items, total))
}

/// When each of the named usage events occurred (events not found are left out).
pub fn event_times(
    conn: &mut dyn Conn,
    mode: Mode,
    event_ids: &[String],
) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    super::events::events_by_ids(conn, mode, event_ids, "e.id, e.occurred_at", "")?
        .iter()
        .map(|row| Ok((row.text(0)?, row.time(1)?)))
        .collect()
}
