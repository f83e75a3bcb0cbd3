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
//! Verification first reads each large table once, in storage order, and matches them by
//! fingerprints (`fingerprints`, [`verify_by_fingerprints`]); only when that finds anything
//! wrong do the join passes below run, to name every difference. The join passes stream: each
//! reads its rows in key order (`repo::ledger`), one
//! statement per chunk with the database joining on keys, and takes them one row at a time
//! (`Conn::query_each`), so memory stays bounded by a chunk of accounts and their grants, and
//! the number of assets, not by the size of the ledger. The passes that keep nothing per row
//! (entries, transactions, events) read each table in one statement on PostgreSQL and a chunk
//! at a time on SQLite (which sorts a statement's rows in memory); the accounts pass takes a
//! range of customers at a time, four statements per range, none per account.

mod fingerprints;
mod linear;
mod rollups;

use crate::conn::{Conn, Dialect};
use crate::repo::holds::{self, HoldStatus};
use crate::repo::ledger::{self, GrantLine, PostingLine, VerifiedTable};
use crate::repo::wallets::AccountKey;
use crate::StoreError;
use fingerprints::{grant_record, FirstHalf, GatheredAccounts};
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
    /// Adds what the accounts pass found over another range of customers.
    fn absorb_accounts(&mut self, other: VerifyReport) {
        self.accounts += other.accounts;
        self.grants += other.grants;
        for problem in other.problems {
            self.problem(problem);
        }
        self.unlisted_problems += other.unlisted_problems;
    }

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

/// Verifies the books: first by fingerprints ([`verify_by_fingerprints`], one read of each
/// table), and only when they disagree, or something else is wrong, by the join passes, which
/// name every difference. Either way the report is the one the join passes would make.
pub fn verify(conn: &mut dyn Conn) -> Result<VerifyReport, StoreError> {
    if let Some(report) = verify_by_fingerprints(conn)? {
        return Ok(report);
    }
    tracing::debug!("ledger verify: the fingerprints disagree, the join passes name the differences");
    let streamed = streamed_chunk(conn);
    verify_with(conn, streamed, ledger::CHUNK)
}

/// [`verify`] on two connections that read one snapshot (`Store::read_pair`): the fast
/// path reads the ledger on one and the other tables on the other at once, so on two cores
/// it takes about the time of its longer half.
pub fn verify_on_two(
    first: &mut (dyn Conn + Send),
    second: &mut (dyn Conn + Send),
) -> Result<VerifyReport, StoreError> {
    if let Some(report) = fingerprints::verify_on_two(first, second, ledger::CHUNK)? {
        return Ok(report);
    }
    tracing::debug!("ledger verify: the fingerprints disagree, the join passes name the differences");
    let streamed = streamed_chunk(first);
    verify_with(first, streamed, ledger::CHUNK)
}

/// The fast path of [`verify`]: `Some` clean report when the fingerprints agree and every
/// other check passes, `None` when anything disagrees (the join passes then say what).
pub fn verify_by_fingerprints(conn: &mut dyn Conn) -> Result<Option<VerifyReport>, StoreError> {
    fingerprints::verify(conn, ledger::CHUNK, fingerprints::GATHERED_LIMIT, FirstHalf::Books)
}

/// [`verify_by_fingerprints`] with the ledger's half first, so that it runs the passes that
/// belong to neither half (the stored rollups, the usage events), which the books' half runs
/// otherwise: tests check the books both ways.
pub fn verify_by_fingerprints_ledger_first(conn: &mut dyn Conn) -> Result<Option<VerifyReport>, StoreError> {
    fingerprints::verify(conn, ledger::CHUNK, fingerprints::GATHERED_LIMIT, FirstHalf::Ledger)
}

/// The fast path of [`verify_on_two`]: `Some` clean report when the fingerprints agree and
/// every other check passes (the accounts pass split between the two connections), `None`
/// when anything disagrees.
pub fn verify_by_fingerprints_on_two(
    first: &mut (dyn Conn + Send),
    second: &mut (dyn Conn + Send),
) -> Result<Option<VerifyReport>, StoreError> {
    fingerprints::verify_on_two(first, second, ledger::CHUNK)
}

/// [`verify_by_fingerprints`], reading `chunk` entries (and accounts) at a time (tests use tiny
/// chunks to cross many chunk boundaries).
pub fn verify_by_fingerprints_in_chunks(conn: &mut dyn Conn, chunk: i64) -> Result<Option<VerifyReport>, StoreError> {
    fingerprints::verify(conn, chunk, fingerprints::GATHERED_LIMIT, FirstHalf::Books)
}

/// [`verify_by_fingerprints`], summing at most `limit` accounts and `limit` grants in memory
/// before it reads the postings again by account instead (tests use tiny limits to stop
/// gathering at any point of the pass).
pub fn verify_by_fingerprints_gathering_at_most(
    conn: &mut dyn Conn,
    limit: usize,
) -> Result<Option<VerifyReport>, StoreError> {
    fingerprints::verify(conn, ledger::CHUNK, limit, FirstHalf::Books)
}

/// The chunk of the passes that stream. PostgreSQL hashes or merges the joined tables once per
/// statement: one statement per pass. SQLite looks rows up by index whatever the chunk, but
/// sorts a statement's rows in memory: a chunk at a time keeps that bounded.
fn streamed_chunk(conn: &dyn Conn) -> i64 {
    match conn.dialect() {
        Dialect::Sqlite => ledger::CHUNK,
        Dialect::Postgres => ledger::STREAMED,
    }
}

/// Logs each pass's time at debug level (`TALLY_LOG=tally_store=debug`), to see where it goes.
struct PassTimer(std::time::Instant);

impl PassTimer {
    fn start() -> Self {
        PassTimer(std::time::Instant::now())
    }

    fn done(&mut self, pass: &str) {
        tracing::debug!(pass, seconds = self.0.elapsed().as_secs_f64(), "ledger verify pass done");
        self.0 = std::time::Instant::now();
    }
}

/// [`verify`], reading `chunk` driving rows at a time in every pass (tests use tiny chunks to
/// cross many chunk boundaries).
pub fn verify_in_chunks(conn: &mut dyn Conn, chunk: i64) -> Result<VerifyReport, StoreError> {
    verify_with(conn, chunk, chunk)
}

/// `streamed`: the chunk of the passes that stream (entries, transactions, events); `chunk`:
/// that of the passes that hold a chunk (accounts, top-ups, holds, rollups).
fn verify_with(conn: &mut dyn Conn, streamed: i64, chunk: i64) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut timer = PassTimer::start();
    verify_entries(conn, &mut report, streamed)?;
    timer.done("entries");
    verify_accounts(conn, &mut report, chunk, None)?;
    timer.done("accounts");
    verify_transactions(conn, &mut report, streamed)?;
    timer.done("transactions");
    verify_events(conn, &mut report, streamed)?;
    timer.done("events");
    verify_the_rest(conn, &mut report, chunk, &mut timer, Rollups::ByJoin)?;
    Ok(report)
}

/// Whether [`verify_the_rest`] checks the rollups (the join passes), or the fingerprint pass
/// has already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rollups {
    ByJoin,
    Checked,
}

/// The passes both ways of verifying share: top-ups, holds, rollups (unless checked already)
/// and fee periods.
fn verify_the_rest(
    conn: &mut dyn Conn,
    report: &mut VerifyReport,
    chunk: i64,
    timer: &mut PassTimer,
    rollups: Rollups,
) -> Result<(), StoreError> {
    let held = verify_top_ups(conn, report, chunk)?;
    verify_incoming(report, &held);
    let held = verify_holds(conn, report, chunk)?;
    verify_held(report, &held);
    timer.done("top-ups and holds");
    if rollups == Rollups::ByJoin {
        rollups::verify_rollups(conn, report, chunk)?;
        timer.done("rollups");
    }
    let stray = ledger::stray_fee_periods(conn)?;
    timer.done("fee periods");
    if stray > 0 {
        report.problem(format!("{stray} plan fee periods name no fee entry, or end before they start"));
    }
    Ok(())
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

/// A reusable text buffer: set in place, so that a streamed pass allocates once per pass, not
/// once per row.
#[derive(Default)]
struct Text(String);

impl Text {
    fn set(&mut self, text: &str) {
        self.0.clear();
        self.0.push_str(text);
    }
}

/// What a wallet transaction moves, from the wallet's side, for one posting: the opposite of
/// what a system posting takes, leaving out `incoming` (money on its way in is not yet the
/// wallet's) and `held` (held money is still the customer's until a capture debits it as a
/// fee).
fn moves(account: LedgerAccount, amount: Decimal) -> Decimal {
    match account {
        LedgerAccount::System(system) if system != SystemAccount::Incoming && system != SystemAccount::Held => -amount,
        _ => Decimal::ZERO,
    }
}

/// One entry of the entries pass, its postings added up as they stream by.
#[derive(Default)]
struct EntryState {
    id: i64,
    mode: Text,
    customer_id: Text,
    asset: Text,
    kind: Text,
    has_transaction: bool,
    postings: usize,
    sum: Decimal,
    moved: Decimal,
}

/// The system balances of the entries pass: a short list (modes × assets × system accounts),
/// searched in place so that adding a posting allocates nothing.
#[derive(Default)]
struct SystemBalances(Vec<(String, String, SystemAccount, Decimal)>);

impl SystemBalances {
    fn add(&mut self, mode: &str, asset: &str, account: SystemAccount, amount: Decimal) {
        match self.0.iter_mut().find(|(m, a, s, _)| m == mode && a == asset && *s == account) {
            Some(balance) => balance.3 += amount,
            None => self.0.push((mode.to_owned(), asset.to_owned(), account, amount)),
        }
    }
}

impl EntryState {
    fn finish(&self, report: &mut VerifyReport) {
        report.entries += 1;
        report.postings += self.postings;
        let id = self.id;
        if self.postings == 0 {
            report.problem(format!("ledger entry {id} has no postings"));
        }
        if !self.sum.is_zero() {
            report.problem(format!("ledger entry {id} does not balance: its postings sum to {}", self.sum));
        }
        if !self.moved.is_zero() && !self.has_transaction {
            report.problem(format!(
                "ledger entry {id} ({}, customer {}) moves money to or from a system account but no transaction records it",
                self.kind.0, self.customer_id.0
            ));
        }
    }
}

/// Every entry balances; system balances per asset; entries that move money have a transaction.
/// Entries and postings are read together, a range of entry ids at a time.
fn verify_entries(conn: &mut dyn Conn, report: &mut VerifyReport, chunk: i64) -> Result<(), StoreError> {
    let last = ledger::last_entry_id(conn)?;
    let mut entry = EntryState::default();
    let mut balances = SystemBalances::default();
    let mut started = false;
    let mut after = 0;
    while after < last {
        let through = after.saturating_add(chunk.max(1)).min(last);
        ledger::entries_between(conn, after, through, &mut |row| {
            if !started || row.entry_id != entry.id {
                if started {
                    entry.finish(report);
                }
                started = true;
                entry.id = row.entry_id;
                entry.mode.set(row.mode);
                entry.customer_id.set(row.customer_id);
                entry.asset.set(row.asset);
                entry.kind.set(row.kind);
                entry.has_transaction = row.has_transaction;
                entry.postings = 0;
                entry.sum = Decimal::ZERO;
                entry.moved = Decimal::ZERO;
            }
            if let Some((account, amount)) = row.posting {
                entry.postings += 1;
                entry.sum += amount;
                entry.moved += moves(account, amount);
                if let LedgerAccount::System(system) = account {
                    balances.add(row.mode, row.asset, system, amount);
                }
            }
            Ok(())
        })?;
        after = through;
    }
    if started {
        entry.finish(report);
    }
    for (mode, asset, account, balance) in balances.0 {
        *report.system_balances.entry((mode, asset, account.as_str().to_owned())).or_default() += balance;
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

/// An account's balances as its postings say.
#[derive(Default, Clone, Copy)]
struct Balances {
    available: Decimal,
    pending_in: Decimal,
    pending_out: Decimal,
    debt: Decimal,
}

impl Balances {
    /// Adds one wallet posting. Returns the grant it names, if any, with what it adds to that
    /// grant: (grant id, available, pending_in).
    fn add<'a>(
        &mut self,
        bucket: Bucket,
        grant_id: Option<&'a str>,
        amount: Decimal,
    ) -> Option<(&'a str, Decimal, Decimal)> {
        let (available, pending_in) = match (bucket, grant_id) {
            (Bucket::Available, None) => {
                self.available += amount;
                self.debt -= amount;
                return None;
            }
            (Bucket::Available, Some(_)) => {
                self.available += amount;
                (amount, Decimal::ZERO)
            }
            // Held money: out of `available`, into `pending_out`. It never names a grant; one
            // that does is counted against the grant, which then disagrees and is reported.
            (Bucket::PendingOut, _) => {
                self.available += amount;
                self.pending_out -= amount;
                (amount, Decimal::ZERO)
            }
            (Bucket::PendingIn, _) => {
                self.pending_in += amount;
                (Decimal::ZERO, amount)
            }
        };
        grant_id.map(|grant_id| (grant_id, available, pending_in))
    }
}

#[derive(Default)]
struct Derived {
    balances: Balances,
    /// Each grant's postings: (available, pending_in).
    per_grant: HashMap<String, (Decimal, Decimal)>,
    /// What the account's open holds still hold.
    open_holds: Decimal,
    /// Problems found with the account's grants, reported after its balances.
    grant_problems: Vec<String>,
}

impl Derived {
    fn add(&mut self, bucket: Bucket, grant_id: Option<&str>, amount: Decimal) {
        let Some((grant_id, available, pending_in)) = self.balances.add(bucket, grant_id, amount) else { return };
        let sums = match self.per_grant.get_mut(grant_id) {
            Some(sums) => sums,
            None => self.per_grant.entry(grant_id.to_owned()).or_default(),
        };
        sums.0 += available;
        sums.1 += pending_in;
    }
}

/// The accounts of a chunk, by key, to their position.
type AccountIndex<'a> = HashMap<(&'a str, &'a str, &'a str), usize>;

/// The key an account is found by in an [`AccountIndex`].
fn account_key_of(key: &AccountKey) -> (&str, &str, &str) {
    (&key.customer_id, &key.name, &key.asset)
}

/// An account's key as one text, to tell one account's postings from the next.
fn account_key_text(buffer: &mut String, customer_id: &str, name: &str, asset: &str) {
    buffer.clear();
    buffer.push_str(customer_id);
    buffer.push('\u{0}');
    buffer.push_str(name);
    buffer.push('\u{0}');
    buffer.push_str(asset);
}

/// What the accounts pass saw of a range of customers, besides the problems it reported.
#[derive(Debug, Default)]
struct AccountsSeen {
    /// Entries on the accounts it read.
    entries_in_accounts: i64,
    /// Grants it found among the gathered sums.
    gathered_grants: usize,
    /// The grants' side of the `GRANT_RECORD` fingerprint (`fingerprints::grant_record`),
    /// added up when the sums were gathered.
    grant_records: u128,
}

impl AccountsSeen {
    /// Both ranges' sightings together.
    fn joined(self, other: AccountsSeen) -> AccountsSeen {
        AccountsSeen {
            entries_in_accounts: self.entries_in_accounts + other.entries_in_accounts,
            gathered_grants: self.gathered_grants + other.gathered_grants,
            grant_records: self.grant_records.wrapping_add(other.grant_records),
        }
    }
}

/// Every account's balances and every grant ([`verify_accounts_between`] over every customer),
/// then what only the whole can show ([`verify_account_counts`]).
fn verify_accounts(
    conn: &mut dyn Conn,
    report: &mut VerifyReport,
    chunk: i64,
    gathered: Option<&GatheredAccounts>,
) -> Result<AccountsSeen, StoreError> {
    let seen = verify_accounts_between(conn, report, chunk, gathered, "", None)?;
    verify_account_counts(conn, report, &seen, gathered)?;
    Ok(seen)
}

/// The balances and grants of the customers after `after` and up to `through` (every one
/// after, if `None`), a range of customers at a time: their accounts, their entries' postings,
/// their grants and their open holds, four statements per range, or three when the
/// fingerprint pass has `gathered` the postings of every account already (each account's sums
/// are then looked up by key).
fn verify_accounts_between(
    conn: &mut dyn Conn,
    report: &mut VerifyReport,
    chunk: i64,
    gathered: Option<&GatheredAccounts>,
    after: &str,
    through: Option<&str>,
) -> Result<AccountsSeen, StoreError> {
    let mut seen = AccountsSeen::default();
    // The gathered sums with the keys this thread looks them up by.
    let mut lookup = gathered.map(|gathered| (gathered, gathered.keys()));
    let mut after = after.to_owned();
    while let Some(customers) = ledger::next_customers(conn, &after, through, chunk)? {
        let accounts = ledger::accounts_of(conn, &customers)?;
        let index: AccountIndex =
            accounts.iter().enumerate().map(|(position, account)| (account_key_of(&account.key), position)).collect();
        let mut key = String::new();
        let mut derived: Vec<Derived> = accounts.iter().map(|_| Derived::default()).collect();
        match lookup.as_mut() {
            Some((gathered, keys)) => {
                for (account, derived) in accounts.iter().zip(derived.iter_mut()) {
                    if let Some((balances, entries)) = gathered.account(keys, &account.key) {
                        derived.balances = balances;
                        seen.entries_in_accounts += entries;
                    }
                }
            }
            None => {
                seen.entries_in_accounts += sum_account_postings(conn, &customers, &index, &mut derived, &mut key)?;
            }
        }
        for (holder, remaining) in ledger::open_holds_of(conn, &customers)? {
            if let Some(&at) = index.get(&account_key_of(&holder)) {
                derived[at].open_holds += remaining;
            }
        }
        // With the sums gathered, the grants' record of issue is matched by fingerprints
        // (`fingerprints::grant_record`): the grants alone are read, not joined.
        let record = match lookup {
            Some(_) => ledger::IssueRecord::Omitted,
            None => ledger::IssueRecord::Joined,
        };
        let grants = ledger::grants_of(conn, &customers, record)?;
        // Each grant's rows together: one read alone, one per issuance posting of its entry
        // joined.
        let mut start = 0;
        while start < grants.len() {
            let length = grants[start..].iter().take_while(|line| line.id == grants[start].id).count();
            let run = &grants[start..start + length];
            start += length;
            let grant = &run[0];
            let Some(&at) = index.get(&account_key_of(&grant.key)) else { continue };
            report.grants += 1;
            let derived = &mut derived[at];
            match lookup.as_mut() {
                Some((gathered, keys)) => {
                    let sums = gathered.grant(keys, &grant.key, &grant.id);
                    seen.gathered_grants += usize::from(sums.is_some());
                    seen.grant_records = seen.grant_records.wrapping_add(grant_record(keys, grant));
                    verify_grant(&mut derived.grant_problems, grant, sums.unwrap_or_default());
                }
                None => {
                    let sums = derived.per_grant.remove(&grant.id).unwrap_or_default();
                    verify_grant(&mut derived.grant_problems, grant, sums);
                    verify_grant_issue(&mut derived.grant_problems, run);
                }
            }
        }
        for (account, derived) in accounts.iter().zip(derived) {
            report.accounts += 1;
            let name = || format!("{}/{}:{}", account.key.customer_id, account.key.name, account.key.asset);
            let checks = [
                ("available", account.available, derived.balances.available),
                ("pending_in", account.pending_in, derived.balances.pending_in),
                ("pending_out", account.pending_out, derived.balances.pending_out),
                ("debt", account.debt, derived.balances.debt),
            ];
            for (field, stored, from_ledger) in checks {
                if stored != from_ledger {
                    report.problem(format!("{}: {field} is {stored} but the ledger says {from_ledger}", name()));
                }
            }
            if account.debt < Decimal::ZERO {
                report.problem(format!("{}: debt is negative ({})", name(), account.debt));
            }
            if account.pending_out != derived.open_holds {
                report.problem(format!(
                    "{}: pending_out is {} but its open holds hold {}",
                    name(),
                    account.pending_out,
                    derived.open_holds
                ));
            }
            for problem in derived.grant_problems {
                report.problem(problem);
            }
            for grant_id in derived.per_grant.keys() {
                report.problem(format!("{}: postings name grant {grant_id}, which this account does not hold", name()));
            }
        }
        match customers.through {
            Some(through) => after = through,
            None => break,
        }
    }
    Ok(seen)
}

/// What only all the accounts together can show: every entry is on an account, every grant
/// belongs to one and was issued once, every grant the postings name is held.
fn verify_account_counts(
    conn: &mut dyn Conn,
    report: &mut VerifyReport,
    seen: &AccountsSeen,
    gathered: Option<&GatheredAccounts>,
) -> Result<(), StoreError> {
    // Each account is read once: the ranges meet end to end (an account read twice would
    // count its entries and grants twice, hiding as many missing ones below).
    let accounts = ledger::count_rows(conn, VerifiedTable::Accounts)?;
    if accounts != report.accounts as i64 {
        report.problem(format!("{accounts} wallet accounts exist but {} were read", report.accounts));
    }
    if let Some(gathered) = gathered {
        let stray = gathered.grants().saturating_sub(seen.gathered_grants);
        if stray > 0 {
            report.problem(format!("postings name {stray} grants that the accounts they are on do not hold"));
        }
    }
    let entries = ledger::count_rows(conn, VerifiedTable::Entries)?;
    if entries > seen.entries_in_accounts {
        report.problem(format!(
            "{} ledger entries name a wallet account that does not exist",
            entries - seen.entries_in_accounts
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

/// Adds the postings of the accounts of `customers` (found by `index`) into `derived`, one
/// statement for the range. Returns how many entries named one of those accounts.
fn sum_account_postings(
    conn: &mut dyn Conn,
    customers: &ledger::Customers,
    index: &AccountIndex,
    derived: &mut [Derived],
    key: &mut String,
) -> Result<i64, StoreError> {
    let mut entries = 0;
    // The account of the previous row and its position (None: no such account), and the
    // previous row's entry.
    let (mut current, mut current_at, mut last_entry) = (String::from("\u{1}"), None, None);
    ledger::account_postings_of(conn, customers, &mut |row| {
        account_key_text(key, row.customer_id, row.account_name, row.asset);
        if *key != current {
            std::mem::swap(key, &mut current);
            current_at = index.get(&(row.customer_id, row.account_name, row.asset)).copied();
            last_entry = None;
        }
        let Some(at) = current_at else { return Ok(()) };
        if last_entry != Some(row.entry_id) {
            entries += 1;
            last_entry = Some(row.entry_id);
        }
        if let Some((LedgerAccount::Wallet, bucket, grant_id, amount)) = row.posting {
            derived[at].add(bucket, grant_id, amount);
        }
        Ok(())
    })?;
    Ok(entries)
}

/// One grant against what its postings add up to, `(available, pending_in)`: its remainder
/// and its state.
fn verify_grant(problems: &mut Vec<String>, grant: &GrantLine, (available, pending_in): (Decimal, Decimal)) {
    let id = &grant.id;
    let from_ledger = available + pending_in;
    if grant.remaining != from_ledger {
        problems.push(format!("grant {id}: remaining is {} but the ledger says {from_ledger}", grant.remaining));
    }
    if grant.remaining < Decimal::ZERO {
        problems.push(format!("grant {id}: remaining is below zero"));
    }
    match grant.state.as_str() {
        "pending" if !available.is_zero() => {
            problems.push(format!("grant {id}: not yet effective, but {available} of it is available"))
        }
        "active" if !pending_in.is_zero() => {
            problems.push(format!("grant {id}: effective, but {pending_in} of it is still pending"))
        }
        "expired" if !grant.remaining.is_zero() || !from_ledger.is_zero() => {
            problems.push(format!("grant {id}: expired but still holds {from_ledger}"))
        }
        "pending" | "active" | "expired" => {}
        other => problems.push(format!("grant {id}: unknown state {other:?}")),
    }
}

/// One grant (its rows, one per issuance posting of its making entry) against the ledger's
/// record of its issue and what its making entry took from the issuance account.
fn verify_grant_issue(problems: &mut Vec<String>, run: &[GrantLine]) {
    let grant = &run[0];
    let id = &grant.id;
    let Some((purpose, amount)) = &grant.issued else {
        problems.push(format!("grant {id}: the ledger has no record of its issue"));
        return;
    };
    if &grant.purpose != purpose {
        problems.push(format!("grant {id}: purpose is {} but the ledger issued it as {purpose}", grant.purpose));
    }
    if &grant.amount != amount {
        problems.push(format!("grant {id}: amount is {} but the ledger issued {amount}", grant.amount));
    }
    // The revenue report values the grant at the cost basis the ledger recorded.
    if grant.cost_basis != grant.issued_cost_basis {
        problems.push(format!(
            "grant {id}: cost basis is {:?} but the ledger issued it at {:?}",
            grant.cost_basis, grant.issued_cost_basis
        ));
    }
    let entries: BTreeSet<i64> = run.iter().filter_map(|line| line.issuing_entry).collect();
    let issued_by_entry: Decimal = -run.iter().filter_map(|line| line.issuance).sum::<Decimal>();
    if entries.len() != 1 {
        problems.push(format!("grant {id}: {} ledger entries record its issue, not one", entries.len()));
    } else if issued_by_entry != *amount {
        problems.push(format!("grant {id}: issued as {amount} but its entry took {issued_by_entry} from issuance"));
    }
}

/// One transaction of the transactions pass, with what its entries' rows showed.
#[derive(Default)]
struct TransactionState {
    customer_id: Text,
    id: Text,
    kind: Text,
    account_name: Text,
    asset: Text,
    amount: Decimal,
    /// The distinct entries recording it (the first's account name, asset and kind kept).
    entries: Vec<i64>,
    entry_account: Text,
    entry_asset: Text,
    entry_kind: Text,
    moved: Decimal,
}

impl TransactionState {
    fn finish(&self, report: &mut VerifyReport) {
        report.transactions += 1;
        let name = format!("transaction {} of {}", self.id.0, self.customer_id.0);
        match self.entries.len() {
            0 if self.amount.is_zero() => return,
            0 => {
                report.problem(format!("{name}: no ledger entry records it"));
                return;
            }
            1 => {}
            count => {
                report.problem(format!("{name}: {count} ledger entries record it, not one"));
                return;
            }
        }
        let entry_id = self.entries[0];
        if (&self.entry_account.0, &self.entry_asset.0) != (&self.account_name.0, &self.asset.0) {
            report.problem(format!(
                "{name}: it is on {}:{} but its ledger entry {entry_id} is on {}:{}",
                self.account_name.0, self.asset.0, self.entry_account.0, self.entry_asset.0
            ));
        }
        if self.entry_kind.0 != self.kind.0 {
            report.problem(format!(
                "{name}: it is a {} but its ledger entry {entry_id} is a {}",
                self.kind.0, self.entry_kind.0
            ));
        }
        if self.moved != self.amount {
            report.problem(format!("{name}: amount is {} but its ledger entry moves {}", self.amount, self.moved));
        }
    }
}

/// Every transaction against the one entry that records it.
fn verify_transactions(conn: &mut dyn Conn, report: &mut VerifyReport, chunk: i64) -> Result<(), StoreError> {
    let mut state = TransactionState::default();
    let mut started = false;
    loop {
        let mut rows = 0;
        let after = started.then(|| (state.customer_id.0.clone(), state.id.0.clone()));
        ledger::transactions_after(
            conn,
            after.as_ref().map(|(customer, id)| (customer.as_str(), id.as_str())),
            chunk,
            &mut |row| {
                rows += 1;
                if !started || row.id != state.id.0 || row.customer_id != state.customer_id.0 {
                    if started {
                        state.finish(report);
                    }
                    started = true;
                    state.customer_id.set(row.customer_id);
                    state.id.set(row.id);
                    state.kind.set(row.kind);
                    state.account_name.set(row.account_name);
                    state.asset.set(row.asset);
                    state.amount = row.amount;
                    state.entries.clear();
                    state.moved = Decimal::ZERO;
                }
                if let Some((entry_id, account_name, asset, kind)) = row.entry {
                    if !state.entries.contains(&entry_id) {
                        if state.entries.is_empty() {
                            state.entry_account.set(account_name);
                            state.entry_asset.set(asset);
                            state.entry_kind.set(kind);
                        }
                        state.entries.push(entry_id);
                    }
                }
                if let Some((account, amount)) = row.posting {
                    state.moved += moves(account, amount);
                }
                Ok(())
            },
        )?;
        if rows == 0 {
            break;
        }
    }
    if started {
        state.finish(report);
    }
    Ok(())
}

/// One fee of an event in the events pass.
#[derive(Default)]
struct FeeState {
    line: i64,
    asset: Text,
    amount: Decimal,
    /// The fee's transaction: whether there is one, its asset and amount.
    transaction: Option<Decimal>,
    transaction_asset: Text,
    entries: Vec<i64>,
    revenue: Decimal,
}

/// One usage event of the events pass, with its fees (kept for reuse from event to event).
#[derive(Default)]
struct EventState {
    mode: Text,
    id: Text,
    has_fees: bool,
    total_fees: Option<Decimal>,
    fee_currency: Option<String>,
    fees: Vec<FeeState>,
    count: usize,
}

impl EventState {
    fn finish(&self, report: &mut VerifyReport) {
        report.events += 1;
        let id = &self.id.0;
        let fees = &self.fees[..self.count];
        report.fees += fees.len();
        if self.has_fees == fees.is_empty() {
            report.problem(format!("event {id}: has_fees is {} but it has {} fees", self.has_fees, fees.len()));
        }
        let single_asset = fees.first().filter(|first| fees.iter().all(|fee| fee.asset.0 == first.asset.0));
        let expected = match single_asset {
            Some(first) => (Some(fees.iter().map(|fee| fee.amount).sum::<Decimal>()), Some(first.asset.0.clone())),
            None => (None, None),
        };
        if (self.total_fees, self.fee_currency.clone()) != expected {
            report.problem(format!(
                "event {id}: total_fees is {:?} {:?} but its fees come to {:?} {:?}",
                self.total_fees, self.fee_currency, expected.0, expected.1
            ));
        }
        for fee in fees {
            let (line, asset, amount) = (fee.line, &fee.asset.0, fee.amount);
            match (fee.transaction, amount.is_zero()) {
                (None, true) => {}
                (None, false) => {
                    report.problem(format!("event {id}: fee {line} of {amount} {asset} has no wallet transaction"))
                }
                (Some(transaction_amount), _) => {
                    let transaction_asset = &fee.transaction_asset.0;
                    if (transaction_asset, transaction_amount) != (asset, -amount) {
                        report.problem(format!(
                            "event {id}: fee {line} is {amount} {asset} but its transaction records {transaction_amount} {transaction_asset}"
                        ));
                    }
                    if fee.entries.len() != 1 || fee.revenue != amount {
                        report.problem(format!(
                            "event {id}: fee {line} is {amount} {asset} but the ledger moved {} to revenue in {} entries",
                            fee.revenue,
                            fee.entries.len()
                        ));
                    }
                }
            }
        }
    }
}

/// Every usage event's fees against their total and their ledger movements.
fn verify_events(conn: &mut dyn Conn, report: &mut VerifyReport, chunk: i64) -> Result<(), StoreError> {
    let mut event = EventState::default();
    let mut started = false;
    loop {
        let mut rows = 0;
        let after = started.then(|| (event.mode.0.clone(), event.id.0.clone()));
        ledger::events_after(conn, after.as_ref().map(|(mode, id)| (mode.as_str(), id.as_str())), chunk, &mut |row| {
            rows += 1;
            if !started || row.id != event.id.0 || row.mode != event.mode.0 {
                if started {
                    event.finish(report);
                }
                started = true;
                event.mode.set(row.mode);
                event.id.set(row.id);
                event.has_fees = row.has_fees;
                event.total_fees = row.total_fees;
                event.fee_currency = row.fee_currency.map(str::to_owned);
                event.count = 0;
            }
            let Some((line, asset, amount)) = row.fee else { return Ok(()) };
            if event.count == 0 || event.fees[event.count - 1].line != line {
                if event.count == event.fees.len() {
                    event.fees.push(FeeState::default());
                }
                let fee = &mut event.fees[event.count];
                event.count += 1;
                fee.line = line;
                fee.asset.set(asset);
                fee.amount = amount;
                fee.transaction = row.transaction.map(|(_, amount)| amount);
                fee.transaction_asset.set(row.transaction.map_or("", |(asset, _)| asset));
                fee.entries.clear();
                fee.revenue = Decimal::ZERO;
            }
            let fee = &mut event.fees[event.count - 1];
            if let Some(entry_id) = row.entry_id {
                if !fee.entries.contains(&entry_id) {
                    fee.entries.push(entry_id);
                }
            }
            if let Some((LedgerAccount::System(SystemAccount::Revenue), amount)) = row.posting {
                fee.revenue += amount;
            }
            Ok(())
        })?;
        if rows == 0 {
            break;
        }
    }
    if started {
        event.finish(report);
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
