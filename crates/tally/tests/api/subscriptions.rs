//! Subscriptions in time: renewal and refresh calendars, pausing and resuming, version
//! changes, one subscription per product, idempotent creation, products deleted while being
//! subscribed to, and tier counters that reset each period. Time moves with the server's
//! clock (`app.clock.advance`); the worker's effects are waited for (`app.eventually`).

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use chrono::{DateTime, Datelike, Duration, Months, TimeZone, Utc};
use reqwest::Method;
use serde_json::{json, Value};

/// A monthly fee and a monthly promotional credit, replaced each period.
const MONTHLY: &str = r#"{
  "name": "Monthly", "code": "monthly", "publish": true,
  "prices": [{
    "name": "Monthly fee", "type": "fixed",
    "billing_model": { "type": "recurring", "recurring": { "interval": "month" } },
    "pricing": [ { "asset": "USD", "values": [ { "unit_price": 5 } ] } ]
  }],
  "entitlements": [
    { "name": "Monthly credit", "asset": "USD", "amount": 2.5, "purpose": "promotion",
      "lifecycle": { "duration": "month", "refresh": { "strategy": "expire_and_replace" } } }
  ]
}"#;

/// MONTHLY plus a one-time setup fee.
const PLAN: &str = r#"{
  "name": "Plan", "code": "plan", "publish": true,
  "prices": [
    { "name": "Setup fee", "type": "fixed", "billing_model": { "type": "one_time" },
      "pricing": [ { "asset": "USD", "values": [ { "unit_price": 10 } ] } ] },
    { "name": "Monthly fee", "type": "fixed",
      "billing_model": { "type": "recurring", "recurring": { "interval": "month" } },
      "pricing": [ { "asset": "USD", "values": [ { "unit_price": 5 } ] } ] }
  ],
  "entitlements": [
    { "name": "Monthly credit", "asset": "USD", "amount": 2.5, "purpose": "promotion",
      "lifecycle": { "duration": "month", "refresh": { "strategy": "expire_and_replace" } } }
  ]
}"#;

/// A usage price only: a perpetual subscription.
const METER: &str = r#"{
  "name": "Meter", "code": "meter", "publish": true,
  "prices": [{
    "name": "Pings", "type": "usage_based", "billing_model": { "type": "real_time" },
    "usage_calculation": { "event_type": "ping", "usage_type": "unit" },
    "pricing": [ { "asset": "USD", "values": [ { "unit_price": 0.01 } ] } ]
  }]
}"#;

fn instant(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap_or_else(|| panic!("not an instant: {value}")).parse().unwrap()
}

fn subscriptions_path(customer: &str) -> String {
    format!("/customers/{customer}/subscriptions")
}

/// The customer's first subscription as the API shows it.
async fn first_subscription(app: &TestApp, customer: &str) -> Value {
    app.get(&format!("/customers/{customer}")).await.expect(200).body["subscriptions"][0].clone()
}

async fn renews_at(app: &TestApp, customer: &str) -> Option<DateTime<Utc>> {
    first_subscription(app, customer).await["renews_at"].as_str().map(|text| text.parse().unwrap())
}

async fn transactions(app: &TestApp, customer: &str) -> Vec<Value> {
    let reply = app.get(&format!("/customers/{customer}/wallet/default:USD/transactions?limit=100")).await.expect(200);
    reply.body["items"].as_array().unwrap().clone()
}

/// How many of the customer's USD transactions have this description.
async fn count_described(app: &TestApp, customer: &str, description: &str) -> usize {
    transactions(app, customer).await.iter().filter(|item| item["description"] == description).count()
}

/// The customer's USD grants of one purpose, newest first.
async fn grants(app: &TestApp, customer: &str, purpose: &str) -> Vec<Value> {
    let path = format!("/customers/{customer}/wallet/default:USD/grants?purpose={purpose}&limit=100");
    app.get(&path).await.expect(200).body["items"].as_array().unwrap().clone()
}

/// Moves the server's clock to `target` (which must be ahead of it).
fn move_clock_to(app: &TestApp, target: DateTime<Utc>) {
    let now = app.clock.now();
    assert!(target > now, "the clock only moves forward");
    app.clock.advance(target - now);
}

// ---------------------------------------------------------------------------------------
// Calendars.

/// A subscription started on 31 January renews on 28 (or 29) February, 31 March, 30 April,
/// 31 May: each renewal is counted from the start, never from the previous renewal. Its
/// monthly credit is replaced on the same days.
async fn renewals_and_refreshes_keep_the_anchor_day(app: TestApp) {
    app.post("/products", body(MONTHLY)).await.expect(201);
    let now = app.clock.now();
    let next_january_31 = (now.year()..)
        .map(|year| Utc.with_ymd_and_hms(year, 1, 31, 12, 0, 0).unwrap())
        .find(|candidate| *candidate > now)
        .unwrap();
    move_clock_to(&app, next_january_31);
    let customer = app.customer("Anchored").await;
    app.fund(&customer, "USD", "100", "paid").await;
    let created =
        app.post(&subscriptions_path(&customer), json!({"products": [{"code": "monthly"}]})).await.expect(201);
    let started = instant(&created.body["started_at"]);
    assert_eq!((started.month(), started.day()), (1, 31));
    let period_end = |months: u32| started.checked_add_months(Months::new(months)).unwrap();
    let leap = chrono::NaiveDate::from_ymd_opt(started.year(), 2, 29).is_some();
    let days: Vec<u32> = (1..=4).map(|months| period_end(months).day()).collect();
    assert_eq!(days, vec![if leap { 29 } else { 28 }, 31, 30, 31]);
    assert_eq!(instant(&created.body["renews_at"]), period_end(1));
    assert_eq!(instant(&grants(&app, &customer, "promotion").await[0]["expires_at"]), period_end(1));

    for months in 1..=3 {
        move_clock_to(&app, period_end(months) + Duration::minutes(1));
        app.eventually("the renewal runs and the next one is scheduled", || async {
            renews_at(&app, &customer).await == Some(period_end(months + 1))
        })
        .await;
        assert_eq!(count_described(&app, &customer, "Monthly: Monthly fee").await, months as usize + 1);
        let credits = grants(&app, &customer, "promotion").await;
        assert_eq!(credits.len(), months as usize + 1, "one credit per period");
        assert_eq!(instant(&credits[0]["effective_at"]), period_end(months));
        assert_eq!(instant(&credits[0]["expires_at"]), period_end(months + 1), "the credit lasts to the next renewal");
    }
    app.assert_ledger_agrees().await;
}

// ---------------------------------------------------------------------------------------
// Pausing and resuming.

async fn pausing_and_resuming_never_charges_or_grants_twice(app: TestApp) {
    app.post("/products", body(PLAN)).await.expect(201);
    let customer = app.customer("Pauser").await;
    app.fund(&customer, "USD", "100", "paid").await;
    let created = app.post(&subscriptions_path(&customer), json!({"products": [{"code": "plan"}]})).await.expect(201);
    let path = format!("{}/{}", subscriptions_path(&customer), created.body["id"].as_str().unwrap());
    let first_renewal = instant(&created.body["renews_at"]);
    // 100 − 10 setup − 5 monthly + 2.5 credit.
    assert_eq!(app.balances(&customer, "default:USD").await.0, "87.5");
    let history = transactions(&app, &customer).await.len();

    // Paused and resumed inside the period already paid for: nothing is collected or granted.
    app.patch(&path, json!({"status": "inactive"})).await.expect(204);
    assert_eq!(first_subscription(&app, &customer).await["status"], "inactive");
    app.clock.advance(Duration::days(3));
    app.patch(&path, json!({"status": "active"})).await.expect(204);
    assert_eq!(first_subscription(&app, &customer).await["status"], "active");
    assert_eq!(app.balances(&customer, "default:USD").await.0, "87.5");
    assert_eq!(transactions(&app, &customer).await.len(), history, "no fee, no grant");
    assert_eq!(renews_at(&app, &customer).await, Some(first_renewal), "the schedule continues");

    // Paused across the end of the period: resuming starts a new period then, without the
    // one-time fee; the credit of the lapsed period expired meanwhile.
    app.patch(&path, json!({"status": "inactive"})).await.expect(204);
    move_clock_to(&app, first_renewal + Duration::days(10));
    let resumed = app.clock.now();
    app.patch(&path, json!({"status": "active"})).await.expect(204);
    assert_eq!(count_described(&app, &customer, "Plan: Setup fee").await, 1);
    assert_eq!(count_described(&app, &customer, "Plan: Monthly fee").await, 2);
    assert_eq!(count_described(&app, &customer, "Plan: Monthly credit").await, 2);
    // 87.5 − 2.5 expired − 5 monthly + 2.5 credit.
    assert_eq!(app.balances(&customer, "default:USD").await.0, "82.5");
    let next = renews_at(&app, &customer).await.unwrap();
    assert!(next >= resumed.checked_add_months(Months::new(1)).unwrap(), "{next} after {resumed}");
    assert!(next < resumed.checked_add_months(Months::new(1)).unwrap() + Duration::minutes(1), "{next}");
    // Pausing and resuming at once again changes nothing.
    app.patch(&path, json!({"status": "inactive"})).await.expect(204);
    app.patch(&path, json!({"status": "active"})).await.expect(204);
    assert_eq!(app.balances(&customer, "default:USD").await.0, "82.5");
    app.assert_ledger_agrees().await;
}

// ---------------------------------------------------------------------------------------
// Version changes.

/// Two monthly-billed versions: `entitlements` as given.
fn versioned(code: &str, entitlements: Value) -> Value {
    json!({
        "name": code, "code": code, "publish": true,
        "prices": [{
            "name": "Monthly fee", "type": "fixed",
            "billing_model": { "type": "recurring", "recurring": { "interval": "month" } },
            "pricing": [ { "asset": "USD", "values": [ { "unit_price": 5 } ] } ]
        }],
        "entitlements": entitlements,
    })
}

fn entitlement(name: &str, amount: u32, purpose: &str, duration: &str) -> Value {
    json!({ "name": name, "asset": "USD", "amount": amount, "purpose": purpose,
            "lifecycle": { "duration": duration, "refresh": { "strategy": "expire_and_replace" } } })
}

/// Creates the product at version 1 and publishes version 2; returns the product's id.
async fn two_versions(app: &TestApp, first: Value, second: Value) -> String {
    let product = app.post("/products", first).await.expect(201);
    let id = product.body["id"].as_str().unwrap().to_owned();
    let mut next = second;
    next.as_object_mut().unwrap().remove("code");
    next.as_object_mut().unwrap().remove("name");
    let created = app.post(&format!("/products/{id}"), next).await.expect(201);
    assert_eq!(created.body["version"], 2);
    id
}

async fn subscribe_and_move_to_version_two(app: &TestApp, customer: &str, product_id: &str) {
    let created = app
        .post(&subscriptions_path(customer), json!({"products": [{"id": product_id, "version": 1}]}))
        .await
        .expect(201);
    let subscription_id = created.body["id"].as_str().unwrap();
    app.patch(
        &format!("{}/{subscription_id}/products/{product_id}", subscriptions_path(customer)),
        json!({"version": 2}),
    )
    .await
    .expect(204);
}

/// A version without an entitlement the old one refreshed weekly: that refresh ends, and the
/// subscription's other actions (its renewal) still run when due.
async fn a_version_with_fewer_entitlements_keeps_its_schedule(app: TestApp) {
    let monthly = entitlement("Monthly credit", 1, "promotion", "month");
    let weekly = entitlement("Weekly credit", 1, "bundled", "week");
    let product_id = two_versions(
        &app,
        versioned("shrinking", json!([monthly.clone(), weekly])),
        versioned("shrinking", json!([monthly])),
    )
    .await;
    let customer = app.customer("Downgraded").await;
    app.fund(&customer, "USD", "100", "paid").await;
    subscribe_and_move_to_version_two(&app, &customer, &product_id).await;
    let first_renewal = renews_at(&app, &customer).await.unwrap();
    // The weekly refresh falls due on a version that no longer has it.
    app.clock.advance(Duration::days(8));
    move_clock_to(&app, first_renewal + Duration::minutes(1));
    app.eventually("the renewal after the dropped refresh runs", || async {
        renews_at(&app, &customer).await.is_some_and(|next| next > first_renewal)
    })
    .await;
    assert_eq!(count_described(&app, &customer, "shrinking: Monthly fee").await, 2);
    assert_eq!(grants(&app, &customer, "bundled").await.len(), 1, "the dropped entitlement is never granted again");
    assert_eq!(grants(&app, &customer, "promotion").await.len(), 2, "the kept one refreshes");
    app.assert_ledger_agrees().await;
}

/// A version with an entitlement the old one lacked: granted at the next renewal or refresh,
/// then refreshed on its own; at once when the subscription has nothing scheduled.
async fn entitlements_a_new_version_adds_arrive_at_the_next_refresh(app: TestApp) {
    let monthly = entitlement("Monthly credit", 1, "promotion", "month");
    let added = entitlement("Added credit", 3, "bundled", "month");
    let product_id = two_versions(
        &app,
        versioned("growing", json!([monthly.clone()])),
        versioned("growing", json!([monthly, added])),
    )
    .await;
    let customer = app.customer("Upgraded").await;
    app.fund(&customer, "USD", "100", "paid").await;
    subscribe_and_move_to_version_two(&app, &customer, &product_id).await;
    assert!(grants(&app, &customer, "bundled").await.is_empty(), "not before the next refresh");
    let first_renewal = renews_at(&app, &customer).await.unwrap();
    move_clock_to(&app, first_renewal + Duration::minutes(1));
    app.eventually("the added entitlement is granted at the renewal", || async {
        grants(&app, &customer, "bundled").await.len() == 1
    })
    .await;
    let added_grant = &grants(&app, &customer, "bundled").await[0];
    assert_eq!(added_grant["amount"].to_string(), "3");
    assert_eq!(instant(&added_grant["effective_at"]), first_renewal);
    let second_renewal = renews_at(&app, &customer).await.unwrap();
    move_clock_to(&app, second_renewal + Duration::minutes(1));
    app.eventually("the added entitlement refreshes with the period", || async {
        grants(&app, &customer, "bundled").await.len() == 2
    })
    .await;
    assert_eq!(grants(&app, &customer, "promotion").await.len(), 3);

    // A perpetual subscription has no next refresh: what the new version adds comes at once.
    let mut metered: Value = body(METER);
    let product = app.post("/products", metered.clone()).await.expect(201);
    let meter_id = product.body["id"].as_str().unwrap().to_owned();
    metered["entitlements"] = json!([{ "name": "Welcome", "asset": "USD", "amount": 7, "purpose": "promotion",
                                        "lifecycle": { "duration": "year" } }]);
    metered.as_object_mut().unwrap().remove("code");
    metered.as_object_mut().unwrap().remove("name");
    app.post(&format!("/products/{meter_id}"), metered).await.expect(201);
    let perpetual = app.customer("Perpetual").await;
    subscribe_and_move_to_version_two(&app, &perpetual, &meter_id).await;
    let welcome = grants(&app, &perpetual, "promotion").await;
    assert_eq!(welcome.len(), 1, "granted on the move");
    assert_eq!(welcome[0]["amount"].to_string(), "7");
    app.assert_ledger_agrees().await;
}

// ---------------------------------------------------------------------------------------
// One subscription per product, and idempotent creation.

async fn a_product_is_held_in_one_subscription_at_a_time(app: TestApp) {
    app.post("/products", body(MONTHLY)).await.expect(201);
    app.post("/products", body(METER)).await.expect(201);
    let customer = app.customer("Once").await;
    app.fund(&customer, "USD", "100", "paid").await;
    let first = app.post(&subscriptions_path(&customer), json!({"products": [{"code": "monthly"}]})).await.expect(201);
    let first_path = format!("{}/{}", subscriptions_path(&customer), first.body["id"].as_str().unwrap());
    let balance = app.balances(&customer, "default:USD").await;
    let second = app.post(&subscriptions_path(&customer), json!({"products": [{"code": "monthly"}]})).await.expect(409);
    assert_eq!(second.content_type(), "application/problem+json");
    app.post(&subscriptions_path(&customer), json!({"products": [{"code": "meter"}, {"code": "monthly"}]}))
        .await
        .expect(409);
    // A subscription that starts later holds the product too.
    let later = (app.clock.now() + Duration::days(2)).to_rfc3339();
    let scheduled = app
        .post(&subscriptions_path(&customer), json!({"starts_at": later, "products": [{"code": "meter"}]}))
        .await
        .expect(201);
    assert_eq!(scheduled.body["status"], "scheduled");
    app.post(&subscriptions_path(&customer), json!({"products": [{"code": "meter"}]})).await.expect(409);
    let listed = app.get(&format!("/customers/{customer}")).await.expect(200);
    assert_eq!(listed.body["subscriptions"].as_array().unwrap().len(), 2, "nothing stored by the refusals");
    assert_eq!(app.balances(&customer, "default:USD").await, balance, "nothing charged by the refusals");

    // Once the first is inactive the product can be subscribed to again; resuming the first
    // while the second holds it is refused.
    app.patch(&first_path, json!({"status": "inactive"})).await.expect(204);
    app.post(&subscriptions_path(&customer), json!({"products": [{"code": "monthly"}]})).await.expect(201);
    app.patch(&first_path, json!({"status": "active"})).await.expect(409);
    assert_eq!(first_subscription(&app, &customer).await["status"], "inactive");

    // A new customer with two subscriptions to one product: refused whole.
    let twice = json!({"name": "Twice", "subscriptions": [{"products": [{"code": "meter"}]}, {"products": [{"code": "meter"}]}]});
    app.post("/customers", twice).await.expect(409);
    assert_eq!(app.get("/customers?limit=100").await.body["total_count"], 1);
    // Other customers are not affected.
    let other = app.customer("Other").await;
    app.post(&subscriptions_path(&other), json!({"products": [{"code": "monthly"}]})).await.expect(201);
    app.assert_ledger_agrees().await;
}

async fn post_with_key(app: &TestApp, path: &str, key: &str, request: &Value) -> crate::harness::Reply {
    let response = app
        .client
        .request(Method::POST, format!("{}{path}", app.base))
        .header("X-CREDYT-API-KEY", &app.test_key)
        .header("Idempotency-Key", key)
        .json(request)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    crate::harness::Reply { status, headers, body, text }
}

async fn subscribing_with_an_idempotency_key_is_safe_to_retry(app: TestApp) {
    app.post("/products", body(PLAN)).await.expect(201);
    app.post("/products", body(METER)).await.expect(201);
    let customer = app.customer("Retrier").await;
    app.fund(&customer, "USD", "100", "paid").await;
    let path = subscriptions_path(&customer);
    let request = json!({"products": [{"code": "plan"}]});
    let first = post_with_key(&app, &path, "sub-key-1", &request).await.expect(201);
    let again = post_with_key(&app, &path, "sub-key-1", &request).await.expect(201);
    assert_eq!(again.body, first.body, "a retry answers what the first request did");
    assert_eq!(app.balances(&customer, "default:USD").await.0, "87.5", "charged once");
    assert_eq!(app.get(&format!("/customers/{customer}")).await.body["subscriptions"].as_array().unwrap().len(), 1);
    // The same key with a different request, or for another customer: refused.
    let other = json!({"products": [{"code": "meter"}]});
    post_with_key(&app, &path, "sub-key-1", &other).await.expect(409);
    let someone = app.customer("Someone").await;
    post_with_key(&app, &subscriptions_path(&someone), "sub-key-1", &request).await.expect(409);
    assert_eq!(app.get(&format!("/customers/{someone}")).await.body["subscriptions"], json!([]));
    // Retries sent together make one subscription.
    let meter = json!({"products": [{"code": "meter"}]});
    let (a, b, c) = tokio::join!(
        post_with_key(&app, &path, "sub-key-2", &meter),
        post_with_key(&app, &path, "sub-key-2", &meter),
        post_with_key(&app, &path, "sub-key-2", &meter)
    );
    let ids: Vec<Value> = [a, b, c].into_iter().map(|reply| reply.expect(201).body["id"].clone()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(app.get(&format!("/customers/{customer}")).await.body["subscriptions"].as_array().unwrap().len(), 2);
    // A malformed key is refused before anything happens.
    post_with_key(&app, &path, "has space", &meter).await.expect(422);
    app.assert_ledger_agrees().await;
}

// ---------------------------------------------------------------------------------------
// Deleting a product while someone subscribes to it.

async fn a_product_deleted_while_being_subscribed_to_is_never_left_subscribed(app: TestApp) {
    let customer = app.customer("Racer").await;
    app.fund(&customer, "USD", "1000", "paid").await;
    for round in 0..12 {
        let mut definition: Value = body(PLAN);
        definition["code"] = json!(format!("plan-{round}"));
        let product = app.post("/products", definition).await.expect(201);
        let product_id = product.body["id"].as_str().unwrap().to_owned();
        let delete_path = format!("/products/{product_id}");
        let subscribe_path = subscriptions_path(&customer);
        let (deleted, subscribed) = tokio::join!(
            app.call(Method::DELETE, &delete_path, Some(&app.test_key), None),
            app.post(&subscribe_path, json!({"products": [{"id": product_id}]}))
        );
        assert_eq!(deleted.status.as_u16(), 204, "{}", deleted.text);
        match subscribed.status.as_u16() {
            // Subscribed first: the delete then found a subscriber and archived the product.
            201 => {
                let shown = app.get(&delete_path).await.expect(200);
                assert!(shown.body["archived_at"].is_string(), "round {round}: {}", shown.body);
                let subscribers = app.get(&format!("/products/{product_id}/subscribers")).await.expect(200);
                assert_eq!(subscribers.body["total_count"], 1);
            }
            // Deleted first: there was nothing to subscribe to.
            422 => {
                app.get(&delete_path).await.expect(404);
            }
            other => panic!("round {round}: unexpected {other}: {}", subscribed.text),
        }
    }
    // Every subscription the customer holds names a product that exists.
    let view = app.get(&format!("/customers/{customer}")).await.expect(200);
    for subscription in view.body["subscriptions"].as_array().unwrap() {
        let id = subscription["products"][0]["id"].as_str().unwrap();
        app.get(&format!("/products/{id}")).await.expect(200);
    }
    app.assert_ledger_agrees().await;
}

// ---------------------------------------------------------------------------------------
// Tier counters.

const TIERED: &str = r#"{
  "name": "Tokens", "code": "tokens", "publish": true,
  "prices": [{
    "name": "Tokens", "type": "usage_based", "billing_model": { "type": "real_time" },
    "pricing_model": "tiered", "tiering": { "basis": "volume", "period": "monthly" },
    "usage_calculation": { "event_type": "completion", "usage_type": "volume", "volume_field": "tokens" },
    "pricing": [ { "asset": "USD", "values": [ { "up_to": 1000, "volume_rate": 0.002 }, { "volume_rate": 0.001 } ] } ]
  }]
}"#;

async fn tier_counters_start_again_each_period(app: TestApp) {
    let app = &app;
    app.post("/products", body(TIERED)).await.expect(201);
    let customer = app.customer("Tiered").await;
    app.fund(&customer, "USD", "100", "paid").await;
    app.post(&subscriptions_path(&customer), json!({"products": [{"code": "tokens"}]})).await.expect(201);
    let send = |id: &'static str, tokens: u32| {
        let batch = json!({"customer_id": customer, "events": [
            {"id": id, "event_type": "completion", "occurred_at": app.clock.now().to_rfc3339(), "data": {"tokens": tokens}}]});
        async move {
            app.post("/events", batch).await.expect(204);
            app.get(&format!("/events/{id}")).await.expect(200).body["fees"][0]["amount"].to_string()
        }
    };
    // 1,500 tokens: 1,000 in the first tier, 500 in the second.
    assert_eq!(send("first", 1500).await, "2.5");
    assert_eq!(send("same-month", 100).await, "0.1", "the month's usage is past the first tier");
    // Next month the count starts again from zero.
    app.clock.advance(Duration::days(32));
    assert_eq!(send("next-month", 100).await, "0.2");
    app.assert_ledger_agrees().await;
}

// ---------------------------------------------------------------------------------------
// A product's subscribers, counted.

/// The subscribers' total counts each subscriber once, whatever page is read: the count is
/// taken over the product's pins alone, and each pin joins one subscription and one customer.
async fn a_products_subscribers_are_counted_once_each_on_every_page(app: TestApp) {
    let product = app.post("/products", body(PLAN)).await.expect(201);
    let product_id = product.body["id"].as_str().unwrap().to_owned();
    let mut expected = Vec::new();
    for name in ["Ada", "Brook", "Cato"] {
        let customer = app.customer(name).await;
        app.fund(&customer, "USD", "1000", "paid").await;
        app.post(&subscriptions_path(&customer), json!({"products": [{"id": product_id}]})).await.expect(201);
        expected.push(customer);
    }
    let path = format!("/products/{product_id}/subscribers?limit=2");
    let first = app.get(&path).await.expect(200).body;
    let next = first["next"].as_str().expect("a second page").to_owned();
    let second = app.get(&format!("{path}&next={next}")).await.expect(200).body;
    let mut seen: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|page| page["items"].as_array().unwrap().iter())
        .map(|subscriber| subscriber["customer_id"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!((first["total_count"].clone(), second["total_count"].clone()), (json!(3), json!(3)));
    // An offset counts pins too: the page from the second subscriber is the walk's rest.
    let by_offset = app.get(&format!("{path}&offset=1")).await.expect(200).body;
    let walked: Vec<&Value> = [&first, &second].iter().flat_map(|page| page["items"].as_array().unwrap()).collect();
    assert_eq!(by_offset["items"].as_array().unwrap().iter().collect::<Vec<_>>(), walked[1..].to_vec());
}

on_both_backends!(
    a_products_subscribers_are_counted_once_each_on_every_page,
    renewals_and_refreshes_keep_the_anchor_day,
    pausing_and_resuming_never_charges_or_grants_twice,
    a_version_with_fewer_entitlements_keeps_its_schedule,
    entitlements_a_new_version_adds_arrive_at_the_next_refresh,
    a_product_is_held_in_one_subscription_at_a_time,
    subscribing_with_an_idempotency_key_is_safe_to_retry,
    a_product_deleted_while_being_subscribed_to_is_never_left_subscribed,
    tier_counters_start_again_each_period,
);
