//! The billing portal: its single-use links, sessions scoped to one customer, CSRF-protected
//! forms, the live quote and auto top-up, over HTTP on both backends; then the whole portal in
//! a real headless Chromium (`browser`), with a screenshot of every page.

use crate::harness::{body, test_webhook_config, Backend, TestApp, TestDatabase};
use crate::on_both_backends;
use chrono::{DateTime, Datelike, Duration, Utc};
use reqwest::redirect::Policy;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use tally_core::Mode;
use tally_http::auto_top_up::PassTime;
use tally_http::payments::{
    BoxFuture, ChargeOutcome, Checkout, CheckoutRequest, OffSessionCharge, PaymentError, PaymentProvider, Providers,
};
use tally_store::ops::auto_top_up::{self as auto_ops, Settings};
use tally_store::ops::portal as portal_ops;
use tally_store::repo::topups::{self as topup_repo, PaymentMethod};
use tally_store::repo::wallets::AccountKey;
use tally_store::repo::{auto_top_ups, job_retries};

const VIDMIN: &str = r#"{"code":"VIDMIN","name":"Video minutes","precision":2,"label":"video minutes","symbol":"⏰","rates":[{"source":"USD","rate":0.10}]}"#;

/// A product billing 2 video minutes per generated clip.
const GLITCH_VIDEO: &str = r#"{
  "name": "Glitch Video", "code": "glitch_video",
  "prices": [{
    "name": "Video generation", "type": "usage_based", "billing_model": { "type": "real_time" },
    "usage_calculation": { "event_type": "video_generated", "usage_type": "unit" },
    "pricing": [ { "asset": "VIDMIN", "values": [ { "unit_price": 2 } ] } ]
  }],
  "publish": true
}"#;

const RETURN_URL: &str = "https://platform.example/account";
const FAILURE_URL: &str = "https://platform.example/portal-failed";

/// Makes the asset and product once per app.
async fn catalog(app: &TestApp) {
    app.post("/assets", body(VIDMIN)).await.expect(201);
    app.post("/products", body(GLITCH_VIDEO)).await.expect(201);
}

/// A subscribed customer holding `minutes` video minutes (a gift).
async fn customer_with_minutes(app: &TestApp, name: &str, minutes: &str) -> String {
    let created = app
        .post("/customers", json!({"name": name, "subscriptions": [{"products": [{"code": "glitch_video"}]}]}))
        .await
        .expect(201);
    let customer = created.body["id"].as_str().unwrap().to_owned();
    let adjustment = body(&format!(
        r#"{{"transaction_id":"gift-{customer}","asset":"VIDMIN","amount":{minutes},"reason":"gift","description":"Welcome minutes"}}"#
    ));
    app.post(&format!("/customers/{customer}/wallet/adjustments"), adjustment).await.expect(201);
    customer
}

/// Sends `count` clip events (2 video minutes each), occurring now by the server's clock.
async fn generate_clips(app: &TestApp, customer: &str, prefix: &str, count: usize) {
    let now = app.clock.now().to_rfc3339();
    let events: Vec<Value> = (0..count)
        .map(|index| {
            json!({"id": format!("{prefix}-{index}"), "event_type": "video_generated", "occurred_at": now,
                   "subject": "clip-maker", "description": "Generated 4-second video clip"})
        })
        .collect();
    app.post("/events", json!({"customer_id": customer, "events": events})).await.expect(204);
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

/// Asks for a portal link for `customer`; returns its URL.
async fn portal_link(app: &TestApp, customer: &str) -> String {
    let reply = app
        .post(
            "/billing-portal/sessions",
            json!({"customer_id": customer, "return_url": RETURN_URL, "failure_url": FAILURE_URL}),
        )
        .await
        .expect(200);
    reply.body["redirect_url"].as_str().unwrap().to_owned()
}

/// Opens a link without following redirects: (status, Location, Set-Cookie).
async fn open_link(url: &str) -> (u16, Option<String>, Option<String>, String) {
    let response = no_redirects().get(url).send().await.unwrap();
    let header = |name: &str| response.headers().get(name).map(|value| value.to_str().unwrap().to_owned());
    let (location, cookie) = (header("location"), header("set-cookie"));
    let status = response.status().as_u16();
    (status, location, cookie, response.text().await.unwrap())
}

/// Opens a fresh portal link for `customer` and returns the session's `Cookie` header value.
async fn portal_cookie(app: &TestApp, customer: &str) -> String {
    let (status, location, cookie, _) = open_link(&portal_link(app, customer).await).await;
    assert_eq!((status, location.as_deref()), (303, Some("/portal")));
    cookie.unwrap().split(';').next().unwrap().to_owned()
}

/// A portal request with `cookie`: (status, body, headers).
async fn portal(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> (u16, String, reqwest::header::HeaderMap) {
    let mut request = no_redirects().request(method.clone(), format!("{}{path}", app.base));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    if method == Method::POST {
        request = request.form(form);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, response.text().await.unwrap(), headers)
}

/// The CSRF token a portal page's forms carry.
fn csrf_of(page: &str) -> String {
    let start = page.find(r#"name="csrf" value=""#).expect("the page has a form with a CSRF token") + 19;
    page[start..start + 64].to_owned()
}

async fn portal_link_opens_once_with_a_scoped_cookie(app: TestApp) {
    catalog(&app).await;
    let customer = customer_with_minutes(&app, "Ada", "20").await;
    let before = app.clock.now();
    let reply = app
        .post(
            "/billing-portal/sessions",
            json!({"customer_id": customer, "return_url": RETURN_URL, "failure_url": FAILURE_URL}),
        )
        .await
        .expect(200);
    let url = reply.body["redirect_url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("{}/portal/enter?token=", app.base)), "{url}");
    let expires_at: DateTime<Utc> = reply.body["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(expires_at >= before + Duration::minutes(10) - Duration::seconds(1), "valid for ten minutes");
    assert!(expires_at <= app.clock.now() + Duration::minutes(10));

    let (status, location, cookie, _) = open_link(&url).await;
    assert_eq!((status, location.as_deref()), (303, Some("/portal")));
    let cookie = cookie.expect("the first use sets the session cookie");
    for attribute in ["tally_portal=", "HttpOnly", "SameSite=Lax", "Path=/portal"] {
        assert!(cookie.contains(attribute), "{attribute} missing from {cookie}");
    }
    assert!(!cookie.contains("Secure"), "Secure only when Tally's public URL is https: {cookie}");
    let cookie = cookie.split(';').next().unwrap().to_owned();

    let (status, page, headers) = portal(&app, Method::GET, "/portal", Some(&cookie), &[]).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Video minutes") && page.contains("20.00"), "{page}");
    assert!(page.contains(RETURN_URL), "a way back to the platform");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert_eq!(headers["cache-control"], "no-store");

    // Replay: the link worked once; now it lands on the failure URL and sets nothing.
    let (status, location, cookie_again, _) = open_link(&url).await;
    assert_eq!((status, location.as_deref(), cookie_again), (303, Some(&*format!("{FAILURE_URL}?reason=used")), None));
    // Forged: no link is known, so there is no failure URL to trust: a plain page.
    let forged = format!("{}/portal/enter?token={}", app.base, "ab".repeat(32));
    let (status, location, _, page) = open_link(&forged).await;
    assert_eq!((status, location), (403, None));
    assert!(page.contains("This link is not valid"), "{page}");
    let (status, _, _, _) = open_link(&format!("{}/portal/enter?token=%3Cscript%3E", app.base)).await;
    assert_eq!(status, 403);
    // No cookie, no portal.
    let (status, page, _) = portal(&app, Method::GET, "/portal", None, &[]).await;
    assert_eq!(status, 401);
    assert!(page.contains("Your session has ended"), "{page}");
    let (status, _, _) =
        portal(&app, Method::GET, "/portal", Some(&format!("tally_portal={}", "cd".repeat(32))), &[]).await;
    assert_eq!(status, 401, "a made-up session token opens nothing");

    // Bad requests for links.
    let bad = app
        .post(
            "/billing-portal/sessions",
            json!({"customer_id": customer, "return_url": "javascript:alert(1)", "failure_url": FAILURE_URL}),
        )
        .await
        .expect(422);
    assert!(bad.body["errors"]["return_url"].is_array());
    app.post(
        "/billing-portal/sessions",
        json!({"customer_id": "cust_nobody", "return_url": RETURN_URL, "failure_url": FAILURE_URL}),
    )
    .await
    .expect(422);
    let live = json!({"customer_id": customer, "return_url": RETURN_URL, "failure_url": FAILURE_URL});
    app.call(Method::POST, "/billing-portal/sessions", Some(&app.live_key), Some(&live)).await.expect(422);
    app.call(Method::POST, "/billing-portal/sessions", None, Some(&live)).await.expect(401);
}

async fn expired_links_land_on_the_failure_url(app: TestApp) {
    catalog(&app).await;
    let customer = customer_with_minutes(&app, "Ada", "20").await;
    let store = app.store.clone();
    let id = customer.clone();
    // A link made eleven minutes ago has expired.
    let made_at = app.clock.now() - Duration::minutes(11);
    let old = tokio::task::spawn_blocking(move || {
        store.write(|conn| portal_ops::create_link(conn, Mode::Test, &id, RETURN_URL, FAILURE_URL, made_at)).unwrap()
    })
    .await
    .unwrap();
    let (status, location, cookie, _) = open_link(&format!("{}/portal/enter?token={}", app.base, old.token)).await;
    assert_eq!((status, location.as_deref(), cookie), (303, Some(&*format!("{FAILURE_URL}?reason=expired")), None));

    // At the boundary: good one second before ten minutes, gone at ten.
    let store = app.store.clone();
    let id = customer.clone();
    let made_at = app.clock.now();
    tokio::task::spawn_blocking(move || {
        let link = store
            .write(|conn| portal_ops::create_link(conn, Mode::Test, &id, RETURN_URL, FAILURE_URL, made_at))
            .unwrap();
        assert_eq!(link.expires_at, made_at + Duration::minutes(10));
        let at_expiry = store.write(|conn| portal_ops::enter(conn, &link.token, link.expires_at)).unwrap();
        assert_eq!(at_expiry, Err(portal_ops::Refusal::Expired { failure_url: FAILURE_URL.into() }));
        let just_before = store
            .write(|conn| portal_ops::enter(conn, &link.token, link.expires_at - Duration::seconds(1)))
            .unwrap()
            .expect("a link works until it expires");
        assert_eq!(just_before.session.customer_id, id);
        assert_eq!(just_before.session.expires_at, link.expires_at - Duration::seconds(1) + Duration::minutes(60));
        let replay = store.write(|conn| portal_ops::enter(conn, &link.token, made_at)).unwrap();
        assert_eq!(replay, Err(portal_ops::Refusal::Used { failure_url: FAILURE_URL.into() }));
        let forged = store.write(|conn| portal_ops::enter(conn, &"0".repeat(64), made_at)).unwrap();
        assert_eq!(forged, Err(portal_ops::Refusal::Unknown));
        // The session itself ends an hour after it began.
        let token = just_before.token.clone();
        let ends = just_before.session.expires_at;
        assert!(store.read(|conn| portal_ops::session(conn, &token, ends - Duration::seconds(1))).unwrap().is_some());
        assert!(store.read(|conn| portal_ops::session(conn, &token, ends)).unwrap().is_none());
    })
    .await
    .unwrap();
}

async fn a_session_sees_only_its_own_customer(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    let bob = customer_with_minutes(&app, "Bob", "777").await;
    // What only Bob's pages may show. (Ids and tokens are random text, so "777" alone could
    // appear in Ada's by chance; "777.00" cannot.)
    let bob_secret = "Bob secret render job";
    let event = json!({"customer_id": bob, "events": [{"id": "bob-1", "event_type": "video_generated",
        "occurred_at": app.clock.now().to_rfc3339(), "description": bob_secret}]});
    app.post("/events", event).await.expect(204);
    let bob_top_up = app
        .post("/top-ups", body(&format!(
            r#"{{"customer_id":"{bob}","amount":3,"currency":"USD","destination":{{"asset":"VIDMIN"}},"return_url":"https://a.example","failure_url":"https://b.example"}}"#
        )))
        .await
        .expect(201);
    let bob_top_up = bob_top_up.body["id"].as_str().unwrap().to_owned();

    let cookie = portal_cookie(&app, &ada).await;
    for path in ["/portal", "/portal?checkout=done", "/portal/usage", "/portal/top-ups", "/portal/auto-top-up"] {
        let (status, page, _) = portal(&app, Method::GET, path, Some(&cookie), &[]).await;
        assert_eq!(status, 200, "{path}: {page}");
        for bobs in ["777.00", bob_secret, bob_top_up.as_str(), bob.as_str()] {
            assert!(!page.contains(bobs), "{path} shows Bob's {bobs}");
        }
    }
    let (_, page, _) = portal(&app, Method::GET, "/portal", Some(&cookie), &[]).await;
    assert!(page.contains("20.00"), "Ada sees her own balance");
    // Forms name accounts only within the session's own wallet.
    let (_, page, _) = portal(&app, Method::GET, "/portal/auto-top-up", Some(&cookie), &[]).await;
    let csrf = csrf_of(&page);
    let form =
        [("csrf", csrf.as_str()), ("account", "default:USD"), ("threshold", "1"), ("amount", "5"), ("currency", "USD")];
    let (status, _, _) = portal(&app, Method::POST, "/portal/auto-top-up", Some(&cookie), &form).await;
    assert_eq!(status, 404, "Ada has no USD account; Bob's wallet is out of reach whatever is posted");
    // Bob's session sees Bob.
    let bob_cookie = portal_cookie(&app, &bob).await;
    let (_, page, _) = portal(&app, Method::GET, "/portal/usage", Some(&bob_cookie), &[]).await;
    assert!(page.contains(bob_secret));
}

async fn forms_need_the_sessions_csrf_token(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    let bob = customer_with_minutes(&app, "Bob", "20").await;
    let cookie = portal_cookie(&app, &ada).await;
    let bob_cookie = portal_cookie(&app, &bob).await;
    let (_, page, _) = portal(&app, Method::GET, "/portal/top-ups", Some(&cookie), &[]).await;
    let csrf = csrf_of(&page);
    let (_, bob_page, _) = portal(&app, Method::GET, "/portal/top-ups", Some(&bob_cookie), &[]).await;
    let bob_csrf = csrf_of(&bob_page);
    assert_ne!(csrf, bob_csrf);

    let attempts: [(&str, Vec<(&str, &str)>); 3] = [
        ("missing", vec![("option", "VIDMIN:USD"), ("amount", "10")]),
        ("wrong", vec![("csrf", "0000"), ("option", "VIDMIN:USD"), ("amount", "10")]),
        ("another session's", vec![("csrf", bob_csrf.as_str()), ("option", "VIDMIN:USD"), ("amount", "10")]),
    ];
    for (what, form) in &attempts {
        let (status, page, _) = portal(&app, Method::POST, "/portal/top-ups", Some(&cookie), form).await;
        assert_eq!(status, 403, "a {what} CSRF token is refused: {page}");
    }
    let (status, _, _) =
        portal(&app, Method::POST, "/portal/auto-top-up", Some(&cookie), &[("account", "default:VIDMIN")]).await;
    assert_eq!(status, 403);
    let top_ups =
        app.call(Method::GET, &format!("/customers/{ada}/wallet/default:VIDMIN"), Some(&app.test_key), None).await;
    assert_eq!(top_ups.body["pending_in"].to_string(), "0", "refused forms start nothing");

    // With the token: invalid input comes back on the form; valid input goes to the checkout.
    let form = [("csrf", csrf.as_str()), ("option", "VIDMIN:USD"), ("amount", "10.005")];
    let (status, page, _) = portal(&app, Method::POST, "/portal/top-ups", Some(&cookie), &form).await;
    assert_eq!(status, 422);
    assert!(page.contains("at most 2 decimal places") && page.contains("10.005"), "{page}");
    let form = [("csrf", csrf.as_str()), ("option", "VIDMIN:USD"), ("amount", "10")];
    let (status, _, headers) = portal(&app, Method::POST, "/portal/top-ups", Some(&cookie), &form).await;
    assert_eq!(status, 303);
    let checkout = headers["location"].to_str().unwrap();
    assert!(checkout.starts_with(&format!("{}/checkout/top_", app.base)), "{checkout}");
    assert_eq!(
        app.balances(&ada, "default:VIDMIN").await.1,
        "100",
        "the portal top-up holds its 100 minutes in pending_in"
    );
}

async fn the_live_quote(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    let cookie = portal_cookie(&app, &ada).await;
    let (status, text, _) =
        portal(&app, Method::GET, "/portal/quote?option=VIDMIN:USD&amount=10", Some(&cookie), &[]).await;
    assert_eq!(status, 200, "{text}");
    let quote: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(quote["asset_amount"], "100.00");
    assert_eq!(quote["display"], "100.00 video minutes");
    let (status, text, _) =
        portal(&app, Method::GET, "/portal/quote?option=VIDMIN:USD&amount=0.015", Some(&cookie), &[]).await;
    assert_eq!(status, 422, "{text}");
    let (status, _, _) = portal(&app, Method::GET, "/portal/quote?option=VIDMIN:USD&amount=10", None, &[]).await;
    assert_eq!(status, 401);
    // The script that calls it is served from the portal itself (the page's CSP allows 'self').
    let (status, script, _) = portal(&app, Method::GET, "/portal/portal.js", None, &[]).await;
    assert_eq!(status, 200);
    assert!(script.contains("/portal/quote"));
}

/// The 2nd of a later month at noon, at least four days after `after`: a day whose last few
/// days lie in the month before.
fn second_of_a_later_month(after: DateTime<Utc>) -> DateTime<Utc> {
    let mut month = after.date_naive().with_day(1).unwrap();
    loop {
        month = month.checked_add_months(chrono::Months::new(1)).unwrap();
        let second = month.with_day(2).unwrap().and_hms_opt(12, 0, 0).unwrap().and_utc();
        if second - Duration::days(4) > after {
            return second;
        }
    }
}

/// The home page adds up every fee exactly, however many there are, and dates usage by when
/// it occurred: an event sent today that occurred last month is last month's spend.
async fn spend_is_exact_for_any_number_of_fees_and_dated_by_occurrence(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    // Move to the 2nd of a month, so that three days ago was last month.
    let today = second_of_a_later_month(app.clock.now());
    app.clock.advance(today - app.clock.now());
    const CLIPS: usize = 21_000;
    for batch in 0..CLIPS / 1000 {
        generate_clips(&app, &ada, &format!("clip-{batch}"), 1000).await;
    }
    let charge = body(r#"{"transaction_id":"render-1","asset":"VIDMIN","amount":0.37}"#);
    app.post(&format!("/customers/{ada}/wallet/charges"), charge).await.expect(201);
    let occurred = app.clock.now() - Duration::days(3);
    let late = json!({"customer_id": ada, "events": [{"id": "late-1", "event_type": "video_generated",
        "occurred_at": occurred.to_rfc3339(), "description": "Rendered last month"}]});
    app.post("/events", late).await.expect(204);

    let cookie = portal_cookie(&app, &ada).await;
    let (status, page, _) = portal(&app, Method::GET, "/portal", Some(&cookie), &[]).await;
    assert_eq!(status, 200, "{page}");
    let month = page.split("Spent this month").nth(1).unwrap().split("</ul>").next().unwrap();
    assert!(
        month.contains("<strong>42,000.37 video minutes</strong>"),
        "21,000 clips of 2 minutes and a 0.37 charge this month; the late clip was last month's: {month}"
    );
    let day = |at: DateTime<Utc>, product: &str, amount: &str| {
        format!(
            r#"<tr><td data-label="Day">{}</td><td data-label="Product">{product}</td><td data-label="Spent" class="amount">{amount} video minutes</td></tr>"#,
            at.format("%b %-d")
        )
    };
    assert!(page.contains(&day(app.clock.now(), "Glitch Video", "42,000.00")), "today's spend, exact: {page}");
    assert!(page.contains(&day(app.clock.now(), "Other charges", "0.37")), "the charge, apart: {page}");
    assert!(page.contains(&day(occurred, "Glitch Video", "2.00")), "the late clip on the day it occurred: {page}");
    assert!(page.contains("Video minutes: 42,002.37 video minutes of usage over 30 days"), "{page}");
    let (_, usage, _) = portal(&app, Method::GET, "/portal/usage", Some(&cookie), &[]).await;
    let first_line = usage.split("<tbody>").nth(1).unwrap().split("</tr>").next().unwrap();
    assert!(
        first_line.contains("Rendered last month")
            && first_line.contains(&occurred.format("%b %-d, %Y, %-I:%M %p").to_string()),
        "the newest usage line shows when it occurred: {first_line}"
    );
}

/// Saves a test card for `customer` the way the provider would report one.
async fn save_card(app: &TestApp, customer: &str, digits: &str) -> String {
    let store = app.store.clone();
    let method = PaymentMethod {
        id: tally_store::ids::new_id("pm"),
        customer_id: customer.to_owned(),
        provider: "test".into(),
        provider_reference: format!("pm_test_card_{digits}"),
        provider_customer: None,
        brand: Some("visa".into()),
        last4: Some(digits[digits.len() - 4..].to_owned()),
        expiry: None,
        created_at: app.clock.now(),
    };
    let id = method.id.clone();
    tokio::task::spawn_blocking(move || {
        store.write(|conn| topup_repo::insert_payment_method(conn, Mode::Test, &method)).unwrap()
    })
    .await
    .unwrap();
    id
}

fn minutes_key(customer: &str) -> AccountKey {
    AccountKey { customer_id: customer.to_owned(), name: "default".into(), asset: "VIDMIN".into() }
}

async fn configure(app: &TestApp, customer: &str, method: &str, threshold: i64) {
    let (store, now) = (app.store.clone(), app.clock.now());
    let settings = Settings {
        key: minutes_key(customer),
        enabled: true,
        threshold: threshold.into(),
        amount: 10.into(),
        currency: tally_core::asset::AssetCode::parse("USD").unwrap(),
        payment_method_id: Some(method.to_owned()),
    };
    tokio::task::spawn_blocking(move || {
        store.write(|conn| auto_ops::configure(conn, Mode::Test, &settings, now)).unwrap()
    })
    .await
    .unwrap();
}

async fn setting(app: &TestApp, customer: &str) -> auto_top_ups::AutoTopUp {
    let store = app.store.clone();
    let key = minutes_key(customer);
    tokio::task::spawn_blocking(move || store.read(|conn| auto_top_ups::get(conn, Mode::Test, &key)).unwrap().unwrap())
        .await
        .unwrap()
}

async fn auto_top_ups_of(app: &TestApp, customer: &str) -> Vec<topup_repo::TopUp> {
    let store = app.store.clone();
    let id = customer.to_owned();
    let page = tally_store::repo::Page { offset: 0, limit: 100 };
    let (all, _) =
        tokio::task::spawn_blocking(move || store.read(|conn| topup_repo::for_customer(conn, &id, page)).unwrap())
            .await
            .unwrap();
    all.into_iter().filter(|top_up| top_up.origin == "auto").collect()
}

async fn pass_at(app: &TestApp, providers: &Providers, now: DateTime<Utc>) -> tally_http::worker::Pass {
    tally_http::auto_top_up::run_due(&app.store, providers, std::time::Duration::from_secs(86_400), now).await.unwrap()
}

/// Waits until the server's own job has topped `customer`'s minutes up to `available`. An
/// attempt that failed instead (counted on the setting, or an error waiting in `job_retries`)
/// fails the test at once, saying why, rather than after the wait for its retry.
async fn wait_for_auto_top_up(app: &TestApp, customer: &str, available: &str) {
    app.eventually(&format!("the auto top-up brings the minutes to {available}"), || async {
        let attempt = setting(app, customer).await;
        assert_eq!(attempt.failures, 0, "the auto top-up failed: {:?}", attempt.last_error);
        let (store, item) = (app.store.clone(), auto_top_ups::item_id(&minutes_key(customer)));
        let errors = tokio::task::spawn_blocking(move || {
            store.read(|conn| {
                let mut errors = Vec::new();
                for job in [job_retries::AUTO_TOP_UP, job_retries::AUTO_TOP_UP_SETTLE] {
                    errors.extend(job_retries::get(conn, job, &item)?.map(|(_, _, error)| format!("{job}: {error}")));
                }
                Ok::<_, tally_store::StoreError>(errors)
            })
        })
        .await
        .unwrap()
        .unwrap();
        assert!(errors.is_empty(), "the auto top-up job failed on the account: {errors:?}");
        app.balances(customer, "default:VIDMIN").await.0 == available
    })
    .await;
}

async fn auto_top_up_credits_once_when_usage_crosses_the_threshold(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "60").await;
    let card = save_card(&app, &ada, "4242424242424242").await;
    configure(&app, &ada, &card, 50).await;
    // A pass of the job (the server's own runs beside it) finds nothing to do.
    let providers = Providers::default();
    assert_eq!(pass_at(&app, &providers, app.clock.now()).await.claimed, 0, "60 is not below 50: nothing happens");
    assert!(auto_top_ups_of(&app, &ada).await.is_empty());
    generate_clips(&app, &ada, "clip", 6).await; // 60 - 12 = 48 < 50
    wait_for_auto_top_up(&app, &ada, "148").await;
    // More passes, now and later, start nothing more: the balance is above the threshold.
    for later in [0, 1, 24] {
        assert_eq!(pass_at(&app, &providers, app.clock.now() + Duration::hours(later)).await.claimed, 0);
    }
    let made = auto_top_ups_of(&app, &ada).await;
    assert_eq!(made.len(), 1, "one top-up, not one per pass");
    assert_eq!((made[0].status.as_str(), made[0].amount.to_string().as_str()), ("succeeded", "10"));
    let saved = setting(&app, &ada).await;
    assert_eq!((saved.in_flight_top_up_id, saved.failures, saved.enabled), (None, 0, true));
    assert_eq!(app.balances(&ada, "default:VIDMIN").await, ("148".into(), "0".into(), "0".into()));
    app.assert_ledger_agrees().await;
}

/// A server whose background jobs pass once as it starts, then wait a day: only the test's own
/// passes of the auto top-up job act.
async fn quiet_app(backend: Backend) -> Option<TestApp> {
    let database = tokio::task::spawn_blocking(move || TestDatabase::create(backend)).await.unwrap()?;
    let quiet = |mut state: tally_http::AppState| {
        let day = std::time::Duration::from_secs(86_400);
        state.config = Arc::new(tally_http::HttpConfig { settle_interval: day, ..(*state.config).clone() });
        state
    };
    Some(TestApp::spawn_with_state(Arc::new(database), backend, test_webhook_config(), quiet).await)
}

/// A pass of the auto top-up job can wait long for the database (on a busy server) while the
/// accounts it acts on change: it makes an account's top-up at the time it claims the account,
/// never at the earlier instant the pass began. Here the pass begins before the asset has any
/// rate and claims the account once it is below its threshold; at the time the pass began, no
/// rate was in force, and the attempt failed and waited a minute to be retried.
async fn a_pass_that_waited_tops_up_at_the_time_it_claims(backend: Backend) {
    let Some(app) = quiet_app(backend).await else { return };
    let began = app.clock.now();
    app.clock.advance(Duration::seconds(1));
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "60").await;
    let card = save_card(&app, &ada, "4242424242424242").await;
    configure(&app, &ada, &card, 50).await;
    generate_clips(&app, &ada, "clip", 6).await; // 60 - 12 = 48 < 50
    let fell_below = app.clock.now();
    // The pass's first reading of the time is `began`; its later readings are the server's now,
    // as when its first reading was taken long before the database let it go on.
    let readings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clock = app.clock.clone();
    let time = PassTime::reading(move || {
        if readings.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            began
        } else {
            clock.now()
        }
    });
    let day = std::time::Duration::from_secs(86_400);
    let pass = tally_http::auto_top_up::run_due(&app.store, &Providers::default(), day, time).await.unwrap();
    assert_eq!(pass.failed, 0);
    let attempt = setting(&app, &ada).await;
    assert_eq!((attempt.failures, attempt.last_error, attempt.retry_at), (0, None, None));
    assert_eq!(app.balances(&ada, "default:VIDMIN").await, ("148".into(), "0".into(), "0".into()));
    let made = auto_top_ups_of(&app, &ada).await;
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].status.as_str(), "succeeded");
    assert!(
        made[0].created_at >= fell_below,
        "made at {}, before the balance fell at {fell_below}",
        made[0].created_at
    );
    app.assert_ledger_agrees().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_waited_tops_up_at_the_time_it_claims_sqlite() {
    a_pass_that_waited_tops_up_at_the_time_it_claims(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_waited_tops_up_at_the_time_it_claims_postgres() {
    a_pass_that_waited_tops_up_at_the_time_it_claims(Backend::Postgres).await;
}

async fn declined_auto_top_ups_back_off_then_turn_off(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "60").await;
    let card = save_card(&app, &ada, "4000000000000002").await;
    configure(&app, &ada, &card, 50).await;
    let first_try = app.clock.now();
    generate_clips(&app, &ada, "clip", 6).await;
    // The server's own job makes the first attempt as soon as the balance drops.
    app.eventually("the first attempt fails", || async { setting(&app, &ada).await.failures == 1 }).await;
    let failed = setting(&app, &ada).await;
    assert_eq!(failed.last_error.as_deref(), Some("Your card was declined."));
    assert!(failed.enabled && failed.in_flight_top_up_id.is_none());
    let retry_at = failed.retry_at.expect("a failure backs off");
    assert!(retry_at >= first_try + Duration::seconds(60) && retry_at <= app.clock.now() + Duration::seconds(60));

    let providers = Providers::default();
    let waiting = pass_at(&app, &providers, retry_at - Duration::seconds(1)).await;
    assert_eq!(waiting.claimed, 0, "no attempt before the back-off ends");
    pass_at(&app, &providers, retry_at).await;
    let second = setting(&app, &ada).await;
    assert_eq!(second.failures, 2);
    assert_eq!(second.retry_at, Some(retry_at + Duration::seconds(300)), "the second wait is longer");
    pass_at(&app, &providers, retry_at + Duration::seconds(300)).await;
    let third = setting(&app, &ada).await;
    assert_eq!((third.failures, third.enabled, third.retry_at), (3, false, None), "three failures turn it off");
    assert_eq!(third.last_error.as_deref(), Some("Your card was declined."));
    assert_eq!(pass_at(&app, &providers, retry_at + Duration::days(1)).await.claimed, 0, "off stays off");

    let made = auto_top_ups_of(&app, &ada).await;
    assert_eq!(made.len(), 3);
    assert!(made.iter().all(|top_up| top_up.status.as_str() == "failed"));
    assert_eq!(app.balances(&ada, "default:VIDMIN").await, ("48".into(), "0".into(), "0".into()));
    // The portal says so, and saving the settings again starts afresh.
    let cookie = portal_cookie(&app, &ada).await;
    let (_, page, _) = portal(&app, Method::GET, "/portal/auto-top-up", Some(&cookie), &[]).await;
    assert!(page.contains("turned off after 3 failed attempts") && page.contains("Your card was declined."), "{page}");
    let csrf = csrf_of(&page);
    let form = [
        ("csrf", csrf.as_str()),
        ("account", "default:VIDMIN"),
        ("enabled", "on"),
        ("threshold", "40"),
        ("amount", "5"),
        ("currency", "USD"),
        ("payment_method_id", card.as_str()),
    ];
    let (status, _, headers) = portal(&app, Method::POST, "/portal/auto-top-up", Some(&cookie), &form).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, "/portal/auto-top-up?saved=default:VIDMIN"));
    let fresh = setting(&app, &ada).await;
    assert_eq!((fresh.enabled, fresh.failures, fresh.last_error), (true, 0, None));
    assert_eq!((fresh.threshold.to_string(), fresh.amount.to_string()), ("40".into(), "5".into()));
    app.assert_ledger_agrees().await;
}

async fn auto_top_up_settings_are_checked(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    let bob = customer_with_minutes(&app, "Bob", "20").await;
    let ada_card = save_card(&app, &ada, "4242424242424242").await;
    let bob_card = save_card(&app, &bob, "4242424242424242").await;
    let cookie = portal_cookie(&app, &ada).await;
    let (_, page, _) = portal(&app, Method::GET, "/portal/auto-top-up", Some(&cookie), &[]).await;
    assert!(page.contains("Visa ending 4242") && !page.contains(&bob_card), "only Ada's own cards are offered");
    let csrf = csrf_of(&page);
    let cases = [
        ("", "50", "10", "USD", "Card: choose a saved payment method"),
        (ada_card.as_str(), "-1", "10", "USD", "Threshold: must be zero or more"),
        (ada_card.as_str(), "1.001", "10", "USD", "VIDMIN takes at most 2 decimal places"),
        (ada_card.as_str(), "50", "0.001", "USD", "USD takes at most 2 decimal places"),
        (ada_card.as_str(), "50", "ten", "USD", "Enter the amount to pay each time"),
        (ada_card.as_str(), "50", "10", "EUR", "VIDMIN cannot be bought with EUR"),
        (bob_card.as_str(), "50", "10", "USD", "not one of this customer's saved payment methods"),
    ];
    for (card, threshold, amount, currency, expected) in cases {
        let form = [
            ("csrf", csrf.as_str()),
            ("account", "default:VIDMIN"),
            ("enabled", "on"),
            ("threshold", threshold),
            ("amount", amount),
            ("currency", currency),
            ("payment_method_id", card),
        ];
        let (status, page, _) = portal(&app, Method::POST, "/portal/auto-top-up", Some(&cookie), &form).await;
        assert_eq!(status, 422, "{expected}: {page}");
        assert!(page.contains(expected), "{expected} missing from {page}");
        assert!(page.contains(&format!(r#"value="{threshold}""#)), "the form keeps what was typed");
    }
    let store = app.store.clone();
    let key = minutes_key(&ada);
    let stored =
        tokio::task::spawn_blocking(move || store.read(|conn| auto_top_ups::get(conn, Mode::Test, &key)).unwrap())
            .await
            .unwrap();
    assert_eq!(stored, None, "refused settings store nothing");
    // Off needs no card.
    let form = [
        ("csrf", csrf.as_str()),
        ("account", "default:VIDMIN"),
        ("threshold", "5"),
        ("amount", "1"),
        ("currency", "USD"),
    ];
    let (status, _, _) = portal(&app, Method::POST, "/portal/auto-top-up", Some(&cookie), &form).await;
    assert_eq!(status, 303);
    assert!(!setting(&app, &ada).await.enabled);
}

/// A provider whose off-session charges stay processing: the top-up waits for a notification.
struct SlowProvider;

impl PaymentProvider for SlowProvider {
    fn name(&self) -> &'static str {
        "test"
    }

    fn start_checkout<'a>(&'a self, request: &'a CheckoutRequest) -> BoxFuture<'a, Result<Checkout, PaymentError>> {
        Box::pin(async move {
            Ok(Checkout { reference: request.top_up_id.clone(), redirect_url: "https://pay.example".into() })
        })
    }

    fn charge_off_session<'a>(
        &'a self,
        request: &'a OffSessionCharge,
    ) -> BoxFuture<'a, Result<ChargeOutcome, PaymentError>> {
        Box::pin(async move { Ok(ChargeOutcome::Processing { reference: format!("pi_slow_{}", request.top_up_id) }) })
    }
}

/// A server whose test provider leaves off-session charges processing.
async fn slow_app(backend: Backend) -> Option<TestApp> {
    let database = tokio::task::spawn_blocking(move || TestDatabase::create(backend)).await.unwrap()?;
    let slow = |mut state: tally_http::AppState| {
        state.providers.test = Arc::new(SlowProvider);
        state
    };
    Some(TestApp::spawn_with_state(Arc::new(database), backend, test_webhook_config(), slow).await)
}

async fn never_two_auto_top_ups_in_flight(backend: Backend) {
    let Some(app) = slow_app(backend).await else { return };
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    let card = save_card(&app, &ada, "4242424242424242").await;
    let slow = Providers { test: Arc::new(SlowProvider), ..Providers::default() };
    // The server's own job and two more passes race for the account; more passes follow.
    configure(&app, &ada, &card, 50).await;
    let now = app.clock.now();
    tokio::join!(pass_at(&app, &slow, now), pass_at(&app, &slow, now));
    for later in 1..4 {
        pass_at(&app, &slow, now + Duration::hours(later)).await;
    }
    // Whoever claimed the account records the provider's answer after charging: wait for
    // that, not only for the claim.
    app.eventually("an attempt is in flight, its payment processing", || async {
        let made = auto_top_ups_of(&app, &ada).await;
        setting(&app, &ada).await.in_flight_top_up_id.is_some()
            && made.iter().any(|top_up| top_up.status.as_str() == "pending" && top_up.provider_reference.is_some())
    })
    .await;
    let made = auto_top_ups_of(&app, &ada).await;
    assert_eq!(made.len(), 1, "one attempt in flight, whoever claimed it: {made:?}");
    assert_eq!(made[0].status.as_str(), "pending");
    assert_eq!(made[0].provider_reference.as_deref(), Some(format!("pi_slow_{}", made[0].id).as_str()));
    let in_flight = setting(&app, &ada).await.in_flight_top_up_id.unwrap();
    assert_eq!(in_flight, made[0].id);
    assert_eq!(app.balances(&ada, "default:VIDMIN").await, ("20".into(), "100".into(), "0".into()));
    // The provider's notification settles the top-up; the job then frees the account.
    app.post(&format!("/test-helpers/top-ups/{in_flight}/succeed"), json!({})).await.expect(200);
    app.eventually("the account is freed", || async { setting(&app, &ada).await.in_flight_top_up_id.is_none() }).await;
    assert_eq!(app.balances(&ada, "default:VIDMIN").await, ("120".into(), "0".into(), "0".into()));
    assert_eq!(setting(&app, &ada).await.failures, 0);
    assert_eq!(auto_top_ups_of(&app, &ada).await.len(), 1, "120 is above the threshold: no second attempt");
    app.assert_ledger_agrees().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_auto_top_ups_in_flight_sqlite() {
    never_two_auto_top_ups_in_flight(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_auto_top_ups_in_flight_postgres() {
    never_two_auto_top_ups_in_flight(Backend::Postgres).await;
}

/// Behind an https public URL the session cookie is `Secure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_secure_behind_an_https_public_url() {
    let database = Arc::new(TestDatabase::create(Backend::Sqlite).unwrap());
    let https = |mut state: tally_http::AppState| {
        let config =
            tally_http::HttpConfig { public_url: Some("https://billing.example".into()), ..(*state.config).clone() };
        state.config = Arc::new(config);
        state
    };
    let app = TestApp::spawn_with_state(database, Backend::Sqlite, test_webhook_config(), https).await;
    catalog(&app).await;
    let customer = customer_with_minutes(&app, "Ada", "20").await;
    let link = portal_link(&app, &customer).await;
    let path = link.strip_prefix("https://billing.example").expect("links use the public URL");
    let (status, _, cookie, _) = open_link(&format!("{}{path}", app.base)).await;
    assert_eq!(status, 303);
    let cookie = cookie.unwrap();
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");
}

on_both_backends!(
    portal_link_opens_once_with_a_scoped_cookie,
    expired_links_land_on_the_failure_url,
    a_session_sees_only_its_own_customer,
    forms_need_the_sessions_csrf_token,
    the_live_quote,
    auto_top_up_credits_once_when_usage_crosses_the_threshold,
    declined_auto_top_ups_back_off_then_turn_off,
    auto_top_up_settings_are_checked,
    spend_is_exact_for_any_number_of_fees_and_dated_by_occurrence,
);

mod axe;
mod browser;
mod browser_pay;
mod pay;
mod reconcile;
mod reconcile_browser;
