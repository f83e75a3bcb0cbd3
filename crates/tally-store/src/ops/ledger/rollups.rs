//! The rollups (`repo::rollups`) against the fees and costs they total: per customer, a chunk
//! of customers at a time (the database groups equal amounts, Rust adds them exactly), and the
//! platform-wide totals against the sums of the customers' (held per mode, day and asset, or
//! vendor, day, category and currency: bounded by days, not by fees or customers); or, on
//! the fingerprint pass, by linear fingerprints ([`RollupFingerprints`]).

use super::fingerprints::Keys;
use super::linear::{scaled, LinearSides, Wide};
use super::VerifyReport;
use crate::conn::Conn;
use crate::repo::ledger::{self, CostLine, FeeLine, RollupTable, TransactionLine};
use crate::repo::rollups::{self, Rollups, Total};
use crate::StoreError;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;

pub(super) fn verify_rollups(conn: &mut dyn Conn, report: &mut VerifyReport, chunk: i64) -> Result<(), StoreError> {
    let mut shared = Rollups::default();
    let mut after = String::new();
    let (mut fee_rows, mut cost_rows) = (0_i64, 0_i64);
    loop {
        let customers = rollups::customers_after(conn, &after, chunk)?;
        let (Some(first), Some(last)) = (customers.first(), customers.last()) else { break };
        let expected = rollups::expected_for_customers(conn, first, last)?;
        let stored = rollups::stored_for_customers(conn, first, last)?;
        shared.absorb_shared(&expected);
        fee_rows += stored.fees().len() as i64;
        cost_rows += stored.costs().len() as i64;
        compare(report, "fee rollup", expected.fees(), stored.fees(), |total| *total);
        compare(report, "cost rollup", expected.costs(), stored.costs(), |total| *total);
        after = last.clone();
    }
    let stored = rollups::stored_shared(conn)?;
    compare(report, "platform fee rollup", shared.fees_by_mode(), stored.fees_by_mode(), |total| *total);
    compare(report, "vendor cost rollup", shared.costs_by_vendor(), stored.costs_by_vendor(), |(_, total)| *total);
    // The platform's cost totals per mode read these rows by their mode: a row filed under
    // the other mode would move its costs into the other mode's figures.
    for (key, (mode, _)) in shared.costs_by_vendor() {
        match stored.costs_by_vendor().get(key) {
            Some((stored_mode, _)) if stored_mode != mode => report
                .problem(format!("vendor cost rollup {key:?}: filed under mode {stored_mode}, its costs are {mode}")),
            _ => {}
        }
    }
    report.rollups = (fee_rows + cost_rows) as usize + stored.fees_by_mode().len() + stored.costs_by_vendor().len();
    let (all_fee_rows, all_cost_rows) = rollups::count_customer_rows(conn)?;
    if all_fee_rows + all_cost_rows > fee_rows + cost_rows {
        report.problem(format!(
            "{} rollup rows belong to no customer",
            all_fee_rows + all_cost_rows - fee_rows - cost_rows
        ));
    }
    Ok(())
}

/// Reports every key whose stored total (amount and count) is not what the rows add up to.
fn compare<K: Ord + Debug, V>(
    report: &mut VerifyReport,
    what: &str,
    expected: &BTreeMap<K, V>,
    stored: &BTreeMap<K, V>,
    total: impl Fn(&V) -> Total,
) {
    for (key, value) in expected {
        let want = total(value);
        match stored.get(key).map(&total) {
            Some(have) if have == want => {}
            Some(have) => report.problem(format!(
                "{what} {key:?}: holds {} in {} rows but they come to {} in {}",
                have.amount(),
                have.count,
                want.amount(),
                want.count
            )),
            None => {
                report.problem(format!("{what} {key:?}: missing, the rows come to {} in {}", want.amount(), want.count))
            }
        }
    }
    for (key, value) in stored {
        if !expected.contains_key(key) {
            let have = total(value);
            report.problem(format!(
                "{what} {key:?}: holds {} in {} rows but there are none",
                have.amount(),
                have.count
            ));
        }
    }
}

/// The rollups checked by linear fingerprints (`linear`) as the fingerprint pass streams the
/// fees, fee transactions and costs, and, in whichever half is free, the rollup tables once
/// each in stored order (the halves' sums added up before they are compared): no
/// grouping by the database and no key held in memory but the platform-wide ones (bounded by
/// hours). Per relation each fee or cost adds its amount and a count of one under its rollup's
/// key, each stored row (each shard of a platform-wide total) its total and count, and the
/// sums must agree: that is the join pass's comparison of every key's amount and count. A
/// stored row counts at least one fee or cost (every write adds one or more), so a row of a
/// key with none is a count too many.
#[derive(Default)]
pub(super) struct RollupFingerprints {
    /// Per customer: (customer, mode, hour, source, asset, product, price).
    fees: LinearSides,
    fee_run: KeyRun,
    /// Platform-wide: (mode, hour, asset), usage fees only.
    fees_by_mode: LinearSides,
    mode_run: KeyRun,
    /// Per customer: (customer, mode, hour, currency).
    costs: LinearSides,
    cost_run: KeyRun,
    /// Platform-wide: (vendor, mode, hour, category, currency).
    costs_by_vendor: LinearSides,
    vendor_run: KeyRun,
    /// False once a stored row counts nothing.
    rows_count: bool,
    /// Customers that do not exist named by the stored per-customer rows.
    customers_missing: i64,
}

/// Consecutive rows of one key, added up before they are weighed: the fees of a customer's
/// batch share their rollup's key, so most rows cost an addition, not a hash.
#[derive(Default)]
struct KeyRun {
    key: Vec<u8>,
    amount: Wide,
    count: i64,
}

impl KeyRun {
    /// Adds a row of `amount` under the key `keys` holds, weighing the run before it into
    /// `sides` when its key differs.
    fn add(&mut self, keys: &Keys, sides: &mut LinearSides, amount: Decimal) {
        if self.count > 0 && self.key == keys.bytes() {
            self.amount.add(&scaled(amount));
            self.count += 1;
            return;
        }
        self.flush(keys, sides);
        self.key.clear();
        self.key.extend_from_slice(keys.bytes());
        self.amount = scaled(amount);
        self.count = 1;
    }

    fn flush(&mut self, keys: &Keys, sides: &mut LinearSides) {
        if self.count > 0 {
            sides.left(keys.hash_of(&self.key), self.amount, self.count);
            self.count = 0;
        }
    }
}

/// The relations' tags in the hashed tuples (`fingerprints` uses 1 to 3).
const FEE_ROLLUP: u8 = 4;
const MODE_ROLLUP: u8 = 5;
const COST_ROLLUP: u8 = 6;
const VENDOR_ROLLUP: u8 = 7;

impl RollupFingerprints {
    pub(super) fn new() -> Self {
        RollupFingerprints { rows_count: true, ..Self::default() }
    }

    /// A usage event's fee: its customer's rollup and its mode's.
    pub(super) fn usage_fee(&mut self, keys: &mut Keys, fee: &FeeLine) {
        keys.tuple(FEE_ROLLUP)
            .text(fee.customer_id)
            .text(fee.mode)
            .int(fee.hour)
            .text(rollups::USAGE)
            .text(fee.asset)
            .text(fee.product_id)
            .text(fee.price_id);
        self.fee_run.add(keys, &mut self.fees, fee.amount);
        keys.tuple(MODE_ROLLUP).text(fee.mode).int(fee.hour).text(fee.asset);
        self.mode_run.add(keys, &mut self.fees_by_mode, fee.amount);
    }

    /// A transaction, which counts when it is a fee not of a usage event: what it took from
    /// the wallet, under the product and price its details name.
    pub(super) fn transaction(&mut self, keys: &mut Keys, transaction: &TransactionLine) {
        let Some(detail) = transaction.other_fee_detail else { return };
        let (product_id, price_id) = rollups::product_and_price(detail);
        keys.tuple(FEE_ROLLUP)
            .text(transaction.customer_id)
            .text(transaction.mode)
            .int(transaction.hour)
            .text(rollups::source_of(transaction.id))
            .text(transaction.asset)
            .text(&product_id)
            .text(&price_id);
        self.fee_run.add(keys, &mut self.fees, -transaction.amount);
    }

    /// A usage event's vendor cost: its customer's rollup and its vendor's.
    pub(super) fn cost(&mut self, keys: &mut Keys, cost: &CostLine) {
        keys.tuple(COST_ROLLUP).text(cost.customer_id).text(cost.mode).int(cost.hour).text(cost.currency);
        self.cost_run.add(keys, &mut self.costs, cost.amount);
        keys.tuple(VENDOR_ROLLUP)
            .text(cost.vendor_id)
            .text(cost.mode)
            .int(cost.hour)
            .text(cost.category)
            .text(cost.currency);
        self.vendor_run.add(keys, &mut self.costs_by_vendor, cost.amount);
    }

    fn runs_weighed(&self) -> bool {
        [&self.fee_run, &self.mode_run, &self.cost_run, &self.vendor_run].iter().all(|run| run.count == 0)
    }

    /// Weighs the runs still open: call once the fees, fee transactions and costs have all
    /// been added.
    pub(super) fn flush_runs(&mut self, keys: &Keys) {
        for (run, sides) in [
            (&mut self.fee_run, &mut self.fees),
            (&mut self.mode_run, &mut self.fees_by_mode),
            (&mut self.cost_run, &mut self.costs),
            (&mut self.vendor_run, &mut self.costs_by_vendor),
        ] {
            run.flush(keys, sides);
        }
    }

    /// Reads the four rollup tables onto the stored side, and counts their rows as the join
    /// pass does (every per-customer row, and each platform-wide key once). The sides need
    /// not have been added to yet: they are compared once every pass has added its side
    /// ([`RollupFingerprints::absorb`], [`RollupFingerprints::agree`]), so this runs in
    /// whichever half of the verification is free first.
    pub(super) fn read_stored(
        &mut self,
        conn: &mut dyn Conn,
        keys: &mut Keys,
        report: &mut VerifyReport,
    ) -> Result<(), StoreError> {
        let mut rows = 0;
        let mut shared_keys: HashSet<u128> = HashSet::new();
        for table in
            [RollupTable::CustomerFees, RollupTable::CustomerCosts, RollupTable::FeesByMode, RollupTable::CostsByVendor]
        {
            ledger::each_stored_rollup(conn, table, &mut |row| {
                self.rows_count &= row.count >= 1;
                let [first, second, third, fourth, fifth, sixth] = row.texts;
                let (sides, hash) = match table {
                    RollupTable::CustomerFees => {
                        rows += 1;
                        let key = keys.tuple(FEE_ROLLUP).text(first).text(second).int(row.hour);
                        (&mut self.fees, key.text(third).text(fourth).text(fifth).text(sixth).hash())
                    }
                    RollupTable::CustomerCosts => {
                        rows += 1;
                        (
                            &mut self.costs,
                            keys.tuple(COST_ROLLUP).text(first).text(second).int(row.hour).text(third).hash(),
                        )
                    }
                    RollupTable::FeesByMode => {
                        let hash = keys.tuple(MODE_ROLLUP).text(first).int(row.hour).text(second).hash();
                        shared_keys.insert(hash);
                        (&mut self.fees_by_mode, hash)
                    }
                    RollupTable::CostsByVendor => {
                        let key = keys.tuple(VENDOR_ROLLUP).text(first).text(second).int(row.hour);
                        let hash = key.text(third).text(fourth).hash();
                        shared_keys.insert(hash);
                        (&mut self.costs_by_vendor, hash)
                    }
                };
                sides.right_in_parts(hash, row.parts, row.count);
                Ok(())
            })?;
        }
        report.rollups = rows + shared_keys.len();
        // The join pass counts only the rows of customers that exist, and reports the others.
        self.customers_missing = ledger::rollup_customers_missing(conn)?;
        Ok(())
    }

    /// Adds what another half summed (its side of the rows it read). Both halves' runs must
    /// have been weighed ([`RollupFingerprints::flush_runs`]): an open run is not in the sums.
    pub(super) fn absorb(&mut self, other: &RollupFingerprints) {
        debug_assert!(self.runs_weighed() && other.runs_weighed(), "a rollup run left open");
        self.fees.absorb(&other.fees);
        self.fees_by_mode.absorb(&other.fees_by_mode);
        self.costs.absorb(&other.costs);
        self.costs_by_vendor.absorb(&other.costs_by_vendor);
        self.rows_count &= other.rows_count;
        self.customers_missing += other.customers_missing;
    }

    /// Whether the rollups agree with the rows they total, once every side is added.
    pub(super) fn agree(&self) -> bool {
        debug_assert!(self.runs_weighed(), "a rollup run left open");
        self.rows_count
            && self.customers_missing == 0
            && self.fees.agree()
            && self.fees_by_mode.agree()
            && self.costs.agree()
            && self.costs_by_vendor.agree()
    }
}
