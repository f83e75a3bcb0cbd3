//! The OpenAPI document is generated from code and served; the checked-in copy must match.
//! Regenerate it with `UPDATE_OPENAPI=1 cargo test --test api openapi`.

use crate::harness::{Backend, TestApp};

#[tokio::test]
async fn served_document_matches_the_checked_in_copy() {
    let generated = tally_http::openapi::document();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|value| value == "1") {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is out of date with the code; run UPDATE_OPENAPI=1 cargo test --test api openapi and commit it"
    );
    let document: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(document["paths"]["/customers/{customerId}/wallet/adjustments"]["post"].is_object());

    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let served = app.client.get(format!("{}/openapi.json", app.base)).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.text().await.unwrap(), generated);
}
