//! Top-ups through the test provider: lifecycle, idempotent crediting, expiry, rate override.

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

async fn declined_card_fails_the_top_up(app: TestApp) {
    let customer = setup(&app).await;
    let created = app.post("/top-ups", top_up(&customer, "3")).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let (status, _, html) = pay(created.body["redirect_url"].as_str().unwrap(), "4000 0000 0000 0002").await;
    assert_eq!(status, 402);
    assert!(html.contains("Your card was declined."), "{html}");
    let view = app.get(&format!("/top-ups/{id}")).await.expect(200);
    assert_eq!(view.body["status"], "failed");
    assert!(view.body["failure_reason"].as_str().unwrap().contains("declined"));
    assert_eq!(app.balances(&customer, "default:IMG").await, ("0".into(), "0".into(), "0".into()));
    app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(409);
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

async fn unpaid_top_ups_expire(app: TestApp) {
    let customer = setup(&app).await;
    let created = app.post("/top-ups", top_up(&customer, "10")).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let store = app.store.clone();
    let after_window = chrono::Utc::now() + chrono::Duration::hours(25);
    let pass = tokio::task::spawn_blocking(move || tally_http::worker::expire_top_ups(&store, after_window).unwrap())
        .await
        .unwrap();
    assert_eq!(pass.changed, 1);
    let view = app.get(&format!("/top-ups/{id}")).await.expect(200);
    assert_eq!(view.body["status"], "expired");
    assert_eq!(app.balances(&customer, "default:IMG").await, ("0".into(), "0".into(), "0".into()));
    app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(409);
    app.assert_ledger_agrees().await;
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
    // No URLs to come back to: refused whole, nothing stored.
    app.post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"code": "pro"}]})).await.expect(422);
    assert_eq!(app.get(&format!("/customers/{customer}")).await.body["subscriptions"], json!([]));

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
    let mut status = String::new();
    for _ in 0..50 {
        status = app.get(&format!("/customers/{customer}")).await.body["subscriptions"][0]["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if status == "active" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, "active");
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

on_both_backends!(
    a_fee_that_must_be_paid_first_waits_for_payment,
    top_up_lifecycle_with_the_succeeding_card,
    declined_card_fails_the_top_up,
    test_helpers_override_and_rounding,
    top_up_validation,
    unpaid_top_ups_expire,
);
