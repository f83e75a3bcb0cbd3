//! `tally bench`: measures the usage-event hot path end to end, over real HTTP.
//!
//! It starts the server in this process on `127.0.0.1:0` over a fresh temporary SQLite
//! database (or the database `--database` names, so that PostgreSQL can be measured too),
//! creates an API key, the `IMG` asset, the `glitch_images_std` product (1 IMG per
//! `image_generated` event) and customers subscribed to it and funded, then sends
//! `POST /events` from a bounded number of concurrent connections for a bounded time or
//! number of requests, in two scenarios: batches of `--batch-size` events, and one event per
//! request. Every figure printed is measured: a request counts when the server answered 204,
//! which it does only once the events are durable. Afterwards it checks the run three ways:
//! the events the server acknowledged, the events stored, and the IMG the customers' balances
//! lost must all agree, and `ledger verify` must find every balance equal to its postings.
//!
//! The client shares the process (and the machine's cores) with the server, so the figures
//! are for the whole loop: building, sending and parsing requests costs CPU here too.

use anyhow::{bail, Context};
use rust_decimal::Decimal;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_core::Mode;

/// Each customer's starting balance, in IMG: far more than a run can spend.
const FUNDING_IMG: u64 = 1_000_000_000;
/// Requests in flight while setting up customers.
const SETUP_CONCURRENCY: usize = 16;
const MAX_CUSTOMERS: usize = 10_000;
const MAX_CONNECTIONS: usize = 1024;
/// `POST /events` takes at most this many events (`routes::events::MAX_BATCH`).
const MAX_BATCH_SIZE: usize = tally_http::routes::events::MAX_BATCH;
const MAX_DURATION_SECS: u64 = 3600;

const IMG_ASSET: &str =
    r#"{"code":"IMG","name":"Image Generation","precision":2,"label":"image","rates":[{"source":"USD","rate":0.10}]}"#;
/// The seeds' `glitch_images_std` product, exactly as the blog post writes it: 1 IMG per
/// `image_generated` event. The integration tests use it too.
pub const GLITCH_IMAGES: &str = r#"{
  "name": "Glitch Images",
  "code": "glitch_images_std",
  "prices": [
    {
      "name": "Image Generation",
      "type": "usage_based",
      "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "image_generated", "usage_type": "unit" },
      "pricing": [ { "asset": "IMG", "values": [ { "unit_price": 1 } ] } ]
    }
  ],
  "publish": true
}"#;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Customers to spread the events over, each subscribed to glitch_images_std and funded.
    #[arg(long, default_value_t = 100)]
    pub customers: usize,
    /// Concurrent HTTP connections; each sends its next request when the last one is answered.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Events per request in the batch scenario.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// How long each scenario sends requests, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Also stop a scenario after this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Which scenarios to run.
    #[arg(long, value_enum, default_value_t = Scenarios::Both)]
    pub scenario: Scenarios,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenarios {
    /// Batches of `--batch-size` events, then single events.
    Both,
    Batch,
    Single,
}

impl BenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_CUSTOMERS).contains(&self.customers) {
            bail!("--customers must be from 1 to {MAX_CUSTOMERS}");
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            bail!("--connections must be from 1 to {MAX_CONNECTIONS}");
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            bail!("--batch-size must be from 1 to {MAX_BATCH_SIZE}");
        }
        if !(1..=MAX_DURATION_SECS).contains(&self.duration_secs) {
            bail!("--duration-secs must be from 1 to {MAX_DURATION_SECS}");
        }
        if self.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        Ok(())
    }

    fn scenarios(&self) -> Vec<usize> {
        match self.scenario {
            Scenarios::Both => vec![self.batch_size, 1],
            Scenarios::Batch => vec![self.batch_size],
            Scenarios::Single => vec![1],
        }
    }
}

/// Runs the benchmark and prints what it measured. `database_url` is the database given on
/// the command line; without one the bench makes a temporary SQLite database and deletes it
/// afterwards. Returns whether every check passed.
pub fn run(args: &BenchArgs, database_url: Option<&str>, settle_interval: Duration) -> anyhow::Result<bool> {
    args.check()?;
    let temporary = tempfile::tempdir().context("cannot create a temporary directory")?;
    let url = match database_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}", temporary.path().join("bench.db").display()),
    };
    let store = crate::open_store(&url)?;
    let now = chrono::Utc::now();
    let (_, key) = store.write(|conn| tally_store::repo::api_keys::create(conn, Mode::Test, Some("bench"), now))?;
    println!(
        "tally bench: {}; {} customers, {} connections, {} CPUs, {} s per scenario{}",
        without_password(&url),
        args.customers,
        args.connections,
        std::thread::available_parallelism().map_or(1, |count| count.get()),
        args.duration_secs,
        args.requests.map(|limit| format!(" or {limit} requests")).unwrap_or_default(),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let http_ok = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let config = tally_http::HttpConfig {
            platform_name: "Tally bench".into(),
            settle_interval,
            ..tally_http::HttpConfig::default()
        };
        let state = tally_http::AppState::new(store.clone(), config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tally_http::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let client = Client {
            http: reqwest::Client::builder().pool_max_idle_per_host(args.connections).build()?,
            base,
            key: Arc::new(key),
        };
        let result = drive(&client, args).await;
        let _ = stop.send(());
        server.await.context("the server task failed")??;
        result
    })?;
    drop(runtime);

    let started = Instant::now();
    let report = store.read(tally_store::ops::ledger::verify)?;
    let verdict = if report.problems.is_empty() { "OK" } else { "MISMATCH" };
    println!(
        "ledger verify: {verdict}: {} entries ({} postings), {} accounts, {} grants checked in {:.1} s",
        report.entries,
        report.postings,
        report.accounts,
        report.grants,
        started.elapsed().as_secs_f64()
    );
    for problem in report.problems.iter().take(10) {
        println!("  {problem}");
    }
    Ok(http_ok && report.problems.is_empty())
}

/// `url` with the password of its user information, if any, masked: the URL is printed.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user_information, host)) if user_information.contains(':') => {
            let user = user_information.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// Sets up the catalog and customers, runs the scenarios and checks the outcome over HTTP.
async fn drive(client: &Client, args: &BenchArgs) -> anyhow::Result<bool> {
    let stored_before = client.stored_events().await?;
    let started = Instant::now();
    let run_id = format!("{:x}", chrono::Utc::now().timestamp_micros());
    let customers = Arc::new(client.set_up(&run_id, args.customers).await?);
    println!(
        "setup: {} customers subscribed to glitch_images_std and funded with {FUNDING_IMG} IMG each in {:.1} s",
        customers.len(),
        started.elapsed().as_secs_f64()
    );

    let mut acknowledged: u64 = 0;
    let mut clean = true;
    for batch_size in args.scenarios() {
        let report = run_scenario(client, args, &run_id, &customers, batch_size).await;
        report.print(batch_size);
        acknowledged += report.events;
        clean &= report.errors == 0;
    }

    let stored = client.stored_events().await? - stored_before;
    let mut billed = Decimal::ZERO;
    for customer in customers.iter() {
        billed += Decimal::from(FUNDING_IMG) - client.available_img(customer).await?;
    }
    let agree = Decimal::from(stored) == billed && stored == acknowledged;
    println!(
        "events: {acknowledged} acknowledged, {stored} stored, {billed} IMG billed: {}",
        if agree { "they agree" } else { "MISMATCH" }
    );
    Ok(clean && agree)
}

/// What one scenario measured.
struct ScenarioReport {
    requests: u64,
    events: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    /// Latency of every answered request, in microseconds.
    latencies_us: Vec<u32>,
    /// Events acknowledged in each second of the run, to show whether throughput holds.
    events_per_second: Vec<u64>,
    /// CPU time the whole process (server and client) used during the run, where known.
    cpu: Option<Duration>,
}

impl ScenarioReport {
    fn print(&self, batch_size: usize) {
        let seconds = self.elapsed.as_secs_f64();
        let name = if batch_size == 1 { "single events".to_owned() } else { format!("batches of {batch_size}") };
        println!(
            "{name}: {} requests, {} events in {seconds:.1} s: {:.0} events/s, {:.0} requests/s",
            self.requests,
            self.events,
            self.events as f64 / seconds,
            self.requests as f64 / seconds,
        );
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let percentile = |fraction: f64| -> String {
            if sorted.is_empty() {
                return "-".into();
            }
            let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
            format_micros(sorted[index])
        };
        println!(
            "  latency: p50 {}, p90 {}, p99 {}, max {}",
            percentile(0.50),
            percentile(0.90),
            percentile(0.99),
            percentile(1.0)
        );
        if let Some(cpu) = self.cpu {
            println!(
                "  CPU (server and client): {:.2} cores busy, {:.0} µs per event, {:.0} µs per request",
                cpu.as_secs_f64() / seconds,
                cpu.as_secs_f64() * 1e6 / self.events.max(1) as f64,
                cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64,
            );
        }
        let mut trend = String::new();
        for count in &self.events_per_second {
            let _ = write!(trend, " {count}");
        }
        println!("  events acknowledged in each second:{trend}");
        if self.errors > 0 {
            println!(
                "  ERRORS: {} requests failed; the first: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("")
            );
        }
    }
}

fn format_micros(micros: u32) -> String {
    if micros < 1000 {
        format!("{micros} µs")
    } else {
        format!("{:.2} ms", f64::from(micros) / 1000.0)
    }
}

/// What one connection measured.
#[derive(Default)]
struct ConnectionReport {
    requests: u64,
    events: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
    events_per_second: Vec<u64>,
}

async fn run_scenario(
    client: &Client,
    args: &BenchArgs,
    run_id: &str,
    customers: &Arc<Vec<String>>,
    batch_size: usize,
) -> ScenarioReport {
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_secs);
    let budget = Arc::new(AtomicU64::new(args.requests.unwrap_or(u64::MAX)));
    // Stamped once: every event of the run falls well inside the grace window.
    let occurred_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..args.connections {
        let client = client.clone();
        let customers = customers.clone();
        let budget = budget.clone();
        let prefix = format!("{run_id}-{batch_size}-{connection}");
        let occurred_at = occurred_at.clone();
        tasks.spawn(async move {
            let mut report = ConnectionReport::default();
            let mut sequence: u64 = 0;
            while Instant::now() < deadline && take_one(&budget) {
                let customer = &customers[(connection + sequence as usize) % customers.len()];
                let body = events_body(customer, &prefix, sequence, batch_size, &occurred_at);
                sequence += 1;
                let sent = Instant::now();
                let outcome = client.post_events(body).await;
                let answered = Instant::now();
                report.requests += 1;
                report.latencies_us.push(u32::try_from((answered - sent).as_micros()).unwrap_or(u32::MAX));
                match outcome {
                    Ok(()) => {
                        report.events += batch_size as u64;
                        let second = (answered - started).as_secs() as usize;
                        if report.events_per_second.len() <= second {
                            report.events_per_second.resize(second + 1, 0);
                        }
                        report.events_per_second[second] += batch_size as u64;
                    }
                    Err(error) => {
                        report.errors += 1;
                        report.first_error.get_or_insert(error);
                    }
                }
            }
            report
        });
    }
    let mut total = ScenarioReport {
        requests: 0,
        events: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        events_per_second: Vec::new(),
        cpu: None,
    };
    while let Some(joined) = tasks.join_next().await {
        let report = match joined {
            Ok(report) => report,
            Err(error) => ConnectionReport {
                errors: 1,
                first_error: Some(format!("a client task failed: {error}")),
                ..ConnectionReport::default()
            },
        };
        total.requests += report.requests;
        total.events += report.events;
        total.errors += report.errors;
        if total.first_error.is_none() {
            total.first_error = report.first_error;
        }
        total.latencies_us.extend(report.latencies_us);
        if total.events_per_second.len() < report.events_per_second.len() {
            total.events_per_second.resize(report.events_per_second.len(), 0);
        }
        for (second, count) in report.events_per_second.into_iter().enumerate() {
            total.events_per_second[second] += count;
        }
    }
    total.elapsed = started.elapsed();
    total.cpu = process_cpu_time().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    total
}

/// The user and system CPU time this process has used, from `/proc/self/stat` (Linux only).
fn process_cpu_time() -> Option<Duration> {
    /// `/proc` counts in clock ticks of 1/100 s (`USER_HZ`, fixed by the kernel's ABI).
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start with the state, field 3;
    // user time and system time are fields 14 and 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 1000 / TICKS_PER_SECOND))
}

/// Takes one request from the budget; false once it is spent.
fn take_one(budget: &AtomicU64) -> bool {
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
}

/// A `POST /events` body, written by hand: the client should spend as little of the
/// machine as it can.
fn events_body(customer: &str, prefix: &str, sequence: u64, batch_size: usize, occurred_at: &str) -> String {
    let mut body = String::with_capacity(64 + batch_size * 140);
    let _ = write!(body, r#"{{"customer_id":"{customer}","events":["#);
    for index in 0..batch_size {
        if index > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"id":"{prefix}-{sequence}-{index}","event_type":"image_generated","occurred_at":"{occurred_at}","subject":"user-{index}"}}"#
        );
    }
    body.push_str("]}");
    body
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    key: Arc<String>,
}

impl Client {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<String>) -> anyhow::Result<(u16, String)> {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).header("X-CREDYT-API-KEY", self.key.as_str());
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// Sends `body` and expects the server to have stored every event (204).
    async fn post_events(&self, body: String) -> Result<(), String> {
        match self.send(reqwest::Method::POST, "/events", Some(body)).await {
            Ok((204, _)) => Ok(()),
            Ok((status, text)) => Err(format!("{status}: {text}")),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        statuses: &[u16],
    ) -> anyhow::Result<serde_json::Value> {
        let (status, text) = self.send(method.clone(), path, body).await?;
        if !statuses.contains(&status) {
            bail!("{method} {path} answered {status}: {text}");
        }
        Ok(if text.is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text)? })
    }

    /// The asset and product (already there on a reused database: 409 is fine), then the
    /// customers, subscribed and funded. Returns the customers' ids.
    async fn set_up(&self, run_id: &str, count: usize) -> anyhow::Result<Vec<String>> {
        self.expect(reqwest::Method::POST, "/assets", Some(IMG_ASSET.into()), &[201, 409]).await?;
        self.expect(reqwest::Method::POST, "/products", Some(GLITCH_IMAGES.into()), &[201, 409]).await?;
        let mut customers = Vec::with_capacity(count);
        for chunk_start in (0..count).step_by(SETUP_CONCURRENCY) {
            let mut tasks = tokio::task::JoinSet::new();
            for index in chunk_start..(chunk_start + SETUP_CONCURRENCY).min(count) {
                let client = self.clone();
                let run_id = run_id.to_owned();
                tasks.spawn(async move { client.customer(&run_id, index).await });
            }
            while let Some(joined) = tasks.join_next().await {
                customers.push(joined??);
            }
        }
        Ok(customers)
    }

    async fn customer(&self, run_id: &str, index: usize) -> anyhow::Result<String> {
        let body = format!(
            r#"{{"name":"Bench customer {index}","external_id":"bench-{run_id}-{index}","subscriptions":[{{"products":[{{"code":"glitch_images_std"}}]}}]}}"#
        );
        let created = self.expect(reqwest::Method::POST, "/customers", Some(body), &[201]).await?;
        let id = created["id"].as_str().context("POST /customers answered without an id")?.to_owned();
        let funding = format!(
            r#"{{"transaction_id":"bench-funding-{index}","asset":"IMG","amount":{FUNDING_IMG},"reason":"external_topup"}}"#
        );
        self.expect(reqwest::Method::POST, &format!("/customers/{id}/wallet/adjustments"), Some(funding), &[201])
            .await?;
        Ok(id)
    }

    /// Test-mode events stored, all customers together.
    async fn stored_events(&self) -> anyhow::Result<u64> {
        let page = self.expect(reqwest::Method::GET, "/events?limit=1", None, &[200]).await?;
        page["total_count"].as_u64().context("GET /events answered without a total_count")
    }

    async fn available_img(&self, customer: &str) -> anyhow::Result<Decimal> {
        let account = self
            .expect(reqwest::Method::GET, &format!("/customers/{customer}/wallet/default:IMG"), None, &[200])
            .await?;
        let available = account["available"].to_string();
        Decimal::from_str(&available).with_context(|| format!("available is not a decimal: {available}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a measurement (nothing here depends on speed): a short run, bounded by a count of
    /// requests, must end with every check passed.
    #[test]
    fn a_short_run_passes_its_checks() {
        let args = BenchArgs {
            customers: 3,
            connections: 4,
            batch_size: 5,
            duration_secs: MAX_DURATION_SECS,
            requests: Some(20),
            scenario: Scenarios::Both,
        };
        assert!(run(&args, None, Duration::from_millis(100)).unwrap());
    }

    #[test]
    fn printed_urls_hide_passwords() {
        assert_eq!(without_password("postgres://tally:secret@db:5432/tally"), "postgres://tally:***@db:5432/tally");
        assert_eq!(without_password("postgres://postgres@127.0.0.1/bench"), "postgres://postgres@127.0.0.1/bench");
        assert_eq!(without_password("sqlite:///tmp/x/bench.db"), "sqlite:///tmp/x/bench.db");
    }

    #[test]
    fn bodies_are_valid_json_with_distinct_ids() {
        let body = events_body("cust_1", "run-100-0", 7, 3, "2026-01-01T00:00:00Z");
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        let ids: Vec<&str> =
            parsed["events"].as_array().unwrap().iter().map(|event| event["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["run-100-0-7-0", "run-100-0-7-1", "run-100-0-7-2"]);
        assert_eq!(parsed["customer_id"], "cust_1");
    }
}
