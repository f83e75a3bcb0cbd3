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

on_both_backends!(
    malformed_json_is_400,
    wrong_types_are_422_with_the_field_path,
    not_found_and_bodies_too_large,
    amounts_have_documented_limits
);
