//! Top-ups through the test provider: lifecycle, idempotent crediting, expiry, rate override,
//! credit expiry on late payment, idempotency keys, client URLs, and the payment links of
//! subscriptions waiting for a payment.

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use reqwest::Method;
use serde_json::json;

async fn setup(app: &TestApp) -> String {
    app.post("/assets", body(r#"{"code":"IMG","name":"Images","precision":2,"rates":[{"source":"USD","rate":0.15}]}"#))
        .await
        .expect(201);
    app.customer("Buyer").await
}

fn top_up(customer: &str, amount: &str) -> serde_json::Value {
    body(&format!(
        r#"{{"customer_id":"{customer}","amount":{amount},"currency":"USD","destination":{{"asset":"IMG"}},
            "return_url":"https://platform.example/ok","failure_url":"https://platform.example/failed","description":"Image credits"}}"#
    ))
}

/// Follows the checkout link and pays with `card`; returns the status and where it redirected.
async fn pay(redirect_url: &str, card: &str) -> (u16, Option<String>, String) {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = client.get(redirect_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let _ = page.text().await.unwrap();
    let (path, query) = redirect_url.split_once('?').unwrap();
    let token = query.trim_start_matches("token=");
    let response = client.post(path).form(&[("token", token), ("card_number", card)]).send().await.unwrap();
    let status = response.status().as_u16();
    let location = response.headers().get("location").map(|value| value.to_str().unwrap().to_owned());
    (status, location, response.text().await.unwrap())
}

/// Presses the checkout's "Cancel and go back": the top-up ends, the customer goes to its
/// `failure_url`.
async fn cancel(redirect_url: &str) {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let (path, query) = redirect_url.split_once('?').unwrap();
    let token = query.trim_start_matches("token=");
    let response = client.post(format!("{path}/cancel")).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 303);
}

async fn top_up_lifecycle_with_the_succeeding_card(app: TestApp) {
    let customer = setup(&app).await;
    let created = app.post("/top-ups", top_up(&customer, "10")).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("top_"));
    assert_eq!(created.body["status"], "initiated");
    assert!(created.body["expires_at"].is_string() && created.body["created_at"].is_string());
    let redirect_url = created.body["redirect_url"].as_str().unwrap().to_owned();
    assert!(redirect_url.starts_with(&format!("{}/checkout/{id}?token=", app.base)), "{redirect_url}");

    // While open, the asset amount (10 / 0.15 = 66.66, rounded down) waits in pending_in.
    assert_eq!(app.balances(&customer, "default:IMG").await, ("0".into(), "66.66".into(), "0".into()));
    let view = app.get(&format!("/top-ups/{id}")).await.expect(200);
    assert_eq!(view.body["asset_amount"].to_string(), "66.66");
    assert_eq!(view.body["destination"]["asset"], "IMG");
    assert_eq!(view.body["amount"].to_string(), "10");

    let opened = reqwest::get(&redirect_url).await.unwrap().text().await.unwrap();
    assert!(opened.contains("Card number") && opened.contains("66.66"), "{opened}");
    assert_eq!(app.get(&format!("/top-ups/{id}")).await.body["status"], "pending", "opening the checkout moves it on");
    let (status, location, _) = pay(&redirect_url, "4242 4242 4242 4242").await;
    assert_eq!((status, location.as_deref()), (303, Some("https://platform.example/ok")));
    assert_eq!(app.get(&format!("/top-ups/{id}")).await.body["status"], "succeeded");
    assert_eq!(app.balances(&customer, "default:IMG").await, ("66.66".into(), "0".into(), "0".into()));
    let grants = app.get(&format!("/customers/{customer}/wallet/default:IMG/grants")).await.expect(200);
    assert_eq!(grants.body["items"][0]["purpose"], "paid");
    assert!(grants.body["items"][0]["expires_at"].is_string(), "paid credit expires after a year");

    // Credited once, whatever the number of notifications.
    app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(200);
    let (status, _, _) = pay(&redirect_url, "4242424242424242").await;
    assert_eq!(status, 200, "a finished checkout shows its outcome");
    assert_eq!(app.balances(&customer, "default:IMG").await.0, "66.66");
    app.post(&format!("/test-helpers/top-ups/{id}/fail"), json!({})).await.expect(409);
    let history = app.get(&format!("/customers/{customer}/wallet/default:IMG/transactions")).await.expect(200);
    assert_eq!(history.body["total_count"], 1);
    assert_eq!(history.body["items"][0]["type"], "top_up");
    app.assert_ledger_agrees().await;
}

async fn declined_card_leaves_the_top_up_open_until_cancelled(app: TestApp) {
    let customer = setup(&app).await;
    let created = app.post("/top-ups", top_up(&customer, "3")).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let (status, _, html) = pay(created.body["redirect_url"].as_str().unwrap(), "4000 0000 0000 0002").await;
    assert_eq!(status, 402);
    assert!(html.contains("Your card was declined."), "{html}");
    // The customer may try another card on the same page; here they give up instead.
    assert_eq!(app.get(&format!("/top-ups/{id}")).await.expect(200).body["status"], "pending");
    cancel(created.body["redirect_url"].as_str().unwrap()).await;
    let view = app.get(&format!("/top-ups/{id}")).await.expect(200);
    assert_eq!(view.body["status"], "expired");
    assert_eq!(view.body["failure_reason"], "cancelled by the customer");
    assert_eq!(app.balances(&customer, "default:IMG").await, ("0".into(), "0".into(), "0".into()));
    // The checkout of a failed top-up takes no payment.
    let (status, _, _) = pay(created.body["redirect_url"].as_str().unwrap(), "4242424242424242").await;
    assert_eq!(status, 200, "a finished checkout shows its outcome");
    assert_eq!(app.balances(&customer, "default:IMG").await, ("0".into(), "0".into(), "0".into()));
    // Money the provider reports received after all is credited, once.
    let late = app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(200);
    assert_eq!(late.body["status"], "succeeded");
    assert!(late.body.get("failure_reason").is_none(), "{}", late.body);
    app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(200);
    assert_eq!(app.balances(&customer, "default:IMG").await, ("20".into(), "0".into(), "0".into()));
    // A forged token shows nothing.
    let forged = reqwest::get(format!("{}/checkout/{id}?token=forged", app.base)).await.unwrap();
    assert_eq!(forged.status(), 404);
    app.assert_ledger_agrees().await;
}

async fn test_helpers_override_and_rounding(app: TestApp) {
    let customer = setup(&app).await;
    let mut overridden = top_up(&customer, "10");
    overridden["destination"]["exchange_rate"] = json!(0.04);
    let created = app.post("/top-ups", overridden).await.expect(201);
    let id = created.body["id"].as_str().unwrap();
    let succeeded = app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(200);
    assert_eq!(succeeded.body["status"], "succeeded");
    assert_eq!(succeeded.body["asset_amount"].to_string(), "250");
    // A fiat top-up of the same currency is one to one.
    let fiat = body(&format!(
        r#"{{"customer_id":"{customer}","amount":12.34,"currency":"USD","return_url":"https://a.example","failure_url":"https://b.example"}}"#
    ));
    let created = app.post("/top-ups", fiat).await.expect(201);
    let id = created.body["id"].as_str().unwrap();
    app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(200);
    assert_eq!(app.balances(&customer, "default:USD").await.0, "12.34");
    let failed = app.post("/top-ups", top_up(&customer, "1")).await.expect(201);
    let id = failed.body["id"].as_str().unwrap();
    app.post(&format!("/test-helpers/top-ups/{id}/fail"), json!({})).await.expect(200);
    assert_eq!(app.balances(&customer, "default:IMG").await, ("250".into(), "0".into(), "0".into()));
    // Test helpers and the test provider exist only in test mode.
    let live = Some(app.live_key.as_str());
    app.call(Method::POST, &format!("/test-helpers/top-ups/{id}/succeed"), live, Some(&json!({}))).await.expect(404);
    app.call(Method::GET, &format!("/top-ups/{id}"), live, None).await.expect(404);
    app.assert_ledger_agrees().await;
}

async fn top_up_validation(app: TestApp) {
    let customer = setup(&app).await;
    let too_precise = app.post("/top-ups", top_up(&customer, "10.005")).await.expect(422);
    assert!(too_precise.body["errors"]["amount"].is_array());
    let mut wrong_fiat = top_up(&customer, "10");
    wrong_fiat["destination"]["asset"] = json!("EUR");
    app.post("/top-ups", wrong_fiat).await.expect(422);
    app.post("/top-ups", top_up("cust_nobody", "10")).await.expect(422);
    let mut bad_urls = top_up(&customer, "10");
    bad_urls["return_url"] = json!("javascript:alert(1)");
    let refused = app.post("/top-ups", bad_urls).await.expect(422);
    assert!(refused.body["errors"]["return_url"].is_array());
    app.post("/assets", body(r#"{"code":"GPU","name":"GPU hours","precision":0,"rates":[{"source":"USD","rate":2}]}"#))
        .await
        .expect(201);
    let mut tiny = top_up(&customer, "1.99");
    tiny["destination"]["asset"] = json!("GPU");
    let tiny = app.post("/top-ups", tiny).await.expect(422);
    assert!(tiny.body["errors"]["amount"].is_array(), "1.99 USD buys no whole GPU hour at 2: {}", tiny.body);
    app.get("/top-ups/top_missing").await.expect(404);
    // Live mode has no provider until one is configured: a clear 503, nothing stored.
    let live_customer =
        app.call(Method::POST, "/customers", Some(&app.live_key), Some(&json!({"name": "Live"}))).await.expect(201);
    let live_id = live_customer.body["id"].as_str().unwrap();
    let live_request = body(&format!(
        r#"{{"customer_id":"{live_id}","amount":5,"currency":"USD","return_url":"https://a.example","failure_url":"https://b.example"}}"#
    ));
    let unavailable = app.call(Method::POST, "/top-ups", Some(&app.live_key), Some(&live_request)).await.expect(503);
    assert_eq!(unavailable.content_type(), "application/problem+json");
    let wallet = app.get(&format!("/customers/{customer}/wallet")).await.expect(200);
    assert_eq!(wallet.body["accounts"], json!([]), "refused top-ups store nothing, not even an account");
}

/// The status of a top-up, as text.
async fn status_of(app: &TestApp, id: &str) -> String {
    app.get(&format!("/top-ups/{id}")).await.expect(200).body["status"].as_str().unwrap().to_owned()
}

async fn unpaid_top_ups_expire(app: TestApp) {
    let customer = setup(&app).await;
    let created = app.post("/top-ups", top_up(&customer, "10")).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let redirect_url = created.body["redirect_url"].as_str().unwrap().to_owned();
    // The payment window is 24 hours: past it, the worker expires the top-up.
    app.clock.advance(chrono::Duration::hours(25));
    app.eventually("the worker expires the top-up", || async { status_of(&app, &id).await == "expired" }).await;
    let view = app.get(&format!("/top-ups/{id}")).await.expect(200);
    assert!(view.body["failure_reason"].as_str().unwrap().contains("payment window"));
    assert_eq!(app.balances(&customer, "default:IMG").await, ("0".into(), "0".into(), "0".into()));
    let (status, _, _) = pay(&redirect_url, "4242424242424242").await;
    assert_eq!(status, 200, "an expired checkout takes no payment");
    assert_eq!(app.balances(&customer, "default:IMG").await.0, "0");

    // A success the provider reports after the expiry is money received: credited, once.
    let late = app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(200);
    assert_eq!(late.body["status"], "succeeded");
    app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(200);
    assert_eq!(app.balances(&customer, "default:IMG").await, ("66.66".into(), "0".into(), "0".into()));
    let history = app.get(&format!("/customers/{customer}/wallet/default:IMG/transactions")).await.expect(200);
    assert_eq!(history.body["total_count"], 1);
    app.post(&format!("/test-helpers/top-ups/{id}/fail"), json!({})).await.expect(409);

    // A checkout opened after its window closed (before the worker got to it) takes no payment.
    let created = app.post("/top-ups", top_up(&customer, "1")).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let redirect_url = created.body["redirect_url"].as_str().unwrap().to_owned();
    app.clock.advance(chrono::Duration::hours(25));
    let page = reqwest::get(&redirect_url).await.unwrap().text().await.unwrap();
    assert!(page.contains("Top-up expired"), "{page}");
    assert_eq!(status_of(&app, &id).await, "expired");
    app.assert_ledger_agrees().await;
}

/// Paid credit never arrives expired: a `credit_expires_at` that has passed by the time the
/// payment succeeds gives way to the default lifetime of paid credit (one year), and the
/// top-up says so.
async fn paid_credit_never_arrives_already_expired(app: TestApp) {
    let customer = setup(&app).await;
    let asked = app.clock.now() + chrono::Duration::hours(1);
    let mut request = top_up(&customer, "10");
    request["credit_expires_at"] = json!(asked.to_rfc3339());
    let created = app.post("/top-ups", request.clone()).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let kept = app.post("/top-ups", request).await.expect(201);
    let kept_id = kept.body["id"].as_str().unwrap().to_owned();
    app.post(&format!("/test-helpers/top-ups/{kept_id}/succeed"), json!({})).await.expect(200);
    let kept = app.get(&format!("/top-ups/{kept_id}")).await.expect(200);
    assert_eq!(kept.body["granted_credit_expires_at"], kept.body["credit_expires_at"], "{}", kept.body);
    assert!(kept.body.get("credit_expiry_note").is_none());

    // The payment comes two hours later, after the asked expiry.
    app.clock.advance(chrono::Duration::hours(2));
    let paid_at = app.clock.now();
    let paid = app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(200);
    assert_eq!(paid.body["status"], "succeeded");
    let granted: chrono::DateTime<chrono::Utc> =
        paid.body["granted_credit_expires_at"].as_str().expect("the credit's expiry is shown").parse().unwrap();
    let year = paid_at.checked_add_months(chrono::Months::new(12)).unwrap();
    assert!((granted - year).num_seconds().abs() < 60, "one year after the payment: {granted} vs {year}");
    assert!(paid.body["credit_expiry_note"].as_str().unwrap().contains("default lifetime"), "{}", paid.body);
    // The credit paid in time expired at its asked instant; the late one stays.
    assert_eq!(app.balances(&customer, "default:IMG").await, ("66.66".into(), "0".into(), "0".into()));
    app.assert_ledger_agrees().await;
}

/// POST /top-ups with a key and the raw response.
async fn post_top_up_with_key(app: &TestApp, key: &str, request: &serde_json::Value) -> (u16, serde_json::Value) {
    let response = app
        .client
        .post(format!("{}/top-ups", app.base))
        .bearer_auth(&app.test_key)
        .header("Idempotency-Key", key)
        .json(request)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

async fn idempotency_keys_make_retries_safe(app: TestApp) {
    let customer = setup(&app).await;
    let request = top_up(&customer, "10");
    let (status, first) = post_top_up_with_key(&app, "order-1234", &request).await;
    assert_eq!(status, 201, "{first}");
    // The checkout is opened and paid between the two tries: the retry still gets the first answer.
    let redirect_url = first["redirect_url"].as_str().unwrap();
    reqwest::get(redirect_url).await.unwrap();
    let (status, again) = post_top_up_with_key(&app, "order-1234", &request).await;
    assert_eq!(status, 201);
    assert_eq!(again, first, "a retry returns the first answer");
    assert_eq!(app.balances(&customer, "default:IMG").await, ("0".into(), "66.66".into(), "0".into()), "one top-up");
    // Two retries at once make nothing more either.
    let (one, two) = tokio::join!(
        post_top_up_with_key(&app, "order-1234", &request),
        post_top_up_with_key(&app, "order-1234", &request)
    );
    assert_eq!((one.0, two.0), (201, 201));
    assert_eq!((&one.1["id"], &two.1["id"]), (&first["id"], &first["id"]));

    // The same key with another request is refused, and changes nothing.
    let (status, refused) = post_top_up_with_key(&app, "order-1234", &top_up(&customer, "11")).await;
    assert_eq!(status, 409, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("Idempotency-Key"), "{refused}");
    assert_eq!(app.balances(&customer, "default:IMG").await.1, "66.66");
    // Another key is another top-up; so is a request without one.
    let (status, other) = post_top_up_with_key(&app, "order-1235", &request).await;
    assert_eq!(status, 201);
    assert_ne!(other["id"], first["id"]);
    app.post("/top-ups", request.clone()).await.expect(201);
    assert_eq!(app.balances(&customer, "default:IMG").await.1, "199.98");
    // A key that is not printable ASCII is refused.
    let (status, bad) = post_top_up_with_key(&app, "two words", &request).await;
    assert_eq!(status, 422, "{bad}");
    assert!(bad["errors"]["Idempotency-Key"].is_array(), "{bad}");
    assert_eq!(app.balances(&customer, "default:IMG").await.1, "199.98");
    app.assert_ledger_agrees().await;
}

async fn client_urls_must_be_absolute_http_urls(app: TestApp) {
    let customer = setup(&app).await;
    let refused = [
        ("return_url", "https://platform.example/ok\u{7f}"),
        ("return_url", "https://platform.example/o k"),
        ("failure_url", "https://platform.example/\u{1}"),
        ("failure_url", "ftp://platform.example/failed"),
        ("return_url", "https://"),
        ("return_url", "/relative/path"),
        ("failure_url", "javascript:alert(1)"),
    ];
    for (field, url) in refused {
        let mut request = top_up(&customer, "10");
        request[field] = json!(url);
        let reply = app.post("/top-ups", request).await.expect(422);
        assert_eq!(reply.content_type(), "application/problem+json");
        assert!(reply.body["errors"][field].is_array(), "{field} {url:?}: {}", reply.body);
    }
    let wallet = app.get(&format!("/customers/{customer}/wallet")).await.expect(200);
    assert_eq!(wallet.body["accounts"], json!([]), "refused top-ups store nothing");
    // The same rule for the URLs of a subscription's payment.
    app.post("/products", body(PRO_PLAN)).await.expect(201);
    let request = json!({"products": [{"code": "pro"}], "return_url": "https://platform.example/\u{7f}",
                         "failure_url": "https://platform.example/sorry"});
    let reply = app.post(&format!("/customers/{customer}/subscriptions"), request).await.expect(422);
    assert!(reply.body["errors"]["return_url"].is_array(), "{}", reply.body);
    assert_eq!(app.get(&format!("/customers/{customer}")).await.body["subscriptions"], json!([]));
    // A valid URL with unusual characters is kept in a form that is safe to redirect to.
    let mut request = top_up(&customer, "10");
    request["return_url"] = json!("https://platform.example/caf\u{e9}?q=<1>");
    let created = app.post("/top-ups", request).await.expect(201);
    let (status, location, _) = pay(created.body["redirect_url"].as_str().unwrap(), "4242424242424242").await;
    assert_eq!((status, location.as_deref()), (303, Some("https://platform.example/caf%C3%A9?q=%3C1%3E")));
    assert_eq!(app.balances(&customer, "default:IMG").await.0, "66.66");
}

const PRO_PLAN: &str = r#"{
  "name": "Pro plan", "code": "pro", "publish": true,
  "prices": [{
    "name": "Pro monthly", "type": "fixed",
    "billing_model": { "type": "recurring", "recurring": { "interval": "month" } },
    "collection": { "type": "balance", "timing": "in_advance" },
    "pricing": [ { "asset": "USD", "values": [ { "unit_price": 9.99 } ] } ]
  }]
}"#;

async fn a_fee_that_must_be_paid_first_waits_for_payment(app: TestApp) {
    app.post("/products", body(PRO_PLAN)).await.expect(201);
    let customer = app.customer("Pro").await;
    // Without URLs of its own, the payer comes back to Tally's "payment complete" page.
    let bare = app.customer("Pro without URLs").await;
    let waiting = app.post(&format!("/customers/{bare}/subscriptions"), json!({"products": [{"code": "pro"}]})).await;
    let waiting = waiting.expect(201);
    assert_eq!(waiting.body["status"], "action_required", "{}", waiting.body);
    let link = waiting.body["required_actions"][0]["redirect_url"].as_str().unwrap().to_owned();
    let (status, location, _) = pay(&link, "4242424242424242").await;
    assert_eq!((status, location.as_deref()), (303, Some(format!("{}/checkout/complete", app.base).as_str())));
    let landing = reqwest::get(format!("{}/checkout/complete", app.base)).await.unwrap();
    assert_eq!(landing.status(), 200);

    let request = json!({"products": [{"code": "pro"}], "return_url": "https://platform.example/welcome", "failure_url": "https://platform.example/sorry"});
    let waiting = app.post(&format!("/customers/{customer}/subscriptions"), request.clone()).await.expect(201);
    assert_eq!(waiting.body["status"], "action_required", "{}", waiting.body);
    let action = &waiting.body["required_actions"][0];
    assert_eq!(action["type"], "payment");
    let redirect_url = action["redirect_url"].as_str().unwrap().to_owned();
    assert_eq!(app.balances(&customer, "default:USD").await, ("0".into(), "9.99".into(), "0".into()));

    let (status, location, _) = pay(&redirect_url, "4242424242424242").await;
    assert_eq!((status, location.as_deref()), (303, Some("https://platform.example/welcome")));
    // The worker starts the subscription and collects the fee the payment covered.
    app.eventually("the paid subscription starts", || async {
        app.get(&format!("/customers/{customer}")).await.body["subscriptions"][0]["status"] == "active"
    })
    .await;
    assert_eq!(app.balances(&customer, "default:USD").await, ("0".into(), "0".into(), "0".into()));

    // With the fee already covered, the next subscription starts at once.
    let rich = app.customer("Rich").await;
    app.fund(&rich, "USD", "20", "fund").await;
    let started = app.post(&format!("/customers/{rich}/subscriptions"), request).await.expect(201);
    assert_eq!(started.body["status"], "active");
    assert_eq!(started.body["required_actions"], json!([]));
    assert_eq!(app.balances(&rich, "default:USD").await.0, "10.01");
    app.assert_ledger_agrees().await;
}

/// The payment link a waiting subscription shows, and the id of the top-up behind it.
async fn payment_link(app: &TestApp, customer: &str) -> String {
    let shown = app.get(&format!("/customers/{customer}")).await.expect(200);
    let subscription = &shown.body["subscriptions"][0];
    assert_eq!(subscription["status"], "action_required", "{}", shown.body);
    let actions = subscription["required_actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "one payment to make: {}", shown.body);
    assert_eq!(actions[0]["type"], "payment");
    actions[0]["redirect_url"].as_str().unwrap().to_owned()
}

fn top_up_id_of(redirect_url: &str) -> String {
    redirect_url.split("/checkout/").nth(1).unwrap().split('?').next().unwrap().to_owned()
}

async fn a_waiting_subscription_always_offers_a_live_payment_link(app: TestApp) {
    app.post("/products", body(PRO_PLAN)).await.expect(201);
    let request = json!({"products": [{"code": "pro"}], "return_url": "https://platform.example/welcome",
                         "failure_url": "https://platform.example/sorry"});
    // The card is declined and the customer gives up: the link is dead, and reading the
    // customer gives a fresh one.
    let customer = app.customer("Declined").await;
    let waiting = app.post(&format!("/customers/{customer}/subscriptions"), request.clone()).await.expect(201);
    let first = waiting.body["required_actions"][0]["redirect_url"].as_str().unwrap().to_owned();
    let (status, _, _) = pay(&first, "4000000000000002").await;
    assert_eq!(status, 402);
    assert_eq!(status_of(&app, &top_up_id_of(&first)).await, "pending", "a decline leaves the link live");
    cancel(&first).await;
    assert_eq!(status_of(&app, &top_up_id_of(&first)).await, "expired");
    let fresh = payment_link(&app, &customer).await;
    assert_ne!(fresh, first, "a new link replaces the failed one");
    assert_eq!(payment_link(&app, &customer).await, fresh, "reading again shows the same live link");
    assert_eq!(app.balances(&customer, "default:USD").await, ("0".into(), "9.99".into(), "0".into()));
    let (status, location, _) = pay(&fresh, "4242424242424242").await;
    assert_eq!((status, location.as_deref()), (303, Some("https://platform.example/welcome")));
    app.eventually("the paid subscription starts", || async {
        app.get(&format!("/customers/{customer}")).await.body["subscriptions"][0]["status"] == "active"
    })
    .await;
    assert_eq!(app.balances(&customer, "default:USD").await, ("0".into(), "0".into(), "0".into()));

    // The link expires unpaid: reading the customer gives a fresh one, payable for another day.
    let customer = app.customer("Slow").await;
    let waiting = app.post(&format!("/customers/{customer}/subscriptions"), request).await.expect(201);
    let first = waiting.body["required_actions"][0]["redirect_url"].as_str().unwrap().to_owned();
    app.clock.advance(chrono::Duration::hours(25));
    let fresh = payment_link(&app, &customer).await;
    assert_ne!(fresh, first);
    assert_eq!(status_of(&app, &top_up_id_of(&first)).await, "expired");
    let view = app.get(&format!("/top-ups/{}", top_up_id_of(&fresh))).await.expect(200);
    let expires_at: chrono::DateTime<chrono::Utc> = view.body["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(expires_at > app.clock.now() + chrono::Duration::hours(23), "{}", view.body);
    assert_eq!(view.body["amount"].to_string(), "9.99");
    assert_eq!(
        app.balances(&customer, "default:USD").await,
        ("0".into(), "9.99".into(), "0".into()),
        "one payment held"
    );
    let opened = reqwest::get(&fresh).await.unwrap().text().await.unwrap();
    assert!(opened.contains("Card number"), "the fresh link takes a payment: {opened}");
    app.assert_ledger_agrees().await;
}

on_both_backends!(
    a_fee_that_must_be_paid_first_waits_for_payment,
    a_waiting_subscription_always_offers_a_live_payment_link,
    paid_credit_never_arrives_already_expired,
    idempotency_keys_make_retries_safe,
    client_urls_must_be_absolute_http_urls,
    top_up_lifecycle_with_the_succeeding_card,
    declined_card_leaves_the_top_up_open_until_cancelled,
    test_helpers_override_and_rounding,
    top_up_validation,
    unpaid_top_ups_expire,
);
