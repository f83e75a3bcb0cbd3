//! Live-mode top-ups through the `stripe` provider, against a local fake of Stripe's HTTP API
//! (Stripe itself cannot be reached from the tests). The fake checks the key, records every
//! request and answers as Stripe documents; webhooks are signed here, independently of Tally's
//! own verifier.

use crate::harness::{body, test_webhook_config, Reply, TestApp};
use crate::on_both_backends;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_core::asset::AssetCode;
use tally_core::Mode;
use tally_http::payments::stripe::{StripeConfig, StripeProvider};
use tally_http::payments::{ChargeOutcome, OffSessionCharge, PaymentError, PaymentProvider};
use tally_store::ops::topups::NewTopUp;
use tally_store::repo::topups as topup_repo;

const SECRET_KEY: &str = "sk_test_tally_fake";
const WEBHOOK_SECRET: &str = "whsec_tally_fake_signing_secret";
/// The payment methods the fake declines off-session, as Stripe's test cards do.
const DECLINED_METHOD: &str = "pm_card_chargeDeclined";
const AUTHENTICATION_METHOD: &str = "pm_card_authenticationRequired";
const PROCESSING_METHOD: &str = "pm_card_processing";
/// The card the fake reports for every paid Checkout Session.
const SAVED_METHOD: &str = "pm_1SavedVisa";

/// One request the fake received.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
    idempotency_key: Option<String>,
    stripe_version: Option<String>,
    form: Vec<(String, String)>,
}

impl Recorded {
    #[track_caller]
    fn field(&self, name: &str) -> &str {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("the request to {} has no {name}: {:?}", self.path, self.form))
    }

    fn has(&self, name: &str) -> bool {
        self.form.iter().any(|(key, _)| key == name)
    }
}

#[derive(Clone, Default)]
struct FakeState {
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// Answers already given, by idempotency key: Stripe replays them.
    replies: Arc<Mutex<HashMap<String, Value>>>,
    /// Payment methods detached from their customer: Stripe refuses to charge them.
    detached: Arc<Mutex<Vec<String>>>,
    /// Checkout Sessions expired through the API.
    expired: Arc<Mutex<Vec<String>>>,
    /// Each customer's `invoice_settings.default_payment_method`.
    defaults: Arc<Mutex<HashMap<String, String>>>,
    /// Setup-mode Checkout Sessions, by id, as created (the test completes them).
    setup_sessions: Arc<Mutex<HashMap<String, Value>>>,
    /// Each SetupIntent's customer and the card it saves (one new card per SetupIntent).
    setup_intents: Arc<Mutex<HashMap<String, (String, String)>>>,
}

/// A local server speaking the parts of Stripe's API that Tally uses.
struct FakeStripe {
    base: String,
    state: FakeState,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned)
}

fn stripe_error(status: StatusCode, error: Value) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

fn record(
    state: &FakeState,
    method: &str,
    path: &str,
    query: Option<String>,
    headers: &HeaderMap,
    form: Vec<(String, String)>,
) {
    state.requests.lock().unwrap().push(Recorded {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.unwrap_or_default(),
        authorization: header(headers, "authorization"),
        idempotency_key: header(headers, "idempotency-key"),
        stripe_version: header(headers, "stripe-version"),
        form,
    });
}

/// Stripe answers 401 to a wrong key: the refusal, if any.
fn refuse_wrong_key(headers: &HeaderMap) -> Option<Response> {
    if header(headers, "authorization").as_deref() == Some(&format!("Bearer {SECRET_KEY}")) {
        return None;
    }
    Some(stripe_error(
        StatusCode::UNAUTHORIZED,
        json!({"type": "invalid_request_error", "message": "Invalid API Key provided: sk_****"}),
    ))
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// A replayed idempotency key gets the first answer, as at Stripe.
fn replay(state: &FakeState, headers: &HeaderMap) -> Option<Response> {
    let key = header(headers, "idempotency-key")?;
    state.replies.lock().unwrap().get(&key).map(|reply| Json(reply.clone()).into_response())
}

fn remember(state: &FakeState, headers: &HeaderMap, reply: &Value) {
    if let Some(key) = header(headers, "idempotency-key") {
        state.replies.lock().unwrap().insert(key, reply.clone());
    }
}

async fn create_session(
    State(state): State<FakeState>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    record(&state, "POST", "/v1/checkout/sessions", None, &headers, form.clone());
    if let Some(refused) = refuse_wrong_key(&headers) {
        return refused;
    }
    if let Some(reply) = replay(&state, &headers) {
        return reply;
    }
    if field(&form, "mode") == Some("setup") {
        return create_setup_session(&state, &headers, &form);
    }
    let unit_amount: i64 = field(&form, "line_items[0][price_data][unit_amount]").unwrap_or("0").parse().unwrap_or(0);
    if unit_amount < 50 {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "code": "amount_too_small",
                   "param": "line_items[0][price_data][unit_amount]",
                   "message": "The Checkout Session's total amount due must add up to at least $0.50 usd"}),
        );
    }
    let id = format!("cs_test_{}", tally_store::ids::new_secret(12));
    let session = json!({
        "id": id,
        "object": "checkout.session",
        "url": format!("https://checkout.stripe.com/c/pay/{id}#fidkdWxOYHwnPyd1blpxYHZxWjA0"),
        "mode": "payment",
        "status": "open",
        "payment_status": "unpaid",
        "amount_total": unit_amount,
        "currency": field(&form, "line_items[0][price_data][currency]"),
        "client_reference_id": field(&form, "client_reference_id"),
        "customer": null,
        "customer_email": field(&form, "customer_email"),
        "payment_intent": null,
        "metadata": {"top_up_id": field(&form, "metadata[top_up_id]")},
        "expires_at": field(&form, "expires_at").and_then(|at| at.parse::<i64>().ok()),
        "success_url": field(&form, "success_url"),
        "cancel_url": field(&form, "cancel_url"),
        "livemode": false,
    });
    remember(&state, &headers, &session);
    Json(session).into_response()
}

/// A `mode=setup` session: no line items or amount, and a SetupIntent for the card. Stripe
/// asks for `currency` unless `payment_method_types` is given, and keeps the card on
/// `customer`.
fn create_setup_session(state: &FakeState, headers: &HeaderMap, form: &[(String, String)]) -> Response {
    if field(form, "payment_method_types[]").is_none() && field(form, "currency").is_none() {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "param": "currency",
                   "message": "currency is required in setup mode when payment_method_types is not passed."}),
        );
    }
    let Some(customer) = field(form, "customer") else {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "param": "customer", "message": "Missing customer (fake)."}),
        );
    };
    let id = format!("cs_test_{}", tally_store::ids::new_secret(12));
    let setup_intent = format!("seti_{}", tally_store::ids::new_secret(12));
    let card = format!("pm_1Setup{}", tally_store::ids::new_secret(8));
    state.setup_intents.lock().unwrap().insert(setup_intent.clone(), (customer.to_owned(), card));
    let metadata: serde_json::Map<String, Value> = form
        .iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((name.to_owned(), json!(value)))
        })
        .collect();
    let session = json!({
        "id": id,
        "object": "checkout.session",
        "url": format!("https://checkout.stripe.com/c/pay/{id}#fidkdWxOYHwnPyd1blpxYHZxWjA0"),
        "mode": "setup",
        "status": "open",
        "payment_status": "no_payment_required",
        "amount_total": null,
        "currency": field(form, "currency"),
        "client_reference_id": field(form, "client_reference_id"),
        "customer": customer,
        "payment_intent": null,
        "setup_intent": setup_intent,
        "metadata": metadata,
        "success_url": field(form, "success_url"),
        "cancel_url": field(form, "cancel_url"),
        "livemode": false,
    });
    state.setup_sessions.lock().unwrap().insert(id, session.clone());
    remember(state, headers, &session);
    Json(session).into_response()
}

/// `POST /v1/customers`.
async fn create_customer(
    State(state): State<FakeState>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    record(&state, "POST", "/v1/customers", None, &headers, form.clone());
    if let Some(refused) = refuse_wrong_key(&headers) {
        return refused;
    }
    if let Some(reply) = replay(&state, &headers) {
        return reply;
    }
    let customer = json!({"id": format!("cus_test_{}", tally_store::ids::new_secret(10)), "object": "customer",
                          "email": field(&form, "email"), "invoice_settings": {"default_payment_method": null}});
    remember(&state, &headers, &customer);
    Json(customer).into_response()
}

/// `GET /v1/setup_intents/{id}`: succeeded, with the card it saved (an id, not expanded).
async fn get_setup_intent(State(state): State<FakeState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    record(&state, "GET", &format!("/v1/setup_intents/{id}"), None, &headers, Vec::new());
    if let Some(refused) = refuse_wrong_key(&headers) {
        return refused;
    }
    let Some((customer, card)) = state.setup_intents.lock().unwrap().get(&id).cloned() else {
        return stripe_error(
            StatusCode::NOT_FOUND,
            json!({"type": "invalid_request_error", "code": "resource_missing", "param": "intent",
                   "message": format!("No such setupintent: '{id}'")}),
        );
    };
    Json(json!({"id": id, "object": "setup_intent", "status": "succeeded", "usage": "off_session",
                "customer": customer, "payment_method": card, "livemode": false}))
    .into_response()
}

/// `GET /v1/payment_methods/{id}`: a Mastercard ending 4444, attached to its customer.
async fn get_payment_method(State(state): State<FakeState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    record(&state, "GET", &format!("/v1/payment_methods/{id}"), None, &headers, Vec::new());
    if let Some(refused) = refuse_wrong_key(&headers) {
        return refused;
    }
    let customer = state.setup_intents.lock().unwrap().values().find(|(_, card)| *card == id).map(|(c, _)| c.clone());
    let Some(customer) = customer else {
        return stripe_error(
            StatusCode::NOT_FOUND,
            json!({"type": "invalid_request_error", "code": "resource_missing", "param": "payment_method",
                   "message": format!("No such PaymentMethod: '{id}'")}),
        );
    };
    Json(json!({"id": id, "object": "payment_method", "type": "card", "customer": customer,
                "card": {"brand": "mastercard", "last4": "4444", "exp_month": 8, "exp_year": 2031, "funding": "credit"},
                "livemode": false}))
    .into_response()
}

fn payment_intent(id: &str, status: &str, form: &[(String, String)]) -> Value {
    json!({
        "id": id,
        "object": "payment_intent",
        "amount": field(form, "amount").and_then(|amount| amount.parse::<i64>().ok()),
        "currency": field(form, "currency"),
        "customer": field(form, "customer"),
        "payment_method": field(form, "payment_method"),
        "metadata": {"top_up_id": field(form, "metadata[top_up_id]")},
        "status": status,
        "livemode": false,
    })
}

async fn create_payment_intent(
    State(state): State<FakeState>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    record(&state, "POST", "/v1/payment_intents", None, &headers, form.clone());
    if let Some(refused) = refuse_wrong_key(&headers) {
        return refused;
    }
    if let Some(reply) = replay(&state, &headers) {
        return reply;
    }
    let id = format!("pi_test_{}", tally_store::ids::new_secret(12));
    let card_error = |code: &str, message: &str| {
        let intent = payment_intent(&id, "requires_payment_method", &form);
        stripe_error(
            StatusCode::PAYMENT_REQUIRED,
            json!({"type": "card_error", "code": code, "decline_code": "generic_decline", "message": message,
                   "payment_intent": intent}),
        )
    };
    if let Some(method) = field(&form, "payment_method") {
        if state.detached.lock().unwrap().iter().any(|detached| detached == method) {
            // As Stripe answers for a payment method no longer attached to the customer.
            return stripe_error(
                StatusCode::BAD_REQUEST,
                json!({"type": "invalid_request_error", "code": "resource_missing", "param": "payment_method",
                       "message": format!("The PaymentMethod {method} does not belong to the Customer you supplied.")}),
            );
        }
    }
    match field(&form, "payment_method") {
        Some(DECLINED_METHOD) => card_error("card_declined", "Your card was declined."),
        Some(AUTHENTICATION_METHOD) => {
            card_error("authentication_required", "Your card was declined. This transaction requires authentication.")
        }
        method => {
            let status = if method == Some(PROCESSING_METHOD) { "processing" } else { "succeeded" };
            let intent = payment_intent(&id, status, &form);
            remember(&state, &headers, &intent);
            Json(intent).into_response()
        }
    }
}

async fn get_payment_intent(
    State(state): State<FakeState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    record(&state, "GET", &format!("/v1/payment_intents/{id}"), query.clone(), &headers, Vec::new());
    if let Some(refused) = refuse_wrong_key(&headers) {
        return refused;
    }
    let query = query.unwrap_or_default();
    let expanded = query.contains("expand%5B%5D=payment_method") || query.contains("expand[]=payment_method");
    let method = if expanded {
        json!({"id": SAVED_METHOD, "object": "payment_method", "type": "card",
               "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2034}})
    } else {
        json!(SAVED_METHOD)
    };
    Json(json!({"id": id, "object": "payment_intent", "status": "succeeded", "payment_method": method})).into_response()
}

/// `POST /v1/checkout/sessions/{id}/expire`: an open session expires; any other is a 400.
async fn expire_session(State(state): State<FakeState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    record(&state, "POST", &format!("/v1/checkout/sessions/{id}/expire"), None, &headers, Vec::new());
    if let Some(refused) = refuse_wrong_key(&headers) {
        return refused;
    }
    let mut expired = state.expired.lock().unwrap();
    if expired.contains(&id) {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error",
                   "message": format!("Only Checkout Sessions with a status in [\"open\"] can be expired. This Checkout Session has a status of \"expired\".")}),
        );
    }
    expired.push(id.clone());
    Json(json!({"id": id, "object": "checkout.session", "status": "expired", "payment_status": "unpaid", "url": null}))
        .into_response()
}

/// `POST /v1/payment_methods/{id}/detach`: the method leaves its customer; twice is a 400.
async fn detach_payment_method(State(state): State<FakeState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    record(&state, "POST", &format!("/v1/payment_methods/{id}/detach"), None, &headers, Vec::new());
    if let Some(refused) = refuse_wrong_key(&headers) {
        return refused;
    }
    let mut detached = state.detached.lock().unwrap();
    if detached.contains(&id) {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error",
                   "message": "The payment method you provided is not attached to a customer so detachment is impossible."}),
        );
    }
    detached.push(id.clone());
    Json(json!({"id": id, "object": "payment_method", "type": "card", "customer": null,
                "card": {"brand": "visa", "last4": "4242"}}))
    .into_response()
}

/// `POST /v1/customers/{id}`: records `invoice_settings[default_payment_method]`.
async fn update_customer(
    State(state): State<FakeState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    record(&state, "POST", &format!("/v1/customers/{id}"), None, &headers, form.clone());
    if let Some(refused) = refuse_wrong_key(&headers) {
        return refused;
    }
    let chosen = field(&form, "invoice_settings[default_payment_method]").map(str::to_owned);
    if let Some(method) = &chosen {
        if state.detached.lock().unwrap().contains(method) {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                json!({"type": "invalid_request_error", "param": "invoice_settings[default_payment_method]",
                       "message": format!("No such PaymentMethod: '{method}'")}),
            );
        }
        state.defaults.lock().unwrap().insert(id.clone(), method.clone());
    }
    let default = state.defaults.lock().unwrap().get(&id).cloned();
    Json(json!({"id": id, "object": "customer", "invoice_settings": {"default_payment_method": default}}))
        .into_response()
}

impl FakeStripe {
    async fn start() -> FakeStripe {
        let state = FakeState::default();
        let router = Router::new()
            .route("/v1/checkout/sessions", post(create_session))
            .route("/v1/payment_intents", post(create_payment_intent))
            .route("/v1/payment_intents/{id}", get(get_payment_intent))
            .route("/v1/checkout/sessions/{id}/expire", post(expire_session))
            .route("/v1/payment_methods/{id}/detach", post(detach_payment_method))
            .route("/v1/customers/{id}", post(update_customer))
            .route("/v1/customers", post(create_customer))
            .route("/v1/setup_intents/{id}", get(get_setup_intent))
            .route("/v1/payment_methods/{id}", get(get_payment_method))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeStripe { base, state, server }
    }

    fn provider(&self) -> StripeProvider {
        provider_at(&self.base)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }
}

fn provider_at(base: &str) -> StripeProvider {
    StripeProvider::new(StripeConfig {
        secret_key: SECRET_KEY.into(),
        webhook_secret: WEBHOOK_SECRET.into(),
        api_base: base.into(),
        timeout: Duration::from_secs(5),
    })
}

/// The test's server, restarted with live payments through `provider`, and its state (to start
/// top-ups the API cannot, such as ones that save the card).
async fn with_provider(app: TestApp, provider: StripeProvider) -> (TestApp, tally_http::AppState) {
    let mut first = app;
    first.stop().await;
    let mut captured = None;
    let app = TestApp::spawn_with_state(first.database.clone(), first.backend, test_webhook_config(), |state| {
        let state = state.with_stripe(provider);
        captured = Some(state.clone());
        state
    })
    .await;
    (app, captured.expect("the state was configured"))
}

async fn live(app: &TestApp, method: Method, path: &str, body: Option<&Value>) -> Reply {
    app.call(method, path, Some(&app.live_key), body).await
}

async fn live_customer(app: &TestApp, name: &str) -> String {
    let created = live(app, Method::POST, "/customers", Some(&json!({"name": name, "email": "buyer@example.com"})))
        .await
        .expect(201);
    created.body["id"].as_str().unwrap().to_owned()
}

/// (available, pending_in) of a live account, as exact text.
async fn live_balances(app: &TestApp, customer: &str, account: &str) -> (String, String) {
    let reply = live(app, Method::GET, &format!("/customers/{customer}/wallet/{account}"), None).await.expect(200);
    (reply.body["available"].to_string(), reply.body["pending_in"].to_string())
}

async fn live_top_up(app: &TestApp, customer: &str, amount: &str, currency: &str) -> Reply {
    let request = body(&format!(
        r#"{{"customer_id":"{customer}","amount":{amount},"currency":"{currency}","description":"Credits",
            "return_url":"https://platform.example/paid","failure_url":"https://platform.example/cancelled"}}"#
    ));
    live(app, Method::POST, "/top-ups", Some(&request)).await
}

async fn top_up_status(app: &TestApp, id: &str) -> Value {
    live(app, Method::GET, &format!("/top-ups/{id}"), None).await.expect(200).body
}

/// `t=…,v1=…` over `payload`, computed here rather than with Tally's code.
fn signature(secret: &str, timestamp: i64, payload: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn event(kind: &str, object: Value) -> String {
    json!({
        "id": format!("evt_{}", tally_store::ids::new_secret(8)),
        "object": "event",
        "api_version": "2024-06-20",
        "created": chrono::Utc::now().timestamp(),
        "livemode": false,
        "pending_webhooks": 1,
        "type": kind,
        "data": {"object": object},
    })
    .to_string()
}

fn session_object(session_id: &str, top_up_id: &str, amount_total: i64, payment_status: &str) -> Value {
    json!({
        "id": session_id,
        "object": "checkout.session",
        "amount_total": amount_total,
        "currency": "usd",
        "client_reference_id": top_up_id,
        "customer": null,
        "metadata": {"top_up_id": top_up_id},
        "mode": "payment",
        "payment_intent": format!("pi_for_{session_id}"),
        "payment_status": payment_status,
        "status": if payment_status == "paid" { "complete" } else { "open" },
        "url": null,
    })
}

/// Posts `payload` to the webhook endpoint with `signature` (none when `None`).
async fn deliver(app: &TestApp, payload: &str, signature: Option<String>) -> Reply {
    let mut request = app
        .client
        .post(format!("{}/payments/stripe/webhook", app.base))
        .header("content-type", "application/json; charset=utf-8")
        .body(payload.to_owned());
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, headers, body, text }
}

/// Signed as Stripe would sign it now, by the server's clock (which tests may move on).
async fn deliver_signed(app: &TestApp, payload: &str) -> Reply {
    deliver(app, payload, Some(signature(WEBHOOK_SECRET, app.clock.now().timestamp(), payload))).await
}

fn top_up_request(customer: &str, amount: &str, save_payment_method: bool) -> NewTopUp {
    NewTopUp {
        customer_id: customer.to_owned(),
        amount: Decimal::from_str(amount).unwrap(),
        currency: AssetCode::parse("USD").unwrap(),
        account_name: "default".into(),
        asset: None,
        exchange_rate: None,
        credit_expires_at: None,
        return_url: "https://platform.example/paid".into(),
        failure_url: "https://platform.example/cancelled".into(),
        description: Some("Portal top-up".into()),
        metadata: Default::default(),
        origin: "portal".into(),
        save_payment_method,
        subscription_id: None,
    }
}

async fn checkout_sessions_open_and_webhooks_credit_once(app: TestApp) {
    let fake = FakeStripe::start().await;
    let (app, _) = with_provider(app, fake.provider()).await;
    let customer = live_customer(&app, "Live Buyer").await;
    let before = chrono::Utc::now().timestamp();
    let created = live_top_up(&app, &customer, "12.34", "USD").await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["status"], "initiated");

    // One Checkout Session, asked for exactly.
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let sent = &requests[0];
    assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/v1/checkout/sessions"));
    assert_eq!(sent.authorization.as_deref(), Some("Bearer sk_test_tally_fake"));
    assert_eq!(sent.idempotency_key.as_deref(), Some(id.as_str()), "the top-up id is the idempotency key");
    assert!(sent.stripe_version.is_some(), "the API version is pinned");
    assert_eq!(sent.field("mode"), "payment");
    assert_eq!(sent.field("line_items[0][price_data][currency]"), "usd");
    assert_eq!(sent.field("line_items[0][price_data][unit_amount]"), "1234", "12.34 USD is 1234 cents, exactly");
    assert_eq!(sent.field("line_items[0][price_data][product_data][name]"), "Credits");
    assert_eq!(sent.field("line_items[0][quantity]"), "1");
    assert_eq!(sent.field("success_url"), "https://platform.example/paid");
    assert_eq!(sent.field("cancel_url"), "https://platform.example/cancelled");
    assert_eq!(sent.field("client_reference_id"), id);
    assert_eq!(sent.field("metadata[top_up_id]"), id);
    assert_eq!(sent.field("customer_email"), "buyer@example.com");
    let expires_at: i64 = sent.field("expires_at").parse().unwrap();
    assert!(
        expires_at >= before + 30 * 60 && expires_at <= before + 24 * 60 * 60,
        "Stripe takes 30 minutes to 24 hours: {expires_at} from {before}"
    );
    assert!(!sent.has("customer_creation"), "no card is kept unless asked");
    let session_id =
        created.body["redirect_url"].as_str().unwrap().trim_start_matches("https://checkout.stripe.com/c/pay/");
    let session_id = session_id.split('#').next().unwrap().to_owned();
    assert!(session_id.starts_with("cs_test_"), "the customer is sent to Stripe: {}", created.body);
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("0".into(), "12.34".into()));

    // Zero-decimal currencies are not multiplied.
    live_top_up(&app, &customer, "500", "JPY").await.expect(201);
    let yen = fake.requests().pop().unwrap();
    assert_eq!(
        (yen.field("line_items[0][price_data][currency]"), yen.field("line_items[0][price_data][unit_amount]")),
        ("jpy", "500")
    );

    // Paid: credited once, however many times Stripe delivers the event.
    let paid = event("checkout.session.completed", session_object(&session_id, &id, 1234, "paid"));
    let first = deliver_signed(&app, &paid).await.expect(200);
    assert_eq!(first.body["outcome"], "credited");
    for _ in 0..2 {
        let again = deliver_signed(&app, &paid).await.expect(200);
        assert_eq!(again.body["outcome"], "ignored: already credited");
    }
    assert_eq!(top_up_status(&app, &id).await["status"], "succeeded");
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("12.34".into(), "0".into()));
    let history = live(&app, Method::GET, &format!("/customers/{customer}/wallet/default:USD/transactions"), None)
        .await
        .expect(200);
    assert_eq!(history.body["total_count"], 1, "{}", history.body);
    // Nothing asked Stripe for the payment method: the top-up did not want it kept.
    assert!(fake.requests().iter().all(|request| request.method == "POST"));

    // Test mode keeps the test provider: its checkout is Tally's own page, Stripe never hears of it.
    let test_customer = app.customer("Test Buyer").await;
    let request = body(&format!(
        r#"{{"customer_id":"{test_customer}","amount":5,"currency":"USD","return_url":"https://a.example","failure_url":"https://b.example"}}"#
    ));
    let count = fake.requests().len();
    let test_top_up = app.post("/top-ups", request).await.expect(201);
    assert!(test_top_up.body["redirect_url"].as_str().unwrap().starts_with(&format!("{}/checkout/", app.base)));
    assert_eq!(fake.requests().len(), count);
    app.assert_ledger_agrees().await;
}

async fn paid_sessions_save_the_card_for_auto_top_up(app: TestApp) {
    let fake = FakeStripe::start().await;
    let (app, state) = with_provider(app, fake.provider()).await;
    let customer = live_customer(&app, "Saver").await;
    let started =
        tally_http::routes::topups::start(&state, Mode::Live, top_up_request(&customer, "20", true), app.base.clone())
            .await
            .expect("the checkout starts");
    let sent = fake.requests().pop().unwrap();
    assert_eq!(sent.field("customer_creation"), "always");
    assert_eq!(sent.field("payment_intent_data[setup_future_usage]"), "off_session");
    assert_eq!(sent.field("line_items[0][price_data][unit_amount]"), "2000");
    let session_id = started.provider_reference.clone().unwrap();
    assert!(session_id.starts_with("cs_test_"));

    let mut session = session_object(&session_id, &started.id, 2000, "paid");
    session["customer"] = json!("cus_test_saver");
    let paid = event("checkout.session.completed", session);
    deliver_signed(&app, &paid).await.expect(200);
    // The session names its PaymentIntent; Tally asked Stripe for its payment method.
    let lookup = fake.requests().pop().unwrap();
    assert_eq!(
        (lookup.method.as_str(), lookup.path.as_str()),
        ("GET", format!("/v1/payment_intents/pi_for_{session_id}").as_str())
    );
    assert!(lookup.query.contains("payment_method"), "the payment method is expanded: {}", lookup.query);
    assert_eq!(lookup.authorization.as_deref(), Some("Bearer sk_test_tally_fake"));
    deliver_signed(&app, &paid).await.expect(200);

    let store = app.store.clone();
    let customer_id = customer.clone();
    let methods = tokio::task::spawn_blocking(move || {
        store.read(move |conn| topup_repo::payment_methods(conn, &customer_id)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(methods.len(), 1, "saved once, whatever the retries: {methods:#?}");
    let method = &methods[0];
    assert_eq!(
        (method.provider.as_str(), method.provider_reference.as_str(), method.provider_customer.as_deref()),
        ("stripe", SAVED_METHOD, Some("cus_test_saver"))
    );
    assert_eq!((method.brand.as_deref(), method.last4.as_deref()), (Some("visa"), Some("4242")));
    let expiry = Some(topup_repo::CardExpiry { month: 12, year: 2034 });
    assert_eq!(method.expiry, expiry, "the PaymentMethod's card.exp_month and exp_year");
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("20".into(), "0".into()));
    app.assert_ledger_agrees().await;
}

async fn forged_and_stale_webhooks_change_nothing(app: TestApp) {
    let fake = FakeStripe::start().await;
    let (app, _) = with_provider(app, fake.provider()).await;
    let customer = live_customer(&app, "Target").await;
    let created = live_top_up(&app, &customer, "10", "USD").await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let session_id = top_up_reference(&app, &id);
    let paid = event("checkout.session.completed", session_object(&session_id, &id, 1000, "paid"));
    let now = chrono::Utc::now().timestamp();

    let refused = [
        ("no signature", None),
        ("another secret", Some(signature("whsec_someone_else", now, &paid))),
        ("a signature of another body", Some(signature(WEBHOOK_SECRET, now, &paid.replace("1000", "1")))),
        ("a stale timestamp", Some(signature(WEBHOOK_SECRET, now - 6 * 60, &paid))),
        ("garbage", Some("t=abc,v1=zz".to_owned())),
    ];
    for (what, header) in refused {
        let reply = deliver(&app, &paid, header).await;
        assert_eq!(reply.status.as_u16(), 400, "{what}: {}", reply.text);
        assert_eq!(reply.content_type(), "application/problem+json", "{what}");
    }
    assert_eq!(top_up_status(&app, &id).await["status"], "initiated");
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("0".into(), "10".into()));

    // Signed but not JSON: 400. Signed events Tally does not act on: 200, nothing changes.
    deliver_signed(&app, "not json").await.expect(400);
    let other = deliver_signed(&app, &event("customer.created", json!({"id": "cus_1", "object": "customer"}))).await;
    assert_eq!(other.expect(200).body["outcome"], "ignored: not an event Tally acts on");
    // A Stripe event naming a test-mode top-up is ignored: Stripe touches live mode only.
    let test_customer = app.customer("Test Buyer").await;
    let request = body(&format!(
        r#"{{"customer_id":"{test_customer}","amount":5,"currency":"USD","return_url":"https://a.example","failure_url":"https://b.example"}}"#
    ));
    let test_top_up = app.post("/top-ups", request).await.expect(201);
    let test_id = test_top_up.body["id"].as_str().unwrap();
    let forged = event("checkout.session.completed", session_object("cs_test_forged", test_id, 500, "paid"));
    deliver_signed(&app, &forged).await.expect(200);
    assert_eq!(app.get(&format!("/top-ups/{test_id}")).await.body["status"], "initiated");

    // The same event, correctly signed, is accepted.
    let accepted = deliver(&app, &paid, Some(signature(WEBHOOK_SECRET, now, &paid))).await.expect(200);
    assert_eq!(accepted.body["outcome"], "credited");
    app.assert_ledger_agrees().await;
}

/// The Stripe session id Tally recorded for a top-up.
fn top_up_reference(app: &TestApp, id: &str) -> String {
    let id = id.to_owned();
    let store = app.store.clone();
    std::thread::spawn(move || {
        store.read(move |conn| topup_repo::get(conn, Mode::Live, &id)).unwrap().unwrap().provider_reference.unwrap()
    })
    .join()
    .unwrap()
}

async fn expired_and_failed_sessions_release_pending_in(app: TestApp) {
    let fake = FakeStripe::start().await;
    let (app, _) = with_provider(app, fake.provider()).await;
    let customer = live_customer(&app, "Slow").await;
    let created = live_top_up(&app, &customer, "7.50", "USD").await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let session_id = top_up_reference(&app, &id);
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("0".into(), "7.5".into()));
    let expired = event("checkout.session.expired", session_object(&session_id, &id, 750, "unpaid"));
    assert_eq!(deliver_signed(&app, &expired).await.expect(200).body["outcome"], "expired");
    deliver_signed(&app, &expired).await.expect(200);
    let view = top_up_status(&app, &id).await;
    assert_eq!(view["status"], "expired");
    assert!(view["failure_reason"].as_str().unwrap().contains("expired"));
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("0".into(), "0".into()));
    // A payment reported for the ended top-up is money received: credited, once.
    let late = event("checkout.session.completed", session_object(&session_id, &id, 750, "paid"));
    assert_eq!(
        deliver_signed(&app, &late).await.expect(200).body["outcome"],
        "credited: the payment came after the top-up had ended"
    );
    assert_eq!(deliver_signed(&app, &late).await.expect(200).body["outcome"], "ignored: already credited");
    assert_eq!(top_up_status(&app, &id).await["status"], "succeeded");
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("7.5".into(), "0".into()));

    // A delayed payment method: completed unpaid (pending), then it fails.
    let created = live_top_up(&app, &customer, "3", "USD").await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let session_id = top_up_reference(&app, &id);
    let unpaid = event("checkout.session.completed", session_object(&session_id, &id, 300, "unpaid"));
    deliver_signed(&app, &unpaid).await.expect(200);
    assert_eq!(top_up_status(&app, &id).await["status"], "pending");
    let failed = event("checkout.session.async_payment_failed", session_object(&session_id, &id, 300, "unpaid"));
    assert_eq!(deliver_signed(&app, &failed).await.expect(200).body["outcome"], "failed");
    assert_eq!(top_up_status(&app, &id).await["status"], "failed");
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("7.5".into(), "0".into()));

    // And one that succeeds later.
    let created = live_top_up(&app, &customer, "4", "USD").await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let session_id = top_up_reference(&app, &id);
    deliver_signed(&app, &event("checkout.session.completed", session_object(&session_id, &id, 400, "unpaid")))
        .await
        .expect(200);
    let succeeded = event("checkout.session.async_payment_succeeded", session_object(&session_id, &id, 400, "paid"));
    assert_eq!(deliver_signed(&app, &succeeded).await.expect(200).body["outcome"], "credited");
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("11.5".into(), "0".into()));
    // A paid amount that differs from the top-up's is not credited.
    let created = live_top_up(&app, &customer, "5", "USD").await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let session_id = top_up_reference(&app, &id);
    let discounted = event("checkout.session.completed", session_object(&session_id, &id, 1, "paid"));
    assert_eq!(
        deliver_signed(&app, &discounted).await.expect(200).body["outcome"],
        "ignored: the amount paid differs from the top-up's"
    );
    assert_eq!(top_up_status(&app, &id).await["status"], "initiated");
    app.assert_ledger_agrees().await;
}

/// The `top_up.succeeded` events recorded in live mode, by top-up id.
fn succeeded_events(app: &TestApp) -> Vec<String> {
    let store = app.store.clone();
    std::thread::spawn(move || {
        store
            .read(|conn| {
                let rows = conn.query(
                    "SELECT data FROM webhook_events WHERE mode = $1 AND topic = $2 ORDER BY created_at",
                    tally_store::params!["live", "top_up.succeeded"],
                )?;
                let mut ids = Vec::new();
                for row in rows {
                    let data: Value = serde_json::from_str(&row.text(0)?).unwrap();
                    ids.push(data["id"].as_str().unwrap().to_owned());
                }
                Ok::<_, tally_store::ops::OpError>(ids)
            })
            .unwrap()
    })
    .join()
    .unwrap()
}

/// Delayed payment methods (bank debits): a checkout completed unpaid waits for the money
/// however long it takes, and money that arrives after a top-up expired is still credited.
async fn delayed_payments_are_always_credited(app: TestApp) {
    let fake = FakeStripe::start().await;
    let (app, _) = with_provider(app, fake.provider()).await;
    // A destination (never reached) so that events are recorded.
    live(
        &app,
        Method::POST,
        "/webhooks",
        Some(&json!({"url": "http://127.0.0.1:9/hooks", "topics": ["top_up.succeeded"]})),
    )
    .await
    .expect(201);
    let customer = live_customer(&app, "Bank debit").await;
    let debit = live_top_up(&app, &customer, "20", "USD").await.expect(201);
    let debit_id = debit.body["id"].as_str().unwrap().to_owned();
    let debit_session = top_up_reference(&app, &debit_id);
    let unpaid = live_top_up(&app, &customer, "5", "USD").await.expect(201);
    let unpaid_id = unpaid.body["id"].as_str().unwrap().to_owned();
    let unpaid_session = top_up_reference(&app, &unpaid_id);
    let completed = event("checkout.session.completed", session_object(&debit_session, &debit_id, 2000, "unpaid"));
    assert_eq!(
        deliver_signed(&app, &completed).await.expect(200).body["outcome"],
        "pending: waiting for the delayed payment"
    );
    let view = top_up_status(&app, &debit_id).await;
    assert_eq!((view["status"].as_str(), view["payment_processing"].as_bool()), (Some("pending"), Some(true)));

    // Past the payment window the worker expires the unpaid top-up, not the one being paid.
    app.clock.advance(chrono::Duration::hours(25));
    app.eventually("the worker expires the unpaid top-up", || async {
        top_up_status(&app, &unpaid_id).await["status"] == "expired"
    })
    .await;
    assert_eq!(top_up_status(&app, &debit_id).await["status"], "pending", "a payment on its way never expires");
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("0".into(), "20".into()));

    // Days later the bank debit clears: credited.
    app.clock.advance(chrono::Duration::days(3));
    let cleared =
        event("checkout.session.async_payment_succeeded", session_object(&debit_session, &debit_id, 2000, "paid"));
    assert_eq!(deliver_signed(&app, &cleared).await.expect(200).body["outcome"], "credited");
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("20".into(), "0".into()));

    // The expired top-up's payment arrives after all: credited once, announced once.
    let late =
        event("checkout.session.async_payment_succeeded", session_object(&unpaid_session, &unpaid_id, 500, "paid"));
    assert_eq!(
        deliver_signed(&app, &late).await.expect(200).body["outcome"],
        "credited: the payment came after the top-up had ended"
    );
    assert_eq!(deliver_signed(&app, &late).await.expect(200).body["outcome"], "ignored: already credited");
    let view = top_up_status(&app, &unpaid_id).await;
    assert_eq!(view["status"], "succeeded");
    assert!(view.get("failure_reason").is_none(), "{view}");
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("25".into(), "0".into()));
    assert_eq!(succeeded_events(&app), vec![debit_id.clone(), unpaid_id.clone()]);

    // A delayed payment that fails ends its top-up, even past its window.
    let failing = live_top_up(&app, &customer, "3", "USD").await.expect(201);
    let failing_id = failing.body["id"].as_str().unwrap().to_owned();
    let failing_session = top_up_reference(&app, &failing_id);
    deliver_signed(
        &app,
        &event("checkout.session.completed", session_object(&failing_session, &failing_id, 300, "unpaid")),
    )
    .await
    .expect(200);
    app.clock.advance(chrono::Duration::hours(30));
    let failed =
        event("checkout.session.async_payment_failed", session_object(&failing_session, &failing_id, 300, "unpaid"));
    assert_eq!(deliver_signed(&app, &failed).await.expect(200).body["outcome"], "failed");
    assert_eq!(top_up_status(&app, &failing_id).await["status"], "failed");
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("25".into(), "0".into()));
    app.assert_ledger_agrees().await;
}

async fn off_session_charges_succeed_or_decline(app: TestApp) {
    let fake = FakeStripe::start().await;
    let (app, state) = with_provider(app, fake.provider()).await;
    let provider = fake.provider();
    let charge = |method: &str| OffSessionCharge {
        top_up_id: format!("top_{method}"),
        amount: Decimal::from_str("25.50").unwrap(),
        currency: "EUR".into(),
        payment_method: method.to_owned(),
        provider_customer: Some("cus_test_saver".into()),
        description: "Auto top-up".into(),
    };
    let succeeded = provider.charge_off_session(&charge("pm_card_visa")).await.unwrap();
    let ChargeOutcome::Succeeded { reference } = &succeeded else { panic!("{succeeded:?}") };
    assert!(reference.starts_with("pi_test_"));
    let sent = fake.requests().pop().unwrap();
    assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/v1/payment_intents"));
    assert_eq!(sent.idempotency_key.as_deref(), Some("top_pm_card_visa"));
    assert_eq!(sent.field("amount"), "2550");
    assert_eq!(sent.field("currency"), "eur");
    assert_eq!(sent.field("customer"), "cus_test_saver");
    assert_eq!(sent.field("payment_method"), "pm_card_visa");
    assert_eq!((sent.field("off_session"), sent.field("confirm")), ("true", "true"));
    assert_eq!(sent.field("metadata[top_up_id]"), "top_pm_card_visa");
    // A retry with the same top-up is the same payment, not a second one.
    assert_eq!(provider.charge_off_session(&charge("pm_card_visa")).await.unwrap(), succeeded);

    assert_eq!(
        provider.charge_off_session(&charge(DECLINED_METHOD)).await.unwrap(),
        ChargeOutcome::Declined { reason: "Your card was declined.".into() }
    );
    let ChargeOutcome::Declined { reason } = provider.charge_off_session(&charge(AUTHENTICATION_METHOD)).await.unwrap()
    else {
        panic!("a card that needs authentication cannot be charged off-session")
    };
    assert!(reason.contains("requires authentication"), "{reason}");
    assert!(matches!(
        provider.charge_off_session(&charge(PROCESSING_METHOD)).await.unwrap(),
        ChargeOutcome::Processing { .. }
    ));
    let wrong_key = StripeProvider::new(StripeConfig {
        secret_key: "sk_test_wrong".into(),
        webhook_secret: WEBHOOK_SECRET.into(),
        api_base: fake.base.clone(),
        timeout: Duration::from_secs(5),
    });
    let refused = wrong_key.charge_off_session(&charge("pm_card_visa")).await.unwrap_err();
    assert!(matches!(&refused, PaymentError::Refused(message) if message.contains("Invalid API Key")), "{refused:?}");
    let mut precise = charge("pm_card_visa");
    precise.amount = Decimal::from_str("1.005").unwrap();
    assert!(matches!(provider.charge_off_session(&precise).await, Err(PaymentError::Refused(_))), "no rounding");

    // Processing off-session charges settle by the PaymentIntent's events, found by metadata.
    let customer = live_customer(&app, "Auto").await;
    let pending =
        tally_http::routes::topups::start(&state, Mode::Live, top_up_request(&customer, "6", false), app.base.clone())
            .await
            .unwrap();
    let intent = json!({"id": "pi_test_auto", "object": "payment_intent", "amount": 600, "currency": "usd",
                        "status": "succeeded", "payment_method": "pm_card_visa", "metadata": {"top_up_id": pending.id}});
    let paid = event("payment_intent.succeeded", intent);
    assert_eq!(deliver_signed(&app, &paid).await.expect(200).body["outcome"], "credited");
    assert_eq!(deliver_signed(&app, &paid).await.expect(200).body["outcome"], "ignored: already credited");
    let failing =
        tally_http::routes::topups::start(&state, Mode::Live, top_up_request(&customer, "8", false), app.base.clone())
            .await
            .unwrap();
    let intent = json!({"id": "pi_test_auto_2", "object": "payment_intent", "amount": 800, "currency": "usd",
                        "status": "requires_payment_method", "metadata": {"top_up_id": failing.id},
                        "last_payment_error": {"type": "card_error", "code": "card_declined", "message": "Your card has insufficient funds."}});
    assert_eq!(
        deliver_signed(&app, &event("payment_intent.payment_failed", intent)).await.expect(200).body["outcome"],
        "failed"
    );
    let view = top_up_status(&app, &failing.id).await;
    assert_eq!(
        (view["status"].as_str(), view["failure_reason"].as_str()),
        (Some("failed"), Some("Your card has insufficient funds."))
    );
    // A PaymentIntent without Tally's metadata (a Checkout Session's own) is left to its session.
    let foreign = json!({"id": "pi_other", "object": "payment_intent", "status": "succeeded", "metadata": {}});
    assert_eq!(
        deliver_signed(&app, &event("payment_intent.succeeded", foreign)).await.expect(200).body["outcome"],
        "ignored: no live Stripe top-up for this payment"
    );
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("6".into(), "0".into()));
    app.assert_ledger_agrees().await;
}

async fn stripe_down_fails_the_top_up_with_503(app: TestApp) {
    // A port nobody listens on, held bound (never listening) for the whole test: a port bound and
    // dropped could be taken meanwhile by another test's server, which would then answer.
    let dead_socket = tokio::net::TcpSocket::new_v4().unwrap();
    dead_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = format!("http://{}", dead_socket.local_addr().unwrap());
    let (app, _) = with_provider(app, provider_at(&dead)).await;
    let customer = live_customer(&app, "Unlucky").await;
    let reply = live_top_up(&app, &customer, "10", "USD").await.expect(503);
    assert_eq!(reply.content_type(), "application/problem+json");
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(detail.contains("could not start a checkout") && detail.contains("cannot reach Stripe"), "{detail}");
    let store = app.store.clone();
    let customer_id = customer.clone();
    let (top_ups, _) = tokio::task::spawn_blocking(move || {
        let page = tally_store::repo::Page { offset: 0, limit: 10 };
        store.read(move |conn| topup_repo::for_customer(conn, &customer_id, page)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(top_ups.len(), 1);
    assert_eq!(top_ups[0].status.as_str(), "failed");
    assert_eq!(top_ups[0].provider, "stripe");
    assert!(top_ups[0].failure_reason.as_deref().unwrap().contains("cannot reach Stripe"));
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("0".into(), "0".into()), "pending_in released");
    app.assert_ledger_agrees().await;
    drop(dead_socket);
}

async fn stripe_refusals_fail_the_top_up(app: TestApp) {
    let fake = FakeStripe::start().await;
    let (app, _) = with_provider(app, fake.provider()).await;
    let customer = live_customer(&app, "Small").await;
    // Under Stripe's minimum charge: Stripe's own words reach the caller.
    let reply = live_top_up(&app, &customer, "0.10", "USD").await.expect(503);
    assert!(reply.body["detail"].as_str().unwrap().contains("at least $0.50"), "{}", reply.body);
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("0".into(), "0".into()));
    app.assert_ledger_agrees().await;
}

/// A request in the live-mode billing portal: (status, body, Location).
async fn live_portal(
    app: &TestApp,
    cookie: &str,
    method: Method,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, String, Option<String>) {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut request = client.request(method.clone(), format!("{}{path}", app.base)).header("cookie", cookie);
    if method == Method::POST {
        request = request.form(form);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let location = response.headers().get("location").map(|value| value.to_str().unwrap().to_owned());
    (status, response.text().await.unwrap(), location)
}

async fn saved_cards_and_cancelled_checkouts_reach_stripe(app: TestApp) {
    let fake = FakeStripe::start().await;
    let (app, state) = with_provider(app, fake.provider()).await;
    let customer = live_customer(&app, "Saver").await;
    let started =
        tally_http::routes::topups::start(&state, Mode::Live, top_up_request(&customer, "20", true), app.base.clone())
            .await
            .expect("the checkout starts");
    let mut session = session_object(started.provider_reference.as_deref().unwrap(), &started.id, 2000, "paid");
    session["customer"] = json!("cus_test_saver");
    deliver_signed(&app, &event("checkout.session.completed", session)).await.expect(200);

    // The live-mode portal.
    let link = live(
        &app,
        Method::POST,
        "/billing-portal/sessions",
        Some(&json!({"customer_id": customer,
        "return_url": "https://platform.example/account", "failure_url": "https://platform.example/failed"})),
    )
    .await
    .expect(200);
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let entered = client.get(link.body["redirect_url"].as_str().unwrap()).send().await.unwrap();
    let cookie = entered.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let (status, page, _) = live_portal(&app, &cookie, Method::GET, "/portal/cards", &[]).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Visa ending 4242") && !page.contains("Test mode"), "{page}");
    let csrf = page.split(r#"name="csrf" value=""#).nth(1).unwrap()[..64].to_owned();
    let card = page.split(r#"data-card=""#).nth(1).unwrap().split('"').next().unwrap().to_owned();

    // Default: the Stripe customer's invoice_settings.default_payment_method.
    let (status, _, _) =
        live_portal(&app, &cookie, Method::POST, &format!("/portal/cards/{card}/default"), &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    let sent = fake.requests().pop().unwrap();
    assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/v1/customers/cus_test_saver"));
    assert_eq!(sent.field("invoice_settings[default_payment_method]"), SAVED_METHOD);
    assert_eq!(fake.state.defaults.lock().unwrap().get("cus_test_saver").map(String::as_str), Some(SAVED_METHOD));

    // A portal top-up, cancelled from the history: its Checkout Session is expired at Stripe.
    let (_, page, _) = live_portal(&app, &cookie, Method::GET, "/portal/top-ups", &[]).await;
    assert!(page.contains(r#"value="USD:USD""#), "{page}");
    let form = [("csrf", csrf.as_str()), ("option", "USD:USD"), ("amount", "12")];
    let (status, _, location) = live_portal(&app, &cookie, Method::POST, "/portal/top-ups", &form).await;
    assert_eq!(status, 303);
    assert!(location.unwrap().starts_with("https://checkout.stripe.com/"));
    let opened = fake.requests().pop().unwrap();
    assert!(!opened.has("payment_intent_data[setup_future_usage]"), "not ticked: the card is not saved");
    let store = app.store.clone();
    let id = customer.clone();
    let portal_top_up = tokio::task::spawn_blocking(move || {
        store
            .read(|conn| topup_repo::for_customer(conn, &id, tally_store::repo::Page { offset: 0, limit: 10 }))
            .unwrap()
            .0
    })
    .await
    .unwrap()
    .into_iter()
    .find(|top_up| top_up.origin == "portal")
    .unwrap();
    let session_id = portal_top_up.provider_reference.clone().unwrap();
    let (status, _, _) = live_portal(
        &app,
        &cookie,
        Method::POST,
        &format!("/portal/top-ups/{}/cancel", portal_top_up.id),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, 303);
    let sent = fake.requests().pop().unwrap();
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", &*format!("/v1/checkout/sessions/{session_id}/expire"))
    );
    assert_eq!(top_up_status(&app, &portal_top_up.id).await["status"], "expired");
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("20".into(), "0".into()));
    // Money Stripe reports received all the same is credited, once.
    let late = event("checkout.session.completed", session_object(&session_id, &portal_top_up.id, 1200, "paid"));
    deliver_signed(&app, &late).await.expect(200);
    deliver_signed(&app, &late).await.expect(200);
    assert_eq!(live_balances(&app, &customer, "default:USD").await, ("32".into(), "0".into()));

    // Removing the card detaches it at Stripe; it is gone from the portal and from auto top-up.
    let (status, _, _) =
        live_portal(&app, &cookie, Method::POST, &format!("/portal/cards/{card}/remove"), &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    let sent = fake.requests().pop().unwrap();
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", &*format!("/v1/payment_methods/{SAVED_METHOD}/detach"))
    );
    let (_, page, _) = live_portal(&app, &cookie, Method::GET, "/portal/cards", &[]).await;
    assert!(page.contains("No saved cards"), "{page}");
    // Were the detached method charged anyway, Stripe would refuse it.
    let charge = OffSessionCharge {
        top_up_id: "top_detached".into(),
        amount: Decimal::from(5),
        currency: "USD".into(),
        payment_method: SAVED_METHOD.into(),
        provider_customer: Some("cus_test_saver".into()),
        description: "after removal".into(),
    };
    assert!(fake.provider().charge_off_session(&charge).await.is_err(), "a detached card cannot be charged");
    app.assert_ledger_agrees().await;
}

/// The live portal's cookie and CSRF token for `customer`.
async fn enter_live_portal(app: &TestApp, customer: &str) -> (String, String) {
    let link = live(
        app,
        Method::POST,
        "/billing-portal/sessions",
        Some(&json!({"customer_id": customer,
        "return_url": "https://platform.example/account", "failure_url": "https://platform.example/failed"})),
    )
    .await
    .expect(200);
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let entered = client.get(link.body["redirect_url"].as_str().unwrap()).send().await.unwrap();
    let cookie = entered.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let (status, page, _) = live_portal(app, &cookie, Method::GET, "/portal/cards/new", &[]).await;
    assert_eq!(status, 200, "{page}");
    let csrf = page.split(r#"name="csrf" value=""#).nth(1).unwrap()[..64].to_owned();
    (cookie, csrf)
}

/// "Add a card" in the live portal: opens a setup-mode Checkout Session at the fake and
/// returns it, as created (what Stripe's `checkout.session.completed` carries).
async fn add_live_card(app: &TestApp, fake: &FakeStripe, cookie: &str, csrf: &str) -> Value {
    let (status, _, location) = live_portal(app, cookie, Method::POST, "/portal/cards/new", &[("csrf", csrf)]).await;
    assert_eq!(status, 303);
    let location = location.unwrap();
    let session_id = location.split("/c/pay/").nth(1).unwrap().split('#').next().unwrap().to_owned();
    assert!(location.starts_with("https://checkout.stripe.com/c/pay/cs_test_"), "{location}");
    let mut session = fake.state.setup_sessions.lock().unwrap().get(&session_id).cloned().expect("a setup session");
    session["status"] = json!("complete");
    session
}

async fn live_cards(app: &TestApp, customer: &str) -> Vec<topup_repo::PaymentMethod> {
    let (store, id) = (app.store.clone(), customer.to_owned());
    tokio::task::spawn_blocking(move || store.read(move |conn| topup_repo::payment_methods(conn, &id)).unwrap())
        .await
        .unwrap()
}

async fn live_cards_are_added_without_paying(app: TestApp) {
    let fake = FakeStripe::start().await;
    let (app, state) = with_provider(app, fake.provider()).await;
    let customer = live_customer(&app, "Adder").await;
    let (cookie, csrf) = enter_live_portal(&app, &customer).await;
    let (status, page, _) = live_portal(&app, &cookie, Method::GET, "/portal/cards/new", &[]).await;
    assert_eq!(status, 200);
    assert!(page.contains("nothing is charged") && !page.contains("card_number"), "no card number field: {page}");

    // The first card: a Stripe customer is created for it, then the setup-mode session.
    let session = add_live_card(&app, &fake, &cookie, &csrf).await;
    let requests = fake.requests();
    let [created, opened] = &requests[requests.len() - 2..] else { unreachable!() };
    assert_eq!((created.method.as_str(), created.path.as_str()), ("POST", "/v1/customers"));
    assert_eq!((created.field("email"), created.field("metadata[customer_id]")), ("buyer@example.com", &*customer));
    let stripe_customer = session["customer"].as_str().unwrap().to_owned();
    assert!(stripe_customer.starts_with("cus_test_"));
    assert_eq!((opened.method.as_str(), opened.path.as_str()), ("POST", "/v1/checkout/sessions"));
    assert_eq!(opened.field("mode"), "setup");
    assert_eq!(opened.field("customer"), stripe_customer);
    assert_eq!(opened.field("payment_method_types[]"), "card");
    assert!(opened.field("success_url").ends_with("/portal/cards?added=1"), "{:?}", opened.form);
    assert!(opened.field("cancel_url").ends_with("/portal/cards"), "{:?}", opened.form);
    assert!(!opened.has("line_items[0][price_data][unit_amount]") && !opened.has("amount"), "nothing to pay");
    assert_eq!(opened.authorization.as_deref(), Some("Bearer sk_test_tally_fake"));
    assert!(live_cards(&app, &customer).await.is_empty(), "saved only when Stripe says the card was set up");

    // Stripe's event: Tally reads the SetupIntent, then the card, saves it, and makes it the
    // default at Stripe too (the customer's first card).
    let completed = event("checkout.session.completed", session.clone());
    assert_eq!(deliver_signed(&app, &completed).await.expect(200).body["outcome"], "card saved");
    let setup_intent = session["setup_intent"].as_str().unwrap();
    let requests = fake.requests();
    let calls: Vec<(&str, &str)> =
        requests[requests.len() - 3..].iter().map(|sent| (sent.method.as_str(), sent.path.as_str())).collect();
    let cards = live_cards(&app, &customer).await;
    assert_eq!(cards.len(), 1, "{cards:#?}");
    let card = &cards[0];
    assert_eq!(
        calls,
        [
            ("GET", &*format!("/v1/setup_intents/{setup_intent}")),
            ("GET", &*format!("/v1/payment_methods/{}", card.provider_reference)),
            ("POST", &*format!("/v1/customers/{stripe_customer}")),
        ]
    );
    assert!(card.provider_reference.starts_with("pm_1Setup"));
    assert_eq!(
        (card.provider.as_str(), card.provider_customer.as_deref(), card.brand.as_deref(), card.last4.as_deref()),
        ("stripe", Some(stripe_customer.as_str()), Some("mastercard"), Some("4444"))
    );
    assert_eq!(card.expiry, Some(topup_repo::CardExpiry { month: 8, year: 2031 }));
    assert_eq!(fake.state.defaults.lock().unwrap().get(&stripe_customer), Some(&card.provider_reference));
    let (_, page, _) = live_portal(&app, &cookie, Method::GET, "/portal/cards?added=1", &[]).await;
    assert!(
        page.contains("Mastercard ending 4444") && page.contains(r#"<span class="badge">Default</span>"#),
        "{page}"
    );
    assert!(page.contains("Expires 08/2031"), "the card's expiry, as Stripe reports it: {page}");

    // Stripe delivers again: the card is saved once.
    assert_eq!(
        deliver_signed(&app, &completed).await.expect(200).body["outcome"],
        "ignored: the card is already saved"
    );
    assert_eq!(live_cards(&app, &customer).await.len(), 1);
    // A setup for a customer Tally does not have is answered 200 (a retry would not find it
    // either) and saves nothing; a test-mode one is not Stripe's to touch.
    for (key, value, outcome) in [
        ("customer_id", "cust_nobody", "ignored: no such customer"),
        ("tally_mode", "test", "ignored: the card setup names no live customer"),
    ] {
        let mut stray = session.clone();
        stray["metadata"][key] = json!(value);
        let reply = deliver_signed(&app, &event("checkout.session.completed", stray)).await.expect(200);
        assert_eq!(reply.body["outcome"], outcome);
    }
    assert_eq!(live_cards(&app, &customer).await.len(), 1);

    // A second card goes on the same Stripe customer and does not take the default.
    let second = add_live_card(&app, &fake, &cookie, &csrf).await;
    assert_eq!(second["customer"].as_str(), Some(stripe_customer.as_str()), "the Stripe customer is reused");
    assert_eq!(fake.requests().iter().filter(|sent| sent.path == "/v1/customers").count(), 1, "one Stripe customer");
    let before = fake.requests().len();
    deliver_signed(&app, &event("checkout.session.completed", second)).await.expect(200);
    assert!(fake.requests()[before..].iter().all(|sent| sent.method == "GET"), "the default stays the first card");
    let cards = live_cards(&app, &customer).await;
    assert_eq!(cards.len(), 2);
    assert_eq!(cards[0].id, card.id, "the first card stays the default (listed first)");

    // Auto top-up charges the default card off-session: the fake sees the PaymentIntent.
    let started =
        tally_http::routes::topups::start(&state, Mode::Live, top_up_request(&customer, "20", false), app.base.clone())
            .await
            .unwrap();
    let paid = session_object(started.provider_reference.as_deref().unwrap(), &started.id, 2000, "paid");
    deliver_signed(&app, &event("checkout.session.completed", paid)).await.expect(200);
    assert_eq!(live_cards(&app, &customer).await.len(), 2, "a top-up that does not save the card saves none");
    let settings = tally_store::ops::auto_top_up::Settings {
        key: tally_store::repo::wallets::AccountKey {
            customer_id: customer.clone(),
            name: "default".into(),
            asset: "USD".into(),
        },
        enabled: true,
        threshold: Decimal::from(25),
        amount: Decimal::from(10),
        currency: AssetCode::parse("USD").unwrap(),
        payment_method_id: Some(card.id.clone()),
    };
    let (store, now) = (app.store.clone(), app.clock.now());
    tokio::task::spawn_blocking(move || {
        store.write(|conn| tally_store::ops::auto_top_up::configure(conn, Mode::Live, &settings, now)).unwrap()
    })
    .await
    .unwrap();
    tally_http::auto_top_up::run_due(&app.store, &state.providers, Duration::from_secs(86_400), app.clock.now())
        .await
        .unwrap();
    app.eventually("the auto top-up credits 10 USD", || async {
        live_balances(&app, &customer, "default:USD").await == ("30".into(), "0".into())
    })
    .await;
    let charges: Vec<Recorded> = fake
        .requests()
        .into_iter()
        .filter(|sent| sent.method == "POST" && sent.path == "/v1/payment_intents")
        .collect();
    assert_eq!(charges.len(), 1, "{charges:#?}");
    assert_eq!(charges[0].field("payment_method"), card.provider_reference);
    assert_eq!(charges[0].field("customer"), stripe_customer);
    assert_eq!((charges[0].field("off_session"), charges[0].field("amount")), ("true", "1000"));
    app.assert_ledger_agrees().await;
}

on_both_backends!(
    live_cards_are_added_without_paying,
    saved_cards_and_cancelled_checkouts_reach_stripe,
    checkout_sessions_open_and_webhooks_credit_once,
    paid_sessions_save_the_card_for_auto_top_up,
    forged_and_stale_webhooks_change_nothing,
    expired_and_failed_sessions_release_pending_in,
    delayed_payments_are_always_credited,
    off_session_charges_succeed_or_decline,
    stripe_down_fails_the_top_up_with_503,
    stripe_refusals_fail_the_top_up,
);
