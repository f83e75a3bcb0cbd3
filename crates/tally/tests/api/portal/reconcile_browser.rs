//! Reconciling and reading in a real headless Chromium whose time zone is Asia/Tokyo, on
//! both backends: the page learns the browser's zone from its script, the balance cards break
//! down into grants, an overdrawn account's "pay now" fills in the top-up form, the activity
//! filters, the charts answer a tap, and tables stack on a phone. Every page is checked with
//! axe-core (no violations) and saved at desktop (1366) and phone (390) widths to
//! `target/portal-screenshots/reconcile-*.png`.

use super::axe::{axe_source, violations};
use super::browser::Browser;
use super::reconcile::{charge, plans, renders, subscribed};
use super::{generate_clips, portal_link};
use crate::harness::{Backend, TestApp};
use chrono::Duration;
use fantoccini::Locator;

const DESKTOP: (u32, u32) = (1366, 900);
const PHONE: (u32, u32) = (390, 844);

async fn reconcile_in_a_real_browser(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let Some(browser) = Browser::start_in_zone(Some("Asia/Tokyo")).await else { return };
    let axe = axe_source();
    let prefix = match backend {
        Backend::Sqlite => "reconcile-sqlite",
        Backend::Postgres => "reconcile-postgres",
    };
    plans(&app).await;
    let ada = subscribed(&app, "Ada Lovelace").await;
    charge(&app, &ada, "studio-time", "USD", "10").await; // past the $0 the plan fee left
    let soon = (app.clock.now() + Duration::days(12)).to_rfc3339();
    let gift = format!(
        r#"{{"transaction_id":"welcome","asset":"VIDMIN","amount":20,"reason":"gift","expires_at":"{soon}","description":"Welcome minutes"}}"#
    );
    app.post(&format!("/customers/{ada}/wallet/adjustments"), crate::harness::body(&gift)).await.expect(201);
    // A few days of usage, so the charts have days to show.
    for day in 0..4 {
        renders(&app, &ada, &format!("render-{day}"), 3 + day, app.clock.now()).await;
        generate_clips(&app, &ada, &format!("clip-{day}"), 1 + day % 2).await;
        app.clock.advance(Duration::days(1));
    }

    browser.client.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
    browser.goto(&portal_link(&app, &ada).await).await;
    // The first page was drawn in UTC; the script tells the server the browser's zone and
    // draws it again.
    app.eventually("the page is drawn in the browser's zone", || async {
        browser.element("[data-tz]").await.attr("data-tz").await.unwrap().as_deref() == Some("Asia/Tokyo")
    })
    .await;
    assert_eq!(browser.path().await, "/portal");
    let credits = browser.text(r#"[data-account="default:CRED"]"#).await;
    assert!(credits.contains("included credits, renew"), "{credits}");
    let minutes = browser.text(r#"[data-account="default:VIDMIN"]"#).await;
    assert!(minutes.contains("promotional video minutes expire"), "{minutes}");
    let dollars = browser.text(r#"[data-account="default:USD"]"#).await;
    assert!(dollars.contains("Overdrawn: you owe $10.00."), "{dollars}");
    assert!(browser.text(".plan").await.contains("150 credits every month"));

    // A tap (or click) on a bar shows its value under the chart; hovering shows its title.
    let bar = browser.element(r#"figure[data-asset="CRED"] rect[data-value]"#).await;
    let value = bar.attr("data-value").await.unwrap().unwrap();
    assert!(value.contains("Pro") && value.contains("credits"), "{value}");
    bar.click().await.unwrap();
    assert_eq!(browser.text(r#"figure[data-asset="CRED"] .chart-value"#).await, value);
    let labels = browser.client.find_all(Locator::Css(r#"figure[data-asset="CRED"] .axis-label"#)).await.unwrap();
    assert!(labels.len() >= 5 + 6, "a labelled value axis and a date every five days: {}", labels.len());
    shots(&browser, &axe, prefix, "01-overview").await;

    // The activity, filtered with its form.
    browser.goto(&format!("{}/portal/activity", app.base)).await;
    let rows = browser.client.find_all(Locator::Css("tr[data-transaction]")).await.unwrap();
    assert!(rows.len() >= 20, "every movement: {}", rows.len());
    shots(&browser, &axe, prefix, "02-activity").await;
    browser.element("#kind").await.select_by_value("plan_fee").await.unwrap();
    browser.click_to_load(r#"form.filters button[type="submit"]"#).await;
    app.eventually("the filter applies", || async { browser.path().await.contains("kind=plan_fee") }).await;
    let rows = browser.client.find_all(Locator::Css("tr[data-transaction]")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].text().await.unwrap().contains("-$10.00"));
    let csv = browser.element("a.download").await.attr("href").await.unwrap().unwrap();
    assert!(csv.starts_with("/portal/activity.csv?") && csv.contains("kind=plan_fee"), "{csv}");
    shots(&browser, &axe, prefix, "03-activity-plan-fees").await;

    browser.goto(&format!("{}/portal/usage", app.base)).await;
    shots(&browser, &axe, prefix, "04-usage").await;

    // "Pay now" opens the top-up form with what is owed filled in.
    browser.goto(&format!("{}/portal", app.base)).await;
    browser.click_to_load(r#"[data-account="default:USD"] a.pay-now"#).await;
    assert_eq!(browser.path().await, "/portal/top-ups?option=USD:USD&amount=10.00");
    assert_eq!(browser.element("#amount").await.prop("value").await.unwrap().as_deref(), Some("10.00"));
    shots(&browser, &axe, prefix, "05-pay-now").await;

    // On a phone, table rows stack: the date and subject stay, each cell labelled.
    browser.client.set_window_size(PHONE.0, PHONE.1).await.unwrap();
    browser.goto(&format!("{}/portal/activity", app.base)).await;
    let first = r#"tr[data-transaction] td[data-label="When"]"#;
    assert_eq!(browser.element(first).await.css_value("display").await.unwrap(), "flex");
    let subject = browser.element(r#"tr[data-transaction] td[data-label="Subject"]"#).await;
    assert!(subject.is_displayed().await.unwrap(), "the subject stays on a phone");
    let overflow = browser.script("return document.documentElement.scrollWidth - window.innerWidth;").await;
    assert!(overflow.as_i64().unwrap_or(1) <= 0, "the activity scrolls sideways on a phone by {overflow}px");
    browser.client.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
    browser.client.clone().close().await.unwrap();
    app.assert_ledger_agrees().await;
}

/// Audits the current page with axe-core and saves it, at desktop and phone widths, then goes
/// back to desktop.
async fn shots(browser: &Browser, axe: &str, prefix: &str, name: &str) {
    let found = violations(browser, axe).await;
    assert!(found.is_empty(), "{name} at desktop width: {found:#?}");
    browser.shot(&format!("{prefix}-{name}-desktop")).await;
    browser.client.set_window_size(PHONE.0, PHONE.1).await.unwrap();
    let found = violations(browser, axe).await;
    assert!(found.is_empty(), "{name} at phone width: {found:#?}");
    let overflow = browser.script("return document.documentElement.scrollWidth - window.innerWidth;").await;
    assert!(overflow.as_i64().unwrap_or(1) <= 0, "{name} scrolls sideways on a phone by {overflow}px");
    browser.shot(&format!("{prefix}-{name}-phone")).await;
    browser.client.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_in_a_real_browser_sqlite() {
    reconcile_in_a_real_browser(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_in_a_real_browser_postgres() {
    reconcile_in_a_real_browser(Backend::Postgres).await;
}
