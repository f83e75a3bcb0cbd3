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
//!
//! Three options change what the run meets: `--hot` sends every request to one customer;
//! `--grants N` gives each customer's IMG account N open grants and `--history N` stores N
//! events before the run. Both are made through the store's own operations (adjustments and
//! event ingestion, as the API makes them) while no server runs, so the ledger stays whole
//! and the checks after the run count the run's events only.

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_core::asset::AssetCode;
use tally_core::Mode;
use tally_store::ops::events::CustomerRef;
use tally_store::ops::wallet::{Adjustment, AdjustmentReason};
use tally_store::ops::OpError;
use tally_store::{DatabaseUrl, Store};

/// Each customer's starting balance, in IMG: far more than a run can spend.
const FUNDING_IMG: u64 = 1_000_000_000;
/// Requests in flight while setting up customers.
const SETUP_CONCURRENCY: usize = 16;
const MAX_CUSTOMERS: usize = 10_000;
const MAX_CONNECTIONS: usize = 1024;
/// `POST /events` takes at most this many events (`routes::events::MAX_BATCH`).
const MAX_BATCH_SIZE: usize = tally_http::routes::events::MAX_BATCH;
const MAX_DURATION_SECS: u64 = 3600;
/// Each grant `--grants` makes, in IMG: enough that a run spends few of them to nothing.
const GRANT_IMG: u64 = 1_000_000;
/// `--grants` at most: each account stays far below the balance limit (10^15).
const MAX_GRANTS: usize = 100_000;
/// `--history` at most: even a single customer's funding covers it.
const MAX_HISTORY: u64 = 100_000_000;
/// `--history` stores its events in batches of the API's largest size, this many batches to a
/// transaction.
const HISTORY_BATCHES_PER_TRANSACTION: usize = 10;

pub(crate) const IMG_ASSET: &str =
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
    /// Send every request to one customer (the first) instead of spreading the requests over
    /// all of them: all traffic on one wallet.
    #[arg(long)]
    pub hot: bool,
    /// Before the run, give each customer's IMG account this many open grants besides its
    /// funding: promotional credits of 1,000,000 IMG with distinct expiries, 30 days away and
    /// more, made by the adjustment operation, in one transaction per customer.
    #[arg(long, default_value_t = 0)]
    pub grants: usize,
    /// Before the run, store this many events, spread evenly over the customers and billed as
    /// the run's are, by the event ingestion operation in transactions of 10,000 events.
    #[arg(long, default_value_t = 0)]
    pub history: u64,
    /// How many end users (`subject`s) a request's events name: event i of a request names
    /// `user-{i mod N}`, so a batch of 100 over 100 subjects inserts into 100 places of the
    /// events' by-subject index, and with 1 into one (at most the batch size matters).
    #[arg(long, default_value_t = 100)]
    pub subjects: usize,
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
        if self.grants > MAX_GRANTS {
            bail!("--grants must be at most {MAX_GRANTS}");
        }
        if self.history > MAX_HISTORY {
            bail!("--history must be at most {MAX_HISTORY}");
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.subjects) {
            bail!("--subjects must be from 1 to {MAX_BATCH_SIZE}");
        }
        Ok(())
    }

    /// What the run meets, for its first lines.
    fn describe(&self) -> String {
        let traffic = if self.hot {
            "all traffic on one customer".to_owned()
        } else {
            format!("traffic spread over {} customers", self.customers)
        };
        let grants = match self.grants {
            0 => "one grant per account (its funding)".to_owned(),
            count => format!("{count} open grants per account besides its funding"),
        };
        format!(
            "{traffic}; {grants}; {} events stored before the run; a request's events name up to {} subjects",
            self.history, self.subjects
        )
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
pub fn run(
    args: &BenchArgs,
    database_url: Option<&str>,
    settle_interval: Duration,
    ingest_rounds: usize,
) -> anyhow::Result<bool> {
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
    println!("  {}", args.describe());
    let backends = BackendCpu::for_url(&url);
    let server = Server {
        store: store.clone(),
        settle_interval,
        ingest_rounds,
        connections: args.connections,
        key: Arc::new(key),
    };
    let run_id = format!("{:x}", chrono::Utc::now().timestamp_micros());
    let run_id = run_id.as_str();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The customers are made over HTTP, as a platform makes them.
    let (customers, stored_at_setup) = runtime.block_on(server.serving(|client| async move {
        let started = Instant::now();
        let stored = client.stored_events().await?;
        let customers = client.set_up(run_id, args.customers).await?;
        println!(
            "setup: {} customers subscribed to glitch_images_std and funded with {FUNDING_IMG} IMG each in {:.1} s",
            customers.len(),
            started.elapsed().as_secs_f64()
        );
        anyhow::Ok((customers, stored))
    }))?;
    // Grants and history go in through the store while no server runs, so that nothing a
    // server keeps in memory can be out of date when the run starts.
    if args.grants > 0 {
        seed_grants(&store, &customers, args.grants)?;
    }
    if args.history > 0 {
        seed_history(&store, &customers, run_id, args.history, args.subjects)?;
    }
    let customers = Arc::new(customers);
    let backends = backends.as_ref();
    let http_ok = runtime.block_on(server.serving(|client| async move {
        let expected_before = stored_at_setup + args.history;
        drive(&client, args, run_id, &customers, expected_before, backends).await
    }))?;
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

/// Starts servers over the bench's store, one for each phase that talks HTTP.
struct Server {
    store: Arc<Store>,
    settle_interval: Duration,
    ingest_rounds: usize,
    connections: usize,
    key: Arc<String>,
}

impl Server {
    /// Serves on `127.0.0.1:0` while `work` runs with a client of it, then stops the server
    /// (waiting for its background tasks) and returns what `work` returned.
    async fn serving<T, Work: Future<Output = anyhow::Result<T>>>(
        &self,
        work: impl FnOnce(Client) -> Work,
    ) -> anyhow::Result<T> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let config = tally_http::HttpConfig {
            platform_name: "Tally bench".into(),
            settle_interval: self.settle_interval,
            ingest_rounds: self.ingest_rounds,
            ..tally_http::HttpConfig::default()
        };
        let state = tally_http::AppState::new(self.store.clone(), config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tally_http::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let client = Client {
            http: reqwest::Client::builder().pool_max_idle_per_host(self.connections).build()?,
            base,
            key: self.key.clone(),
        };
        let result = work(client).await;
        let _ = stop.send(());
        server.await.context("the server task failed")??;
        result
    }
}

/// Gives each customer's `default:IMG` account `count` open promotional grants, each by a
/// credit adjustment (a transaction, a ledger entry and a grant, as `POST .../wallet/
/// adjustments` makes them), all of one customer in one database transaction.
fn seed_grants(store: &Store, customers: &[String], count: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let asset = AssetCode::parse("IMG").map_err(|error| anyhow!("IMG: {error:?}"))?;
    on_threads(customers.len(), |index| {
        let customer = &customers[index];
        let now = chrono::Utc::now();
        let adjustments: Vec<Adjustment> = (0..count)
            .map(|grant| Adjustment {
                transaction_id: format!("bench-grant-{index}-{grant}"),
                account_name: "default".into(),
                asset: asset.clone(),
                amount: Decimal::from(GRANT_IMG),
                description: Some("Bench grant".into()),
                reason: AdjustmentReason::Gift,
                effective_at: None,
                // Distinct, so that the burn order must sort them; far enough away not to
                // fall due during a run.
                expires_at: Some(now + chrono::Duration::days(30) + chrono::Duration::seconds(grant as i64)),
                metadata: Default::default(),
            })
            .collect();
        store
            .write(|conn| tally_store::ops::wallet::adjust_many(conn, Mode::Test, customer, &adjustments, now))
            .map_err(|error| anyhow!("cannot make the grants of customer {customer}: {error:?}"))?;
        Ok(())
    })?;
    println!(
        "grants: {count} grants of {GRANT_IMG} IMG made on each of {} accounts in {:.1} s",
        customers.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Stores `total` events spread evenly over `customers`, through the event ingestion
/// operation exactly as `POST /events` calls it (the same bodies as the run sends, parsed by
/// the same parser), in batches of the API's largest size, several to a transaction.
fn seed_history(store: &Store, customers: &[String], run_id: &str, total: u64, subjects: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let catalog = tally_http::catalog::CatalogCache::default();
    let stored = AtomicU64::new(0);
    let last_report = std::sync::Mutex::new(Instant::now());
    let largest = MAX_BATCH_SIZE as u64;
    on_threads(customers.len(), |index| {
        // This customer's batches: (first sequence, size).
        let share = history_share(total, customers.len(), index);
        let batches: Vec<(u64, usize)> = (0..share.div_ceil(largest))
            .map(|sequence| (sequence, (share - sequence * largest).min(largest) as usize))
            .collect();
        let customer = CustomerRef::Id(customers[index].clone());
        let prefix = format!("{run_id}-history-{index}");
        for chunk in batches.chunks(HISTORY_BATCHES_PER_TRANSACTION) {
            let now = chrono::Utc::now();
            let occurred_at = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let mut parsed = Vec::with_capacity(chunk.len());
            for &(sequence, size) in chunk {
                let body = events_body(&customers[index], &prefix, sequence, size, subjects, &occurred_at);
                let request: tally_http::routes::events::UsageRequest = serde_json::from_str(&body)?;
                let events = tally_http::routes::events::parse_events(&request.events, Some(now))
                    .map_err(|error| anyhow!("the bench's events do not parse: {error:?}"))?;
                parsed.push(events);
            }
            let billed = store
                .write(|conn| -> Result<usize, OpError> {
                    let mut billed = 0;
                    for events in &parsed {
                        let report =
                            tally_store::ops::events::ingest(conn, Mode::Test, &customer, events, &catalog, now)?;
                        billed += report.billed.get("IMG").map_or(0, |(count, _)| *count);
                    }
                    Ok(billed)
                })
                .map_err(|error| anyhow!("cannot store the history: {error:?}"))?;
            let expected: usize = chunk.iter().map(|&(_, size)| size).sum();
            if billed != expected {
                bail!("history: {billed} of {expected} events of a transaction were billed");
            }
            let done = stored.fetch_add(billed as u64, Ordering::Relaxed) + billed as u64;
            let mut last = last_report.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.elapsed() >= Duration::from_secs(10) {
                *last = Instant::now();
                println!("history: {done} of {total} events stored ({:.0} s)", started.elapsed().as_secs_f64());
            }
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "history: {total} events stored and billed over {} customers in {seconds:.1} s ({:.0} events/s)",
        customers.len(),
        total as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// Runs `work` for each of `count` customers (by index), on one thread per CPU, each thread
/// with customers of its own: on PostgreSQL the threads' transactions then never wait for
/// each other's customer locks (on SQLite they share the one writer).
fn on_threads(count: usize, work: impl Fn(usize) -> anyhow::Result<()> + Sync) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |cpus| cpus.get()).min(count).max(1);
    std::thread::scope(|scope| {
        let work = &work;
        let workers: Vec<_> = (0..threads)
            .map(|thread| scope.spawn(move || (thread..count).step_by(threads).try_for_each(work)))
            .collect();
        workers.into_iter().try_for_each(|worker| worker.join().map_err(|_| anyhow!("a setup thread panicked"))?)
    })
}

/// How many of `total` history events the customer at `index` of `customers` gets.
pub(crate) fn history_share(total: u64, customers: usize, index: usize) -> u64 {
    let customers = customers as u64;
    total / customers + u64::from((index as u64) < total % customers)
}

/// `url` with its password, if any, masked: the URL is printed.
fn without_password(url: &str) -> String {
    crate::config::redact_database_url(url)
}

/// Runs the scenarios and checks the outcome over HTTP: the events the server acknowledged,
/// the events stored and the IMG billed during the run must agree. `expected_before` is how
/// many events should be stored when it starts (those of earlier runs on this database and
/// the `--history`).
async fn drive(
    client: &Client,
    args: &BenchArgs,
    run_id: &str,
    customers: &Arc<Vec<String>>,
    expected_before: u64,
    backends: Option<&BackendCpu>,
) -> anyhow::Result<bool> {
    let stored_before = client.stored_events().await?;
    let mut clean = stored_before == expected_before;
    if !clean {
        println!("MISMATCH: {stored_before} events stored before the run, {expected_before} expected");
    }
    let mut available_before = Vec::with_capacity(customers.len());
    for customer in customers.iter() {
        available_before.push(client.available_img(customer).await?);
    }

    let mut acknowledged: u64 = 0;
    for batch_size in args.scenarios() {
        let report = run_scenario(client, args, run_id, customers, batch_size, backends).await;
        report.print(batch_size, backends);
        acknowledged += report.events;
        clean &= report.errors == 0;
    }

    let stored = client.stored_events().await? - stored_before;
    let mut billed = Decimal::ZERO;
    for (customer, before) in customers.iter().zip(available_before) {
        billed += before - client.available_img(customer).await?;
    }
    let agree = Decimal::from(stored) == billed && stored == acknowledged;
    println!(
        "events of the run: {acknowledged} acknowledged, {stored} stored, {billed} IMG billed: {}",
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
    latencies_us: Histogram<u64>,
    /// Events acknowledged in each second of the run, to show whether throughput holds.
    events_per_second: Vec<u64>,
    /// CPU time the whole process (server and client) used during the run, where known.
    cpu: Option<Duration>,
    /// CPU time PostgreSQL's backends serving the bench's database used, where measured.
    database_cpu: Option<Duration>,
}

impl ScenarioReport {
    fn print(&self, batch_size: usize, backends: Option<&BackendCpu>) {
        let seconds = self.elapsed.as_secs_f64();
        let name = if batch_size == 1 { "single events".to_owned() } else { format!("batches of {batch_size}") };
        println!(
            "{name}: {} requests, {} events in {seconds:.1} s: {:.0} events/s, {:.0} requests/s",
            self.requests,
            self.events,
            self.events as f64 / seconds,
            self.requests as f64 / seconds,
        );
        let latencies = &self.latencies_us;
        let percentile = |fraction: f64| -> String {
            if latencies.is_empty() {
                return "-".into();
            }
            format_micros(latencies.value_at_quantile(fraction))
        };
        println!(
            "  latency: p50 {}, p90 {}, p99 {}, max {}",
            percentile(0.50),
            percentile(0.90),
            percentile(0.99),
            percentile(1.0)
        );
        let per_event = |cpu: Duration| cpu.as_secs_f64() * 1e6 / self.events.max(1) as f64;
        if let Some(cpu) = self.cpu {
            let whose = match backends {
                None => "this process: server, client and SQLite",
                Some(_) => "this process: server and client, not PostgreSQL",
            };
            println!(
                "  CPU ({whose}): {:.2} cores busy, {:.0} µs per event, {:.0} µs per request",
                cpu.as_secs_f64() / seconds,
                per_event(cpu),
                cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64,
            );
        }
        match (backends, self.database_cpu) {
            (Some(backends), Some(cpu)) => println!(
                "  CPU (PostgreSQL's backends serving {}; its shared background processes not counted): \
                 {:.2} cores busy, {:.0} µs per event",
                backends.database,
                cpu.as_secs_f64() / seconds,
                per_event(cpu),
            ),
            (Some(backends), None) => {
                println!("  CPU of PostgreSQL: not measured (no backend serving {} in /proc)", backends.database)
            }
            (None, _) => {}
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

fn format_micros(micros: u64) -> String {
    if micros < 1000 {
        format!("{micros} µs")
    } else {
        format!("{:.2} ms", micros as f64 / 1000.0)
    }
}

/// What one connection measured.
struct ConnectionReport {
    requests: u64,
    events: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Histogram<u64>,
    events_per_second: Vec<u64>,
}

impl Default for ConnectionReport {
    fn default() -> ConnectionReport {
        ConnectionReport {
            requests: 0,
            events: 0,
            errors: 0,
            first_error: None,
            latencies_us: latency_histogram(),
            events_per_second: Vec::new(),
        }
    }
}

/// Microseconds from 1 µs to an hour, to three significant digits (an error under 0.1 %).
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

async fn run_scenario(
    client: &Client,
    args: &BenchArgs,
    run_id: &str,
    customers: &Arc<Vec<String>>,
    batch_size: usize,
    backends: Option<&BackendCpu>,
) -> ScenarioReport {
    let database_cpu_before = backends.map(BackendCpu::sample);
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
        let (hot, subjects) = (args.hot, args.subjects);
        tasks.spawn(async move {
            let mut report = ConnectionReport::default();
            let mut sequence: u64 = 0;
            while Instant::now() < deadline && take_one(&budget) {
                let customer =
                    if hot { &customers[0] } else { &customers[(connection + sequence as usize) % customers.len()] };
                let body = events_body(customer, &prefix, sequence, batch_size, subjects, &occurred_at);
                sequence += 1;
                let sent = Instant::now();
                let outcome = client.post_events(body).await;
                let answered = Instant::now();
                report.requests += 1;
                let micros = u64::try_from((answered - sent).as_micros()).unwrap_or(u64::MAX);
                report.latencies_us.saturating_record(micros.max(1));
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
        latencies_us: latency_histogram(),
        events_per_second: Vec::new(),
        cpu: None,
        database_cpu: None,
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
        total.latencies_us.add(&report.latencies_us).expect("histograms of the same bounds");
        if total.events_per_second.len() < report.events_per_second.len() {
            total.events_per_second.resize(report.events_per_second.len(), 0);
        }
        for (second, count) in report.events_per_second.into_iter().enumerate() {
            total.events_per_second[second] += count;
        }
    }
    total.elapsed = started.elapsed();
    total.cpu = process_cpu_time().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    total.database_cpu = backends.zip(database_cpu_before).and_then(|(backends, before)| backends.used_since(&before));
    total
}

/// The user and system CPU time this process has used, from `/proc/self/stat` (Linux only).
fn process_cpu_time() -> Option<Duration> {
    let ticks = cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// `/proc` counts CPU time in clock ticks of 1/100 s (`USER_HZ`, fixed by the kernel's ABI).
const TICKS_PER_SECOND: u64 = 100;

/// User and system CPU time, in ticks, from the text of a `/proc/PID/stat` file.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the command name (which may hold spaces) start with the state, field 3;
    // user time and system time are fields 14 and 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The PostgreSQL backends serving one database, when that server runs on this machine: found
/// in `/proc` by the title PostgreSQL gives them (`postgres: [CLUSTER: ]USER DATABASE
/// HOST(PORT) STATE`). The server's shared processes (WAL writer, checkpointer, background
/// writer) also work for other databases, so they are not counted; nor is a backend that
/// exits during a scenario (the bench's pool keeps its connections open).
struct BackendCpu {
    database: String,
}

impl BackendCpu {
    /// For a `postgres://` URL naming its database; `None` for SQLite.
    fn for_url(url: &str) -> Option<BackendCpu> {
        let DatabaseUrl::Postgres(url) = DatabaseUrl::parse(url).ok()? else {
            return None;
        };
        let after_scheme = url.split_once("://")?.1;
        let path = after_scheme.split_once('/')?.1;
        let database = path.split(['?', '#']).next()?.to_owned();
        (!database.is_empty()).then_some(BackendCpu { database })
    }

    /// CPU ticks used so far by each backend serving the database, by process id.
    fn sample(&self) -> HashMap<u32, u64> {
        let mut ticks = HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return ticks;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(title) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if !self.serves(&String::from_utf8_lossy(&title)) {
                continue;
            }
            if let Some(used) = std::fs::read_to_string(entry.path().join("stat")).ok().as_deref().and_then(cpu_ticks) {
                ticks.insert(pid, used);
            }
        }
        ticks
    }

    fn serves(&self, title: &str) -> bool {
        let Some(rest) = title.strip_prefix("postgres:") else {
            return false;
        };
        let words: Vec<&str> = rest.split(|c: char| c.is_whitespace() || c == '\0').filter(|w| !w.is_empty()).collect();
        words.windows(2).any(|pair| pair[0] == self.database && (pair[1].ends_with(')') || pair[1] == "[local]"))
    }

    /// CPU time the backends used since `before`; `None` when none was found.
    fn used_since(&self, before: &HashMap<u32, u64>) -> Option<Duration> {
        let after = self.sample();
        if after.is_empty() {
            return None;
        }
        let ticks: u64 =
            after.iter().map(|(pid, used)| used.saturating_sub(before.get(pid).copied().unwrap_or(0))).sum();
        Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
    }
}

/// Takes one request from the budget; false once it is spent.
fn take_one(budget: &AtomicU64) -> bool {
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
}

/// A `POST /events` body, written by hand: the client should spend as little of the
/// machine as it can.
fn events_body(
    customer: &str,
    prefix: &str,
    sequence: u64,
    batch_size: usize,
    subjects: usize,
    occurred_at: &str,
) -> String {
    let mut body = String::with_capacity(64 + batch_size * 140);
    let _ = write!(body, r#"{{"customer_id":"{customer}","events":["#);
    for index in 0..batch_size {
        if index > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"id":"{prefix}-{sequence}-{index}","event_type":"image_generated","occurred_at":"{occurred_at}","subject":"user-{}"}}"#,
            index % subjects
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
        let page = self.expect(reqwest::Method::GET, "/events?limit=1&include_total=true", None, &[200]).await?;
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

    /// A run small enough for a test: bounded by a count of requests, never by time.
    fn short() -> BenchArgs {
        BenchArgs {
            customers: 3,
            connections: 4,
            batch_size: 5,
            duration_secs: MAX_DURATION_SECS,
            requests: Some(20),
            scenario: Scenarios::Both,
            hot: false,
            grants: 0,
            history: 0,
            subjects: 2,
        }
    }

    /// Not a measurement (nothing here depends on speed): a short run, bounded by a count of
    /// requests, must end with every check passed.
    #[test]
    fn a_short_run_passes_its_checks() {
        assert!(run(&short(), None, Duration::from_millis(100), 0).unwrap());
    }

    /// Every request on one customer: its wallet takes all the debits, and they still add up.
    #[test]
    fn a_short_hot_run_passes_its_checks() {
        assert!(run(&BenchArgs { hot: true, ..short() }, None, Duration::from_millis(100), 0).unwrap());
    }

    /// Accounts with many grants: made through the adjustment operation, they keep the ledger
    /// whole, and the run's billing is counted from the balances the grants left.
    #[test]
    fn a_short_run_over_many_grants_passes_its_checks() {
        assert!(run(&BenchArgs { grants: 7, ..short() }, None, Duration::from_millis(100), 0).unwrap());
    }

    /// Events stored before the run: exactly as many as asked (checked over HTTP before the
    /// run), billed (the ledger verifies), and not counted as the run's.
    #[test]
    fn a_short_run_over_a_history_passes_its_checks() {
        // 2,501 over 3 customers: a customer's share spans batches of 1,000 and a partial one.
        assert!(run(&BenchArgs { history: 2_501, ..short() }, None, Duration::from_millis(100), 0).unwrap());
    }

    /// The same options on PostgreSQL, in a database of its own, with its backends' CPU
    /// measured. Skipped when no PostgreSQL answers, unless TALLY_REQUIRE_POSTGRES=1.
    #[test]
    fn a_short_run_with_every_option_passes_its_checks_on_postgres() {
        crate::test_postgres::with_database("tally_bench_test", |url| {
            let args = BenchArgs { hot: true, grants: 7, history: 1_001, ..short() };
            assert!(run(&args, Some(url), Duration::from_millis(100), 0).unwrap());
        });
    }

    #[test]
    fn history_is_shared_out_exactly() {
        let shares: Vec<u64> = (0..3).map(|index| history_share(2_501, 3, index)).collect();
        assert_eq!(shares, [834, 834, 833]);
        assert_eq!(history_share(2, 3, 2), 0);
    }

    #[test]
    fn postgres_backends_are_told_by_their_title() {
        let backends = BackendCpu::for_url("postgres://postgres@127.0.0.1:5432/tally_bench?sslmode=disable").unwrap();
        assert_eq!(backends.database, "tally_bench");
        assert!(backends.serves("postgres: 15/main: postgres tally_bench 127.0.0.1(43210) idle\0\0"));
        assert!(backends.serves("postgres: bench tally_bench [local] COMMIT"));
        assert!(!backends.serves("postgres: 15/main: postgres tally_bench_2 127.0.0.1(43210) idle"));
        assert!(!backends.serves("postgres: 15/main: checkpointer"));
        assert!(BackendCpu::for_url("sqlite:///tmp/bench.db").is_none());
    }

    #[test]
    fn printed_urls_hide_passwords() {
        assert_eq!(without_password("postgres://tally:secret@db:5432/tally"), "postgres://tally:***@db:5432/tally");
        assert_eq!(without_password("postgres://postgres@127.0.0.1/bench"), "postgres://postgres@127.0.0.1/bench");
        assert_eq!(without_password("sqlite:///tmp/x/bench.db"), "sqlite:///tmp/x/bench.db");
    }

    #[test]
    fn bodies_are_valid_json_with_distinct_ids() {
        let body = events_body("cust_1", "run-100-0", 7, 3, 2, "2026-01-01T00:00:00Z");
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        let field = |name: &str| -> Vec<String> {
            parsed["events"].as_array().unwrap().iter().map(|event| event[name].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(field("id"), ["run-100-0-7-0", "run-100-0-7-1", "run-100-0-7-2"]);
        assert_eq!(field("subject"), ["user-0", "user-1", "user-0"]);
        assert_eq!(parsed["customer_id"], "cust_1");
    }
}
