//! Authentication and the separation of test and live data.

use crate::harness::TestApp;
use crate::on_both_backends;
use reqwest::Method;
use serde_json::json;

async fn keys_are_required_and_checked(app: TestApp) {
    let missing = app.call(Method::GET, "/accounts/self", None, None).await.expect(401);
    assert_eq!(missing.content_type(), "application/problem+json");
    app.call(Method::GET, "/customers", Some("key_test_unknown"), None).await.expect(401);
    app.call(Method::POST, "/customers", None, Some(&json!({"name": "x"}))).await.expect(401);

    // The header name is case-insensitive, and a bearer token works too.
    let lower = app
        .client
        .get(format!("{}/accounts/self", app.base))
        .header("x-credyt-api-key", &app.test_key)
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);
    let bearer = app.client.get(format!("{}/accounts/self", app.base)).bearer_auth(&app.live_key).send().await.unwrap();
    assert_eq!(bearer.status(), 200);
    let context: serde_json::Value = bearer.json().await.unwrap();
    assert_eq!(context["environment"], "live");
    assert!(context["account_id"].as_str().unwrap().starts_with("acc_"));

    let test_context = app.get("/accounts/self").await.expect(200);
    assert_eq!(test_context.body["environment"], "test");
    assert_eq!(test_context.body["account_id"], context["account_id"]);
}

async fn revoked_keys_stop_working_at_once(app: TestApp) {
    let store = app.store.clone();
    let (record, secret) = tokio::task::spawn_blocking(move || {
        store
            .write(|conn| {
                tally_store::repo::api_keys::create(conn, tally_core::Mode::Test, Some("temp"), chrono::Utc::now())
            })
            .unwrap()
    })
    .await
    .unwrap();
    app.call(Method::GET, "/accounts/self", Some(&secret), None).await.expect(200);
    let store = app.store.clone();
    let id = record.id.clone();
    let revoked = tokio::task::spawn_blocking(move || {
        store.write(|conn| tally_store::repo::api_keys::revoke(conn, &id, chrono::Utc::now())).unwrap()
    })
    .await
    .unwrap();
    assert!(revoked);
    app.call(Method::GET, "/accounts/self", Some(&secret), None).await.expect(401);
}

async fn test_and_live_data_never_meet(app: TestApp) {
    let live = Some(app.live_key.as_str());
    let customer = app.customer("Test-mode customer").await;
    app.fund(&customer, "USD", "5", "fund-1").await;
    app.post("/assets", json!({"code": "IMG", "name": "Images"})).await.expect(201);

    // Live sees none of it, on the same paths.
    app.call(Method::GET, &format!("/customers/{customer}"), live, None).await.expect(404);
    app.call(Method::GET, &format!("/customers/{customer}/wallet"), live, None).await.expect(404);
    app.call(Method::GET, "/assets/IMG", live, None).await.expect(404);
    let live_customers = app.call(Method::GET, "/customers", live, None).await.expect(200);
    assert_eq!(live_customers.body["total_count"], 0);
    let adjust = json!({"transaction_id": "x", "asset": "USD", "amount": 1, "reason": "gift"});
    app.call(Method::POST, &format!("/customers/{customer}/wallet/adjustments"), live, Some(&adjust)).await.expect(404);

    // The same codes and external ids can exist once in each mode.
    app.call(Method::POST, "/assets", live, Some(&json!({"code": "IMG", "name": "Live images"}))).await.expect(201);
    app.post("/customers", json!({"name": "A", "external_id": "user-1"})).await.expect(201);
    app.call(Method::POST, "/customers", live, Some(&json!({"name": "B", "external_id": "user-1"}))).await.expect(201);
    let test_img = app.get("/assets/IMG").await.expect(200);
    assert_eq!(test_img.body["name"], "Images");
}

on_both_backends!(keys_are_required_and_checked, revoked_keys_stop_working_at_once, test_and_live_data_never_meet);
