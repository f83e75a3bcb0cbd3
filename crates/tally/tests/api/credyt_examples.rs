//! Credyt's own public example requests, answered as Credyt answers them.

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use serde_json::json;

/// Credyt's OpenAI example: input tokens at $1.25 per million and output tokens at $10 per
/// million, written as a volume rate per `package_size` with no `pricing_model`; one
/// price per event type, with a `unit_and_volume` price that states only its volume part.
const OPENAI_PRODUCT: &str = r#"{
  "name": "GPT API",
  "code": "gpt_api",
  "prices": [
    {
      "name": "Input tokens",
      "type": "usage_based",
      "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "chat_completion", "usage_type": "volume", "volume_field": "input_tokens" },
      "pricing": [ { "asset": "USD", "values": [ { "volume_rate": 1.25, "package_size": 1000000 } ] } ]
    },
    {
      "name": "Output tokens",
      "type": "usage_based",
      "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "chat_completion", "usage_type": "unit_and_volume", "volume_field": "output_tokens" },
      "pricing": [ { "asset": "USD", "values": [ { "volume_rate": 10, "package_size": 1000000 } ] } ]
    }
  ],
  "publish": true
}"#;

async fn a_volume_rate_per_package_size_is_prorated(app: TestApp) {
    let product = app.post("/products", body(OPENAI_PRODUCT)).await.expect(201);
    assert_eq!(product.body["code"], "gpt_api");
    let customer = app
        .post("/customers", json!({"name": "Chat app", "subscriptions": [{"products": [{"code": "gpt_api"}]}]}))
        .await
        .expect(201);
    let customer = customer.body["id"].as_str().unwrap().to_owned();
    app.fund(&customer, "USD", "1", "fund").await;

    let now = chrono::Utc::now().to_rfc3339();
    let usage = json!({"customer_id": customer, "events": [{"id": "chat-1", "event_type": "chat_completion",
        "occurred_at": now, "data": {"input_tokens": 2000, "output_tokens": 300}}]});
    app.post("/events", usage).await.expect(204);
    let event = app.get("/events/chat-1").await.expect(200);
    let fees: Vec<String> =
        event.body["fees"].as_array().unwrap().iter().map(|fee| fee["amount"].to_string()).collect();
    // 2,000 × 1.25 / 1,000,000 = 0.0025 and 300 × 10 / 1,000,000 = 0.003, exactly.
    assert_eq!(fees, vec!["0.0025", "0.003"], "{}", event.body);
    assert_eq!(app.balances(&customer, "default:USD").await.0, "0.9945");

    // Simulating the same event prices it the same way.
    let product_id = product.body["id"].as_str().unwrap();
    let simulated = app
        .post(
            &format!("/products/{product_id}/1/simulate-usage"),
            json!({"events": [{"id": "sim-1", "event_type": "chat_completion", "occurred_at": now,
                "data": {"input_tokens": 1000000, "output_tokens": 1}}]}),
        )
        .await
        .expect(200);
    assert!(simulated.text.contains("1.25") && simulated.text.contains("0.00001"), "{}", simulated.text);
    app.assert_ledger_agrees().await;
}

/// A plan with a recurring fee in USD and no `collection`, as Credyt's `glitch_pro` example.
fn pro_plan(code: &str, collection: Option<serde_json::Value>) -> serde_json::Value {
    let mut fee = json!({
        "name": "Pro monthly", "type": "fixed",
        "billing_model": {"type": "recurring", "recurring": {"interval": "month"}},
        "pricing": [{"asset": "USD", "values": [{"unit_price": 20}]}]
    });
    if let Some(collection) = collection {
        fee["collection"] = collection;
    }
    json!({"name": "Glitch Pro", "code": code, "publish": true, "prices": [fee]})
}

async fn a_recurring_fee_the_balance_cannot_pay_waits_for_payment(app: TestApp) {
    app.post("/products", pro_plan("glitch_pro", None)).await.expect(201);
    let request = json!({"products": [{"code": "glitch_pro"}], "return_url": "https://platform.example/welcome",
        "failure_url": "https://platform.example/sorry"});

    // An empty wallet: the subscription waits for a payment and nothing is debited.
    let poor = app.customer("Poor").await;
    let waiting = app.post(&format!("/customers/{poor}/subscriptions"), request.clone()).await.expect(201);
    assert_eq!(waiting.body["status"], "action_required", "{}", waiting.body);
    assert_eq!(waiting.body["required_actions"][0]["type"], "payment");
    assert!(waiting.body["required_actions"][0]["redirect_url"].as_str().unwrap().contains("/checkout/"));
    assert_eq!(app.balances(&poor, "default:USD").await, ("0".into(), "20".into(), "0".into()), "no overdraft");

    // A balance that covers the fee: charged from it at once.
    let rich = app.customer("Rich").await;
    app.fund(&rich, "USD", "50", "fund").await;
    let started = app.post(&format!("/customers/{rich}/subscriptions"), request.clone()).await.expect(201);
    assert_eq!(started.body["status"], "active");
    assert_eq!(app.balances(&rich, "default:USD").await.0, "30");

    // An explicit collection keeps its meaning: from the balance, without `in_advance`, the fee
    // is debited like any charge.
    let arrears = json!({"type": "balance"});
    app.post("/products", pro_plan("glitch_pro_arrears", Some(arrears))).await.expect(201);
    let trusted = app.customer("Trusted").await;
    let request = json!({"products": [{"code": "glitch_pro_arrears"}]});
    let started = app.post(&format!("/customers/{trusted}/subscriptions"), request).await.expect(201);
    assert_eq!(started.body["status"], "active");
    assert_eq!(app.balances(&trusted, "default:USD").await.0, "-20");
    app.assert_ledger_agrees().await;
}

on_both_backends!(a_volume_rate_per_package_size_is_prorated, a_recurring_fee_the_balance_cannot_pay_waits_for_payment);
