//! `tally ledger verify`: recompute every fact Tally derives from the ledger and compare it
//! with what is stored.
//!
//! The ledger (entries, their postings, and the record of each grant issued) is the truth;
//! balances, grants, transactions, event fees and top-up states are derived from it and are
//! checked against it:
//! - every entry balances, and one that moves money to or from a system account other than
//!   `incoming` is recorded by a wallet transaction;
//! - every account's `available`, `pending_in` and debt equal its postings;
//! - every grant's remainder equals its postings (in the bucket its state says), and its
//!   amount and purpose equal the ledger's record of its issue, whose entry took that amount
//!   from the issuance account;
//! - every transaction is recorded by exactly one entry of its account and kind, whose
//!   postings move its amount;
//! - every usage event's fee total is the sum of its fees, and every fee moved its amount from
//!   the wallet to revenue through its own transaction;
//! - every top-up's state agrees with its entries: open ones hold their amount in `pending_in`,
//!   failed or expired ones released it, succeeded ones were credited exactly once;
//! - every account's `pending_out` equals its postings and what its open holds still hold;
//!   every hold's entries (`tally_hold_{id}`) held its amount once and gave back exactly what
//!   it says was captured and released, and per mode and asset `held` equals what open holds
//!   hold;
//! - per mode and asset, each system account's balance is reported, and `incoming` equals
//!   what open top-ups hold;
//! - every rollup (`repo::rollups`: per customer and hour, per mode and day, per vendor and
//!   day) equals the sum and count of the fees and costs it totals.
//!
//! Verification streams: each pass reads its rows in key order, a chunk at a time
//! (`repo::ledger`), so memory stays bounded by a chunk, one account's grants and the number of
//! assets, not by the size of the ledger.

mod rollups;

use crate::conn::Conn;
use crate::repo::holds::{self, Hold, HoldStatus};
use crate::repo::ledger::{self, PostingLine, VerifiedTable};
use crate::repo::wallets::AccountKey;
use crate::StoreError;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tally_core::ledger::{Bucket, LedgerAccount, SystemAccount};

/// Problems listed in full; past this many they are only counted, so that a badly damaged
/// database cannot make the report itself unbounded.
pub const MAX_LISTED_PROBLEMS: usize = 1000;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReport {
    pub entries: usize,
    pub postings: usize,
    pub accounts: usize,
    pub grants: usize,
    pub transactions: usize,
    pub events: usize,
    pub fees: usize,
    pub top_ups: usize,
    /// Rollup rows checked (per customer, plus platform-wide totals).
    pub rollups: usize,
    pub holds: usize,
    /// The balance of each system account, by (mode, asset, account), from the postings.
    pub system_balances: BTreeMap<(String, String, String), Decimal>,
    /// Each mismatch, in words (the first [`MAX_LISTED_PROBLEMS`]). Empty when the books agree.
    pub problems: Vec<String>,
    /// Mismatches found beyond those listed.
    pub unlisted_problems: usize,
}

impl VerifyReport {
    fn problem(&mut self, text: String) {
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(text);
        } else {
            self.unlisted_problems += 1;
        }
    }

    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.unlisted_problems == 0
    }
}

pub fn verify(conn: &mut dyn Conn) -> Result<VerifyReport, StoreError> {
    verify_in_chunks(conn, ledger::CHUNK)
}

/// [`verify`], reading `chunk` driving rows at a time (tests use tiny chunks to cross many
/// chunk boundaries).
pub fn verify_in_chunks(conn: &mut dyn Conn, chunk: i64) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    verify_entries(conn, &mut report, chunk)?;
    verify_accounts(conn, &mut report, chunk)?;
    verify_transactions(conn, &mut report, chunk)?;
    verify_events(conn, &mut report, chunk)?;
    let held = verify_top_ups(conn, &mut report, chunk)?;
    verify_incoming(&mut report, &held);
    let held = verify_holds(conn, &mut report, chunk)?;
    verify_held(&mut report, &held);
    rollups::verify_rollups(conn, &mut report, chunk)?;
    let stray = ledger::stray_fee_periods(conn)?;
    if stray > 0 {
        report.problem(format!("{stray} plan fee periods name no fee entry, or end before they start"));
    }
    Ok(report)
}

/// Splits rows already in key order into runs of one key.
fn runs<T, K: PartialEq>(rows: Vec<T>, key: impl Fn(&T) -> K) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    for row in rows {
        match runs.last_mut() {
            Some(run) if key(&run[0]) == key(&row) => run.push(row),
            _ => runs.push(vec![row]),
        }
    }
    runs
}

fn sum_of<'a>(postings: impl IntoIterator<Item = &'a PostingLine>, wanted: impl Fn(&PostingLine) -> bool) -> Decimal {
    postings.into_iter().filter(|posting| wanted(posting)).map(|posting| posting.amount).sum()
}

fn is_system(posting: &PostingLine, account: SystemAccount) -> bool {
    posting.account == LedgerAccount::System(account)
}

/// What a wallet transaction moves, from the wallet's side: the opposite of what its system
/// postings take, leaving out `incoming` (money on its way in is not yet the wallet's) and
/// `held` (held money is still the customer's until a capture debits it as a fee).
fn moved_by<'a>(postings: impl IntoIterator<Item = &'a PostingLine>) -> Decimal {
    -sum_of(postings, |posting| {
        matches!(posting.account, LedgerAccount::System(account)
            if account != SystemAccount::Incoming && account != SystemAccount::Held)
    })
}

/// Every entry balances; system balances per asset; entries that move money have a transaction.
fn verify_entries(conn: &mut dyn Conn, report: &mut VerifyReport, chunk: i64) -> Result<(), StoreError> {
    let mut after = 0;
    loop {
        let rows = ledger::entries_after(conn, after, chunk)?;
        if rows.is_empty() {
            break;
        }
        for run in runs(rows, |row| row.entry_id) {
            let first = &run[0];
            after = first.entry_id;
            report.entries += 1;
            let postings: Vec<&PostingLine> = run.iter().filter_map(|row| row.posting.as_ref()).collect();
            report.postings += postings.len();
            if postings.is_empty() {
                report.problem(format!("ledger entry {} has no postings", first.entry_id));
            }
            let sum = sum_of(postings.iter().copied(), |_| true);
            if !sum.is_zero() {
                report.problem(format!("ledger entry {} does not balance: its postings sum to {sum}", first.entry_id));
            }
            for posting in &postings {
                if let LedgerAccount::System(account) = posting.account {
                    let key = (first.mode.clone(), first.asset.clone(), account.as_str().to_owned());
                    *report.system_balances.entry(key).or_default() += posting.amount;
                }
            }
            if !moved_by(postings.iter().copied()).is_zero() && !first.has_transaction {
                report.problem(format!(
                    "ledger entry {} ({}, customer {}) moves money to or from a system account but no transaction records it",
                    first.entry_id, first.kind, first.customer_id
                ));
            }
        }
    }
    let postings = ledger::count_postings(conn)?;
    if postings > report.postings as i64 {
        report.problem(format!(
            "{} postings belong to no ledger entry of their customer",
            postings - report.postings as i64
        ));
    }
    Ok(())
}

#[derive(Default)]
struct Derived {
    available: Decimal,
    pending_in: Decimal,
    pending_out: Decimal,
    debt: Decimal,
}

/// One grant's postings: (available, pending_in).
type GrantPostings = HashMap<String, (Decimal, Decimal)>;

/// Every account's balances and every grant, one account at a time.
fn verify_accounts(conn: &mut dyn Conn, report: &mut VerifyReport, chunk: i64) -> Result<(), StoreError> {
    let mut entries_in_accounts = 0_i64;
    let mut after: Option<AccountKey> = None;
    loop {
        let accounts = ledger::accounts_after(conn, after.as_ref(), chunk)?;
        let Some(last) = accounts.last() else { break };
        after = Some(last.key.clone());
        for account in &accounts {
            report.accounts += 1;
            let name = format!("{}/{}:{}", account.key.customer_id, account.key.name, account.key.asset);
            let (derived, mut per_grant, entries) = account_postings(conn, &account.key, chunk)?;
            entries_in_accounts += entries;
            let checks = [
                ("available", account.available, derived.available),
                ("pending_in", account.pending_in, derived.pending_in),
                ("pending_out", account.pending_out, derived.pending_out),
                ("debt", account.debt, derived.debt),
            ];
            for (field, stored, from_ledger) in checks {
                if stored != from_ledger {
                    report.problem(format!("{name}: {field} is {stored} but the ledger says {from_ledger}"));
                }
            }
            if account.debt < Decimal::ZERO {
                report.problem(format!("{name}: debt is negative ({})", account.debt));
            }
            let open_holds: Decimal = holds::open_for_account(conn, &account.key)?.iter().map(Hold::remaining).sum();
            if account.pending_out != open_holds {
                report.problem(format!(
                    "{name}: pending_out is {} but its open holds hold {open_holds}",
                    account.pending_out
                ));
            }
            verify_grants(conn, report, &account.key, &mut per_grant)?;
            for grant_id in per_grant.keys() {
                report.problem(format!("{name}: postings name grant {grant_id}, which this account does not hold"));
            }
        }
    }
    let entries = ledger::count_rows(conn, VerifiedTable::Entries)?;
    if entries > entries_in_accounts {
        report.problem(format!(
            "{} ledger entries name a wallet account that does not exist",
            entries - entries_in_accounts
        ));
    }
    let grants = ledger::count_rows(conn, VerifiedTable::Grants)?;
    if grants > report.grants as i64 {
        report.problem(format!("{} grants belong to no wallet account", grants - report.grants as i64));
    }
    let issued = ledger::count_rows(conn, VerifiedTable::IssuedGrants)?;
    if issued != grants {
        report.problem(format!("the ledger issued {issued} grants but {grants} exist"));
    }
    Ok(())
}

/// An account's balances and grants from its postings, and how many entries it has.
fn account_postings(
    conn: &mut dyn Conn,
    key: &AccountKey,
    chunk: i64,
) -> Result<(Derived, GrantPostings, i64), StoreError> {
    let mut derived = Derived::default();
    let mut per_grant = GrantPostings::new();
    let mut entries = 0;
    let mut after = 0;
    loop {
        let rows = ledger::account_postings_after(conn, key, after, chunk)?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            if row.entry_id != after {
                entries += 1;
                after = row.entry_id;
            }
            let Some(posting) = row.posting.filter(|posting| posting.account == LedgerAccount::Wallet) else {
                continue;
            };
            match (posting.bucket, posting.grant_id) {
                (Bucket::Available, None) => {
                    derived.available += posting.amount;
                    derived.debt -= posting.amount;
                }
                (Bucket::Available, Some(grant_id)) => {
                    derived.available += posting.amount;
                    per_grant.entry(grant_id).or_default().0 += posting.amount;
                }
                // Held money: out of `available`, into `pending_out`. It never names a grant; one
                // that does is counted against the grant, which then disagrees and is reported.
                (Bucket::PendingOut, grant_id) => {
                    derived.available += posting.amount;
                    derived.pending_out -= posting.amount;
                    if let Some(grant_id) = grant_id {
                        per_grant.entry(grant_id).or_default().0 += posting.amount;
                    }
                }
                (Bucket::PendingIn, grant_id) => {
                    derived.pending_in += posting.amount;
                    if let Some(grant_id) = grant_id {
                        per_grant.entry(grant_id).or_default().1 += posting.amount;
                    }
                }
            }
        }
    }
    Ok((derived, per_grant, entries))
}

/// The grants of one account against their postings and the ledger's record of their issue.
fn verify_grants(
    conn: &mut dyn Conn,
    report: &mut VerifyReport,
    key: &AccountKey,
    per_grant: &mut GrantPostings,
) -> Result<(), StoreError> {
    for run in runs(ledger::account_grants(conn, key)?, |line| line.id.clone()) {
        report.grants += 1;
        let grant = &run[0];
        let id = &grant.id;
        let (available, pending_in) = per_grant.remove(id).unwrap_or_default();
        let from_ledger = available + pending_in;
        if grant.remaining != from_ledger {
            report.problem(format!("grant {id}: remaining is {} but the ledger says {from_ledger}", grant.remaining));
        }
        if grant.remaining < Decimal::ZERO {
            report.problem(format!("grant {id}: remaining is below zero"));
        }
        match grant.state.as_str() {
            "pending" if !available.is_zero() => {
                report.problem(format!("grant {id}: not yet effective, but {available} of it is available"))
            }
            "active" if !pending_in.is_zero() => {
                report.problem(format!("grant {id}: effective, but {pending_in} of it is still pending"))
            }
            "expired" if !grant.remaining.is_zero() || !from_ledger.is_zero() => {
                report.problem(format!("grant {id}: expired but still holds {from_ledger}"))
            }
            "pending" | "active" | "expired" => {}
            other => report.problem(format!("grant {id}: unknown state {other:?}")),
        }
        let Some((purpose, amount)) = &grant.issued else {
            report.problem(format!("grant {id}: the ledger has no record of its issue"));
            continue;
        };
        if &grant.purpose != purpose {
            report.problem(format!("grant {id}: purpose is {} but the ledger issued it as {purpose}", grant.purpose));
        }
        if &grant.amount != amount {
            report.problem(format!("grant {id}: amount is {} but the ledger issued {amount}", grant.amount));
        }
        // The revenue report values the grant at the cost basis the ledger recorded.
        if grant.cost_basis != grant.issued_cost_basis {
            report.problem(format!(
                "grant {id}: cost basis is {:?} but the ledger issued it at {:?}",
                grant.cost_basis, grant.issued_cost_basis
            ));
        }
        let entries: BTreeSet<i64> = run.iter().filter_map(|line| line.issuing_entry).collect();
        let issued_by_entry: Decimal = -run.iter().filter_map(|line| line.issuance).sum::<Decimal>();
        if entries.len() != 1 {
            report.problem(format!("grant {id}: {} ledger entries record its issue, not one", entries.len()));
        } else if issued_by_entry != *amount {
            report
                .problem(format!("grant {id}: issued as {amount} but its entry took {issued_by_entry} from issuance"));
        }
    }
    Ok(())
}

/// Every transaction against the one entry that records it.
fn verify_transactions(conn: &mut dyn Conn, report: &mut VerifyReport, chunk: i64) -> Result<(), StoreError> {
    let mut after: Option<(String, String)> = None;
    loop {
        let rows = ledger::transactions_after(
            conn,
            after.as_ref().map(|(customer, id)| (customer.as_str(), id.as_str())),
            chunk,
        )?;
        if rows.is_empty() {
            break;
        }
        for run in runs(rows, |line| (line.customer_id.clone(), line.id.clone())) {
            report.transactions += 1;
            let transaction = &run[0];
            after = Some((transaction.customer_id.clone(), transaction.id.clone()));
            let name = format!("transaction {} of {}", transaction.id, transaction.customer_id);
            let entries: BTreeSet<&(i64, String, String, String)> =
                run.iter().filter_map(|line| line.entry.as_ref()).collect();
            let entry = match entries.len() {
                0 if transaction.amount.is_zero() => continue,
                0 => {
                    report.problem(format!("{name}: no ledger entry records it"));
                    continue;
                }
                1 => entries.into_iter().next().expect("one entry"),
                count => {
                    report.problem(format!("{name}: {count} ledger entries record it, not one"));
                    continue;
                }
            };
            let (entry_id, account_name, asset, kind) = entry;
            if (account_name, asset) != (&transaction.account_name, &transaction.asset) {
                report.problem(format!(
                    "{name}: it is on {}:{} but its ledger entry {entry_id} is on {account_name}:{asset}",
                    transaction.account_name, transaction.asset
                ));
            }
            if kind != &transaction.kind {
                report.problem(format!(
                    "{name}: it is a {} but its ledger entry {entry_id} is a {kind}",
                    transaction.kind
                ));
            }
            let moved = moved_by(run.iter().filter_map(|line| line.posting.as_ref()));
            if moved != transaction.amount {
                report.problem(format!("{name}: amount is {} but its ledger entry moves {moved}", transaction.amount));
            }
        }
    }
    Ok(())
}

/// Every usage event's fees against their total and their ledger movements.
fn verify_events(conn: &mut dyn Conn, report: &mut VerifyReport, chunk: i64) -> Result<(), StoreError> {
    let mut after: Option<(String, String)> = None;
    loop {
        let rows = ledger::events_after(conn, after.as_ref().map(|(mode, id)| (mode.as_str(), id.as_str())), chunk)?;
        if rows.is_empty() {
            break;
        }
        for run in runs(rows, |line| (line.mode.clone(), line.id.clone())) {
            report.events += 1;
            let event = &run[0];
            after = Some((event.mode.clone(), event.id.clone()));
            let id = &event.id;
            let fees =
                runs(run.iter().filter(|line| line.fee.is_some()).collect(), |line| line.fee.as_ref().map(|fee| fee.0));
            report.fees += fees.len();
            if event.has_fees == fees.is_empty() {
                report.problem(format!("event {id}: has_fees is {} but it has {} fees", event.has_fees, fees.len()));
            }
            let assets: BTreeSet<&str> =
                fees.iter().filter_map(|fee| fee[0].fee.as_ref()).map(|fee| fee.1.as_str()).collect();
            let expected = match (assets.len(), assets.first()) {
                (1, Some(asset)) => {
                    let total: Decimal = fees.iter().filter_map(|fee| fee[0].fee.as_ref()).map(|fee| fee.2).sum();
                    (Some(total), Some(asset.to_string()))
                }
                _ => (None, None),
            };
            if (event.total_fees, event.fee_currency.clone()) != expected {
                report.problem(format!(
                    "event {id}: total_fees is {:?} {:?} but its fees come to {:?} {:?}",
                    event.total_fees, event.fee_currency, expected.0, expected.1
                ));
            }
            for fee_rows in &fees {
                let Some((line, asset, amount)) = fee_rows[0].fee.clone() else { continue };
                let entries: BTreeSet<i64> = fee_rows.iter().filter_map(|row| row.entry_id).collect();
                match (&fee_rows[0].transaction, amount.is_zero()) {
                    (None, true) => {}
                    (None, false) => {
                        report.problem(format!("event {id}: fee {line} of {amount} {asset} has no wallet transaction"))
                    }
                    (Some((transaction_asset, transaction_amount)), _) => {
                        if (transaction_asset, *transaction_amount) != (&asset, -amount) {
                            report.problem(format!(
                                "event {id}: fee {line} is {amount} {asset} but its transaction records {transaction_amount} {transaction_asset}"
                            ));
                        }
                        let postings = fee_rows.iter().filter_map(|row| row.posting.as_ref());
                        let revenue = sum_of(postings, |posting| is_system(posting, SystemAccount::Revenue));
                        if entries.len() != 1 || revenue != amount {
                            report.problem(format!(
                                "event {id}: fee {line} is {amount} {asset} but the ledger moved {revenue} to revenue in {} entries",
                                entries.len()
                            ));
                        }
                    }
                }
            }
        }
    }
    let fees = ledger::count_rows(conn, VerifiedTable::Fees)?;
    if fees > report.fees as i64 {
        report.problem(format!("{} fees belong to no usage event", fees - report.fees as i64));
    }
    Ok(())
}

/// Every top-up's state against its entries. Returns what open top-ups hold, by (mode, asset).
fn verify_top_ups(
    conn: &mut dyn Conn,
    report: &mut VerifyReport,
    chunk: i64,
) -> Result<BTreeMap<(String, String), Decimal>, StoreError> {
    let mut held: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let rows = ledger::top_ups_after(conn, after.as_deref(), chunk)?;
        if rows.is_empty() {
            break;
        }
        for run in runs(rows, |line| line.id.clone()) {
            report.top_ups += 1;
            let top_up = &run[0];
            after = Some(top_up.id.clone());
            let (id, amount) = (&top_up.id, top_up.asset_amount);
            let (mut holds, mut releases, mut credits) = (0, 0, 0);
            for entry in runs(run.iter().filter(|line| line.entry.is_some()).collect(), |line| line.entry.clone()) {
                let Some((entry_id, kind)) = entry[0].entry.clone() else { continue };
                let postings: Vec<&PostingLine> = entry.iter().filter_map(|line| line.posting.as_ref()).collect();
                let incoming = sum_of(postings.iter().copied(), |posting| is_system(posting, SystemAccount::Incoming));
                let hold = sum_of(postings.iter().copied(), |posting| {
                    posting.account == LedgerAccount::Wallet
                        && posting.bucket == Bucket::PendingIn
                        && posting.grant_id.is_none()
                });
                let issued = -sum_of(postings.iter().copied(), |posting| is_system(posting, SystemAccount::Issuance));
                let right = match kind.as_str() {
                    "top_up_pending" => {
                        holds += 1;
                        (incoming, hold) == (-amount, amount)
                    }
                    "top_up_failed" | "top_up_expired" => {
                        releases += 1;
                        (incoming, hold) == (amount, -amount)
                    }
                    "top_up" => {
                        credits += 1;
                        if !incoming.is_zero() {
                            releases += 1;
                        }
                        // A late payment's credit finds the hold already released.
                        issued == amount
                            && ((incoming, hold) == (Decimal::ZERO, Decimal::ZERO)
                                || (incoming, hold) == (amount, -amount))
                    }
                    _ => false,
                };
                if !right {
                    report.problem(format!(
                        "top-up {id}: its {kind} entry {entry_id} does not move {amount} as it should"
                    ));
                }
            }
            let expected = match top_up.status.as_str() {
                "initiated" | "pending" => {
                    *held.entry((top_up.mode.clone(), top_up.asset.clone())).or_default() += amount;
                    Some((1, 0, 0))
                }
                "succeeded" => Some((1, 1, 1)),
                "failed" | "expired" => Some((1, 1, 0)),
                _ => None,
            };
            match expected {
                None => report.problem(format!("top-up {id}: unknown status {:?}", top_up.status)),
                Some(expected) if expected != (holds, releases, credits) => report.problem(format!(
                    "top-up {id} is {} but its entries hold {amount} {holds} times, release it {releases} times and credit it {credits} times",
                    top_up.status
                )),
                Some(_) => {}
            }
        }
    }
    Ok(held)
}

/// Per mode and asset, `incoming` equals what open top-ups hold. (That wallets and system
/// accounts sum to zero follows from every entry balancing and every account agreeing with
/// its postings, both checked already: a separate check would only report those twice.)
fn verify_incoming(report: &mut VerifyReport, held: &BTreeMap<(String, String), Decimal>) {
    let mut assets: BTreeSet<(String, String)> = held.keys().cloned().collect();
    assets.extend(report.system_balances.keys().map(|(mode, asset, _)| (mode.clone(), asset.clone())));
    for (mode, asset) in assets {
        let key = (mode.clone(), asset.clone(), SystemAccount::Incoming.as_str().to_owned());
        let incoming = report.system_balances.get(&key).copied().unwrap_or_default();
        let open = held.get(&(mode.clone(), asset.clone())).copied().unwrap_or_default();
        if incoming != -open {
            report.problem(format!("{mode} {asset}: system:incoming is {incoming} but open top-ups hold {open}"));
        }
    }
}

/// Every hold against its ledger entries (`tally_hold_{id}`): one `hold` entry moved its
/// amount from the wallet's `pending_out` to `held`; its `hold_capture` entries gave back what
/// it says was captured, and its `hold_release` or `hold_expiry` entry what it says was
/// released; its status agrees with what it still holds. Returns what open holds hold, by
/// (mode, asset).
fn verify_holds(
    conn: &mut dyn Conn,
    report: &mut VerifyReport,
    chunk: i64,
) -> Result<BTreeMap<(String, String), Decimal>, StoreError> {
    let mut open: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let rows = holds::with_postings_after(
            conn,
            after.as_ref().map(|(customer, id)| (customer.as_str(), id.as_str())),
            chunk,
        )?;
        if rows.is_empty() {
            break;
        }
        for run in runs(rows, |line| (line.hold.customer_id.clone(), line.hold.id.clone())) {
            report.holds += 1;
            let (mode, hold) = (&run[0].mode, &run[0].hold);
            after = Some((hold.customer_id.clone(), hold.id.clone()));
            let name = format!("hold {} of {}", hold.id, hold.customer_id);
            // What each kind of entry moved into `system:held`, and whether every one of its
            // postings was the wallet's pending_out mirrored by held.
            let mut moved: BTreeMap<&str, Decimal> = BTreeMap::new();
            let mut mirrored = Decimal::ZERO;
            for (kind, account, bucket, amount) in run.iter().filter_map(|line| line.posting.as_ref()) {
                match (account.as_str(), bucket.as_str()) {
                    ("system:held", _) => *moved.entry(kind.as_str()).or_default() += *amount,
                    ("wallet", "pending_out") => mirrored += *amount,
                    _ => report.problem(format!("{name}: its {kind} entry posts to {account} ({bucket})")),
                }
            }
            let total: Decimal = moved.values().copied().sum();
            if total != -mirrored {
                report.problem(format!("{name}: its entries move {total} into held but {mirrored} out of pending_out"));
            }
            let of = |kind: &str| moved.get(kind).copied().unwrap_or_default();
            let checks = [
                ("held", hold.amount, of("hold")),
                ("captured", hold.captured, -of("hold_capture")),
                ("released", hold.released, -of("hold_release") - of("hold_expiry")),
            ];
            for (what, stored, from_ledger) in checks {
                if stored != from_ledger {
                    report.problem(format!("{name}: {what} {stored} but its ledger entries say {from_ledger}"));
                }
            }
            let remaining = hold.remaining();
            let right = match hold.status {
                HoldStatus::Held => remaining > Decimal::ZERO,
                HoldStatus::Captured => remaining.is_zero() && hold.released.is_zero(),
                HoldStatus::Released | HoldStatus::Expired => remaining.is_zero(),
            };
            if !right || hold.captured < Decimal::ZERO || hold.released < Decimal::ZERO {
                report.problem(format!(
                    "{name} is {} but holds {remaining} (amount {}, captured {}, released {})",
                    hold.status.as_str(),
                    hold.amount,
                    hold.captured,
                    hold.released
                ));
            }
            if hold.status == HoldStatus::Held {
                *open.entry((mode.clone(), hold.asset.clone())).or_default() += remaining;
            }
        }
    }
    Ok(open)
}

/// Per mode and asset, `held` equals what open holds hold.
fn verify_held(report: &mut VerifyReport, open: &BTreeMap<(String, String), Decimal>) {
    let mut assets: BTreeSet<(String, String)> = open.keys().cloned().collect();
    assets.extend(report.system_balances.keys().map(|(mode, asset, _)| (mode.clone(), asset.clone())));
    for (mode, asset) in assets {
        let key = (mode.clone(), asset.clone(), SystemAccount::Held.as_str().to_owned());
        let held = report.system_balances.get(&key).copied().unwrap_or_default();
        let holding = open.get(&(mode.clone(), asset.clone())).copied().unwrap_or_default();
        if held != holding {
            report.problem(format!("{mode} {asset}: system:held is {held} but open holds hold {holding}"));
        }
    }
}
