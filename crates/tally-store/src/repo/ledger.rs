//! The append-only ledger: entries and their postings. Nothing here updates or deletes.

use super::wallets::AccountKey;
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::ledger::{Bucket, LedgerAccount, Posting, SystemAccount};
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct EntryHeader<'a> {
    pub mode: Mode,
    pub account: &'a AccountKey,
    /// `adjustment`, `fee`, `activation` or `expiry`.
    pub kind: &'a str,
    pub transaction_id: Option<&'a str>,
    pub grant_id: Option<&'a str>,
    /// When the change took effect (an expiry's own instant, even when settled later).
    pub effective_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

fn account_text(account: LedgerAccount) -> &'static str {
    match account {
        LedgerAccount::Wallet => "wallet",
        LedgerAccount::System(SystemAccount::Issuance) => "system:issuance",
        LedgerAccount::System(SystemAccount::Revenue) => "system:revenue",
        LedgerAccount::System(SystemAccount::Expired) => "system:expired",
        LedgerAccount::System(SystemAccount::Incoming) => "system:incoming",
    }
}

fn parse_account(text: &str) -> Option<LedgerAccount> {
    match text {
        "wallet" => Some(LedgerAccount::Wallet),
        other => other.strip_prefix("system:").and_then(SystemAccount::parse).map(LedgerAccount::System),
    }
}

/// Appends one balanced entry. Refuses an unbalanced one: that would be a bug upstream.
pub fn append(conn: &mut dyn Conn, header: &EntryHeader, postings: &[Posting]) -> Result<(), StoreError> {
    if postings.is_empty() {
        return Ok(());
    }
    if !tally_core::ledger::is_balanced(postings) {
        return Err(StoreError::Corrupt(format!("refused an unbalanced ledger entry: {postings:?}")));
    }
    let entry_id = conn
        .query_one(
            "INSERT INTO ledger_entries (mode, customer_id, account_name, asset, kind, transaction_id, grant_id, effective_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            params![
                header.mode.as_str(),
                &header.account.customer_id,
                &header.account.name,
                &header.account.asset,
                header.kind,
                header.transaction_id,
                header.grant_id,
                header.effective_at,
                header.created_at
            ],
        )?
        .int(0)?;
    for (line, posting) in postings.iter().enumerate() {
        conn.execute(
            "INSERT INTO ledger_postings (entry_id, line, account, bucket, grant_id, amount, mode, customer_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            params![
                entry_id,
                line as i64,
                account_text(posting.account),
                posting.bucket.as_str(),
                posting.grant_id.clone(),
                posting.amount,
                header.mode.as_str(),
                &header.account.customer_id
            ],
        )?;
    }
    Ok(())
}

/// One posting with the account it belongs to, for verification.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPosting {
    pub entry_id: i64,
    pub account: AccountKey,
    pub ledger_account: LedgerAccount,
    pub bucket: Bucket,
    pub grant_id: Option<String>,
    pub amount: Decimal,
}

/// Every posting, in entry order. The join matches the customer as well as the entry, so that
/// a posting filed under the wrong customer goes missing from its entry and fails verification
/// (and so that, sharded by customer, the join stays on one shard).
pub fn all_postings(conn: &mut dyn Conn) -> Result<Vec<StoredPosting>, StoreError> {
    conn.query(
        "SELECT e.id, e.customer_id, e.account_name, e.asset, p.account, p.bucket, p.grant_id, p.amount
         FROM ledger_postings p JOIN ledger_entries e ON e.customer_id = p.customer_id AND e.id = p.entry_id
         ORDER BY e.id, p.line",
        &[],
    )?
    .iter()
    .map(|row| {
        Ok(StoredPosting {
            entry_id: row.int(0)?,
            account: AccountKey { customer_id: row.text(1)?, name: row.text(2)?, asset: row.text(3)? },
            ledger_account: parse_account(&row.text(4)?)
                .ok_or_else(|| StoreError::Corrupt("posting account".into()))?,
            bucket: Bucket::parse(&row.text(5)?).ok_or_else(|| StoreError::Corrupt("posting bucket".into()))?,
            grant_id: row.opt_text(6)?,
            amount: row.decimal(7)?,
        })
    })
    .collect()
}
