//! `wallet::adjust_many` (used by `tally bench --grants` to give accounts thousands of grants)
//! leaves exactly what as many calls of `wallet::adjust` leave: a transaction, a ledger entry
//! and a grant of its own for each credit, replayable by its transaction id.

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use tally_core::asset::AssetCode;
use tally_core::Mode;
use tally_store::ops::customers::{self as customer_ops, NewCustomer};
use tally_store::ops::wallet::{self as wallet_ops, Adjustment, AdjustmentReason};
use tally_store::ops::{ledger, OpError};
use tally_store::{params, Conn, DatabaseUrl, Store};

fn gift(index: i64, now: DateTime<Utc>) -> Adjustment {
    Adjustment {
        transaction_id: format!("gift-{index}"),
        account_name: "default".into(),
        asset: AssetCode::parse("USD").unwrap(),
        amount: Decimal::from(10 + index),
        description: Some(format!("Gift {index}")),
        reason: AdjustmentReason::Gift,
        effective_at: None,
        expires_at: Some(now + chrono::Duration::days(30 + index)),
        metadata: BTreeMap::new(),
    }
}

/// What a customer's wallet holds, without the ids Tally makes (grant ids, customer ids).
fn holdings(conn: &mut dyn Conn, customer: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let grants = conn
        .query(
            "SELECT transaction_id, purpose, amount, remaining, state, is_open, expires_at FROM grants
             WHERE customer_id = $1 ORDER BY transaction_id",
            params![customer],
        )
        .unwrap();
    lines.extend(grants.into_iter().map(|row| format!("grant {:?}", row.0)));
    let transactions = conn
        .query(
            "SELECT id, kind, amount, description, detail, request_hash FROM transactions WHERE customer_id = $1 ORDER BY id",
            params![customer],
        )
        .unwrap();
    lines.extend(transactions.into_iter().map(|row| format!("transaction {:?}", row.0)));
    let balance = conn
        .query("SELECT available, pending_in, debt FROM wallet_accounts WHERE customer_id = $1", params![customer])
        .unwrap();
    lines.extend(balance.into_iter().map(|row| format!("account {:?}", row.0)));
    lines
}

fn setup() -> (tempfile::TempDir, Store, DateTime<Utc>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tally.db").display());
    let store = Store::open(&DatabaseUrl::parse(&url).unwrap()).unwrap();
    store.migrate().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
    let customer = |name: &str| {
        store
            .write(|conn| {
                customer_ops::create(
                    conn,
                    Mode::Test,
                    &NewCustomer { name: name.into(), ..NewCustomer::default() },
                    now,
                )
            })
            .unwrap()
            .id
    };
    let (one_by_one, batched) = (customer("One by one"), customer("Batched"));
    (dir, store, now, one_by_one, batched)
}

#[test]
fn a_batch_of_credits_leaves_what_as_many_adjustments_leave() {
    let (_dir, store, now, one_by_one, batched) = setup();
    let gifts: Vec<Adjustment> = (0..5).map(|index| gift(index, now)).collect();
    for adjustment in &gifts {
        store.write(|conn| wallet_ops::adjust(conn, Mode::Test, &one_by_one, adjustment, now)).unwrap();
    }
    let outcomes = store.write(|conn| wallet_ops::adjust_many(conn, Mode::Test, &batched, &gifts, now)).unwrap();
    assert_eq!(outcomes.len(), 5);
    assert!(outcomes.iter().all(|outcome| !outcome.replayed));
    let expected = store.read(|conn| Ok::<_, OpError>(holdings(conn, &one_by_one))).unwrap();
    let made = store.read(|conn| Ok::<_, OpError>(holdings(conn, &batched))).unwrap();
    assert_eq!(expected.len(), 11, "5 grants, 5 transactions, 1 account: {expected:#?}");
    assert_eq!(made, expected);

    // Each credit replays by its id, alone or in a batch, and changes nothing.
    let replayed = store.write(|conn| wallet_ops::adjust(conn, Mode::Test, &batched, &gifts[2], now)).unwrap();
    assert!(replayed.replayed);
    let again = store.write(|conn| wallet_ops::adjust_many(conn, Mode::Test, &batched, &gifts, now)).unwrap();
    assert!(again.iter().all(|outcome| outcome.replayed));
    assert_eq!(store.read(|conn| Ok::<_, OpError>(holdings(conn, &batched))).unwrap(), expected);

    let report = store.read(ledger::verify).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[test]
fn a_batch_with_a_debit_or_a_repeated_id_changes_nothing() {
    let (_dir, store, now, _, customer) = setup();
    let debit =
        Adjustment { amount: Decimal::from(-1), expires_at: None, reason: AdjustmentReason::Other, ..gift(9, now) };
    for batch in [vec![gift(0, now), debit], vec![gift(0, now), gift(1, now), gift(0, now)]] {
        let refused = store.write(|conn| wallet_ops::adjust_many(conn, Mode::Test, &customer, &batch, now));
        assert!(matches!(refused, Err(OpError::Invalid(_) | OpError::Conflict(_))), "{refused:?}");
        let left = store.read(|conn| Ok::<_, OpError>(holdings(conn, &customer))).unwrap();
        assert!(left.iter().all(|line| !line.starts_with("grant") && !line.starts_with("transaction")), "{left:#?}");
    }
}
