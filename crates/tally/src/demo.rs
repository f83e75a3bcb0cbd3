//! `tally demo`: fills a new, empty database with a week of test-mode data, and prints a test
//! API key and a billing-portal link, so that a newcomer sees Tally at work in a minute.
//!
//! Everything is made through the API itself, by an in-process server on `127.0.0.1:0`, as a
//! platform would make it: an asset, the `glitch_images_std` product, customers subscribed to
//! it, top-ups paid through the test payment provider (its test helper, as the test suite
//! pays them), and usage events. So that the history spans several days, the server's clock
//! starts six days in the past while the customers are set up, then returns to the present;
//! the events are then sent back-dated over those days (inside the API's 7-day grace
//! window), priced as they occurred and paid as they arrive. Last, an upscale of a factor no
//! price knows is stored unbilled, and billed by a rebill once a new version prices it.

use crate::bench::GLITCH_IMAGES;
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use std::sync::Arc;
use tally_core::Mode;
use tally_store::Store;

/// How many days of usage the demo makes.
const DAYS: i64 = 6;

const IMG_ASSET: &str = r#"{"code":"IMG","name":"Image Generation","precision":2,"label":"image","symbol":"🖼","rates":[{"source":"USD","rate":0.10}]}"#;

/// A demo customer: who, what it paid at the start, and its usage per day.
struct DemoCustomer {
    name: &'static str,
    external_id: &'static str,
    email: &'static str,
    top_up_usd: u32,
    images_per_day: usize,
}

const CUSTOMERS: [DemoCustomer; 3] = [
    DemoCustomer {
        name: "Glitch Studio",
        external_id: "studio-42",
        email: "billing@glitch.example",
        top_up_usd: 20,
        images_per_day: 14,
    },
    DemoCustomer {
        name: "Pixel Forge",
        external_id: "forge-7",
        email: "accounts@pixelforge.example",
        top_up_usd: 15,
        images_per_day: 9,
    },
    DemoCustomer {
        name: "Night Owl Labs",
        external_id: "owl-3",
        email: "ops@nightowl.example",
        top_up_usd: 5,
        images_per_day: 4,
    },
];

/// An upscaling product whose version 1 prices the `2x` factor only; version 2 adds `8x`.
const UPSCALE: &str = r#"{"name":"Glitch Upscale","code":"glitch_upscale","publish":true,"prices":[{"name":"Upscale",
  "type":"usage_based","billing_model":{"type":"real_time"},
  "usage_calculation":{"event_type":"image_upscaled","usage_type":"unit","billable_dimensions":["factor"]},
  "pricing":[{"asset":"IMG","values":[{"dimensions":{"factor":"2x"},"values":[{"unit_price":1}]}]}]}]}"#;

/// The first customer tops up again halfway through the week.
const SECOND_TOP_UP_USD: u32 = 10;

/// What the demo made, for its report.
pub struct Demo {
    pub key: String,
    pub portal_link: String,
    pub portal_customer: String,
    pub customers: Vec<(String, &'static str, &'static str, String)>,
    pub events: usize,
}

/// Refuses a database that holds anything a platform made: the demo only fills a new one.
fn refuse_existing_data(store: &Store, shown_url: &str) -> anyhow::Result<()> {
    let counts = store.read(tally_store::repo::export::row_counts)?;
    let found: Vec<String> = counts
        .iter()
        .filter(|(table, count)| *count > 0 && ["api_keys", "assets", "products", "customers"].contains(table))
        .map(|(table, count)| format!("{table}: {count}"))
        .collect();
    if !found.is_empty() {
        bail!(
            "the database at {shown_url} already holds data ({}): tally demo only fills a new, empty database. \
             Point it at a new one, for example: tally demo --database sqlite://tally-demo/tally.db",
            found.join(", ")
        );
    }
    Ok(())
}

/// Where the links the demo prints point: the configured public URL, or the address
/// `tally serve` listens on.
pub fn public_base(public_url: &str, listen: &str) -> String {
    if !public_url.is_empty() {
        return public_url.trim_end_matches('/').to_owned();
    }
    let host = match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_owned(),
    };
    format!("http://{host}")
}

/// Makes the demo's data in `store` (which must hold none) and returns what to show.
pub fn run(store: Arc<Store>, shown_url: &str, public_base: &str, platform_name: &str) -> anyhow::Result<Demo> {
    refuse_existing_data(&store, shown_url)?;
    let start = chrono::Utc::now() - chrono::Duration::days(DAYS);
    let (_, key) = store.write(|conn| tally_store::repo::api_keys::create(conn, Mode::Test, Some("demo"), start))?;
    let clock = tally_http::clock::Clock::starting_at(start);
    let config = tally_http::HttpConfig {
        platform_name: platform_name.to_owned(),
        public_url: Some(public_base.to_owned()),
        clock: clock.clone(),
        ..tally_http::HttpConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api =
            Api { http: reqwest::Client::new(), base: format!("http://{}", listener.local_addr()?), key: key.clone() };
        let state = tally_http::AppState::new(store.clone(), config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tally_http::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let made = populate(&api, &clock, start).await;
        let _ = stop.send(());
        server.await.context("the demo's server task failed")??;
        let (customers, events, portal_link) = made?;
        Ok(Demo { key, portal_link, portal_customer: CUSTOMERS[0].name.to_owned(), customers, events })
    })
}

/// The customers (id, name, external id, balance), the number of events, the portal link.
type Made = (Vec<(String, &'static str, &'static str, String)>, usize, String);

async fn populate(
    api: &Api,
    clock: &tally_http::clock::Clock,
    start: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Made> {
    api.post("/assets", serde_json::from_str(IMG_ASSET)?).await?;
    api.post("/products", serde_json::from_str(GLITCH_IMAGES)?).await?;
    let mut ids = Vec::new();
    for customer in &CUSTOMERS {
        let created = api
            .post(
                "/customers",
                json!({"name": customer.name, "external_id": customer.external_id, "email": customer.email}),
            )
            .await?;
        let id = created["id"].as_str().ok_or_else(|| anyhow!("a customer without an id: {created}"))?.to_owned();
        api.post(&format!("/customers/{id}/subscriptions"), json!({"products": [{"code": "glitch_images_std"}]}))
            .await?;
        api.top_up(&id, customer.top_up_usd).await?;
        ids.push(id);
    }
    clock.advance(chrono::Duration::days(DAYS / 2));
    api.top_up(&ids[0], SECOND_TOP_UP_USD).await?;
    // Back to the present: the usage arrives now, back-dated over the days past.
    clock.advance(chrono::Utc::now() - clock.now());
    let mut events = 0;
    for (index, (id, customer)) in ids.iter().zip(&CUSTOMERS).enumerate() {
        for day in 0..DAYS {
            // A little more or less each day, the same on every run.
            let count = customer.images_per_day + (day as usize * 5 + index * 3) % 7;
            let day_start = start + chrono::Duration::days(day) + chrono::Duration::hours(1);
            let spacing = chrono::Duration::hours(20) / count as i32;
            let batch: Vec<Value> = (0..count)
                .map(|image| {
                    let occurred_at = day_start + spacing * image as i32;
                    json!({
                        "id": format!("demo-{}-{day}-{image}", customer.external_id),
                        "event_type": "image_generated",
                        "occurred_at": tally_http::types::format_timestamp(occurred_at),
                        "subject": format!("image-{day}-{image}"),
                        "data": {"model": if image % 3 == 0 { "glitch-xl" } else { "glitch-fast" }, "size": "1024x1024"}
                    })
                })
                .collect();
            events += batch.len();
            api.post_events(json!({"customer_id": id, "events": batch})).await?;
        }
    }
    // A long job (a video render): hold an estimate, capture what it used, release the rest.
    let holds = format!("/customers/{}/wallet/holds", ids[0]);
    let render = json!({"transaction_id": "demo-render-1", "asset": "IMG", "amount": 20, "description": "Render"});
    api.post(&holds, render).await?;
    api.post(&format!("{holds}/demo-render-1/capture"), json!({"amount": 12, "transaction_id": "demo-render-1-used"}))
        .await?;
    api.send(reqwest::Method::POST, &format!("{holds}/demo-render-1/release"), None).await?;
    events += rebill_scene(api, &ids[0], clock).await?;
    let mut customers = Vec::new();
    for (id, customer) in ids.iter().zip(&CUSTOMERS) {
        let account = api.get(&format!("/customers/{id}/wallet/default:IMG")).await?;
        let balance = format!("{} IMG", account["available"]);
        customers.push((id.clone(), customer.name, customer.external_id, balance));
    }
    let session = api
        .post(
            "/billing-portal/sessions",
            json!({
                "customer_id": ids[0],
                "return_url": "https://glitch.example/account",
                "failure_url": "https://glitch.example/account?portal=expired"
            }),
        )
        .await?;
    let link = session["redirect_url"].as_str().ok_or_else(|| anyhow!("no portal link: {session}"))?.to_owned();
    Ok((customers, events, link))
}

/// An `8x` upscale is stored unbilled (`no_matching_dimension`); version 2 prices it, the
/// subscription moves there, and a rebill bills the event. Returns the events it sent.
async fn rebill_scene(api: &Api, customer_id: &str, clock: &tally_http::clock::Clock) -> anyhow::Result<usize> {
    let time = tally_http::types::format_timestamp;
    let mut product: Value = serde_json::from_str(UPSCALE)?;
    let product_id = api.post("/products", product.clone()).await?["id"].as_str().unwrap_or_default().to_owned();
    let subscription =
        api.post(&format!("/customers/{customer_id}/subscriptions"), json!({"products": [{"id": product_id}]})).await?;
    let now = clock.now();
    let event = json!({"id": "demo-upscale-1", "event_type": "image_upscaled", "data": {"factor": "8x"},
                       "occurred_at": time(now)});
    api.post_events(json!({"customer_id": customer_id, "events": [event]})).await?;
    if let Some(values) = product["prices"][0]["pricing"][0]["values"].as_array_mut() {
        values.push(json!({"dimensions": {"factor": "8x"}, "values": [{"unit_price": 1}]}));
    }
    api.post(&format!("/products/{product_id}"), json!({"prices": product["prices"], "publish": true})).await?;
    let subscription_id = subscription["id"].as_str().unwrap_or_default();
    let moved = format!("/customers/{customer_id}/subscriptions/{subscription_id}/products/{product_id}");
    api.send(reqwest::Method::PATCH, &moved, Some(json!({"version": 2}))).await?;
    let hour = chrono::Duration::hours(1);
    let period = json!({"customer_id": customer_id, "period_from": time(now - hour), "period_to": time(now + hour)});
    let report = api.post("/events/rebill", period).await?;
    if report["events_billed"] != 1 {
        bail!("the rebill did not bill the upscale: {report}");
    }
    Ok(1)
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request =
            self.http.request(method.clone(), format!("{}{path}", self.base)).header("X-CREDYT-API-KEY", &self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {text}");
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn post_events(&self, body: Value) -> anyhow::Result<()> {
        self.post("/events", body).await.map(drop)
    }

    /// A top-up in USD credited as IMG, paid through the test provider's test helper.
    async fn top_up(&self, customer_id: &str, usd: u32) -> anyhow::Result<()> {
        let top_up = self
            .post(
                "/top-ups",
                json!({
                    "customer_id": customer_id,
                    "amount": usd,
                    "currency": "USD",
                    "destination": {"asset": "IMG"},
                    "description": format!("{} IMG image credits", usd * 10),
                    "return_url": "https://glitch.example/account?top_up=done",
                    "failure_url": "https://glitch.example/account?top_up=failed"
                }),
            )
            .await?;
        let id = top_up["id"].as_str().ok_or_else(|| anyhow!("a top-up without an id: {top_up}"))?;
        let paid = self.send(reqwest::Method::POST, &format!("/test-helpers/top-ups/{id}/succeed"), None).await?;
        if paid["status"] != "succeeded" {
            bail!("the test provider did not pay top-up {id}: {paid}");
        }
        Ok(())
    }
}
