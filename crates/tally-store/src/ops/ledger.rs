//! `tally ledger verify`: recompute every balance and grant from the ledger's postings and
//! compare with the stored state.

use crate::conn::Conn;
use crate::repo::{ledger, wallets};
use crate::StoreError;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use tally_core::ledger::{Bucket, LedgerAccount};
use tally_core::wallet::GrantState;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReport {
    pub entries: usize,
    pub postings: usize,
    pub accounts: usize,
    pub grants: usize,
    /// Each mismatch, in words. Empty when the books agree.
    pub problems: Vec<String>,
}

#[derive(Default)]
struct Derived {
    available: Decimal,
    pending_in: Decimal,
    debt: Decimal,
}

pub fn verify(conn: &mut dyn Conn) -> Result<VerifyReport, StoreError> {
    let postings = ledger::all_postings(conn)?;
    let mut report = VerifyReport { postings: postings.len(), ..VerifyReport::default() };
    let mut entry_sums: BTreeMap<i64, Decimal> = BTreeMap::new();
    let mut per_account: HashMap<wallets::AccountKey, Derived> = HashMap::new();
    let mut per_grant: HashMap<String, Decimal> = HashMap::new();
    for posting in &postings {
        *entry_sums.entry(posting.entry_id).or_default() += posting.amount;
        if posting.ledger_account != LedgerAccount::Wallet {
            continue;
        }
        let derived = per_account.entry(posting.account.clone()).or_default();
        match (posting.bucket, &posting.grant_id) {
            (Bucket::Available, None) => {
                derived.available += posting.amount;
                derived.debt -= posting.amount;
            }
            (Bucket::Available, Some(grant_id)) => {
                derived.available += posting.amount;
                *per_grant.entry(grant_id.clone()).or_default() += posting.amount;
            }
            (Bucket::PendingIn, grant_id) => {
                derived.pending_in += posting.amount;
                if let Some(grant_id) = grant_id {
                    *per_grant.entry(grant_id.clone()).or_default() += posting.amount;
                }
            }
        }
    }
    report.entries = entry_sums.len();
    for (entry_id, sum) in &entry_sums {
        if !sum.is_zero() {
            report.problems.push(format!("ledger entry {entry_id} does not balance: its postings sum to {sum}"));
        }
    }
    let accounts = wallets::all_accounts(conn)?;
    report.accounts = accounts.len();
    for account in &accounts {
        let derived = per_account.remove(&account.key).unwrap_or_default();
        let name = format!("{}/{}:{}", account.key.customer_id, account.key.name, account.key.asset);
        let checks = [
            ("available", account.state.available, derived.available),
            ("pending_in", account.state.pending_in, derived.pending_in),
            ("debt", account.state.debt, derived.debt),
        ];
        for (field, stored, from_ledger) in checks {
            if stored != from_ledger {
                report.problems.push(format!("{name}: {field} is {stored} but the ledger says {from_ledger}"));
            }
        }
        if account.state.debt < Decimal::ZERO {
            report.problems.push(format!("{name}: debt is negative ({})", account.state.debt));
        }
    }
    for key in per_account.keys() {
        report
            .problems
            .push(format!("{}/{}:{}: postings exist but the account does not", key.customer_id, key.name, key.asset));
    }
    let grants = wallets::all_grants(conn)?;
    report.grants = grants.len();
    for (_, grant) in &grants {
        let from_ledger = per_grant.remove(&grant.id).unwrap_or_default();
        if grant.remaining != from_ledger {
            report.problems.push(format!(
                "grant {}: remaining is {} but the ledger says {from_ledger}",
                grant.id, grant.remaining
            ));
        }
        if grant.remaining < Decimal::ZERO {
            report.problems.push(format!("grant {}: remaining is below zero", grant.id));
        }
        if grant.state == GrantState::Expired && !grant.remaining.is_zero() {
            report.problems.push(format!("grant {}: expired but still holds {}", grant.id, grant.remaining));
        }
    }
    for grant_id in per_grant.keys() {
        report.problems.push(format!("grant {grant_id}: postings exist but the grant does not"));
    }
    Ok(report)
}
