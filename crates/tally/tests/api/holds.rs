//! Holds (pre-authorisation): a hold moves its amount from `available` to `pending_out` at
//! once; captures take from it as fees (beyond it as usage is debited); a release or the
//! worker at its expiry gives back the rest. Each test states one rule, on both backends, and
//! ends with the ledger agreeing.

use crate::harness::{body, Reply, TestApp};
use crate::on_both_backends;
use chrono::{Duration, SecondsFormat};
use serde_json::{json, Value};

fn holds(customer: &str) -> String {
    format!("/customers/{customer}/wallet/holds")
}

/// Creates a hold from JSON text (so that decimals stay exact).
async fn hold(app: &TestApp, customer: &str, json_text: &str) -> Reply {
    app.post(&holds(customer), body(json_text)).await
}

async fn capture(app: &TestApp, customer: &str, hold_id: &str, json_text: &str) -> Reply {
    app.post(&format!("{}/{hold_id}/capture", holds(customer)), body(json_text)).await
}

async fn release(app: &TestApp, customer: &str, hold_id: &str) -> Reply {
    app.call(reqwest::Method::POST, &format!("{}/{hold_id}/release", holds(customer)), Some(&app.test_key), None).await
}

async fn get_hold(app: &TestApp, customer: &str, hold_id: &str) -> Value {
    app.get(&format!("{}/{hold_id}", holds(customer))).await.expect(200).body
}

/// (available, pending_in, pending_out) of `default:USD`, as exact decimal text.
async fn usd(app: &TestApp, customer: &str) -> (String, String, String) {
    app.balances(customer, "default:USD").await
}

fn balances(available: &str, pending_out: &str) -> (String, String, String) {
    (available.to_owned(), "0".to_owned(), pending_out.to_owned())
}

fn replayed(reply: &Reply) -> &str {
    reply.headers.get("idempotent-replayed").and_then(|value| value.to_str().ok()).unwrap_or("(missing)")
}

fn at(app: &TestApp, offset: Duration) -> String {
    (app.clock.now() + offset).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A hold moves its amount from `available` to `pending_out` at once, with a ledger entry;
/// the wallet and the account both show it, and the hold answers with its id, status and
/// amounts.
async fn a_hold_moves_available_to_pending_out(app: TestApp) {
    let customer = app.customer("Renderer").await;
    app.fund(&customer, "USD", "100", "fund-1").await;
    let created = hold(
        &app,
        &customer,
        r#"{"transaction_id":"render-1","asset":"USD","amount":30.5,"description":"Video render","metadata":{"job":"j1"}}"#,
    )
    .await
    .expect(201);
    let held = &created.body;
    assert_eq!(held["id"], "render-1");
    assert_eq!(held["status"], "held");
    assert_eq!(held["account_id"], "default:USD");
    assert_eq!((held["amount"].to_string(), held["captured"].to_string()), ("30.5".into(), "0".into()));
    assert_eq!((held["held"].to_string(), held["released"].to_string()), ("30.5".into(), "0".into()));
    assert_eq!(held["metadata"]["job"], "j1");
    assert_eq!(replayed(&created), "false");
    assert_eq!(usd(&app, &customer).await, balances("69.5", "30.5"));
    let wallet = app.get(&format!("/customers/{customer}/wallet")).await.expect(200);
    assert_eq!(wallet.body["accounts"][0]["pending_out"].to_string(), "30.5");
    assert_eq!(wallet.body["accounts"][0]["available"].to_string(), "69.5");
    app.assert_ledger_agrees().await;
}

/// A hold `available` cannot cover is refused with a 422 naming the shortfall, and changes
/// nothing; with `allow_overdraft` it is made and `available` goes below zero.
async fn a_hold_available_cannot_cover_is_refused_unless_overdraft_is_allowed(app: TestApp) {
    let customer = app.customer("Short").await;
    app.fund(&customer, "USD", "10", "fund-1").await;
    let refused = hold(&app, &customer, r#"{"transaction_id":"big","asset":"USD","amount":25}"#).await.expect(422);
    let message = refused.body["errors"]["amount"][0].as_str().unwrap();
    assert!(message.contains("15 short of the 25"), "{message}");
    assert_eq!(usd(&app, &customer).await, balances("10", "0"));
    assert_eq!(app.get(&holds(&customer)).await.expect(200).body["total_count"], 0);
    // The id was not used up by the refusal.
    let made = hold(&app, &customer, r#"{"transaction_id":"big","asset":"USD","amount":25,"allow_overdraft":true}"#)
        .await
        .expect(201);
    assert_eq!(made.body["allow_overdraft"], true);
    assert_eq!(usd(&app, &customer).await, balances("-15", "25"));
    // Amounts are in the asset's precision: USD has two decimal places.
    let precise =
        hold(&app, &customer, r#"{"transaction_id":"fine","asset":"USD","amount":0.001,"allow_overdraft":true}"#)
            .await
            .expect(422);
    assert!(precise.body["errors"]["amount"][0].as_str().unwrap().contains("2 decimal places"), "{}", precise.text);
    hold(&app, &customer, r#"{"transaction_id":"zero","asset":"USD","amount":0}"#).await.expect(422);
    app.assert_ledger_agrees().await;
}

/// A hold is idempotent by its `transaction_id`: the same request answers the same hold
/// (also when sent twice at once), another request with the id is a 409.
async fn holds_are_idempotent_by_transaction_id(app: TestApp) {
    let customer = app.customer("Retry").await;
    app.fund(&customer, "USD", "100", "fund-1").await;
    let request = r#"{"transaction_id":"render-1","asset":"USD","amount":40}"#;
    let (first, second) = tokio::join!(hold(&app, &customer, request), hold(&app, &customer, request));
    let (first, second) = (first.expect(201), second.expect(201));
    assert_eq!(first.body, second.body);
    let mut flags = [replayed(&first), replayed(&second)];
    flags.sort();
    assert_eq!(flags, ["false", "true"]);
    let again = hold(&app, &customer, request).await.expect(201);
    assert_eq!((replayed(&again), &again.body), ("true", &first.body));
    let other = hold(&app, &customer, r#"{"transaction_id":"render-1","asset":"USD","amount":41}"#).await.expect(409);
    assert!(other.body["detail"].as_str().unwrap().contains("render-1"), "{}", other.text);
    assert_eq!(usd(&app, &customer).await, balances("60", "40"));
    app.assert_ledger_agrees().await;
}

/// Several partial captures each take from the hold as a fee; the rest stays held, and a
/// release returns exactly the rest. Captures are idempotent by their transaction id; a
/// capture of zero is a 422, and one on a released hold a 409.
async fn partial_captures_then_release_return_exactly_the_rest(app: TestApp) {
    let customer = app.customer("Partial").await;
    app.fund(&customer, "USD", "100", "fund-1").await;
    hold(&app, &customer, r#"{"transaction_id":"render-1","asset":"USD","amount":50}"#).await.expect(201);
    let first = capture(&app, &customer, "render-1", r#"{"amount":12.5,"transaction_id":"cap-1"}"#).await.expect(201);
    assert_eq!(first.body["transaction_id"], "cap-1");
    assert_eq!(
        (first.body["from_hold"].to_string(), first.body["beyond_hold"].to_string()),
        ("12.5".into(), "0".into())
    );
    assert_eq!(first.body["hold"]["status"], "held");
    assert_eq!(first.body["hold"]["held"].to_string(), "37.5");
    let replay = capture(&app, &customer, "render-1", r#"{"amount":12.5,"transaction_id":"cap-1"}"#).await.expect(201);
    assert_eq!(replayed(&replay), "true");
    assert_eq!(replay.body["from_hold"].to_string(), "12.5");
    capture(&app, &customer, "render-1", r#"{"amount":13,"transaction_id":"cap-1"}"#).await.expect(409);
    capture(&app, &customer, "render-1", r#"{"amount":0}"#).await.expect(422);
    capture(&app, &customer, "render-1", r#"{"amount":1.005}"#).await.expect(422);
    let second = capture(&app, &customer, "render-1", r#"{"amount":7.25}"#).await.expect(201);
    assert_eq!(second.body["hold"]["held"].to_string(), "30.25");
    assert_eq!(usd(&app, &customer).await, balances("50", "30.25"));
    let fee = app.get(&format!("/customers/{customer}/wallet/transactions/cap-1")).await.expect(200);
    assert_eq!((fee.body["type"].as_str(), fee.body["amount"].to_string()), (Some("fee"), "-12.5".into()));
    assert_eq!(fee.body["details"]["hold_id"], "render-1");

    let released = release(&app, &customer, "render-1").await.expect(200);
    assert_eq!(released.body["status"], "released");
    assert_eq!(
        (released.body["captured"].to_string(), released.body["released"].to_string()),
        ("19.75".into(), "30.25".into())
    );
    assert_eq!(released.body["held"].to_string(), "0");
    assert_eq!(usd(&app, &customer).await, balances("80.25", "0"));
    // Releasing again changes nothing; capturing from a released hold is a 409.
    assert_eq!(release(&app, &customer, "render-1").await.expect(200).body, released.body);
    let late = capture(&app, &customer, "render-1", r#"{"amount":1}"#).await.expect(409);
    assert!(late.body["detail"].as_str().unwrap().contains("released"), "{}", late.text);
    assert_eq!(usd(&app, &customer).await, balances("80.25", "0"));
    release(&app, &customer, "no-such-hold").await.expect(404);
    app.assert_ledger_agrees().await;
}

/// A capture above what the hold holds captures all of it and debits the difference as usage
/// is debited (overdraft allowed), and says so: `beyond_hold`, and on the fee transaction.
async fn a_capture_beyond_the_hold_debits_the_difference_and_says_so(app: TestApp) {
    let customer = app.customer("Over").await;
    app.fund(&customer, "USD", "20", "fund-1").await;
    hold(&app, &customer, r#"{"transaction_id":"render-1","asset":"USD","amount":10}"#).await.expect(201);
    capture(&app, &customer, "render-1", r#"{"amount":4}"#).await.expect(201);
    let over = capture(&app, &customer, "render-1", r#"{"amount":25,"transaction_id":"cap-over"}"#).await.expect(201);
    assert_eq!(over.body["amount"].to_string(), "25");
    assert_eq!((over.body["from_hold"].to_string(), over.body["beyond_hold"].to_string()), ("6".into(), "19".into()));
    assert_eq!(over.body["hold"]["status"], "captured");
    assert_eq!(
        (over.body["hold"]["captured"].to_string(), over.body["hold"]["held"].to_string()),
        ("10".into(), "0".into())
    );
    assert!(over.body["hold"]["closed_at"].is_string());
    // 20 − 4 − 25: past the grants into overdraft, as usage goes.
    assert_eq!(usd(&app, &customer).await, balances("-9", "0"));
    let fee = app.get(&format!("/customers/{customer}/wallet/transactions/cap-over")).await.expect(200);
    assert_eq!(fee.body["amount"].to_string(), "-25");
    assert_eq!(fee.body["details"]["captured_from_hold"], "6");
    assert_eq!(fee.body["details"]["debited_beyond_hold"], "19");
    release(&app, &customer, "render-1").await.expect(409);
    capture(&app, &customer, "render-1", r#"{"amount":1}"#).await.expect(409);
    app.assert_ledger_agrees().await;
}

/// The worker releases what a hold still holds once its `expires_at` passed (default: the
/// server's hold_expiry_seconds, one day; at most hold_max_expiry_seconds, seven days), and a
/// hold past its expiry cannot be captured.
async fn the_worker_releases_holds_at_their_expiry(app: TestApp) {
    let customer = app.customer("Slow").await;
    app.fund(&customer, "USD", "100", "fund-1").await;
    let soon = at(&app, Duration::hours(1));
    let short = hold(
        &app,
        &customer,
        &format!(r#"{{"transaction_id":"short","asset":"USD","amount":30,"expires_at":"{soon}"}}"#),
    )
    .await
    .expect(201);
    assert_eq!(short.body["expires_at"], soon.as_str());
    let default = hold(&app, &customer, r#"{"transaction_id":"default","asset":"USD","amount":10}"#).await.expect(201);
    let instant = |value: &Value| chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap();
    assert_eq!(instant(&default.body["expires_at"]) - instant(&default.body["created_at"]), Duration::days(1));
    let too_far = at(&app, Duration::days(8));
    hold(&app, &customer, &format!(r#"{{"transaction_id":"far","asset":"USD","amount":1,"expires_at":"{too_far}"}}"#))
        .await
        .expect(422);
    let past = at(&app, -Duration::minutes(1));
    hold(&app, &customer, &format!(r#"{{"transaction_id":"past","asset":"USD","amount":1,"expires_at":"{past}"}}"#))
        .await
        .expect(422);
    capture(&app, &customer, "short", r#"{"amount":5}"#).await.expect(201);
    assert_eq!(usd(&app, &customer).await, balances("60", "35"));

    app.clock.advance(Duration::hours(2));
    app.eventually("the short hold expires", || async {
        get_hold(&app, &customer, "short").await["status"] == "expired"
    })
    .await;
    let expired = get_hold(&app, &customer, "short").await;
    assert_eq!((expired["captured"].to_string(), expired["released"].to_string()), ("5".into(), "25".into()));
    assert_eq!(usd(&app, &customer).await, balances("85", "10"));
    let refused = capture(&app, &customer, "short", r#"{"amount":1}"#).await.expect(409);
    assert!(refused.body["detail"].as_str().unwrap().contains("expired"), "{}", refused.text);
    release(&app, &customer, "short").await.expect(409);

    app.clock.advance(Duration::days(1));
    app.eventually("the default hold expires", || async {
        get_hold(&app, &customer, "default").await["status"] == "expired"
    })
    .await;
    assert_eq!(usd(&app, &customer).await, balances("95", "0"));
    app.assert_ledger_agrees().await;
}

/// A hold reserves an amount of the account, not grants: a grant expiring under an open hold
/// expires whole (available goes below zero, the hold keeps what it holds), a capture then
/// burns what grants remain and owes the rest, and nothing is counted twice.
async fn grant_expiry_under_an_open_hold_counts_nothing_twice(app: TestApp) {
    let customer = app.customer("Promo").await;
    let expires = at(&app, Duration::hours(1));
    app.post(
        &format!("/customers/{customer}/wallet/adjustments"),
        json!({"transaction_id": "gift", "asset": "USD", "amount": 100, "reason": "gift", "expires_at": expires}),
    )
    .await
    .expect(201);
    hold(&app, &customer, r#"{"transaction_id":"render-1","asset":"USD","amount":80}"#).await.expect(201);
    assert_eq!(usd(&app, &customer).await, balances("20", "80"));
    app.clock.advance(Duration::hours(2));
    app.eventually("the gift expires", || async { usd(&app, &customer).await == balances("-80", "80") }).await;
    app.assert_ledger_agrees().await;
    capture(&app, &customer, "render-1", r#"{"amount":30}"#).await.expect(201);
    assert_eq!(usd(&app, &customer).await, balances("-80", "50"));
    release(&app, &customer, "render-1").await.expect(200);
    // The render's 30 is owed; the expired gift is gone once, not twice.
    assert_eq!(usd(&app, &customer).await, balances("-30", "0"));
    app.assert_ledger_agrees().await;
}

const RENDERS: &str = r#"{
  "name": "Renders", "code": "renders", "publish": true,
  "prices": [
    { "name": "Per render", "type": "usage_based", "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "render", "usage_type": "unit" },
      "pricing": [ { "asset": "USD", "values": [ { "unit_price": 4 } ] } ] }
  ]
}"#;

fn render(id: &str, hold_id: Option<&str>, at: &str) -> Value {
    let mut event = json!({"id": id, "event_type": "render", "occurred_at": at});
    if let Some(hold_id) = hold_id {
        event["hold_id"] = json!(hold_id);
    }
    event
}

/// Usage events naming a hold have their fees captured from it (past what it holds, debited
/// as usage is); events without one are billed as always; a hold the customer does not have,
/// or a closed one, refuses the whole batch with a 422 and stores nothing.
async fn usage_events_naming_a_hold_capture_from_it(app: TestApp) {
    app.post("/products", body(RENDERS)).await.expect(201);
    let customer = app
        .post("/customers", json!({"name": "Studio", "subscriptions": [{"products": [{"code": "renders"}]}]}))
        .await
        .expect(201)
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.fund(&customer, "USD", "100", "fund-1").await;
    hold(&app, &customer, r#"{"transaction_id":"job-1","asset":"USD","amount":10}"#).await.expect(201);
    let now = app.clock.now().to_rfc3339();
    let batch = json!({"customer_id": customer, "events": [
        render("e1", Some("job-1"), &now), render("e2", Some("job-1"), &now), render("e3", None, &now),
    ]});
    app.post("/events", batch.clone()).await.expect(204);
    let held = get_hold(&app, &customer, "job-1").await;
    assert_eq!((held["status"].as_str(), held["captured"].to_string()), (Some("held"), "8".into()));
    // 100 − 4 − 4 − 4, of which 2 still held.
    assert_eq!(usd(&app, &customer).await, balances("86", "2"));
    // A replay changes nothing.
    app.post("/events", batch).await.expect(204);
    assert_eq!(usd(&app, &customer).await, balances("86", "2"));
    // The next fee takes the 2 left and 2 beyond: the hold is then captured.
    app.post("/events", json!({"customer_id": customer, "events": [render("e4", Some("job-1"), &now)]}))
        .await
        .expect(204);
    let held = get_hold(&app, &customer, "job-1").await;
    assert_eq!((held["status"].as_str(), held["captured"].to_string()), (Some("captured"), "10".into()));
    assert_eq!(usd(&app, &customer).await, balances("84", "0"));
    let fee = app.get(&format!("/customers/{customer}/wallet/transactions/tally_event_e4_0")).await.expect(200);
    assert_eq!(fee.body["details"]["hold_id"], "job-1");
    assert_eq!(
        (fee.body["details"]["captured_from_hold"].as_str(), fee.body["details"]["debited_beyond_hold"].as_str()),
        (Some("2"), Some("2"))
    );

    // A closed hold, or one the customer does not have: the whole batch is refused.
    for (hold_id, words) in [("job-1", "captured"), ("nope", "no hold nope")] {
        let batch =
            json!({"customer_id": customer, "events": [render("ok", None, &now), render("bad", Some(hold_id), &now)]});
        let refused = app.post("/events", batch).await.expect(422);
        let message = refused.body["errors"]["events[1].hold_id"][0].as_str().unwrap_or_default();
        assert!(message.contains(words), "{}", refused.text);
    }
    app.get("/events/ok").await.expect(404);
    assert_eq!(usd(&app, &customer).await, balances("84", "0"));
    app.assert_ledger_agrees().await;
}

/// Captures of one hold sent at once run one after the other: together they never take more
/// than it held. Ten captures of 15 from a hold of 100: six take 15 each, the seventh takes
/// the 10 left and debits 5 beyond, closing the hold, and the last three find it captured (409).
async fn concurrent_captures_never_capture_more_than_held(app: TestApp) {
    let customer = app.customer("Busy").await;
    app.fund(&customer, "USD", "1000", "fund-1").await;
    hold(&app, &customer, r#"{"transaction_id":"render-1","asset":"USD","amount":100}"#).await.expect(201);
    let mut captures = tokio::task::JoinSet::new();
    for index in 0..10 {
        let (client, key) = (app.client.clone(), app.test_key.clone());
        let url = format!("{}{}/render-1/capture", app.base, holds(&customer));
        captures.spawn(async move {
            let sent = client
                .post(url)
                .header("X-CREDYT-API-KEY", key)
                .header("content-type", "application/json")
                .body(format!(r#"{{"amount":15,"transaction_id":"cap-{index}"}}"#))
                .send()
                .await
                .unwrap();
            (sent.status().as_u16(), sent.text().await.unwrap())
        });
    }
    let (mut from_hold, mut beyond) = (rust_decimal::Decimal::ZERO, rust_decimal::Decimal::ZERO);
    let mut statuses = Vec::new();
    while let Some(reply) = captures.join_next().await {
        let (status, text) = reply.unwrap();
        statuses.push(status);
        if status != 201 {
            assert_eq!(status, 409, "{text}");
            continue;
        }
        let reply = body(&text);
        from_hold += reply["from_hold"].to_string().parse::<rust_decimal::Decimal>().unwrap();
        beyond += reply["beyond_hold"].to_string().parse::<rust_decimal::Decimal>().unwrap();
    }
    statuses.sort();
    assert_eq!(statuses, [201, 201, 201, 201, 201, 201, 201, 409, 409, 409]);
    assert_eq!((from_hold.to_string(), beyond.to_string()), ("100".into(), "5".into()));
    let held = get_hold(&app, &customer, "render-1").await;
    assert_eq!((held["status"].as_str(), held["captured"].to_string()), (Some("captured"), "100".into()));
    assert_eq!(usd(&app, &customer).await, balances("895", "0"));
    app.assert_ledger_agrees().await;
}

/// `GET …/holds` lists a customer's holds newest first, filtered by status; `GET …/holds/{id}`
/// reads one.
async fn holds_are_listed_by_status_and_read_one_by_one(app: TestApp) {
    let customer = app.customer("Lister").await;
    app.fund(&customer, "USD", "100", "fund-1").await;
    for (id, amount) in [("a", "10"), ("b", "20"), ("c", "30")] {
        hold(&app, &customer, &format!(r#"{{"transaction_id":"{id}","asset":"USD","amount":{amount}}}"#))
            .await
            .expect(201);
        app.clock.advance(Duration::seconds(1));
    }
    release(&app, &customer, "a").await.expect(200);
    capture(&app, &customer, "b", r#"{"amount":20}"#).await.expect(201);
    let ids = |reply: Reply| -> Vec<String> {
        reply.body["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_owned()).collect()
    };
    let all = app.get(&holds(&customer)).await.expect(200);
    assert_eq!(all.body["total_count"], 3);
    assert_eq!(ids(all), ["c", "b", "a"]);
    assert_eq!(ids(app.get(&format!("{}?status=held", holds(&customer))).await.expect(200)), ["c"]);
    assert_eq!(ids(app.get(&format!("{}?status=captured", holds(&customer))).await.expect(200)), ["b"]);
    assert_eq!(ids(app.get(&format!("{}?status=released", holds(&customer))).await.expect(200)), ["a"]);
    assert_eq!(app.get(&format!("{}?status=expired", holds(&customer))).await.expect(200).body["total_count"], 0);
    app.get(&format!("{}?status=open", holds(&customer))).await.expect(422);
    let one = get_hold(&app, &customer, "c").await;
    assert_eq!(
        (one["amount"].to_string(), one["held"].to_string(), one["status"].as_str()),
        ("30".into(), "30".into(), Some("held"))
    );
    app.get(&format!("{}/nope", holds(&customer))).await.expect(404);
    app.get(&holds("cust_nobody")).await.expect(404);
    // Another customer's hold is not this one's.
    let other = app.customer("Other").await;
    app.get(&format!("{}/c", holds(&other))).await.expect(404);
    assert_eq!(usd(&app, &customer).await, balances("50", "30"));
    app.assert_ledger_agrees().await;
}

/// `hold.created`, `hold.captured`, `hold.released` and `hold.expired` are recorded for the
/// platform's destinations, with the hold as `GET` shows it (and the capture).
async fn hold_webhooks_are_recorded(app: TestApp) {
    let topics = json!(["hold.created", "hold.captured", "hold.released", "hold.expired"]);
    app.post("/webhooks", json!({"url": "http://127.0.0.1:9/holds", "topics": topics})).await.expect(201);
    let customer = app.customer("Hooked").await;
    app.fund(&customer, "USD", "100", "fund-1").await;
    hold(&app, &customer, r#"{"transaction_id":"one","asset":"USD","amount":10}"#).await.expect(201);
    capture(&app, &customer, "one", r#"{"amount":3,"transaction_id":"cap-1"}"#).await.expect(201);
    release(&app, &customer, "one").await.expect(200);
    let soon = at(&app, Duration::minutes(5));
    hold(&app, &customer, &format!(r#"{{"transaction_id":"two","asset":"USD","amount":5,"expires_at":"{soon}"}}"#))
        .await
        .expect(201);
    app.clock.advance(Duration::minutes(10));
    app.eventually("the hold expires", || async { get_hold(&app, &customer, "two").await["status"] == "expired" })
        .await;
    let log = app.get("/webhooks/events?limit=100").await.expect(200);
    let mut seen: Vec<(String, String)> = log.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["topic"].as_str().unwrap().to_owned(), item["data"]["id"].as_str().unwrap().to_owned()))
        .collect();
    seen.sort();
    let expected = [
        ("hold.captured", "one"),
        ("hold.created", "one"),
        ("hold.created", "two"),
        ("hold.expired", "two"),
        ("hold.released", "one"),
    ];
    assert_eq!(seen, expected.map(|(topic, id)| (topic.to_owned(), id.to_owned())));
    let captured = log.body["models"].as_array().unwrap().iter().find(|item| item["topic"] == "hold.captured").unwrap();
    assert_eq!(captured["data"]["capture"]["transaction_id"], "cap-1");
    assert_eq!(captured["data"]["capture"]["from_hold"].to_string(), "3");
    assert_eq!(captured["data"]["held"].to_string(), "7");
    app.post("/webhooks/test/hold.captured", json!({})).await.expect(202);
    app.assert_ledger_agrees().await;
}

/// Runs `sql` on the database behind Tally's back and returns what `ledger verify` (reading
/// one row at a time) finds.
async fn tamper_and_verify(app: &TestApp, sql: &str) -> tally_store::ops::ledger::VerifyReport {
    let (store, sql) = (app.store.clone(), sql.to_owned());
    tokio::task::spawn_blocking(move || {
        let changed = store.write(|conn: &mut dyn tally_store::Conn| conn.execute(&sql, &[])).unwrap();
        assert_eq!(changed, 1, "the edit changes one row");
        let (report, fast) = store
            .read(|conn| {
                Ok::<_, tally_store::StoreError>((
                    tally_store::ops::ledger::verify_in_chunks(conn, 1)?,
                    tally_store::ops::ledger::verify_by_fingerprints(conn)?,
                ))
            })
            .unwrap();
        // The fingerprints agree exactly when the books are clean.
        assert_eq!(fast.as_ref(), report.is_clean().then_some(&report), "after {sql}");
        report
    })
    .await
    .unwrap()
}

/// `ledger verify` derives `pending_out` from the ledger and checks it against the account
/// and against the open holds, and each hold's amounts against its entries.
async fn ledger_verify_checks_holds(app: TestApp) {
    let customer = app.customer("Audited").await;
    app.fund(&customer, "USD", "100", "fund-1").await;
    hold(&app, &customer, r#"{"transaction_id":"a","asset":"USD","amount":30}"#).await.expect(201);
    hold(&app, &customer, r#"{"transaction_id":"b","asset":"USD","amount":20}"#).await.expect(201);
    capture(&app, &customer, "a", r#"{"amount":10}"#).await.expect(201);
    release(&app, &customer, "b").await.expect(200);
    let clean = tamper_and_verify(&app, "UPDATE holds SET description = 'x' WHERE id = 'a'").await;
    assert!(clean.is_clean(), "{:#?}", clean.problems);
    assert_eq!(clean.holds, 2);
    assert_eq!(
        clean.system_balances.get(&("test".into(), "USD".into(), "held".into())).map(|held| held.to_string()),
        Some("20".into())
    );

    let report = tamper_and_verify(&app, "UPDATE wallet_accounts SET pending_out = '25'").await;
    let problems = report.problems.join("\n");
    assert!(problems.contains("pending_out is 25 but the ledger says 20"), "{problems}");
    assert!(problems.contains("pending_out is 25 but its open holds hold 20"), "{problems}");
    tamper_and_verify(&app, "UPDATE wallet_accounts SET pending_out = '20'").await;
    let report = tamper_and_verify(&app, "UPDATE holds SET captured = '11' WHERE id = 'a'").await;
    let problems = report.problems.join("\n");
    assert!(
        problems.contains("hold a of") && problems.contains("captured 11 but its ledger entries say 10"),
        "{problems}"
    );
}

on_both_backends!(
    a_hold_moves_available_to_pending_out,
    a_hold_available_cannot_cover_is_refused_unless_overdraft_is_allowed,
    holds_are_idempotent_by_transaction_id,
    partial_captures_then_release_return_exactly_the_rest,
    a_capture_beyond_the_hold_debits_the_difference_and_says_so,
    the_worker_releases_holds_at_their_expiry,
    grant_expiry_under_an_open_hold_counts_nothing_twice,
    usage_events_naming_a_hold_capture_from_it,
    concurrent_captures_never_capture_more_than_held,
    holds_are_listed_by_status_and_read_one_by_one,
    hold_webhooks_are_recorded,
    ledger_verify_checks_holds,
);
