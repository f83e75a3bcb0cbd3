//! The in-memory grant cache never vouches for grants the database does not hold: a write
//! that saved an account and then rolled back leaves nothing behind that a later write uses.

use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use tally_core::asset::AssetCode;
use tally_core::charge::ChargeInputs;
use tally_core::Mode;
use tally_store::ops::customers::{self as customer_ops, NewCustomer};
use tally_store::ops::wallet::{self as wallet_ops, Adjustment, AdjustmentReason, Charge};
use tally_store::ops::{ledger, OpError};
use tally_store::{Conn, DatabaseUrl, Store};

const GIFTS: i64 = 20;

fn charge(transaction_id: &str, amount: i64) -> Charge {
    Charge {
        transaction_id: transaction_id.into(),
        account_name: "default".into(),
        asset: AssetCode::parse("USD").unwrap(),
        amount: Decimal::from(amount),
        inputs: ChargeInputs::default(),
        subject: None,
        description: None,
        metadata: BTreeMap::new(),
    }
}

fn remaining_by_grant(conn: &mut dyn Conn) -> Vec<String> {
    conn.query("SELECT id, remaining, is_open FROM grants ORDER BY id", &[])
        .unwrap()
        .into_iter()
        .map(|row| format!("{:?}", row.0))
        .collect()
}

#[test]
fn a_rolled_back_save_is_never_served_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tally.db").display());
    let store = Store::open(&DatabaseUrl::parse(&url).unwrap()).unwrap();
    store.migrate().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
    let customer = store
        .write(|conn| {
            customer_ops::create(conn, Mode::Test, &NewCustomer { name: "Cache".into(), ..NewCustomer::default() }, now)
        })
        .unwrap()
        .id;
    // Enough grants for the cache to keep the account, each expiring at its own time.
    for index in 0..GIFTS {
        let gift = Adjustment {
            transaction_id: format!("gift-{index}"),
            account_name: "default".into(),
            asset: AssetCode::parse("USD").unwrap(),
            amount: Decimal::ONE,
            description: None,
            reason: AdjustmentReason::Gift,
            effective_at: None,
            expires_at: Some(now + chrono::Duration::days(30 + index)),
            metadata: BTreeMap::new(),
        };
        store.write(|conn| wallet_ops::adjust(conn, Mode::Test, &customer, &gift, now)).unwrap();
    }
    let before = store.read(|conn| Ok::<_, OpError>(remaining_by_grant(conn))).unwrap();

    // A charge that is saved, then rolled back by a later failure in the same transaction.
    let rolled_back: Result<(), OpError> = store.write(|conn| {
        wallet_ops::charge(conn, Mode::Test, &customer, &charge("spent-then-undone", 5), now)?;
        Err(OpError::Conflict("undo".into()))
    });
    assert!(rolled_back.is_err());
    assert_eq!(store.read(|conn| Ok::<_, OpError>(remaining_by_grant(conn))).unwrap(), before, "the rollback undid it");

    // The next charge burns from the grants the database holds: the soonest-expiring ones
    // still hold 1 each, so the first three pay 3, and every balance agrees with the ledger.
    store.write(|conn| wallet_ops::charge(conn, Mode::Test, &customer, &charge("real", 3), now)).unwrap();
    let remaining: Vec<String> = store
        .read(|conn| {
            let rows = conn.query("SELECT remaining FROM grants ORDER BY expires_at", &[])?;
            rows.iter().map(|row| row.text(0)).collect::<Result<Vec<_>, _>>().map_err(OpError::from)
        })
        .unwrap();
    let spent: Vec<usize> = (0..remaining.len()).filter(|index| remaining[*index] == "0").collect();
    assert_eq!(spent, vec![0, 1, 2], "the three soonest-expiring grants paid, as burn order says: {remaining:?}");
    let report = store.read(ledger::verify).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}
