//! Every error class answers problem+json and stores nothing.

use crate::harness::TestApp;
use crate::on_both_backends;
use reqwest::Method;
use serde_json::json;

async fn malformed_json_is_400(app: TestApp) {
    for text in ["{", "not json", "{\"name\": }", ""] {
        let reply = app.raw(Method::POST, "/customers", text).await.expect(400);
        assert_eq!(reply.content_type(), "application/problem+json");
        assert_eq!(reply.body["status"], 400);
        assert!(reply.body["title"].is_string() && reply.body["type"].is_string() && reply.body["detail"].is_string());
    }
    assert_eq!(app.get("/customers").await.body["total_count"], 0);
}

async fn wrong_types_are_422_with_the_field_path(app: TestApp) {
    let reply = app.raw(Method::POST, "/assets", r#"{"code": 5, "name": "x"}"#).await.expect(422);
    assert!(reply.body["errors"]["code"].is_array(), "{}", reply.body);
    let nested = app
        .raw(Method::POST, "/assets", r#"{"code": "AB", "name": "x", "rates": [{"source": "USD", "rate": "abc"}]}"#)
        .await
        .expect(422);
    assert!(nested.body["errors"]["rates[0].rate"].is_array(), "{}", nested.body);
    let array = app.raw(Method::POST, "/customers", "[1,2]").await.expect(422);
    assert!(array.body["errors"].is_object());
}

async fn not_found_and_bodies_too_large(app: TestApp) {
    let unknown = app.get("/nothing-here").await.expect(404);
    assert_eq!(unknown.content_type(), "application/problem+json");
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(1_100_000));
    let reply = app.raw(Method::POST, "/customers", &huge).await;
    assert_eq!(reply.status, 413, "{}", reply.text);
    assert_eq!(app.get("/customers").await.body["total_count"], 0);
}

async fn amounts_have_documented_limits(app: TestApp) {
    let customer = app.customer("Limits").await;
    let path = format!("/customers/{customer}/wallet/adjustments");
    let too_big = app
        .raw(Method::POST, &path, r#"{"transaction_id":"a","asset":"USD","amount":1000000000000000,"reason":"gift"}"#)
        .await
        .expect(422);
    assert!(too_big.body["errors"]["amount"].is_array());
    let too_precise = app
        .raw(Method::POST, &path, r#"{"transaction_id":"b","asset":"USD","amount":0.0000000000001,"reason":"gift"}"#)
        .await
        .expect(422);
    assert!(too_precise.body["errors"]["amount"].is_array());
    let absurd =
        app.raw(Method::POST, &path, r#"{"transaction_id":"c","asset":"USD","amount":1e400,"reason":"gift"}"#).await;
    assert_eq!(absurd.status, 422, "{}", absurd.text);
    let zero = app
        .post(&path, json!({"transaction_id": "d", "asset": "USD", "amount": 0, "reason": "gift"}))
        .await
        .expect(422);
    assert!(zero.body["errors"]["amount"].is_array());
    assert_eq!(app.get(&format!("/customers/{customer}/wallet")).await.body["accounts"], json!([]));
}

/// Amounts are JSON numbers taken exactly: one that would need rounding to fit, or text that is
/// not a plain number, is a 422 naming the field, and nothing is stored.
async fn amounts_parse_exactly_or_not_at_all(app: TestApp) {
    let customer = app.customer("Exact").await;
    let path = format!("/customers/{customer}/wallet/adjustments");
    let adjust = |id: &str, amount: &str| {
        format!(r#"{{"transaction_id":"{id}","asset":"USD","amount":{amount},"reason":"gift"}}"#)
    };
    for (id, amount) in [
        ("rounded", "5.00000000000000000000000000001"),
        ("separated", r#""1_000""#),
        ("plus", r#""+5""#),
        ("spaced", r#"" 5""#),
        ("hex", r#""0x10""#),
    ] {
        let reply = app.raw(Method::POST, &path, &adjust(id, amount)).await;
        assert_eq!(reply.status, 422, "{amount}: {}", reply.text);
        assert!(reply.body["errors"]["amount"].is_array(), "{amount}: {}", reply.body);
    }
    assert_eq!(app.get(&format!("/customers/{customer}/wallet")).await.body["accounts"], json!([]));
    // Exact numbers, in any JSON spelling, are taken as they are.
    app.raw(Method::POST, &path, &adjust("exponent", "1.25e1")).await.expect(201);
    app.raw(Method::POST, &path, &adjust("digits", "0.000000000001")).await.expect(201);
    assert_eq!(app.balances(&customer, "default:USD").await.0, "12.500000000001");
}

/// A request body in a content coding Tally does not decode, or a query string that does not
/// decode to text, is a 400 problem+json.
async fn undecodable_bodies_and_query_strings_are_400(app: TestApp) {
    let send = |coding: &'static str, body: Vec<u8>| {
        app.client
            .post(format!("{}/customers", app.base))
            .header("X-CREDYT-API-KEY", &app.test_key)
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(body)
            .send()
    };
    for (coding, body) in [("bogus", br#"{"name":"Ada"}"#.to_vec()), ("gzip", br#"{"name":"Ada"}"#.to_vec())] {
        let reply = send(coding, body).await.unwrap();
        assert_eq!(reply.status(), 400, "Content-Encoding: {coding}");
        assert_eq!(reply.headers()["content-type"], "application/problem+json");
        let problem: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(problem["status"], 400);
    }
    assert_eq!(app.get("/customers").await.body["total_count"], 0, "nothing was stored");
    for query in ["limit=%zz", "email=%ff", "external_id=caf%C3", "%C3%28=1"] {
        let reply = app.get(&format!("/customers?{query}")).await;
        assert_eq!(reply.status, 400, "?{query}: {}", reply.text);
        assert_eq!(reply.content_type(), "application/problem+json");
    }
    // Well-formed escapes still decode.
    app.get("/customers?external_id=caf%C3%A9+au+lait&limit=%31%30").await.expect(200);
}

/// A webhook destination is an absolute http(s) URL, written in full and without control
/// characters; anything the URL parser would have to repair is refused.
async fn webhook_urls_must_be_absolute_http_urls(app: TestApp) {
    for url in [
        "http:example.com/hooks",
        "https:/example.com/hooks",
        "https://exa\tmple.com/hooks",
        "https://example.com/a\nb",
        "ftp://example.com/hooks",
        "https://",
        "/hooks",
    ] {
        let reply = app.post("/webhooks", json!({ "url": url })).await;
        assert_eq!(reply.status, 422, "{url:?}: {}", reply.text);
        assert!(reply.body["errors"]["url"].is_array(), "{url:?}: {}", reply.body);
    }
    assert_eq!(app.get("/webhooks").await.body["total_count"], 0);
    app.post("/webhooks", json!({ "url": "https://platform.example/hooks?source=tally" })).await.expect(201);
}

const BIG_FEES: &str = r#"{
  "name": "Big fees", "code": "big_fees", "publish": true,
  "prices": [
    { "name": "Tokens", "type": "usage_based", "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "tokens", "usage_type": "volume", "volume_field": "tokens" },
      "pricing": [ { "asset": "USD", "values": [ { "volume_rate": 100000000000000 } ] } ] },
    { "name": "Calls", "type": "usage_based", "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "call", "usage_type": "unit" },
      "pricing": [ { "asset": "USD", "values": [ { "unit_price": 600000000000000 } ] } ] }
  ]
}"#;

fn usage(customer: &str, id: &str, event_type: &str, data: serde_json::Value) -> serde_json::Value {
    json!({
        "customer_id": customer,
        "events": [{ "id": id, "event_type": event_type, "occurred_at": chrono::Utc::now().to_rfc3339(), "data": data }],
    })
}

/// No fee is larger than an amount may be, and no fee takes a debt past the balance limit:
/// either is a 422 naming the event, never an overflow, and the event is not stored.
async fn fees_past_the_limits_are_refused(app: TestApp) {
    app.post("/products", crate::harness::body(BIG_FEES)).await.expect(201);
    let customer = app
        .post("/customers", json!({"name": "Heavy user", "subscriptions": [{"products": [{"code": "big_fees"}]}]}))
        .await
        .expect(201)
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // 10^14 tokens at 10^14 each: 10^28, far past the limit on an amount.
    let huge =
        app.post("/events", usage(&customer, "tokens-1", "tokens", json!({"tokens": 100000000000000_i64}))).await;
    assert_eq!(huge.status, 422, "{}", huge.text);
    assert!(huge.body["errors"]["events[0]"].is_array(), "{}", huge.body);
    app.get("/events/tokens-1").await.expect(404);
    // Fees under the limit are charged until the debt would reach it.
    app.post("/events", usage(&customer, "call-1", "call", json!({}))).await.expect(204);
    assert_eq!(app.balances(&customer, "default:USD").await.0, "-600000000000000");
    let past = app.post("/events", usage(&customer, "call-2", "call", json!({}))).await;
    assert_eq!(past.status, 422, "{}", past.text);
    assert!(past.body["errors"]["events[0]"].is_array(), "{}", past.body);
    app.get("/events/call-2").await.expect(404);
    assert_eq!(app.balances(&customer, "default:USD").await.0, "-600000000000000");
    app.assert_ledger_agrees().await;
}

/// What an account holds (available plus pending_in) and what it owes stay below 10^15:
/// adjustments, charges and top-ups that would pass either are a 422 naming the amount.
async fn balances_have_a_limit(app: TestApp) {
    let rich = app.customer("Rich").await;
    let adjustments = format!("/customers/{rich}/wallet/adjustments");
    let gift =
        |id: &str| json!({"transaction_id": id, "asset": "USD", "amount": 600000000000000_i64, "reason": "gift"});
    app.post(&adjustments, gift("gift-1")).await.expect(201);
    let second = app.post(&adjustments, gift("gift-2")).await.expect(422);
    assert!(second.body["errors"]["amount"].is_array(), "{}", second.body);
    let top_up = json!({
        "customer_id": rich, "amount": 500000000000000_i64, "currency": "USD", "destination": {"asset": "USD"},
        "return_url": "https://platform.example/ok", "failure_url": "https://platform.example/failed",
    });
    let refused = app.post("/top-ups", top_up).await.expect(422);
    assert!(refused.body["errors"]["amount"].is_array(), "{}", refused.body);
    assert_eq!(app.balances(&rich, "default:USD").await, ("600000000000000".into(), "0".into(), "0".into()));

    let spender = app.customer("Spender").await;
    let charges = format!("/customers/{spender}/wallet/charges");
    let charge = |id: &str| json!({"transaction_id": id, "asset": "USD", "amount": 600000000000000_i64});
    app.post(&charges, charge("charge-1")).await.expect(201);
    let deeper = app.post(&charges, charge("charge-2")).await.expect(422);
    assert!(deeper.body["errors"]["amount"].is_array(), "{}", deeper.body);
    assert_eq!(app.balances(&spender, "default:USD").await.0, "-600000000000000");
    app.assert_ledger_agrees().await;
}

/// A path asked with a method it does not take is a 405 problem+json, with the methods it
/// takes in `Allow`, on the API and on the probes alike; and it changes nothing.
async fn a_method_a_path_does_not_take_is_405(app: TestApp) {
    for (method, path, allowed) in [
        (Method::DELETE, "/customers", "GET,HEAD,POST"),
        (Method::PUT, "/customers/cus_nope", "GET,HEAD,PATCH"),
        (Method::POST, "/openapi.json", "GET,HEAD"),
        (Method::POST, "/health", "GET,HEAD"),
        (Method::DELETE, "/docs", "GET,HEAD"),
    ] {
        let reply = app.raw(method.clone(), path, r#"{"name": "Ada"}"#).await;
        assert_eq!(reply.status, 405, "{method} {path}: {}", reply.text);
        assert_eq!(reply.content_type(), "application/problem+json", "{method} {path}");
        assert_eq!(reply.body["status"], 405);
        assert_eq!(reply.body["type"], "/docs/errors#method-not-allowed");
        let mut methods: Vec<&str> = reply.headers["allow"].to_str().unwrap().split(',').map(str::trim).collect();
        methods.sort_unstable();
        assert_eq!(methods.join(","), allowed, "{method} {path}");
    }
    assert_eq!(app.get("/customers").await.body["total_count"], 0);
}

/// Every problem `type` is a link that answers: the errors page, with an anchor for each kind,
/// and the errors Tally answers point to it.
async fn problem_types_are_links_that_resolve(app: TestApp) {
    let mut seen = Vec::new();
    for kind in tally_http::error::PROBLEM_KINDS {
        let type_uri = kind.type_uri();
        let (page, anchor) = type_uri.split_once('#').unwrap();
        let reply = app.client.get(format!("{}{page}", app.base)).send().await.unwrap();
        assert_eq!(reply.status(), 200, "{type_uri}");
        assert!(reply.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let html = reply.text().await.unwrap();
        assert!(html.contains(&format!("id=\"{anchor}\"")), "{type_uri} has no anchor on {page}");
        assert!(html.contains(&kind.status.as_u16().to_string()), "{type_uri}");
        seen.push(type_uri);
    }
    for (path, status) in [("/nothing-here", 404), ("/customers?limit=0", 422), ("/customers?limit=%zz", 400)] {
        let reply = app.get(path).await.expect(status);
        let type_uri = reply.body["type"].as_str().unwrap().to_owned();
        assert!(seen.contains(&type_uri), "{path}: {type_uri}");
    }
    let unauthorized = app.call(Method::GET, "/customers", None, None).await.expect(401);
    assert_eq!(unauthorized.body["type"], "/docs/errors#unauthorized");
}

on_both_backends!(
    a_method_a_path_does_not_take_is_405,
    problem_types_are_links_that_resolve,
    malformed_json_is_400,
    wrong_types_are_422_with_the_field_path,
    not_found_and_bodies_too_large,
    amounts_have_documented_limits,
    amounts_parse_exactly_or_not_at_all,
    undecodable_bodies_and_query_strings_are_400,
    webhook_urls_must_be_absolute_http_urls,
    fees_past_the_limits_are_refused,
    balances_have_a_limit
);
