//! Paying from the billing portal, over HTTP on both backends: the minimum and preset
//! amounts (an asset's `top_up` settings), saved cards (add, remove, default, or not saved),
//! trying another card after a decline, resuming and cancelling an open top-up; and the
//! portal's edges: reasons on `failure_url`, ways back to the platform, an HTML 404, framing.

use super::{
    catalog, configure, csrf_of, customer_with_minutes, generate_clips, open_link, portal, portal_cookie, portal_link,
    save_card, setting, FAILURE_URL, RETURN_URL,
};
use crate::harness::{test_webhook_config, Backend, TestApp, TestDatabase};
use crate::on_both_backends;
use chrono::Duration;
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use tally_store::repo::topups::{self as topup_repo, TopUp};

/// The customer's top-ups, newest first.
async fn top_ups_of(app: &TestApp, customer: &str) -> Vec<TopUp> {
    let (store, id) = (app.store.clone(), customer.to_owned());
    let page = tally_store::repo::Page { offset: 0, limit: 100 };
    tokio::task::spawn_blocking(move || store.read(|conn| topup_repo::for_customer(conn, &id, page)).unwrap().0)
        .await
        .unwrap()
}

async fn cards_of(app: &TestApp, customer: &str) -> Vec<topup_repo::PaymentMethod> {
    let (store, id) = (app.store.clone(), customer.to_owned());
    tokio::task::spawn_blocking(move || store.read(|conn| topup_repo::payment_methods(conn, &id)).unwrap())
        .await
        .unwrap()
}

/// Starts a portal top-up of `amount` USD for video minutes; returns the checkout URL.
async fn start_top_up(app: &TestApp, cookie: &str, amount: &str, save: bool) -> String {
    let (_, page, _) = portal(app, Method::GET, "/portal/top-ups", Some(cookie), &[]).await;
    let csrf = csrf_of(&page);
    let mut form = vec![("csrf", csrf.as_str()), ("option", "VIDMIN:USD"), ("amount", amount)];
    if save {
        form.push(("save_card", "on"));
    }
    let (status, body, headers) = portal(app, Method::POST, "/portal/top-ups", Some(cookie), &form).await;
    assert_eq!(status, 303, "{body}");
    headers["location"].to_str().unwrap().to_owned()
}

/// Posts a form to the test checkout (`/checkout/{id}?token=…`, or its `/cancel`).
async fn checkout_post(url: &str, action: &str, card: &str) -> (u16, Option<String>, String) {
    let (path, token) = url.split_once("?token=").unwrap();
    let response = super::no_redirects()
        .post(format!("{path}{action}"))
        .form(&[("token", token), ("card_number", card)])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let location = response.headers().get("location").map(|value| value.to_str().unwrap().to_owned());
    (status, location, response.text().await.unwrap())
}

async fn the_minimum_is_refused_and_presets_pay(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    // The Tally extension: set through the API, returned on the asset.
    let settings = json!({"USD": {"minimum_amount": 5, "preset_amounts": [10, 25.5]}});
    let asset = app.call(Method::PUT, "/assets/VIDMIN/top-up", Some(&app.test_key), Some(&settings)).await.expect(200);
    assert_eq!(asset.body["top_up"], json!({"USD": {"minimum_amount": 5, "preset_amounts": [10, 25.5]}}));
    assert_eq!(app.get("/assets/VIDMIN").await.expect(200).body["top_up"], asset.body["top_up"]);
    for bad in [
        json!({"MIN": {"minimum_amount": 5}}),
        json!({"USD": {"minimum_amount": 5.001}}),
        json!({"USD": {"preset_amounts": [0]}}),
    ] {
        app.call(Method::PUT, "/assets/VIDMIN/top-up", Some(&app.test_key), Some(&bad)).await.expect(422);
    }
    app.call(Method::PUT, "/assets/NOPE/top-up", Some(&app.test_key), Some(&settings)).await.expect(404);

    let cookie = portal_cookie(&app, &ada).await;
    let (_, page, _) = portal(&app, Method::GET, "/portal/top-ups", Some(&cookie), &[]).await;
    assert!(page.contains("Minimum top-up: Video minutes paid in USD: at least $5.00."), "{page}");
    assert!(page.contains(r#"value="VIDMIN:USD|25.5""#) && page.contains("$25.50"), "preset buttons: {page}");
    let csrf = csrf_of(&page);
    // Under the minimum: refused, saying what the minimum is, and nothing is created.
    let form = [("csrf", csrf.as_str()), ("option", "VIDMIN:USD"), ("amount", "4.99"), ("save_card", "on")];
    let (status, page, _) = portal(&app, Method::POST, "/portal/top-ups", Some(&cookie), &form).await;
    assert_eq!(status, 422);
    assert!(page.contains("The minimum top-up is $5.00."), "{page}");
    assert!(top_ups_of(&app, &ada).await.is_empty(), "a refused top-up creates nothing");
    assert_eq!(app.balances(&ada, "default:VIDMIN").await, ("20".into(), "0".into(), "0".into()));
    let (status, quote, _) =
        portal(&app, Method::GET, "/portal/quote?option=VIDMIN:USD&amount=4", Some(&cookie), &[]).await;
    assert_eq!(status, 422);
    assert!(quote.contains("The minimum top-up is $5.00."), "{quote}");
    // At the minimum exactly: accepted.
    let (status, _, _) =
        portal(&app, Method::GET, "/portal/quote?option=VIDMIN:USD&amount=5", Some(&cookie), &[]).await;
    assert_eq!(status, 200);
    // A preset button pays its amount.
    let form = [("csrf", csrf.as_str()), ("option", "VIDMIN:USD"), ("amount", ""), ("preset", "VIDMIN:USD|25.5")];
    let (status, _, headers) = portal(&app, Method::POST, "/portal/top-ups", Some(&cookie), &form).await;
    assert_eq!(status, 303);
    assert!(headers["location"].to_str().unwrap().contains("/checkout/top_"));
    let made = top_ups_of(&app, &ada).await;
    assert_eq!(made.len(), 1);
    assert_eq!((made[0].amount.to_string(), made[0].asset_amount.to_string()), ("25.5".into(), "255".into()));
    // `{}` clears the settings.
    let cleared =
        app.call(Method::PUT, "/assets/VIDMIN/top-up", Some(&app.test_key), Some(&json!({}))).await.expect(200);
    assert!(cleared.body.get("top_up").is_none(), "{}", cleared.body);
}

async fn not_saving_a_card_leaves_none_saved(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    let cookie = portal_cookie(&app, &ada).await;
    let (_, page, _) = portal(&app, Method::GET, "/portal/top-ups", Some(&cookie), &[]).await;
    assert!(page.contains(r#"name="save_card" value="on" checked"#), "saving is offered, ticked: {page}");
    let checkout = start_top_up(&app, &cookie, "10", false).await;
    let page = reqwest::get(&checkout).await.unwrap().text().await.unwrap();
    assert!(page.contains("Your card is not saved."), "{page}");
    let (status, location, _) = checkout_post(&checkout, "", "4242 4242 4242 4242").await;
    assert_eq!((status, location.as_deref()), (303, Some(&*format!("{}/portal?checkout=done", app.base))));
    assert_eq!(app.balances(&ada, "default:VIDMIN").await.0, "120");
    assert!(cards_of(&app, &ada).await.is_empty(), "the customer chose not to save the card");
    // Ticked, the card is saved, and as the only one it is the default.
    let checkout = start_top_up(&app, &cookie, "10", true).await;
    checkout_post(&checkout, "", "4242424242424242").await;
    let cards = cards_of(&app, &ada).await;
    assert_eq!(cards.len(), 1);
    let (_, page, _) = portal(&app, Method::GET, "/portal/cards", Some(&cookie), &[]).await;
    assert!(page.contains("Visa ending 4242") && page.contains("Default"), "{page}");
    app.assert_ledger_agrees().await;
}

async fn saved_cards_are_added_made_default_and_removed(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "60").await;
    let bob = customer_with_minutes(&app, "Bob", "60").await;
    let cookie = portal_cookie(&app, &ada).await;
    let (_, page, _) = portal(&app, Method::GET, "/portal/cards/new", Some(&cookie), &[]).await;
    let csrf = csrf_of(&page);
    // A declined card is not saved; the succeeding one is, as the default.
    let declined = [("csrf", csrf.as_str()), ("card_number", "4000 0000 0000 0002")];
    let (status, page, _) = portal(&app, Method::POST, "/portal/cards/new", Some(&cookie), &declined).await;
    assert_eq!(status, 402);
    assert!(page.contains("Your card was declined."), "{page}");
    assert!(cards_of(&app, &ada).await.is_empty());
    let good = [("csrf", csrf.as_str()), ("card_number", "4242 4242 4242 4242")];
    let (status, _, headers) = portal(&app, Method::POST, "/portal/cards/new", Some(&cookie), &good).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, "/portal/cards?added=1"));
    let first = cards_of(&app, &ada).await[0].id.clone();
    // The test provider reports an expiry, which the list shows.
    assert_eq!(cards_of(&app, &ada).await[0].expiry, Some(topup_repo::CardExpiry { month: 12, year: 2034 }));
    let (_, page, _) = portal(&app, Method::GET, "/portal/cards?added=1", Some(&cookie), &[]).await;
    assert!(page.contains("Expires 12/2034"), "{page}");
    // A second card (saved as the provider reports one), then made the default.
    app.clock.advance(Duration::seconds(1));
    let second = save_card(&app, &ada, "4000000000000002").await;
    assert_eq!(cards_of(&app, &ada).await[0].id, first, "the first card stays the default");
    let form = [("csrf", csrf.as_str())];
    let (status, _, _) =
        portal(&app, Method::POST, &format!("/portal/cards/{second}/default"), Some(&cookie), &form).await;
    assert_eq!(status, 303);
    assert_eq!(cards_of(&app, &ada).await[0].id, second, "the chosen default comes first");
    // Without the CSRF token, or for another customer's card, nothing changes.
    let (status, _, _) = portal(&app, Method::POST, &format!("/portal/cards/{first}/remove"), Some(&cookie), &[]).await;
    assert_eq!(status, 403);
    let bobs = save_card(&app, &bob, "4242424242424242").await;
    let (status, _, _) =
        portal(&app, Method::POST, &format!("/portal/cards/{bobs}/remove"), Some(&cookie), &form).await;
    assert_eq!(status, 404);
    assert_eq!(cards_of(&app, &bob).await.len(), 1);

    // Auto top-up set on the first card; the card is removed: it is never charged.
    configure(&app, &ada, &first, 50).await;
    let (status, _, _) =
        portal(&app, Method::POST, &format!("/portal/cards/{first}/remove"), Some(&cookie), &form).await;
    assert_eq!(status, 303);
    let cards = cards_of(&app, &ada).await;
    assert_eq!(cards.iter().map(|card| card.id.as_str()).collect::<Vec<_>>(), [second.as_str()]);
    let (_, page, _) = portal(&app, Method::GET, "/portal/cards?removed=1", Some(&cookie), &[]).await;
    assert!(!page.contains(&first), "a removed card is not listed");
    assert!(page.contains("Card removed. It will not be charged again."), "{page}");
    generate_clips(&app, &ada, "clip", 6).await; // 60 - 12 = 48, under the threshold of 50
    app.eventually("the auto top-up attempt fails", || async { setting(&app, &ada).await.failures == 1 }).await;
    assert_eq!(setting(&app, &ada).await.last_error.as_deref(), Some("the saved payment method no longer exists"));
    assert_eq!(app.balances(&ada, "default:VIDMIN").await, ("48".into(), "0".into(), "0".into()));
    assert!(top_ups_of(&app, &ada).await.is_empty(), "no top-up was made for the removed card");
    // Removing the default: the remaining... none remain after this one.
    let (status, _, _) =
        portal(&app, Method::POST, &format!("/portal/cards/{second}/remove"), Some(&cookie), &form).await;
    assert_eq!(status, 303);
    assert!(cards_of(&app, &ada).await.is_empty());
    app.assert_ledger_agrees().await;
}

async fn another_card_after_a_decline_credits_once(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    let cookie = portal_cookie(&app, &ada).await;
    let checkout = start_top_up(&app, &cookie, "10", true).await;
    let page = reqwest::get(&checkout).await.unwrap().text().await.unwrap();
    assert!(
        page.contains("Pay $10.00") && page.contains("100.00 video minutes") && page.contains("Test mode"),
        "{page}"
    );
    let (status, _, page) = checkout_post(&checkout, "", "4000 0000 0000 0002").await;
    assert_eq!(status, 402);
    assert!(
        page.contains("Your card was declined. Try another card") && page.contains(r#"id="card_number""#),
        "{page}"
    );
    let top_up = &top_ups_of(&app, &ada).await[0];
    assert_eq!(top_up.status.as_str(), "pending", "a decline leaves the top-up open for another card");
    assert_eq!(app.balances(&ada, "default:VIDMIN").await, ("20".into(), "100".into(), "0".into()));
    let (status, _, _) = checkout_post(&checkout, "", "4242 4242 4242 4242").await;
    assert_eq!(status, 303);
    assert_eq!(app.balances(&ada, "default:VIDMIN").await, ("120".into(), "0".into(), "0".into()));
    // Paying again, or the provider reporting it again, credits nothing more.
    let (status, _, page) = checkout_post(&checkout, "", "4242 4242 4242 4242").await;
    assert_eq!(status, 200);
    assert!(page.contains("Top-up succeeded") && page.contains("You paid $10.00."), "{page}");
    app.post(&format!("/test-helpers/top-ups/{}/succeed", top_up.id), json!({})).await.expect(200);
    assert_eq!(app.balances(&ada, "default:VIDMIN").await, ("120".into(), "0".into(), "0".into()));
    let history = app.get(&format!("/customers/{ada}/wallet/default:VIDMIN/transactions")).await.expect(200);
    let top_up_entries =
        history.body["items"].as_array().unwrap().iter().filter(|item| item["type"] == "top_up").count();
    assert_eq!(top_up_entries, 1, "{}", history.body);
    app.assert_ledger_agrees().await;
}

async fn a_pending_top_up_can_be_resumed_or_cancelled(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    let cookie = portal_cookie(&app, &ada).await;
    let checkout = start_top_up(&app, &cookie, "10", false).await;
    reqwest::get(&checkout).await.unwrap(); // opened: pending
    let id = top_ups_of(&app, &ada).await[0].id.clone();
    let (_, page, _) = portal(&app, Method::GET, "/portal/top-ups", Some(&cookie), &[]).await;
    let row = page.split(&format!(r#"data-top-up="{id}""#)).nth(1).unwrap().split("</tr>").next().unwrap();
    let path = checkout.split_once("/checkout/").unwrap().1.replace('&', "&amp;");
    assert!(row.contains(&format!("/checkout/{path}")) && row.contains(">Resume<"), "resume link: {row}");
    assert!(row.contains(&format!("/portal/top-ups/{id}/cancel")), "cancel form: {row}");
    let csrf = csrf_of(&page);
    let (status, _, _) = portal(&app, Method::POST, &format!("/portal/top-ups/{id}/cancel"), Some(&cookie), &[]).await;
    assert_eq!(status, 403, "cancelling needs the CSRF token");
    let (status, _, headers) =
        portal(&app, Method::POST, &format!("/portal/top-ups/{id}/cancel"), Some(&cookie), &[("csrf", &csrf)]).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, &*format!("/portal/top-ups?cancelled={id}")));
    let view = app.get(&format!("/top-ups/{id}")).await.expect(200);
    assert_eq!(
        (view.body["status"].as_str(), view.body["failure_reason"].as_str()),
        (Some("expired"), Some("cancelled by the customer"))
    );
    assert_eq!(
        app.balances(&ada, "default:VIDMIN").await,
        ("20".into(), "0".into(), "0".into()),
        "pending_in released"
    );
    let (_, page, _) = portal(&app, Method::GET, &format!("/portal/top-ups?cancelled={id}"), Some(&cookie), &[]).await;
    assert!(page.contains("The top-up was cancelled"), "{page}");
    assert!(!page.contains(">Resume<"), "an ended top-up cannot be resumed");
    // Its checkout takes no payment now.
    let (status, _, page) = checkout_post(&checkout, "", "4242 4242 4242 4242").await;
    assert_eq!(status, 200);
    assert!(page.contains("Top-up cancelled"), "{page}");
    assert_eq!(app.balances(&ada, "default:VIDMIN").await.0, "20");
    // Money the provider reports received is still credited, once.
    app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(200);
    app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(200);
    assert_eq!(app.balances(&ada, "default:VIDMIN").await, ("120".into(), "0".into(), "0".into()));

    // The checkout's own cancel button does the same and goes to the failure URL.
    let checkout = start_top_up(&app, &cookie, "7", false).await;
    let (status, location, _) = checkout_post(&checkout, "/cancel", "").await;
    assert_eq!((status, location.as_deref()), (303, Some(&*format!("{}/portal?checkout=done", app.base))));
    assert_eq!(top_ups_of(&app, &ada).await[0].status.as_str(), "expired");
    // Another customer's top-up cannot be cancelled from this session.
    let bob = customer_with_minutes(&app, "Bob", "20").await;
    let bob_cookie = portal_cookie(&app, &bob).await;
    start_top_up(&app, &bob_cookie, "3", false).await;
    let bobs = top_ups_of(&app, &bob).await[0].id.clone();
    let (status, _, _) =
        portal(&app, Method::POST, &format!("/portal/top-ups/{bobs}/cancel"), Some(&cookie), &[("csrf", &csrf)]).await;
    assert_eq!(status, 404);
    assert_eq!(top_ups_of(&app, &bob).await[0].status.as_str(), "initiated");
    app.assert_ledger_agrees().await;
}

/// Text from the platform or its customers is shown as text: the portal's and the checkout's
/// templates escape every value they are given, so markup in an asset's name or label or in
/// a customer's name never becomes markup on the page.
async fn markup_in_names_is_shown_as_text(app: TestApp) {
    const HOSTILE: &str = r#"<script>alert(1)</script>"onmouseover=alert(2)"#;
    const ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;&quot;onmouseover=alert(2)";
    // A label is at most 32 characters.
    const LABEL: &str = "<script>alert(1)</script>";
    const LABEL_ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";
    let asset = json!({"code": "EVIL", "name": HOSTILE, "label": LABEL, "precision": 2,
                       "rates": [{"source": "USD", "rate": 0.10}]});
    app.post("/assets", asset).await.expect(201);
    let created = app.post("/customers", json!({"name": HOSTILE})).await.expect(201);
    let customer = created.body["id"].as_str().unwrap().to_owned();
    let gift = json!({"transaction_id": "gift-evil", "asset": "EVIL", "amount": 5, "reason": "gift",
                      "description": HOSTILE});
    app.post(&format!("/customers/{customer}/wallet/adjustments"), gift).await.expect(201);

    let cookie = portal_cookie(&app, &customer).await;
    for path in ["/portal", "/portal/top-ups", "/portal/activity"] {
        let (status, page, _) = portal(&app, Method::GET, path, Some(&cookie), &[]).await;
        assert_eq!(status, 200, "{page}");
        assert!(!page.contains("<script>alert") && !page.contains(r#""onmouseover"#), "{path}: {page}");
        assert!(page.contains(ESCAPED), "{path} shows the name as text: {page}");
    }

    let (_, page, _) = portal(&app, Method::GET, "/portal/top-ups", Some(&cookie), &[]).await;
    let csrf = csrf_of(&page);
    let form = [("csrf", csrf.as_str()), ("option", "EVIL:USD"), ("amount", "10")];
    let (status, body, headers) = portal(&app, Method::POST, "/portal/top-ups", Some(&cookie), &form).await;
    assert_eq!(status, 303, "{body}");
    let checkout = headers["location"].to_str().unwrap().to_owned();
    let page = reqwest::get(&checkout).await.unwrap().text().await.unwrap();
    assert!(page.contains("Pay $10.00"), "{page}");
    assert!(!page.contains("<script>alert") && !page.contains(r#""onmouseover"#), "{page}");
    assert!(page.contains(&format!(" {LABEL_ESCAPED}</strong> of {ESCAPED}.")), "name and label as text: {page}");
}

async fn failure_urls_get_a_reason_and_dead_ends_lead_back(app: TestApp) {
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    // Used.
    let link = portal_link(&app, &ada).await;
    assert_eq!(open_link(&link).await.0, 303);
    let (status, location, _, _) = open_link(&link).await;
    assert_eq!((status, location.as_deref()), (303, Some(&*format!("{FAILURE_URL}?reason=used"))));
    // Expired.
    let link = portal_link(&app, &ada).await;
    app.clock.advance(Duration::minutes(10));
    let (status, location, _, _) = open_link(&link).await;
    assert_eq!((status, location.as_deref()), (303, Some(&*format!("{FAILURE_URL}?reason=expired"))));
    // Invalid: its customer is gone.
    let link = portal_link(&app, &ada).await;
    let (store, id) = (app.store.clone(), ada.clone());
    tokio::task::spawn_blocking(move || {
        store
            .write(|conn| conn.execute("DELETE FROM customers WHERE id = $1", tally_store::params![id.as_str()]))
            .unwrap()
    })
    .await
    .unwrap();
    let (status, location, _, _) = open_link(&link).await;
    assert_eq!((status, location.as_deref()), (303, Some(&*format!("{FAILURE_URL}?reason=invalid"))));

    // A session that has ended links back to the platform.
    let bob = customer_with_minutes(&app, "Bob", "20").await;
    let cookie = portal_cookie(&app, &bob).await;
    app.clock.advance(Duration::minutes(61));
    let (status, page, headers) = portal(&app, Method::GET, "/portal", Some(&cookie), &[]).await;
    assert_eq!(status, 401);
    assert!(page.contains("Your session has ended") && page.contains(&format!(r#"href="{RETURN_URL}""#)), "{page}");
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));

    // Unknown portal paths: an HTML page, not problem+json.
    for path in ["/portal/nope", "/portal/cards/x/y/z"] {
        let (status, page, headers) = portal(&app, Method::GET, path, Some(&cookie), &[]).await;
        assert_eq!(status, 404, "{path}");
        assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"), "{path}");
        assert!(page.contains("Page not found") && page.contains(r#"href="/portal""#), "{page}");
        assert_eq!(headers["x-frame-options"], "DENY");
    }
}

/// A GET of a portal page in the customer's zone (Asia/Tokyo, the `tally_tz` cookie) and
/// language (German, `Accept-Language`).
async fn in_tokyo_in_german(app: &TestApp, cookie: &str, path: &str) -> String {
    let response = super::no_redirects()
        .get(format!("{}{path}", app.base))
        .header("cookie", format!("{cookie}; tally_tz=Asia/Tokyo"))
        .header("accept-language", "de-DE,de;q=0.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    response.text().await.unwrap()
}

/// The paying pages show times in the customer's zone and amounts and dates in their
/// language's format, as the other portal pages do; the top-up history stacks on a phone.
async fn pay_pages_follow_the_customers_zone_and_language(app: TestApp) {
    catalog(&app).await;
    let settings = json!({"USD": {"minimum_amount": 5, "preset_amounts": [10, 1234.5]}});
    app.call(Method::PUT, "/assets/VIDMIN/top-up", Some(&app.test_key), Some(&settings)).await.expect(200);
    let ada = customer_with_minutes(&app, "Ada", "60").await;
    // 23:30 UTC: already the next morning in Tokyo (UTC+9, no summer time).
    let now = app.clock.now();
    let at = (now.date_naive() + Duration::days(1)).and_hms_opt(23, 30, 0).unwrap().and_utc();
    app.clock.advance(at - now);
    let tokyo = |at: chrono::DateTime<chrono::Utc>| (at + Duration::hours(9)).format("%d.%m.%Y, %H:%M").to_string();
    let cookie = portal_cookie(&app, &ada).await;
    start_top_up(&app, &cookie, "1234.50", false).await;

    let page = in_tokyo_in_german(&app, &cookie, "/portal/top-ups").await;
    let row = &page[page.find("<tr data-top-up=").expect("the history lists the top-up")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains(&format!(r#"<td data-label="When">{}</td>"#, tokyo(at))), "Tokyo time, German: {row}");
    assert!(row.contains("<td data-label=\"Paid\" class=\"amount\">1.234,50\u{a0}$</td>"), "{row}");
    assert!(page.contains(r#"<table class="stack">"#), "the history stacks on a phone: {page}");
    assert!(page.contains("at least 5,00\u{a0}$"), "the minimum in German: {page}");
    assert!(page.contains(r#"value="VIDMIN:USD|1234.5""#) && page.contains(">1.234,50\u{a0}$</button>"), "{page}");
    assert!(page.contains(r#"data-tz="Asia/Tokyo""#), "{page}");
    // Without the cookie or a language: UTC and en-US.
    let (_, page, _) = portal(&app, Method::GET, "/portal/top-ups", Some(&cookie), &[]).await;
    let utc = at.format("%b %-d, %Y, 11:30 PM").to_string();
    assert!(page.contains(&format!(r#"<td data-label="When">{utc}</td>"#)) && page.contains("$1,234.50"), "{page}");

    // Saved cards: when each was saved.
    let card = save_card(&app, &ada, "4000000000000002").await;
    let page = in_tokyo_in_german(&app, &cookie, "/portal/cards").await;
    assert!(page.contains(&format!("Saved {}", tokyo(at))), "{page}");

    // Auto top-up: a declined card backs off; the next try is in Tokyo time.
    configure(&app, &ada, &card, 50).await;
    generate_clips(&app, &ada, "clip", 6).await;
    app.eventually("the first attempt fails", || async { setting(&app, &ada).await.failures == 1 }).await;
    let retry_at = setting(&app, &ada).await.retry_at.expect("a failure backs off");
    let page = in_tokyo_in_german(&app, &cookie, "/portal/auto-top-up").await;
    assert!(page.contains(&format!("Next try after {}.", tokyo(retry_at))), "{page}");
    assert!(page.contains("pay 10,00\u{a0}$ with your"), "{page}");
}

on_both_backends!(
    the_minimum_is_refused_and_presets_pay,
    not_saving_a_card_leaves_none_saved,
    saved_cards_are_added_made_default_and_removed,
    another_card_after_a_decline_credits_once,
    a_pending_top_up_can_be_resumed_or_cancelled,
    failure_urls_get_a_reason_and_dead_ends_lead_back,
    pay_pages_follow_the_customers_zone_and_language,
    markup_in_names_is_shown_as_text,
);

/// Framing follows `portal_frame_ancestors`: none by default; with origins, the policy lists
/// them, X-Frame-Options is left out, the cookie travels in a third-party frame, and the
/// "link not valid" page leads to the platform's site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_follows_the_configuration() {
    let database = Arc::new(TestDatabase::create(Backend::Sqlite).unwrap());
    let embeddable = |mut state: tally_http::AppState| {
        let config = tally_http::HttpConfig {
            public_url: Some("https://billing.example".into()),
            portal_frame_ancestors: vec!["https://app.example".into(), "https://*.example.org".into()],
            portal_home_url: Some("https://platform.example/".into()),
            ..(*state.config).clone()
        };
        state.config = Arc::new(config);
        state
    };
    let app = TestApp::spawn_with_state(database, Backend::Sqlite, test_webhook_config(), embeddable).await;
    catalog(&app).await;
    let ada = customer_with_minutes(&app, "Ada", "20").await;
    let link = portal_link(&app, &ada).await;
    let path = link.strip_prefix("https://billing.example").unwrap();
    let (_, _, cookie, _) = open_link(&format!("{}{path}", app.base)).await;
    let cookie = cookie.unwrap();
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    for attribute in ["SameSite=None", "Secure", "Partitioned", "HttpOnly", "Path=/portal"] {
        assert!(attributes.contains(&attribute), "{attribute} in {cookie}");
    }
    let session = cookie.split(';').next().unwrap();
    for page in ["/portal", "/portal/top-ups", "/portal/cards", "/portal/nope"] {
        let (_, _, headers) = portal(&app, Method::GET, page, Some(session), &[]).await;
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.ends_with("frame-ancestors 'self' https://app.example https://*.example.org"),
            "{page}: {policy}"
        );
        assert!(headers.get("x-frame-options").is_none(), "{page}: X-Frame-Options would contradict the allow-list");
    }
    let checkout = start_top_up(&app, session, "10", false).await;
    let checkout = checkout.replace("https://billing.example", &app.base);
    let response = reqwest::get(&checkout).await.unwrap();
    assert!(response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'self' https://app.example"));
    let (status, _, _, page) = open_link(&format!("{}/portal/enter?token={}", app.base, "0".repeat(64))).await;
    assert_eq!(status, 403);
    assert!(page.contains("This link is not valid") && page.contains(r#"href="https://platform.example/""#), "{page}");
}
