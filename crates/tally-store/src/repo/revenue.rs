//! Reads for the revenue report: ledger entries in id order, a chunk at a time, each with its
//! postings, the ledger's record of each grant a posting moves, and the period a plan fee pays
//! for. The report never holds more than one chunk of rows.

use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use tally_core::revenue::{Entry, EntryPosting, IssuedGrant};
use tally_core::wallet::Purpose;
use tally_core::Mode;

/// How many entries a chunk holds.
pub const CHUNK: i64 = 500;

/// The entries of `mode` with id above `after` that took effect before `before` (of `asset`
/// only, if given), in id order, with the id of the last entry looked at (`None`: no more).
pub fn entries_after(
    conn: &mut dyn Conn,
    mode: Mode,
    after: i64,
    before: DateTime<Utc>,
    asset: Option<&str>,
    chunk: i64,
) -> Result<(Vec<Entry>, Option<i64>), StoreError> {
    let asset_condition = if asset.is_some() { "AND asset = $5" } else { "" };
    let sql = format!(
        "SELECT e.id, e.asset, e.effective_at, f.service_until, p.account, p.grant_id, p.amount,
                l.purpose, l.amount, l.cost_basis, l.cost_currency,
                CASE WHEN l.transaction_id = e.transaction_id THEN 1 ELSE 0 END
         FROM (SELECT id, customer_id, asset, transaction_id, effective_at FROM ledger_entries
               WHERE mode = $1 AND id > $2 AND effective_at < $3 {asset_condition} ORDER BY id LIMIT $4) e
         LEFT JOIN ledger_fee_periods f ON f.customer_id = e.customer_id AND f.transaction_id = e.transaction_id
         LEFT JOIN ledger_postings p ON p.customer_id = e.customer_id AND p.entry_id = e.id
         LEFT JOIN ledger_grants l ON l.grant_id = p.grant_id
         ORDER BY e.id, p.line"
    );
    let mut values = params![mode.as_str(), after, before, chunk].to_vec();
    if let Some(asset) = asset {
        values.push(asset.into());
    }
    let rows = conn.query(&sql, &values)?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut last = None;
    for row in rows.iter() {
        let id = row.int(0)?;
        if last != Some(id) {
            last = Some(id);
            entries.push(Entry {
                asset: row.text(1)?,
                effective_at: row.time(2)?,
                service_until: row.opt_time(3)?,
                postings: Vec::new(),
            });
        }
        let Some(account) = row.opt_text(4)? else { continue };
        let account = super::ledger::parse_account(&account)
            .ok_or_else(|| StoreError::Corrupt(format!("posting account {account}")))?;
        let grant = match row.opt_text(5)? {
            None => None,
            Some(grant_id) => {
                let purpose = row.opt_text(7)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("grant {grant_id}: the ledger has no record of its issue"))
                })?;
                let purpose =
                    Purpose::parse(&purpose).ok_or_else(|| StoreError::Corrupt(format!("grant purpose {purpose}")))?;
                let cost_basis = match (row.opt_decimal(9)?, row.opt_text(10)?) {
                    (Some(basis), Some(currency)) => Some((basis, currency)),
                    _ => None,
                };
                Some((grant_id, IssuedGrant { purpose, amount: row.decimal(8)?, cost_basis }))
            }
        };
        let issues_grant = row.bool(11)?;
        let posting = EntryPosting { account, grant, issues_grant, amount: row.decimal(6)? };
        if let Some(entry) = entries.last_mut() {
            entry.postings.push(posting);
        }
    }
    Ok((entries, last))
}
