//! The append-only ledger: entries and their postings, and the record of each grant issued.
//! Nothing here updates or deletes.

use super::rollups::{MICROS_PER_HOUR, OTHER_FEE_CONDITION};
use super::wallets::{AccountKey, GrantOrigin};
use crate::conn::{Conn, Dialect, Row};
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

/// An entry of a transaction, to append with others by [`append_many`].
#[derive(Debug, Clone)]
pub struct TransactionEntry {
    pub account: AccountKey,
    pub kind: String,
    pub transaction_id: String,
    pub at: DateTime<Utc>,
    pub postings: Vec<Posting>,
}

/// Appends the entries of several transactions (one each, their ids distinct), in order, with
/// one multi-row `INSERT` for the entries and one for all their postings: a batch's fees cost
/// two statements instead of two each. Refuses an unbalanced entry, as [`append`] does.
pub fn append_many(conn: &mut dyn Conn, mode: Mode, entries: &[TransactionEntry]) -> Result<(), StoreError> {
    let entries: Vec<&TransactionEntry> = entries.iter().filter(|entry| !entry.postings.is_empty()).collect();
    if entries.is_empty() {
        return Ok(());
    }
    let mut values = Vec::with_capacity(entries.len() * 9);
    for entry in &entries {
        if !tally_core::ledger::is_balanced(&entry.postings) {
            return Err(StoreError::Corrupt(format!("refused an unbalanced ledger entry: {:?}", entry.postings)));
        }
        values.extend_from_slice(params![
            mode.as_str(),
            &entry.account.customer_id,
            &entry.account.name,
            &entry.account.asset,
            &entry.kind,
            &entry.transaction_id,
            Option::<String>::None,
            entry.at,
            entry.at
        ]);
    }
    let returned = super::insert_rows(
        conn,
        "INSERT INTO ledger_entries (mode, customer_id, account_name, asset, kind, transaction_id, grant_id, effective_at, created_at)",
        9,
        &values,
        " RETURNING id, transaction_id",
    )?;
    // Rows come back in no promised order: each is matched to its entry by its transaction.
    let mut ids = std::collections::HashMap::with_capacity(returned.len());
    for row in &returned {
        ids.insert(row.text(1)?, row.int(0)?);
    }
    if ids.len() != entries.len() {
        return Err(StoreError::Corrupt("append_many needs one entry per transaction".into()));
    }
    let mut values = Vec::with_capacity(entries.len() * 16);
    for entry in &entries {
        let entry_id = *ids
            .get(&entry.transaction_id)
            .ok_or_else(|| StoreError::Corrupt(format!("no ledger entry came back for {}", entry.transaction_id)))?;
        for (line, posting) in entry.postings.iter().enumerate() {
            values.extend_from_slice(params![
                entry_id,
                line as i64,
                account_text(posting.account),
                posting.bucket.as_str(),
                posting.grant_id.clone(),
                posting.amount,
                mode.as_str(),
                &entry.account.customer_id
            ]);
        }
    }
    super::insert_rows(
        conn,
        "INSERT INTO ledger_postings (entry_id, line, account, bucket, grant_id, amount, mode, customer_id)",
        8,
        &values,
        "",
    )?;
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
// Reads for `ledger verify`. Each reads one chunk in key order (a range of entry ids, of
// customers, or the next rows after a key) and streams its rows to the caller one at a time
// (`Conn::query_each`), so that verification holds one row, not a chunk, and never more
// than a chunk's accounts and grants, whatever the size of the ledger. Every chunk's rows are
// joined by the database on primary keys and indexes: one statement per chunk, none per row.

/// How many driving rows (accounts, top-ups, holds, customers' rollups) a chunk holds unless
/// told otherwise: what verification keeps in memory at once.
pub const CHUNK: i64 = 10_000;

/// The chunk of the passes that keep nothing of a chunk in memory (entry ids, transactions,
/// events) on PostgreSQL: their rows stream, so one statement reads the whole table. Cut into
/// chunks, PostgreSQL would hash or scan the joined tables once per chunk.
pub const STREAMED: i64 = i64::MAX;

/// One posting as verification reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct PostingLine {
    pub account: LedgerAccount,
    pub bucket: Bucket,
    pub grant_id: Option<String>,
    pub amount: Decimal,
}

/// A posting's account and amount, read in place.
fn posting_amount_at(row: &Row, index: usize) -> Result<Option<(LedgerAccount, Decimal)>, StoreError> {
    let Some(account) = row.opt_str(index)? else {
        return Ok(None);
    };
    let account = parse_account(account).ok_or_else(|| StoreError::Corrupt(format!("posting account {account}")))?;
    Ok(Some((account, row.decimal(index + 1)?)))
}

/// The largest entry id (0 without entries): the end of the id ranges [`entries_between`] reads.
pub fn last_entry_id(conn: &mut dyn Conn) -> Result<i64, StoreError> {
    Ok(conn.query_one("SELECT MAX(id) FROM ledger_entries", &[])?.opt_int(0)?.unwrap_or(0))
}

/// One row of an entry with one of its postings (`None` for an entry without any).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryRow<'a> {
    pub entry_id: i64,
    pub mode: &'a str,
    pub customer_id: &'a str,
    pub asset: &'a str,
    pub kind: &'a str,
    /// Whether a wallet transaction records this entry (by its id, or an expiry by its grant).
    pub has_transaction: bool,
    pub posting: Option<(LedgerAccount, Decimal)>,
}

/// The entries with ids in `(after, through]`, in id order, each with its postings in line
/// order (a posting counts for its entry only when it carries the entry's customer). Both
/// tables are read as one range of their primary keys, so each posting is read once.
pub fn entries_between(
    conn: &mut dyn Conn,
    after: i64,
    through: i64,
    each: &mut dyn FnMut(EntryRow) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    // The transaction is joined (its key is unique) rather than looked up in a subquery,
    // which PostgreSQL would run again for every posting.
    conn.query_each(
        "SELECT e.id, e.mode, e.customer_id, e.asset, e.kind, CASE WHEN t.id IS NULL THEN 0 ELSE 1 END,
                p.account, p.amount
         FROM ledger_entries e
         LEFT JOIN transactions t ON t.customer_id = e.customer_id
              AND t.id = COALESCE(e.transaction_id, 'tally_expiry_' || e.grant_id)
         LEFT JOIN ledger_postings p ON p.entry_id = e.id AND p.customer_id = e.customer_id
              AND p.entry_id > $1 AND p.entry_id <= $2
         WHERE e.id > $1 AND e.id <= $2
         ORDER BY e.id, p.line",
        params![after, through],
        &mut |row| {
            each(EntryRow {
                entry_id: row.int(0)?,
                mode: row.str(1)?,
                customer_id: row.str(2)?,
                asset: row.str(3)?,
                kind: row.str(4)?,
                has_transaction: row.bool(5)?,
                posting: posting_amount_at(row, 6)?,
            })
        },
    )
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
        VerifiedTable::Accounts => "wallet_accounts",
    };
    conn.count(&format!("SELECT COUNT(*) FROM {table}"), &[])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifiedTable {
    Entries,
    Grants,
    IssuedGrants,
    Fees,
    Accounts,
}

/// A range of customers, `(after, through]`, `through` `None` for every customer after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customers {
    pub after: String,
    pub through: Option<String>,
}

impl Customers {
    /// The condition on `column` and its parameters ($1, $2).
    fn condition(&self, column: &str) -> (String, Vec<crate::conn::Value>) {
        match &self.through {
            Some(through) => (format!("{column} > $1 AND {column} <= $2"), params![&self.after, through].to_vec()),
            None => (format!("{column} > $1"), params![&self.after].to_vec()),
        }
    }
}

/// The next range of customers after `after`, and up to `until` if given, that holds about
/// `chunk` wallet accounts (all of each customer's), or `None` past the last account (or past
/// `until`). The bounds are compared by the database, in its order of customer ids, as every
/// range's statements compare them.
pub fn next_customers(
    conn: &mut dyn Conn,
    after: &str,
    until: Option<&str>,
    chunk: i64,
) -> Result<Option<Customers>, StoreError> {
    let (bound, mut values) = match until {
        Some(until) => (" AND customer_id <= $2", params![after, until].to_vec()),
        None => ("", params![after].to_vec()),
    };
    let first = conn.query_optional(
        &format!("SELECT customer_id FROM wallet_accounts WHERE customer_id > $1{bound} ORDER BY customer_id LIMIT 1"),
        &values,
    )?;
    if first.is_none() {
        return Ok(None);
    }
    let offset = format!("${}", values.len() + 1);
    values.extend_from_slice(params![chunk.max(1) - 1]);
    let through = conn
        .query_optional(
            &format!(
                "SELECT customer_id FROM wallet_accounts WHERE customer_id > $1{bound}
                 ORDER BY customer_id LIMIT 1 OFFSET {offset}"
            ),
            &values,
        )?
        .map(|row| row.text(0))
        .transpose()?;
    Ok(Some(Customers { after: after.to_owned(), through: through.or(until.map(str::to_owned)) }))
}

/// The customer with wallet accounts halfway through them, in customer order (by accounts,
/// not customers: the accounts pass's work is per account), to split that pass in two.
/// `None` without accounts.
pub fn middle_customer(conn: &mut dyn Conn) -> Result<Option<String>, StoreError> {
    conn.query_optional(
        "SELECT customer_id FROM wallet_accounts ORDER BY customer_id
         LIMIT 1 OFFSET (SELECT COUNT(*) / 2 FROM wallet_accounts)",
        &[],
    )?
    .map(|row| row.text(0))
    .transpose()
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

/// The accounts of `customers`, in key order.
pub fn accounts_of(conn: &mut dyn Conn, customers: &Customers) -> Result<Vec<StoredAccount>, StoreError> {
    let (condition, values) = customers.condition("customer_id");
    conn.query_map(
        &format!(
            "SELECT customer_id, name, asset, available, pending_in, debt, pending_out FROM wallet_accounts
             WHERE {condition} ORDER BY customer_id, name, asset"
        ),
        &values,
        |row| {
            Ok(StoredAccount {
                key: AccountKey { customer_id: row.text(0)?, name: row.text(1)?, asset: row.text(2)? },
                available: row.decimal(3)?,
                pending_in: row.decimal(4)?,
                debt: row.decimal(5)?,
                pending_out: row.decimal(6)?,
            })
        },
    )
}

/// One posting of an account's entry, read in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccountPostingRow<'a> {
    pub customer_id: &'a str,
    pub account_name: &'a str,
    pub asset: &'a str,
    pub entry_id: i64,
    /// `None` for an entry without postings.
    pub posting: Option<(LedgerAccount, Bucket, Option<&'a str>, Decimal)>,
}

/// The entries of the accounts of `customers` with their postings, by account and entry.
pub fn account_postings_of(
    conn: &mut dyn Conn,
    customers: &Customers,
    each: &mut dyn FnMut(AccountPostingRow) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let (condition, values) = customers.condition("e.customer_id");
    conn.query_each(
        &format!(
            "SELECT e.customer_id, e.account_name, e.asset, e.id, p.account, p.bucket, p.grant_id, p.amount
             FROM ledger_entries e
             LEFT JOIN ledger_postings p ON p.entry_id = e.id AND p.customer_id = e.customer_id
             WHERE {condition}
             ORDER BY e.customer_id, e.account_name, e.asset, e.id"
        ),
        &values,
        &mut |row| {
            let posting = match row.opt_str(4)? {
                Some(account) => Some((
                    parse_account(account).ok_or_else(|| StoreError::Corrupt(format!("posting account {account}")))?,
                    Bucket::parse(row.str(5)?).ok_or_else(|| StoreError::Corrupt("posting bucket".into()))?,
                    row.opt_str(6)?,
                    row.decimal(7)?,
                )),
                None => None,
            };
            each(AccountPostingRow {
                customer_id: row.str(0)?,
                account_name: row.str(1)?,
                asset: row.str(2)?,
                entry_id: row.int(3)?,
                posting,
            })
        },
    )
}

/// A grant row beside the ledger's record of its issue and what the entry that made it took
/// from the issuance account.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantLine {
    pub key: AccountKey,
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

/// Whether [`grants_of`] reads each grant's record of issue beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueRecord {
    /// Joined: the ledger's record, its transaction's entry and that entry's issuance postings.
    Joined,
    /// Left out (`issued`, `issuance`, `issuing_entry` and `issued_cost_basis` are `None`):
    /// the fingerprint pass checks the record by streaming `ledger_grants`
    /// ([`each_ledger_grant`]) and the entries, where the joins look three rows up per grant.
    Omitted,
}

/// The grants of the accounts of `customers`, by customer and id, each once per issuance
/// posting of its making entry (or once, without one or without the record).
pub fn grants_of(
    conn: &mut dyn Conn,
    customers: &Customers,
    record: IssueRecord,
) -> Result<Vec<GrantLine>, StoreError> {
    let (condition, values) = customers.condition("g.customer_id");
    let (issue, issued_cost_basis, joins, order) = match record {
        IssueRecord::Joined => (
            "l.purpose, l.amount, e.id, p.amount",
            "l.cost_basis",
            "LEFT JOIN ledger_grants l ON l.grant_id = g.id
             LEFT JOIN ledger_entries e ON e.customer_id = g.customer_id AND e.transaction_id = l.transaction_id
             LEFT JOIN ledger_postings p ON p.customer_id = e.customer_id AND p.entry_id = e.id AND p.account = 'system:issuance'",
            ", e.id, p.line",
        ),
        IssueRecord::Omitted => ("NULL, NULL, NULL, NULL", "NULL", "", ""),
    };
    conn.query_map(
        &format!(
            "SELECT g.id, g.purpose, g.amount, g.remaining, g.state, {issue},
                    g.cost_basis, {issued_cost_basis}, g.customer_id, g.account_name, g.asset
             FROM grants g {joins}
             WHERE {condition}
             ORDER BY g.customer_id, g.id{order}"
        ),
        &values,
        |row| {
            let issued = match row.opt_text(5)? {
                Some(purpose) => Some((purpose, row.decimal(6)?)),
                None => None,
            };
            Ok(GrantLine {
                key: AccountKey { customer_id: row.text(11)?, name: row.text(12)?, asset: row.text(13)? },
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
        },
    )
}

/// The ledger's record of one grant's issue, as the fingerprint pass reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IssuedGrantLine<'a> {
    pub customer_id: &'a str,
    pub grant_id: &'a str,
    /// The transaction whose entry issued the grant (none: a record no entry can match).
    pub transaction_id: Option<&'a str>,
    pub purpose: &'a str,
    pub amount: Decimal,
    pub cost_basis: Option<Decimal>,
}

/// Every record of a grant's issue (`ledger_grants`), in the order the table stores them.
pub fn each_ledger_grant(
    conn: &mut dyn Conn,
    each: &mut dyn FnMut(IssuedGrantLine) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    conn.query_each(
        "SELECT customer_id, grant_id, transaction_id, purpose, amount, cost_basis FROM ledger_grants",
        &[],
        &mut |row| {
            each(IssuedGrantLine {
                customer_id: row.str(0)?,
                grant_id: row.str(1)?,
                transaction_id: row.opt_str(2)?,
                purpose: row.str(3)?,
                amount: row.decimal(4)?,
                cost_basis: row.opt_decimal(5)?,
            })
        },
    )
}

/// What the open holds of the accounts of `customers` still hold, by account.
pub fn open_holds_of(conn: &mut dyn Conn, customers: &Customers) -> Result<Vec<(AccountKey, Decimal)>, StoreError> {
    let (condition, values) = customers.condition("customer_id");
    conn.query(
        &format!(
            "SELECT customer_id, account_name, asset, amount, captured, released FROM holds
             WHERE {condition} AND status = 'held'"
        ),
        &values,
    )?
    .iter()
    .map(|row| {
        let key = AccountKey { customer_id: row.text(0)?, name: row.text(1)?, asset: row.text(2)? };
        Ok((key, row.decimal(3)? - row.decimal(4)? - row.decimal(5)?))
    })
    .collect()
}

/// One row of a transaction with its entry and one of that entry's postings, read in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransactionRow<'a> {
    pub customer_id: &'a str,
    pub id: &'a str,
    pub kind: &'a str,
    pub account_name: &'a str,
    pub asset: &'a str,
    pub amount: Decimal,
    /// The entry: its id, account name, asset and kind.
    pub entry: Option<(i64, &'a str, &'a str, &'a str)>,
    pub posting: Option<(LedgerAccount, Decimal)>,
}

/// Transactions after `after` (customer id, transaction id), a chunk of them in key order,
/// each with the ledger entry that records it: the one naming its id, or for an expiry the
/// expiry entry of its grant.
pub fn transactions_after(
    conn: &mut dyn Conn,
    after: Option<(&str, &str)>,
    chunk: i64,
    each: &mut dyn FnMut(TransactionRow) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let (condition, mut values) = match after {
        None => ("", Vec::new()),
        Some((customer_id, id)) => ("WHERE (customer_id, id) > ($2, $3)", params![customer_id, id].to_vec()),
    };
    values.insert(0, chunk.into());
    let sql = format!(
        "SELECT t.customer_id, t.id, t.kind, t.account_name, t.asset, t.amount,
                COALESCE(e.id, x.id), COALESCE(e.account_name, x.account_name), COALESCE(e.asset, x.asset),
                COALESCE(e.kind, x.kind), p.account, p.amount
         FROM (SELECT customer_id, id, kind, account_name, asset, amount FROM transactions {condition}
               ORDER BY customer_id, id LIMIT $1) t
         LEFT JOIN ledger_entries e ON e.customer_id = t.customer_id AND e.transaction_id = t.id
         LEFT JOIN ledger_entries x ON t.kind = 'expiry' AND x.customer_id = t.customer_id
              AND x.transaction_id IS NULL AND x.grant_id = SUBSTR(t.id, 14) AND x.kind = 'expiry'
         LEFT JOIN ledger_postings p ON p.customer_id = t.customer_id AND p.entry_id = COALESCE(e.id, x.id)
         ORDER BY t.customer_id, t.id, COALESCE(e.id, x.id), p.line"
    );
    conn.query_each(&sql, &values, &mut |row| {
        let entry = match row.opt_int(6)? {
            Some(id) => Some((id, row.str(7)?, row.str(8)?, row.str(9)?)),
            None => None,
        };
        each(TransactionRow {
            customer_id: row.str(0)?,
            id: row.str(1)?,
            kind: row.str(2)?,
            account_name: row.str(3)?,
            asset: row.str(4)?,
            amount: row.decimal(5)?,
            entry,
            posting: posting_amount_at(row, 10)?,
        })
    })
}

/// One row of a usage event with one of its fees, the fee's transaction and entry, and one
/// posting of that entry, read in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventRow<'a> {
    pub mode: &'a str,
    pub id: &'a str,
    pub has_fees: bool,
    pub total_fees: Option<Decimal>,
    pub fee_currency: Option<&'a str>,
    /// The fee: line, asset, amount.
    pub fee: Option<(i64, &'a str, Decimal)>,
    /// The fee's transaction: asset and amount.
    pub transaction: Option<(&'a str, Decimal)>,
    pub entry_id: Option<i64>,
    pub posting: Option<(LedgerAccount, Decimal)>,
}

/// Usage events after `after` (mode, event id), a chunk of them in key order, with their
/// fees, each fee's transaction (`tally_event_{event}_{line}`) and that transaction's entry
/// and postings.
pub fn events_after(
    conn: &mut dyn Conn,
    after: Option<(&str, &str)>,
    chunk: i64,
    each: &mut dyn FnMut(EventRow) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let (condition, mut values) = match after {
        None => ("", Vec::new()),
        Some((mode, id)) => ("WHERE (mode, id) > ($2, $3)", params![mode, id].to_vec()),
    };
    values.insert(0, chunk.into());
    let sql = format!(
        "SELECT v.mode, v.id, v.has_fees, v.total_fees, v.fee_currency, f.line, f.asset, f.amount, t.asset, t.amount,
                e.id, p.account, p.amount
         FROM (SELECT mode, id, customer_id, has_fees, total_fees, fee_currency FROM usage_events {condition}
               ORDER BY mode, id LIMIT $1) v
         LEFT JOIN event_fees f ON f.mode = v.mode AND f.event_id = v.id
         LEFT JOIN transactions t ON t.customer_id = v.customer_id AND t.id = 'tally_event_' || v.id || '_' || f.line
         LEFT JOIN ledger_entries e ON e.customer_id = t.customer_id AND e.transaction_id = t.id
         LEFT JOIN ledger_postings p ON p.customer_id = e.customer_id AND p.entry_id = e.id
         ORDER BY v.mode, v.id, f.line, e.id, p.line"
    );
    conn.query_each(&sql, &values, &mut |row| {
        let fee = match row.opt_int(5)? {
            Some(line) => Some((line, row.str(6)?, row.decimal(7)?)),
            None => None,
        };
        let transaction = match row.opt_str(8)? {
            Some(asset) => Some((asset, row.decimal(9)?)),
            None => None,
        };
        each(EventRow {
            mode: row.str(0)?,
            id: row.str(1)?,
            has_fees: row.bool(2)?,
            total_fees: row.opt_decimal(3)?,
            fee_currency: row.opt_str(4)?,
            fee,
            transaction,
            entry_id: row.opt_int(10)?,
            posting: posting_amount_at(row, 11)?,
        })
    })
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

// ---------------------------------------------------------------------------------------
// Reads for the fingerprint pass of `ledger verify` (`ops::ledger::fingerprints`): each reads
// one table once, in the order it is stored (or entries with their postings, one merge of two
// primary-key ranges), and looks nothing up per row, so a pass costs what reading the table
// costs.

/// The kinds of entry that no wallet transaction records: a grant's activation, a top-up's
/// hold and release (named by the top-up's id) and a hold's entries (`tally_hold_{id}`).
/// Every other kind is recorded by the transaction its entry names.
pub const KINDS_WITHOUT_TRANSACTION: [&str; 8] = [
    "activation",
    "top_up_pending",
    "top_up_failed",
    "top_up_expired",
    "hold",
    "hold_capture",
    "hold_release",
    "hold_expiry",
];

/// An entry as the fingerprint pass reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryHead<'a> {
    pub entry_id: i64,
    pub mode: &'a str,
    pub customer_id: &'a str,
    pub account_name: &'a str,
    pub asset: &'a str,
    pub kind: &'a str,
    pub transaction_id: Option<&'a str>,
    pub grant_id: Option<&'a str>,
    /// For an entry of a kind no transaction records ([`KINDS_WITHOUT_TRANSACTION`]) only:
    /// whether a transaction of its customer has the id the entry names (it must not). Always
    /// false for the other kinds, which are matched to their transactions by fingerprint.
    pub names_a_transaction: bool,
}

/// A posting as the fingerprint pass reads it: account, bucket, grant and amount.
pub type PostingRead<'a> = (LedgerAccount, Bucket, Option<&'a str>, Decimal);

/// The entry columns of [`EntryHead`], for an entry aliased `e`: a transaction is looked up
/// only for the few entries of a kind no transaction records.
fn entry_head_columns() -> String {
    let kinds = KINDS_WITHOUT_TRANSACTION.map(|kind| format!("'{kind}'")).join(", ");
    format!(
        "e.id, e.mode, e.customer_id, e.account_name, e.asset, e.kind, e.transaction_id, e.grant_id,
         CASE WHEN e.kind IN ({kinds}) AND e.transaction_id IS NOT NULL THEN
             CASE WHEN EXISTS (SELECT 1 FROM transactions t
                               WHERE t.customer_id = e.customer_id AND t.id = e.transaction_id)
                  THEN 1 ELSE 0 END
         ELSE 0 END"
    )
}

fn entry_head(row: &Row) -> Result<EntryHead<'_>, StoreError> {
    Ok(EntryHead {
        entry_id: row.int(0)?,
        mode: row.str(1)?,
        customer_id: row.str(2)?,
        account_name: row.str(3)?,
        asset: row.str(4)?,
        kind: row.str(5)?,
        transaction_id: row.opt_str(6)?,
        grant_id: row.opt_str(7)?,
        names_a_transaction: row.bool(8)?,
    })
}

/// A posting's account, bucket, grant and amount from `index` on, `None` for NULLs.
fn posting_read_at(row: &Row, index: usize) -> Result<Option<PostingRead<'_>>, StoreError> {
    let Some(account) = row.opt_str(index)? else { return Ok(None) };
    Ok(Some((
        parse_account(account).ok_or_else(|| StoreError::Corrupt(format!("posting account {account}")))?,
        Bucket::parse(row.str(index + 1)?).ok_or_else(|| StoreError::Corrupt("posting bucket".into()))?,
        row.opt_str(index + 2)?,
        row.decimal(index + 3)?,
    )))
}

/// The entries with ids in `(after, through]`, in id order, without their postings.
pub fn entry_heads_between(
    conn: &mut dyn Conn,
    after: i64,
    through: i64,
    each: &mut dyn FnMut(EntryHead) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    conn.query_each(
        &format!("SELECT {} FROM ledger_entries e WHERE e.id > $1 AND e.id <= $2 ORDER BY e.id", entry_head_columns()),
        params![after, through],
        &mut |row| each(entry_head(row)?),
    )
}

/// The postings of the entries with ids in `(after, through]`, by entry and line, read by
/// their primary key (on PostgreSQL, whose heap keeps them in about that order). Each comes
/// with its entry's id and its customer.
pub fn postings_between(
    conn: &mut dyn Conn,
    after: i64,
    through: i64,
    each: &mut dyn FnMut(i64, &str, PostingRead) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    conn.query_each(
        "SELECT entry_id, customer_id, account, bucket, grant_id, amount FROM ledger_postings
         WHERE entry_id > $1 AND entry_id <= $2 ORDER BY entry_id, line",
        params![after, through],
        &mut |row| {
            let posting = posting_read_at(row, 2)?.ok_or_else(|| StoreError::Corrupt("posting account".into()))?;
            each(row.int(0)?, row.str(1)?, posting)
        },
    )
}

/// SQLite only: the last row (`rowid`) of the postings of the entries with ids in
/// `(after, through]`, read from the primary-key index (`None` without any).
pub fn last_posting_row_between(conn: &mut dyn Conn, after: i64, through: i64) -> Result<Option<i64>, StoreError> {
    conn.query_one(
        "SELECT MAX(rowid) FROM ledger_postings WHERE entry_id > $1 AND entry_id <= $2",
        params![after, through],
    )?
    .opt_int(0)
}

/// SQLite only: the postings stored in rows `(after, through]`, in the order they are stored
/// (SQLite writes an entry's postings after it, so this is entry order): one sequential read
/// of the table. Each comes with its entry's id and its customer.
pub fn postings_in_rows(
    conn: &mut dyn Conn,
    after: i64,
    through: i64,
    each: &mut dyn FnMut(i64, &str, PostingRead) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    conn.query_each(
        "SELECT entry_id, customer_id, account, bucket, grant_id, amount FROM ledger_postings
         WHERE rowid > $1 AND rowid <= $2 ORDER BY rowid",
        params![after, through],
        &mut |row| {
            let posting = posting_read_at(row, 2)?.ok_or_else(|| StoreError::Corrupt("posting account".into()))?;
            each(row.int(0)?, row.str(1)?, posting)
        },
    )
}

/// One transaction as the fingerprint pass reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransactionLine<'a> {
    pub mode: &'a str,
    pub customer_id: &'a str,
    pub id: &'a str,
    pub kind: &'a str,
    pub account_name: &'a str,
    pub asset: &'a str,
    pub amount: Decimal,
    /// The hour it was made in (as `repo::rollups` counts hours: microseconds since the epoch
    /// divided by an hour's).
    pub hour: i64,
    /// Its details, for a fee that `fee_rollups` counts as another fee
    /// (`repo::rollups::is_other_fee`) only: none is read for the others.
    pub other_fee_detail: Option<&'a str>,
}

/// Every transaction, in the order the table stores them.
pub fn each_transaction(
    conn: &mut dyn Conn,
    each: &mut dyn FnMut(TransactionLine) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    conn.query_each(
        &format!(
            "SELECT mode, customer_id, id, kind, account_name, asset, amount, created_at / {MICROS_PER_HOUR},
                    CASE WHEN {OTHER_FEE_CONDITION} THEN detail END
             FROM transactions"
        ),
        &[],
        &mut |row| {
            each(TransactionLine {
                mode: row.str(0)?,
                customer_id: row.str(1)?,
                id: row.str(2)?,
                kind: row.str(3)?,
                account_name: row.str(4)?,
                asset: row.str(5)?,
                amount: row.decimal(6)?,
                hour: row.int(7)?,
                other_fee_detail: row.opt_str(8)?,
            })
        },
    )
}

/// One usage event's fee summary as the fingerprint pass reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventLine<'a> {
    pub mode: &'a str,
    pub id: &'a str,
    pub customer_id: &'a str,
    pub has_fees: bool,
    pub total_fees: Option<Decimal>,
    pub fee_currency: Option<&'a str>,
}

/// Every usage event, in the order the table stores them.
pub fn each_event(
    conn: &mut dyn Conn,
    each: &mut dyn FnMut(EventLine) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    conn.query_each(
        "SELECT mode, id, customer_id, has_fees, total_fees, fee_currency FROM usage_events",
        &[],
        &mut |row| {
            each(EventLine {
                mode: row.str(0)?,
                id: row.str(1)?,
                customer_id: row.str(2)?,
                has_fees: row.bool(3)?,
                total_fees: row.opt_decimal(4)?,
                fee_currency: row.opt_str(5)?,
            })
        },
    )
}

/// One fee of a usage event as the fingerprint pass reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeeLine<'a> {
    pub mode: &'a str,
    pub event_id: &'a str,
    pub customer_id: &'a str,
    pub line: i64,
    pub asset: &'a str,
    pub amount: Decimal,
    /// The hour its event occurred in, and its product and price: its rollup's key.
    pub hour: i64,
    pub product_id: &'a str,
    pub price_id: &'a str,
}

/// Every fee of a usage event, an event's fees one after another: on SQLite in the order the
/// table stores them (one writer writes an event's fees together, with no other fee between
/// them); on PostgreSQL by event, since there an event's fees can be written by two
/// statements (an account opened between them) with another transaction's fees stored
/// between the two, which made the fingerprints disagree on clean books about one run in eight.
pub fn each_fee(
    conn: &mut dyn Conn,
    each: &mut dyn FnMut(FeeLine) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let order = match conn.dialect() {
        Dialect::Sqlite => "",
        Dialect::Postgres => " ORDER BY mode, event_id, line",
    };
    let sql = format!(
        "SELECT mode, event_id, customer_id, line, asset, amount, occurred_at / {MICROS_PER_HOUR}, product_id, price_id
         FROM event_fees{order}"
    );
    conn.query_each(&sql, &[], &mut |row| {
        each(FeeLine {
            mode: row.str(0)?,
            event_id: row.str(1)?,
            customer_id: row.str(2)?,
            line: row.int(3)?,
            asset: row.str(4)?,
            amount: row.decimal(5)?,
            hour: row.int(6)?,
            product_id: row.str(7)?,
            price_id: row.str(8)?,
        })
    })
}

/// One vendor cost of a usage event as the fingerprint pass reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostLine<'a> {
    pub mode: &'a str,
    pub customer_id: &'a str,
    pub hour: i64,
    pub vendor_id: &'a str,
    /// Empty for none, as `cost_rollups_by_vendor` keys it.
    pub category: &'a str,
    pub currency: &'a str,
    pub amount: Decimal,
}

/// Every vendor cost, in the order the table stores them.
pub fn each_cost(
    conn: &mut dyn Conn,
    each: &mut dyn FnMut(CostLine) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    conn.query_each(
        &format!(
            "SELECT mode, customer_id, occurred_at / {MICROS_PER_HOUR}, vendor_id, COALESCE(category, ''), currency, amount
             FROM event_costs"
        ),
        &[],
        &mut |row| {
            each(CostLine {
                mode: row.str(0)?,
                customer_id: row.str(1)?,
                hour: row.int(2)?,
                vendor_id: row.str(3)?,
                category: row.str(4)?,
                currency: row.str(5)?,
                amount: row.decimal(6)?,
            })
        },
    )
}

/// The rollup tables (`repo::rollups`), each read whole by [`each_stored_rollup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollupTable {
    /// `fee_rollups`: (customer, mode, hour, source, asset, product, price).
    CustomerFees,
    /// `cost_rollups`: (customer, mode, hour, currency).
    CustomerCosts,
    /// `fee_rollups_by_mode`: (mode, hour, asset), one row per shard.
    FeesByMode,
    /// `cost_rollups_by_vendor`: (vendor, hour, category, currency; its mode read beside the key), one row per shard.
    CostsByVendor,
}

/// One stored rollup row: its key's text columns in the order [`RollupTable`] names them
/// (the hour apart), its total in parts (whole units, 10^-12, 10^-24) and its count.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRollup<'a> {
    pub texts: [&'a str; 6],
    pub hour: i64,
    pub parts: (i64, i64, i64),
    pub count: i64,
}

/// Every row of `table`, in the order the table stores them.
pub fn each_stored_rollup(
    conn: &mut dyn Conn,
    table: RollupTable,
    each: &mut dyn FnMut(StoredRollup) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    // Six text columns each (padded with empty texts), so that one reader serves every table.
    let (columns, count, name) = match table {
        RollupTable::CustomerFees => {
            ("customer_id, mode, source, asset, product_id, price_id", "fee_count", "fee_rollups")
        }
        RollupTable::CustomerCosts => ("customer_id, mode, currency, '', '', ''", "cost_count", "cost_rollups"),
        RollupTable::FeesByMode => ("mode, asset, '', '', '', ''", "fee_count", "fee_rollups_by_mode"),
        RollupTable::CostsByVendor => {
            ("vendor_id, mode, category, currency, '', ''", "cost_count", "cost_rollups_by_vendor")
        }
    };
    conn.query_each(
        &format!("SELECT {columns}, hour, amount_units, amount_pico, amount_yocto, {count} FROM {name}"),
        &[],
        &mut |row| {
            each(StoredRollup {
                texts: [row.str(0)?, row.str(1)?, row.str(2)?, row.str(3)?, row.str(4)?, row.str(5)?],
                hour: row.int(6)?,
                parts: (row.int(7)?, row.int(8)?, row.int(9)?),
                count: row.int(10)?,
            })
        },
    )
}

/// How many customers that do not exist the per-customer rollup rows (fees and costs) name.
/// Each named customer is looked up once, not once per row: the rows are read in the tables'
/// key order (customer first), so `DISTINCT` keeps no set, and a customer has a row per hour
/// of activity (looking up every row was a third of `ledger verify`'s time on a store of
/// 100,000 customers with ten hours each).
pub fn rollup_customers_missing(conn: &mut dyn Conn) -> Result<i64, StoreError> {
    let mut missing = 0;
    for table in ["fee_rollups", "cost_rollups"] {
        missing += conn.count(
            &format!(
                "SELECT COUNT(*) FROM (SELECT DISTINCT customer_id FROM {table}) r
                 WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = r.customer_id)"
            ),
            &[],
        )?;
    }
    Ok(missing)
}
