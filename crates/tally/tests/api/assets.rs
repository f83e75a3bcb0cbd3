//! Assets, exchange rates and quotes, including the seed documents' examples exactly.

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use serde_json::json;

fn vidgenmin() -> serde_json::Value {
    body(
        r#"{"code":"VIDGENMIN","name":"Video Generation Minutes","precision":2,"symbol":"⏰","label":"MIN","rates":[{"source":"USD","rate":0.1}]}"#,
    )
}

async fn seed_asset_and_quote_work_as_written(app: TestApp) {
    let created = app.post("/assets", vidgenmin()).await.expect(201);
    assert_eq!(created.body["code"], "VIDGENMIN");
    assert!(created.body["created_at"].is_string());

    let asset = app.get("/assets/VIDGENMIN").await.expect(200);
    assert_eq!(asset.body["name"], "Video Generation Minutes");
    assert_eq!(asset.body["precision"], 2);
    assert_eq!(asset.body["label"], "MIN");
    assert_eq!(asset.body["symbol"], "⏰");
    let usd = &asset.body["rates"][0];
    assert_eq!(usd["source"], "USD");
    for schedule in [&usd["rates"], &usd["schedule"]] {
        assert_eq!(schedule[0]["rate"].to_string(), "0.1");
        assert_eq!(schedule[0]["inverse_rate"].to_string(), "10");
        assert!(schedule[0]["valid_from"].is_string());
    }

    let quote = app.post("/assets/VIDGENMIN/quote", body(r#"{"source":"USD","amount":10}"#)).await.expect(200);
    assert_eq!(quote.body["source"], "USD");
    assert_eq!(quote.body["source_amount"].to_string(), "10");
    assert_eq!(quote.body["destination"], "VIDGENMIN");
    assert_eq!(quote.body["destination_amount"].to_string(), "100");
    assert_eq!(quote.body["rate"].to_string(), "0.1");
    assert_eq!(quote.body["inverse_rate"].to_string(), "10");

    // The blog's IMG asset, and an asset defined by its inverse rate.
    app.post("/assets", body(r#"{"code":"IMG","name":"Image Generation","precision":2,"label":"image","symbol":"📸","rates":[{"source":"USD","rate":0.10}]}"#))
        .await
        .expect(201);
    app.post(
        "/assets",
        body(r#"{"code":"TOK","name":"Tokens","precision":0,"rates":[{"source":"USD","inverse_rate":1000}]}"#),
    )
    .await
    .expect(201);
    let tokens = app.post("/assets/TOK/quote", body(r#"{"source":"USD","amount":2.5}"#)).await.expect(200);
    assert_eq!(tokens.body["destination_amount"].to_string(), "2500");
    assert_eq!(tokens.body["rate"].to_string(), "0.001");
    let listed = app.get("/assets").await.expect(200);
    assert_eq!(listed.body["total_count"], 3);
    // Listed by code, as the SDK documents.
    let codes: Vec<&str> =
        listed.body["items"].as_array().unwrap().iter().map(|item| item["code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["IMG", "TOK", "VIDGENMIN"]);
    assert_eq!(listed.body["items"][1]["label"], "TOK", "the label defaults to the code");
}

async fn quotes_round_down_to_the_asset_precision(app: TestApp) {
    app.post(
        "/assets",
        body(r#"{"code":"CRED","name":"Credits","precision":2,"rates":[{"source":"USD","rate":0.15}]}"#),
    )
    .await
    .expect(201);
    let quote = app.post("/assets/CRED/quote", body(r#"{"source":"USD","amount":10}"#)).await.expect(200);
    assert_eq!(quote.body["destination_amount"].to_string(), "66.66");
    let tiny = app.post("/assets/CRED/quote", body(r#"{"source":"USD","amount":0.001}"#)).await.expect(200);
    assert_eq!(tiny.body["destination_amount"].to_string(), "0");
    // A currency quoted in itself is one to one; other pairs of currencies are refused.
    let usd = app.post("/assets/USD/quote", body(r#"{"source":"USD","amount":12.34}"#)).await.expect(200);
    assert_eq!(usd.body["destination_amount"].to_string(), "12.34");
    app.post("/assets/EUR/quote", body(r#"{"source":"USD","amount":1}"#)).await.expect(422);
    app.post("/assets/CRED/quote", body(r#"{"source":"EUR","amount":1}"#)).await.expect(422);
    app.post("/assets/NOPE/quote", body(r#"{"source":"USD","amount":1}"#)).await.expect(404);
}

async fn rate_changes_apply_now_or_when_scheduled_and_history_stays(app: TestApp) {
    app.post("/assets", vidgenmin()).await.expect(201);
    let first_rate =
        app.get("/assets/VIDGENMIN").await.expect(200).body["rates"][0]["schedule"][0]["valid_from"].clone();
    app.post("/assets/VIDGENMIN/rates", json!({"source": "USD", "rate": 0.2})).await.expect(204);
    let now_quote = app.post("/assets/VIDGENMIN/quote", body(r#"{"source":"USD","amount":10}"#)).await.expect(200);
    assert_eq!(now_quote.body["destination_amount"].to_string(), "50");

    // A historic quote uses the rate in force then.
    let historic = app
        .post("/assets/VIDGENMIN/quote", json!({"source": "USD", "amount": 10, "exchange_at": first_rate}))
        .await
        .expect(200);
    assert_eq!(historic.body["destination_amount"].to_string(), "100");

    // A scheduled change takes effect by itself at its instant.
    let starts = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    app.post("/assets/VIDGENMIN/rates", json!({"source": "USD", "inverse_rate": 4, "valid_from": starts.to_rfc3339()}))
        .await
        .expect(204);
    let future = app
        .post(
            "/assets/VIDGENMIN/quote",
            json!({"source": "USD", "amount": 10, "exchange_at": (starts + chrono::Duration::days(1)).to_rfc3339()}),
        )
        .await
        .expect(200);
    assert_eq!(future.body["destination_amount"].to_string(), "40");
    let still_now = app.post("/assets/VIDGENMIN/quote", body(r#"{"source":"USD","amount":10}"#)).await.expect(200);
    assert_eq!(still_now.body["destination_amount"].to_string(), "50");
    app.clock.advance(chrono::Duration::milliseconds(1700));
    let after = app.post("/assets/VIDGENMIN/quote", body(r#"{"source":"USD","amount":10}"#)).await.expect(200);
    assert_eq!(after.body["destination_amount"].to_string(), "40");
    assert_eq!(after.body["inverse_rate"].to_string(), "4");

    // The schedule lists every rate, newest first, each closed by the next.
    let asset = app.get("/assets/VIDGENMIN").await.expect(200);
    let schedule = asset.body["rates"][0]["schedule"].as_array().unwrap().clone();
    assert_eq!(schedule.len(), 3);
    assert_eq!(schedule[0]["inverse_rate"].to_string(), "4");
    assert!(schedule[0].get("valid_to").is_none());
    assert_eq!(schedule[1]["valid_to"], schedule[0]["valid_from"]);
    assert_eq!(schedule[2]["valid_to"], schedule[1]["valid_from"]);

    // History is never rewritten.
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let refused =
        app.post("/assets/VIDGENMIN/rates", json!({"source": "USD", "rate": 1, "valid_from": past})).await.expect(422);
    assert!(refused.body["errors"]["valid_from"].is_array());
}

async fn asset_validation_and_conflicts(app: TestApp) {
    let invalid = app
        .post("/assets", json!({"code": "1bad", "name": " ", "precision": 40, "symbol": "ab", "rates": [{"source": "XXX", "rate": 1, "inverse_rate": 2}, {"source": "USD"}]}))
        .await
        .expect(422);
    let errors = &invalid.body["errors"];
    for field in ["code", "name", "precision", "symbol", "rates[0].source", "rates[0].rate", "rates[1].rate"] {
        assert!(errors[field].is_array(), "expected an error on {field}: {errors}");
    }
    app.post("/assets", json!({"code": "USD", "name": "Dollars"})).await.expect(422);
    app.post("/assets", json!({"code": "EURO", "name": "Not fiat", "rates": [{"source": "EUR", "rate": -1}]}))
        .await
        .expect(422);
    app.post("/assets", json!({"code": "gem", "name": "Gems"})).await.expect(201);
    let duplicate = app.post("/assets", json!({"code": "GEM", "name": "Gems again"})).await.expect(409);
    assert_eq!(duplicate.content_type(), "application/problem+json");
    app.get("/assets").await.expect(200);
    assert_eq!(app.get("/assets").await.body["total_count"], 1, "nothing stored by the refused requests");
    app.get("/assets/NOPE").await.expect(404);
    app.post("/assets/NOPE/rates", json!({"source": "USD", "rate": 1})).await.expect(404);
    app.post("/assets/USD/rates", json!({"source": "USD", "rate": 1})).await.expect(422);
    // Fiat currencies exist without being created.
    let jpy = app.get("/assets/jpy").await.expect(200);
    assert_eq!((jpy.body["code"].as_str(), jpy.body["precision"].as_i64()), (Some("JPY"), Some(0)));
}

async fn assets_page(app: TestApp) {
    for index in 0..25 {
        app.post("/assets", json!({"code": format!("A{index:02}"), "name": "Asset"})).await.expect(201);
    }
    let first = app.get("/assets").await.expect(200);
    assert_eq!(
        (first.body["limit"].as_i64(), first.body["offset"].as_i64(), first.body["total_count"].as_i64()),
        (Some(20), Some(0), Some(25))
    );
    assert_eq!(first.body["items"].as_array().unwrap().len(), 20);
    let second = app.get("/assets?offset=20&limit=10").await.expect(200);
    assert_eq!(second.body["items"].as_array().unwrap().len(), 5);
    assert_eq!(second.body["items"][0]["code"], "A20");
    app.get("/assets?limit=101").await.expect(422);
    app.get("/assets?offset=-1").await.expect(422);
    app.get("/assets?limit=abc").await.expect(422);
}

/// A rate with `valid_to` (a promotion) applies over the rate before it while it lasts; when it
/// ends, that rate applies again, so quotes, top-ups and auto top-ups keep working.
async fn a_promotion_ends_into_the_rate_before_it(app: TestApp) {
    use chrono::Duration;
    let app = &app;
    app.post("/assets", vidgenmin()).await.expect(201);
    let started = app.clock.now();
    let ends = started + Duration::hours(1);
    app.post("/assets/VIDGENMIN/rates", json!({"source": "USD", "rate": 0.05, "valid_to": ends.to_rfc3339()}))
        .await
        .expect(204);
    let quote = |at: Option<chrono::DateTime<chrono::Utc>>| {
        let mut request = json!({"source": "USD", "amount": 10});
        if let Some(at) = at {
            request["exchange_at"] = json!(at.to_rfc3339());
        }
        async move { app.post("/assets/VIDGENMIN/quote", request).await.expect(200).body["destination_amount"].to_string() }
    };
    assert_eq!(quote(None).await, "200", "the promotion applies now");
    // The schedule shows the base rate interrupted, not ended.
    let asset = app.get("/assets/VIDGENMIN").await.expect(200);
    let schedule = asset.body["rates"][0]["schedule"].as_array().unwrap().clone();
    assert_eq!(schedule[0]["rate"].to_string(), "0.05");
    let shown_end: chrono::DateTime<chrono::Utc> = schedule[0]["valid_to"].as_str().unwrap().parse().unwrap();
    assert_eq!(shown_end.timestamp_micros(), ends.timestamp_micros());
    assert!(schedule[1].get("valid_to").is_none(), "{}", asset.body);

    app.clock.advance(Duration::hours(2));
    assert_eq!(quote(None).await, "100", "after the promotion the base rate applies again");
    assert_eq!(quote(Some(started + Duration::minutes(30))).await, "200", "history is kept");
    // A top-up made after the promotion buys at the base rate.
    let customer = app.customer("After the sale").await;
    let top_up = app
        .post(
            "/top-ups",
            json!({"customer_id": customer, "amount": 10, "currency": "USD",
            "destination": {"asset": "VIDGENMIN"}, "return_url": "https://platform.example/ok",
            "failure_url": "https://platform.example/failed"}),
        )
        .await
        .expect(201);
    let view = app.get(&format!("/top-ups/{}", top_up.body["id"].as_str().unwrap())).await.expect(200);
    assert_eq!(view.body["asset_amount"].to_string(), "100");
    // Auto top-up settings in USD are accepted (they need a rate in force).
    let store = app.store.clone();
    let now = app.clock.now();
    let settings = tally_store::ops::auto_top_up::Settings {
        key: tally_store::repo::wallets::AccountKey {
            customer_id: customer.clone(),
            name: "default".into(),
            asset: "VIDGENMIN".into(),
        },
        enabled: false,
        threshold: 5.into(),
        amount: 10.into(),
        currency: tally_core::asset::AssetCode::parse("USD").unwrap(),
        payment_method_id: None,
    };
    let configured = tokio::task::spawn_blocking(move || {
        store.write(|conn| tally_store::ops::auto_top_up::configure(conn, tally_core::Mode::Test, &settings, now))
    })
    .await
    .unwrap();
    assert!(configured.is_ok(), "{configured:?}");

    // A later base rate outranks the promotion and stays after it: the newest start applies.
    let later = app.clock.now();
    app.post(
        "/assets/VIDGENMIN/rates",
        json!({"source": "USD", "rate": 0.05, "valid_to": (later + Duration::hours(3)).to_rfc3339()}),
    )
    .await
    .expect(204);
    app.post(
        "/assets/VIDGENMIN/rates",
        json!({"source": "USD", "rate": 0.2, "valid_from": (later + Duration::hours(1)).to_rfc3339()}),
    )
    .await
    .expect(204);
    app.clock.advance(Duration::hours(4));
    assert_eq!(quote(None).await, "50");

    // A promotion with no rate to return to would leave quotes failing when it ends: refused.
    app.post("/assets", json!({"code": "LONE", "name": "Lonely"})).await.expect(201);
    let refused = app
        .post(
            "/assets/LONE/rates",
            json!({"source": "USD", "rate": 1, "valid_to": (app.clock.now() + Duration::hours(1)).to_rfc3339()}),
        )
        .await
        .expect(422);
    assert!(refused.body["errors"]["valid_to"].is_array(), "{}", refused.body);
    assert!(app.get("/assets/LONE").await.body["rates"].as_array().unwrap().is_empty());
}

on_both_backends!(
    a_promotion_ends_into_the_rate_before_it,
    seed_asset_and_quote_work_as_written,
    quotes_round_down_to_the_asset_precision,
    rate_changes_apply_now_or_when_scheduled_and_history_stays,
    asset_validation_and_conflicts,
    assets_page,
);
