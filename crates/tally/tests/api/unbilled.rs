//! Unmatched usage events are accepted but not billed (Credyt's rule): an event that is well
//! formed but cannot be priced is stored unbilled with a reason, shown, filterable and
//! announced, and never stops the rest of its batch from being billed.

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Prices completions by model, with no catch-all entry: a new model name matches nothing. A
/// `huge` model's rate takes a fee past the limit on an amount (10^15) from 10 tokens on.
const MODELS: &str = r#"{
  "name": "Models", "code": "models", "publish": true,
  "prices": [
    { "name": "Tokens", "type": "usage_based", "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "completion", "usage_type": "volume", "volume_field": "tokens",
                             "billable_dimensions": ["model"] },
      "pricing": [ { "asset": "USD", "values": [
        { "dimensions": { "model": "small" }, "values": [ { "volume_rate": 0.001 } ] },
        { "dimensions": { "model": "large" }, "values": [ { "volume_rate": 0.01 } ] },
        { "dimensions": { "model": "huge" }, "values": [ { "volume_rate": 100000000000000 } ] }
      ] } ] }
  ]
}"#;

/// Two prices for one event type: a tiered price per call (the first call of the month costs 1,
/// later ones 2) and a price per token.
const CALLS: &str = r#"{
  "name": "Calls", "code": "calls", "publish": true,
  "prices": [
    { "name": "Per call", "type": "usage_based", "billing_model": { "type": "real_time" },
      "pricing_model": "tiered", "tiering": { "basis": "unit", "period": "monthly" },
      "usage_calculation": { "event_type": "call", "usage_type": "unit" },
      "pricing": [ { "asset": "USD", "values": [ { "up_to": 1, "unit_price": 1 }, { "unit_price": 2 } ] } ] },
    { "name": "Per token", "type": "usage_based", "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "call", "usage_type": "volume", "volume_field": "tokens" },
      "pricing": [ { "asset": "USD", "values": [ { "volume_rate": 0.01 } ] } ] }
  ]
}"#;

async fn subscribed(app: &TestApp, product: &str, code: &str) -> String {
    app.post("/products", body(product)).await.expect(201);
    let customer = app
        .post("/customers", json!({"name": "Builder", "subscriptions": [{"products": [{"code": code}]}]}))
        .await
        .expect(201);
    assert_eq!(customer.body["subscriptions"][0]["status"], "active", "{}", customer.body);
    customer.body["id"].as_str().unwrap().to_owned()
}

fn event(id: &str, event_type: &str, data: Value, at: &str) -> Value {
    json!({"id": id, "event_type": event_type, "occurred_at": at, "data": data})
}

/// The reason code of every unbilled event the list gives for `query`, by event id.
async fn unbilled_codes(app: &TestApp, query: &str) -> BTreeMap<String, String> {
    let listed = app.get(&format!("/events?limit=100&{query}")).await.expect(200);
    listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            assert_eq!(item["billing_status"], "unbilled", "{item}");
            assert_eq!(item["has_fees"], false, "{item}");
            (item["id"].as_str().unwrap().to_owned(), item["unbilled_reason"]["code"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// A batch mixing a priceable event with events no price can price is accepted whole: the
/// priceable one is billed, the others are stored without fees and with a reason each, which
/// `GET /events/{id}` shows, `GET /events` filters on, and `event.unbilled` announces once.
async fn unpriceable_events_are_stored_unbilled_and_the_rest_billed(app: TestApp) {
    let hooks = json!({"url": "http://127.0.0.1:9/unbilled", "topics": ["event.unbilled"]});
    app.post("/webhooks", hooks).await.expect(201);
    let customer = subscribed(&app, MODELS, "models").await;
    app.fund(&customer, "USD", "10", "fund-1").await;
    let at = app.clock.now().to_rfc3339();
    let batch = json!({"customer_id": customer, "events": [
        event("ok", "completion", json!({"model": "small", "tokens": 1000}), &at),
        event("new-model", "completion", json!({"model": "gpt-9", "tokens": 1000}), &at),
        event("no-model", "completion", json!({"tokens": 1000}), &at),
        event("no-volume", "completion", json!({"model": "small"}), &at),
        event("text-volume", "completion", json!({"model": "small", "tokens": "lots"}), &at),
        event("negative", "completion", json!({"model": "large", "tokens": -5}), &at),
        event("chat", "chat_message", json!({"model": "small", "tokens": 10}), &at),
    ]});
    app.post("/events", batch.clone()).await.expect(204);
    // Only `ok` was billed: 1000 × 0.001.
    assert_eq!(app.balances(&customer, "default:USD").await.0, "9");

    let billed = app.get("/events/ok").await.expect(200);
    assert_eq!(billed.body["billing_status"], "billed");
    assert!(billed.body.get("unbilled_reason").is_none(), "{}", billed.body);
    assert_eq!(billed.body["fees"][0]["amount"].to_string(), "1");
    let expected = BTreeMap::from([
        ("chat", "no_matching_price"),
        ("negative", "invalid_volume"),
        ("new-model", "no_matching_dimension"),
        ("no-model", "no_matching_dimension"),
        ("no-volume", "missing_volume"),
        ("text-volume", "invalid_volume"),
    ]);
    for (id, code) in &expected {
        let shown = app.get(&format!("/events/{id}")).await.expect(200);
        assert_eq!(shown.body["billing_status"], "unbilled", "{id}: {}", shown.body);
        assert_eq!(shown.body["unbilled_reason"]["code"], *code, "{id}: {}", shown.body);
        assert!(!shown.body["unbilled_reason"]["message"].as_str().unwrap().is_empty());
        assert_eq!(shown.body["fees"], json!([]), "{id}");
    }
    let no_volume = app.get("/events/no-volume").await.expect(200);
    let message = no_volume.body["unbilled_reason"]["message"].as_str().unwrap();
    assert!(message.contains("Tokens") && message.contains("tokens"), "names the price and the field: {message}");

    // Filters: by status, by reason; unknown values are refused.
    let unbilled = unbilled_codes(&app, "billing_status=unbilled").await;
    let expected_owned: BTreeMap<String, String> =
        expected.iter().map(|(id, code)| (id.to_string(), code.to_string())).collect();
    assert_eq!(unbilled, expected_owned);
    let billed_only = app.get("/events?billing_status=billed").await.expect(200);
    assert_eq!(billed_only.body["total_count"], 1);
    assert_eq!(billed_only.body["items"][0]["id"], "ok");
    assert_eq!(billed_only.body["items"][0]["billing_status"], "billed");
    let volumes = unbilled_codes(&app, &format!("customer_id={customer}&unbilled_reason=invalid_volume")).await;
    assert_eq!(volumes.keys().collect::<Vec<_>>(), ["negative", "text-volume"]);
    let none = app.get("/events?billing_status=billed&unbilled_reason=missing_volume").await.expect(200);
    assert_eq!(none.body["total_count"], 0);
    // `has_fees` and `billing_status` alone read an index of their own; with a narrower filter
    // that filter's index leads and they are checked on its rows (repo::events::list). Either
    // way, and together, they select the same events.
    let unbilled_ids: Vec<&str> = expected.keys().copied().collect();
    for (query, matching) in [
        ("has_fees=true", vec!["ok"]),
        ("billing_status=billed", vec!["ok"]),
        ("has_fees=true&billing_status=billed", vec!["ok"]),
        ("has_fees=false", unbilled_ids.clone()),
        ("has_fees=false&billing_status=unbilled", unbilled_ids.clone()),
        ("has_fees=false&billing_status=billed", vec![]),
        ("has_fees=true&billing_status=unbilled", vec![]),
    ] {
        for narrower in [
            String::new(),
            format!("&customer_id={customer}"),
            "&event_types=completion".to_owned(),
            "&event_types=completion,chat_message".to_owned(),
            "&period_from=2000-01-01".to_owned(),
        ] {
            let listed = app.get(&format!("/events?limit=100&{query}{narrower}")).await.expect(200).body;
            let mut ids: Vec<&str> =
                listed["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap()).collect();
            ids.sort();
            let wanted: Vec<&str> =
                matching.iter().copied().filter(|id| *id != "chat" || narrower != "&event_types=completion").collect();
            assert_eq!(ids, wanted, "{query}{narrower}");
            assert_eq!(listed["total_count"], wanted.len(), "{query}{narrower}");
        }
    }
    for (query, field) in [("billing_status=maybe", "billing_status"), ("unbilled_reason=no_luck", "unbilled_reason")] {
        let refused = app.get(&format!("/events?{query}")).await.expect(422);
        assert!(refused.body["errors"][field].is_array(), "{query}: {}", refused.body);
    }

    // A replay stores nothing and announces nothing again: one `event.unbilled` per event.
    app.post("/events", batch).await.expect(204);
    assert_eq!(app.balances(&customer, "default:USD").await.0, "9");
    let log = app.get("/webhooks/events?limit=100").await.expect(200);
    let mut announced: BTreeMap<String, String> = BTreeMap::new();
    for item in log.body["models"].as_array().unwrap() {
        assert_eq!(item["topic"], "event.unbilled", "{item}");
        let data = &item["data"];
        assert_eq!(data["customer_id"], customer.as_str());
        assert_eq!(data["billing_status"], "unbilled");
        assert!(data["unbilled_reason"]["message"].is_string(), "{data}");
        let previous = announced
            .insert(data["id"].as_str().unwrap().to_owned(), data["unbilled_reason"]["code"].as_str().unwrap().into());
        assert!(previous.is_none(), "announced twice: {data}");
    }
    assert_eq!(announced, expected_owned);
    app.post("/webhooks/test/event.unbilled", json!({})).await.expect(202);
    app.assert_ledger_agrees().await;
}

/// An event with no subscription active when it occurred is stored unbilled
/// (`no_subscription`). A malformed event, or a fee past the limit on an amount, still
/// refuses the whole batch, unpriceable events included.
async fn only_malformed_batches_and_fees_past_the_limit_are_refused(app: TestApp) {
    let loner = app.customer("No plan").await;
    let at = app.clock.now().to_rfc3339();
    let batch = json!({"customer_id": loner, "events": [event("lonely", "completion", json!({"tokens": 5}), &at)]});
    app.post("/events", batch).await.expect(204);
    let lonely = app.get("/events/lonely").await.expect(200);
    assert_eq!(lonely.body["billing_status"], "unbilled");
    assert_eq!(lonely.body["unbilled_reason"]["code"], "no_subscription", "{}", lonely.body);

    let customer = subscribed(&app, MODELS, "models").await;
    // After the subscription started: an event is priced by the subscriptions of its instant.
    let at = app.clock.now().to_rfc3339();
    let malformed = json!({"customer_id": customer, "events": [
        event("unmatched-1", "chat_message", json!({}), &at),
        event("", "completion", json!({"model": "small", "tokens": 1}), &at),
    ]});
    let refused = app.post("/events", malformed).await.expect(422);
    assert!(refused.body["errors"]["events[1].id"].is_array(), "{}", refused.body);
    app.get("/events/unmatched-1").await.expect(404);

    // 100 tokens at 10^14: a fee of 10^16, past the limit.
    let huge = json!({"customer_id": customer, "events": [
        event("unmatched-2", "chat_message", json!({}), &at),
        event("huge", "completion", json!({"model": "huge", "tokens": 100}), &at),
    ]});
    let too_large = app.post("/events", huge).await;
    assert_eq!(too_large.status, 422, "{}", too_large.text);
    assert!(too_large.body["errors"]["events[1]"].is_array(), "{}", too_large.body);
    app.get("/events/unmatched-2").await.expect(404);
    app.get("/events/huge").await.expect(404);
    assert_eq!(app.get("/events").await.body["total_count"], 1);
    app.assert_ledger_agrees().await;
}

/// An event is priced whole or not at all: when one of the prices its type matches cannot
/// price it, no price bills it, and it moves no tier counter, so the next event is priced
/// as if it had not come.
async fn an_event_one_price_cannot_price_is_billed_by_none(app: TestApp) {
    let customer = subscribed(&app, CALLS, "calls").await;
    app.fund(&customer, "USD", "10", "fund-1").await;
    let at = app.clock.now().to_rfc3339();
    let batch = json!({"customer_id": customer, "events": [
        // "Per call" could price it, "Per token" cannot: no fee from either.
        event("call-a", "call", json!({}), &at),
        // The first call of the month (1) plus 100 tokens (1).
        event("call-b", "call", json!({"tokens": 100}), &at),
        // The second call (2) plus 100 tokens (1).
        event("call-c", "call", json!({"tokens": 100}), &at),
    ]});
    app.post("/events", batch).await.expect(204);
    let unpriced = app.get("/events/call-a").await.expect(200);
    assert_eq!(unpriced.body["fees"], json!([]));
    assert_eq!(unpriced.body["unbilled_reason"]["code"], "missing_volume", "{}", unpriced.body);
    let mut totals = Vec::new();
    for id in ["call-b", "call-c"] {
        let billed = app.get(&format!("/events?event_id={id}")).await.expect(200);
        assert_eq!(billed.body["items"][0]["billing_status"], "billed");
        totals.push(billed.body["items"][0]["total_fees"].to_string());
    }
    assert_eq!(totals, ["2", "3"]);
    assert_eq!(app.balances(&customer, "default:USD").await.0, "5");
    app.assert_ledger_agrees().await;
}

/// A simulation answers 200 with a warning, naming the event and the reason's code, for each
/// event that would be stored unbilled, and prices the rest as if those had not come.
async fn simulations_warn_about_events_they_cannot_price(app: TestApp) {
    let product = app.post("/products", body(CALLS)).await.expect(201);
    let product_id = product.body["id"].as_str().unwrap();
    let at = app.clock.now().to_rfc3339();
    let simulated = app
        .post(
            &format!("/products/{product_id}/1/simulate-usage"),
            json!({"events": [
                event("s-no-volume", "call", json!({}), &at),
                event("s-text", "call", json!({"tokens": "many"}), &at),
                event("s-other", "upload", json!({}), &at),
                event("s-ok", "call", json!({"tokens": 100}), &at),
            ]}),
        )
        .await
        .expect(200);
    let fees: Vec<(String, String)> = simulated.body["fees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|fee| (fee["usage_id"].as_str().unwrap().to_owned(), fee["amount"].to_string()))
        .collect();
    // The first call of the month, as the unpriced ones before it did not count.
    assert_eq!(fees, [("s-ok".to_owned(), "1".to_owned()), ("s-ok".to_owned(), "1".to_owned())]);
    let warnings: Vec<&str> =
        simulated.body["warnings"].as_array().unwrap().iter().map(|warning| warning.as_str().unwrap()).collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    for (warning, (id, code)) in warnings.iter().zip([
        ("s-no-volume", "missing_volume"),
        ("s-text", "invalid_volume"),
        ("s-other", "no_matching_price"),
    ]) {
        assert!(warning.contains(id) && warning.contains(code), "{warning} should name {id} and {code}");
    }
    assert_eq!(app.get("/events").await.body["total_count"], 0);
}

on_both_backends!(
    unpriceable_events_are_stored_unbilled_and_the_rest_billed,
    only_malformed_batches_and_fees_past_the_limit_are_refused,
    an_event_one_price_cannot_price_is_billed_by_none,
    simulations_warn_about_events_they_cannot_price,
);
