//! The background jobs keep going when one item fails, and compare money exactly.

use crate::harness::TestApp;
use crate::on_both_backends;
use chrono::{Duration, Utc};
use serde_json::json;
use tally_core::Mode;
use tally_store::ops::auto_top_up::{self as auto_ops, Settings};
use tally_store::repo::job_retries;
use tally_store::repo::topups::{self as topup_repo, PaymentMethod};
use tally_store::repo::wallets::AccountKey;

/// Runs `sql` with `customer` as `$1` on the test's database, as an operator's mistake or a bad
/// restore would.
async fn tamper(app: &TestApp, sql: &'static str, customer: &str) {
    let (store, customer) = (app.store.clone(), customer.to_owned());
    tokio::task::spawn_blocking(move || {
        store
            .write(|conn| {
                conn.execute(sql, tally_store::params![customer.as_str()])?;
                // Grants edited by hand: the in-memory grant cache must not vouch for them.
                conn.execute(
                    "UPDATE wallet_accounts SET state_token = 0 WHERE customer_id = $1",
                    tally_store::params![customer.as_str()],
                )
            })
            .unwrap()
    })
    .await
    .unwrap();
}

async fn count(app: &TestApp, sql: &'static str, customer: &str) -> i64 {
    let (store, customer) = (app.store.clone(), customer.to_owned());
    tokio::task::spawn_blocking(move || {
        store.read(|conn| conn.count(sql, tally_store::params![customer.as_str()])).unwrap()
    })
    .await
    .unwrap()
}

/// Gives `customer` a gift of 5 USD that expires `hours` from the server's now.
async fn expiring_gift(app: &TestApp, customer: &str, hours: i64) {
    let expires_at = (app.clock.now() + Duration::hours(hours)).to_rfc3339();
    let gift =
        json!({"transaction_id": "gift", "asset": "USD", "amount": 5, "reason": "gift", "expires_at": expires_at});
    app.post(&format!("/customers/{customer}/wallet/adjustments"), gift).await.expect(201);
}

/// A customer whose stored grants Tally cannot read fails to settle every time. The worker
/// claims the most overdue customer first, so before this rule that customer, due first,
/// stalled every settlement behind it. Now its failure is recorded with a time to retry,
/// and the other customers' expiries are written at their own instants all the same.
async fn one_failing_customer_never_blocks_the_others(app: TestApp) {
    let poisoned = app.customer("Poisoned").await;
    let healthy = app.customer("Healthy").await;
    expiring_gift(&app, &poisoned, 1).await;
    expiring_gift(&app, &healthy, 2).await;
    tamper(&app, "UPDATE grants SET purpose = 'bogus' WHERE customer_id = $1", &poisoned).await;
    app.clock.advance(Duration::hours(3));
    // Counted in the database: reading the wallet over HTTP would settle it on the spot.
    let expiries = "SELECT COUNT(*) FROM transactions WHERE customer_id = $1 AND kind = 'expiry'";
    app.eventually("the healthy customer's gift expires", || async { count(&app, expiries, &healthy).await == 1 })
        .await;
    let waiting = "SELECT COUNT(*) FROM job_retries WHERE job = 'settle_grants' AND item = $1 AND attempts >= 1";
    assert_eq!(count(&app, waiting, &poisoned).await, 1, "the failing customer waits to be retried");
    assert_eq!(count(&app, expiries, &poisoned).await, 0);
    assert_eq!(app.balances(&healthy, "default:USD").await.0, "0");

    // Repaired, it settles at its next retry, and its failures are forgotten.
    tamper(&app, "UPDATE grants SET purpose = 'promotion' WHERE customer_id = $1", &poisoned).await;
    app.clock.advance(Duration::seconds(job_retries::MAX_RETRY_SECONDS));
    app.eventually("the repaired customer's gift expires", || async { count(&app, expiries, &poisoned).await == 1 })
        .await;
    app.eventually("its failures are forgotten", || async { count(&app, waiting, &poisoned).await == 0 }).await;
    app.assert_ledger_agrees().await;
}

/// Saves a test card that the test provider charges successfully.
async fn save_card(app: &TestApp, customer: &str) -> String {
    let store = app.store.clone();
    let method = PaymentMethod {
        id: tally_store::ids::new_id("pm"),
        customer_id: customer.to_owned(),
        provider: "test".into(),
        provider_reference: "pm_test_card_4242424242424242".into(),
        provider_customer: None,
        brand: Some("visa".into()),
        last4: Some("4242".into()),
        expiry: None,
        created_at: Utc::now(),
    };
    let id = method.id.clone();
    tokio::task::spawn_blocking(move || {
        store.write(|conn| topup_repo::insert_payment_method(conn, Mode::Test, &method)).unwrap()
    })
    .await
    .unwrap();
    id
}

/// The auto top-up job compares balance and threshold as exact decimals. 300000000000000 and
/// 300000000000000.01 are the same double, so a comparison in floating point (SQLite's
/// `CAST(… AS NUMERIC)`) never saw this account as below its threshold.
async fn auto_top_up_compares_balances_exactly(app: TestApp) {
    let ada = app.customer("Ada").await;
    app.fund(&ada, "USD", "300000000000000", "fund-1").await;
    let card = save_card(&app, &ada).await;
    let settings = Settings {
        key: AccountKey { customer_id: ada.clone(), name: "default".into(), asset: "USD".into() },
        enabled: true,
        threshold: "300000000000000.01".parse().unwrap(),
        amount: 10.into(),
        currency: tally_core::asset::AssetCode::parse("USD").unwrap(),
        payment_method_id: Some(card),
    };
    let (store, now) = (app.store.clone(), app.clock.now());
    tokio::task::spawn_blocking(move || {
        store.write(|conn| auto_ops::configure(conn, Mode::Test, &settings, now)).unwrap()
    })
    .await
    .unwrap();
    app.eventually("the auto top-up credits 10 USD", || async {
        app.balances(&ada, "default:USD").await.0 == "300000000000010"
    })
    .await;
    app.assert_ledger_agrees().await;
}

on_both_backends!(one_failing_customer_never_blocks_the_others, auto_top_up_compares_balances_exactly);
