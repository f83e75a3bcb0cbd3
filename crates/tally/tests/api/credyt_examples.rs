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
    let fees: Vec<String> = event.body["fees"].as_array().unwrap().iter().map(|fee| fee["amount"].to_string()).collect();
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

on_both_backends!(a_volume_rate_per_package_size_is_prorated);
