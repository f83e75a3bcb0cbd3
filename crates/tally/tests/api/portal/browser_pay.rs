//! Paying through the billing portal in a real headless Chromium, on both backends: preset
//! amounts and the minimum, a declined card then another on the same checkout, resuming and
//! cancelling a pending top-up, saved cards, and the dead ends (404, link not valid, session
//! ended). Every page is checked with axe-core at desktop (1366 px) and phone (390 px) widths
//! and saved as `target/portal-screenshots/pay-{backend}-{page}-{width}.png`.

use super::axe::{axe_source, violations};
use super::browser::Browser;
use super::{catalog, customer_with_minutes, generate_clips, portal_link};
use crate::harness::{test_webhook_config, Backend, TestApp, TestDatabase};
use chrono::Duration;
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;

const DESKTOP: (u32, u32) = (1366, 900);
const PHONE: (u32, u32) = (390, 844);
const ACCENT: &str = "#0f766e";

/// The audit of every page: axe-core and a screenshot at both widths, and no sideways
/// scrolling on a phone. Problems are gathered so that one run shows them all.
struct Audit {
    axe: String,
    prefix: String,
    problems: Vec<String>,
    pages: usize,
}

impl Audit {
    async fn page(&mut self, browser: &Browser, name: &str) {
        for (width_name, (width, height)) in [("desktop", DESKTOP), ("phone", PHONE)] {
            browser.client.set_window_size(width, height).await.unwrap();
            for violation in violations(browser, &self.axe).await {
                self.problems.push(format!("{name} at {width_name} width: {violation}"));
            }
            if width_name == "phone" {
                let overflow = browser.script("return document.documentElement.scrollWidth - window.innerWidth;").await;
                if overflow.as_i64().unwrap_or(1) > 0 {
                    self.problems.push(format!("{name} scrolls sideways on a phone by {overflow}px"));
                }
            }
            browser.shot(&format!("{}-{name}-{}", self.prefix, width)).await;
        }
        browser.client.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
        self.pages += 1;
    }
}

async fn click(browser: &Browser, css: &str) {
    browser.element(css).await.click().await.unwrap();
}

async fn type_into(browser: &Browser, css: &str, text: &str) {
    let field = browser.element(css).await;
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn journey(backend: Backend) {
    let Some(browser) = Browser::start_in_zone(None).await else { return };
    let Some(database) = tokio::task::spawn_blocking(move || TestDatabase::create(backend)).await.unwrap() else {
        eprintln!("browser payment test SKIPPED on {backend:?}: no database");
        return;
    };
    let branded = |mut state: tally_http::AppState| {
        state.branding.name = "Glitch Studio".into();
        state.branding.accent_color = ACCENT.into();
        state
    };
    let app = TestApp::spawn_with_state(Arc::new(database), backend, test_webhook_config(), branded).await;
    let mut audit = Audit {
        axe: axe_source(),
        prefix: format!("pay-{}", format!("{backend:?}").to_lowercase()),
        problems: Vec::new(),
        pages: 0,
    };
    catalog(&app).await;
    let settings = json!({"USD": {"minimum_amount": 5, "preset_amounts": [10, 25, 50]}});
    app.call(Method::PUT, "/assets/VIDMIN/top-up", Some(&app.test_key), Some(&settings)).await.expect(200);
    let customer = customer_with_minutes(&app, "Ada Lovelace", "20").await;
    generate_clips(&app, &customer, "warmup", 1).await;
    let minutes = r#"[data-account="default:VIDMIN"] .balance"#;

    browser.goto(&portal_link(&app, &customer).await).await;
    assert_eq!(browser.path().await, "/portal");
    // The audit can fail: an image without a text alternative is a violation it reports.
    browser.script("const image = document.createElement('img'); image.id = 'probe'; image.src = 'data:image/gif;base64,R0lGODlhAQABAAAAACw='; document.body.appendChild(image);").await;
    let probe = violations(&browser, &audit.axe).await;
    assert!(probe.iter().any(|violation| violation.starts_with("image-alt")), "axe-core runs: {probe:?}");
    browser.script("document.getElementById('probe').remove();").await;
    audit.page(&browser, "overview").await;

    // The top-up form: presets and the minimum.
    click(&browser, r#"nav a[href="/portal/top-ups"]"#).await;
    assert!(browser.text("#rates").await.contains("at least $5.00"));
    audit.page(&browser, "top-up-form").await;
    type_into(&browser, "#amount", "2").await;
    click(&browser, r#"#top-up-form > button[type="submit"]"#).await;
    assert!(browser.text(".error").await.contains("The minimum top-up is $5.00."), "{}", browser.body().await);
    audit.page(&browser, "top-up-minimum").await;

    // A preset; the first card is declined, another on the same page pays.
    click(&browser, r#"button[name="preset"][value="VIDMIN:USD|10"]"#).await;
    browser.element("#card_number").await;
    assert!(browser.path().await.starts_with("/checkout/top_"));
    let checkout = browser.path().await;
    assert!(browser.text("h1").await.contains("Pay $10.00"));
    assert!(browser.body().await.contains("100.00 video minutes") && browser.body().await.contains("Test mode"));
    audit.page(&browser, "checkout").await;
    type_into(&browser, "#card_number", "4000 0000 0000 0002").await;
    click(&browser, r#"form[action^="/checkout/"]:not([action$="/cancel"]) button"#).await;
    assert!(browser.text(".error").await.contains("Your card was declined."));
    assert_eq!(browser.path().await.split('?').next(), checkout.split('?').next(), "still the same checkout");
    audit.page(&browser, "checkout-declined").await;
    type_into(&browser, "#card_number", "4242 4242 4242 4242").await;
    click(&browser, r#"form[action^="/checkout/"]:not([action$="/cancel"]) button"#).await;
    assert!(browser.text(".ok").await.contains("succeeded"), "{}", browser.body().await);
    assert!(browser.text(minutes).await.contains("118.00"), "credited once: 18 + 100");
    audit.page(&browser, "after-top-up").await;

    // A top-up left pending: resumed, then cancelled from the history.
    click(&browser, r#"nav a[href="/portal/top-ups"]"#).await;
    type_into(&browser, "#amount", "7").await;
    click(&browser, "#save_card").await; // do not save this one
    click(&browser, r#"#top-up-form > button[type="submit"]"#).await;
    browser.element("#card_number").await;
    browser.goto(&format!("{}/portal/top-ups", app.base)).await;
    assert!(browser.text("tr[data-top-up]").await.contains("pending"));
    audit.page(&browser, "top-up-pending").await;
    // On a phone the history's rows stack like the other pages' tables, each cell labelled.
    browser.client.set_window_size(PHONE.0, PHONE.1).await.unwrap();
    let when = browser.element(r#"tr[data-top-up] td[data-label="When"]"#).await;
    assert_eq!(when.css_value("display").await.unwrap(), "flex");
    browser.client.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
    click(&browser, "tr[data-top-up] a").await;
    assert!(browser.text("h1").await.contains("Pay $7.00"), "resumed: {}", browser.body().await);
    browser.goto(&format!("{}/portal/top-ups", app.base)).await;
    click(&browser, r#"tr[data-top-up] form button"#).await;
    assert!(browser.text(".ok").await.contains("cancelled"), "{}", browser.body().await);
    assert!(browser.text("tr[data-top-up]").await.contains("expired"));
    audit.page(&browser, "top-up-cancelled").await;

    // Saved cards: the one from the first top-up, another added, made default, removed.
    click(&browser, r#"nav a[href="/portal/cards"]"#).await;
    assert!(browser.text(".cards").await.contains("Visa ending 4242"));
    audit.page(&browser, "cards").await;
    click(&browser, r#"a[href="/portal/cards/new"]"#).await;
    audit.page(&browser, "card-new").await;
    type_into(&browser, "#card_number", "4242 4242 4242 4242").await;
    // Each of these loads a new cards page: it is read once it has replaced the old one.
    browser.click_to_load(r#"form[action="/portal/cards/new"] button"#).await;
    let cards = browser.client.find_all(fantoccini::Locator::Css("li[data-card]")).await.unwrap();
    assert_eq!(cards.len(), 2);
    browser.click_to_load(r#"form[action$="/default"] button"#).await;
    browser.click_to_load(r#"form[action$="/remove"] button"#).await;
    let cards = browser.client.find_all(fantoccini::Locator::Css("li[data-card]")).await.unwrap();
    assert_eq!(cards.len(), 1, "{}", browser.body().await);
    audit.page(&browser, "cards-after-removal").await;

    // The other pages.
    for (path, name) in
        [("/portal/auto-top-up", "auto-top-up"), ("/portal/usage", "usage"), ("/portal/nope", "not-found")]
    {
        browser.goto(&format!("{}{path}", app.base)).await;
        audit.page(&browser, name).await;
    }
    browser.goto(&format!("{}/portal/enter?token={}", app.base, "0".repeat(64))).await;
    assert!(browser.text("h1").await.contains("This link is not valid"));
    audit.page(&browser, "invalid-link").await;
    app.clock.advance(Duration::minutes(61));
    browser.goto(&format!("{}/portal", app.base)).await;
    assert!(browser.text("h1").await.contains("Your session has ended"));
    assert!(browser
        .element("main a.button")
        .await
        .attr("href")
        .await
        .unwrap()
        .unwrap()
        .starts_with("https://platform.example/"));
    audit.page(&browser, "session-ended").await;

    browser.client.clone().close().await.unwrap();
    assert!(audit.pages >= 15, "every page was audited");
    assert!(audit.problems.is_empty(), "accessibility or layout problems:\n{}", audit.problems.join("\n"));
    app.assert_ledger_agrees().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_in_a_real_browser_sqlite() {
    journey(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_in_a_real_browser_postgres() {
    journey(Backend::Postgres).await;
}
