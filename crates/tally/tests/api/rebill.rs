//! `POST /events/rebill`: events stored unbilled are billed once the catalog can price them,
//! exactly once, with the fee ingestion would have charged, in the tier period they occurred in.

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Version 1 prices completions by model and knows only `small`; its price keeps one id, so
/// version 2 counts on where it was.
const MODELS_V1: &str = r#"{
  "name": "Models", "code": "models", "publish": true,
  "prices": [
    { "id": "prc_tokens", "name": "Tokens", "type": "usage_based", "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "completion", "usage_type": "volume", "volume_field": "tokens",
                             "billable_dimensions": ["model"] },
      "pricing": [ { "asset": "USD", "values": [
        { "dimensions": { "model": "small" }, "values": [ { "volume_rate": 0.001 } ] }
      ] } ] }
  ]
}"#;

/// Version 2 adds the `medium` model, and calls: the first two calls of a month cost 1 each,
/// later ones 2.
const MODELS_V2_PRICES: &str = r#"[
    { "id": "prc_tokens", "name": "Tokens", "type": "usage_based", "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "completion", "usage_type": "volume", "volume_field": "tokens",
                             "billable_dimensions": ["model"] },
      "pricing": [ { "asset": "USD", "values": [
        { "dimensions": { "model": "small" }, "values": [ { "volume_rate": 0.001 } ] },
        { "dimensions": { "model": "medium" }, "values": [ { "volume_rate": 0.002 } ] }
      ] } ] },
    { "id": "prc_calls", "name": "Calls", "type": "usage_based", "billing_model": { "type": "real_time" },
      "pricing_model": "tiered", "tiering": { "basis": "unit", "period": "monthly" },
      "usage_calculation": { "event_type": "call", "usage_type": "unit" },
      "pricing": [ { "asset": "USD", "values": [ { "up_to": 2, "unit_price": 1 }, { "unit_price": 2 } ] } ] }
]"#;

/// A price for `upload` that reads a volume field: an upload without it stays unbilled, now
/// for a missing volume instead of a missing price.
const UPLOADS_PRICE: &str = r#"
    { "id": "prc_uploads", "name": "Uploads", "type": "usage_based", "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "upload", "usage_type": "volume", "volume_field": "bytes" },
      "pricing": [ { "asset": "USD", "values": [ { "volume_rate": 0.5 } ] } ] }"#;

fn at(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339()
}

fn event(id: &str, event_type: &str, data: Value, occurred_at: DateTime<Utc>) -> Value {
    json!({"id": id, "event_type": event_type, "occurred_at": at(occurred_at), "data": data})
}

/// A completion of the model version 1 does not know: 2 in version 2.
fn medium(id: &str, occurred_at: DateTime<Utc>) -> Value {
    event(id, "completion", json!({"model": "medium", "tokens": 1000}), occurred_at)
}

/// The product's id (version 1 published) and a funded customer subscribed to version 1.
struct Fixture {
    product_id: String,
    customers: Vec<(String, String)>,
}

async fn fixture(app: &TestApp, customers: usize) -> Fixture {
    let product = app.post("/products", body(MODELS_V1)).await.expect(201);
    let product_id = product.body["id"].as_str().unwrap().to_owned();
    let mut subscribed = Vec::new();
    for index in 0..customers {
        let customer = app
            .post(
                "/customers",
                json!({"name": format!("Builder {index}"),
                       "subscriptions": [{"products": [{"id": product_id, "version": 1}]}]}),
            )
            .await
            .expect(201);
        let customer_id = customer.body["id"].as_str().unwrap().to_owned();
        let subscription_id = customer.body["subscriptions"][0]["id"].as_str().unwrap().to_owned();
        app.fund(&customer_id, "USD", "10", &format!("fund-{index}")).await;
        subscribed.push((customer_id, subscription_id));
    }
    Fixture { product_id, customers: subscribed }
}

impl Fixture {
    fn customer(&self, index: usize) -> &str {
        &self.customers[index].0
    }

    /// Publishes version 2 (with `extra` prices after its own) and moves every customer to it.
    async fn fix_catalog(&self, app: &TestApp, extra: &[&str]) {
        let mut prices: Vec<Value> = body(MODELS_V2_PRICES).as_array().unwrap().clone();
        prices.extend(extra.iter().map(|price| body(price)));
        let created = app
            .post(&format!("/products/{}", self.product_id), json!({"prices": prices, "publish": true}))
            .await
            .expect(201);
        assert_eq!(created.body["version"], 2);
        for (customer, subscription) in &self.customers {
            let path = format!("/customers/{customer}/subscriptions/{subscription}/products/{}", self.product_id);
            app.patch(&path, json!({"version": 2})).await.expect(204);
        }
    }
}

async fn send(app: &TestApp, customer: &str, events: Vec<Value>) {
    app.post("/events", json!({"customer_id": customer, "events": events})).await.expect(204);
}

async fn rebill(app: &TestApp, request: Value) -> Value {
    app.post("/events/rebill", request).await.expect(200).body
}

async fn available(app: &TestApp, customer: &str) -> String {
    app.balances(customer, "default:USD").await.0
}

/// The account's transactions, newest first.
async fn transactions(app: &TestApp, customer: &str) -> Vec<Value> {
    let listed = app.get(&format!("/customers/{customer}/wallet/default:USD/transactions?limit=100")).await.expect(200);
    listed.body["items"].as_array().unwrap().clone()
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_owned()).collect()
}

/// An event a version could not price is billed by a rebill once its subscription is on a
/// version that can: with exactly the fee ingestion charges an event sent after the fix,
/// recorded at its `occurred_at`, debited now, announced by `transaction.completed`. A second
/// rebill bills nothing.
async fn an_unbilled_event_is_billed_like_ingestion_once_the_catalog_is_fixed(app: TestApp) {
    let hooks = json!({"url": "http://127.0.0.1:9/hooks", "topics": ["transaction.completed", "event.unbilled"]});
    app.post("/webhooks", hooks).await.expect(201);
    let fixture = fixture(&app, 1).await;
    let customer = fixture.customer(0);
    let started = app.clock.now();
    send(&app, customer, vec![medium("early", started)]).await;
    let early = app.get("/events/early").await.expect(200);
    assert_eq!(early.body["unbilled_reason"]["code"], "no_matching_dimension", "{}", early.body);
    assert_eq!(available(&app, customer).await, "10");

    app.clock.advance(Duration::minutes(5));
    fixture.fix_catalog(&app, &[]).await;
    app.clock.advance(Duration::minutes(5));
    send(&app, customer, vec![medium("late", app.clock.now())]).await;
    let late = app.get("/events/late").await.expect(200).body;
    assert_eq!(late["fees"][0]["amount"].to_string(), "2");
    assert_eq!(available(&app, customer).await, "8");

    let period = json!({"period_from": at(started - Duration::hours(1)), "period_to": at(app.clock.now())});
    let report = rebill(&app, period.clone()).await;
    assert_eq!(report["dry_run"], false);
    assert_eq!(
        (&report["events_examined"], &report["events_billed"], &report["events_still_unbilled"]),
        (&json!(1), &json!(1), &json!(0)),
        "{report}"
    );
    assert_eq!(report["fees"], json!([{"currency": "USD", "count": 1, "amount": 2}]));
    assert_eq!(report["billed"][0]["id"], "early");
    assert_eq!(report["billed"][0]["total_fees"].to_string(), "2");
    assert_eq!(report["billed"][0]["fees"][0]["product_version"], 2);
    assert_eq!(report["has_more"], false);
    assert!(report.get("next_cursor").is_none(), "{report}");
    assert_eq!(available(&app, customer).await, "6");

    let billed = app.get("/events/early").await.expect(200).body;
    assert_eq!(billed["billing_status"], "billed");
    assert!(billed.get("unbilled_reason").is_none(), "{billed}");
    let comparable = |fee: &Value| {
        let mut fee = fee.clone();
        fee.as_object_mut().unwrap().remove("id");
        fee
    };
    assert_eq!(comparable(&billed["fees"][0]), comparable(&late["fees"][0]), "the fee ingestion charges");
    let listed = app.get(&format!("/events?customer_id={customer}&billing_status=billed")).await.expect(200).body;
    assert_eq!(ids(&listed["items"]).len(), 2);

    // The fee is a transaction like an ingested event's, and announced like one.
    let listed = transactions(&app, customer).await;
    let fees: Vec<&Value> = listed.iter().filter(|item| item["type"] == "fee").collect();
    assert_eq!(fees.len(), 2, "{listed:?}");
    let log = app.get("/webhooks/events?limit=100").await.expect(200).body;
    let topics: Vec<&str> =
        log["models"].as_array().unwrap().iter().map(|item| item["topic"].as_str().unwrap()).collect();
    assert_eq!(topics.iter().filter(|topic| **topic == "event.unbilled").count(), 1, "{topics:?}");
    // Funding, the late event's fee and the rebilled one.
    assert_eq!(topics.iter().filter(|topic| **topic == "transaction.completed").count(), 3, "{topics:?}");

    // Nothing is left to bill: a second rebill examines nothing and moves nothing.
    let again = rebill(&app, period).await;
    assert_eq!((&again["events_examined"], &again["events_billed"]), (&json!(0), &json!(0)), "{again}");
    assert_eq!(again["fees"], json!([]));
    assert_eq!(available(&app, customer).await, "6");
    app.assert_ledger_agrees().await;
}

/// A dry run answers what a rebill would bill, figure for figure, and moves nothing: no
/// balance, no transaction, no billing status, no tier counter.
async fn a_dry_run_reports_the_same_figures_and_moves_nothing(app: TestApp) {
    let fixture = fixture(&app, 1).await;
    let customer = fixture.customer(0);
    let started = app.clock.now();
    let calls = |prefix: &str, count: usize, at: DateTime<Utc>| -> Vec<Value> {
        (0..count).map(|index| event(&format!("{prefix}-{index}"), "call", json!({}), at)).collect()
    };
    let mut batch = calls("call", 3, started);
    batch.push(medium("medium", started));
    batch.push(event("upload", "upload", json!({"bytes": 4}), started));
    send(&app, customer, batch).await;
    app.clock.advance(Duration::minutes(1));
    fixture.fix_catalog(&app, &[]).await;
    let before = transactions(&app, customer).await;

    let request = json!({"period_from": at(started), "period_to": at(app.clock.now()), "dry_run": true});
    let dry = rebill(&app, request.clone()).await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!((&dry["events_billed"], &dry["events_still_unbilled"]), (&json!(4), &json!(1)), "{dry}");
    // Three calls (1 + 1 + 2) and a medium completion (2).
    assert_eq!(dry["fees"], json!([{"currency": "USD", "count": 4, "amount": 6}]));
    assert_eq!(dry["still_unbilled"][0]["unbilled_reason"]["code"], "no_matching_price");
    assert_eq!(available(&app, customer).await, "10");
    assert_eq!(transactions(&app, customer).await, before);
    let unbilled = app.get(&format!("/events?customer_id={customer}&billing_status=unbilled")).await.expect(200);
    assert_eq!(ids(&unbilled.body["items"]).len(), 5);
    // A second dry run finds the tier counters where they were.
    assert_eq!(rebill(&app, request.clone()).await, dry);
    app.assert_ledger_agrees().await;

    let mut real = request;
    real["dry_run"] = json!(false);
    let done = rebill(&app, real).await;
    let without_flag = |mut report: Value| {
        report.as_object_mut().unwrap().remove("dry_run");
        report
    };
    assert_eq!(without_flag(done), without_flag(dry));
    assert_eq!(available(&app, customer).await, "4");
    app.assert_ledger_agrees().await;
}

/// Two rebills of one range sent at once bill each event once between them: the billed lists
/// are disjoint and cover every event, and each fee is debited once.
async fn concurrent_rebills_bill_each_event_once(app: TestApp) {
    let fixture = fixture(&app, 2).await;
    // Three rounds of unbilled events, a minute apart: 0.2 each once priced.
    let mut rounds = Vec::new();
    for round in 0..3 {
        app.clock.advance(Duration::minutes(1));
        let sent = app.clock.now();
        for customer in 0..2 {
            let events = (0..5)
                .map(|index| {
                    event(
                        &format!("r{round}-c{customer}-{index}"),
                        "completion",
                        json!({"model": "medium", "tokens": 100}),
                        sent,
                    )
                })
                .collect();
            send(&app, fixture.customer(customer), events).await;
        }
        rounds.push(sent);
    }
    fixture.fix_catalog(&app, &[]).await;
    for (round, sent) in rounds.into_iter().enumerate() {
        let request = json!({"period_from": at(sent), "period_to": at(sent + Duration::seconds(1))});
        let (first, second) = tokio::join!(rebill(&app, request.clone()), rebill(&app, request));
        let first_ids: BTreeSet<String> = ids(&first["billed"]).into_iter().collect();
        let second_ids: BTreeSet<String> = ids(&second["billed"]).into_iter().collect();
        assert!(first_ids.is_disjoint(&second_ids), "round {round}: {first_ids:?} and {second_ids:?}");
        assert_eq!(first_ids.len() + second_ids.len(), 10, "round {round}: {first} {second}");
        let expected = ["9", "8", "7"][round];
        for customer in 0..2 {
            assert_eq!(available(&app, fixture.customer(customer)).await, expected, "round {round}");
        }
    }
    app.assert_ledger_agrees().await;
}

/// `customer_id` and `event_types` choose the events; `period_from` (inclusive) and
/// `period_to` (exclusive) bound them by `occurred_at`. Events outside are left unbilled.
async fn filters_and_the_period_choose_the_events(app: TestApp) {
    let fixture = fixture(&app, 2).await;
    let start = app.clock.now();
    for customer in 0..2 {
        let events = vec![
            medium(&format!("c{customer}-medium"), start + Duration::seconds(1)),
            event(&format!("c{customer}-call"), "call", json!({}), start + Duration::seconds(1)),
            event(&format!("c{customer}-before"), "call", json!({}), start),
            event(&format!("c{customer}-at-end"), "call", json!({}), start + Duration::seconds(2)),
        ];
        send(&app, fixture.customer(customer), events).await;
    }
    app.clock.advance(Duration::minutes(1));
    fixture.fix_catalog(&app, &[]).await;
    let (from, to) = (at(start + Duration::milliseconds(500)), at(start + Duration::seconds(2)));

    // A rebill acts in its key's mode: live mode has no unbilled events, nor these customers.
    let everything = json!({"period_from": from, "period_to": to});
    let live = app.call(reqwest::Method::POST, "/events/rebill", Some(&app.live_key), Some(&everything)).await;
    assert_eq!((live.status.as_u16(), &live.body["events_examined"]), (200, &json!(0)), "{}", live.text);
    let mut of_test_customer = everything.clone();
    of_test_customer["customer_id"] = json!(fixture.customer(0));
    let live = app.call(reqwest::Method::POST, "/events/rebill", Some(&app.live_key), Some(&of_test_customer)).await;
    assert_eq!(live.status.as_u16(), 422, "{}", live.text);

    let calls_of_first = json!({"customer_id": fixture.customer(0), "event_types": ["call"], "period_from": from,
                                "period_to": to});
    let report = rebill(&app, calls_of_first).await;
    assert_eq!(ids(&report["billed"]), ["c0-call"], "{report}");
    assert_eq!(report["events_examined"], 1);

    let mediums = json!({"event_types": ["completion"], "period_from": from, "period_to": to});
    let report = rebill(&app, mediums).await;
    assert_eq!(ids(&report["billed"]), ["c0-medium", "c1-medium"], "{report}");

    let rest = json!({"period_from": from, "period_to": to});
    assert_eq!(ids(&rebill(&app, rest).await["billed"]), ["c1-call"]);
    let unbilled = app.get("/events?billing_status=unbilled").await.expect(200).body;
    let mut left = ids(&unbilled["items"]);
    left.sort();
    assert_eq!(left, ["c0-at-end", "c0-before", "c1-at-end", "c1-before"]);
    app.assert_ledger_agrees().await;
}

/// An event billed late counts in the tier period it occurred in, after the events of that
/// period billed before it, and not in the period it is billed in. Events older than the
/// 7-day grace window are rebilled all the same: they were accepted when they arrived.
async fn a_late_event_counts_in_the_tier_period_it_occurred_in(app: TestApp) {
    let fixture = fixture(&app, 1).await;
    let customer = fixture.customer(0);
    let now = app.clock.now();
    let next_month =
        Utc.with_ymd_and_hms(now.year() + now.month() as i32 / 12, now.month() % 12 + 1, 1, 0, 0, 0).unwrap();
    app.clock.advance(next_month - now - Duration::hours(2));
    let december = app.clock.now();
    let calls =
        (0..3).map(|index| event(&format!("old-{index}"), "call", json!({}), december + Duration::minutes(index)));
    send(&app, customer, calls.collect()).await;

    app.clock.advance(Duration::hours(3));
    fixture.fix_catalog(&app, &[]).await;
    send(&app, customer, vec![event("new-0", "call", json!({}), app.clock.now())]).await;
    assert_eq!(available(&app, customer).await, "9", "the first call of the new month");

    app.clock.advance(Duration::days(8));
    let report =
        rebill(&app, json!({"period_from": at(december - Duration::days(1)), "period_to": at(app.clock.now())})).await;
    let fees: Vec<(String, String)> = report["billed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| (event["id"].as_str().unwrap().to_owned(), event["total_fees"].to_string()))
        .collect();
    // The month they occurred in: two calls at 1, the third at 2.
    let expected = [("old-0", "1"), ("old-1", "1"), ("old-2", "2")].map(|(id, fee)| (id.to_owned(), fee.to_owned()));
    assert_eq!(fees, expected, "{report}");
    assert_eq!(available(&app, customer).await, "5");
    // The new month counts one call: the second is still at 1.
    send(&app, customer, vec![event("new-1", "call", json!({}), app.clock.now())]).await;
    assert_eq!(available(&app, customer).await, "4");
    app.assert_ledger_agrees().await;
}

/// An event still unpriceable stays unbilled, with its reason brought up to date; a page holds
/// at most `limit` events and `next_cursor` goes on after them, past the unbilled ones.
async fn still_unpriceable_events_keep_an_up_to_date_reason_and_pages_go_on(app: TestApp) {
    let fixture = fixture(&app, 1).await;
    let customer = fixture.customer(0);
    let start = app.clock.now();
    let events = vec![
        event("up-0", "upload", json!({}), start),
        event("up-1", "upload", json!({"bytes": 2}), start + Duration::seconds(1)),
        event("up-2", "upload", json!({}), start + Duration::seconds(2)),
    ];
    send(&app, customer, events).await;
    app.clock.advance(Duration::minutes(1));
    fixture.fix_catalog(&app, &[UPLOADS_PRICE]).await;

    let request = json!({"period_from": at(start), "period_to": at(app.clock.now()), "limit": 2});
    let first = rebill(&app, request.clone()).await;
    assert_eq!(ids(&first["billed"]), ["up-1"], "{first}");
    assert_eq!(ids(&first["still_unbilled"]), ["up-0"]);
    assert_eq!(first["still_unbilled"][0]["unbilled_reason"]["code"], "missing_volume");
    assert_eq!(first["has_more"], true);
    let shown = app.get("/events/up-0").await.expect(200).body;
    assert_eq!(shown["unbilled_reason"]["code"], "missing_volume", "the reason is the one of now: {shown}");

    let mut next = request;
    next["cursor"] = first["next_cursor"].clone();
    let second = rebill(&app, next).await;
    assert_eq!(ids(&second["still_unbilled"]), ["up-2"], "{second}");
    assert_eq!((&second["has_more"], &second["events_billed"]), (&json!(false), &json!(0)));
    assert_eq!(available(&app, customer).await, "9");
    app.assert_ledger_agrees().await;
}

/// Bad input is a 422 naming the field, and bills nothing.
async fn bad_input_is_refused_and_bills_nothing(app: TestApp) {
    let fixture = fixture(&app, 1).await;
    let customer = fixture.customer(0);
    let now = app.clock.now();
    send(&app, customer, vec![medium("waiting", now)]).await;
    fixture.fix_catalog(&app, &[]).await;
    let (from, to) = (at(now - Duration::hours(1)), at(now + Duration::hours(1)));
    let refusals = [
        (json!({"period_from": to, "period_to": from}), "period_to"),
        (json!({"period_from": from, "period_to": from}), "period_to"),
        (json!({"period_from": at(now - Duration::days(32)), "period_to": to}), "period_to"),
        (json!({"period_from": from, "period_to": to, "customer_id": "cus_nobody"}), "customer_id"),
        (json!({"period_from": from, "period_to": to, "limit": 0}), "limit"),
        (json!({"period_from": from, "period_to": to, "limit": 1001}), "limit"),
        (json!({"period_from": from, "period_to": to, "cursor": "yesterday"}), "cursor"),
        (json!({"period_from": from, "period_to": to, "event_types": [""]}), "event_types[0]"),
        (json!({"period_from": "soon", "period_to": to}), "period_from"),
        // A missing field is named in the message of the body's root.
        (json!({"period_to": to}), "$"),
    ];
    for (request, field) in refusals {
        let refused = app.post("/events/rebill", request.clone()).await.expect(422);
        assert!(refused.body["errors"][field].is_array(), "{request}: {}", refused.body);
    }
    assert_eq!(app.get("/events/waiting").await.body["billing_status"], "unbilled");
    assert_eq!(available(&app, customer).await, "10");
    // Exactly 31 days is allowed.
    let longest = json!({"period_from": at(now - Duration::days(31) + Duration::hours(1)), "period_to": to});
    assert_eq!(ids(&rebill(&app, longest).await["billed"]), ["waiting"]);
}

on_both_backends!(
    an_unbilled_event_is_billed_like_ingestion_once_the_catalog_is_fixed,
    a_dry_run_reports_the_same_figures_and_moves_nothing,
    concurrent_rebills_bill_each_event_once,
    filters_and_the_period_choose_the_events,
    a_late_event_counts_in_the_tier_period_it_occurred_in,
    still_unpriceable_events_keep_an_up_to_date_reason_and_pages_go_on,
    bad_input_is_refused_and_bills_nothing,
);
