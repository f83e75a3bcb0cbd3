//! Usage events in time: an event id names one event, back-dated events are priced by the
//! subscriptions in force when they occurred, and unique keys raced by concurrent requests
//! answer 409 (never 500). See docs/api.md, "Usage events in time".

use crate::harness::{body, test_webhook_config, TestApp};
use crate::on_both_backends;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{json, Value};
use tally::bench::GLITCH_IMAGES;

/// Races are run several times over: one round may happen to run its requests one by one.
const ROUNDS: [char; 6] = ['A', 'B', 'C', 'D', 'E', 'F'];

const IMG: &str = r#"{"code":"IMG","name":"Image Generation","precision":2,"label":"image","symbol":"📸","rates":[{"source":"USD","rate":0.10}]}"#;

fn at(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The IMG asset and the seed product (1 IMG per image).
async fn catalog(app: &TestApp) -> String {
    app.post("/assets", body(IMG)).await.expect(201);
    let product = app.post("/products", body(GLITCH_IMAGES)).await.expect(201);
    product.body["id"].as_str().unwrap().to_owned()
}

/// A customer subscribed to the seed product and funded with 100 IMG.
async fn subscriber(app: &TestApp, name: &str, external_id: &str) -> String {
    let created = app
        .post(
            "/customers",
            json!({"name": name, "external_id": external_id, "subscriptions": [{"products": [{"code": "glitch_images_std"}]}]}),
        )
        .await
        .expect(201);
    let customer = created.body["id"].as_str().unwrap().to_owned();
    app.fund(&customer, "IMG", "100", &format!("fund-{external_id}")).await;
    customer
}

fn image(id: &str, occurred_at: &str, description: &str) -> Value {
    json!({"id": id, "event_type": "image_generated", "occurred_at": occurred_at, "description": description,
           "data": {"width": 1024, "ratio": 1.50, "style": "glitch"}})
}

async fn available(app: &TestApp, customer: &str) -> String {
    app.balances(customer, "default:IMG").await.0
}

/// Sends every request at once, each from its own task, and returns their statuses.
async fn concurrently(app: &TestApp, method: reqwest::Method, requests: Vec<(String, Value)>) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for (path, request) in requests {
        let client = app.client.clone();
        let url = format!("{}{path}", app.base);
        let key = app.test_key.clone();
        let method = method.clone();
        tasks.spawn(async move {
            let response = client
                .request(method, url)
                .header("X-CREDYT-API-KEY", key)
                .header("content-type", "application/json")
                .body(request.to_string())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            assert!(status < 500, "a race must never answer {status}: {text}");
            status
        });
    }
    let mut statuses = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        statuses.push(joined.unwrap());
    }
    statuses.sort();
    statuses
}

/// An id names one event per mode: the exact replay by its customer is a 204 that moves
/// nothing; the same id for another customer or with other content is a 409 naming the id,
/// and the batch carrying it stores nothing.
async fn an_event_id_names_one_event(app: TestApp) {
    catalog(&app).await;
    let alice = subscriber(&app, "Alice", "alice").await;
    let bob = subscriber(&app, "Bob", "bob").await;
    let now = at(app.clock.now());
    let first = json!({"customer_id": alice, "events": [image("img-1", &now, "A cat")]});
    app.post("/events", first.clone()).await.expect(204);
    assert_eq!(available(&app, &alice).await, "99");

    // The same event again, however spelled: same customer (by external id), data keys in
    // another order, 1.5 for 1.50, the same instant in another offset.
    app.post("/events", first).await.expect(204);
    let respelled = body(&format!(
        r#"{{"customer_external_id":"alice","events":[{{"id":"img-1","event_type":"image_generated",
            "occurred_at":"{}","description":"A cat","data":{{"style":"glitch","ratio":1.5,"width":1024}}}}]}}"#,
        DateTime::parse_from_rfc3339(&now)
            .unwrap()
            .with_timezone(&chrono::FixedOffset::east_opt(7200).unwrap())
            .to_rfc3339_opts(SecondsFormat::Micros, false)
    ));
    app.post("/events", respelled).await.expect(204);
    assert_eq!(available(&app, &alice).await, "99", "a replay moves nothing");

    // Another customer reusing the id is refused, with the id named.
    let stolen = app.post("/events", json!({"customer_id": bob, "events": [image("img-1", &now, "A cat")]})).await;
    let stolen = stolen.expect(409);
    assert_eq!(stolen.content_type(), "application/problem+json");
    assert!(stolen.body["detail"].as_str().unwrap().contains("img-1"), "{}", stolen.body);
    assert_eq!(available(&app, &bob).await, "100");

    // Other content under the same id is refused, and so is the whole batch carrying it.
    let mixed =
        json!({"customer_id": alice, "events": [image("img-2", &now, "A dog"), image("img-1", &now, "Another cat")]});
    let refused = app.post("/events", mixed).await.expect(409);
    assert!(refused.body["detail"].as_str().unwrap().contains("img-1"), "{}", refused.body);
    app.get("/events/img-2").await.expect(404);
    let mut moved = image("img-1", &now, "A cat");
    moved["occurred_at"] = json!(at(app.clock.now() - Duration::minutes(1)));
    app.post("/events", json!({"customer_id": alice, "events": [moved]})).await.expect(409);
    let mut more_data = image("img-1", &now, "A cat");
    more_data["data"]["seed"] = json!(7);
    app.post("/events", json!({"customer_id": alice, "events": [more_data]})).await.expect(409);

    let stored = app.get("/events/img-1").await.expect(200);
    assert_eq!(
        (stored.body["customer_id"].as_str(), stored.body["description"].as_str()),
        (Some(alice.as_str()), Some("A cat"))
    );
    assert_eq!(app.get("/events").await.body["total_count"], 1);
    assert_eq!(available(&app, &alice).await, "99");
    app.assert_ledger_agrees().await;
}

/// Eight customers send batches sharing the same ids at the same moment (in different
/// orders): exactly one batch is stored and billed, every other answers 409, none 500.
async fn customers_racing_for_event_ids_get_one_204_and_409s(app: TestApp) {
    catalog(&app).await;
    // Each event carries a vendor cost: its row is keyed by the event id too, and a race must
    // still be decided on the event's own row (409), never on its cost's.
    let vendor = app.post("/vendors", json!({"name": "GPU cloud", "external_id": "gpu"})).await.expect(201);
    let vendor = vendor.body["id"].as_str().unwrap().to_owned();
    let mut customers = Vec::new();
    for index in 0..8 {
        customers.push(subscriber(&app, &format!("Racer {index}"), &format!("racer-{index}")).await);
    }
    let mut billed: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for round in ROUNDS {
        let now = at(app.clock.now());
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|id| format!("race-{round}-{id}")).collect();
        let requests = customers
            .iter()
            .enumerate()
            .map(|(index, customer)| {
                let mut batch: Vec<Value> = ids
                    .iter()
                    .map(|id| {
                        let mut event = image(id, &now, "Racing");
                        event["costs"] = json!([{"id": format!("{id}-gpu"), "vendor_id": vendor, "amount": 0.01}]);
                        event
                    })
                    .collect();
                batch.rotate_left(index % ids.len());
                ("/events".to_owned(), json!({"customer_id": customer, "events": batch}))
            })
            .collect();
        let statuses = concurrently(&app, reqwest::Method::POST, requests).await;
        assert_eq!(statuses, vec![204, 409, 409, 409, 409, 409, 409, 409], "round {round}");
        let winner = app.get(&format!("/events/{}", ids[0])).await.expect(200).body["customer_id"].clone();
        for id in &ids {
            assert_eq!(app.get(&format!("/events/{id}")).await.body["customer_id"], winner, "one batch won whole");
        }
        *billed.entry(winner.as_str().unwrap().to_owned()).or_default() += 3;
    }
    for customer in &customers {
        let expected = 100 - billed.get(customer).copied().unwrap_or(0);
        assert_eq!(available(&app, customer).await, expected.to_string());
    }
    app.assert_ledger_agrees().await;
}

/// A back-dated event is priced by the subscriptions in force when it occurred, on the
/// version they were on then; before the start and while inactive it is stored unbilled. The
/// fee is paid from the grants active when the event arrives.
async fn back_dated_events_are_priced_as_they_occurred(app: TestApp) {
    let product_id = catalog(&app).await;
    let mut version_two: Value = body(GLITCH_IMAGES);
    version_two["prices"][0]["pricing"][0]["values"][0]["unit_price"] = json!(2);
    let created = app
        .post(&format!("/products/{product_id}"), json!({"prices": version_two["prices"], "publish": true}))
        .await
        .expect(201);
    assert_eq!(created.body["version"], 2);

    let customer = app.customer("Time traveller").await;
    app.fund(&customer, "IMG", "100", "paid").await;
    let started = app.clock.now();
    // A promotion that burns first, but expires before the back-dated events arrive.
    let gift = json!({"transaction_id": "gift", "asset": "IMG", "amount": 10, "reason": "gift",
                      "expires_at": at(started + Duration::minutes(90))});
    app.post(&format!("/customers/{customer}/wallet/adjustments"), gift).await.expect(201);
    let subscription = app
        .post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"id": product_id, "version": 1}]}))
        .await
        .expect(201);
    let subscription_id = subscription.body["id"].as_str().unwrap().to_owned();
    let subscription_path = format!("/customers/{customer}/subscriptions/{subscription_id}");

    app.clock.advance(Duration::hours(1));
    let moved = app.clock.now();
    app.patch(&format!("{subscription_path}/products/{product_id}"), json!({"version": 2})).await.expect(204);
    app.clock.advance(Duration::hours(1));

    let batch = json!({"customer_id": customer, "events": [
        image("before-start", &at(started - Duration::minutes(10)), "Before the subscription"),
        image("on-v1", &at(started + Duration::minutes(30)), "On version 1"),
        image("on-v2", &at(moved + Duration::minutes(30)), "On version 2"),
    ]});
    app.post("/events", batch).await.expect(204);
    let fee = |event: Value| (event["fees"].as_array().unwrap().len(), event["fees"][0].clone());
    assert_eq!(fee(app.get("/events/before-start").await.expect(200).body).0, 0);
    let (count, on_v1) = fee(app.get("/events/on-v1").await.expect(200).body);
    assert_eq!((count, on_v1["product_version"].as_i64(), on_v1["amount"].to_string()), (1, Some(1), "1".into()));
    let (count, on_v2) = fee(app.get("/events/on-v2").await.expect(200).body);
    assert_eq!((count, on_v2["product_version"].as_i64(), on_v2["amount"].to_string()), (1, Some(2), "2".into()));
    // Paid at arrival: the gift had expired by then, so the paid grant bore both fees.
    assert_eq!(available(&app, &customer).await, "97");

    let paused = app.clock.now();
    app.patch(&subscription_path, json!({"status": "inactive"})).await.expect(204);
    app.clock.advance(Duration::hours(1));
    let batch = json!({"customer_id": customer, "events": [
        image("before-pause", &at(paused - Duration::minutes(10)), "While active"),
        image("while-paused", &at(paused + Duration::minutes(10)), "While inactive"),
    ]});
    app.post("/events", batch).await.expect(204);
    assert_eq!(fee(app.get("/events/before-pause").await.expect(200).body).1["product_version"], 2);
    assert_eq!(fee(app.get("/events/while-paused").await.expect(200).body).0, 0);

    app.patch(&subscription_path, json!({"status": "active"})).await.expect(204);
    let batch = json!({"customer_id": customer, "events": [
        image("after-restart", &at(app.clock.now()), "Active again"),
        image("still-paused", &at(paused + Duration::minutes(20)), "Sent after the restart"),
    ]});
    app.post("/events", batch).await.expect(204);
    assert_eq!(fee(app.get("/events/after-restart").await.expect(200).body).1["amount"].to_string(), "2");
    assert_eq!(fee(app.get("/events/still-paused").await.expect(200).body).0, 0);
    assert_eq!(available(&app, &customer).await, "93");
    let unbilled = app.get(&format!("/events?customer_id={customer}&has_fees=false")).await.expect(200);
    assert_eq!(unbilled.body["total_count"], 3);
    app.assert_ledger_agrees().await;
}

/// An event that arrives once its customer's subscription has fallen due to start, before the
/// background worker has started it, is priced by that subscription: ingestion runs what fell
/// due first. The server here waits a day between the worker's passes, so only ingestion can
/// start the subscription in time.
async fn an_event_after_a_scheduled_start_is_priced_before_the_worker_runs(mut app: TestApp) {
    app.stop().await;
    let quiet = TestApp::spawn_with_state(app.database.clone(), app.backend, test_webhook_config(), |mut state| {
        let mut config = (*state.config).clone();
        config.settle_interval = std::time::Duration::from_secs(24 * 60 * 60);
        state.config = std::sync::Arc::new(config);
        state
    })
    .await;
    catalog(&quiet).await;
    let customer = quiet.customer("Starts later").await;
    quiet.fund(&customer, "IMG", "100", "paid").await;
    let starts = quiet.clock.now() + Duration::hours(1);
    let subscription = json!({"starts_at": at(starts), "products": [{"code": "glitch_images_std"}]});
    let scheduled = quiet.post(&format!("/customers/{customer}/subscriptions"), subscription).await.expect(201);
    assert_eq!(scheduled.body["status"], "scheduled");

    quiet.clock.advance(Duration::hours(2));
    let batch = json!({"customer_id": customer, "events": [
        image("before-the-start", &at(starts - Duration::minutes(10)), "Before the start"),
        image("after-the-start", &at(starts + Duration::minutes(30)), "After the start"),
    ]});
    quiet.post("/events", batch).await.expect(204);
    let fees = |event: Value| event["fees"].as_array().unwrap().len();
    assert_eq!(fees(quiet.get("/events/before-the-start").await.expect(200).body), 0);
    assert_eq!(
        fees(quiet.get("/events/after-the-start").await.expect(200).body),
        1,
        "priced by the started subscription"
    );
    assert_eq!(available(&quiet, &customer).await, "99");
    let started = quiet.get(&format!("/customers/{customer}")).await.expect(200);
    assert_eq!(started.body["subscriptions"][0]["status"], "active");
    quiet.assert_ledger_agrees().await;
}

const MONTHLY_TOKENS: &str = r#"{
  "name": "Tokens by the month",
  "code": "tokens_monthly",
  "prices": [
    {
      "name": "Tokens",
      "type": "usage_based",
      "billing_model": { "type": "real_time" },
      "pricing_model": "tiered",
      "tiering": { "basis": "volume", "period": "monthly" },
      "usage_calculation": { "event_type": "completion", "usage_type": "volume", "volume_field": "tokens" },
      "pricing": [ { "asset": "USD", "values": [ { "up_to": 1000, "volume_rate": 0.002 }, { "volume_rate": 0.001 } ] } ]
    }
  ],
  "publish": true
}"#;

/// Noon on the 2nd of the first month that starts more than four days after `after`.
fn second_of_a_later_month(after: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Datelike;
    let mut month = after.date_naive().with_day(1).unwrap();
    loop {
        month = month.checked_add_months(chrono::Months::new(1)).unwrap();
        let second = month.with_day(2).unwrap().and_hms_opt(12, 0, 0).unwrap().and_utc();
        if second - Duration::days(4) > after {
            return second;
        }
    }
}

/// A back-dated event is tiered with the usage of the calendar month it occurred in, not the
/// month it arrived in.
async fn a_back_dated_event_is_tiered_in_the_period_it_occurred_in(app: TestApp) {
    let product = app.post("/products", body(MONTHLY_TOKENS)).await.expect(201);
    let product_id = product.body["id"].as_str().unwrap().to_owned();
    let customer = app.customer("Month straddler").await;
    app.fund(&customer, "USD", "100", "paid").await;
    app.post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"id": product_id}]}))
        .await
        .expect(201);
    let today = second_of_a_later_month(app.clock.now());
    app.clock.advance(today - app.clock.now());
    let completion = |id: &str, occurred_at: DateTime<Utc>, tokens: i64| json!({"id": id, "event_type": "completion", "occurred_at": at(occurred_at), "data": {"tokens": tokens}});
    let batch = json!({"customer_id": customer, "events": [
        completion("last-month", today - Duration::days(3), 900),
        completion("this-month", today - Duration::hours(1), 900),
        completion("last-month-again", today - Duration::days(3) + Duration::hours(1), 200),
    ]});
    app.post("/events", batch).await.expect(204);
    let mut amounts = Vec::new();
    for id in ["last-month", "this-month", "last-month-again"] {
        amounts.push(app.get(&format!("/events/{id}")).await.expect(200).body["fees"][0]["amount"].to_string());
    }
    // 900 × 0.002; 900 × 0.002 again (a new month); 100 × 0.002 + 100 × 0.001 (last month's 1,000 crossed).
    assert_eq!(amounts, vec!["1.8", "1.8", "0.3"]);
    assert_eq!(app.balances(&customer, "default:USD").await.0, "96.1");
    app.assert_ledger_agrees().await;
}

/// Rounds of eight identical `POST /assets` at once: one 201 and seven 409 each.
async fn racing_asset_creates_answer_409(app: TestApp) {
    for round in ROUNDS {
        let code = format!("RACE{round}");
        let request = json!({"code": code, "name": "Racing asset", "precision": 2});
        let requests = (0..8).map(|_| ("/assets".to_owned(), request.clone())).collect();
        let statuses = concurrently(&app, reqwest::Method::POST, requests).await;
        assert_eq!(statuses, vec![201, 409, 409, 409, 409, 409, 409, 409], "round {round}");
    }
    assert_eq!(app.get("/assets").await.body["total_count"], ROUNDS.len());
}

/// Rounds of eight `POST /customers` with one external id at once: one 201, seven 409; and
/// of eight customers patched to one external id at once: one 204, seven 409.
async fn racing_customer_external_ids_answer_409(app: TestApp) {
    for round in ROUNDS {
        let external_id = format!("twin-{round}");
        let requests = (0..8)
            .map(|index| {
                ("/customers".to_owned(), json!({"name": format!("Twin {index}"), "external_id": external_id}))
            })
            .collect();
        let statuses = concurrently(&app, reqwest::Method::POST, requests).await;
        assert_eq!(statuses, vec![201, 409, 409, 409, 409, 409, 409, 409], "round {round}");
        assert_eq!(app.get(&format!("/customers?external_id={external_id}")).await.body["total_count"], 1);
    }
    let mut customers = Vec::new();
    for index in 0..8 {
        customers.push(app.customer(&format!("Renamed {index}")).await);
    }
    for round in ROUNDS {
        let external_id = format!("renamed-{round}");
        let requests = customers
            .iter()
            .map(|customer| (format!("/customers/{customer}"), json!({"external_id": external_id})))
            .collect();
        let statuses = concurrently(&app, reqwest::Method::PATCH, requests).await;
        assert_eq!(statuses, vec![204, 409, 409, 409, 409, 409, 409, 409], "round {round}");
        assert_eq!(app.get(&format!("/customers?external_id={external_id}")).await.body["total_count"], 1);
    }
}

on_both_backends!(
    an_event_id_names_one_event,
    customers_racing_for_event_ids_get_one_204_and_409s,
    back_dated_events_are_priced_as_they_occurred,
    an_event_after_a_scheduled_start_is_priced_before_the_worker_runs,
    a_back_dated_event_is_tiered_in_the_period_it_occurred_in,
    racing_asset_creates_answer_409,
    racing_customer_external_ids_answer_409,
);
