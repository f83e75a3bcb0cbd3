//! Wallets, accounts, adjustments, charges, grants and transactions: every wallet endpoint
//! and error class, burn order, overdraft, grants that start and expire by themselves, exact
//! decimals, idempotency (also under concurrency), and the ledger agreeing after each test.

use crate::harness::{body, Reply, TestApp};
use crate::on_both_backends;
use chrono::{DateTime, Duration, Months, SecondsFormat, Utc};
use reqwest::Method;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Helpers.

fn adjustments(customer: &str) -> String {
    format!("/customers/{customer}/wallet/adjustments")
}

fn charges(customer: &str) -> String {
    format!("/customers/{customer}/wallet/charges")
}

/// An instant `offset` from now, as the API writes instants.
fn from_now(offset: Duration) -> String {
    (Utc::now() + offset).to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn instant(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("not an instant: {value}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// Posts an adjustment given as JSON text (so that decimals stay exact).
async fn adjust(app: &TestApp, customer: &str, json_text: &str) -> Reply {
    app.post(&adjustments(customer), body(json_text)).await
}

async fn charge(app: &TestApp, customer: &str, json_text: &str) -> Reply {
    app.post(&charges(customer), body(json_text)).await
}

fn replayed(reply: &Reply) -> &str {
    reply.headers.get("idempotent-replayed").and_then(|value| value.to_str().ok()).unwrap_or("(missing)")
}

async fn available(app: &TestApp, customer: &str, account: &str) -> String {
    app.balances(customer, account).await.0
}

/// The account's grants (newest first) for a query string such as `?purpose=paid`.
async fn grants(app: &TestApp, customer: &str, account: &str, query: &str) -> Vec<Value> {
    let reply = app.get(&format!("/customers/{customer}/wallet/{account}/grants{query}")).await.expect(200);
    reply.body["items"].as_array().unwrap().clone()
}

/// The grant amounts a listing returns, in order, as exact decimal text.
async fn grant_amounts(app: &TestApp, customer: &str, account: &str, query: &str) -> Vec<String> {
    grants(app, customer, account, query).await.iter().map(|grant| grant["amount"].to_string()).collect()
}

/// What remains `available` of each grant, keyed by the grant's original amount (each test
/// gives its grants distinct amounts).
async fn grant_remainders(app: &TestApp, customer: &str, account: &str) -> Vec<(String, String)> {
    let mut listed: Vec<(String, String)> = grants(app, customer, account, "?limit=100")
        .await
        .iter()
        .map(|grant| (grant["amount"].to_string(), grant["available"].to_string()))
        .collect();
    listed.sort();
    listed
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut expected: Vec<(String, String)> =
        expected.iter().map(|(amount, left)| (amount.to_string(), left.to_string())).collect();
    expected.sort();
    expected
}

/// The ids of an account's transactions as listed (newest first).
async fn transaction_ids(app: &TestApp, customer: &str, account: &str, query: &str) -> Vec<String> {
    let reply = app.get(&format!("/customers/{customer}/wallet/{account}/transactions{query}")).await.expect(200);
    reply.body["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_owned()).collect()
}

/// The account as stored, read straight from the database without the settling a read over
/// HTTP does first: (available, pending_in), or `None` before the account exists.
async fn stored_balances(app: &TestApp, customer: &str, name: &str, asset: &str) -> Option<(String, String)> {
    let store = app.store.clone();
    let key = tally_store::repo::wallets::AccountKey {
        customer_id: customer.to_owned(),
        name: name.to_owned(),
        asset: asset.to_owned(),
    };
    tokio::task::spawn_blocking(move || store.read(|conn| tally_store::repo::wallets::get(conn, &key)).unwrap())
        .await
        .unwrap()
        .map(|account| {
            (account.state.available.normalize().to_string(), account.state.pending_in.normalize().to_string())
        })
}

/// How far [`wait_for_worker`] moves the server's clock: past the starts and expiries the
/// tests set a few minutes ahead ([`SOON`]), short of those set days ahead.
const WORKER_STEP_MINUTES: i64 = 60;
/// A start or expiry the worker reaches when [`wait_for_worker`] moves the clock on: far
/// enough ahead that no test step runs into it first, however slow the machine.
const SOON: Duration = Duration::minutes(10);

/// Moves the server's clock on by [`WORKER_STEP_MINUTES`], then waits, without touching the
/// API, until the background worker has stored `expected`.
async fn wait_for_worker(app: &TestApp, customer: &str, name: &str, asset: &str, expected: (&str, &str)) {
    app.clock.advance(Duration::minutes(WORKER_STEP_MINUTES));
    let expected = Some((expected.0.to_owned(), expected.1.to_owned()));
    let what = format!("the worker settles {name}:{asset} by itself to {expected:?}");
    app.eventually(&what, || async { stored_balances(app, customer, name, asset).await == expected }).await;
}

// ---------------------------------------------------------------------------------------
// Reading wallets and accounts.

async fn wallet_and_account_reads(app: TestApp) {
    let customer = app.customer("Ada").await;
    let empty = app.get(&format!("/customers/{customer}/wallet")).await.expect(200);
    assert_eq!(empty.body, json!({"accounts": []}));
    app.get(&format!("/customers/{customer}/wallet/default:USD")).await.expect(404);
    app.get("/customers/cust_missing/wallet").await.expect(404);
    app.get("/customers/cust_missing/wallet/default:USD").await.expect(404);

    app.fund(&customer, "USD", "12.5", "fund-1").await;
    let wallet = app.get(&format!("/customers/{customer}/wallet")).await.expect(200);
    assert_eq!(wallet.body["accounts"].as_array().unwrap().len(), 1);
    let account = &wallet.body["accounts"][0];
    assert_eq!(account["id"], "default:USD");
    assert_eq!(account["name"], "default");
    assert_eq!(account["asset"], "USD");
    assert_eq!(account["available"].to_string(), "12.5");
    assert_eq!(account["pending_in"].to_string(), "0");
    assert_eq!(account["pending_out"].to_string(), "0");

    // Account ids match case-insensitively; a bare asset code means the default account.
    for spelling in ["default:USD", "default:usd", "DEFAULT:usd", "Default:Usd", "USD", "usd"] {
        let reply = app.get(&format!("/customers/{customer}/wallet/{spelling}")).await.expect(200);
        assert_eq!(reply.body["id"], "default:USD", "{spelling}");
        assert_eq!(reply.body["available"].to_string(), "12.5", "{spelling}");
        assert_eq!(reply.body["pending_in"].to_string(), "0");
        assert_eq!(reply.body["pending_out"].to_string(), "0");
    }
    for missing in ["default:EUR", "savings:USD", "EUR", "bad%20name:USD", "default:1X", "a:b:c"] {
        let reply = app.get(&format!("/customers/{customer}/wallet/{missing}")).await.expect(404);
        assert_eq!(reply.content_type(), "application/problem+json", "{missing}");
    }

    // A live key sees nothing of test data, on the same paths; no key is a 401.
    for path in [
        "wallet",
        "wallet/default:USD",
        "wallet/default:USD/grants",
        "wallet/default:USD/transactions",
        "wallet/transactions/fund-1",
    ] {
        app.call(Method::GET, &format!("/customers/{customer}/{path}"), Some(&app.live_key), None).await.expect(404);
    }
    let credit = body(r#"{"transaction_id":"live-1","asset":"USD","amount":1,"reason":"gift"}"#);
    app.call(Method::POST, &adjustments(&customer), Some(&app.live_key), Some(&credit)).await.expect(404);
    let debit = body(r#"{"transaction_id":"live-2","asset":"USD","amount":1}"#);
    app.call(Method::POST, &charges(&customer), Some(&app.live_key), Some(&debit)).await.expect(404);
    app.call(Method::GET, &format!("/customers/{customer}/wallet"), None, None).await.expect(401);
    app.call(Method::POST, &adjustments(&customer), None, Some(&credit)).await.expect(401);

    // A live customer's wallet is separate, and invisible to the test key.
    let live_customer = app
        .call(Method::POST, "/customers", Some(&app.live_key), Some(&json!({"name": "Live"})))
        .await
        .expect(201)
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.call(Method::POST, &adjustments(&live_customer), Some(&app.live_key), Some(&credit)).await.expect(201);
    let live_account = app
        .call(Method::GET, &format!("/customers/{live_customer}/wallet/USD"), Some(&app.live_key), None)
        .await
        .expect(200);
    assert_eq!(live_account.body["available"].to_string(), "1");
    app.get(&format!("/customers/{live_customer}/wallet")).await.expect(404);
    assert_eq!(available(&app, &customer, "USD").await, "12.5");
    app.assert_ledger_agrees().await;
}

// ---------------------------------------------------------------------------------------
// Adjustments.

async fn adjustment_reasons_and_sign_rules(app: TestApp) {
    let customer = app.customer("Reasons").await;
    let accepted = [
        ("a-gift", "gift", "5"),
        ("a-topup", "external_topup", "20"),
        ("a-other-credit", "other", "3"),
        ("a-other-debit", "other", "-2"),
        ("a-refund", "external_refund", "-4"),
    ];
    for (id, reason, amount) in accepted {
        let reply = adjust(
            &app,
            &customer,
            &format!(r#"{{"transaction_id":"{id}","asset":"USD","amount":{amount},"reason":"{reason}"}}"#),
        )
        .await
        .expect(201);
        let fields: Vec<&String> = reply.body.as_object().unwrap().keys().collect();
        assert_eq!(fields, ["id", "created_at"], "the answer is exactly {{id, created_at}}");
        assert_eq!(reply.body["id"], id);
        instant(&reply.body["created_at"]);
        assert_eq!(replayed(&reply), "false");
        let transaction = app.get(&format!("/customers/{customer}/wallet/transactions/{id}")).await.expect(200);
        assert_eq!(transaction.body["type"], "adjustment");
        assert_eq!(transaction.body["amount"].to_string(), amount);
        assert_eq!(transaction.body["details"]["reason"], reason);
    }
    // Credits make grants: external top-ups are paid, gifts and other credits promotion. The
    // `other` debit burned promotion credit, oldest first among grants that never expire; the
    // refund gave back paid credit.
    assert_eq!(available(&app, &customer, "USD").await, "22");
    let listed = grants(&app, &customer, "USD", "").await;
    let purposes: Vec<(&str, String, String)> = listed
        .iter()
        .map(|grant| (grant["purpose"].as_str().unwrap(), grant["amount"].to_string(), grant["available"].to_string()))
        .collect();
    assert_eq!(
        purposes,
        [
            ("promotion", "3".to_owned(), "3".to_owned()),
            ("paid", "20".to_owned(), "16".to_owned()),
            ("promotion", "5".to_owned(), "3".to_owned()),
        ]
    );

    // Each refusal names its field, and nothing is stored.
    let refused: [(&str, &str); 14] = [
        (r#""amount":-5,"reason":"gift""#, "amount"),
        (r#""amount":-5,"reason":"external_topup""#, "amount"),
        (r#""amount":5,"reason":"external_refund""#, "amount"),
        (r#""amount":0,"reason":"other""#, "amount"),
        (r#""amount":1.0000000000001,"reason":"gift""#, "amount"),
        (r#""amount":1000000000000000,"reason":"gift""#, "amount"),
        (r#""amount":"ten","reason":"gift""#, "amount"),
        (r#""amount":5,"reason":"bonus""#, "reason"),
        (r#""amount":-5,"reason":"other","expires_at":"2099-01-01T00:00:00Z""#, "expires_at"),
        (r#""amount":-5,"reason":"other","effective_at":"2099-01-01T00:00:00Z""#, "effective_at"),
        (r#""amount":5,"reason":"gift","expires_at":"2020-01-01T00:00:00Z""#, "expires_at"),
        (
            r#""amount":5,"reason":"gift","effective_at":"2099-01-02T00:00:00Z","expires_at":"2099-01-01T00:00:00Z""#,
            "expires_at",
        ),
        (r#""amount":5,"reason":"gift","expires_at":"yesterday""#, "expires_at"),
        (r#""amount":5,"reason":"gift","account_name":"no spaces please""#, "account_name"),
    ];
    for (index, (fields, field)) in refused.iter().enumerate() {
        let reply = adjust(&app, &customer, &format!(r#"{{"transaction_id":"bad-{index}","asset":"USD",{fields}}}"#))
            .await
            .expect(422);
        assert_eq!(reply.content_type(), "application/problem+json");
        assert!(reply.body["errors"][field].is_array(), "expected an error on {field} for {fields}: {}", reply.body);
        app.get(&format!("/customers/{customer}/wallet/transactions/bad-{index}")).await.expect(404);
    }
    for (id, problem) in [("tally_mine", "reserved prefix"), ("has space", "space"), ("", "empty")] {
        let reply = adjust(
            &app,
            &customer,
            &format!(r#"{{"transaction_id":"{id}","asset":"USD","amount":1,"reason":"gift"}}"#),
        )
        .await
        .expect(422);
        assert!(reply.body["errors"]["transaction_id"].is_array(), "{problem}: {}", reply.body);
    }
    adjust(&app, &customer, r#"{"asset":"USD","amount":1,"reason":"gift"}"#).await.expect(422);
    app.raw(Method::POST, &adjustments(&customer), r#"{"transaction_id": "x", "#).await.expect(400);
    app.raw(Method::POST, &adjustments(&customer), "").await.expect(400);

    assert_eq!(available(&app, &customer, "USD").await, "22");
    assert_eq!(transaction_ids(&app, &customer, "USD", "").await.len(), 5);
    assert_eq!(grants(&app, &customer, "USD", "").await.len(), 3);
    app.assert_ledger_agrees().await;
}

async fn adjustments_and_charges_are_idempotent(app: TestApp) {
    let customer = app.customer("Replays").await;
    let request = r#"{"transaction_id":"topup-1","asset":"USD","amount":10.50,"reason":"external_topup","description":"Card payment","metadata":{"order":"42"}}"#;
    let first = adjust(&app, &customer, request).await.expect(201);
    assert_eq!(replayed(&first), "false");
    let again = adjust(&app, &customer, request).await.expect(201);
    assert_eq!(replayed(&again), "true");
    assert_eq!(again.text, first.text, "a replay answers exactly what the first call answered");
    // The same amount written differently is the same request.
    let same_amount = request.replace("10.50", "10.5");
    let third = adjust(&app, &customer, &same_amount).await.expect(201);
    assert_eq!((replayed(&third), third.text.as_str()), ("true", first.text.as_str()));
    assert_eq!(available(&app, &customer, "USD").await, "10.5", "replays move nothing");

    // The same id with a different body is a conflict.
    for different in [
        request.replace("10.50", "11"),
        request.replace("external_topup", "gift"),
        request.replace("Card payment", "Bank transfer"),
        request.replace(r#""42""#, r#""43""#),
        request.replace(r#""asset":"USD""#, r#""asset":"EUR""#),
        request.replace(r#""reason""#, r#""account_name":"savings","reason""#),
        request.replace(r#""reason""#, r#""expires_at":"2099-01-01T00:00:00Z","reason""#),
    ] {
        let reply = adjust(&app, &customer, &different).await.expect(409);
        assert_eq!(reply.content_type(), "application/problem+json");
        assert!(reply.body["detail"].as_str().unwrap().contains("topup-1"), "{}", reply.body);
    }
    charge(&app, &customer, r#"{"transaction_id":"topup-1","asset":"USD","amount":1}"#).await.expect(409);

    // Charges replay the same way.
    let charge_request = r#"{"transaction_id":"charge-1","asset":"USD","amount":2.25,"subject":"video-7"}"#;
    let charged = charge(&app, &customer, charge_request).await.expect(201);
    assert_eq!(replayed(&charged), "false");
    assert_eq!(charged.body["id"], "charge-1");
    let charged_again = charge(&app, &customer, charge_request).await.expect(201);
    assert_eq!((replayed(&charged_again), charged_again.text.as_str()), ("true", charged.text.as_str()));
    charge(&app, &customer, &charge_request.replace("2.25", "2.5")).await.expect(409);
    charge(&app, &customer, &charge_request.replace("video-7", "video-8")).await.expect(409);
    adjust(&app, &customer, r#"{"transaction_id":"charge-1","asset":"USD","amount":-2.25,"reason":"other"}"#)
        .await
        .expect(409);
    assert_eq!(available(&app, &customer, "USD").await, "8.25");
    assert_eq!(transaction_ids(&app, &customer, "USD", "").await, ["charge-1", "topup-1"]);

    // Unknown customers are 404; unknown assets 422, and neither stores anything.
    let unknown_customer = adjust(&app, "cust_missing", request).await.expect(404);
    assert_eq!(unknown_customer.content_type(), "application/problem+json");
    charge(&app, "cust_missing", charge_request).await.expect(404);
    for asset in ["XYZ", "NOPE", "1X"] {
        let reply = adjust(
            &app,
            &customer,
            &format!(r#"{{"transaction_id":"asset-{asset}","asset":"{asset}","amount":1,"reason":"gift"}}"#),
        )
        .await
        .expect(422);
        assert!(reply.body["errors"]["asset"].is_array(), "{}", reply.body);
        let reply =
            charge(&app, &customer, &format!(r#"{{"transaction_id":"c-{asset}","asset":"{asset}","amount":1}}"#))
                .await
                .expect(422);
        assert!(reply.body["errors"]["asset"].is_array(), "{}", reply.body);
    }
    // A refused request does not use up its id.
    adjust(&app, &customer, r#"{"transaction_id":"asset-XYZ","asset":"USD","amount":1,"reason":"gift"}"#)
        .await
        .expect(201);
    assert_eq!(available(&app, &customer, "USD").await, "9.25");
    let wallet = app.get(&format!("/customers/{customer}/wallet")).await.expect(200);
    assert_eq!(wallet.body["accounts"].as_array().unwrap().len(), 1, "refused requests open no accounts");
    app.assert_ledger_agrees().await;
}

async fn custom_assets_and_named_accounts(app: TestApp) {
    app.post(
        "/assets",
        body(r#"{"code":"VIDGENMIN","name":"Video Generation Minutes","precision":2,"symbol":"⏰","label":"MIN","rates":[{"source":"USD","rate":0.1}]}"#),
    )
    .await
    .expect(201);
    let customer = app.customer("Named").await;
    adjust(&app, &customer, r#"{"transaction_id":"m-1","asset":"vidgenmin","amount":100,"reason":"gift"}"#)
        .await
        .expect(201);
    adjust(
        &app,
        &customer,
        r#"{"transaction_id":"m-2","account_name":"Bonus","asset":"VIDGENMIN","amount":30,"reason":"gift"}"#,
    )
    .await
    .expect(201);
    app.fund(&customer, "USD", "10", "m-3").await;

    let wallet = app.get(&format!("/customers/{customer}/wallet")).await.expect(200);
    let mut ids: Vec<&str> =
        wallet.body["accounts"].as_array().unwrap().iter().map(|account| account["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["bonus:VIDGENMIN", "default:USD", "default:VIDGENMIN"]);
    for (spelling, expected) in [("bonus:vidgenmin", "30"), ("BONUS:VIDGENMIN", "30"), ("VIDGENMIN", "100")] {
        let reply = app.get(&format!("/customers/{customer}/wallet/{spelling}")).await.expect(200);
        assert_eq!(reply.body["available"].to_string(), expected, "{spelling}");
    }
    app.get(&format!("/customers/{customer}/wallet/bonus:USD")).await.expect(404);

    // A charge draws only from the account it names.
    charge(&app, &customer, r#"{"transaction_id":"m-4","account_name":"bonus","asset":"VIDGENMIN","amount":12.5}"#)
        .await
        .expect(201);
    assert_eq!(available(&app, &customer, "bonus:VIDGENMIN").await, "17.5");
    assert_eq!(available(&app, &customer, "default:VIDGENMIN").await, "100");
    assert_eq!(available(&app, &customer, "USD").await, "10");
    let transaction = app.get(&format!("/customers/{customer}/wallet/transactions/m-4")).await.expect(200);
    assert_eq!(transaction.body["account_id"], "bonus:VIDGENMIN");
    assert_eq!(transaction.body["asset"], "VIDGENMIN");
    assert_eq!(transaction.body["type"], "fee");
    assert_eq!(grant_amounts(&app, &customer, "bonus:VIDGENMIN", "").await, ["30"]);
    assert_eq!(grant_amounts(&app, &customer, "VIDGENMIN", "").await, ["100"]);
    assert_eq!(transaction_ids(&app, &customer, "bonus:vidgenmin", "").await, ["m-4", "m-2"]);
    assert_eq!(transaction_ids(&app, &customer, "VIDGENMIN", "").await, ["m-1"]);
    app.assert_ledger_agrees().await;
}

// ---------------------------------------------------------------------------------------
// Grants that start and expire by themselves.

async fn future_grants_start_by_themselves(app: TestApp) {
    let customer = app.customer("Later").await;
    let starts = from_now(SOON);
    adjust(
        &app,
        &customer,
        &format!(r#"{{"transaction_id":"later","asset":"USD","amount":10,"reason":"gift","effective_at":"{starts}"}}"#),
    )
    .await
    .expect(201);
    assert_eq!(app.balances(&customer, "USD").await, ("0".into(), "10".into(), "0".into()));
    let pending = grants(&app, &customer, "USD", "").await;
    assert_eq!(pending[0]["status"], "pending");
    assert_eq!(pending[0]["available"].to_string(), "0");
    assert_eq!(pending[0]["pending_in"].to_string(), "10");
    assert_eq!(instant(&pending[0]["effective_at"]), instant(&Value::String(starts.clone())));

    // Nothing pending can be spent: a charge now overdraws the account.
    charge(&app, &customer, r#"{"transaction_id":"early-charge","asset":"USD","amount":3}"#).await.expect(201);
    assert_eq!(app.balances(&customer, "USD").await, ("-3".into(), "10".into(), "0".into()));

    // The worker starts the grant at its instant with nobody reading, and the grant repays
    // the overdraft first.
    wait_for_worker(&app, &customer, "default", "USD", ("7", "0")).await;
    assert_eq!(app.balances(&customer, "USD").await, ("7".into(), "0".into(), "0".into()));
    let started = grants(&app, &customer, "USD", "").await;
    assert_eq!(started[0]["status"], "active");
    assert_eq!(started[0]["available"].to_string(), "7");
    assert_eq!(started[0]["pending_in"].to_string(), "0");
    app.assert_ledger_agrees().await;
}

async fn expiry_takes_the_remainder_by_itself(app: TestApp) {
    let customer = app.customer("Expiring").await;
    let expires = from_now(SOON);
    adjust(
        &app,
        &customer,
        &format!(r#"{{"transaction_id":"short","asset":"USD","amount":10,"reason":"gift","expires_at":"{expires}"}}"#),
    )
    .await
    .expect(201);
    app.fund(&customer, "USD", "5", "paid").await;
    charge(&app, &customer, r#"{"transaction_id":"use","asset":"USD","amount":3}"#).await.expect(201);
    assert_eq!(grant_remainders(&app, &customer, "USD").await, pairs(&[("10", "7"), ("5", "5")]));
    assert_eq!(available(&app, &customer, "USD").await, "12");

    wait_for_worker(&app, &customer, "default", "USD", ("5", "0")).await;
    assert_eq!(available(&app, &customer, "USD").await, "5");
    let ids = transaction_ids(&app, &customer, "USD", "").await;
    assert_eq!(ids.len(), 4);
    assert_eq!(&ids[1..], ["use", "paid", "short"]);
    assert!(ids[0].starts_with("tally_expiry_grt_"), "{ids:?}");
    let expiry = app.get(&format!("/customers/{customer}/wallet/transactions/{}", ids[0])).await.expect(200);
    assert_eq!(expiry.body["type"], "expiry");
    assert_eq!(expiry.body["amount"].to_string(), "-7");
    assert_eq!(expiry.body["account_id"], "default:USD");
    assert_eq!(instant(&expiry.body["created_at"]), instant(&Value::String(expires.clone())));
    let expired = grants(&app, &customer, "USD", "?purpose=promotion").await;
    assert_eq!(expired[0]["status"], "expired");
    assert_eq!(expired[0]["available"].to_string(), "0");
    assert_eq!(grant_amounts(&app, &customer, "USD", "?exclude_expired=true").await, ["5"]);

    // Later debits find only what is left.
    charge(&app, &customer, r#"{"transaction_id":"after","asset":"USD","amount":6}"#).await.expect(201);
    assert_eq!(available(&app, &customer, "USD").await, "-1");
    app.assert_ledger_agrees().await;
}

async fn paid_grants_expire_after_a_year_by_default(app: TestApp) {
    let customer = app.customer("Paid").await;
    app.fund(&customer, "USD", "1", "paid-now").await;
    let starts_later = from_now(Duration::days(10));
    let chosen_expiry = from_now(Duration::days(30));
    for request in [
        format!(
            r#"{{"transaction_id":"paid-later","asset":"USD","amount":2,"reason":"external_topup","effective_at":"{starts_later}"}}"#
        ),
        format!(
            r#"{{"transaction_id":"paid-chosen","asset":"USD","amount":3,"reason":"external_topup","expires_at":"{chosen_expiry}"}}"#
        ),
        r#"{"transaction_id":"gift","asset":"USD","amount":4,"reason":"gift"}"#.to_owned(),
        r#"{"transaction_id":"other","asset":"USD","amount":5,"reason":"other"}"#.to_owned(),
    ] {
        adjust(&app, &customer, &request).await.expect(201);
    }
    let listed = grants(&app, &customer, "USD", "").await;
    let by_amount = |amount: &str| {
        let amount: Value = body(amount);
        listed.iter().find(|grant| grant["amount"] == amount).unwrap().clone()
    };
    for amount in ["1", "2"] {
        let grant = by_amount(amount);
        assert_eq!(grant["purpose"], "paid");
        let effective = instant(&grant["effective_at"]);
        assert_eq!(instant(&grant["expires_at"]), effective.checked_add_months(Months::new(12)).unwrap(), "{grant}");
    }
    assert_eq!(instant(&by_amount("2")["effective_at"]), instant(&Value::String(starts_later)));
    assert_eq!(instant(&by_amount("3")["expires_at"]), instant(&Value::String(chosen_expiry)));
    for amount in ["4", "5"] {
        let grant = by_amount(amount);
        assert_eq!(grant["purpose"], "promotion");
        assert!(grant["expires_at"].is_null(), "promotions do not expire unless told: {grant}");
    }
    app.assert_ledger_agrees().await;
}

// ---------------------------------------------------------------------------------------
// Charges, burn order, overdraft and exact amounts.

async fn charges_by_amount_units_and_volume(app: TestApp) {
    let customer = app.customer("Charged").await;
    app.fund(&customer, "USD", "100", "fund").await;
    let accepted = [
        (r#""amount":2.5"#, "-2.5"),
        (r#""input_units":3,"unit_price":0.25"#, "-0.75"),
        // A started package is a package: 2,500 tokens at 0.01 per 1,000 are 3 packages.
        (r#""input_volume":2500,"volume_rate":0.01,"package_size":1000"#, "-0.03"),
        (r#""input_volume":2000,"volume_rate":0.01,"package_size":1000"#, "-0.02"),
        (r#""input_volume":2001,"volume_rate":0.01,"package_size":1000"#, "-0.03"),
        (r#""input_volume":1500,"volume_rate":0.002"#, "-3"),
        (r#""input_units":4,"unit_price":0.5,"amount":2"#, "-2"),
        (r#""input_units":1,"unit_price":2,"input_volume":10,"volume_rate":0.1"#, "-3"),
        (r#""input_units":3,"unit_price":0.333333"#, "-0.999999"),
    ];
    for (index, (fields, amount)) in accepted.iter().enumerate() {
        let id = format!("charge-{index}");
        charge(&app, &customer, &format!(r#"{{"transaction_id":"{id}","asset":"USD",{fields}}}"#)).await.expect(201);
        let transaction = app.get(&format!("/customers/{customer}/wallet/transactions/{id}")).await.expect(200);
        assert_eq!(transaction.body["type"], "fee");
        assert_eq!(transaction.body["amount"].to_string(), *amount, "{fields}");
    }
    // 100 - (2.5 + 0.75 + 0.03 + 0.02 + 0.03 + 3 + 2 + 3 + 0.999999)
    assert_eq!(available(&app, &customer, "USD").await, "87.670001");
    let detailed = app.get(&format!("/customers/{customer}/wallet/transactions/charge-2")).await.expect(200);
    assert_eq!(detailed.body["details"]["input_volume"].to_string(), "2500");
    assert_eq!(detailed.body["details"]["volume_rate"].to_string(), "0.01");
    assert_eq!(detailed.body["details"]["package_size"].to_string(), "1000");

    let refused = [
        (r#""amount":1,"input_units":3,"unit_price":0.25"#, "amount"),
        (r#""subject":"nothing to charge""#, "amount"),
        (r#""input_units":3"#, "amount"),
        (r#""input_volume":10,"volume_rate":1,"package_size":0"#, "package_size"),
        (r#""package_size":10"#, "amount"),
        (r#""amount":-1"#, "amount"),
        (r#""amount":0"#, "amount"),
        (r#""input_units":2,"unit_price":-1"#, "unit_price"),
        (r#""amount":0.0000000000001"#, "amount"),
    ];
    for (index, (fields, field)) in refused.iter().enumerate() {
        let reply =
            charge(&app, &customer, &format!(r#"{{"transaction_id":"refused-{index}","asset":"USD",{fields}}}"#))
                .await
                .expect(422);
        assert!(reply.body["errors"][field].is_array(), "expected an error on {field} for {fields}: {}", reply.body);
    }
    assert_eq!(available(&app, &customer, "USD").await, "87.670001", "refused charges take nothing");
    assert_eq!(transaction_ids(&app, &customer, "USD", "?limit=100").await.len(), accepted.len() + 1);

    // A charge on an account that never had credit opens it, overdrawn.
    charge(&app, &customer, r#"{"transaction_id":"eur","asset":"EUR","amount":1.5}"#).await.expect(201);
    assert_eq!(available(&app, &customer, "EUR").await, "-1.5");
    app.assert_ledger_agrees().await;
}

async fn burn_order_promotion_then_paid_soonest_expiry_first(app: TestApp) {
    let customer = app.customer("Burner").await;
    let in_days = |days: i64| from_now(Duration::days(days));
    let credits = [
        r#""amount":10,"reason":"external_topup""#.to_owned(),
        format!(r#""amount":11,"reason":"external_topup","expires_at":"{}""#, in_days(30)),
        r#""amount":12,"reason":"gift""#.to_owned(),
        format!(r#""amount":13,"reason":"gift","expires_at":"{}""#, in_days(10)),
        format!(r#""amount":14,"reason":"other","expires_at":"{}""#, in_days(20)),
        r#""amount":15,"reason":"gift""#.to_owned(),
    ];
    for (index, fields) in credits.iter().enumerate() {
        adjust(&app, &customer, &format!(r#"{{"transaction_id":"credit-{index}","asset":"USD",{fields}}}"#))
            .await
            .expect(201);
    }
    let steps: [(&str, [(&str, &str); 6]); 4] = [
        // Promotions first, soonest expiry first, one charge spanning two grants.
        ("20", [("10", "10"), ("11", "11"), ("12", "12"), ("13", "0"), ("14", "7"), ("15", "15")]),
        // Then promotions that never expire, oldest first.
        ("10", [("10", "10"), ("11", "11"), ("12", "9"), ("13", "0"), ("14", "0"), ("15", "15")]),
        ("20", [("10", "10"), ("11", "11"), ("12", "0"), ("13", "0"), ("14", "0"), ("15", "4")]),
        // Then paid credit, the grant expiring in 30 days before the one-year default.
        ("16", [("10", "9"), ("11", "0"), ("12", "0"), ("13", "0"), ("14", "0"), ("15", "0")]),
    ];
    for (index, (amount, expected)) in steps.iter().enumerate() {
        charge(&app, &customer, &format!(r#"{{"transaction_id":"burn-{index}","asset":"USD","amount":{amount}}}"#))
            .await
            .expect(201);
        assert_eq!(grant_remainders(&app, &customer, "USD").await, pairs(expected), "after charging {amount}");
    }
    assert_eq!(available(&app, &customer, "USD").await, "9");
    let statuses: Vec<String> = grants(&app, &customer, "USD", "")
        .await
        .iter()
        .map(|grant| grant["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["depleted", "depleted", "depleted", "depleted", "depleted", "active"]);
    app.assert_ledger_agrees().await;
}

async fn overdraft_and_repayment(app: TestApp) {
    let customer = app.customer("Overdrawn").await;
    app.fund(&customer, "USD", "5", "fund").await;
    charge(&app, &customer, r#"{"transaction_id":"big","asset":"USD","amount":8}"#).await.expect(201);
    assert_eq!(available(&app, &customer, "USD").await, "-3");
    assert_eq!(grant_remainders(&app, &customer, "USD").await, pairs(&[("5", "0")]));
    adjust(&app, &customer, r#"{"transaction_id":"fee","asset":"USD","amount":-1.25,"reason":"other"}"#)
        .await
        .expect(201);
    assert_eq!(available(&app, &customer, "USD").await, "-4.25");

    // A credit repays the negative part first; only the rest stays on its grant.
    app.fund(&customer, "USD", "10", "repay").await;
    assert_eq!(available(&app, &customer, "USD").await, "5.75");
    assert_eq!(grant_remainders(&app, &customer, "USD").await, pairs(&[("5", "0"), ("10", "5.75")]));

    // A credit smaller than the debt is used up entirely.
    charge(&app, &customer, r#"{"transaction_id":"bigger","asset":"USD","amount":20}"#).await.expect(201);
    adjust(&app, &customer, r#"{"transaction_id":"small","asset":"USD","amount":4,"reason":"gift"}"#).await.expect(201);
    assert_eq!(available(&app, &customer, "USD").await, "-10.25");
    assert_eq!(grant_remainders(&app, &customer, "USD").await, pairs(&[("5", "0"), ("10", "0"), ("4", "0")]));
    app.fund(&customer, "USD", "10.25", "exact").await;
    assert_eq!(app.balances(&customer, "USD").await, ("0".into(), "0".into(), "0".into()));
    app.assert_ledger_agrees().await;
}

async fn exact_decimals(app: TestApp) {
    let customer = app.customer("Exact").await;
    app.fund(&customer, "USD", "20", "fund").await;
    charge(&app, &customer, r#"{"transaction_id":"fine","asset":"USD","amount":5.433322}"#).await.expect(201);
    let account = app.get(&format!("/customers/{customer}/wallet/default:USD")).await.expect(200);
    assert_eq!(account.body["available"].to_string(), "14.566678");
    assert!(account.text.contains(r#""available":14.566678"#), "a JSON number, not a string: {}", account.text);
    let fine = app.get(&format!("/customers/{customer}/wallet/transactions/fine")).await.expect(200);
    assert_eq!(fine.body["amount"].to_string(), "-5.433322");
    assert_eq!(grant_remainders(&app, &customer, "USD").await, pairs(&[("20", "14.566678")]));

    // Twelve decimal places are kept exactly, and sums never pass through a float.
    adjust(&app, &customer, r#"{"transaction_id":"tiny","asset":"USD","amount":0.000000000001,"reason":"gift"}"#)
        .await
        .expect(201);
    assert_eq!(available(&app, &customer, "USD").await, "14.566678000001");
    for index in 0..3 {
        charge(&app, &customer, &format!(r#"{{"transaction_id":"tenth-{index}","asset":"USD","amount":0.1}}"#))
            .await
            .expect(201);
    }
    assert_eq!(available(&app, &customer, "USD").await, "14.266678000001");
    adjust(&app, &customer, r#"{"transaction_id":"big","asset":"USD","amount":1000000000000000.01,"reason":"gift"}"#)
        .await
        .expect(422);
    adjust(
        &app,
        &customer,
        r#"{"transaction_id":"big","asset":"USD","amount":99999999999999.999999999999,"reason":"gift"}"#,
    )
    .await
    .expect(201);
    assert_eq!(available(&app, &customer, "USD").await, "100000000000014.266678");
    app.assert_ledger_agrees().await;
}

// ---------------------------------------------------------------------------------------
// Transactions and grants listings.

async fn transactions_get_and_list_newest_first(app: TestApp) {
    let customer = app.customer("History").await;
    adjust(
        &app,
        &customer,
        r#"{"transaction_id":"t1","asset":"USD","amount":10,"reason":"external_topup","description":"Card payment","metadata":{"order":"42"}}"#,
    )
    .await
    .expect(201);
    charge(
        &app,
        &customer,
        r#"{"transaction_id":"t2","asset":"USD","input_units":4,"unit_price":0.5,"subject":"video-1","description":"Rendering","metadata":{"job":"j-9"}}"#,
    )
    .await
    .expect(201);
    adjust(&app, &customer, r#"{"transaction_id":"t3","asset":"USD","amount":-1,"reason":"external_refund"}"#)
        .await
        .expect(201);
    adjust(
        &app,
        &customer,
        r#"{"transaction_id":"s1","account_name":"savings","asset":"USD","amount":7,"reason":"gift"}"#,
    )
    .await
    .expect(201);
    charge(&app, &customer, r#"{"transaction_id":"t4","asset":"USD","amount":0.5}"#).await.expect(201);

    let t1 = app.get(&format!("/customers/{customer}/wallet/transactions/t1")).await.expect(200);
    assert_eq!(t1.body["id"], "t1");
    assert_eq!(t1.body["type"], "adjustment");
    assert_eq!(t1.body["account_id"], "default:USD");
    assert_eq!(t1.body["asset"], "USD");
    assert_eq!(t1.body["amount"].to_string(), "10");
    assert_eq!(t1.body["description"], "Card payment");
    assert_eq!(t1.body["metadata"], json!({"order": "42"}));
    assert_eq!(t1.body["details"]["reason"], "external_topup");
    assert_eq!(instant(&t1.body["executed_at"]), instant(&t1.body["created_at"]));
    let t2 = app.get(&format!("/customers/{customer}/wallet/transactions/t2")).await.expect(200);
    assert_eq!(t2.body["type"], "fee");
    assert_eq!(t2.body["amount"].to_string(), "-2");
    assert_eq!(t2.body["description"], "Rendering");
    assert_eq!(t2.body["metadata"], json!({"job": "j-9"}));
    assert_eq!(t2.body["details"]["subject"], "video-1");
    assert_eq!(t2.body["details"]["input_units"].to_string(), "4");
    assert_eq!(t2.body["details"]["unit_price"].to_string(), "0.5");
    let s1 = app.get(&format!("/customers/{customer}/wallet/transactions/s1")).await.expect(200);
    assert_eq!(s1.body["account_id"], "savings:USD");
    app.get(&format!("/customers/{customer}/wallet/transactions/missing")).await.expect(404);
    app.get("/customers/cust_missing/wallet/transactions/t1").await.expect(404);
    let other = app.customer("Other").await;
    app.get(&format!("/customers/{other}/wallet/transactions/t1")).await.expect(404);

    // Each account lists its own transactions, newest first, in pages.
    assert_eq!(transaction_ids(&app, &customer, "default:USD", "").await, ["t4", "t3", "t2", "t1"]);
    assert_eq!(transaction_ids(&app, &customer, "usd", "").await, ["t4", "t3", "t2", "t1"]);
    assert_eq!(transaction_ids(&app, &customer, "savings:usd", "").await, ["s1"]);
    let page = app.get(&format!("/customers/{customer}/wallet/USD/transactions?limit=2")).await.expect(200);
    assert_eq!(
        (page.body["total_count"].as_i64(), page.body["limit"].as_i64(), page.body["offset"].as_i64()),
        (Some(4), Some(2), Some(0))
    );
    assert_eq!(transaction_ids(&app, &customer, "USD", "?limit=2").await, ["t4", "t3"]);
    assert_eq!(transaction_ids(&app, &customer, "USD", "?limit=2&offset=2").await, ["t2", "t1"]);
    assert!(transaction_ids(&app, &customer, "USD", "?offset=4").await.is_empty());
    // An account that does not exist is a 404 here, as when reading it.
    app.get(&format!("/customers/{customer}/wallet/EUR/transactions")).await.expect(404);
    for bad in ["?limit=0", "?limit=101", "?offset=-1", "?limit=x"] {
        app.get(&format!("/customers/{customer}/wallet/USD/transactions{bad}")).await.expect(422);
    }
    app.get("/customers/cust_missing/wallet/USD/transactions").await.expect(404);
    app.get(&format!("/customers/{customer}/wallet/no%20such/transactions")).await.expect(404);
    app.assert_ledger_agrees().await;
}

async fn grant_filters(app: TestApp) {
    let customer = app.customer("Filters").await;
    app.fund(&customer, "USD", "10", "paid").await;
    let expires = from_now(SOON);
    adjust(
        &app,
        &customer,
        &format!(r#"{{"transaction_id":"short","asset":"USD","amount":20,"reason":"gift","expires_at":"{expires}"}}"#),
    )
    .await
    .expect(201);
    let starts = from_now(Duration::days(10));
    adjust(
        &app,
        &customer,
        &format!(r#"{{"transaction_id":"later","asset":"USD","amount":30,"reason":"gift","effective_at":"{starts}"}}"#),
    )
    .await
    .expect(201);
    wait_for_worker(&app, &customer, "default", "USD", ("10", "30")).await;

    let all = grants(&app, &customer, "USD", "").await;
    assert_eq!(all.len(), 3);
    let first = &all[0];
    assert!(first["id"].as_str().unwrap().starts_with("grt_"));
    for field in ["id", "purpose", "status", "amount", "available", "effective_at", "created_at"] {
        assert!(!first[field].is_null(), "{field} is missing: {first}");
    }
    let in_one_day = from_now(Duration::days(1));
    let in_half_a_year = from_now(Duration::days(180));
    let yesterday = from_now(Duration::days(-1));
    let cases: [(String, &[&str]); 14] = [
        (String::new(), &["30", "20", "10"]),
        ("?purpose=paid".into(), &["10"]),
        ("?purpose=promotion".into(), &["30", "20"]),
        ("?purpose=bundled".into(), &[]),
        ("?exclude_expired=true".into(), &["30", "10"]),
        ("?exclude_expired=false".into(), &["30", "20", "10"]),
        ("?purpose=promotion&exclude_expired=true".into(), &["30"]),
        (format!("?effective_from={in_one_day}"), &["30"]),
        (format!("?effective_to={in_one_day}"), &["20", "10"]),
        (format!("?effective_from={yesterday}&effective_to={in_one_day}"), &["20", "10"]),
        (format!("?expired_from={in_half_a_year}"), &["10"]),
        (format!("?expired_to={in_one_day}"), &["20"]),
        (format!("?expired_from={yesterday}&expired_to={in_one_day}"), &["20"]),
        ("?expired_from=2020-01-01&purpose=promotion".into(), &["20"]),
    ];
    for (query, expected) in cases {
        assert_eq!(grant_amounts(&app, &customer, "USD", &query).await, expected, "{query}");
    }

    // Paging.
    let page = app.get(&format!("/customers/{customer}/wallet/USD/grants?limit=1&offset=1")).await.expect(200);
    assert_eq!(page.body["total_count"], 3);
    assert_eq!((page.body["limit"].as_i64(), page.body["offset"].as_i64()), (Some(1), Some(1)));
    assert_eq!(page.body["items"][0]["amount"].to_string(), "20");

    for bad in [
        "?purpose=free",
        "?exclude_expired=maybe",
        "?effective_from=soon",
        "?expired_to=13-13-13",
        "?limit=0",
        "?offset=-2",
    ] {
        let reply = app.get(&format!("/customers/{customer}/wallet/USD/grants{bad}")).await.expect(422);
        assert!(reply.body["errors"].is_object(), "{bad}: {}", reply.body);
    }
    app.get("/customers/cust_missing/wallet/USD/grants").await.expect(404);
    app.get(&format!("/customers/{customer}/wallet/EUR/grants")).await.expect(404);
    app.assert_ledger_agrees().await;
}

// ---------------------------------------------------------------------------------------
// Concurrency.

async fn concurrent_identical_adjustments_move_the_balance_once(app: TestApp) {
    let customer = app.customer("Racer").await;
    for round in 0..5 {
        let request = body(&format!(
            r#"{{"transaction_id":"race-{round}","asset":"USD","amount":10.01,"reason":"external_topup"}}"#
        ));
        let path = adjustments(&customer);
        let (first, second, third) =
            tokio::join!(app.post(&path, request.clone()), app.post(&path, request.clone()), app.post(&path, request));
        let replies = [first.expect(201), second.expect(201), third.expect(201)];
        let fresh = replies.iter().filter(|reply| replayed(reply) == "false").count();
        assert_eq!(fresh, 1, "exactly one call made the transaction in round {round}");
        assert!(replies.iter().all(|reply| reply.text == replies[0].text), "every call answers the same");
    }
    assert_eq!(available(&app, &customer, "USD").await, "50.05");
    assert_eq!(transaction_ids(&app, &customer, "USD", "").await.len(), 5);
    assert_eq!(grants(&app, &customer, "USD", "").await.len(), 5);

    // The same for charges.
    let request = body(r#"{"transaction_id":"charge-race","asset":"USD","amount":0.05}"#);
    let path = charges(&customer);
    let (first, second) = tokio::join!(app.post(&path, request.clone()), app.post(&path, request));
    let (first, second) = (first.expect(201), second.expect(201));
    let mut flags = [replayed(&first), replayed(&second)];
    flags.sort();
    assert_eq!(flags, ["false", "true"]);
    assert_eq!(available(&app, &customer, "USD").await, "50");
    app.assert_ledger_agrees().await;
}

async fn concurrent_different_charges_all_land(app: TestApp) {
    let customer = app.customer("Busy").await;
    app.fund(&customer, "USD", "100", "fund").await;
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..24 {
        let client = app.client.clone();
        let url = format!("{}{}", app.base, charges(&customer));
        let key = app.test_key.clone();
        tasks.spawn(async move {
            let amount = if index % 2 == 0 { "1.25" } else { "0.333333" };
            client
                .post(url)
                .header("X-CREDYT-API-KEY", key)
                .header("content-type", "application/json")
                .body(format!(r#"{{"transaction_id":"parallel-{index}","asset":"USD","amount":{amount}}}"#))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    // Credits racing the charges land too.
    for index in 0..4 {
        let client = app.client.clone();
        let url = format!("{}{}", app.base, adjustments(&customer));
        let key = app.test_key.clone();
        tasks.spawn(async move {
            client
                .post(url)
                .header("X-CREDYT-API-KEY", key)
                .header("content-type", "application/json")
                .body(format!(r#"{{"transaction_id":"gift-{index}","asset":"USD","amount":2.5,"reason":"gift"}}"#))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 201);
    }
    // 100 + 4 × 2.5 − 12 × 1.25 − 12 × 0.333333
    assert_eq!(available(&app, &customer, "USD").await, "91.000004");
    assert_eq!(transaction_ids(&app, &customer, "USD", "?limit=100").await.len(), 29);
    let remaining: rust_decimal::Decimal = grants(&app, &customer, "USD", "?limit=100")
        .await
        .iter()
        .map(|grant| grant["available"].to_string().parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    assert_eq!(remaining.normalize().to_string(), "91.000004");
    app.assert_ledger_agrees().await;
}

/// The ledger check itself can fail: a balance changed behind the ledger's back is reported.
/// The change is rolled back, so the books agree again afterwards.
async fn ledger_verify_catches_a_tampered_balance(app: TestApp) {
    let customer = app.customer("Tampered").await;
    app.fund(&customer, "USD", "3", "fund").await;
    app.assert_ledger_agrees().await;
    let store = app.store.clone();
    let problems = tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        let rolled_back = store.write(|conn| {
            conn.execute(
                "UPDATE wallet_accounts SET available = '4' WHERE customer_id = $1",
                tally_store::params![&customer],
            )?;
            problems = tally_store::ops::ledger::verify(conn)?.problems;
            Err::<(), _>(tally_store::StoreError::Conflict("roll the tampering back".into()))
        });
        assert!(rolled_back.is_err());
        problems
    })
    .await
    .unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("available is 4 but the ledger says 3"), "{problems:?}");
    app.assert_ledger_agrees().await;
}

/// Refunds give back what the customer paid: paid credit first, the newest paid grant first,
/// and promotional credit only once no paid credit is left.
async fn refunds_take_paid_credit_newest_first_before_promotion(app: TestApp) {
    let customer = app.customer("Refunded").await;
    for (id, reason, amount) in
        [("gift", "gift", "5"), ("paid-old", "external_topup", "10"), ("paid-new", "external_topup", "20")]
    {
        adjust(
            &app,
            &customer,
            &format!(r#"{{"transaction_id":"{id}","asset":"USD","amount":{amount},"reason":"{reason}"}}"#),
        )
        .await
        .expect(201);
    }
    adjust(&app, &customer, r#"{"transaction_id":"refund-1","asset":"USD","amount":-15,"reason":"external_refund"}"#)
        .await
        .expect(201);
    assert_eq!(
        grant_remainders(&app, &customer, "USD").await,
        [("10".to_owned(), "10".to_owned()), ("20".to_owned(), "5".to_owned()), ("5".to_owned(), "5".to_owned())],
        "the newest payment is refunded first; the gift is untouched"
    );
    adjust(&app, &customer, r#"{"transaction_id":"refund-2","asset":"USD","amount":-12,"reason":"external_refund"}"#)
        .await
        .expect(201);
    assert_eq!(
        grant_remainders(&app, &customer, "USD").await,
        [("10".to_owned(), "3".to_owned()), ("20".to_owned(), "0".to_owned()), ("5".to_owned(), "5".to_owned())],
        "promotional credit stays while paid credit remains"
    );
    // Past the paid credit: the promotion, then overdraft.
    adjust(&app, &customer, r#"{"transaction_id":"refund-3","asset":"USD","amount":-10,"reason":"external_refund"}"#)
        .await
        .expect(201);
    assert_eq!(
        grant_remainders(&app, &customer, "USD").await,
        [("10".to_owned(), "0".to_owned()), ("20".to_owned(), "0".to_owned()), ("5".to_owned(), "0".to_owned())]
    );
    assert_eq!(available(&app, &customer, "USD").await, "-2");
    // Usage still burns promotion first: a debit is not a refund.
    adjust(&app, &customer, r#"{"transaction_id":"gift-2","asset":"USD","amount":4,"reason":"gift"}"#)
        .await
        .expect(201);
    adjust(&app, &customer, r#"{"transaction_id":"paid-3","asset":"USD","amount":6,"reason":"external_topup"}"#)
        .await
        .expect(201);
    charge(&app, &customer, r#"{"transaction_id":"use-1","asset":"USD","amount":1}"#).await.expect(201);
    let remainders = grant_remainders(&app, &customer, "USD").await;
    assert!(
        remainders.contains(&("4".to_owned(), "1".to_owned())),
        "the gift repaid the debt (2) and paid for usage: {remainders:?}"
    );
    assert!(remainders.contains(&("6".to_owned(), "6".to_owned())), "{remainders:?}");
    app.assert_ledger_agrees().await;
}

on_both_backends!(
    refunds_take_paid_credit_newest_first_before_promotion,
    wallet_and_account_reads,
    adjustment_reasons_and_sign_rules,
    adjustments_and_charges_are_idempotent,
    custom_assets_and_named_accounts,
    future_grants_start_by_themselves,
    expiry_takes_the_remainder_by_itself,
    paid_grants_expire_after_a_year_by_default,
    charges_by_amount_units_and_volume,
    burn_order_promotion_then_paid_soonest_expiry_first,
    overdraft_and_repayment,
    exact_decimals,
    transactions_get_and_list_newest_first,
    grant_filters,
    concurrent_identical_adjustments_move_the_balance_once,
    concurrent_different_charges_all_land,
    ledger_verify_catches_a_tampered_balance,
);
