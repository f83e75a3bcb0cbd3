//! Credyt for Platforms: connected accounts, each fully apart from the platform and from each
//! other, reached with the `X-CREDYT-ACCOUNT` header; `connect` webhook destinations.

use crate::harness::{body, Reply, TestApp};
use crate::on_both_backends;
use axum::body::Bytes;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tally::bench::GLITCH_IMAGES;

const IMG: &str =
    r#"{"code":"IMG","name":"Image Generation","precision":2,"label":"image","rates":[{"source":"USD","rate":0.10}]}"#;

/// A request with the test key, acting in connected account `account` when one is given.
async fn call(app: &TestApp, account: Option<&str>, method: Method, path: &str, payload: Option<Value>) -> Reply {
    call_with_key(app, &app.test_key, account, method, path, payload).await
}

async fn call_with_key(
    app: &TestApp,
    key: &str,
    account: Option<&str>,
    method: Method,
    path: &str,
    payload: Option<Value>,
) -> Reply {
    let mut request = app.client.request(method, format!("{}{path}", app.base)).header("X-CREDYT-API-KEY", key);
    if let Some(account) = account {
        request = request.header("X-CREDYT-ACCOUNT", account);
    }
    if let Some(payload) = payload {
        request = request.header("content-type", "application/json").body(payload.to_string());
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, headers, body, text }
}

async fn create_account(app: &TestApp, name: &str, external_id: &str) -> String {
    let created =
        app.post("/accounts", json!({"name": name, "external_id": external_id, "metadata": {"tier": "gold"}})).await;
    let created = created.expect(201);
    created.body["id"].as_str().unwrap().to_owned()
}

async fn connected_accounts_are_created_listed_and_found(app: TestApp) {
    let context = app.get("/accounts/self").await.expect(200);
    assert!(context.body["account_id"].as_str().unwrap().starts_with("acc_"), "{}", context.body);

    let studio = create_account(&app, "Glitch Studio", "studio-1").await;
    assert!(studio.starts_with("acc_"), "{studio}");
    let shown = app.get(&format!("/accounts/{studio}")).await.expect(200);
    assert_eq!(shown.body["name"], "Glitch Studio");
    assert_eq!(shown.body["external_id"], "studio-1");
    assert_eq!(shown.body["metadata"]["tier"], "gold");
    assert!(shown.body["created_at"].is_string());

    // An external id is unique per environment; live has accounts of its own.
    app.post("/accounts", json!({"name": "Again", "external_id": "studio-1"})).await.expect(409);
    let live = call_with_key(
        &app,
        &app.live_key,
        None,
        Method::POST,
        "/accounts",
        Some(json!({"name": "Live studio", "external_id": "studio-1"})),
    )
    .await;
    let live_id = live.expect(201).body["id"].as_str().unwrap().to_owned();
    call_with_key(&app, &app.live_key, None, Method::GET, &format!("/accounts/{studio}"), None).await.expect(404);
    app.get(&format!("/accounts/{live_id}")).await.expect(404);

    create_account(&app, "Second", "studio-2").await;
    let page = app.get("/accounts?limit=1").await.expect(200);
    assert_eq!(page.body["total_count"], 2);
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    let found = app.get("/accounts?external_id=studio-2").await.expect(200);
    assert_eq!(found.body["items"][0]["name"], "Second");

    // Acting inside the account: /accounts/self names it.
    let inside = call(&app, Some(&studio), Method::GET, "/accounts/self", None).await.expect(200);
    assert_eq!(inside.body["account_id"], studio.as_str());
    assert_eq!(inside.body["name"], "Glitch Studio");
    assert_eq!(inside.body["environment"], "test");
}

async fn an_unknown_account_header_is_a_404_naming_it(app: TestApp) {
    let studio = create_account(&app, "Glitch Studio", "studio-1").await;
    for header in ["acc_doesnotexist", "not an id", "acct_x"] {
        let reply = call(&app, Some(header), Method::GET, "/customers", None).await.expect(404);
        assert!(reply.text.contains("X-CREDYT-ACCOUNT"), "{}", reply.text);
        assert!(reply.content_type().starts_with("application/problem+json"));
    }
    // A test-mode account does not exist for a live key.
    call_with_key(&app, &app.live_key, Some(&studio), Method::GET, "/customers", None).await.expect(404);
}

/// What one scope (the platform, or a connected account) made: ids to look for elsewhere.
struct Made {
    customer: String,
    product: String,
    vendor: String,
    top_up: String,
}

/// Creates one of everything in `account` (the platform when `None`), the same codes every
/// time, so that only the partition keeps them apart.
async fn make_everything(app: &TestApp, account: Option<&str>, rate: &str, event_id: &str) -> Made {
    make_everything_with(app, &app.test_key, account, rate, event_id).await
}

/// [`make_everything`] with `key`. Live mode has no payment provider in tests, so its top-up
/// is refused (503) and `Made::top_up` is empty.
async fn make_everything_with(app: &TestApp, key: &str, account: Option<&str>, rate: &str, event_id: &str) -> Made {
    let call = |account: Option<&str>, method: Method, path: &str, payload: Option<Value>| {
        let (account, path) = (account.map(str::to_owned), path.to_owned());
        async move { call_with_key(app, key, account.as_deref(), method, &path, payload).await }
    };
    let asset: Value = body(&IMG.replace("0.10", rate));
    call(account, Method::POST, "/assets", Some(asset)).await.expect(201);
    let product = call(account, Method::POST, "/products", Some(body(GLITCH_IMAGES))).await.expect(201);
    let customer = call(
        account,
        Method::POST,
        "/customers",
        Some(json!({"name": "Fan", "external_id": "fan-1", "subscriptions": [{"products": [{"code": "glitch_images_std"}]}]})),
    )
    .await
    .expect(201);
    let customer = customer.body["id"].as_str().unwrap().to_owned();
    let adjustment =
        json!({"transaction_id": format!("fund-{event_id}"), "asset": "IMG", "amount": 10, "reason": "gift"});
    call(account, Method::POST, &format!("/customers/{customer}/wallet/adjustments"), Some(adjustment))
        .await
        .expect(201);
    let usage = json!({"customer_id": customer, "events": [{"id": event_id, "event_type": "image_generated",
        "occurred_at": chrono::Utc::now().to_rfc3339()}]});
    call(account, Method::POST, "/events", Some(usage)).await.expect(204);
    let vendor = call(account, Method::POST, "/vendors", Some(json!({"name": "GPU cloud", "external_id": "gpu"})))
        .await
        .expect(201);
    let top_up = json!({"customer_id": customer, "amount": 5, "currency": "USD", "destination": {"asset": "IMG"},
        "return_url": "https://platform.example/ok", "failure_url": "https://platform.example/failed"});
    let top_up = call(account, Method::POST, "/top-ups", Some(top_up)).await;
    let top_up = match top_up.status.as_u16() {
        201 => top_up.body["id"].as_str().unwrap().to_owned(),
        status => {
            assert_eq!((key == app.live_key, status), (true, 503), "{}", top_up.text);
            String::new()
        }
    };
    Made {
        customer,
        product: product.body["id"].as_str().unwrap().to_owned(),
        vendor: vendor.body["id"].as_str().unwrap().to_owned(),
        top_up,
    }
}

/// Every route family, read from `from`, sees nothing of what `made` holds.
async fn sees_nothing_of(app: &TestApp, from: Option<&str>, made: &Made, event_id: &str) {
    sees_nothing_of_with(app, &app.test_key, from, made, event_id).await
}

async fn sees_nothing_of_with(app: &TestApp, key: &str, from: Option<&str>, made: &Made, event_id: &str) {
    let customer = &made.customer;
    for path in [
        format!("/customers/{customer}"),
        format!("/customers/{customer}/wallet"),
        format!("/customers/{customer}/wallet/default:IMG"),
        format!("/customers/{customer}/wallet/default:IMG/transactions"),
        format!("/customers/{customer}/wallet/default:IMG/grants"),
        format!("/customers/{customer}/stats"),
        format!("/products/{}", made.product),
        format!("/products/{}/subscribers", made.product),
        format!("/vendors/{}", made.vendor),
        format!("/top-ups/{}", if made.top_up.is_empty() { "top_none" } else { &made.top_up }),
        format!("/events/{event_id}"),
    ] {
        let reply = call_with_key(app, key, from, Method::GET, &path, None).await;
        assert_eq!(reply.status, 404, "GET {path} from {from:?} leaked: {}", reply.text);
    }
    let lists = ["/customers", "/products", "/vendors", "/events", "/customers/stats"];
    for path in lists {
        let reply = call_with_key(app, key, from, Method::GET, path, None).await.expect(200);
        assert!(!reply.text.contains(customer.as_str()), "GET {path} from {from:?} leaked {customer}");
        assert!(!reply.text.contains(made.product.as_str()), "GET {path} from {from:?} leaked {}", made.product);
        assert!(!reply.text.contains(made.vendor.as_str()), "GET {path} from {from:?} leaked {}", made.vendor);
    }
    let events = call_with_key(app, key, from, Method::GET, "/events", None).await.expect(200);
    assert!(!events.text.contains(event_id), "GET /events from {from:?} leaked {event_id}");
    // Writes that name the other's customer fail without touching it.
    let adjustment = json!({"transaction_id": "cross", "asset": "IMG", "amount": 1, "reason": "gift"});
    call_with_key(app, key, from, Method::POST, &format!("/customers/{customer}/wallet/adjustments"), Some(adjustment))
        .await
        .expect(404);
    let portal = json!({"customer_id": customer, "return_url": "https://platform.example/back",
        "failure_url": "https://platform.example/failed"});
    // A customer named in a body is a field error, as for any unknown customer.
    let refused =
        call_with_key(app, key, from, Method::POST, "/billing-portal/sessions", Some(portal)).await.expect(422);
    assert!(refused.text.contains("no customer"), "{}", refused.text);
}

async fn nothing_leaks_between_the_platform_and_its_connected_accounts(app: TestApp) {
    let first = create_account(&app, "First studio", "first").await;
    let second = create_account(&app, "Second studio", "second").await;
    let platform = make_everything(&app, None, "0.10", "evt-platform").await;
    let in_first = make_everything(&app, Some(&first), "0.20", "evt-first").await;
    let in_second = make_everything(&app, Some(&second), "0.25", "evt-second").await;

    // Each scope sees its own, with its own rate: the same asset code means three assets.
    for (account, destination_amount) in [(None, "50"), (Some(first.as_str()), "25"), (Some(second.as_str()), "20")] {
        let quote = call(&app, account, Method::POST, "/assets/IMG/quote", Some(json!({"source": "USD", "amount": 5})))
            .await
            .expect(200);
        assert_eq!(quote.body["destination_amount"].to_string(), destination_amount, "{account:?}");
    }
    let own =
        call(&app, Some(&first), Method::GET, &format!("/customers/{}/wallet/default:IMG", in_first.customer), None)
            .await
            .expect(200);
    assert_eq!(own.body["available"].to_string(), "9", "funded 10, one image billed");

    // Both directions, every pair.
    sees_nothing_of(&app, None, &in_first, "evt-first").await;
    sees_nothing_of(&app, Some(&first), &platform, "evt-platform").await;
    sees_nothing_of(&app, Some(&first), &in_second, "evt-second").await;
    sees_nothing_of(&app, Some(&second), &in_first, "evt-first").await;

    // The same event id in two partitions is two events, each billed in its own.
    let usage = json!({"customer_id": in_second.customer, "events": [{"id": "evt-first", "event_type": "image_generated",
        "occurred_at": chrono::Utc::now().to_rfc3339()}]});
    call(&app, Some(&second), Method::POST, "/events", Some(usage)).await.expect(204);
    let second_wallet =
        call(&app, Some(&second), Method::GET, &format!("/customers/{}/wallet/default:IMG", in_second.customer), None)
            .await
            .expect(200);
    assert_eq!(second_wallet.body["available"].to_string(), "8");

    // Live mode sees none of the test connected accounts' data either.
    let live = call_with_key(&app, &app.live_key, None, Method::GET, "/customers", None).await.expect(200);
    assert_eq!(live.body["total_count"], 0);
    app.assert_ledger_agrees().await;
}

/// A receiver that records every webhook body it gets.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let shared = received.clone();
    let handler = move |payload: Bytes| {
        let shared = shared.clone();
        async move {
            shared.lock().unwrap().push(serde_json::from_slice(&payload).unwrap());
            axum::http::StatusCode::OK
        }
    };
    let router = axum::Router::new().route("/hook", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, received)
}

async fn connect_destinations_receive_connected_accounts_events(app: TestApp) {
    let studio = create_account(&app, "Glitch Studio", "studio-1").await;
    let (own_url, own) = receiver().await;
    let (connect_url, connected) = receiver().await;
    app.post("/webhooks", json!({"url": own_url, "topics": ["customer.created"]})).await.expect(201);
    let connect = app
        .post("/webhooks", json!({"url": connect_url, "topics": ["customer.created"], "connect": true}))
        .await
        .expect(201);
    let connect_id = connect.body["id"].as_str().unwrap().to_owned();

    app.post("/customers", json!({"name": "Platform's own"})).await.expect(201);
    call(&app, Some(&studio), Method::POST, "/customers", Some(json!({"name": "Studio's customer"}))).await.expect(201);
    app.eventually("both destinations got their event", || async {
        own.lock().unwrap().len() == 1 && connected.lock().unwrap().len() == 1
    })
    .await;
    let mine = own.lock().unwrap()[0].clone();
    assert_eq!(mine["type"], "customer.created");
    assert!(mine.get("account_id").is_none(), "{mine}");
    let theirs = connected.lock().unwrap()[0].clone();
    assert_eq!(theirs["account_id"], studio.as_str(), "{theirs}");

    // The two test endpoints for connected accounts send to `connect` destinations, naming it.
    call(&app, None, Method::POST, &format!("/webhooks/{connect_id}/test/customer.created/{studio}"), None)
        .await
        .expect(202);
    call(&app, None, Method::POST, &format!("/webhooks/test/customer.created/{studio}"), None).await.expect(202);
    app.eventually("the two test events arrived", || async { connected.lock().unwrap().len() == 3 }).await;
    assert!(connected.lock().unwrap().iter().all(|event| event["account_id"] == studio.as_str()));
    assert_eq!(own.lock().unwrap().len(), 1, "the platform's own destination got none of them");
    call(&app, None, Method::POST, "/webhooks/test/customer.created/acc_unknown", None).await.expect(404);
}

async fn a_connected_accounts_portal_shows_its_own_name_and_assets(app: TestApp) {
    let studio = create_account(&app, "Glitch Studio", "studio-1").await;
    let made = make_everything(&app, Some(&studio), "0.20", "evt-studio").await;
    let session = json!({"customer_id": made.customer, "return_url": "https://studio.example/back",
        "failure_url": "https://studio.example/failed"});
    let link = call(&app, Some(&studio), Method::POST, "/billing-portal/sessions", Some(session)).await.expect(200);
    let link = link.body["redirect_url"].as_str().unwrap().to_owned();
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let entered = client.get(&link).send().await.unwrap();
    assert_eq!(entered.status(), 303);
    let cookie = entered.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let page = client.get(format!("{}/portal", app.base)).header("cookie", cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Glitch Studio"), "the connected account's name: {html}");
    assert!(!html.contains("Test Platform"), "not the platform's name");
    assert!(html.contains("Image Generation") || html.contains("image"), "its own asset: {html}");
}

async fn a_connected_accounts_top_up_is_paid_and_credited_in_it(app: TestApp) {
    let studio = create_account(&app, "Glitch Studio", "studio-1").await;
    let made = make_everything(&app, Some(&studio), "0.20", "evt-studio").await;
    let top_up = call(&app, Some(&studio), Method::GET, &format!("/top-ups/{}", made.top_up), None).await.expect(200);
    assert_eq!(top_up.body["status"], "initiated");
    let created = json!({"customer_id": made.customer, "amount": 5, "currency": "USD", "destination": {"asset": "IMG"},
        "return_url": "https://studio.example/ok", "failure_url": "https://studio.example/failed"});
    let created = call(&app, Some(&studio), Method::POST, "/top-ups", Some(created)).await.expect(201);
    let (id, link) = (created.body["id"].as_str().unwrap(), created.body["redirect_url"].as_str().unwrap());

    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = client.get(link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Glitch Studio"), "the checkout shows the account's name");
    let (path, query) = link.split_once('?').unwrap();
    let token = query.trim_start_matches("token=");
    let paid =
        client.post(path).form(&[("token", token), ("card_number", "4242 4242 4242 4242")]).send().await.unwrap();
    assert_eq!(paid.status(), 303);

    let view = call(&app, Some(&studio), Method::GET, &format!("/top-ups/{id}"), None).await.expect(200);
    assert_eq!(view.body["status"], "succeeded");
    // 10 funded − 1 image, then 5 USD at 0.20 = 25 IMG: 34.
    let wallet =
        call(&app, Some(&studio), Method::GET, &format!("/customers/{}/wallet/default:IMG", made.customer), None)
            .await
            .expect(200);
    assert_eq!(wallet.body["available"].to_string(), "34", "{}", wallet.body);
    app.get(&format!("/top-ups/{id}")).await.expect(404);
    app.assert_ledger_agrees().await;
}

/// The same partition in live mode: a live key's connected accounts and its platform see
/// nothing of each other, nor of test mode.
async fn nothing_leaks_in_live_mode_either(app: TestApp) {
    let live = app.live_key.clone();
    let created = call_with_key(&app, &live, None, Method::POST, "/accounts", Some(json!({"name": "Live studio"})));
    let studio = created.await.expect(201).body["id"].as_str().unwrap().to_owned();
    let platform = make_everything_with(&app, &live, None, "0.10", "evt-live-platform").await;
    let inside = make_everything_with(&app, &live, Some(&studio), "0.20", "evt-live-studio").await;
    sees_nothing_of_with(&app, &live, None, &inside, "evt-live-studio").await;
    sees_nothing_of_with(&app, &live, Some(&studio), &platform, "evt-live-platform").await;
    // Test mode sees neither.
    sees_nothing_of(&app, None, &platform, "evt-live-platform").await;
    sees_nothing_of(&app, None, &inside, "evt-live-studio").await;
    call(&app, Some(&studio), Method::GET, "/customers", None).await.expect(404);
    app.assert_ledger_agrees().await;
}

on_both_backends!(
    nothing_leaks_in_live_mode_either,
    a_connected_accounts_top_up_is_paid_and_credited_in_it,
    a_connected_accounts_portal_shows_its_own_name_and_assets,
    connected_accounts_are_created_listed_and_found,
    an_unknown_account_header_is_a_404_naming_it,
    nothing_leaks_between_the_platform_and_its_connected_accounts,
    connect_destinations_receive_connected_accounts_events,
);
