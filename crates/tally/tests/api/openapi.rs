//! The OpenAPI document is generated from code and served; the checked-in copy must match.
//! Regenerate it with `UPDATE_OPENAPI=1 cargo test -p tally --test api openapi`. The document
//! is valid OpenAPI 3.1 (openapi-spec-validator), and true: the server answers only statuses
//! it lists. `/docs` shows it.

use crate::harness::{Backend, TestApp};
use crate::on_both_backends;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

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
        "docs/openapi.json is out of date with the code; run UPDATE_OPENAPI=1 cargo test -p tally --test api openapi and commit it"
    );
    let document: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(document["paths"]["/customers/{customerId}/wallet/adjustments"]["post"].is_object());

    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let served = app.client.get(format!("{}/openapi.json", app.base)).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.text().await.unwrap(), generated);
}

/// The served document, parsed.
async fn served_document(app: &TestApp) -> Value {
    let reply = app.client.get(format!("{}/openapi.json", app.base)).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    reply.json().await.unwrap()
}

/// What a `$ref` points to inside the document, or the value itself.
fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local reference");
            resolve(document, document.pointer(pointer).unwrap_or_else(|| panic!("{reference} resolves")))
        }
        None => value,
    }
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// One operation of the document.
struct Operation {
    method: Method,
    /// The path template, `/customers/{customerId}`.
    path: String,
    id: String,
    /// The statuses it documents.
    documented: BTreeSet<u16>,
    takes_body: bool,
    query: Vec<String>,
}

fn operations(document: &Value) -> Vec<Operation> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(operation) = item.get(method) else { continue };
            let parameters = operation["parameters"].as_array().cloned().unwrap_or_default();
            found.push(Operation {
                method: method.to_uppercase().parse().unwrap(),
                path: path.clone(),
                id: operation["operationId"].as_str().unwrap_or_default().to_owned(),
                documented: operation["responses"].as_object().unwrap().keys().map(|s| s.parse().unwrap()).collect(),
                takes_body: operation.get("requestBody").is_some(),
                query: parameters
                    .iter()
                    .filter(|parameter| parameter["in"] == "query")
                    .map(|parameter| parameter["name"].as_str().unwrap().to_owned())
                    .collect(),
            });
        }
    }
    found
}

/// Unique operation ids, and every error answer documented as problem+json with its schema:
/// what client generators need. Then openapi-spec-validator, the reference validator, on the
/// served document (it runs in the SDK test's virtual environment; TALLY_SKIP_SDK=1, which
/// skips the environment, skips this half).
#[tokio::test]
async fn the_served_document_is_valid_openapi() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let document = served_document(&app).await;
    let mut ids = BTreeSet::new();
    for operation in operations(&document) {
        let Operation { method, path, id, .. } = &operation;
        assert!(!id.is_empty(), "{method} {path} has no operationId");
        assert!(ids.insert(id.clone()), "operationId {id} is used twice (again by {method} {path})");
        let responses = &document["paths"][path][method.as_str().to_lowercase()]["responses"];
        for status in &operation.documented {
            if *status < 400 {
                continue;
            }
            let response = resolve(&document, &responses[status.to_string()]);
            let schema = &response["content"]["application/problem+json"]["schema"];
            let expected = if *status == 422 { "ValidationProblem" } else { "ProblemDetails" };
            assert_eq!(
                schema["$ref"],
                format!("#/components/schemas/{expected}"),
                "{method} {path} {status}: {response}"
            );
            assert!(!response["description"].as_str().unwrap_or_default().is_empty(), "{method} {path} {status}");
        }
        for status in [400, 401, 404, 413] {
            assert!(operation.documented.contains(&status), "{method} {path} documents no {status}");
        }
    }
    let validation = resolve(&document, &document["components"]["schemas"]["ValidationProblem"]);
    assert!(validation["required"].as_array().unwrap().contains(&json!("errors")), "{validation}");

    if std::env::var("TALLY_SKIP_SDK").is_ok_and(|value| value == "1") {
        eprintln!("openapi-spec-validator NOT RUN: TALLY_SKIP_SDK=1 skips the Python environment");
        return;
    }
    let python = tokio::task::spawn_blocking(crate::sdk::sdk_python).await.unwrap().unwrap_or_else(|problem| {
        panic!("openapi-spec-validator cannot run: {problem}\nset TALLY_SKIP_SDK=1 to skip it")
    });
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), document.to_string()).unwrap();
    let output = std::process::Command::new(python)
        .args(["-m", "openapi_spec_validator", "--validation-errors", "all"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "openapi-spec-validator refused the document:\n{}", crate::sdk::show(&output));
}

/// Real ids for the path parameters, from resources made through the API.
async fn known_ids(app: &TestApp) -> BTreeMap<&'static str, String> {
    let id = |reply: crate::harness::Reply| reply.body["id"].as_str().unwrap().to_owned();
    app.post(
        "/assets",
        json!({"code": "IMG", "name": "Images", "precision": 2, "rates": [{"source": "USD", "rate": 0.1}]}),
    )
    .await
    .expect(201);
    let product = id(app.post("/products", crate::harness::body(tally::bench::GLITCH_IMAGES)).await.expect(201));
    let customer = id(app
        .post("/customers", json!({"name": "Known", "subscriptions": [{"products": [{"code": "glitch_images_std"}]}]}))
        .await
        .expect(201));
    let subscription = app.get(&format!("/customers/{customer}")).await.expect(200).body["subscriptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.fund(&customer, "IMG", "100", "known-transaction").await;
    let event = json!({"customer_id": customer, "events": [{"id": "known-event", "event_type": "image_generated",
        "occurred_at": chrono::Utc::now().to_rfc3339(), "data": {}}]});
    app.post("/events", event).await.expect(204);
    let hold = json!({"transaction_id": "known-hold", "asset": "IMG", "amount": 1});
    app.post(&format!("/customers/{customer}/wallet/holds"), hold).await.expect(201);
    let top_up = id(app
        .post(
            "/top-ups",
            json!({"customer_id": customer, "amount": 10, "currency": "USD", "destination": {"asset": "IMG"},
            "return_url": "https://platform.example/ok", "failure_url": "https://platform.example/failed"}),
        )
        .await
        .expect(201));
    let vendor = id(app.post("/vendors", json!({"name": "GPU Cloud", "external_id": "gpu"})).await.expect(201));
    let account = id(app.post("/accounts", json!({"name": "Studio", "external_id": "studio"})).await.expect(201));
    // Loopback, on a port nothing listens on: test deliveries go nowhere.
    let webhook = id(app.post("/webhooks", json!({"url": "http://127.0.0.1:9/hooks"})).await.expect(201));
    BTreeMap::from([
        ("customerId", customer),
        ("subscriptionId", subscription),
        ("productId", product),
        ("version", "1".to_owned()),
        ("assetCode", "IMG".to_owned()),
        ("walletAccountId", "default:IMG".to_owned()),
        ("accountId", account.clone()),
        ("connectedAccountId", account),
        ("transactionId", "known-transaction".to_owned()),
        ("topUpId", top_up),
        ("eventId", "known-event".to_owned()),
        ("holdId", "known-hold".to_owned()),
        ("vendorId", vendor),
        ("webhookId", webhook),
        ("topic", "top_up.succeeded".to_owned()),
    ])
}

/// `template` with each `{parameter}` replaced by `value(parameter)`.
fn fill(template: &str, value: impl Fn(&str) -> String) -> String {
    let mut path = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').unwrap() + start;
        path.push_str(&rest[..start]);
        path.push_str(&value(&rest[start + 1..end]));
        rest = &rest[end + 1..];
    }
    path.push_str(rest);
    path
}

/// One request of [`every_answer_is_documented`].
struct Probe<'a> {
    what: String,
    path: String,
    key: Option<&'a str>,
    body: Option<&'a str>,
    /// `X-CREDYT-ACCOUNT`.
    account: Option<&'a str>,
}

/// Every status the server answers is one the document lists for that operation, and every
/// error is problem+json whose `type` names the kind its status belongs to. Each operation is
/// called without a key, with an `X-CREDYT-ACCOUNT` naming no account, on unknown ids and on
/// real ones, with broken, empty and mistyped bodies and with bad query values. DELETEs go
/// last, so that the other operations meet the resources they remove.
async fn every_answer_is_documented(app: TestApp) {
    let document = served_document(&app).await;
    let known = known_ids(&app).await;
    let mut operations = operations(&document);
    operations.sort_by_key(|operation| operation.method == Method::DELETE);
    let mut problems = Vec::new();
    let mut calls = 0;
    for operation in &operations {
        let wallet = operation.path.starts_with("/customers/{customerId}/wallet/");
        let real = |name: &str| {
            let name = if wallet && name == "accountId" { "walletAccountId" } else { name };
            known.get(name).unwrap_or_else(|| panic!("no known value for {{{name}}} in {}", operation.path)).clone()
        };
        let real_path = fill(&operation.path, real);
        let unknown_path = fill(&operation.path, |_| "does-not-exist".to_owned());
        let key = Some(app.test_key.as_str());
        let mut probes = vec![
            Probe { what: "no key".into(), path: unknown_path.clone(), key: None, body: None, account: None },
            Probe {
                what: "unknown account".into(),
                path: real_path.clone(),
                key,
                body: None,
                account: Some("acct_nope"),
            },
        ];
        let bodies: &[Option<&str>] =
            if operation.takes_body { &[Some("{"), Some("{}"), Some("[]"), Some(r#"{"name": 5}"#)] } else { &[None] };
        for path in [&unknown_path, &real_path] {
            for body in bodies {
                probes.push(Probe {
                    what: format!("body {body:?}"),
                    path: path.clone(),
                    key,
                    body: *body,
                    account: None,
                });
            }
        }
        for parameter in &operation.query {
            let too_long = "x".repeat(300);
            for value in ["-1", "x%21", "9999999999999999999999", &too_long] {
                let path = format!("{real_path}?{parameter}={value}");
                let what = format!("query {parameter}={value:.30}");
                probes.push(Probe { what, path, key, body: bodies[0], account: None });
            }
        }
        for Probe { what, path, key, body, account } in probes {
            let mut request = app.client.request(operation.method.clone(), format!("{}{path}", app.base));
            if let Some(key) = key {
                request = request.header("X-CREDYT-API-KEY", key);
            }
            if let Some(account) = account {
                request = request.header("X-CREDYT-ACCOUNT", account);
            }
            if let Some(body) = body {
                request = request.header("content-type", "application/json").body(body.to_owned());
            }
            let reply = request.send().await.unwrap();
            calls += 1;
            let status = reply.status().as_u16();
            let content_type = reply.headers().get("content-type").map(|value| value.to_str().unwrap().to_owned());
            let text = reply.text().await.unwrap();
            let call = format!(
                "{} {} ({}) [{what}: {} {path}]",
                operation.method, operation.path, operation.id, operation.method
            );
            if !operation.documented.contains(&status) {
                problems.push(format!("{call} answered {status}, documented {:?}: {text}", operation.documented));
            }
            if status >= 500 {
                problems.push(format!("{call} answered {status}: {text}"));
            }
            if status >= 400 {
                if content_type.as_deref() != Some("application/problem+json") {
                    problems.push(format!("{call} answered {status} as {content_type:?}"));
                    continue;
                }
                let problem: Value = serde_json::from_str(&text).unwrap();
                let kind = tally_http::error::PROBLEM_KINDS.iter().find(|kind| problem["type"] == kind.type_uri());
                if kind.map(|kind| kind.status.as_u16()) != Some(status) || problem["status"] != status {
                    problems.push(format!("{call} answered {status} with a problem of another kind: {text}"));
                }
                if status == 422 && !problem["errors"].is_object() {
                    problems.push(format!("{call} answered 422 without errors: {text}"));
                }
            }
        }
    }
    assert!(operations.len() >= 50, "the document lists {} operations", operations.len());
    assert!(
        problems.is_empty(),
        "{} of {calls} answers disagree with the document:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

on_both_backends!(every_answer_is_documented);

/// `/docs` is the API reference: Swagger UI on the served document, its files served by
/// Tally itself.
#[tokio::test]
async fn the_reference_page_shows_the_document() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let page = app.client.get(format!("{}/docs", app.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"url: "openapi.json""#), "{html}");
    // Every file the page loads is served, and is what it says it is.
    for (file, kind) in [("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css")] {
        assert!(html.contains(&format!("docs/assets/{file}")), "{file}");
        let asset = app.client.get(format!("{}/docs/assets/{file}", app.base)).send().await.unwrap();
        assert_eq!(asset.status(), 200, "{file}");
        assert!(asset.headers()["content-type"].to_str().unwrap().contains(kind), "{file}");
        assert!(asset.bytes().await.unwrap().len() > 10_000, "{file}");
    }
    // The page's relative links resolve from /docs; /docs/ sends there.
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let slash = client.get(format!("{}/docs/", app.base)).send().await.unwrap();
    assert_eq!(slash.status(), 308);
    assert_eq!(slash.headers()["location"], "/docs");
    app.get("/docs/assets/nothing.js").await.expect(404);
}
