//! The rollups (`repo::rollups`) against the fees and costs they total: per customer, a chunk
//! of customers at a time (the database groups equal amounts, Rust adds them exactly), and the
//! platform-wide totals against the sums of the customers' (held per mode, day and asset, or
//! vendor, day, category and currency: bounded by days, not by fees or customers).

use super::VerifyReport;
use crate::conn::Conn;
use crate::repo::rollups::{self, Rollups, Total};
use crate::StoreError;
use std::collections::BTreeMap;
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
                have.amount, have.count, want.amount, want.count
            )),
            None => {
                report.problem(format!("{what} {key:?}: missing, the rows come to {} in {}", want.amount, want.count))
            }
        }
    }
    for (key, value) in stored {
        if !expected.contains_key(key) {
            let have = total(value);
            report.problem(format!("{what} {key:?}: holds {} in {} rows but there are none", have.amount, have.count));
        }
    }
}
