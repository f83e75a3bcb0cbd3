//! The fast way to verify: read each large table once, in the order it is stored, check what a
//! row can show alone, and match the tables' sides by order-independent fingerprints instead of
//! joins. Each relation that the join passes check row by row (an entry and the transaction
//! that records it; a usage event and its fees; a fee and its transaction; an entry that took
//! from issuance and the ledger's record of the grant it issued; that record and the grant)
//! is a pair of sums: each side adds a keyed 128-bit hash of the whole tuple it states
//! (customer, transaction id, account, asset, kind, amount moved, revenue; an event's total
//! and currency; a fee's asset and amount; a grant's issue and record) into its sum, modulo
//! 2^128, and the two sums must be equal.
//!
//! Equal sums mean equal multisets of tuples, but for a chance of about 2^-127 per relation:
//! the hash is SipHash-1-3 with a 128-bit output under a random key drawn for each run, so no
//! one can choose rows that cancel. A row missing on one side and another counted twice
//! cannot balance, nor can a field changed on one side only. Where the join passes count
//! (exactly one entry records a transaction, an event has the fees it says), the side that a
//! primary key makes unique (a transaction, an event) meets each matching row of the other
//! side, so a duplicate there is a tuple too many. What a sum cannot show is checked as the
//! rows stream by: an entry's postings balance (entries and their postings are merged in entry
//! order, an entry's postings together), an event's fees have distinct lines, and each
//! account's balances and each grant's remainder equal their postings, summed per account and
//! per grant in memory under a keyed 128-bit hash of its key ([`GatheredAccounts`]: at most
//! [`GATHERED_LIMIT`] of each; past that, the accounts pass reads each range's postings from
//! the database, as the join passes do).
//!
//! The rollups are matched the same way, by linear fingerprints (`rollups`, `linear`): the fees,
//! fee transactions and costs add their amounts under their rollup's key as they stream by,
//! and the rollup tables are each read once, in whichever half is free, the two halves' sums
//! added up before they are compared.
//!
//! The fast way only ever says "clean": on any disagreement, or any problem in the passes it
//! shares with the join passes (accounts, grants, top-ups, holds, fee periods), it returns
//! `None` and `verify` runs the join passes, which name every difference.

use super::rollups::RollupFingerprints;
use super::{moves, verify_account_counts, verify_accounts, verify_accounts_between, verify_the_rest};
use super::{AccountsSeen, Balances, PassTimer, Rollups};
use super::{SystemBalances, Text, VerifyReport};
use crate::conn::{Conn, Dialect};
use crate::repo::ledger::{self, EntryHead, GrantLine, PostingRead, KINDS_WITHOUT_TRANSACTION};
use crate::repo::wallets::AccountKey;
use crate::StoreError;
use rust_decimal::Decimal;
use siphasher::sip128::{Hasher128, SipHasher13};
use std::collections::HashMap;
use std::fmt::Write;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use tally_core::ledger::{Bucket, LedgerAccount, SystemAccount};

/// How many accounts, and how many grants, the fingerprint pass sums in memory at most: past
/// either, the accounts pass reads each range's postings again. An account takes 89 bytes of
/// its table and a grant 49 (a 128-bit key and the sums; `GatheredAccounts`), in tables of a
/// power of two slots at most 7/8 full: at this limit 2^21 slots each, 187 MB and 103 MB, and
/// while a table grows the old one (half the size) is still held: at most about 400 MB. Enough
/// for a store of 1.8 million customers, each with an account and a grant.
pub const GATHERED_LIMIT: usize = 1_800_000;

/// The prefix of the transaction of a usage event's fee: `tally_event_{event}_{line}`.
const EVENT_FEE_PREFIX: &str = "tally_event_";

/// A keyed 128-bit hash of a tuple: its fields written into a buffer, each with its length
/// (so that no two tuples write the same bytes), then hashed once by SipHash-1-3 with a
/// 128-bit output under a random key drawn for each verification.
pub(super) struct Keys {
    key: (u64, u64),
    buffer: Vec<u8>,
}

/// The key of one verification's hashes, drawn at random for each run.
#[derive(Clone, Copy)]
pub(super) struct HashKey(u64, u64);

impl HashKey {
    pub(super) fn random() -> Self {
        HashKey(rand::random(), rand::random())
    }
}

impl Keys {
    fn new(key: HashKey) -> Self {
        Keys { key: (key.0, key.1), buffer: Vec::with_capacity(256) }
    }

    /// Starts the tuple of one relation.
    pub(super) fn tuple(&mut self, relation: u8) -> &mut Self {
        self.buffer.clear();
        self.buffer.push(relation);
        self
    }

    pub(super) fn text(&mut self, text: &str) -> &mut Self {
        self.buffer.extend_from_slice(&(text.len() as u64).to_le_bytes());
        self.buffer.extend_from_slice(text.as_bytes());
        self
    }

    fn optional_text(&mut self, text: Option<&str>) -> &mut Self {
        match text {
            Some(text) => {
                self.buffer.push(1);
                self.text(text)
            }
            None => {
                self.buffer.push(0);
                self
            }
        }
    }

    /// An amount as its value, whatever its scale (`1.50` and `1.5` are the same amount, as
    /// the join passes compare them).
    fn amount(&mut self, amount: Decimal) -> &mut Self {
        let normal = amount.normalize();
        self.buffer.extend_from_slice(&normal.mantissa().to_le_bytes());
        self.buffer.extend_from_slice(&normal.scale().to_le_bytes());
        self
    }

    fn optional_amount(&mut self, amount: Option<Decimal>) -> &mut Self {
        match amount {
            Some(amount) => {
                self.buffer.push(1);
                self.amount(amount)
            }
            None => {
                self.buffer.push(0);
                self
            }
        }
    }

    pub(super) fn int(&mut self, value: i64) -> &mut Self {
        self.buffer.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// The tuple written so far.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buffer
    }

    pub(super) fn hash(&self) -> u128 {
        self.hash_of(&self.buffer)
    }

    /// The hash of a tuple written before (kept from [`bytes`](Self::bytes)).
    pub(super) fn hash_of(&self, tuple: &[u8]) -> u128 {
        let mut hasher = SipHasher13::new_with_keys(self.key.0, self.key.1);
        hasher.write(tuple);
        hasher.finish128().as_u128()
    }
}

/// The relations, each hashed under its own tag (`rollups` has 4 to 7).
const RECORDED: u8 = 1;
const TOTALS: u8 = 2;
const FEE: u8 = 3;
/// The keys of the gathered sums (not relations: hashed the same way, under tags of their own).
const ACCOUNT: u8 = 8;
const GRANT: u8 = 9;
/// Entries that took from the issuance account (left) against the ledger's records of the
/// grants they issued (right).
const ISSUED: u8 = 10;
/// The ledger's records of grants' issue (left) against the grants (right).
const GRANT_RECORD: u8 = 11;

/// A key that is a keyed 128-bit hash already, as two words (so that a table's slot is
/// aligned to 8 bytes, not 16): its table hashes it no further.
type HashedKey = (u64, u64);

fn hashed_key(hash: u128) -> HashedKey {
    (hash as u64, (hash >> 64) as u64)
}

/// The `Hasher` of a table keyed by [`HashedKey`]: the key's low word, which is already a
/// uniform hash under the run's random key.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, _bytes: &[u8]) {
        unreachable!("a hashed key is written as two words")
    }

    fn write_u64(&mut self, word: u64) {
        // The first word written is the low one; the second adds nothing the first lacks.
        if self.0 == 0 {
            self.0 = word | 1;
        }
    }
}

type HashedTable<V> = HashMap<HashedKey, V, BuildHasherDefault<PreHashed>>;

/// What the postings say of each account (its balances and how many entries name it) and of
/// each grant ((available, pending_in) per account and grant id), gathered by the fingerprint
/// pass as the entries stream by. Each is found by a keyed 128-bit hash of its key instead of
/// its text: a few dozen bytes each, whatever the ids' length. Two keys share a hash with a
/// chance of about n^2 / 2^129 for n keys (under 2^-86 for 2 million), and the run's random key
/// means no one can choose ids that do.
pub(super) struct GatheredAccounts {
    keys: Keys,
    accounts: HashedTable<(Balances, i64)>,
    grants: HashedTable<(Decimal, Decimal)>,
}

impl GatheredAccounts {
    fn new(key: HashKey) -> Self {
        GatheredAccounts { keys: Keys::new(key), accounts: HashedTable::default(), grants: HashedTable::default() }
    }

    /// Keys to look the sums up with: one for each thread that reads them.
    pub(super) fn keys(&self) -> Keys {
        Keys { key: self.keys.key, buffer: Vec::with_capacity(256) }
    }

    /// The sums of an account.
    pub(super) fn account(&self, keys: &mut Keys, account: &AccountKey) -> Option<(Balances, i64)> {
        self.accounts.get(&account_key(keys, &account.customer_id, &account.name, &account.asset)).copied()
    }

    /// The sums of a grant of an account.
    pub(super) fn grant(&self, keys: &mut Keys, account: &AccountKey, grant_id: &str) -> Option<(Decimal, Decimal)> {
        self.grants.get(&grant_key(keys, &account.customer_id, &account.name, &account.asset, grant_id)).copied()
    }

    /// How many grants the postings name: each the accounts pass must find on its account.
    pub(super) fn grants(&self) -> usize {
        self.grants.len()
    }
}

fn account_key(keys: &mut Keys, customer_id: &str, name: &str, asset: &str) -> HashedKey {
    hashed_key(keys.tuple(ACCOUNT).text(customer_id).text(name).text(asset).hash())
}

fn grant_key(keys: &mut Keys, customer_id: &str, name: &str, asset: &str, grant_id: &str) -> HashedKey {
    hashed_key(keys.tuple(GRANT).text(customer_id).text(name).text(asset).text(grant_id).hash())
}

/// What `grant` says of its issue, to add up against the ledger's records of grants' issue
/// (the join passes compare them row by row: `verify_grant_issue`).
pub(super) fn grant_record(keys: &mut Keys, grant: &GrantLine) -> u128 {
    grant_record_hash(keys, &grant.key.customer_id, &grant.id, &grant.purpose, grant.amount, grant.cost_basis)
}

/// A grant as its row and the ledger's record of its issue both state it: whose it is, its
/// id, purpose, amount and cost basis.
fn grant_record_hash(
    keys: &mut Keys,
    customer_id: &str,
    grant_id: &str,
    purpose: &str,
    amount: Decimal,
    cost_basis: Option<Decimal>,
) -> u128 {
    keys.tuple(GRANT_RECORD)
        .text(customer_id)
        .text(grant_id)
        .text(purpose)
        .amount(amount)
        .optional_amount(cost_basis)
        .hash()
}

/// The two sides of one relation: each adds the hashes of the tuples it states.
#[derive(Default)]
struct Sides {
    left: u128,
    right: u128,
}

impl Sides {
    fn left(&mut self, hash: u128) {
        self.left = self.left.wrapping_add(hash);
    }

    fn right(&mut self, hash: u128) {
        self.right = self.right.wrapping_add(hash);
    }

    fn agree(&self) -> bool {
        self.left == self.right
    }

    /// Both halves' sums of one relation together (the sums are order-free).
    fn joined(&self, other: &Sides) -> Sides {
        Sides { left: self.left.wrapping_add(other.left), right: self.right.wrapping_add(other.right) }
    }
}

/// What the pass has seen so far.
struct Pass {
    keys: Keys,
    /// False once anything disagrees.
    agree: bool,
    /// Entries (left) against the transactions that record them (right).
    recorded: Sides,
    /// Usage events' fee totals (left) against their fees, grouped by event (right).
    totals: Sides,
    /// Usage fees (left) against their transactions (right).
    fees: Sides,
    /// What entries took from issuance (left) against the grants the ledger says they issued
    /// (right).
    issued: Sides,
    /// The ledger's records of grants' issue (left); the grants' side is gathered by the
    /// accounts pass ([`grant_record`]).
    grant_records: Sides,
    /// Fees, fee transactions and costs (left) against the rollups that total them (right):
    /// one half's pass may hold either side or both, the halves' added up before they are
    /// compared.
    rollups: RollupFingerprints,
    balances: SystemBalances,
    /// Each account's and grant's sums from the postings; `None` past `gathered_limit`.
    accounts: Option<GatheredAccounts>,
    /// How many accounts, and how many grants, `accounts` may hold ([`GATHERED_LIMIT`]).
    gathered_limit: usize,
    /// The account of the latest entry (its key's text and hash, and its sums), taken out of
    /// `accounts` while its entries follow one another (a batch's fees do), so that a posting
    /// costs no lookup.
    current: Option<CurrentAccount>,
    /// A buffer, to allocate once per pass.
    transaction_id: String,
}

/// The account whose entries are streaming by.
struct CurrentAccount {
    customer_id: String,
    name: String,
    asset: String,
    key: HashedKey,
    sums: (Balances, i64),
}

/// One entry as it streams by.
#[derive(Default)]
struct Entry {
    id: i64,
    mode: Text,
    customer_id: Text,
    account_name: Text,
    asset: Text,
    kind: Text,
    transaction_id: Option<Text>,
    grant_id: Option<Text>,
    names_a_transaction: bool,
    postings: usize,
    sum: Decimal,
    moved: Decimal,
    revenue: Decimal,
    /// What its postings to the issuance account add up to (below zero: it issued credit).
    issuance: Decimal,
}

fn set_optional(slot: &mut Option<Text>, value: Option<&str>) {
    match (slot.as_mut(), value) {
        (Some(text), Some(value)) => text.set(value),
        (None, Some(value)) => *slot = Some(Text(value.to_owned())),
        (_, None) => *slot = None,
    }
}

impl Entry {
    /// Starts the entry afresh from what the database says of it.
    fn set(&mut self, head: &EntryHead) {
        self.id = head.entry_id;
        self.mode.set(head.mode);
        self.customer_id.set(head.customer_id);
        self.account_name.set(head.account_name);
        self.asset.set(head.asset);
        self.kind.set(head.kind);
        set_optional(&mut self.transaction_id, head.transaction_id);
        set_optional(&mut self.grant_id, head.grant_id);
        self.names_a_transaction = head.names_a_transaction;
        self.postings = 0;
        self.sum = Decimal::ZERO;
        self.moved = Decimal::ZERO;
        self.revenue = Decimal::ZERO;
        self.issuance = Decimal::ZERO;
    }
}

impl Pass {
    fn new(key: HashKey, gathered_limit: usize) -> Self {
        Pass {
            gathered_limit,
            keys: Keys::new(key),
            agree: true,
            recorded: Sides::default(),
            totals: Sides::default(),
            fees: Sides::default(),
            issued: Sides::default(),
            grant_records: Sides::default(),
            rollups: RollupFingerprints::new(),
            balances: SystemBalances::default(),
            accounts: (gathered_limit > 0).then(|| GatheredAccounts::new(key)),
            current: None,
            transaction_id: String::new(),
        }
    }

    /// Counts a starting entry for its account, whose sums become the current ones.
    fn start_entry(&mut self, entry: &Entry) {
        let Some(accounts) = self.accounts.as_mut() else { return };
        let (customer_id, name, asset) = (&entry.customer_id.0, &entry.account_name.0, &entry.asset.0);
        let same = matches!(&self.current,
            Some(current) if current.customer_id == *customer_id && current.name == *name && current.asset == *asset);
        if !same {
            let key = account_key(&mut accounts.keys, customer_id, name, asset);
            match self.current.as_mut() {
                // The buffers of the key's texts are reused: entries of many customers in turn
                // switch accounts at every entry.
                Some(current) => {
                    accounts.accounts.insert(current.key, current.sums);
                    current.customer_id.clone_from(customer_id);
                    current.name.clone_from(name);
                    current.asset.clone_from(asset);
                    current.key = key;
                    current.sums = accounts.accounts.remove(&key).unwrap_or_default();
                }
                None => {
                    let sums = accounts.accounts.remove(&key).unwrap_or_default();
                    let (customer_id, name, asset) = (customer_id.clone(), name.clone(), asset.clone());
                    self.current = Some(CurrentAccount { customer_id, name, asset, key, sums });
                }
            }
            // The current account is out of its table: count it in, to stay within the limit.
            if accounts.accounts.len() + 1 > self.gathered_limit {
                self.give_up_gathering();
                return;
            }
        }
        if let Some(current) = self.current.as_mut() {
            current.sums.1 += 1;
        }
    }

    /// Stops gathering sums: the accounts pass reads the postings again.
    fn give_up_gathering(&mut self) {
        self.accounts = None;
        self.current = None;
    }

    /// Adds one posting of the entry last started.
    fn add_posting(&mut self, entry: &mut Entry, (account, bucket, grant_id, amount): PostingRead) {
        entry.postings += 1;
        entry.sum += amount;
        entry.moved += moves(account, amount);
        match account {
            LedgerAccount::Wallet => self.gather(bucket, grant_id, amount),
            LedgerAccount::System(system) => {
                match system {
                    SystemAccount::Revenue => entry.revenue += amount,
                    SystemAccount::Issuance => entry.issuance += amount,
                    _ => {}
                }
                self.balances.add(&entry.mode.0, &entry.asset.0, system, amount);
            }
        }
    }

    /// Adds a wallet posting to the current account's sums, and to its grant's if it names one.
    fn gather(&mut self, bucket: Bucket, grant_id: Option<&str>, amount: Decimal) {
        let (Some(accounts), Some(current)) = (self.accounts.as_mut(), self.current.as_mut()) else { return };
        let Some((grant_id, available, pending_in)) = current.sums.0.add(bucket, grant_id, amount) else { return };
        let key = grant_key(&mut accounts.keys, &current.customer_id, &current.name, &current.asset, grant_id);
        if !accounts.grants.contains_key(&key) && accounts.grants.len() >= self.gathered_limit {
            self.give_up_gathering();
            return;
        }
        let sums = accounts.grants.entry(key).or_default();
        sums.0 += available;
        sums.1 += pending_in;
    }

    /// Every account's and grant's sums, once the entries have all gone by (`None` past the
    /// limit).
    fn gathered_accounts(&mut self) -> Option<GatheredAccounts> {
        let mut accounts = self.accounts.take()?;
        if let Some(current) = self.current.take() {
            accounts.accounts.insert(current.key, current.sums);
        }
        Some(accounts)
    }

    /// The checks of one whole entry: it has postings and they balance; one of a kind no
    /// transaction records moves nothing and names no transaction; any other states, by its
    /// fingerprint, the transaction that records it (or moves nothing and names none).
    fn finish_entry(&mut self, entry: &Entry, report: &mut VerifyReport) {
        report.entries += 1;
        report.postings += entry.postings;
        if entry.postings == 0 || !entry.sum.is_zero() {
            self.agree = false;
            return;
        }
        let without_transaction = KINDS_WITHOUT_TRANSACTION.contains(&entry.kind.0.as_str());
        // An entry that took from issuance issued a grant: the ledger's record of that grant
        // names the entry's transaction and the amount taken (the join passes find the entry
        // from the record). Only an entry that `recorded` pairs with its transaction may: that
        // pairing is what makes it the one entry of its transaction, as the join passes count.
        if entry.issuance.is_sign_negative() && !entry.issuance.is_zero() {
            match (&entry.transaction_id, without_transaction) {
                (Some(transaction_id), false) => self.issued.left(issued_hash(
                    &mut self.keys,
                    &entry.customer_id.0,
                    &transaction_id.0,
                    -entry.issuance,
                )),
                _ => self.agree = false,
            }
        }
        if without_transaction {
            if !entry.moved.is_zero() || entry.names_a_transaction {
                self.agree = false;
            }
            return;
        }
        // The transaction the join passes find it by: the one it names, or for an expiry that
        // names none, its grant's expiry transaction.
        let transaction_id = match (&entry.transaction_id, &entry.grant_id) {
            (Some(id), _) => id.0.as_str(),
            (None, Some(grant_id)) if entry.kind.0 == "expiry" => {
                self.transaction_id.clear();
                self.transaction_id.push_str("tally_expiry_");
                self.transaction_id.push_str(&grant_id.0);
                self.transaction_id.as_str()
            }
            (None, _) => {
                if !entry.moved.is_zero() {
                    self.agree = false;
                }
                return;
            }
        };
        // What a usage fee's entry moved to revenue is checked against the fee.
        let revenue = transaction_id.starts_with(EVENT_FEE_PREFIX).then_some(entry.revenue);
        let hash = self
            .keys
            .tuple(RECORDED)
            .text(&entry.customer_id.0)
            .text(transaction_id)
            .text(&entry.account_name.0)
            .text(&entry.asset.0)
            .text(&entry.kind.0)
            .amount(entry.moved)
            .optional_amount(revenue)
            .hash();
        self.recorded.left(hash);
    }
}

/// A grant's issue as its issuing entry and the ledger's record of the grant both state it:
/// whose, by which transaction, and how much was taken from issuance.
fn issued_hash(keys: &mut Keys, customer_id: &str, transaction_id: &str, amount: Decimal) -> u128 {
    keys.tuple(ISSUED).text(customer_id).text(transaction_id).amount(amount).hash()
}

/// The fees of one usage event, as they stream by (they are stored together).
#[derive(Default)]
struct FeeGroup {
    mode: Text,
    event_id: Text,
    customer_id: Text,
    lines: Vec<i64>,
    asset: Text,
    single_asset: bool,
    total: Decimal,
}

impl FeeGroup {
    /// What the event's fees say its total is (none when they are in different assets).
    fn state(&self, keys: &mut Keys) -> u128 {
        let (total, currency) = match self.single_asset {
            true => (Some(self.total), Some(self.asset.0.as_str())),
            false => (None, None),
        };
        keys.tuple(TOTALS)
            .text(&self.mode.0)
            .text(&self.event_id.0)
            .text(&self.customer_id.0)
            .optional_amount(total)
            .optional_text(currency)
            .hash()
    }
}

/// Entries with their postings, merged here rather than joined by the database: a chunk of
/// entries read by id, then their postings. On SQLite the postings are read as the rows of
/// the table that hold them, in the order they are stored, so that neither table is searched
/// row by row: SQLite stores an entry's postings after it, in entry order, and a posting out
/// of that order makes the pass disagree (the join passes then read them by key). On
/// PostgreSQL they are read by their primary key (a range scan of a heap in about that order,
/// where a join would hash both tables and sort the result). A posting of no entry is left
/// out, as the join leaves it, and found by the count of postings.
fn entries_by_merge(
    conn: &mut dyn Conn,
    pass: &mut Pass,
    report: &mut VerifyReport,
    last: i64,
    chunk: i64,
) -> Result<(), StoreError> {
    let mut entries: Vec<Entry> = Vec::new();
    let (mut after, mut rows_after) = (0, 0);
    while after < last {
        let through = after.saturating_add(chunk.max(1)).min(last);
        let mut count = 0;
        ledger::entry_heads_between(conn, after, through, &mut |head| {
            if count == entries.len() {
                entries.push(Entry::default());
            }
            entries[count].set(&head);
            count += 1;
            Ok(())
        })?;
        let entries = &mut entries[..count];
        // The next entry to start, and the one started last.
        let (mut next, mut current): (usize, Option<usize>) = (0, None);
        let mut merge = |entry_id: i64, customer_id: &str, posting: PostingRead| {
            let behind = current.is_some_and(|at| entries[at].id > entry_id);
            if behind || entry_id <= after || entry_id > through {
                pass.agree = false;
                return Ok(());
            }
            while next < entries.len() && entries[next].id <= entry_id {
                if let Some(at) = current {
                    pass.finish_entry(&entries[at], report);
                }
                pass.start_entry(&entries[next]);
                current = Some(next);
                next += 1;
            }
            match current {
                Some(at) if entries[at].id == entry_id && entries[at].customer_id.0 == customer_id => {
                    pass.add_posting(&mut entries[at], posting);
                }
                _ => {}
            }
            Ok(())
        };
        match conn.dialect() {
            Dialect::Sqlite => {
                let rows_through = ledger::last_posting_row_between(conn, after, through)?.unwrap_or(rows_after);
                if rows_through > rows_after {
                    ledger::postings_in_rows(conn, rows_after, rows_through, &mut merge)?;
                    rows_after = rows_through;
                }
            }
            Dialect::Postgres => ledger::postings_between(conn, after, through, &mut merge)?,
        }
        if let Some(at) = current {
            pass.finish_entry(&entries[at], report);
        }
        for entry in &entries[next..] {
            pass.start_entry(entry);
            pass.finish_entry(entry, report);
        }
        after = through;
    }
    Ok(())
}

/// The fast verification on one connection: the two halves one after the other, then the
/// accounts.
pub(super) fn verify(
    conn: &mut dyn Conn,
    chunk: i64,
    gathered_limit: usize,
    first: FirstHalf,
) -> Result<Option<VerifyReport>, StoreError> {
    let key = HashKey::random();
    let shared = SharedPasses::default();
    // The half that runs first claims the shared passes; on two connections, whichever half
    // ends first does.
    let (ledger, books) = match first {
        FirstHalf::Books => {
            let books = books_half(conn, key, &shared)?;
            (ledger_half(conn, chunk, key, gathered_limit, &shared)?, books)
        }
        FirstHalf::Ledger => {
            let ledger = ledger_half(conn, chunk, key, gathered_limit, &shared)?;
            (ledger, books_half(conn, key, &shared)?)
        }
    };
    let Some(agreed) = halves_agree(ledger, books) else { return Ok(None) };
    let mut timer = PassTimer::start();
    let (mut report, gathered) = (agreed.report, agreed.gathered);
    let seen = verify_accounts(conn, &mut report, chunk, gathered.as_ref())?;
    timer.done("accounts");
    finish(conn, chunk, report, gathered.is_some().then_some(agreed.grant_records), seen)
}

/// Which half the fast verification on one connection runs first, and so which of them runs
/// the shared passes ([`SharedPasses`]): the books' usually, the ledger's in the tests that
/// check both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FirstHalf {
    Books,
    Ledger,
}

/// The fast verification on two connections that read one snapshot: the ledger's half on
/// `first` and the books' half on `second` at once, on two threads (they share nothing but
/// the hash key and the claims on the shared passes until their sums are compared), then the
/// accounts, half of the customers on each, then the rest on `first`.
pub(super) fn verify_on_two(
    first: &mut (dyn Conn + Send),
    second: &mut (dyn Conn + Send),
    chunk: i64,
) -> Result<Option<VerifyReport>, StoreError> {
    let key = HashKey::random();
    let shared = SharedPasses::default();
    let (ledger, books) = std::thread::scope(|scope| {
        let books = scope.spawn(|| books_half(&mut *second, key, &shared));
        let ledger = ledger_half(&mut *first, chunk, key, GATHERED_LIMIT, &shared);
        (ledger, books.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let Some(agreed) = halves_agree(ledger?, books?) else { return Ok(None) };
    let mut timer = PassTimer::start();
    let (mut report, gathered) = (agreed.report, agreed.gathered);
    let seen = accounts_on_two(first, second, &mut report, chunk, gathered.as_ref())?;
    timer.done("accounts, on two connections");
    finish(first, chunk, report, gathered.is_some().then_some(agreed.grant_records), seen)
}

/// The accounts pass on two connections at once, each over half of the customers (the
/// gathered sums are only read, so both look them up), then what only the whole can show.
fn accounts_on_two(
    first: &mut (dyn Conn + Send),
    second: &mut (dyn Conn + Send),
    report: &mut VerifyReport,
    chunk: i64,
    gathered: Option<&GatheredAccounts>,
) -> Result<AccountsSeen, StoreError> {
    let Some(middle) = ledger::middle_customer(&mut *first)? else {
        return verify_accounts(first, report, chunk, gathered);
    };
    let (earlier, later) = std::thread::scope(|scope| {
        let later = scope.spawn(|| {
            let mut later = VerifyReport::default();
            verify_accounts_between(&mut *second, &mut later, chunk, gathered, &middle, None).map(|seen| (seen, later))
        });
        let earlier = verify_accounts_between(&mut *first, report, chunk, gathered, "", Some(&middle));
        (earlier, later.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let (later_seen, later) = later?;
    let seen = earlier?.joined(later_seen);
    report.absorb_accounts(later);
    verify_account_counts(first, report, &seen, gathered)?;
    Ok(seen)
}

/// The halves' findings, once their sums agree: the report so far, the gathered sums of
/// the accounts and grants (`None` past the limit), and the ledger's records of grants' issue
/// (the left side of `GRANT_RECORD`).
struct Agreed {
    report: VerifyReport,
    gathered: Option<GatheredAccounts>,
    grant_records: u128,
}

/// Compares the halves' sums: `None` when anything disagrees.
fn halves_agree((mut pass, mut report): (Pass, VerifyReport), mut books: BooksHalf) -> Option<Agreed> {
    // The rollups' sides, the stored one read in whichever half claimed it.
    books.pass.rollups.flush_runs(&books.pass.keys);
    pass.rollups.flush_runs(&pass.keys);
    books.pass.rollups.absorb(&pass.rollups);
    let agree = pass.agree && books.pass.agree && books.pass.rollups.agree();
    let relations = [
        (&pass.recorded, &books.pass.recorded),
        (&pass.totals, &books.pass.totals),
        (&pass.fees, &books.pass.fees),
        (&pass.issued, &books.pass.issued),
    ];
    if !(agree && relations.iter().all(|(one, other)| one.joined(other).agree())) {
        return None;
    }
    // The shared passes ran in whichever half claimed them.
    report.events += books.report.events;
    report.rollups += books.report.rollups;
    report.transactions = books.report.transactions;
    report.fees = books.report.fees;
    Some(Agreed { report, gathered: pass.gathered_accounts(), grant_records: books.pass.grant_records.left })
}

/// After the accounts: with the sums gathered, the accounts pass read the grants without
/// their record of issue, so every grant must state what the ledger recorded
/// (`grant_records`, `None` when the join read it); then what else the join passes check, on
/// `conn`.
fn finish(
    conn: &mut dyn Conn,
    chunk: i64,
    mut report: VerifyReport,
    grant_records: Option<u128>,
    seen: AccountsSeen,
) -> Result<Option<VerifyReport>, StoreError> {
    if grant_records.is_some_and(|records| records != seen.grant_records) {
        return Ok(None);
    }
    let mut timer = PassTimer::start();
    verify_the_rest(conn, &mut report, chunk, &mut timer, Rollups::Checked)?;
    Ok(report.is_clean().then_some(report))
}

/// What the books' half found: its pass and its counts.
struct BooksHalf {
    pass: Pass,
    report: VerifyReport,
}

/// The ledger's half: entries with their postings, a range of ids at a time (each entry adds
/// its side of `recorded`, and its postings the accounts' sums and the system balances).
fn ledger_half(
    conn: &mut dyn Conn,
    chunk: i64,
    key: HashKey,
    gathered_limit: usize,
    shared: &SharedPasses,
) -> Result<(Pass, VerifyReport), StoreError> {
    let mut report = VerifyReport::default();
    let mut pass = Pass::new(key, gathered_limit);
    let mut timer = PassTimer::start();
    let last = ledger::last_entry_id(conn)?;
    entries_by_merge(conn, &mut pass, &mut report, last, chunk)?;
    for (mode, asset, account, balance) in std::mem::take(&mut pass.balances.0) {
        *report.system_balances.entry((mode, asset, account.as_str().to_owned())).or_default() += balance;
    }
    if ledger::count_postings(conn)? != report.postings as i64 {
        pass.agree = false;
    }
    timer.done("entries and postings, by fingerprint");
    shared.run_unclaimed(conn, &mut pass, &mut report, &mut timer)?;
    Ok((pass, report))
}

/// The passes that belong to neither half: the stored rollups (their side of the rollups'
/// sums) and the usage events (their side of `totals`), which the halves' sums join, so each
/// runs in whichever half gets to it first, at the end of each. Which half is the longer
/// depends on the store (on a million customers with an event each, the ledger's; with ten
/// million fees over a million customers, each fee in a rollup row of its own, the books'),
/// so neither placement suits both. The rollups go first: they are the longer where they
/// matter (27-37 s against the events' 15-23 s at 10 million events, docs/benchmarks.md).
#[derive(Default)]
struct SharedPasses {
    stored_rollups: AtomicBool,
    events: AtomicBool,
}

impl SharedPasses {
    /// Runs, into `pass` and `report`, each shared pass no half has claimed yet.
    fn run_unclaimed(
        &self,
        conn: &mut dyn Conn,
        pass: &mut Pass,
        report: &mut VerifyReport,
        timer: &mut PassTimer,
    ) -> Result<(), StoreError> {
        if !self.stored_rollups.swap(true, Ordering::Relaxed) {
            pass.rollups.read_stored(conn, &mut pass.keys, report)?;
            timer.done("stored rollups, by fingerprint");
        }
        if !self.events.swap(true, Ordering::Relaxed) {
            events_pass(conn, pass, report)?;
            timer.done("events, by fingerprint");
        }
        Ok(())
    }
}

/// Usage events: each with fees states their total; one without states none.
fn events_pass(conn: &mut dyn Conn, pass: &mut Pass, report: &mut VerifyReport) -> Result<(), StoreError> {
    let (keys, totals, agree) = (&mut pass.keys, &mut pass.totals, &mut pass.agree);
    ledger::each_event(conn, &mut |event| {
        report.events += 1;
        if event.has_fees {
            totals.left(
                keys.tuple(TOTALS)
                    .text(event.mode)
                    .text(event.id)
                    .text(event.customer_id)
                    .optional_amount(event.total_fees)
                    .optional_text(event.fee_currency)
                    .hash(),
            );
        } else if event.total_fees.is_some() || event.fee_currency.is_some() {
            *agree = false;
        }
        Ok(())
    })
}

/// The books' half: transactions, fees and costs, each table read once (their side of the
/// rollups' sums), and the ledger's records of grants' issue; then the shared passes the
/// ledger's half has not claimed ([`SharedPasses`]).
fn books_half(conn: &mut dyn Conn, key: HashKey, shared: &SharedPasses) -> Result<BooksHalf, StoreError> {
    let mut report = VerifyReport::default();
    // This half gathers no account's sums.
    let mut pass = Pass::new(key, 0);
    let mut timer = PassTimer::start();

    // Transactions: each states the entry that records it, and a fee's its fee.
    let (keys, recorded, fees, rollups) = (&mut pass.keys, &mut pass.recorded, &mut pass.fees, &mut pass.rollups);
    ledger::each_transaction(conn, &mut |transaction| {
        report.transactions += 1;
        rollups.transaction(keys, &transaction);
        let event_fee = transaction.id.starts_with(EVENT_FEE_PREFIX);
        // A fee's entry moves to revenue what the wallet paid.
        let revenue = event_fee.then_some(-transaction.amount);
        recorded.right(
            keys.tuple(RECORDED)
                .text(transaction.customer_id)
                .text(transaction.id)
                .text(transaction.account_name)
                .text(transaction.asset)
                .text(transaction.kind)
                .amount(transaction.amount)
                .optional_amount(revenue)
                .hash(),
        );
        if event_fee {
            fees.right(
                keys.tuple(FEE)
                    .text(transaction.customer_id)
                    .text(transaction.id)
                    .text(transaction.asset)
                    .amount(transaction.amount)
                    .hash(),
            );
        }
        Ok(())
    })?;
    timer.done("transactions, by fingerprint");

    // Fees: each event's together state its total, and each fee that is not zero its
    // transaction.
    let (keys, totals, fees, agree, transaction_id, rollups) = (
        &mut pass.keys,
        &mut pass.totals,
        &mut pass.fees,
        &mut pass.agree,
        &mut pass.transaction_id,
        &mut pass.rollups,
    );
    let (mut group, mut grouping) = (FeeGroup::default(), false);
    ledger::each_fee(conn, &mut |fee| {
        report.fees += 1;
        rollups.usage_fee(keys, &fee);
        let same_event = grouping
            && fee.event_id == group.event_id.0
            && fee.mode == group.mode.0
            && fee.customer_id == group.customer_id.0;
        if !same_event {
            if grouping {
                totals.right(group.state(keys));
            }
            grouping = true;
            group.mode.set(fee.mode);
            group.event_id.set(fee.event_id);
            group.customer_id.set(fee.customer_id);
            group.lines.clear();
            group.asset.set(fee.asset);
            group.single_asset = true;
            group.total = Decimal::ZERO;
        }
        // Two fees of one line are one fee too many (the join passes count the line once).
        if group.lines.contains(&fee.line) {
            *agree = false;
        }
        group.lines.push(fee.line);
        group.single_asset &= fee.asset == group.asset.0;
        group.total += fee.amount;
        if !fee.amount.is_zero() {
            transaction_id.clear();
            write!(transaction_id, "{EVENT_FEE_PREFIX}{}_{}", fee.event_id, fee.line).expect("writes to a String");
            fees.left(
                keys.tuple(FEE).text(fee.customer_id).text(transaction_id).text(fee.asset).amount(-fee.amount).hash(),
            );
        }
        Ok(())
    })?;
    if grouping {
        totals.right(group.state(keys));
    }
    timer.done("fees, by fingerprint");
    let (keys, rollups) = (&mut pass.keys, &mut pass.rollups);
    ledger::each_cost(conn, &mut |cost| {
        rollups.cost(keys, &cost);
        Ok(())
    })?;
    timer.done("costs, by fingerprint");

    // The ledger's records of grants' issue: each states the entry that issued its grant, and
    // the grant (whose side the accounts pass gathers).
    let (keys, issued, grant_records, agree) =
        (&mut pass.keys, &mut pass.issued, &mut pass.grant_records, &mut pass.agree);
    ledger::each_ledger_grant(conn, &mut |record| {
        match record.transaction_id {
            Some(transaction_id) => issued.right(issued_hash(keys, record.customer_id, transaction_id, record.amount)),
            None => *agree = false,
        }
        grant_records.left(grant_record_hash(
            keys,
            record.customer_id,
            record.grant_id,
            record.purpose,
            record.amount,
            record.cost_basis,
        ));
        Ok(())
    })?;
    timer.done("grants' issue, by fingerprint");
    shared.run_unclaimed(conn, &mut pass, &mut report, &mut timer)?;
    Ok(BooksHalf { pass, report })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// Streams one entry of `kind`, naming transaction `T`, that takes 5 from issuance into
    /// the expired account, through a fresh pass: whether the pass still agrees, and the
    /// `issued` side it stated.
    fn one_entry_taking_from_issuance(kind: &str) -> (bool, u128) {
        let mut pass = Pass::new(HashKey::random(), 0);
        let mut entry = Entry::default();
        entry.set(&EntryHead {
            entry_id: 1,
            mode: "test",
            customer_id: "cust_a",
            account_name: "default",
            asset: "IMG",
            kind,
            transaction_id: Some("T"),
            grant_id: None,
            names_a_transaction: false,
        });
        pass.start_entry(&entry);
        let five = Decimal::from_str("5").unwrap();
        for (account, amount) in [(SystemAccount::Issuance, -five), (SystemAccount::Expired, five)] {
            pass.add_posting(&mut entry, (LedgerAccount::System(account), Bucket::Available, None, amount));
        }
        pass.finish_entry(&entry, &mut VerifyReport::default());
        (pass.agree, pass.issued.left)
    }

    /// Only an entry that `recorded` pairs with its transaction (so the one entry of it) may
    /// state a grant's issue: one of a kind no transaction records could be a second entry of
    /// the record's transaction, which the join passes report ("2 ledger entries record its
    /// issue") and the sums could not see.
    #[test]
    fn only_an_entry_with_a_transaction_may_state_a_grants_issue() {
        let (agree, issued) = one_entry_taking_from_issuance("adjustment");
        assert!(agree, "an adjustment that issues credit is an issue, stated");
        assert_ne!(issued, 0);
        for kind in KINDS_WITHOUT_TRANSACTION {
            let (agree, issued) = one_entry_taking_from_issuance(kind);
            assert!(!agree, "an entry of kind {kind} taking from issuance makes the fast path disagree");
            assert_eq!(issued, 0);
        }
    }
}
