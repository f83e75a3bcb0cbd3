//! Webhooks end to end: a local receiver on 127.0.0.1 checks every delivery's signature with
//! its own HMAC code (not Tally's), answers as each test tells it, and records what arrived.

use crate::harness::{body, test_webhook_config, TestApp};
use crate::on_both_backends;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_core::Mode;

/// How long a receiver accepts a signature's timestamp either side of its clock.
const REPLAY_WINDOW_SECONDS: i64 = 300;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    content_type: String,
    user_agent: String,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the body is JSON")
    }
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    /// 500 to the first N requests, then 200.
    FailFirst(usize),
    /// 500 until told otherwise.
    Fail,
}

struct ReceiverState {
    answer: Answer,
    requests: Vec<Received>,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState { answer, requests: Vec::new() }));
        let shared = state.clone();
        let handler = move |headers: HeaderMap, body: Bytes| {
            let shared = shared.clone();
            async move {
                let header =
                    |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
                let mut state = shared.lock().unwrap();
                state.requests.push(Received {
                    signature: header("credyt-signature"),
                    content_type: header("content-type"),
                    user_agent: header("user-agent"),
                    body: String::from_utf8(body.to_vec()).unwrap(),
                });
                let failing = match state.answer {
                    Answer::Ok => false,
                    Answer::FailFirst(count) => state.requests.len() <= count,
                    Answer::Fail => true,
                };
                if failing {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        };
        let router = axum::Router::new().route("/hook", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Receiver { url, state }
    }

    fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().requests.clone()
    }

    fn answer(&self, answer: Answer) {
        self.state.lock().unwrap().answer = answer;
    }
}

/// What a receiver does with `Credyt-Signature: t=…,v0=…`: recompute the HMAC-SHA256 of
/// `t + "." + body` with its secret, compare in constant time, and refuse timestamps outside
/// the replay window.
fn verify(secret: &str, header: &str, body: &str, now: i64) -> Result<(), String> {
    let mut timestamp: Option<i64> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse().ok(),
            Some(("v0", value)) => signatures.push(value.to_owned()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("no timestamp")?;
    if (now - timestamp).abs() > REPLAY_WINDOW_SECONDS {
        return Err(format!("timestamp {timestamp} is outside the replay window"));
    }
    for signature in signatures {
        let Ok(bytes) = hex::decode(&signature) else { continue };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.{body}").as_bytes());
        if mac.verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    Err("no signature matches".into())
}

/// Polls `check` until it gives a value, failing the test after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Creates a test-mode destination and returns (id, secret).
async fn destination(app: &TestApp, url: &str, topics: Value) -> (String, String) {
    let created = app.post("/webhooks", json!({"url": url, "topics": topics})).await.expect(201);
    (created.body["id"].as_str().unwrap().to_owned(), created.body["secret"].as_str().unwrap().to_owned())
}

/// Every delivery listed for `query` (all pages).
async fn list_all(app: &TestApp, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = format!("/webhooks/events?limit=100&{query}");
    loop {
        let page = app.get(&path).await.expect(200);
        items.extend(page.body["models"].as_array().unwrap().iter().cloned());
        match page.body["pagination"]["next"].as_str() {
            Some(next) => path = format!("/webhooks/events?limit=100&{query}&next={next}"),
            None => return items,
        }
    }
}

/// Asserts that no delivery is due, now or a day from now: nothing more will be sent,
/// however long one waits. (A claim that found something would lease it; finding nothing
/// changes nothing.)
async fn assert_nothing_more_to_send(app: &TestApp) {
    let later = app.clock.now() + chrono::Duration::days(1);
    let claimed = tally_http::delivery::claim(&app.store, &test_webhook_config(), later, 10).await.unwrap();
    assert!(claimed.is_empty(), "deliveries still due: {}", claimed.len());
}

async fn wait_until_none_pending(app: &TestApp) {
    eventually("every delivery to finish", Duration::from_secs(20), || async {
        let pending = app.get("/webhooks/events?status=pending").await.expect(200);
        pending.body["models"].as_array().unwrap().is_empty().then_some(())
    })
    .await
}

/// When the server signed `request` (its `t=`): the receiver's clock for tests that move the
/// server's clock, as if the receiver's clock were in step with it.
fn signed_at(request: &Received) -> i64 {
    request
        .signature
        .split(',')
        .find_map(|part| part.trim().strip_prefix("t="))
        .and_then(|seconds| seconds.parse().ok())
        .expect("the signature carries its timestamp")
}

fn now_seconds() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A product billing 0.5 USD per `api_call`, published; returns its id.
async fn usage_product(app: &TestApp) -> String {
    let product = app
        .post(
            "/products",
            body(
                r#"{"name": "API", "code": "api_std", "publish": true, "prices": [{
                    "name": "Calls", "type": "usage_based", "billing_model": {"type": "real_time"},
                    "usage_calculation": {"event_type": "api_call", "usage_type": "unit"},
                    "pricing": [{"asset": "USD", "values": [{"unit_price": 0.5}]}]}]}"#,
            ),
        )
        .await
        .expect(201);
    product.body["id"].as_str().unwrap().to_owned()
}

async fn every_topic_arrives_signed(app: TestApp) {
    let receiver = Receiver::start(Answer::Ok).await;
    let (test_destination, secret) = destination(&app, &receiver.url, json!(["*"])).await;
    // A live destination on another receiver: test-mode events never reach it.
    let live_receiver = Receiver::start(Answer::Ok).await;
    let live = app
        .call(Method::POST, "/webhooks", Some(&app.live_key), Some(&json!({"url": live_receiver.url})))
        .await
        .expect(201);
    let live_secret = live.body["secret"].as_str().unwrap().to_owned();

    // Drive the real actions.
    let customer = app.customer("Ada").await;
    app.fund(&customer, "USD", "10", "fund-1").await;
    let wallet = format!("/customers/{customer}/wallet");
    app.post(&format!("{wallet}/charges"), json!({"transaction_id": "charge-1", "asset": "USD", "amount": 10}))
        .await
        .expect(201);
    let expires_at = (app.clock.now() + chrono::Duration::hours(1)).to_rfc3339();
    app.post(
        &format!("{wallet}/adjustments"),
        json!({"transaction_id": "gift-1", "asset": "USD", "amount": 5, "reason": "gift", "expires_at": expires_at}),
    )
    .await
    .expect(201);
    let product_id = usage_product(&app).await;
    let subscription = app
        .post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"id": product_id}]}))
        .await
        .expect(201);
    let subscription_id = subscription.body["id"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now().to_rfc3339();
    app.post(
        "/events",
        json!({"customer_id": customer, "events": [{"id": "call-1", "event_type": "api_call", "occurred_at": now}]}),
    )
    .await
    .expect(204);
    // The gift's expiry comes when the server's clock reaches it.
    app.clock.advance(chrono::Duration::hours(2));
    let mut test_ids = BTreeMap::new();
    for topic in ["top_up.succeeded", "top_up.failed", "auto_top_up.failed"] {
        let sent = app.post(&format!("/webhooks/test/{topic}"), json!({})).await.expect(202);
        test_ids.insert(topic, sent.body["id"].as_str().unwrap().to_owned());
    }

    // 13 events: 1 customer, 5 transactions (top-up, charge, gift, usage fee, expiry), 2
    // depletions (the charge, the expiry), 1 expiry, 1 subscription, 3 top-up samples.
    let received = eventually("all 13 events", Duration::from_secs(20), || async {
        let requests = receiver.requests();
        (requests.len() >= 13).then_some(requests)
    })
    .await;
    let mut by_topic: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for request in &received {
        // The server's clock moved on during the test: the receiver's is taken to be in step.
        let now = signed_at(request);
        verify(&secret, &request.signature, &request.body, now).unwrap_or_else(|error| panic!("{error}: {request:?}"));
        assert!(verify(&live_secret, &request.signature, &request.body, now).is_err(), "a wrong secret fails");
        let tampered = request.body.replacen("\"data\"", "\"data\" ", 1);
        assert!(verify(&secret, &request.signature, &tampered, now).is_err(), "a changed body fails");
        assert!(verify(&secret, &request.signature, &request.body, now + 301).is_err(), "a replay fails");
        assert_eq!(request.content_type, "application/json");
        assert!(request.user_agent.starts_with("Tally-Webhooks/"), "{}", request.user_agent);
        let envelope = request.json();
        let keys: Vec<&str> = envelope.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["id", "type", "created", "live_mode", "data"]);
        assert!(envelope["id"].as_str().unwrap().starts_with("evt_"));
        assert!(chrono::DateTime::parse_from_rfc3339(envelope["created"].as_str().unwrap()).is_ok());
        assert_eq!(envelope["live_mode"], false);
        assert!(envelope["data"].is_object());
        by_topic.entry(envelope["type"].as_str().unwrap().to_owned()).or_default().push(envelope);
    }
    let ids: std::collections::BTreeSet<String> =
        received.iter().map(|request| request.json()["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), received.len(), "each event arrives once when the receiver answers 200");
    let counts: BTreeMap<&str, usize> = by_topic.iter().map(|(topic, events)| (topic.as_str(), events.len())).collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("auto_top_up.failed", 1),
            ("credit_grant.expired", 1),
            ("customer.created", 1),
            ("subscription.activated", 1),
            ("top_up.failed", 1),
            ("top_up.succeeded", 1),
            ("transaction.completed", 5),
            ("wallet.balance_depleted", 2),
        ]),
        "{by_topic:#?}"
    );

    let created = &by_topic["customer.created"][0]["data"];
    assert_eq!((created["id"].as_str(), created["name"].as_str()), (Some(customer.as_str()), Some("Ada")));
    let transactions: BTreeMap<&str, &Value> = by_topic["transaction.completed"]
        .iter()
        .map(|event| (event["data"]["id"].as_str().unwrap(), &event["data"]))
        .collect();
    assert_eq!(transactions["charge-1"]["amount"].to_string(), "-10");
    assert_eq!(transactions["charge-1"]["type"], "fee");
    assert_eq!(transactions["charge-1"]["account_id"], "default:USD");
    assert_eq!(transactions["fund-1"]["amount"].to_string(), "10");
    assert_eq!(transactions["gift-1"]["details"]["reason"], "gift");
    let usage_fee = transactions.values().find(|data| data["details"]["event_id"] == "call-1").expect("a usage fee");
    assert_eq!(usage_fee["amount"].to_string(), "-0.5");
    let expiry = transactions.values().find(|data| data["type"] == "expiry").expect("an expiry transaction");
    assert_eq!(expiry["amount"].to_string(), "-4.5");
    let mut depletions: Vec<String> = by_topic["wallet.balance_depleted"]
        .iter()
        .map(|event| format!("{} -> {}", event["data"]["previous_available"], event["data"]["available"]))
        .collect();
    depletions.sort();
    assert_eq!(depletions, ["10 -> 0", "4.5 -> 0"]);
    let expired = &by_topic["credit_grant.expired"][0]["data"];
    assert_eq!(expired["expired_amount"].to_string(), "4.5");
    assert_eq!(expired["amount"].to_string(), "5");
    assert_eq!(expired["purpose"], "promotion");
    assert_eq!(expired["customer_id"], customer.as_str());
    let activated = &by_topic["subscription.activated"][0]["data"];
    assert_eq!(activated["id"], subscription_id.as_str());
    assert_eq!(activated["customer_id"], customer.as_str());
    // Credyt's documented fields.
    assert_eq!(activated["subscription_id"], subscription_id.as_str());
    assert_eq!(activated["occurred_at"], activated["started_at"]);
    assert_eq!(activated["products"][0]["id"], product_id.as_str());
    for (topic, id) in &test_ids {
        assert_eq!(by_topic[*topic][0]["id"], id.as_str());
    }
    assert_eq!(by_topic["top_up.failed"][0]["data"]["status"], "failed");
    assert_eq!(by_topic["top_up.succeeded"][0]["data"]["amount"].to_string(), "20");

    // Test and live never meet: the live destination got none of that, and gets live events.
    assert!(live_receiver.requests().is_empty(), "{:?}", live_receiver.requests());
    app.call(Method::POST, "/customers", Some(&app.live_key), Some(&json!({"name": "Live Ada"}))).await.expect(201);
    let live_received =
        eventually("the live event", Duration::from_secs(10), || async { live_receiver.requests().into_iter().next() })
            .await;
    let now = signed_at(&live_received);
    verify(&live_secret, &live_received.signature, &live_received.body, now).unwrap();
    assert!(verify(&secret, &live_received.signature, &live_received.body, now).is_err());
    assert_eq!(live_received.json()["live_mode"], true);
    assert_eq!(live_received.json()["data"]["name"], "Live Ada");
    // Deliveries are made with the change that causes them: the test-mode destination has its
    // 13, all sent, and none for the live event.
    assert_eq!(list_all(&app, &format!("destination_id={test_destination}")).await.len(), 13);
    wait_until_none_pending(&app).await;
    assert_eq!(receiver.requests().len(), 13, "the test-mode destination got no live event");
    app.assert_ledger_agrees().await;
}

async fn a_failing_receiver_gets_the_event_until_it_answers(app: TestApp) {
    let receiver = Receiver::start(Answer::FailFirst(2)).await;
    let (destination_id, secret) = destination(&app, &receiver.url, json!(["customer.created"])).await;
    app.customer("Grace").await;
    let delivered = eventually("the delivery to succeed", Duration::from_secs(20), || async {
        let page = app.get("/webhooks/events?status=delivered").await.expect(200);
        page.body["models"].as_array().unwrap().first().cloned()
    })
    .await;
    // Nothing more arrives once it is delivered.
    assert_nothing_more_to_send(&app).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "500, 500, then 200");
    for request in &requests {
        verify(&secret, &request.signature, &request.body, now_seconds()).unwrap();
        assert_eq!(request.json()["id"], delivered["id"], "every attempt carries the same event id");
    }
    assert_eq!(delivered["destination_id"], destination_id.as_str());
    assert_eq!(delivered["topic"], "customer.created");
    assert_eq!(delivered["status"], "delivered");
    assert!(delivered["successful_at"].is_string());
    assert!(delivered.get("failed_at").is_none());
    assert_eq!(delivered["metadata"]["attempts"], 3);
    assert_eq!(delivered["metadata"]["last_status_code"], 200);
    assert_eq!(delivered["data"]["name"], "Grace");

    // Every attempt is recorded, with its status code.
    let store = app.store.clone();
    let attempts = tokio::task::spawn_blocking(move || {
        store
            .read(|conn| {
                let sequence = conn.query_one("SELECT sequence FROM webhook_deliveries", &[])?.int(0)?;
                tally_store::repo::webhooks::attempts(conn, sequence)
            })
            .unwrap()
    })
    .await
    .unwrap();
    let codes: Vec<Option<i64>> = attempts.iter().map(|attempt| attempt.status_code).collect();
    assert_eq!(codes, [Some(500), Some(500), Some(200)]);
    assert!(attempts[0].error.as_deref().unwrap().contains("500"));
    assert!(attempts[2].error.is_none());
}

async fn a_receiver_that_never_answers_ends_failed(app: TestApp) {
    let receiver = Receiver::start(Answer::Fail).await;
    let (destination_id, _) = destination(&app, &receiver.url, json!(["*"])).await;
    app.customer("Linus").await;
    let failed = eventually("the delivery to fail", Duration::from_secs(20), || async {
        let page =
            app.get(&format!("/webhooks/events?status=failed&destination_id={destination_id}")).await.expect(200);
        page.body["models"].as_array().unwrap().first().cloned()
    })
    .await;
    let attempts = test_webhook_config().retry_delays.len() + 1;
    assert_eq!(receiver.requests().len(), attempts, "the first attempt and one per retry delay");
    assert_eq!(failed["metadata"]["attempts"], attempts);
    assert_eq!(failed["metadata"]["last_status_code"], 500);
    assert!(failed["failed_at"].is_string());
    assert!(failed.get("successful_at").is_none());
    assert_nothing_more_to_send(&app).await;
    assert_eq!(receiver.requests().len(), attempts, "a failed delivery is not tried again");
}

/// Retries every 200 ms at most and gives up only after a minute.
fn patient_config() -> tally_http::WebhookConfig {
    tally_http::WebhookConfig {
        retry_delays: vec![Duration::from_millis(200)],
        retry_for: Duration::from_secs(60),
        ..test_webhook_config()
    }
}

async fn a_restart_in_the_middle_of_retries_loses_nothing(mut app: TestApp) {
    app.stop().await;
    let mut first = TestApp::spawn_with(app.database.clone(), app.backend, patient_config()).await;
    let receiver = Receiver::start(Answer::Fail).await;
    let (_, secret) = destination(&first, &receiver.url, json!(["customer.created"])).await;
    let customer = first.customer("Margaret").await;
    eventually("a first, failed attempt", Duration::from_secs(10), || async {
        (!receiver.requests().is_empty()).then_some(())
    })
    .await;
    first.stop().await;
    let store = app.store.clone();
    let status = tokio::task::spawn_blocking(move || {
        store.read(|conn| conn.query_one("SELECT status FROM webhook_deliveries", &[])?.text(0)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status, "pending", "a failed attempt leaves the delivery pending");
    receiver.answer(Answer::Ok);
    // With no server running, nothing is sent (a stopped server finishes its sends first).
    let before_restart = receiver.requests().len();

    let second = TestApp::spawn_with(app.database.clone(), app.backend, patient_config()).await;
    let delivered = eventually("delivery after the restart", Duration::from_secs(10), || async {
        let page = second.get("/webhooks/events?status=delivered").await.expect(200);
        page.body["models"].as_array().unwrap().first().cloned()
    })
    .await;
    let requests = receiver.requests();
    assert!(requests.len() > before_restart);
    let last = requests.last().unwrap();
    verify(&secret, &last.signature, &last.body, now_seconds()).unwrap();
    assert_eq!(last.json()["data"]["id"], customer.as_str());
    assert_eq!(last.json()["id"], delivered["id"]);
    assert_eq!(delivered["metadata"]["attempts"], requests.len());
}

/// A server that claims a delivery and dies mid-send (here: a claim never followed by a
/// result) holds it only until the lease runs out; then another server delivers it.
async fn a_claim_abandoned_mid_send_is_delivered_after_its_lease(mut app: TestApp) {
    app.stop().await;
    let receiver = Receiver::start(Answer::Ok).await;
    let store = app.store.clone();
    let url = receiver.url.clone();
    let (secret, event_id, leased_until) = tokio::task::spawn_blocking(move || {
        let now = chrono::Utc::now();
        let new = tally_store::ops::webhooks::NewDestination { url, topics: vec!["*".into()], connect: false };
        let destination = store.write(|conn| tally_store::ops::webhooks::create(conn, Mode::Test, &new, now)).unwrap();
        let customer = tally_store::ops::customers::NewCustomer { name: "Barbara".into(), ..Default::default() };
        store.write(|conn| tally_store::ops::customers::create(conn, Mode::Test, &customer, now)).unwrap();
        let lease_until = now + chrono::Duration::hours(1);
        let claimed = store.write(|conn| tally_store::repo::webhooks::claim_due(conn, now, lease_until, 10)).unwrap();
        assert_eq!(claimed.len(), 1);
        (destination.secret, claimed[0].event.id.clone(), lease_until)
    })
    .await
    .unwrap();
    let server = TestApp::spawn_on(app.database.clone(), app.backend).await;
    // While the lease holds, the delivery is not due for anyone.
    let claimed = tally_http::delivery::claim(&server.store, &test_webhook_config(), server.clock.now(), 10).await;
    assert!(claimed.unwrap().is_empty(), "nothing is sent while the lease holds");
    assert!(receiver.requests().is_empty(), "nothing is sent while the lease holds");
    server.clock.advance(leased_until - server.clock.now() + chrono::Duration::seconds(1));
    let request = eventually("delivery after the lease", Duration::from_secs(10), || async {
        receiver.requests().into_iter().next()
    })
    .await;
    assert!(server.clock.now() >= leased_until);
    verify(&secret, &request.signature, &request.body, signed_at(&request)).unwrap();
    assert!(signed_at(&request) >= leased_until.timestamp(), "sent after the lease, by the server's clock");
    assert_eq!(request.json()["id"], event_id.as_str());
    wait_until_none_pending(&server).await;
    let listed = server.get("/webhooks/events").await.expect(200);
    assert_eq!(listed.body["models"][0]["status"], "delivered");
    assert_eq!(listed.body["models"][0]["metadata"]["attempts"], 2, "the abandoned claim counts as an attempt");
}

/// Two servers on one database, both delivering: each event reaches the receiver once.
async fn two_servers_deliver_each_event_once(app: TestApp) {
    let other = TestApp::spawn_on(app.database.clone(), app.backend).await;
    let receiver = Receiver::start(Answer::Ok).await;
    destination(&app, &receiver.url, json!(["customer.created"])).await;
    // Both servers' delivery jobs poll every 50 ms and race for every event.
    for index in 0..30 {
        let server = if index % 2 == 0 { &app } else { &other };
        server.customer(&format!("Customer {index}")).await;
    }
    wait_until_none_pending(&app).await;
    // Each delivery was claimed once (a second claim would count a second attempt), so no
    // second send of it can still be on its way.
    let delivered = list_all(&app, "status=delivered").await;
    assert_eq!(delivered.len(), 30);
    assert!(delivered.iter().all(|item| item["metadata"]["attempts"] == 1), "{delivered:?}");
    let mut ids: Vec<String> =
        receiver.requests().iter().map(|request| request.json()["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    let count = ids.len();
    ids.dedup();
    assert_eq!((count, ids.len()), (30, 30), "30 events, each delivered once");
}

async fn the_event_log_shows_statuses_and_pages_by_cursor(app: TestApp) {
    let good = Receiver::start(Answer::Ok).await;
    let bad = Receiver::start(Answer::Fail).await;
    let (good_id, _) = destination(&app, &good.url, json!(["customer.created"])).await;
    let (bad_id, _) = destination(&app, &bad.url, json!(["customer.created", "transaction.completed"])).await;
    // Disabled destinations and connect destinations get nothing.
    let quiet = Receiver::start(Answer::Ok).await;
    let (disabled_id, _) = destination(&app, &quiet.url, json!(["*"])).await;
    app.patch(&format!("/webhooks/{disabled_id}"), json!({"enabled": false})).await.expect(200);
    app.post("/webhooks", json!({"url": quiet.url, "connect": true})).await.expect(201);
    let started = chrono::Utc::now();
    for index in 0..5 {
        app.customer(&format!("Customer {index}")).await;
    }
    wait_until_none_pending(&app).await;
    assert!(quiet.requests().is_empty(), "disabled and connect destinations receive nothing");
    assert_eq!(good.requests().len(), 5);

    let all = list_all(&app, "").await;
    assert_eq!(all.len(), 10, "5 events to each of 2 destinations");
    let times: Vec<&str> = all.iter().map(|item| item["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|pair| pair[0] >= pair[1]), "newest first: {times:?}");
    let delivered = list_all(&app, &format!("destination_id={good_id}")).await;
    assert_eq!(delivered.len(), 5);
    for item in &delivered {
        assert_eq!(item["status"], "delivered");
        assert!(item["successful_at"].is_string() && item.get("failed_at").is_none());
        assert_eq!(item["topic"], "customer.created");
    }
    let failed = list_all(&app, "status=failed").await;
    assert_eq!(failed.len(), 5);
    for item in &failed {
        assert_eq!(item["destination_id"], bad_id.as_str());
        assert!(item["failed_at"].is_string() && item.get("successful_at").is_none());
    }
    assert!(list_all(&app, "status=pending").await.is_empty());
    // The SDK's own values, in any case, mean the same.
    assert_eq!(list_all(&app, "status=Failed").await.len(), 5);
    assert_eq!(list_all(&app, "status=Success").await.len(), 5);
    assert_eq!(list_all(&app, "status=SUCCESS").await.len(), 5);
    let since = started.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).replace('+', "%2B");
    assert_eq!(list_all(&app, &format!("time_gte={since}")).await.len(), 10);
    assert!(list_all(&app, &format!("time_lte={since}")).await.is_empty());
    assert!(list_all(&app, "time_gte=2999-01-01").await.is_empty());

    // Pages of 3: 3, 3, 3, 1, following `next`; `prev` walks back to the same pages.
    let mut pages: Vec<Value> = Vec::new();
    let mut path = "/webhooks/events?limit=3".to_owned();
    loop {
        let page = app.get(&path).await.expect(200);
        assert_eq!(page.body["pagination"]["limit"], 3);
        pages.push(page.body.clone());
        match page.body["pagination"]["next"].as_str() {
            Some(next) => path = format!("/webhooks/events?limit=3&next={next}"),
            None => break,
        }
    }
    let sizes: Vec<usize> = pages.iter().map(|page| page["models"].as_array().unwrap().len()).collect();
    assert_eq!(sizes, [3, 3, 3, 1]);
    assert!(pages[0]["pagination"].get("prev").is_none(), "the first page has no prev");
    let key = |item: &Value| format!("{}/{}", item["id"], item["destination_id"]);
    let flattened: Vec<String> =
        pages.iter().flat_map(|page| page["models"].as_array().unwrap().iter().map(key)).collect();
    assert_eq!(flattened, all.iter().map(key).collect::<Vec<_>>(), "paging sees each delivery once, in order");
    let back = app
        .get(&format!("/webhooks/events?limit=3&prev={}", pages[2]["pagination"]["prev"].as_str().unwrap()))
        .await
        .expect(200);
    assert_eq!(back.body["models"], pages[1]["models"]);
    let first = app
        .get(&format!("/webhooks/events?limit=3&prev={}", pages[1]["pagination"]["prev"].as_str().unwrap()))
        .await
        .expect(200);
    assert_eq!(first.body["models"], pages[0]["models"]);
    assert!(first.body["pagination"].get("prev").is_none());

    // Test and live never meet.
    let live = app.call(Method::GET, "/webhooks/events", Some(&app.live_key), None).await.expect(200);
    assert_eq!(live.body["models"], json!([]));

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("status=lost", "status"),
        ("next=zz", "next"),
        ("prev=6e31", "prev"),
        ("next=6e31&prev=7031", "next"),
        ("time_gte=yesterday", "time_gte"),
    ] {
        let refused = app.get(&format!("/webhooks/events?{query}")).await.expect(422);
        assert!(refused.body["errors"][field].is_array(), "{query}: {}", refused.body);
    }
}

async fn destinations_are_managed_and_checked(app: TestApp) {
    let created = app.post("/webhooks", json!({"url": "https://127.0.0.1:1/hooks"})).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert!(id.starts_with("whd_"));
    assert!(secret.starts_with("whsec_") && secret.len() > 40);
    assert!(created.body["created_at"].is_string());

    let shown = app.get(&format!("/webhooks/{id}")).await.expect(200);
    assert_eq!(shown.body["secret"], secret.as_str());
    assert_eq!(shown.body["topics"], json!(["*"]), "topics default to all");
    assert_eq!(shown.body["connect"], false);
    assert_eq!(shown.body["enabled"], true);
    assert_eq!(shown.body["url"], "https://127.0.0.1:1/hooks");

    app.post("/webhooks", json!({"url": "http://example.com/plain", "topics": ["customer.created"], "connect": true}))
        .await
        .expect(201);
    let listed = app.get("/webhooks").await.expect(200);
    assert_eq!(listed.body["total_count"], 2);
    assert!(
        listed.body["items"].as_array().unwrap().iter().all(|item| item.get("secret").is_none()),
        "no secrets in lists"
    );
    assert_eq!(app.get("/webhooks?connect=true").await.body["total_count"], 1);
    assert_eq!(app.get("/webhooks?connect=false").await.body["items"][0]["id"], id.as_str());

    let updated = app
        .patch(
            &format!("/webhooks/{id}"),
            json!({"url": "https://127.0.0.1:1/v2", "topics": ["transaction.completed", "wallet.balance_depleted"], "enabled": false}),
        )
        .await
        .expect(200);
    assert_eq!(updated.body["url"], "https://127.0.0.1:1/v2");
    assert_eq!(updated.body["topics"], json!(["transaction.completed", "wallet.balance_depleted"]));
    assert_eq!(updated.body["enabled"], false);
    assert_eq!(updated.body["secret"], secret.as_str());
    assert!(updated.body["updated_at"].as_str() > updated.body["created_at"].as_str());
    assert_eq!(app.get("/webhooks?enabled=false").await.body["total_count"], 1);
    assert_eq!(app.get("/webhooks?enabled=true").await.body["total_count"], 1);

    // A test send to one destination goes even while it is disabled; unknown topics are 422.
    let sent = app.post(&format!("/webhooks/{id}/test/customer.created"), json!({})).await.expect(202);
    assert!(sent.body["id"].as_str().unwrap().starts_with("evt_"));
    let refused = app.post(&format!("/webhooks/{id}/test/customer.deleted"), json!({})).await.expect(422);
    assert!(refused.body["errors"]["topic"][0].as_str().unwrap().contains("customer.created"), "lists the topics");
    app.post("/webhooks/test/nope", json!({})).await.expect(422);
    app.post("/webhooks/whd_missing/test/customer.created", json!({})).await.expect(404);

    // Modes are separate.
    app.call(Method::GET, &format!("/webhooks/{id}"), Some(&app.live_key), None).await.expect(404);

    app.call(Method::DELETE, &format!("/webhooks/{id}"), Some(&app.test_key), None).await.expect(204);
    app.get(&format!("/webhooks/{id}")).await.expect(404);
    app.call(Method::DELETE, &format!("/webhooks/{id}"), Some(&app.test_key), None).await.expect(404);
    app.patch(&format!("/webhooks/{id}"), json!({"enabled": true})).await.expect(404);
    app.post(&format!("/webhooks/{id}/test/customer.created"), json!({})).await.expect(404);
    app.get("/webhooks/whd_missing").await.expect(404);
    assert_eq!(app.get("/webhooks").await.body["total_count"], 1);
    // The test send to the deleted destination ends failed, not pending forever.
    let log = list_all(&app, &format!("destination_id={id}")).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], "failed", "{log:?}");
    assert!(log[0]["failed_at"].is_string());

    // URLs: absolute http(s), at most 2048 characters, no credentials; in live mode https
    // unless the host is loopback.
    let long = format!("https://example.com/{}", "a".repeat(2030));
    for (url, mode_key) in [
        ("not a url", &app.test_key),
        ("/relative/path", &app.test_key),
        ("ftp://example.com/hook", &app.test_key),
        ("https://user:password@example.com/hook", &app.test_key),
        (long.as_str(), &app.test_key),
        ("http://example.com/hook", &app.live_key),
        ("http://10.0.0.1/hook", &app.live_key),
    ] {
        let refused = app.call(Method::POST, "/webhooks", Some(mode_key), Some(&json!({"url": url}))).await.expect(422);
        assert!(refused.body["errors"]["url"].is_array(), "{url}: {}", refused.body);
    }
    for url in [
        "https://example.com/hook",
        "http://127.0.0.1:9/hook",
        "http://127.1.2.3/hook",
        "http://localhost:8080/hook",
        "http://[::1]:9/hook",
    ] {
        app.call(Method::POST, "/webhooks", Some(&app.live_key), Some(&json!({"url": url}))).await.expect(201);
    }
    for (topics, field) in [(json!(["nope"]), "topics[0]"), (json!([]), "topics"), (json!(["*", "x.y"]), "topics[1]")] {
        let refused = app.post("/webhooks", json!({"url": "https://example.com", "topics": topics})).await.expect(422);
        assert!(refused.body["errors"][field].is_array(), "{topics}: {}", refused.body);
    }
    let refused = app
        .patch(&format!("/webhooks/{}", listed.body["items"][1]["id"].as_str().unwrap()), json!({"url": "ftp://x"}))
        .await;
    refused.expect(422);
    app.post("/webhooks", json!({"topics": ["*"]})).await.expect(422);
}

/// Real top-ups send `top_up.succeeded` (with the crediting transaction) and `top_up.failed`.
async fn top_ups_announce_how_they_ended(app: TestApp) {
    let receiver = Receiver::start(Answer::Ok).await;
    let (_, secret) = destination(&app, &receiver.url, json!(["top_up.succeeded", "top_up.failed"])).await;
    let customer = app.customer("Payer").await;
    let request = |amount: &str| {
        crate::harness::body(&format!(
            r#"{{"customer_id":"{customer}","amount":{amount},"currency":"USD","return_url":"https://a.example","failure_url":"https://b.example"}}"#
        ))
    };
    let paid = app.post("/top-ups", request("12.5")).await.expect(201);
    let paid_id = paid.body["id"].as_str().unwrap().to_owned();
    app.post(&format!("/test-helpers/top-ups/{paid_id}/succeed"), json!({})).await.expect(200);
    let declined = app.post("/top-ups", request("3")).await.expect(201);
    let declined_id = declined.body["id"].as_str().unwrap().to_owned();
    app.post(&format!("/test-helpers/top-ups/{declined_id}/fail"), json!({})).await.expect(200);
    let requests = eventually("both top-up events", Duration::from_secs(20), || async {
        let requests = receiver.requests();
        (requests.len() >= 2).then_some(requests)
    })
    .await;
    assert_eq!(requests.len(), 2);
    for request in &requests {
        verify(&secret, &request.signature, &request.body, now_seconds()).unwrap();
    }
    let events: Vec<Value> = requests.iter().map(Received::json).collect();
    let succeeded = events.iter().find(|event| event["type"] == "top_up.succeeded").expect("top_up.succeeded");
    assert_eq!(succeeded["data"]["id"], paid_id.as_str());
    assert_eq!(succeeded["data"]["status"], "succeeded");
    assert_eq!(succeeded["data"]["amount"].to_string(), "12.5");
    assert_eq!(succeeded["data"]["transaction_id"], format!("tally_top_up_{paid_id}").as_str());
    let failed = events.iter().find(|event| event["type"] == "top_up.failed").expect("top_up.failed");
    assert_eq!(failed["data"]["id"], declined_id.as_str());
    assert!(failed["data"]["failure_reason"].is_string());
    app.assert_ledger_agrees().await;
}

/// Retention (issue 12): 30 days after its event, a delivered event goes, with its deliveries
/// and attempts; one with a delivery still pending stays, and so do young ones.
async fn old_finished_events_are_deleted_and_others_kept(app: TestApp) {
    let receiver = Receiver::start(Answer::Ok).await;
    destination(&app, &receiver.url, json!(["customer.created"])).await;
    let old = app.customer("Old").await;
    let retrying = app.customer("Retrying").await;
    wait_until_none_pending(&app).await;
    let about = |customer: &str, items: &[Value]| -> Vec<Value> {
        items.iter().filter(|item| item["data"].to_string().contains(customer)).cloned().collect()
    };
    let all = list_all(&app, "").await;
    let old_event = about(&old, &all)[0]["id"].as_str().unwrap().to_owned();
    let retrying_event = about(&retrying, &all)[0]["id"].as_str().unwrap().to_owned();
    // One delivery still being retried (its next attempt far away), as after a long outage.
    let store = app.store.clone();
    let event = retrying_event.clone();
    tokio::task::spawn_blocking(move || {
        store.write(|conn| {
            conn.execute(
                "UPDATE webhook_deliveries SET status = 'pending', successful_at = NULL, next_attempt_at = $2 WHERE event_id = $1",
                &[event.as_str().into(), tally_store::Value::Int(32_503_680_000_000_000)],
            )
        })
    })
    .await
    .unwrap()
    .unwrap();

    app.clock.advance(chrono::Duration::days(31));
    let young = app.customer("Young").await;
    app.eventually("the old delivered event to be deleted", || async {
        let all = list_all(&app, "").await;
        about(&old, &all).is_empty()
    })
    .await;
    let all = list_all(&app, "").await;
    assert_eq!(about(&retrying, &all).len(), 1, "an event with a pending delivery stays");
    assert_eq!(about(&young, &all).len(), 1, "a young event stays");
    let store = app.store.clone();
    let counts = tokio::task::spawn_blocking(move || {
        store.read(|conn| {
            let count = |conn: &mut dyn tally_store::Conn, sql: &str, id: &str| {
                let params: Vec<tally_store::Value> = if id.is_empty() { Vec::new() } else { vec![id.into()] };
                conn.query(sql, &params).map(|rows| rows[0].int(0).unwrap())
            };
            Ok::<_, tally_store::StoreError>((
                count(conn, "SELECT COUNT(*) FROM webhook_events WHERE id = $1", &old_event)?,
                count(conn, "SELECT COUNT(*) FROM webhook_deliveries WHERE event_id = $1", &old_event)?,
                count(conn, "SELECT COUNT(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.sequence = a.delivery_sequence WHERE d.event_id = $1", &retrying_event)?,
                count(conn, "SELECT COUNT(*) FROM webhook_attempts", "")?,
            ))
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(counts.0, 0, "the old event is gone");
    assert_eq!(counts.1, 0, "its deliveries are gone");
    assert_eq!(counts.2, 1, "the kept event keeps its attempt");
    assert_eq!(counts.3, 2, "only the kept events' attempts remain (the retrying one's and the young one's)");
}

on_both_backends!(
    top_ups_announce_how_they_ended,
    old_finished_events_are_deleted_and_others_kept,
    every_topic_arrives_signed,
    a_failing_receiver_gets_the_event_until_it_answers,
    a_receiver_that_never_answers_ends_failed,
    a_restart_in_the_middle_of_retries_loses_nothing,
    a_claim_abandoned_mid_send_is_delivered_after_its_lease,
    two_servers_deliver_each_event_once,
    the_event_log_shows_statuses_and_pages_by_cursor,
    destinations_are_managed_and_checked,
);
