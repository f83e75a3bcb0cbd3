//! Products, subscriptions and real-time usage billing, end to end over HTTP.

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use serde_json::{json, Value};

/// The seed's product, exactly as the blog post writes it.
use tally::bench::GLITCH_IMAGES;

const IMG: &str = r#"{"code":"IMG","name":"Image Generation","precision":2,"label":"image","symbol":"📸","rates":[{"source":"USD","rate":0.10}]}"#;

fn events(customer: &str, ids: &[&str], event_type: &str) -> Value {
    let now = chrono::Utc::now().to_rfc3339();
    json!({
        "customer_id": customer,
        "events": ids.iter().map(|id| json!({"id": id, "event_type": event_type, "occurred_at": now, "subject": "user-42", "description": "Generated an image"})).collect::<Vec<_>>(),
    })
}

async fn subscribed_customer(app: &TestApp) -> (String, String) {
    app.post("/assets", body(IMG)).await.expect(201);
    let product = app.post("/products", body(GLITCH_IMAGES)).await.expect(201);
    assert_eq!(product.body["code"], "glitch_images_std");
    assert_eq!(product.body["version"], 1);
    assert_eq!(product.body["status"], "published");
    assert_eq!(product.body["is_default"], true);
    let product_id = product.body["id"].as_str().unwrap().to_owned();
    assert!(product_id.starts_with("prp_"));
    let customer = app
        .post("/customers", json!({"name": "Glitch fan", "external_id": "fan-1", "subscriptions": [{"products": [{"code": "glitch_images_std"}]}]}))
        .await
        .expect(201);
    let subscription = &customer.body["subscriptions"][0];
    assert_eq!(subscription["status"], "active", "{}", customer.body);
    assert_eq!(subscription["products"][0]["id"], product_id.as_str());
    assert_eq!(subscription["products"][0]["version"], 1, "\"default\" resolves at subscription time");
    (customer.body["id"].as_str().unwrap().to_owned(), product_id)
}

async fn seed_product_bills_one_img_per_image(app: TestApp) {
    let (customer, product_id) = subscribed_customer(&app).await;
    // The subscription made the IMG account.
    let wallet = app.get(&format!("/customers/{customer}/wallet")).await.expect(200);
    assert_eq!(wallet.body["accounts"][0]["id"], "default:IMG");
    app.fund(&customer, "IMG", "10", "topup-1").await;

    let batch = events(&customer, &["img-1", "img-2", "img-3"], "image_generated");
    app.post("/events", batch.clone()).await.expect(204);
    assert_eq!(app.balances(&customer, "default:IMG").await.0, "7");

    let event = app.get("/events/img-2").await.expect(200);
    assert_eq!(event.body["customer_id"], customer.as_str());
    assert_eq!(event.body["subject"], "user-42");
    let fee = &event.body["fees"][0];
    assert_eq!(fee["amount"].to_string(), "1");
    assert_eq!(fee["currency"], "IMG");
    assert_eq!(fee["product_id"], product_id.as_str());
    assert_eq!(fee["product_code"], "glitch_images_std");
    assert_eq!(fee["product_version"], 1);
    assert_eq!(fee["price_name"], "Image Generation");
    assert_eq!(fee["usage_type"], "unit");
    assert_eq!(fee["unit_price"].to_string(), "1");

    // A replay of the whole batch moves nothing; an unmatched event is stored without fees.
    app.post("/events", batch).await.expect(204);
    app.post("/events", events(&customer, &["chat-1"], "chat_message")).await.expect(204);
    assert_eq!(app.balances(&customer, "default:IMG").await.0, "7");
    let unmatched = app.get("/events/chat-1").await.expect(200);
    assert_eq!(unmatched.body["fees"], json!([]));
    assert_eq!(unmatched.body["billing_status"], "unbilled");
    assert_eq!(unmatched.body["unbilled_reason"]["code"], "no_matching_price", "{}", unmatched.body);

    let listed = app.get(&format!("/events?customer_id={customer}")).await.expect(200);
    assert_eq!(listed.body["total_count"], 4);
    let with_fees = app.get(&format!("/events?customer_id={customer}&has_fees=true")).await.expect(200);
    assert_eq!(with_fees.body["total_count"], 3);
    assert_eq!(with_fees.body["items"][0]["total_fees"].to_string(), "1");
    assert_eq!(with_fees.body["items"][0]["fee_currency"], "IMG");
    assert_eq!(with_fees.body["items"][0]["external_id"], "fan-1");
    let by_type = app.get("/events?event_types=chat_message,other").await.expect(200);
    assert_eq!(by_type.body["total_count"], 1);

    // Usage is never refused for a low balance: the account goes negative.
    let ids: Vec<String> = (0..10).map(|index| format!("more-{index}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.post(
        "/events",
        json!({"customer_external_id": "fan-1", "events": events(&customer, &refs, "image_generated")["events"]}),
    )
    .await
    .expect(204);
    assert_eq!(app.balances(&customer, "default:IMG").await.0, "-3");

    // Usage history shows in the account's transactions.
    let history =
        app.get(&format!("/customers/{customer}/wallet/default:IMG/transactions?limit=100")).await.expect(200);
    let fees = history.body["items"].as_array().unwrap().iter().filter(|item| item["type"] == "fee").count();
    assert_eq!(fees, 13);
    app.assert_ledger_agrees().await;
}

async fn invalid_batches_are_refused_whole(app: TestApp) {
    let (customer, _) = subscribed_customer(&app).await;
    let now = chrono::Utc::now();
    let batch = json!({"customer_id": customer, "events": [
        {"id": "ok-1", "event_type": "image_generated", "occurred_at": now.to_rfc3339()},
        {"id": "old", "event_type": "image_generated", "occurred_at": (now - chrono::Duration::days(30)).to_rfc3339()},
        {"id": "future", "event_type": "image_generated", "occurred_at": (now + chrono::Duration::hours(1)).to_rfc3339()},
        {"id": "", "event_type": "image_generated", "occurred_at": now.to_rfc3339()},
        {"id": "nested", "event_type": "image_generated", "occurred_at": now.to_rfc3339(), "data": {"deep": {"x": 1}}},
    ]});
    let refused = app.post("/events", batch).await.expect(422);
    let errors = &refused.body["errors"];
    for field in ["events[1].occurred_at", "events[2].occurred_at", "events[3].id", "events[4].data.deep"] {
        assert!(errors[field].is_array(), "expected an error on {field}: {errors}");
    }
    app.get("/events/ok-1").await.expect(404);
    let duplicate = json!({"customer_id": customer, "events": [
        {"id": "twice", "event_type": "image_generated", "occurred_at": now.to_rfc3339()},
        {"id": "twice", "event_type": "image_generated", "occurred_at": now.to_rfc3339()},
    ]});
    app.post("/events", duplicate).await.expect(422);
    app.post("/events", json!({"customer_id": "cust_nobody", "events": [{"id": "x", "event_type": "a", "occurred_at": now.to_rfc3339()}]})).await.expect(422);
    app.post("/events", json!({"events": []})).await.expect(422);
    let too_many: Vec<Value> = (0..1001)
        .map(|index| json!({"id": format!("e{index}"), "event_type": "a", "occurred_at": now.to_rfc3339()}))
        .collect();
    app.post("/events", json!({"customer_id": customer, "events": too_many})).await.expect(422);
    assert_eq!(app.get("/events").await.body["total_count"], 0);
    app.assert_ledger_agrees().await;
}

async fn the_same_event_sent_concurrently_is_billed_once(app: TestApp) {
    let (customer, _) = subscribed_customer(&app).await;
    app.fund(&customer, "IMG", "100", "topup-1").await;
    let batch = events(&customer, &["same-1", "same-2"], "image_generated");
    let (first, second, third) = tokio::join!(
        app.post("/events", batch.clone()),
        app.post("/events", batch.clone()),
        app.post("/events", batch.clone())
    );
    for reply in [first, second, third] {
        reply.expect(204);
    }
    assert_eq!(app.balances(&customer, "default:IMG").await.0, "98");
    app.assert_ledger_agrees().await;
}

const TOKENS_PRODUCT: &str = r#"{
  "name": "LLM API",
  "code": "llm_api",
  "prices": [
    {
      "id": "prc_tokens",
      "name": "Tokens",
      "type": "usage_based",
      "billing_model": { "type": "real_time" },
      "pricing_model": "tiered",
      "tiering": { "basis": "volume", "period": "monthly" },
      "usage_calculation": { "event_type": "completion", "usage_type": "volume", "volume_field": "tokens", "billable_dimensions": ["model"] },
      "pricing": [ { "asset": "USD", "values": [
        { "dimensions": { "model": "*" }, "values": [ { "up_to": 1000, "volume_rate": 0.002 }, { "volume_rate": 0.001 } ] },
        { "dimensions": { "model": "large" }, "values": [ { "up_to": 1000, "volume_rate": 0.02 }, { "volume_rate": 0.01 } ] }
      ] } ]
    },
    {
      "name": "Monthly platform fee",
      "type": "fixed",
      "billing_model": { "type": "recurring", "recurring": { "interval": "month" } },
      "pricing": [ { "asset": "USD", "values": [ { "unit_price": 5 } ] } ]
    }
  ],
  "entitlements": [
    { "name": "Welcome credit", "asset": "USD", "amount": 2.5, "purpose": "promotion", "lifecycle": { "duration": "month", "refresh": { "strategy": "expire_and_replace" } } }
  ],
  "publish": true
}"#;

async fn tiered_volume_dimensions_fees_and_entitlements(app: TestApp) {
    let product = app.post("/products", body(TOKENS_PRODUCT)).await.expect(201);
    let product_id = product.body["id"].as_str().unwrap().to_owned();
    let customer = app.customer("Builder").await;
    app.fund(&customer, "USD", "20", "topup-1").await;
    let subscription = app
        .post(
            &format!("/customers/{customer}/subscriptions"),
            json!({"products": [{"id": product_id, "version": "default"}]}),
        )
        .await
        .expect(201);
    assert_eq!(subscription.body["status"], "active");
    assert!(subscription.body["renews_at"].is_string(), "a monthly fee sets the renewal");
    // 20 paid + 2.5 promotion − 5 monthly fee.
    assert_eq!(app.balances(&customer, "default:USD").await.0, "17.5");

    let now = chrono::Utc::now().to_rfc3339();
    let batch = json!({"customer_id": customer, "events": [
        {"id": "c1", "event_type": "completion", "occurred_at": now, "data": {"tokens": 600, "model": "small"}},
        {"id": "c2", "event_type": "completion", "occurred_at": now, "data": {"tokens": 600, "model": "large"}},
        {"id": "c3", "event_type": "completion", "occurred_at": now, "data": {"tokens": "250.5", "model": "small"}},
    ]});
    app.post("/events", batch).await.expect(204);
    // c1: 600 × 0.002 = 1.2 (tier 1). c2: 400 × 0.02 + 200 × 0.01 = 10 (crosses 1000, large).
    // c3: 250.5 × 0.001 = 0.2505 (tier 2, default dimension).
    let amounts: Vec<String> = futures_amounts(&app, &["c1", "c2", "c3"]).await;
    assert_eq!(amounts, vec!["1.2", "10", "0.2505"]);
    assert_eq!(app.balances(&customer, "default:USD").await.0, "6.0495");
    let c2 = app.get("/events/c2").await.expect(200);
    assert_eq!(c2.body["fees"][0]["dimensions"]["model"], "large");
    assert_eq!(c2.body["fees"][0]["input_volume"].to_string(), "600");

    // A missing volume does not refuse the batch: the event is stored unbilled, and says why.
    let missing = json!({"customer_id": customer, "events": [{"id": "c4", "event_type": "completion", "occurred_at": now, "data": {"model": "small"}}]});
    app.post("/events", missing).await.expect(204);
    let c4 = app.get("/events/c4").await.expect(200);
    assert_eq!(c4.body["fees"], json!([]));
    assert_eq!(c4.body["billing_status"], "unbilled");
    assert_eq!(c4.body["unbilled_reason"]["code"], "missing_volume", "{}", c4.body);
    assert_eq!(app.balances(&customer, "default:USD").await.0, "6.0495");

    // Promotion credit burned first: the 2.5 grant is spent.
    let grants =
        app.get(&format!("/customers/{customer}/wallet/default:USD/grants?purpose=promotion")).await.expect(200);
    assert_eq!(grants.body["items"][0]["available"].to_string(), "0");
    let subscribers = app.get(&format!("/products/{product_id}/subscribers")).await.expect(200);
    assert_eq!(subscribers.body["total_count"], 1);
    assert_eq!(subscribers.body["items"][0]["customer_id"], customer.as_str());
    app.assert_ledger_agrees().await;
}

async fn futures_amounts(app: &TestApp, ids: &[&str]) -> Vec<String> {
    let mut amounts = Vec::new();
    for id in ids {
        let event = app.get(&format!("/events/{id}")).await.expect(200);
        amounts.push(event.body["fees"][0]["amount"].to_string());
    }
    amounts
}

async fn simulate_usage_prices_and_changes_nothing(app: TestApp) {
    let product = app.post("/products", body(TOKENS_PRODUCT)).await.expect(201);
    let product_id = product.body["id"].as_str().unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    let simulated = app
        .post(&format!("/products/{product_id}/1/simulate-usage"), json!({"events": [
            {"id": "s1", "event_type": "completion", "occurred_at": now, "data": {"tokens": 1500, "model": "large"}},
            {"id": "s2", "event_type": "unknown", "occurred_at": now},
        ]}))
        .await
        .expect(200);
    assert_eq!(simulated.body["fees"].as_array().unwrap().len(), 1);
    assert_eq!(simulated.body["fees"][0]["amount"].to_string(), "25");
    assert_eq!(simulated.body["fees"][0]["usage_id"], "s1");
    assert_eq!(simulated.body["warnings"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/events").await.body["total_count"], 0);
    app.post(&format!("/products/{product_id}/9/simulate-usage"), json!({"events": []})).await;
    app.post(
        &format!("/products/{product_id}/9/simulate-usage"),
        json!({"events": [{"id": "x", "event_type": "a", "occurred_at": now}]}),
    )
    .await
    .expect(404);
}

async fn versions_publish_default_and_archive(app: TestApp) {
    app.post("/assets", body(IMG)).await.expect(201);
    let mut draft: Value = body(GLITCH_IMAGES);
    draft["publish"] = json!(false);
    let created = app.post("/products", draft.clone()).await.expect(201);
    assert_eq!((created.body["status"].as_str(), created.body["is_default"].as_bool()), (Some("draft"), Some(false)));
    let id = created.body["id"].as_str().unwrap().to_owned();
    let product = app.get(&format!("/products/{id}")).await.expect(200);
    assert!(product.body["default_version"].is_null());
    // Drafts cannot be subscribed to.
    let customer = app.customer("Early").await;
    app.post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"id": id, "version": 1}]}))
        .await
        .expect(422);
    app.patch(&format!("/products/{id}/1"), json!({"make_default": true})).await.expect(409);
    app.patch(&format!("/products/{id}/1"), json!({"publish": true})).await.expect(204);
    let version_two =
        app.post(&format!("/products/{id}"), json!({"prices": draft["prices"], "publish": true})).await.expect(201);
    assert_eq!(
        (version_two.body["version"].as_i64(), version_two.body["is_default"].as_bool()),
        (Some(2), Some(false))
    );
    app.patch(&format!("/products/{id}/2"), json!({"make_default": true})).await.expect(204);
    let default = app.get(&format!("/products/{id}/default")).await.expect(200);
    assert_eq!(default.body["version"], 2);
    assert_eq!(default.body["prices"][0]["name"], "Image Generation");
    assert!(default.body["prices"][0]["id"].as_str().unwrap().starts_with("prc_"));
    app.delete_version(&id, "2").await.expect(409);
    app.delete_version(&id, "1").await.expect(204);
    let product = app.get(&format!("/products/{id}")).await.expect(200);
    let statuses: Vec<&str> = product.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|version| version["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["published", "archived"], "newest first");
    app.post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"id": id, "version": 1}]}))
        .await
        .expect(422);
    let subscription = app
        .post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"code": "glitch_images_std"}]}))
        .await
        .expect(201);
    let subscription_id = subscription.body["id"].as_str().unwrap();
    assert_eq!(subscription.body["products"][0]["version"], 2);
    app.patch(&format!("/customers/{customer}/subscriptions/{subscription_id}"), json!({"status": "inactive"}))
        .await
        .expect(204);
    let view = app.get(&format!("/customers/{customer}")).await.expect(200);
    assert_eq!(view.body["subscriptions"][0]["status"], "inactive");
    assert_eq!(view.body["active_subscription_count"], 0);
    let listed = app.get("/products?code=glitch_images_std").await.expect(200);
    assert_eq!(listed.body["total_count"], 1);
    app.post("/products", body(GLITCH_IMAGES)).await.expect(409);
}

async fn unsupported_pricing_is_refused_clearly(app: TestApp) {
    app.post("/assets", body(IMG)).await.expect(201);
    let mut product: Value = body(GLITCH_IMAGES);
    product["prices"][0]["usage_calculation"]["usage_type"] = json!("custom");
    product["prices"][0]["billing_model"]["type"] = json!("recurring");
    let refused = app.post("/products", product).await.expect(422);
    assert!(refused.body["errors"]["prices[0].usage_calculation.usage_type"].is_array(), "{}", refused.body);
    assert!(refused.body["errors"]["prices[0].billing_model.type"].is_array(), "{}", refused.body);
    let mut unknown_asset: Value = body(GLITCH_IMAGES);
    unknown_asset["prices"][0]["pricing"][0]["asset"] = json!("NOPE");
    let refused = app.post("/products", unknown_asset).await.expect(422);
    assert!(refused.body["errors"]["prices[0].pricing[0].asset"].is_array(), "{}", refused.body);
    assert_eq!(app.get("/products").await.body["total_count"], 0);
}

/// Many events with awkward volumes, in batches, some replayed: the balance moves by exactly
/// the sum of the fees the events report.
async fn balance_moves_by_exactly_the_sum_of_fees(app: TestApp) {
    let product = app.post("/products", body(TOKENS_PRODUCT)).await.expect(201);
    let product_id = product.body["id"].as_str().unwrap().to_owned();
    let customer = app.customer("Heavy user").await;
    app.fund(&customer, "USD", "1000", "topup-1").await;
    app.post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"id": product_id}]}))
        .await
        .expect(201);
    let start: rust_decimal::Decimal = app.balances(&customer, "default:USD").await.0.parse().unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    let models = ["small", "large", "other"];
    let mut ids = Vec::new();
    for batch in 0..4 {
        let events: Vec<Value> = (0..50)
            .map(|index| {
                let number = batch * 50 + index;
                // Volumes with up to three decimals, crossing the 1,000-token tier bound.
                let tokens = format!("{}.{:03}", (number * 37) % 400, (number * 7919) % 1000);
                ids.push(format!("ev-{number}"));
                json!({"id": format!("ev-{number}"), "event_type": "completion", "occurred_at": now,
                       "data": {"tokens": tokens, "model": models[number % 3]}})
            })
            .collect();
        let request = json!({"customer_id": customer, "events": events});
        app.post("/events", request.clone()).await.expect(204);
        if batch % 2 == 1 {
            app.post("/events", request).await.expect(204);
        }
    }
    let mut fees = rust_decimal::Decimal::ZERO;
    for id in &ids {
        let event = app.get(&format!("/events/{id}")).await.expect(200);
        for fee in event.body["fees"].as_array().unwrap() {
            fees += fee["amount"].to_string().parse::<rust_decimal::Decimal>().unwrap();
        }
    }
    let end: rust_decimal::Decimal = app.balances(&customer, "default:USD").await.0.parse().unwrap();
    assert!(fees > rust_decimal::Decimal::ZERO);
    assert_eq!(end, start - fees, "start {start}, fees {fees}");
    app.assert_ledger_agrees().await;
}

/// Usage spends only credit that is still in force: a grant past its expiry is expired (its
/// remainder leaves the balance) before the debit, whether or not the background worker got
/// there first, and the debit then burns the next grant. It also burns a grant to nothing and
/// then the next, so the grants it touched, and only those, are written.
async fn usage_never_spends_credit_past_its_expiry(app: TestApp) {
    let (customer, _) = subscribed_customer(&app).await;
    let expires = (app.clock.now() + chrono::Duration::hours(1)).to_rfc3339();
    let gift =
        format!(r#"{{"transaction_id":"short","asset":"IMG","amount":3,"reason":"gift","expires_at":"{expires}"}}"#);
    app.post(&format!("/customers/{customer}/wallet/adjustments"), body(&gift)).await.expect(201);
    app.fund(&customer, "IMG", "100", "paid").await;
    app.post("/events", events(&customer, &["a-1", "a-2"], "image_generated")).await.expect(204);
    assert_eq!(app.balances(&customer, "default:IMG").await.0, "101", "the gift burns first");

    app.clock.advance(chrono::Duration::hours(2));
    app.post("/events", events(&customer, &["b-1", "b-2", "b-3", "b-4", "b-5"], "image_generated")).await.expect(204);
    // 101 − 1 expired − 5 spent; had the expired gift been spent, 96.
    assert_eq!(app.balances(&customer, "default:IMG").await.0, "95");
    let grants = app.get(&format!("/customers/{customer}/wallet/default:IMG/grants")).await.expect(200);
    let remaining: Vec<(String, String)> = grants.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|grant| (grant["status"].as_str().unwrap().to_owned(), grant["available"].to_string()))
        .collect();
    assert!(remaining.contains(&("expired".to_owned(), "0".to_owned())), "{remaining:?}");
    assert!(remaining.contains(&("active".to_owned(), "95".to_owned())), "{remaining:?}");

    // Burned to nothing, a grant leaves the working set and the next one takes over.
    app.post(
        "/events",
        json!({"customer_id": customer, "events": (0..95).map(|index| json!({
        "id": format!("c-{index}"), "event_type": "image_generated", "occurred_at": chrono::Utc::now().to_rfc3339()
    })).collect::<Vec<_>>()}),
    )
    .await
    .expect(204);
    assert_eq!(app.balances(&customer, "default:IMG").await.0, "0");
    app.post("/events", events(&customer, &["d-1"], "image_generated")).await.expect(204);
    assert_eq!(app.balances(&customer, "default:IMG").await.0, "-1", "past its grants usage goes into debt");
    app.assert_ledger_agrees().await;
}

/// A page by `offset` is the listing from that position, ties of `occurred_at` included: the
/// skipped rows are found by their keys alone and the page starts at the first row kept, which
/// must be neither skipped twice nor shown twice.
async fn offset_pages_are_the_listing_sliced(app: TestApp) {
    let (customer, _) = subscribed_customer(&app).await;
    app.fund(&customer, "IMG", "100", "topup-1").await;
    // Seven events at one instant (one batch shares its `occurred_at`), then four at another.
    app.post("/events", events(&customer, &["t-1", "t-2", "t-3", "t-4", "t-5", "t-6", "t-7"], "image_generated"))
        .await
        .expect(204);
    app.post("/events", events(&customer, &["u-1", "u-2", "u-3", "u-4"], "image_generated")).await.expect(204);
    let ids = |page: &Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_owned()).collect()
    };
    let whole = ids(&app.get("/events?limit=100").await.expect(200).body);
    assert_eq!(whole.len(), 11);
    for limit in [1, 3, 4] {
        let mut sliced = Vec::new();
        for offset in (0..11).step_by(limit) {
            let page = app.get(&format!("/events?limit={limit}&offset={offset}")).await.expect(200).body;
            assert_eq!(page["total_count"], 11);
            assert_eq!(page["offset"], offset);
            sliced.extend(ids(&page));
        }
        assert_eq!(sliced, whole, "pages of {limit}");
    }
    let filtered = format!("/events?customer_id={customer}&event_types=image_generated&limit=2&offset=5");
    assert_eq!(ids(&app.get(&filtered).await.expect(200).body), whole[5..7].to_vec(), "with filters");
    let past_the_end = app.get("/events?limit=3&offset=11").await.expect(200).body;
    assert_eq!(past_the_end["items"], json!([]));
    assert_eq!(past_the_end["total_count"], 11);
}

on_both_backends!(
    offset_pages_are_the_listing_sliced,
    usage_never_spends_credit_past_its_expiry,
    balance_moves_by_exactly_the_sum_of_fees,
    seed_product_bills_one_img_per_image,
    invalid_batches_are_refused_whole,
    the_same_event_sent_concurrently_is_billed_once,
    tiered_volume_dimensions_fees_and_entitlements,
    simulate_usage_prices_and_changes_nothing,
    versions_publish_default_and_archive,
    unsupported_pricing_is_refused_clearly,
);

mod economics {
    use super::*;

    async fn vendors_costs_and_profitability(app: TestApp) {
        let (customer, _) = subscribed_customer(&app).await;
        let vendor = app.post("/vendors", json!({"name": "GPU Cloud", "external_id": "gpu"})).await.expect(201);
        let vendor_id = vendor.body["id"].as_str().unwrap().to_owned();
        assert!(vendor_id.starts_with("vnd_"));
        app.post("/vendors", json!({"name": "Again", "external_id": "gpu"})).await.expect(409);
        assert_eq!(app.get("/vendors?external_id=gpu").await.expect(200).body["total_count"], 1);
        assert_eq!(app.get(&format!("/vendors/{vendor_id}")).await.expect(200).body["name"], "GPU Cloud");

        let now = chrono::Utc::now().to_rfc3339();
        // Each image earns 1 IMG = 0.10 USD; the GPU costs 0.03 and 0.01 USD.
        let batch = json!({"customer_id": customer, "events": [
            {"id": "i1", "event_type": "image_generated", "occurred_at": now,
             "costs": [{"id": "k1", "vendor_id": vendor_id, "category": "gpu", "amount": 0.03}]},
            {"id": "i2", "event_type": "image_generated", "occurred_at": now,
             "costs": [{"id": "k2", "vendor_external_id": "gpu", "category": "storage", "amount": 0.01, "currency": "USD"}]},
        ]});
        app.post("/events", batch).await.expect(204);
        let event = app.get("/events/i1").await.expect(200);
        assert_eq!(event.body["stats"]["gross_revenue"].to_string(), "0.1");
        assert_eq!(event.body["stats"]["total_costs"].to_string(), "0.03");
        assert_eq!(event.body["stats"]["net_revenue"].to_string(), "0.07");
        assert_eq!(event.body["stats"]["margin"].to_string(), "70");
        assert_eq!(event.body["costs"][0]["id"], "k1");

        let customer_stats = app.get(&format!("/customers/{customer}/stats")).await.expect(200);
        assert_eq!(customer_stats.body["gross_revenue"].to_string(), "0.2");
        assert_eq!(customer_stats.body["total_costs"].to_string(), "0.04");
        assert_eq!(customer_stats.body["margin"].to_string(), "80");
        assert_eq!(customer_stats.body["currency"], "USD");

        let all = app.get("/customers/stats").await.expect(200);
        assert_eq!(all.body["summary"]["net_revenue"].to_string(), "0.16");
        assert_eq!(all.body["items"][0]["stats"]["gross_revenue"].to_string(), "0.2");
        assert!(all.body["period_from"].as_str().unwrap().ends_with("-01"));

        let vendor_stats = app.get(&format!("/vendors/{vendor_id}/stats")).await.expect(200);
        assert_eq!(vendor_stats.body["total_costs"].to_string(), "0.04");
        assert_eq!(vendor_stats.body["categories"][0]["category"], "gpu");
        assert_eq!(vendor_stats.body["categories"][1]["cost"].to_string(), "0.01");
        let only_gpu = app.get(&format!("/vendors/{vendor_id}/stats?category=gpu")).await.expect(200);
        assert_eq!(only_gpu.body["total_costs"].to_string(), "0.03");

        // An unknown vendor refuses the batch.
        let bad = json!({"customer_id": customer, "events": [{"id": "i3", "event_type": "image_generated", "occurred_at": now,
            "costs": [{"id": "k3", "vendor_id": "ven_missing", "amount": 1}]}]});
        let refused = app.post("/events", bad).await.expect(422);
        assert!(refused.body["errors"]["events[0].costs[0].vendor_id"].is_array(), "{}", refused.body);
        app.assert_ledger_agrees().await;
    }

    async fn renewals_and_entitlement_refreshes_happen_on_schedule(app: TestApp) {
        let product = app.post("/products", body(TOKENS_PRODUCT)).await.expect(201);
        let product_id = product.body["id"].as_str().unwrap().to_owned();
        let customer = app.customer("Subscriber").await;
        app.fund(&customer, "USD", "50", "topup-1").await;
        app.post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"id": product_id}]}))
            .await
            .expect(201);
        assert_eq!(app.balances(&customer, "default:USD").await.0, "47.5");

        // Run the worker's jobs as if 40 days had passed: one renewal (another 5 USD), the
        // welcome credit's first period ends (its 2.5 expires) and a fresh 2.5 is granted.
        let later = chrono::Utc::now() + chrono::Duration::days(40);
        let store = app.store.clone();
        let passes = tokio::task::spawn_blocking(move || {
            let catalog = tally_http::catalog::CatalogCache::default();
            let renewals = tally_http::worker::renew_due(&store, &catalog, later).unwrap();
            let settlements = tally_http::worker::settle_due(&store, later).unwrap();
            (renewals, settlements)
        })
        .await
        .unwrap();
        assert!(passes.0.changed >= 1, "{passes:?}");
        // 47.5 − 5 (renewal) − 2.5 (expired welcome credit) + 2.5 (refreshed) = 42.5
        assert_eq!(app.balances(&customer, "default:USD").await.0, "42.5");
        let history =
            app.get(&format!("/customers/{customer}/wallet/default:USD/transactions?limit=100")).await.expect(200);
        let kinds: Vec<&str> =
            history.body["items"].as_array().unwrap().iter().map(|item| item["type"].as_str().unwrap()).collect();
        assert_eq!(kinds.iter().filter(|kind| **kind == "fee").count(), 2, "{kinds:?}");
        assert_eq!(kinds.iter().filter(|kind| **kind == "expiry").count(), 1, "{kinds:?}");
        let customer_view = app.get(&format!("/customers/{customer}")).await.expect(200);
        let renews_at = customer_view.body["subscriptions"][0]["renews_at"].as_str().unwrap().to_owned();
        assert!(renews_at > later.to_rfc3339(), "the next renewal is after the one just run: {renews_at}");
        app.assert_ledger_agrees().await;
    }

    async fn a_subscription_starting_later_activates_by_itself(app: TestApp) {
        app.post("/assets", body(IMG)).await.expect(201);
        app.post("/products", body(GLITCH_IMAGES)).await.expect(201);
        let customer = app.customer("Later").await;
        let starts_at = chrono::Utc::now() + chrono::Duration::milliseconds(1200);
        let scheduled = app
            .post(
                &format!("/customers/{customer}/subscriptions"),
                json!({"starts_at": starts_at.to_rfc3339(), "products": [{"code": "glitch_images_std"}]}),
            )
            .await
            .expect(201);
        assert_eq!(scheduled.body["status"], "scheduled");
        app.clock.advance(chrono::Duration::milliseconds(1600));
        let activated = app
            .eventually("the worker activates the scheduled subscription", || async {
                let view = app.get(&format!("/customers/{customer}")).await.expect(200);
                view.body["subscriptions"][0]["status"] == "active"
            })
            .await;
        assert!(activated);
        app.fund(&customer, "IMG", "5", "topup").await;
        // Stamped by the server's clock, which has moved past the start: an event is priced by
        // the subscriptions active when it occurred.
        let mut after_start = events(&customer, &["after-start"], "image_generated");
        after_start["events"][0]["occurred_at"] = json!(app.clock.now().to_rfc3339());
        app.post("/events", after_start).await.expect(204);
        assert_eq!(app.balances(&customer, "default:IMG").await.0, "4");
    }

    on_both_backends!(
        vendors_costs_and_profitability,
        renewals_and_entitlement_refreshes_happen_on_schedule,
        a_subscription_starting_later_activates_by_itself,
    );
}
