//! The billing portal in a real browser: headless Chromium driven through chromedriver's
//! WebDriver protocol. One customer's whole journey, with a PNG of every page saved to
//! `target/portal-screenshots/` as a test artifact.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install -y
//! chromium chromium-driver`, which `.ci/run` does). Without them the test fails and says
//! so, unless TALLY_SKIP_BROWSER=1, which skips it.

use super::{catalog, customer_with_minutes, generate_clips, portal_link};
use crate::harness::{test_webhook_config, Backend, TestApp, TestDatabase};
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);
/// The platform's logo: an inline SVG, so the test needs no network.
const LOGO: &str = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E%3Crect width='32' height='32' rx='8' fill='%230f766e'/%3E%3Cpath d='M8 23V9l8 8 8-8v14' stroke='white' stroke-width='3' fill='none'/%3E%3C/svg%3E";
const ACCENT: &str = "#0f766e";

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/portal-screenshots");
    std::fs::create_dir_all(&dir).expect("create target/portal-screenshots");
    dir
}

/// Chromium under chromedriver, stopped when dropped.
pub(super) struct Browser {
    pub(super) client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// `None` when the browser is missing and TALLY_SKIP_BROWSER=1.
    async fn start() -> Option<Browser> {
        Browser::start_in_zone(None).await
    }

    /// [`Browser::start`] with the browser's time zone set (`TZ`), such as `Asia/Tokyo`.
    pub(super) async fn start_in_zone(zone: Option<&str>) -> Option<Browser> {
        let missing: Vec<&str> =
            [CHROMIUM, CHROMEDRIVER].into_iter().filter(|path| !Path::new(path).exists()).collect();
        if !missing.is_empty() {
            if std::env::var("TALLY_SKIP_BROWSER").is_ok_and(|value| value == "1") {
                eprintln!("browser test SKIPPED (TALLY_SKIP_BROWSER=1): {} not installed", missing.join(" and "));
                return None;
            }
            panic!(
                "the billing portal's browser test needs {}: install with `apt-get install -y chromium chromium-driver` \
                 (as .ci/run does), or set TALLY_SKIP_BROWSER=1 to skip it",
                missing.join(" and ")
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new(CHROMEDRIVER);
        if let Some(zone) = zone {
            command.env("TZ", zone);
        }
        let driver = command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {CHROMEDRIVER}: {error}"));
        let profile = tempfile::tempdir().unwrap();
        let browser = Browser { client: connect(port, profile.path()).await, driver, _profile: profile };
        browser.client.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
        Some(browser)
    }

    pub(super) async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|error| panic!("cannot open {url}: {error}"));
    }

    /// The text of `css`. An element replaced between its find and the read (the page
    /// re-rendered it) is found again rather than read stale.
    pub(super) async fn text(&self, css: &str) -> String {
        for _ in 0..5 {
            match self.element(css).await.text().await {
                Ok(text) => return text,
                Err(error) if error.is_stale_element_reference() => continue,
                Err(error) => panic!("cannot read {css}: {error}"),
            }
        }
        panic!("{css} was replaced every time it was read");
    }

    /// Clicks `css`, which leads to another page, and waits until that page has replaced
    /// this one. Only then may the next step look for an element: found any sooner, an
    /// element both pages have (`.error`, a balance) is the old page's, stale a moment later.
    pub(super) async fn click_to_load(&self, css: &str) {
        self.script("document.documentElement.setAttribute('data-left', '');").await;
        self.element(css).await.click().await.unwrap_or_else(|error| panic!("cannot click {css}: {error}"));
        let new_page = Locator::Css("html:not([data-left])");
        let mut last_error = String::new();
        // A find sent while the browser swaps documents may fail outright; it is asked again
        // until the wait's own timeout.
        for _ in 0..10 {
            let wait = self.client.wait().at_most(Duration::from_secs(30)).every(Duration::from_millis(50));
            match wait.for_element(new_page).await {
                Ok(_) => return,
                Err(fantoccini::error::CmdError::WaitTimeout) => {
                    panic!("clicking {css} loaded no new page\n{}", self.body().await)
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        panic!("clicking {css}: the new page could not be read: {last_error}");
    }

    pub(super) async fn element(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css(css)).await {
            Ok(element) => element,
            Err(error) => panic!("no element matches {css}: {error}\n{}", self.body().await),
        }
    }

    pub(super) async fn body(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub(super) async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    pub(super) async fn script(&self, source: &str) -> Value {
        self.client.execute(source, vec![]).await.unwrap()
    }

    pub(super) async fn press(&self, key: Key) {
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: key.into() })
            .then(KeyAction::Up { value: key.into() });
        self.client.perform_actions(keys).await.unwrap();
    }

    /// What has the keyboard focus: its id, else its name, else its text.
    pub(super) async fn focused(&self) -> String {
        let value = self
            .script("const e = document.activeElement; return e.id || e.getAttribute('name') || e.textContent.trim();")
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Saves the whole page (the window stretched to its height) as `name`.png.
    pub(super) async fn shot(&self, name: &str) {
        let (width, height) = self.client.get_window_size().await.unwrap();
        let full = self.script("return document.documentElement.scrollHeight;").await.as_u64().unwrap_or(height);
        self.client.set_window_size(width as u32, full.clamp(height, 6000) as u32).await.unwrap();
        // The resized page has been laid out and painted once two animation frames have run.
        self.client
            .execute_async(
                "const done = arguments[arguments.length - 1]; \
                 requestAnimationFrame(() => requestAnimationFrame(() => done(true)));",
                vec![],
            )
            .await
            .unwrap();
        let png = self.client.screenshot().await.unwrap();
        self.client.set_window_size(width as u32, height as u32).await.unwrap();
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Reloads `url` until `css`'s text contains `expected`, for up to 20 seconds.
    pub(super) async fn poll_until(&self, url: &str, css: &str, expected: &str) {
        for _ in 0..80 {
            self.goto(url).await;
            if self.text(css).await.contains(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{css} never showed {expected:?}; the page says:\n{}", self.body().await);
    }
}

async fn connect(port: u16, profile: &Path) -> Client {
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let Value::Object(capabilities) = capabilities else { unreachable!() };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let mut last_error = String::new();
    // chromedriver takes a moment to listen.
    for _ in 0..100 {
        match ClientBuilder::new(connector.clone())
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return client,
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot start a Chromium session through chromedriver: {last_error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_portal_in_a_real_browser() {
    let Some(browser) = Browser::start().await else { return };
    let database = Arc::new(TestDatabase::create(Backend::Sqlite).unwrap());
    let branded = |mut state: tally_http::AppState| {
        state.branding.name = "Glitch Studio".into();
        state.branding.logo_url = Some(LOGO.into());
        state.branding.accent_color = ACCENT.into();
        state
    };
    let app = TestApp::spawn_with_state(database, Backend::Sqlite, test_webhook_config(), branded).await;
    catalog(&app).await;
    let customer = customer_with_minutes(&app, "Ada Lovelace", "20").await;
    app.fund(&customer, "USD", "5", "usd-topup").await;
    generate_clips(&app, &customer, "warmup", 1).await;

    // Open the portal from a session link and read the balances.
    browser.goto(&portal_link(&app, &customer).await).await;
    assert_eq!(browser.path().await, "/portal", "the link signs in and lands on the portal's home");
    let minutes = r#"[data-account="default:VIDMIN"] .balance"#;
    assert!(browser.text(minutes).await.contains("18.00"), "20 gift minutes less one 2-minute clip");
    assert!(browser.text(r#"[data-account="default:VIDMIN"]"#).await.contains("Video minutes"));
    assert!(browser.text(r#"[data-account="default:USD"] .balance"#).await.contains("$5.00"));
    // The platform's branding: name, logo and accent colour.
    assert_eq!(browser.text("header .name").await, "Glitch Studio");
    assert_eq!(browser.element("header img").await.attr("src").await.unwrap().as_deref(), Some(LOGO));
    let accent = browser.element("a.button").await.css_value("background-color").await.unwrap();
    assert!(accent.starts_with("rgb") && accent.contains("15, 118, 110"), "the accent colour, not {accent}");
    browser.shot("01-overview").await;

    // Top up with the succeeding card, watching the live quote on the way.
    browser.click_to_load(r#"nav a[href="/portal/top-ups"]"#).await;
    browser.element("#option").await.select_by_value("VIDMIN:USD").await.unwrap();
    browser.element("#amount").await.send_keys("10").await.unwrap();
    // The quote arrives a moment after typing (the script waits for a pause, then asks).
    app.eventually("the live quote shows", || async { browser.text("#quote").await.contains("100.00 video minutes") })
        .await;
    assert_eq!(browser.text("#quote").await, "You get 100.00 video minutes", "the live quote");
    browser.shot("02-top-up-form").await;
    browser.click_to_load(r#"#top-up-form button[type="submit"]"#).await;
    browser.element("#card_number").await;
    assert!(browser.path().await.starts_with("/checkout/top_"));
    browser.shot("03-checkout").await;
    browser.element("#card_number").await.send_keys("4242 4242 4242 4242").await.unwrap();
    browser.click_to_load(r#"button[type="submit"]"#).await;
    browser.element(".ok").await;
    assert_eq!(browser.path().await, "/portal?checkout=done");
    assert!(browser.text(".ok").await.contains("succeeded"), "{}", browser.body().await);
    assert!(browser.text(minutes).await.contains("118.00"), "the new balance");
    let top_ups = browser.client.find_all(Locator::Css("tr[data-top-up]")).await.unwrap();
    assert_eq!(top_ups.len(), 1);
    assert!(top_ups[0].text().await.unwrap().contains("succeeded"));
    browser.shot("04-after-top-up").await;

    // The declined card says so, on the checkout page and back in the portal.
    browser.click_to_load(r#"nav a[href="/portal/top-ups"]"#).await;
    browser.element("#amount").await.send_keys("5").await.unwrap();
    browser.click_to_load(r#"#top-up-form button[type="submit"]"#).await;
    browser.element("#card_number").await.send_keys("4000 0000 0000 0002").await.unwrap();
    browser.click_to_load(r#"button[type="submit"]"#).await;
    assert!(browser.text(".error").await.contains("Your card was declined."));
    browser.shot("05-declined-card").await;
    // The customer could try another card on the same page; here they cancel instead.
    // The checkout page has an `.error` too: the portal's is read only once it has loaded.
    browser.click_to_load(r#"form[action$="/cancel"] button"#).await;
    assert!(browser.text(".error").await.contains("did not go through: cancelled by the customer"));
    assert!(browser.text(minutes).await.contains("118.00"), "a declined card adds nothing");
    browser.shot("06-after-decline").await;

    // Auto top-up with the card saved by the first top-up.
    browser.click_to_load(r#"nav a[href="/portal/auto-top-up"]"#).await;
    let section = r#"section[data-account="default:VIDMIN"]"#;
    browser.element(&format!("{section} #enabled-default-VIDMIN")).await.click().await.unwrap();
    browser.element("#threshold-default-VIDMIN").await.send_keys("50").await.unwrap();
    browser.element("#amount-default-VIDMIN").await.send_keys("10").await.unwrap();
    browser.element("#currency-default-VIDMIN").await.select_by_value("USD").await.unwrap();
    browser.element("#method-default-VIDMIN").await.select_by_label("Visa ending 4242").await.unwrap();
    browser.click_to_load(&format!("{section} button[type=\"submit\"]")).await;
    assert!(browser.text(&format!("{section} .ok")).await.contains("Saved"));
    let status = browser.text("#status-default-VIDMIN").await;
    assert!(
        status.contains("On: when available falls below 50.00 video minutes, pay $10.00 with your Visa ending 4242"),
        "{status}"
    );
    browser.shot("07-auto-top-up").await;

    // Usage drops the balance below 50: auto top-up buys 100 minutes, visible on the page.
    generate_clips(&app, &customer, "burst", 35).await; // 118 - 70 = 48
    browser.poll_until(&format!("{}/portal", app.base), minutes, "148.00").await;
    let automatic = browser.client.find_all(Locator::Css("tr[data-top-up]")).await.unwrap();
    assert!(automatic[0].text().await.unwrap().contains("Automatic"), "the newest top-up is the automatic one");
    browser.shot("08-auto-top-up-credited").await;
    browser.goto(&format!("{}/portal/usage", app.base)).await;
    let usage = browser.text("table").await;
    assert!(usage.contains("Generated 4-second video clip") && usage.contains("-2.00 video minutes"), "{usage}");
    assert!(usage.contains("Glitch Video"), "{usage}");
    browser.shot("09-usage").await;

    // On a phone: nothing wider than the screen.
    browser.client.set_window_size(PHONE.0, PHONE.1).await.unwrap();
    for (path, name) in [
        ("/portal", "10-phone-overview"),
        ("/portal/top-ups", "11-phone-top-up"),
        ("/portal/auto-top-up", "12-phone-auto-top-up"),
    ] {
        browser.goto(&format!("{}{path}", app.base)).await;
        let overflow = browser.script("return document.documentElement.scrollWidth - window.innerWidth;").await;
        assert!(overflow.as_i64().unwrap_or(1) <= 0, "{path} scrolls sideways on a phone by {overflow}px");
        browser.shot(name).await;
    }

    // With a keyboard: the skip link comes first, then the form can be filled and sent.
    browser.client.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
    browser.goto(&format!("{}/portal/top-ups", app.base)).await;
    browser.press(Key::Tab).await;
    assert_eq!(browser.focused().await, "Skip to content");
    browser.shot("13-keyboard-skip-link").await;
    browser.press(Key::Enter).await;
    assert_eq!(browser.focused().await, "main", "the skip link moves focus to the content");
    let mut reached = Vec::new();
    for _ in 0..30 {
        browser.press(Key::Tab).await;
        let focused = browser.focused().await;
        if focused == "amount" {
            break;
        }
        reached.push(focused);
    }
    assert!(reached.contains(&"option".to_owned()), "the asset select is reachable by Tab: {reached:?}");
    assert_eq!(browser.focused().await, "amount", "the amount field is reachable by Tab: {reached:?}");
    let keys = KeyActions::new("typing".into()).then(KeyAction::Down { value: '7' }).then(KeyAction::Up { value: '7' });
    browser.client.perform_actions(keys).await.unwrap();
    browser.press(Key::Tab).await;
    assert_eq!(browser.focused().await, "save_card", "then whether to save the card");
    browser.press(Key::Tab).await;
    assert_eq!(browser.focused().await, "Continue to payment", "then the submit button");
    browser.shot("14-keyboard-focus").await;
    browser.press(Key::Enter).await;
    browser.element("#card_number").await;
    assert!(browser.path().await.starts_with("/checkout/top_"), "Enter sends the form");
    assert!(browser.body().await.contains("Pay $7.00"));

    browser.client.clone().close().await.unwrap();
    app.assert_ledger_agrees().await;
}
