//! Holds (pre-authorisation): an amount of one wallet account reserved for a capture to come.
//! The rows say what each hold holds; the ledger entries named `tally_hold_{id}` move it
//! (see `ops::holds`), and `ledger verify` checks one against the other.

use super::{metadata_from_text, metadata_to_text, Filter, Keys, Listing, Metadata, Window};
use crate::conn::Conn;
use crate::repo::wallets::AccountKey;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::Mode;

/// Where a hold stands. Only `Held` holds money; the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldStatus {
    /// Open: it still holds `amount − captured − released` (> 0), whether or not some was
    /// captured already.
    Held,
    /// Closed by captures that took all it held.
    Captured,
    /// Closed by a release, which gave back what was left.
    Released,
    /// Closed at its `expires_at` by the worker, which gave back what was left.
    Expired,
}

impl HoldStatus {
    pub const ALL: [HoldStatus; 4] =
        [HoldStatus::Held, HoldStatus::Captured, HoldStatus::Released, HoldStatus::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Held => "held",
            HoldStatus::Captured => "captured",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<HoldStatus> {
        HoldStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub customer_id: String,
    /// The client's `transaction_id`.
    pub id: String,
    pub account_name: String,
    pub asset: String,
    pub amount: Decimal,
    /// What captures took out of the hold (not counting what they debited beyond it).
    pub captured: Decimal,
    /// What went back to `available`: by a release or at expiry.
    pub released: Decimal,
    pub status: HoldStatus,
    pub allow_overdraft: bool,
    pub description: Option<String>,
    pub metadata: Metadata,
    pub request_hash: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

impl Hold {
    /// What the hold still holds: zero once it is closed.
    pub fn remaining(&self) -> Decimal {
        self.amount - self.captured - self.released
    }

    pub fn key(&self) -> AccountKey {
        AccountKey { customer_id: self.customer_id.clone(), name: self.account_name.clone(), asset: self.asset.clone() }
    }

    /// The `transaction_id` of the ledger entries that move this hold's money.
    pub fn ledger_id(&self) -> String {
        ledger_id(&self.id)
    }
}

/// The `transaction_id` the ledger entries of hold `id` carry. Tally's own prefix keeps it
/// apart from every client's transaction id.
pub fn ledger_id(id: &str) -> String {
    format!("tally_hold_{id}")
}

const COLUMNS: &str = "customer_id, id, account_name, asset, amount, captured, released, status, allow_overdraft, \
                       description, metadata, request_hash, expires_at, created_at, updated_at, closed_at";

fn from_row(row: &crate::Row) -> Result<Hold, StoreError> {
    Ok(Hold {
        customer_id: row.text(0)?,
        id: row.text(1)?,
        account_name: row.text(2)?,
        asset: row.text(3)?,
        amount: row.decimal(4)?,
        captured: row.decimal(5)?,
        released: row.decimal(6)?,
        status: HoldStatus::parse(&row.text(7)?).ok_or_else(|| StoreError::Corrupt("hold status".into()))?,
        allow_overdraft: row.int(8)? != 0,
        description: row.opt_text(9)?,
        metadata: metadata_from_text(&row.text(10)?)?,
        request_hash: row.text(11)?,
        expires_at: row.time(12)?,
        created_at: row.time(13)?,
        updated_at: row.time(14)?,
        closed_at: row.opt_time(15)?,
    })
}

pub fn insert(conn: &mut dyn Conn, mode: Mode, hold: &Hold) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT INTO holds (mode, {COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
        ),
        params![
            mode.as_str(),
            &hold.customer_id,
            &hold.id,
            &hold.account_name,
            &hold.asset,
            hold.amount,
            hold.captured,
            hold.released,
            hold.status.as_str(),
            hold.allow_overdraft,
            hold.description.clone(),
            metadata_to_text(&hold.metadata),
            &hold.request_hash,
            hold.expires_at,
            hold.created_at,
            hold.updated_at,
            hold.closed_at
        ],
    )?;
    Ok(())
}

/// Writes what a capture, release or expiry changed.
pub fn update(conn: &mut dyn Conn, hold: &Hold) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE holds SET captured = $3, released = $4, status = $5, updated_at = $6, closed_at = $7
         WHERE customer_id = $1 AND id = $2",
        params![
            &hold.customer_id,
            &hold.id,
            hold.captured,
            hold.released,
            hold.status.as_str(),
            hold.updated_at,
            hold.closed_at
        ],
    )?;
    Ok(())
}

/// One hold of a customer. Callers that change it hold the customer's lock, which every
/// change to a hold takes first.
pub fn get(conn: &mut dyn Conn, mode: Mode, customer_id: &str, id: &str) -> Result<Option<Hold>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM holds WHERE customer_id = $1 AND id = $2 AND mode = $3"),
        params![customer_id, id, mode.as_str()],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

pub const LIST_KEYS: Keys = Keys { tag: "holds", columns: &["created_at", "id"], kinds: "it", descending: true };

/// A customer's holds, newest first, of one status when given.
pub fn list(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    status: Option<HoldStatus>,
    window: &Window,
) -> Result<Listing<Hold>, StoreError> {
    let mut query = Filter::new("customer_id = ?", customer_id);
    query.and("mode = ?", mode.as_str());
    if let Some(status) = status {
        query.and("status = ?", status.as_str());
    }
    query.page(conn, "holds", COLUMNS, &LIST_KEYS, window, from_row)
}

/// The open holds of one account, for `ledger verify`.
pub fn open_for_account(conn: &mut dyn Conn, key: &AccountKey) -> Result<Vec<Hold>, StoreError> {
    conn.query(
        &format!(
            "SELECT {COLUMNS} FROM holds WHERE customer_id = $1 AND account_name = $2 AND asset = $3 AND status = 'held'"
        ),
        params![&key.customer_id, &key.name, &key.asset],
    )?
    .iter()
    .map(from_row)
    .collect()
}

/// The ids of a customer's open holds past their `expires_at` at `now`, soonest first.
pub fn due_for_customer(conn: &mut dyn Conn, customer_id: &str, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
    conn.query(
        "SELECT id FROM holds WHERE customer_id = $1 AND status = 'held' AND expires_at <= $2 ORDER BY expires_at, id",
        params![customer_id, now],
    )?
    .iter()
    .map(|row| row.text(0))
    .collect()
}

/// Claims the customer with the most overdue open hold at `now`, for the worker, and returns
/// it with its mode; `None` when no hold is due. The claim is the customer row's lock, as for
/// every wallet job (see `repo::wallets::claim_due`).
pub fn claim_expired(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<(Mode, String)>, StoreError> {
    let sql = format!(
        "SELECT c.mode, c.id FROM holds h JOIN customers c ON c.id = h.customer_id
         WHERE h.status = 'held' AND h.expires_at <= $1{} ORDER BY h.expires_at LIMIT 1{}",
        crate::repo::job_retries::not_waiting(crate::repo::job_retries::EXPIRE_HOLDS, "c.id"),
        conn.skip_locked_of("c")
    );
    let Some(row) = conn.query_optional(&sql, params![now])? else {
        return Ok(None);
    };
    let mode = Mode::parse(&row.text(0)?).ok_or_else(|| StoreError::Corrupt("customer mode".into()))?;
    Ok(Some((mode, row.text(1)?)))
}

/// One row of [`with_postings_after`]: a hold, and one posting of one of its ledger entries.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldLine {
    pub mode: String,
    pub hold: Hold,
    /// The entry's kind (`hold`, `hold_capture`, `hold_release`, `hold_expiry`), and the
    /// posting's account and bucket as stored, and amount. `None` for a hold without entries.
    pub posting: Option<(String, String, String, Decimal)>,
}

/// Holds after `after` (customer id, hold id; none: from the first), a chunk at a time, in key
/// order, each with the postings of its ledger entries, for `ledger verify`.
pub fn with_postings_after(
    conn: &mut dyn Conn,
    after: Option<(&str, &str)>,
    chunk: i64,
) -> Result<Vec<HoldLine>, StoreError> {
    let columns: Vec<String> = COLUMNS.split(',').map(|column| format!("h.{}", column.trim())).collect();
    let (condition, values) = match after {
        None => ("", params![chunk]),
        Some((customer_id, id)) => ("WHERE (customer_id, id) > ($2, $3)", params![chunk, customer_id, id]),
    };
    let sql = format!(
        "SELECT {}, h.mode, e.kind, p.account, p.bucket, p.amount
         FROM (SELECT * FROM holds {condition} ORDER BY customer_id, id LIMIT $1) h
         LEFT JOIN ledger_entries e ON e.customer_id = h.customer_id AND e.transaction_id = 'tally_hold_' || h.id
         LEFT JOIN ledger_postings p ON p.customer_id = e.customer_id AND p.entry_id = e.id
         ORDER BY h.customer_id, h.id, e.id, p.line",
        columns.join(", ")
    );
    conn.query(&sql, values)?
        .iter()
        .map(|row| {
            let posting = match row.opt_text(18)? {
                Some(account) => Some((row.text(17)?, account, row.text(19)?, row.decimal(20)?)),
                None => None,
            };
            Ok(HoldLine { mode: row.text(16)?, hold: from_row(row)?, posting })
        })
        .collect()
}
