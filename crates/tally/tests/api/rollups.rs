//! Rollups (issue 12): the per-hour totals the write path keeps equal the fees and
//! costs they total, stats read from them give exactly what the fees add up to for periods
//! that cut days and hours in half, and `tally ledger verify` finds a rollup edited behind
//! Tally's back.

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tally_store::ops::ledger;
use tally_store::Conn;

/// An asset with 12 decimal places, worth 0.5 USD a unit.
const TOK: &str = r#"{"code":"TOK","name":"Micro tokens","precision":12,"rates":[{"source":"USD","rate":0.5}]}"#;

/// Tiered USD per token, a 12-decimal TOK price on the same events, and a monthly plan fee.
const PRODUCT: &str = r#"{
  "name": "Rollup API", "code": "rollup_api",
  "prices": [
    { "name": "Tokens", "type": "usage_based", "billing_model": { "type": "real_time" },
      "pricing_model": "tiered", "tiering": { "basis": "volume", "period": "monthly" },
      "usage_calculation": { "event_type": "completion", "usage_type": "volume", "volume_field": "tokens" },
      "pricing": [ { "asset": "USD", "values": [ { "up_to": 1000, "volume_rate": 0.002 }, { "volume_rate": 0.001 } ] } ] },
    { "name": "Micro", "type": "usage_based", "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "completion", "usage_type": "volume", "volume_field": "tokens" },
      "pricing": [ { "asset": "TOK", "values": [ { "volume_rate": 0.000000000007 } ] } ] },
    { "name": "Monthly platform fee", "type": "fixed",
      "billing_model": { "type": "recurring", "recurring": { "interval": "month" } },
      "pricing": [ { "asset": "USD", "values": [ { "unit_price": 5 } ] } ] }
  ],
  "publish": true
}"#;

fn at(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn decimal(value: &Value) -> Decimal {
    value.to_string().trim_matches('"').parse().unwrap()
}

/// A usage fee or cost as the API shows it: when its event occurred, its asset and amount.
struct Line {
    occurred_at: DateTime<Utc>,
    asset: String,
    amount: Decimal,
}

/// A subscribed, funded customer.
async fn subscriber(app: &TestApp, name: &str, product_id: &str) -> String {
    let customer = app.customer(name).await;
    app.fund(&customer, "USD", "1000", &format!("{name}-usd")).await;
    app.fund(&customer, "TOK", "1", &format!("{name}-tok")).await;
    app.post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"id": product_id}]}))
        .await
        .expect(201);
    customer
}

/// Three days of mixed traffic, one batch every five hours: tiered usage in two assets with
/// vendor costs, charges and refunds. Returns the events' fees and costs as the API shows them.
async fn traffic(app: &TestApp, customer: &str, vendor: &str, prefix: &str) -> (Vec<Line>, Vec<Line>) {
    let (mut fees, mut costs) = (Vec::new(), Vec::new());
    for step in 0..15_i64 {
        app.clock.advance(Duration::hours(5));
        let now = app.clock.now();
        let events: Vec<Value> = (0..3_i64)
            .map(|index| {
                let number = step * 3 + index;
                json!({"id": format!("{prefix}-{number}"), "event_type": "completion",
                       "occurred_at": at(now - Duration::minutes(47 * index + 1)),
                       "data": {"tokens": format!("{}.{:03}", (number * 37) % 400, (number * 7919) % 1000)},
                       "costs": [{"id": format!("{prefix}-cost-{number}"), "vendor_id": vendor,
                                  "category": if number % 2 == 0 { "gpu" } else { "storage" },
                                  "amount": format!("0.00{}", number % 7 + 1)}]})
            })
            .collect();
        app.post("/events", json!({"customer_id": customer, "events": events})).await.expect(204);
        if step % 4 == 1 {
            let charge = json!({"transaction_id": format!("{prefix}-charge-{step}"), "asset": "USD",
                                "input_units": 3, "unit_price": 0.333333});
            app.post(&format!("/customers/{customer}/wallet/charges"), charge).await.expect(201);
        }
        if step % 5 == 2 {
            let refund = json!({"transaction_id": format!("{prefix}-refund-{step}"), "asset": "USD",
                                "amount": -1, "reason": "external_refund"});
            app.post(&format!("/customers/{customer}/wallet/adjustments"), refund).await.expect(201);
        }
    }
    for number in 0..45 {
        let event = app.get(&format!("/events/{prefix}-{number}")).await.expect(200).body;
        let occurred_at: DateTime<Utc> = event["occurred_at"].as_str().unwrap().parse().unwrap();
        for fee in event["fees"].as_array().unwrap() {
            fees.push(Line {
                occurred_at,
                asset: fee["currency"].as_str().unwrap().into(),
                amount: decimal(&fee["amount"]),
            });
        }
        for cost in event["costs"].as_array().unwrap() {
            costs.push(Line { occurred_at, asset: "USD".into(), amount: decimal(&cost["amount"]) });
        }
    }
    (fees, costs)
}

/// What the fees and costs in `[from, to)` come to in USD (TOK at 0.5).
fn expected(fees: &[Line], costs: &[Line], from: DateTime<Utc>, to: DateTime<Utc>) -> (Decimal, Decimal) {
    let within = |line: &&Line| from <= line.occurred_at && line.occurred_at < to;
    let revenue = fees
        .iter()
        .filter(within)
        .map(|fee| if fee.asset == "TOK" { fee.amount * Decimal::new(5, 1) } else { fee.amount })
        .sum::<Decimal>();
    (revenue.normalize(), costs.iter().filter(within).map(|cost| cost.amount).sum::<Decimal>().normalize())
}

async fn set_up(app: &TestApp) -> (String, Vec<Line>, Vec<Line>, String, Vec<Line>, Vec<Line>, DateTime<Utc>) {
    app.post("/assets", body(TOK)).await.expect(201);
    let product = app.post("/products", body(PRODUCT)).await.expect(201);
    let product_id = product.body["id"].as_str().unwrap().to_owned();
    let vendor = app.post("/vendors", json!({"name": "GPU Cloud"})).await.expect(201);
    let vendor_id = vendor.body["id"].as_str().unwrap().to_owned();
    let start = app.clock.now();
    let first = subscriber(app, "first", &product_id).await;
    let second = subscriber(app, "second", &product_id).await;
    let (first_fees, first_costs) = traffic(app, &first, &vendor_id, "a").await;
    let (second_fees, second_costs) = traffic(app, &second, &vendor_id, "b").await;
    (first, first_fees, first_costs, second, second_fees, second_costs, start)
}

async fn stats_from_rollups_equal_the_fees_for_any_period(app: TestApp) {
    let (first, first_fees, first_costs, _, second_fees, second_costs, start) = set_up(&app).await;
    assert!(
        first_fees.iter().any(|fee| fee.asset == "TOK" && fee.amount.normalize().scale() > 12),
        "fees past 12 decimals"
    );
    let all_fees: Vec<&Line> = first_fees.iter().chain(&second_fees).collect();
    let all_costs: Vec<&Line> = first_costs.iter().chain(&second_costs).collect();
    let midnight = |day: i64| (start + Duration::days(day)).date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let periods = [
        // Cutting days and hours in half at both ends.
        (start + Duration::minutes(13 * 60 + 17), start + Duration::minutes(2 * 24 * 60 + 7 * 60 + 31)),
        // Whole days.
        (midnight(1), midnight(3)),
        // Within one hour, and within one day.
        (start + Duration::minutes(5 * 60 - 50), start + Duration::minutes(5 * 60 - 10)),
        (midnight(2) + Duration::minutes(61), midnight(2) + Duration::minutes(23 * 60 + 1)),
        // Everything.
        (start - Duration::days(1), start + Duration::days(30)),
    ];
    for (from, to) in periods {
        let query = format!("period_from={}&period_to={}", at(from), at(to)).replace('+', "%2B");
        let (revenue, costs) = expected(&first_fees, &first_costs, from, to);
        let stats = app.get(&format!("/customers/{first}/stats?{query}")).await.expect(200).body;
        assert_eq!(decimal(&stats["gross_revenue"]), revenue, "customer revenue from {from} to {to}: {stats}");
        assert_eq!(decimal(&stats["total_costs"]), costs, "customer costs from {from} to {to}");

        let owned_fees: Vec<Line> = all_fees
            .iter()
            .map(|fee| Line { occurred_at: fee.occurred_at, asset: fee.asset.clone(), amount: fee.amount })
            .collect();
        let owned_costs: Vec<Line> = all_costs
            .iter()
            .map(|cost| Line { occurred_at: cost.occurred_at, asset: cost.asset.clone(), amount: cost.amount })
            .collect();
        let (revenue, costs) = expected(&owned_fees, &owned_costs, from, to);
        let all = app.get(&format!("/customers/stats?{query}")).await.expect(200).body;
        assert_eq!(decimal(&all["summary"]["gross_revenue"]), revenue, "all revenue from {from} to {to}: {all}");
        assert_eq!(decimal(&all["summary"]["total_costs"]), costs, "all costs from {from} to {to}");
    }

    // The portal's spend (from the hourly rollups) is every fee: usage fees, the plan fees
    // and the charges, and no refund.
    let store = app.store.clone();
    let customer = first.clone();
    let spend = tokio::task::spawn_blocking(move || {
        store
            .read(|conn: &mut dyn Conn| {
                tally_store::repo::rollups::customer_spend(conn, tally_core::Mode::Test, &customer, 0..i64::MAX)
            })
            .unwrap()
    })
    .await
    .unwrap();
    let spent = |source: &str, asset: &str| -> Decimal {
        spend
            .iter()
            .filter(|row| row.source == source && row.asset == asset)
            .map(|row| row.spent)
            .sum::<Decimal>()
            .normalize()
    };
    let usage_usd: Decimal = first_fees.iter().filter(|fee| fee.asset == "USD").map(|fee| fee.amount).sum();
    let usage_tok: Decimal = first_fees.iter().filter(|fee| fee.asset == "TOK").map(|fee| fee.amount).sum();
    assert_eq!(spent("usage", "USD"), usage_usd.normalize());
    assert_eq!(spent("usage", "TOK"), usage_tok.normalize());
    assert_eq!(spent("plan", "USD"), Decimal::from(5));
    assert_eq!(spent("other", "USD"), "3.999996".parse::<Decimal>().unwrap(), "four charges of 0.999999");
    let usage_count: i64 = spend.iter().filter(|row| row.source == "usage").map(|row| row.fee_count).sum();
    assert_eq!(usage_count as usize, first_fees.len());
    app.assert_ledger_agrees().await;
}

/// An hour in which TOK's rate changes (0.5 USD, then 0.25 from twenty minutes in) is valued
/// fee by fee at the rate in force when each occurred, whichever side of the change holds
/// more fees, for the customer and for the whole mode.
async fn stats_value_an_hour_with_a_rate_change_at_each_fees_rate(app: TestApp) {
    app.post("/assets", body(TOK)).await.expect(201);
    let product = app.post("/products", body(PRODUCT)).await.expect(201);
    let product_id = product.body["id"].as_str().unwrap().to_owned();
    let customer = subscriber(&app, "rates", &product_id).await;
    // Five minutes into the next hour.
    let now = app.clock.now();
    let hour = now.date_naive().and_hms_opt(now.format("%H").to_string().parse().unwrap(), 0, 0).unwrap().and_utc();
    app.clock.advance(hour + Duration::minutes(65) - now);
    let change = hour + Duration::minutes(80);
    app.post("/assets/TOK/rates", json!({"source": "USD", "rate": 0.25, "valid_from": at(change)})).await.expect(204);
    let mut expected = Decimal::ZERO;
    // Three events before the change and seven after it: the side before is read (grouped by
    // amount), the side after is the hour's total less it.
    for (number, minutes) in [1_i64, 3, 7, 20, 25, 30, 36, 41, 50, 54].into_iter().enumerate() {
        let occurred_at = hour + Duration::minutes(60 + minutes);
        if app.clock.now() <= occurred_at {
            app.clock.advance(occurred_at - app.clock.now() + Duration::seconds(1));
        }
        let event = json!({"id": format!("rate-{number}"), "event_type": "completion", "occurred_at": at(occurred_at),
                           "data": {"tokens": format!("{}", 100 + number * 37)}});
        app.post("/events", json!({"customer_id": customer, "events": [event]})).await.expect(204);
        let shown = app.get(&format!("/events/rate-{number}")).await.expect(200).body;
        for fee in shown["fees"].as_array().unwrap() {
            let amount = decimal(&fee["amount"]);
            expected += match fee["currency"].as_str().unwrap() {
                "TOK" if occurred_at < change => amount * Decimal::new(5, 1),
                "TOK" => amount * Decimal::new(25, 2),
                _ => amount,
            };
        }
    }
    app.clock.advance(Duration::hours(2));
    let query = format!("period_from={}&period_to={}", at(hour), at(hour + Duration::hours(3))).replace('+', "%2B");
    let stats = app.get(&format!("/customers/{customer}/stats?{query}")).await.expect(200).body;
    assert_eq!(decimal(&stats["gross_revenue"]), expected.normalize(), "{stats}");
    let all = app.get(&format!("/customers/stats?{query}")).await.expect(200).body;
    assert_eq!(decimal(&all["summary"]["gross_revenue"]), expected.normalize(), "{all}");
}

/// Runs `sql` directly on the database, behind Tally's back; it changes one row.
async fn tamper(app: &TestApp, sql: &str) {
    let (store, edit) = (app.store.clone(), sql.to_owned());
    let changed = tokio::task::spawn_blocking(move || store.write(|conn: &mut dyn Conn| conn.execute(&edit, &[])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed, 1, "the edit changes one row: {sql}");
}

async fn problems(app: &TestApp) -> Vec<String> {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.read(|conn| ledger::verify_in_chunks(conn, 1)).unwrap().problems)
        .await
        .unwrap()
}

/// Whether the fingerprint pass (which checks the rollups by linear fingerprints, not by the
/// join pass) finds the books clean, with the stored rollups read in either half of it: in
/// the half that sums the fees and costs they total, and in the other (they must agree).
async fn fingerprints_agree(app: &TestApp) -> bool {
    let store = app.store.clone();
    let (books_first, ledger_first) = tokio::task::spawn_blocking(move || {
        store
            .read(|conn| {
                let books_first = ledger::verify_by_fingerprints(conn)?.is_some();
                Ok::<_, tally_store::StoreError>((
                    books_first,
                    ledger::verify_by_fingerprints_ledger_first(conn)?.is_some(),
                ))
            })
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(books_first, ledger_first, "the stored rollups read in the other half give another answer");
    books_first
}

/// The join passes find exactly one problem, starting with `what`, and the fingerprints
/// disagree.
async fn assert_found(app: &TestApp, what: &str, edit: &str) {
    let found = problems(app).await;
    assert_eq!(found.len(), 1, "{edit}: {found:?}");
    assert!(found[0].starts_with(what), "{edit}: {found:?}");
    assert!(!fingerprints_agree(app).await, "the fingerprints miss {edit}");
}

async fn verify_finds_an_edited_rollup(app: TestApp) {
    let (first, ..) = set_up(&app).await;
    assert_eq!(problems(&app).await, Vec::<String>::new());
    assert!(fingerprints_agree(&app).await, "clean books");
    let first_hour = |table: &str, condition: &str| {
        format!("hour = (SELECT MIN(hour) FROM {table} WHERE customer_id = '{first}' AND {condition})")
    };
    let last_shard = |table: &str, condition: &str| {
        format!(
            "{condition} AND hour = (SELECT MAX(hour) FROM {table} WHERE {condition})
             AND shard = (SELECT MIN(shard) FROM {table} WHERE {condition} AND hour = (SELECT MAX(hour) FROM {table} WHERE {condition}))"
        )
    };
    let edits = [
        (
            format!(
                "UPDATE fee_rollups SET amount_pico = amount_pico + 1 WHERE customer_id = '{first}' AND source = 'usage'
                 AND asset = 'TOK' AND {}",
                first_hour("fee_rollups", "asset = 'TOK'")
            ),
            "fee rollup",
        ),
        // The least amount a fee can have, on a fee of 24 decimal places.
        (
            format!(
                "UPDATE fee_rollups SET amount_yocto = amount_yocto + 1 WHERE customer_id = '{first}' AND source = 'usage'
                 AND asset = 'TOK' AND {}",
                first_hour("fee_rollups", "asset = 'TOK'")
            ),
            "fee rollup",
        ),
        (
            format!(
                "UPDATE fee_rollups SET fee_count = fee_count + 1 WHERE customer_id = '{first}' AND source = 'plan'
                 AND {}",
                first_hour("fee_rollups", "source = 'plan'")
            ),
            "fee rollup",
        ),
        (
            format!(
                "UPDATE fee_rollups SET amount_units = amount_units + 1 WHERE customer_id = '{first}' AND source = 'other'
                 AND {}",
                first_hour("fee_rollups", "source = 'other'")
            ),
            "fee rollup",
        ),
        (
            format!(
                "UPDATE fee_rollups_by_mode SET fee_count = fee_count + 1 WHERE {}",
                last_shard("fee_rollups_by_mode", "asset = 'USD'")
            ),
            "platform fee rollup",
        ),
        (
            format!(
                "UPDATE cost_rollups SET amount_units = amount_units + 1 WHERE customer_id = '{first}' AND {}",
                first_hour("cost_rollups", "currency = 'USD'")
            ),
            "cost rollup",
        ),
        (
            format!(
                "UPDATE cost_rollups_by_vendor SET amount_pico = amount_pico + 1 WHERE {}",
                // Costs of several categories can share an hour and a shard: one of them.
                last_shard(
                    "cost_rollups_by_vendor",
                    "currency = 'USD' AND category = (SELECT MIN(category) FROM cost_rollups_by_vendor)",
                )
            ),
            "vendor cost rollup",
        ),
    ];
    for (sql, what) in edits {
        tamper(&app, &sql).await;
        assert_found(&app, what, &sql).await;
        // Put it back: undo by the opposite edit.
        let undo = sql
            .replace("amount_pico + 1", "amount_pico - 1")
            .replace("amount_yocto + 1", "amount_yocto - 1")
            .replace("fee_count + 1", "fee_count - 1")
            .replace("amount_units + 1", "amount_units - 1");
        tamper(&app, &undo).await;
        assert_eq!(problems(&app).await, Vec::<String>::new());
        assert!(fingerprints_agree(&app).await, "clean again after {undo}");
    }
    // A vendor's costs filed under the other mode: the right total, shown in the wrong mode's stats.
    let moved = format!(
        "UPDATE cost_rollups_by_vendor SET mode = 'live' WHERE {}",
        last_shard(
            "cost_rollups_by_vendor",
            "currency = 'USD' AND category = (SELECT MIN(category) FROM cost_rollups_by_vendor)"
        )
    );
    tamper(&app, &moved).await;
    assert_found(&app, "vendor cost rollup", &moved).await;
    tamper(&app, &moved.replacen("mode = 'live'", "mode = 'test'", 1)).await;
    assert_eq!(problems(&app).await, Vec::<String>::new());
    assert!(fingerprints_agree(&app).await, "clean again after {moved}");
    let insert = "INSERT INTO fee_rollups (mode, customer_id, hour, source, asset, product_id, price_id, amount_units,
                                           amount_pico, amount_yocto, fee_count)";
    let rows = [
        // A rollup of a fee that does not exist.
        (
            format!("{insert} VALUES ('test', '{first}', 1, 'usage', 'USD', 'prp_none', 'prc_none', 1, 0, 0, 1)"),
            "fee rollup",
        ),
        // One that totals nothing in no rows.
        (
            format!("{insert} VALUES ('test', '{first}', 2, 'usage', 'USD', 'prp_none', 'prc_none', 0, 0, 0, 0)"),
            "fee rollup",
        ),
        // One of a customer that does not exist.
        (
            format!("{insert} VALUES ('test', 'cus_none', 1, 'usage', 'USD', 'prp_none', 'prc_none', 1, 0, 0, 1)"),
            "1 rollup rows belong to no customer",
        ),
    ];
    for (sql, what) in rows {
        tamper(&app, &sql).await;
        assert_found(&app, what, &sql).await;
        tamper(&app, "DELETE FROM fee_rollups WHERE product_id = 'prp_none'").await;
        assert!(fingerprints_agree(&app).await, "clean again after {sql}");
    }
}

/// Rollups of a customer that does not exist are found even when every sum matches them: the
/// customer's row renamed behind Tally's back leaves its fees, ledger, accounts and rollups
/// agreeing with one another (none refers to the customers table), so on the fast path only
/// the check that each customer the rollups name exists can see it. The join passes report
/// those rows (and, leaving them out, the platform-wide rollups' difference).
async fn verify_finds_rollups_of_a_customer_that_does_not_exist(app: TestApp) {
    let (first, ..) = set_up(&app).await;
    assert!(fingerprints_agree(&app).await, "clean books");
    let rename = format!("UPDATE customers SET id = 'cus_gone' WHERE id = '{first}'");
    tamper(&app, &rename).await;
    let found = problems(&app).await;
    assert!(found.iter().any(|problem| problem.contains("rollup rows belong to no customer")), "{found:?}");
    assert!(!fingerprints_agree(&app).await, "the fingerprints miss {rename}");
    tamper(&app, &format!("UPDATE customers SET id = '{first}' WHERE id = 'cus_gone'")).await;
    assert_eq!(problems(&app).await, Vec::<String>::new());
    assert!(fingerprints_agree(&app).await, "clean again");
}

on_both_backends!(
    stats_from_rollups_equal_the_fees_for_any_period,
    stats_value_an_hour_with_a_rate_change_at_each_fees_rate,
    verify_finds_an_edited_rollup,
    verify_finds_rollups_of_a_customer_that_does_not_exist
);
