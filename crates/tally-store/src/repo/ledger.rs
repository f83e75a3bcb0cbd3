//! The append-only ledger: entries and their postings, and the record of each grant issued.
//! Nothing here updates or deletes.

use super::wallets::{AccountKey, GrantOrigin};
use crate::conn::{Conn, Row};
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::ledger::{Bucket, LedgerAccount, Posting, SystemAccount};
use tally_core::wallet::Grant;
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
        LedgerAccount::System(SystemAccount::Held) => "system:held",
    }
}

pub(crate) fn parse_account(text: &str) -> Option<LedgerAccount> {
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
    // One statement for all of the entry's postings (usually two or three).
    let mut sql = String::from(
        "INSERT INTO ledger_postings (entry_id, line, account, bucket, grant_id, amount, mode, customer_id) VALUES ",
    );
    let mut values = Vec::with_capacity(postings.len() * 8);
    for (line, posting) in postings.iter().enumerate() {
        let first = line * 8;
        if line > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
            first + 1,
            first + 2,
            first + 3,
            first + 4,
            first + 5,
            first + 6,
            first + 7,
            first + 8
        ));
        values.extend_from_slice(params![
            entry_id,
            line as i64,
            account_text(posting.account),
            posting.bucket.as_str(),
            posting.grant_id.clone(),
            posting.amount,
            header.mode.as_str(),
            &header.account.customer_id
        ]);
    }
    conn.execute(&sql, &values)?;
    Ok(())
}

/// Records the issue of a grant: written once, when the grant is made, and never changed.
pub fn record_grant(
    conn: &mut dyn Conn,
    mode: Mode,
    account: &AccountKey,
    grant: &Grant,
    origin: &GrantOrigin,
) -> Result<(), StoreError> {
    // A cost basis is kept only with its currency: the revenue report values grants by both.
    let (cost_basis, cost_currency) = match (origin.cost_basis, &origin.cost_currency) {
        (Some(basis), Some(currency)) => (Some(basis), Some(currency.clone())),
        _ => (None, None),
    };
    conn.execute(
        "INSERT INTO ledger_grants (grant_id, mode, customer_id, account_name, asset, transaction_id, purpose, amount, created_at,
                                    cost_basis, cost_currency)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        params![
            &grant.id,
            mode.as_str(),
            &account.customer_id,
            &account.name,
            &account.asset,
            origin.transaction_id.clone(),
            grant.purpose.as_str(),
            grant.amount,
            grant.created_at,
            cost_basis,
            cost_currency
        ],
    )?;
    Ok(())
}

/// Records the period a recurring plan fee pays for, in the transaction that collects it.
pub fn record_fee_period(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    transaction_id: &str,
    service_from: DateTime<Utc>,
    service_until: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO ledger_fee_periods (mode, customer_id, transaction_id, service_from, service_until)
         VALUES ($1, $2, $3, $4, $5)",
        params![mode.as_str(), customer_id, transaction_id, service_from, service_until],
    )?;
    Ok(())
}

/// Fee periods that name no fee entry of their customer, or end before they start.
pub fn stray_fee_periods(conn: &mut dyn Conn) -> Result<i64, StoreError> {
    conn.count(
        "SELECT COUNT(*) FROM ledger_fee_periods f
         WHERE f.service_until <= f.service_from
            OR NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.customer_id = f.customer_id
                           AND e.transaction_id = f.transaction_id AND e.kind = 'fee')",
        &[],
    )
}

// ---------------------------------------------------------------------------------------
// Reads for `ledger verify`. Each reads one chunk of rows in key order, starting after the
// last key of the previous chunk, so that verification never holds more than a chunk (and
// one account's grants) in memory, whatever the size of the ledger. The chunk's driving rows
// are picked by a subquery, so a chunk never ends in the middle of one driver's joined rows.

/// How many driving rows (entries, accounts, transactions, events, top-ups) a chunk holds
/// unless told otherwise.
pub const CHUNK: i64 = 500;

/// One posting as verification reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct PostingLine {
    pub account: LedgerAccount,
    pub bucket: Bucket,
    pub grant_id: Option<String>,
    pub amount: Decimal,
}

fn posting_at(row: &Row, index: usize) -> Result<Option<PostingLine>, StoreError> {
    let Some(account) = row.opt_text(index)? else {
        return Ok(None);
    };
    Ok(Some(PostingLine {
        account: parse_account(&account).ok_or_else(|| StoreError::Corrupt(format!("posting account {account}")))?,
        bucket: Bucket::parse(&row.text(index + 1)?).ok_or_else(|| StoreError::Corrupt("posting bucket".into()))?,
        grant_id: row.opt_text(index + 2)?,
        amount: row.decimal(index + 3)?,
    }))
}

/// The columns `posting_at` reads, for a posting aliased `p`.
const POSTING_COLUMNS: &str = "p.account, p.bucket, p.grant_id, p.amount";

/// One row of an entry with one of its postings (`None` for an entry without any).
#[derive(Debug, Clone, PartialEq)]
pub struct EntryLine {
    pub entry_id: i64,
    pub mode: String,
    pub customer_id: String,
    pub asset: String,
    pub kind: String,
    /// Whether a wallet transaction records this entry (by its id, or an expiry by its grant).
    pub has_transaction: bool,
    pub posting: Option<PostingLine>,
}

/// Entries with id above `after`, in id order, with their postings in line order.
///
/// Two ordered range scans on primary keys, merged here: the chunk's entries (with the
/// transaction that records each), then the postings whose entry ids fall in the chunk's
/// range. A join of the two let PostgreSQL hash or sort all of `ledger_postings` for every
/// chunk; this reads each posting once, in the order it is stored by.
pub fn entries_after(conn: &mut dyn Conn, after: i64, chunk: i64) -> Result<Vec<EntryLine>, StoreError> {
    let entries = conn.query(
        "SELECT e.id, e.mode, e.customer_id, e.asset, e.kind, t.id
         FROM (SELECT id, mode, customer_id, asset, kind, transaction_id, grant_id FROM ledger_entries
               WHERE id > $1 ORDER BY id LIMIT $2) e
         LEFT JOIN transactions t ON t.customer_id = e.customer_id
              AND t.id = COALESCE(e.transaction_id, 'tally_expiry_' || e.grant_id)
         ORDER BY e.id",
        params![after, chunk],
    )?;
    let Some(last) = entries.last().map(|row| row.int(0)).transpose()? else {
        return Ok(Vec::new());
    };
    let postings = conn.query(
        &format!(
            "SELECT p.entry_id, p.customer_id, {POSTING_COLUMNS} FROM ledger_postings p
             WHERE p.entry_id > $1 AND p.entry_id <= $2 ORDER BY p.entry_id, p.line"
        ),
        params![after, last],
    )?;
    let mut postings = postings.iter().peekable();
    let mut lines = Vec::with_capacity(entries.len() * 3);
    for row in &entries {
        let line = EntryLine {
            entry_id: row.int(0)?,
            mode: row.text(1)?,
            customer_id: row.text(2)?,
            asset: row.text(3)?,
            kind: row.text(4)?,
            has_transaction: row.opt_text(5)?.is_some(),
            posting: None,
        };
        let mut found = false;
        while let Some(posting) = postings.peek() {
            let entry_id = posting.int(0)?;
            if entry_id > line.entry_id {
                break;
            }
            // A posting counts for its entry only when it carries the entry's customer, as
            // the join this replaced required.
            if entry_id == line.entry_id && posting.text(1)? == line.customer_id {
                lines.push(EntryLine { posting: posting_at(posting, 2)?, ..line.clone() });
                found = true;
            }
            postings.next();
        }
        if !found {
            lines.push(line);
        }
    }
    Ok(lines)
}

/// How many postings there are in all, joined to an entry or not.
pub fn count_postings(conn: &mut dyn Conn) -> Result<i64, StoreError> {
    conn.count("SELECT COUNT(*) FROM ledger_postings", &[])
}

/// How many rows `table` holds (one of the tables verification reads).
pub fn count_rows(conn: &mut dyn Conn, table: VerifiedTable) -> Result<i64, StoreError> {
    let table = match table {
        VerifiedTable::Entries => "ledger_entries",
        VerifiedTable::Grants => "grants",
        VerifiedTable::IssuedGrants => "ledger_grants",
        VerifiedTable::Fees => "event_fees",
    };
    conn.count(&format!("SELECT COUNT(*) FROM {table}"), &[])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifiedTable {
    Entries,
    Grants,
    IssuedGrants,
    Fees,
}

/// A wallet account's stored balances.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAccount {
    pub key: AccountKey,
    pub available: Decimal,
    pub pending_in: Decimal,
    pub pending_out: Decimal,
    pub debt: Decimal,
}

/// Accounts after `after` (none: from the first), in key order.
pub fn accounts_after(
    conn: &mut dyn Conn,
    after: Option<&AccountKey>,
    chunk: i64,
) -> Result<Vec<StoredAccount>, StoreError> {
    let columns = "customer_id, name, asset, available, pending_in, debt, pending_out";
    let rows = match after {
        None => conn.query(
            &format!("SELECT {columns} FROM wallet_accounts ORDER BY customer_id, name, asset LIMIT $1"),
            params![chunk],
        )?,
        Some(key) => conn.query(
            &format!(
                "SELECT {columns} FROM wallet_accounts WHERE (customer_id, name, asset) > ($1, $2, $3)
                 ORDER BY customer_id, name, asset LIMIT $4"
            ),
            params![&key.customer_id, &key.name, &key.asset, chunk],
        )?,
    };
    rows.iter()
        .map(|row| {
            Ok(StoredAccount {
                key: AccountKey { customer_id: row.text(0)?, name: row.text(1)?, asset: row.text(2)? },
                available: row.decimal(3)?,
                pending_in: row.decimal(4)?,
                debt: row.decimal(5)?,
                pending_out: row.decimal(6)?,
            })
        })
        .collect()
}

/// One posting of one account's entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountPosting {
    pub entry_id: i64,
    /// `None` for an entry without postings.
    pub posting: Option<PostingLine>,
}

/// The postings of `account`'s entries with id above `after`, a chunk of entries at a time,
/// in entry order.
pub fn account_postings_after(
    conn: &mut dyn Conn,
    account: &AccountKey,
    after: i64,
    chunk: i64,
) -> Result<Vec<AccountPosting>, StoreError> {
    conn.query(
        &format!(
            "SELECT e.id, {POSTING_COLUMNS}
             FROM (SELECT id, customer_id FROM ledger_entries WHERE customer_id = $1 AND account_name = $2 AND asset = $3
                   AND id > $4 ORDER BY id LIMIT $5) e
             LEFT JOIN ledger_postings p ON p.customer_id = e.customer_id AND p.entry_id = e.id
             ORDER BY e.id, p.line"
        ),
        params![&account.customer_id, &account.name, &account.asset, after, chunk],
    )?
    .iter()
    .map(|row| Ok(AccountPosting { entry_id: row.int(0)?, posting: posting_at(row, 1)? }))
    .collect()
}

/// A grant row beside the ledger's record of its issue and what the entry that made it took
/// from the issuance account.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantLine {
    pub id: String,
    pub purpose: String,
    pub amount: Decimal,
    pub remaining: Decimal,
    pub state: String,
    /// `(purpose, amount)` as the ledger issued it, if it has a record of the issue.
    pub issued: Option<(String, Decimal)>,
    /// One issuance posting of the entry of the transaction that made the grant, if any.
    pub issuance: Option<Decimal>,
    /// That entry's id, to tell two entries apart.
    pub issuing_entry: Option<i64>,
    /// The grant row's cost basis, and the one the ledger recorded at its issue.
    pub cost_basis: Option<Decimal>,
    pub issued_cost_basis: Option<Decimal>,
}

/// The grants of one account, ordered by id, each once per issuance posting of its making
/// entry (or once, without one).
pub fn account_grants(conn: &mut dyn Conn, account: &AccountKey) -> Result<Vec<GrantLine>, StoreError> {
    conn.query(
        "SELECT g.id, g.purpose, g.amount, g.remaining, g.state, l.purpose, l.amount, e.id, p.amount,
                g.cost_basis, l.cost_basis
         FROM grants g
         LEFT JOIN ledger_grants l ON l.grant_id = g.id
         LEFT JOIN ledger_entries e ON e.customer_id = g.customer_id AND e.transaction_id = l.transaction_id
         LEFT JOIN ledger_postings p ON p.customer_id = e.customer_id AND p.entry_id = e.id AND p.account = 'system:issuance'
         WHERE g.customer_id = $1 AND g.asset = $2 AND g.account_name = $3
         ORDER BY g.id, e.id, p.line",
        params![&account.customer_id, &account.asset, &account.name],
    )?
    .iter()
    .map(|row| {
        let issued = match row.opt_text(5)? {
            Some(purpose) => Some((purpose, row.decimal(6)?)),
            None => None,
        };
        Ok(GrantLine {
            id: row.text(0)?,
            purpose: row.text(1)?,
            amount: row.decimal(2)?,
            remaining: row.decimal(3)?,
            state: row.text(4)?,
            issued,
            issuing_entry: row.opt_int(7)?,
            issuance: row.opt_decimal(8)?,
            cost_basis: row.opt_decimal(9)?,
            issued_cost_basis: row.opt_decimal(10)?,
        })
    })
    .collect()
}

/// One row of a transaction with its entry and one of that entry's postings.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionLine {
    pub customer_id: String,
    pub id: String,
    pub kind: String,
    pub account_name: String,
    pub asset: String,
    pub amount: Decimal,
    /// The entry: its id, account name, asset and kind.
    pub entry: Option<(i64, String, String, String)>,
    pub posting: Option<PostingLine>,
}

/// Transactions after `after` (customer id, transaction id), in key order, each with the
/// ledger entry that records it: the one naming its id, or for an expiry the expiry entry of
/// its grant.
pub fn transactions_after(
    conn: &mut dyn Conn,
    after: Option<(&str, &str)>,
    chunk: i64,
) -> Result<Vec<TransactionLine>, StoreError> {
    let (condition, mut values) = match after {
        None => ("", Vec::new()),
        Some((customer_id, id)) => ("WHERE (customer_id, id) > ($2, $3)", params![customer_id, id].to_vec()),
    };
    values.insert(0, chunk.into());
    let sql = format!(
        "SELECT t.customer_id, t.id, t.kind, t.account_name, t.asset, t.amount,
                COALESCE(e.id, x.id), COALESCE(e.account_name, x.account_name), COALESCE(e.asset, x.asset),
                COALESCE(e.kind, x.kind), {POSTING_COLUMNS}
         FROM (SELECT customer_id, id, kind, account_name, asset, amount FROM transactions {condition}
               ORDER BY customer_id, id LIMIT $1) t
         LEFT JOIN ledger_entries e ON e.customer_id = t.customer_id AND e.transaction_id = t.id
         LEFT JOIN ledger_entries x ON t.kind = 'expiry' AND x.customer_id = t.customer_id
              AND x.transaction_id IS NULL AND x.grant_id = SUBSTR(t.id, 14) AND x.kind = 'expiry'
         LEFT JOIN ledger_postings p ON p.customer_id = t.customer_id AND p.entry_id = COALESCE(e.id, x.id)
         ORDER BY t.customer_id, t.id, COALESCE(e.id, x.id), p.line"
    );
    conn.query(&sql, &values)?
        .iter()
        .map(|row| {
            let entry = match row.opt_int(6)? {
                Some(id) => Some((id, row.text(7)?, row.text(8)?, row.text(9)?)),
                None => None,
            };
            Ok(TransactionLine {
                customer_id: row.text(0)?,
                id: row.text(1)?,
                kind: row.text(2)?,
                account_name: row.text(3)?,
                asset: row.text(4)?,
                amount: row.decimal(5)?,
                entry,
                posting: posting_at(row, 10)?,
            })
        })
        .collect()
}

/// One row of a usage event with one of its fees, the fee's transaction and entry, and one
/// posting of that entry.
#[derive(Debug, Clone, PartialEq)]
pub struct EventLine {
    pub mode: String,
    pub id: String,
    pub has_fees: bool,
    pub total_fees: Option<Decimal>,
    pub fee_currency: Option<String>,
    /// The fee: line, asset, amount.
    pub fee: Option<(i64, String, Decimal)>,
    /// The fee's transaction: asset and amount.
    pub transaction: Option<(String, Decimal)>,
    pub entry_id: Option<i64>,
    pub posting: Option<PostingLine>,
}

/// Usage events after `after` (mode, event id), in key order, with their fees, each fee's
/// transaction (`tally_event_{event}_{line}`) and that transaction's entry and postings.
pub fn events_after(
    conn: &mut dyn Conn,
    after: Option<(&str, &str)>,
    chunk: i64,
) -> Result<Vec<EventLine>, StoreError> {
    let (condition, mut values) = match after {
        None => ("", Vec::new()),
        Some((mode, id)) => ("WHERE (mode, id) > ($2, $3)", params![mode, id].to_vec()),
    };
    values.insert(0, chunk.into());
    let sql = format!(
        "SELECT v.mode, v.id, v.has_fees, v.total_fees, v.fee_currency, f.line, f.asset, f.amount, t.asset, t.amount,
                e.id, {POSTING_COLUMNS}
         FROM (SELECT mode, id, customer_id, has_fees, total_fees, fee_currency FROM usage_events {condition}
               ORDER BY mode, id LIMIT $1) v
         LEFT JOIN event_fees f ON f.mode = v.mode AND f.event_id = v.id
         LEFT JOIN transactions t ON t.customer_id = v.customer_id AND t.id = 'tally_event_' || v.id || '_' || f.line
         LEFT JOIN ledger_entries e ON e.customer_id = t.customer_id AND e.transaction_id = t.id
         LEFT JOIN ledger_postings p ON p.customer_id = e.customer_id AND p.entry_id = e.id
         ORDER BY v.mode, v.id, f.line, e.id, p.line"
    );
    conn.query(&sql, &values)?
        .iter()
        .map(|row| {
            let fee = match row.opt_int(5)? {
                Some(line) => Some((line, row.text(6)?, row.decimal(7)?)),
                None => None,
            };
            let transaction = match row.opt_text(8)? {
                Some(asset) => Some((asset, row.decimal(9)?)),
                None => None,
            };
            Ok(EventLine {
                mode: row.text(0)?,
                id: row.text(1)?,
                has_fees: row.bool(2)?,
                total_fees: row.opt_decimal(3)?,
                fee_currency: row.opt_text(4)?,
                fee,
                transaction,
                entry_id: row.opt_int(10)?,
                posting: posting_at(row, 11)?,
            })
        })
        .collect()
}

/// One row of a top-up with one of its entries and one posting of that entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TopUpLine {
    pub id: String,
    pub mode: String,
    pub status: String,
    pub asset: String,
    pub asset_amount: Decimal,
    /// The entry: id and kind.
    pub entry: Option<(i64, String)>,
    pub posting: Option<PostingLine>,
}

/// Top-ups after `after`, in id order, with the entries that hold, release and credit them
/// (named by the top-up's id, or by its credit's transaction `tally_top_up_{id}`).
pub fn top_ups_after(conn: &mut dyn Conn, after: Option<&str>, chunk: i64) -> Result<Vec<TopUpLine>, StoreError> {
    let (condition, mut values) = match after {
        None => ("", Vec::new()),
        Some(id) => ("WHERE id > $2", params![id].to_vec()),
    };
    values.insert(0, chunk.into());
    let sql = format!(
        "SELECT u.id, u.mode, u.status, u.asset, u.asset_amount, e.id, e.kind, {POSTING_COLUMNS}
         FROM (SELECT id, mode, customer_id, status, asset, asset_amount FROM top_ups {condition}
               ORDER BY id LIMIT $1) u
         LEFT JOIN ledger_entries e ON e.customer_id = u.customer_id
              AND e.transaction_id IN (u.id, 'tally_top_up_' || u.id)
         LEFT JOIN ledger_postings p ON p.customer_id = e.customer_id AND p.entry_id = e.id
         ORDER BY u.id, e.id, p.line"
    );
    conn.query(&sql, &values)?
        .iter()
        .map(|row| {
            let entry = match row.opt_int(5)? {
                Some(id) => Some((id, row.text(6)?)),
                None => None,
            };
            Ok(TopUpLine {
                id: row.text(0)?,
                mode: row.text(1)?,
                status: row.text(2)?,
                asset: row.text(3)?,
                asset_amount: row.decimal(4)?,
                entry,
                posting: posting_at(row, 7)?,
            })
        })
        .collect()
}
