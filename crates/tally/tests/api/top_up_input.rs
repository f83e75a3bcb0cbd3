//! Top-up requests checked against the server's clock: credit may not be asked to expire at
//! or before the moment the top-up is made, and a refused request makes nothing.

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::json;

fn top_up(customer: &str, credit_expires_at: DateTime<Utc>) -> serde_json::Value {
    let mut request = body(&format!(
        r#"{{"customer_id":"{customer}","amount":10,"currency":"USD",
            "return_url":"https://platform.example/ok","failure_url":"https://platform.example/failed"}}"#
    ));
    request["credit_expires_at"] = json!(credit_expires_at.to_rfc3339_opts(SecondsFormat::Micros, true));
    request
}

async fn credit_may_not_be_asked_to_expire_before_the_top_up(app: TestApp) {
    let customer = app.customer("Buyer").await;
    let wallet = format!("/customers/{customer}/wallet");
    for asked in [app.clock.now() - Duration::seconds(1), app.clock.now() - Duration::days(30)] {
        let refused = app.post("/top-ups", top_up(&customer, asked)).await.expect(422);
        assert!(refused.body["errors"]["credit_expires_at"].is_array(), "{}", refused.body);
    }
    // In the future when asked for here, in the past by the server's clock: refused too.
    let asked = app.clock.now() + Duration::hours(1);
    app.clock.advance(Duration::hours(2));
    let refused = app.post("/top-ups", top_up(&customer, asked)).await.expect(422);
    assert!(refused.body["errors"]["credit_expires_at"].is_array(), "{}", refused.body);
    // Nothing was made: no top-up holds anything in pending_in, no account was opened.
    assert_eq!(app.get(&wallet).await.expect(200).body, json!({"accounts": []}));

    // A future expiry is taken.
    let created = app.post("/top-ups", top_up(&customer, app.clock.now() + Duration::days(30))).await.expect(201);
    let id = created.body["id"].as_str().unwrap();
    let shown = app.get(&format!("/top-ups/{id}")).await.expect(200);
    assert!(shown.body["credit_expires_at"].is_string(), "{}", shown.body);
    assert_eq!(app.balances(&customer, "USD").await, ("0".into(), "10".into(), "0".into()));
    app.assert_ledger_agrees().await;
}

on_both_backends!(credit_may_not_be_asked_to_expire_before_the_top_up);
