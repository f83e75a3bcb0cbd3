//! `tally seed`: fills a database with many customers and usage events, fast, so that the
//! figures in docs/benchmarks.md ("At 10 million events") can be reproduced at any size.
//!
//! The store it leaves is one the API could have made: everything goes through the store's
//! own operations, as the API's handlers call them, never through SQL of its own. The `IMG`
//! asset and the products are made over HTTP by an in-process server whose clock is set to
//! the start of the seeded period. Each customer is made as `POST /customers` makes it
//! (`ops::customers::create` and `ops::subscriptions::create`, subscribed to
//! `glitch_images_std` and `glitch_upscale`), funded as `POST .../wallet/adjustments` funds it
//! (`ops::wallet::adjust`, an external top-up), and its events are parsed by the API's own
//! parser (`parse_events`, grace window included) and stored by `ops::events::ingest`, which
//! rates, debits and records them exactly as `POST /events` does. So `tally ledger verify`
//! finds every balance equal to its postings and every rollup equal to its fees.
//!
//! The speed comes from doing many customers in one database transaction, several
//! transactions at once over disjoint customers (`--threads`), and writing without waiting
//! for the disk (SQLite's `synchronous=OFF`, PostgreSQL's `synchronous_commit=off` for the
//! seed's transactions only: see [`SeedArgs`]), not from shortcuts. On PostgreSQL each
//! statement is a round trip and most of the time is PostgreSQL's (docs/benchmarks.md,
//! "`tally seed`"), so the threads are what speeds it up: transactions of disjoint customers
//! share no row but the platform-wide rollups', and those are per connection (its lane).
//!
//! Events: customer `i` gets `events / customers` of them (the first `events % customers`
//! one more), spread evenly over a window of six days; the windows' starts are spread over
//! the seeded period, so the events cover the last `--days` days. Nine in ten are
//! `image_generated` (1 IMG), one in ten `image_upscaled` with `factor` `2x` or `4x` (2 or 4
//! IMG). Each has a subject `user-0` to `user-49`. A customer's events are sent in batches of
//! the API's largest size, each ingested at the instant one second after its last event,
//! inside the API's 7-day grace window.

use crate::bench::{history_share, GLITCH_IMAGES, IMG_ASSET};
use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Duration as Span, Utc};
use rust_decimal::Decimal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tally_core::asset::AssetCode;
use tally_core::Mode;
use tally_http::routes::events::{parse_events, UsageEventIn, MAX_BATCH};
use tally_store::conn::Dialect;
use tally_store::ops::customers::NewCustomer;
use tally_store::ops::events::CustomerRef;
use tally_store::ops::products::VersionRef;
use tally_store::ops::subscriptions::{NewSubscription, ProductRef};
use tally_store::ops::wallet::{Adjustment, AdjustmentReason};
use tally_store::ops::OpError;
use tally_store::Store;

/// A second product, so that events come in two types and the `event_type` filter selects:
/// `image_upscaled` events, priced by their `factor`.
pub const GLITCH_UPSCALE: &str = r#"{"name":"Glitch Upscale","code":"glitch_upscale","publish":true,"prices":[{"name":"Upscale",
  "type":"usage_based","billing_model":{"type":"real_time"},
  "usage_calculation":{"event_type":"image_upscaled","usage_type":"unit","billable_dimensions":["factor"]},
  "pricing":[{"asset":"IMG","values":[{"dimensions":{"factor":"2x"},"values":[{"unit_price":2}]},
  {"dimensions":{"factor":"4x"},"values":[{"unit_price":4}]}]}]}]}"#;

/// Customers made and filled per database transaction.
const CUSTOMERS_PER_TRANSACTION: usize = 1_000;
/// SQLite's page cache for the write connection while seeding, in KiB (1 GiB): the indexes
/// of a large store are written at random places, and a small cache rereads their pages.
const SEED_CACHE_KIB: u32 = 1 << 20;
/// How long one customer's events last.
const WINDOW_DAYS: i64 = 6;
const MAX_CUSTOMERS: usize = 100_000_000;
const MAX_EVENTS: u64 = 1_000_000_000;
/// The most an event costs (a `4x` upscale), in IMG.
const MAX_EVENT_IMG: u64 = 4;
/// Each customer's funding at least, in IMG.
const MIN_FUNDING_IMG: u64 = 1_000_000;
/// Subjects per customer: `user-0` to `user-49`.
const SUBJECTS: u64 = 50;
/// The most threads a seed runs; below the PostgreSQL pool's default size (16), which also
/// serves the in-process server that makes the catalog.
const MAX_THREADS: usize = 12;

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "On SQLite the seed writes without waiting for the disk (synchronous=OFF) and syncs \
    the files once at the end: if it is interrupted, or the machine crashes, delete the database and run \
    the seed again. On PostgreSQL its transactions commit without waiting for the WAL flush \
    (synchronous_commit=off, for them only): a crash of PostgreSQL can lose the last ones it made, never \
    corrupt the database; run the seed again into a new one. Only a database named by --database on the command line is seeded, never one named \
    by TALLY_DATABASE_URL or a config file.")]
pub struct SeedArgs {
    /// Usage events to store, spread evenly over the customers.
    #[arg(long)]
    pub events: u64,
    /// Customers to make, each subscribed to glitch_images_std and glitch_upscale and funded
    /// with enough IMG for its events.
    #[arg(long)]
    pub customers: usize,
    /// The events cover this many days, up to now.
    #[arg(long, default_value_t = 30)]
    pub days: i64,
    /// Transactions written at once, each on its own thread and connection, over disjoint
    /// customers (default: one per CPU on SQLite, where they take turns at the one writer;
    /// two per CPU on PostgreSQL, whose writers run in parallel).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl SeedArgs {
    fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_CUSTOMERS).contains(&self.customers) {
            bail!("--customers must be from 1 to {MAX_CUSTOMERS}");
        }
        if self.events > MAX_EVENTS {
            bail!("--events must be at most {MAX_EVENTS}");
        }
        if !(WINDOW_DAYS + 2..=3_650).contains(&self.days) {
            bail!("--days must be from {} to 3650", WINDOW_DAYS + 2);
        }
        if self.threads.is_some_and(|threads| !(1..=MAX_THREADS).contains(&threads)) {
            bail!("--threads must be from 1 to {MAX_THREADS}");
        }
        Ok(())
    }
}

/// What a seed made.
#[derive(Debug, Clone, PartialEq)]
pub struct Seeded {
    pub customers: usize,
    pub events: u64,
    /// IMG the events cost, all customers together.
    pub billed: Decimal,
    pub elapsed: Duration,
}

/// Seeds the database at `database_url` (made and migrated if needed) and prints its progress.
pub fn run(args: &SeedArgs, database_url: &str) -> anyhow::Result<Seeded> {
    args.check()?;
    let store = crate::open_store(database_url)?;
    let started = Instant::now();
    let now = Utc::now();
    let start = now - Span::days(args.days);
    // A tag of this seed, in its customers' external ids and its events' ids, so that a
    // second seed of the same database makes new ones.
    let tag = format!("s{:x}", now.timestamp_micros());
    set_up_catalog(&store, start)?;
    store.set_bulk_load(true, SEED_CACHE_KIB)?;
    let seeded = seed(&store, args, &tag, start);
    // Back to the durable settings whatever happened, with the files synced to disk.
    let restored = store.set_bulk_load(false, 0);
    let (customers, events, billed) = seeded?;
    restored?;
    let elapsed = started.elapsed();
    println!(
        "seed: {customers} customers and {events} events ({billed} IMG) in {:.1} s ({:.0} events/s)",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(Seeded { customers, events, billed, elapsed })
}

/// The `IMG` asset and the two products, made over HTTP by a server whose clock stands at
/// `start`, so that the asset's rate and the products' versions are in force for every event.
/// On a database that has them already (409), they are left as they are.
fn set_up_catalog(store: &std::sync::Arc<Store>, start: DateTime<Utc>) -> anyhow::Result<()> {
    let (_, key) = store.write(|conn| tally_store::repo::api_keys::create(conn, Mode::Test, Some("seed"), start))?;
    let config = tally_http::HttpConfig {
        platform_name: "Tally seed".into(),
        clock: tally_http::clock::Clock::starting_at(start),
        ..tally_http::HttpConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let state = tally_http::AppState::new(store.clone(), config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tally_http::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let made = async {
            let http = reqwest::Client::new();
            for (path, body) in [("/assets", IMG_ASSET), ("/products", GLITCH_IMAGES), ("/products", GLITCH_UPSCALE)] {
                let response = http
                    .post(format!("{base}{path}"))
                    .header("X-CREDYT-API-KEY", key.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = response.status().as_u16();
                if status != 201 && status != 409 {
                    bail!("POST {path} answered {status}: {}", response.text().await?);
                }
            }
            anyhow::Ok(())
        }
        .await;
        let _ = stop.send(());
        server.await.context("the seed's server task failed")??;
        made
    })
}

/// Makes the customers and their events, `CUSTOMERS_PER_TRANSACTION` to a transaction, on
/// `--threads` threads (see [`default_threads`]), each taking every n-th chunk of customers.
/// Returns the customers, events and IMG made.
fn seed(store: &Store, args: &SeedArgs, tag: &str, start: DateTime<Utc>) -> anyhow::Result<(usize, u64, Decimal)> {
    let catalog = tally_http::catalog::CatalogCache::default();
    let asset = AssetCode::parse("IMG").map_err(|error| anyhow!("IMG: {error:?}"))?;
    let postgres = store.dialect() == Dialect::Postgres;
    let chunks = args.customers.div_ceil(CUSTOMERS_PER_TRANSACTION);
    let stored = AtomicU64::new(0);
    let billed = Mutex::new(Decimal::ZERO);
    let progress = Mutex::new(Instant::now());
    let next_analysis = AtomicU64::new(FIRST_ANALYSIS_AT);
    let started = Instant::now();
    let threads = args.threads.unwrap_or_else(|| default_threads(postgres)).min(chunks).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let (catalog, asset, stored, billed, progress, next_analysis) =
                    (&catalog, &asset, &stored, &billed, &progress, &next_analysis);
                scope.spawn(move || -> anyhow::Result<()> {
                    for chunk in (thread..chunks).step_by(threads) {
                        let first = chunk * CUSTOMERS_PER_TRANSACTION;
                        let customers = first..(first + CUSTOMERS_PER_TRANSACTION).min(args.customers);
                        let batches = customers
                            .clone()
                            .map(|index| customer_batches(args, tag, start, index))
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        let (events, img) = store
                            .write(|conn| -> Result<(u64, Decimal), OpError> {
                                if postgres {
                                    // Only this transaction's commit stops waiting for the WAL
                                    // flush; a crash can lose it, never corrupt anything.
                                    conn.execute("SET LOCAL synchronous_commit = off", &[])?;
                                }
                                let mut events = 0;
                                let mut img = Decimal::ZERO;
                                for (index, batches) in customers.clone().zip(&batches) {
                                    let (count, amount) =
                                        seed_customer(conn, args, tag, start, index, batches, catalog, asset)?;
                                    events += count;
                                    img += amount;
                                }
                                Ok((events, img))
                            })
                            .map_err(|error| anyhow!("cannot seed customers {customers:?}: {error:?}"))?;
                        *billed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += img;
                        let done = stored.fetch_add(events, Ordering::Relaxed) + events;
                        if postgres {
                            analyze_when_doubled(store, next_analysis, done)?;
                        }
                        let mut last = progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        if last.elapsed() >= Duration::from_secs(10) {
                            *last = Instant::now();
                            println!(
                                "seed: {done} of {} events, customers up to {} of {} ({:.0} s)",
                                args.events,
                                customers.end,
                                args.customers,
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| worker.join().map_err(|_| anyhow!("a seeding thread panicked"))?)
    })?;
    let events = stored.load(Ordering::Relaxed);
    if events != args.events {
        bail!("seed: {events} events billed where {} were sent", args.events);
    }
    let billed = billed.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok((args.customers, events, billed))
}

/// The events stored when PostgreSQL first gathers the tables' statistics again; then each
/// time they double.
const FIRST_ANALYSIS_AT: u64 = 10_000;

/// Gathers the statistics again (`ANALYZE`) once the events stored reach `next`, and doubles
/// it. Without it the planner keeps the figures of the empty tables it was given at the start
/// (autovacuum, which would refresh them, may be off): it read customers, subscriptions,
/// accounts and transactions by scanning the whole table: a seed of 100,000 events over
/// 10,000 customers read 33 times fewer rows by scans with it, and took 86 s instead of 354 s
/// (docs/benchmarks.md, "Seeding PostgreSQL, second step"). `ANALYZE` also makes every
/// connection plan its prepared statements again. A chunk of customers can hold many events:
/// the next time is twice what is stored now, not twice the last, so it runs once per doubling.
fn analyze_when_doubled(store: &Store, next: &AtomicU64, done: u64) -> anyhow::Result<()> {
    let due = next.load(Ordering::Relaxed);
    let after = due.max(done).saturating_mul(2);
    if done < due || next.compare_exchange(due, after, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return Ok(());
    }
    store.write(|conn| conn.execute("ANALYZE", &[]).map(|_| ())).context("cannot gather the tables' statistics")
}

/// One thread per CPU on SQLite: its one writer is busy while the other thread prepares its
/// next transaction. Two per CPU on PostgreSQL: its writers run in parallel (locked per
/// customer, and each connection adds to platform-wide rollup rows of its own lane), and
/// each thread waits for a round trip per statement, in which another can use the CPU.
fn default_threads(postgres: bool) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |cpus| cpus.get());
    if postgres {
        (2 * cpus).min(MAX_THREADS)
    } else {
        cpus.min(MAX_THREADS)
    }
}

/// The events of the customer at `index`, parsed by the API's parser, in batches of the API's
/// largest size, each with the instant it is ingested at (a second after its last event).
fn customer_batches(
    args: &SeedArgs,
    tag: &str,
    start: DateTime<Utc>,
    index: usize,
) -> anyhow::Result<Vec<(DateTime<Utc>, Vec<tally_store::ops::events::NewEvent>)>> {
    let share = history_share(args.events, args.customers, index);
    if share == 0 {
        return Ok(Vec::new());
    }
    let window = Span::days(WINDOW_DAYS).num_microseconds().unwrap_or(i64::MAX);
    // The windows' starts cover the period but its last window and a margin of an hour at
    // each end; the multiplier (a prime) scatters neighbouring customers over it.
    let room = Span::days(args.days - WINDOW_DAYS).num_seconds() - 2 * 3600;
    let offset = (index as i64).wrapping_mul(7_919).rem_euclid(room.max(1));
    let first_at = start + Span::hours(1) + Span::seconds(offset);
    let step = (window / share as i64).max(1);
    let ids: Vec<u64> = (0..share).collect();
    ids.chunks(MAX_BATCH)
        .map(|chunk| {
            let events: Vec<UsageEventIn> = chunk
                .iter()
                .map(|&sequence| {
                    let occurred_at = first_at + Span::microseconds(sequence as i64 * step);
                    let upscale = sequence % 10 == 9;
                    UsageEventIn {
                        id: format!("{tag}-{index}-{sequence}"),
                        event_type: if upscale { "image_upscaled" } else { "image_generated" }.to_owned(),
                        occurred_at: tally_http::types::Timestamp(occurred_at),
                        subject: Some(format!("user-{}", sequence % SUBJECTS)),
                        description: None,
                        data: upscale.then(|| {
                            let factor = if sequence % 20 == 19 { "4x" } else { "2x" };
                            serde_json::Map::from_iter([("factor".to_owned(), serde_json::Value::from(factor))])
                        }),
                        costs: None,
                        hold_id: None,
                    }
                })
                .collect();
            let last = events.last().map_or(start, |event| event.occurred_at.0);
            let at = last + Span::seconds(1);
            let parsed = parse_events(&events, Some(at))
                .map_err(|error| anyhow!("the seed's events do not parse: {error:?}"))?;
            Ok((at, parsed))
        })
        .collect()
}

/// Makes one customer as `POST /customers` with a subscription does, funds it as an external
/// top-up adjustment does, and ingests its batches. Returns its events and the IMG they cost.
#[allow(clippy::too_many_arguments)]
fn seed_customer(
    conn: &mut dyn tally_store::conn::Conn,
    args: &SeedArgs,
    tag: &str,
    start: DateTime<Utc>,
    index: usize,
    batches: &[(DateTime<Utc>, Vec<tally_store::ops::events::NewEvent>)],
    catalog: &tally_http::catalog::CatalogCache,
    asset: &AssetCode,
) -> Result<(u64, Decimal), OpError> {
    // Made one millisecond apart, in order, within the period's first hour or so.
    let made_at = start + Span::milliseconds((index % 3_000_000) as i64);
    let new = NewCustomer {
        name: format!("Seed customer {index}"),
        external_id: Some(format!("{tag}-{index}")),
        email: Some(format!("customer-{index}@{tag}.example")),
        metadata: Default::default(),
    };
    let customer = tally_store::ops::customers::create(conn, Mode::Test, &new, made_at)?;
    let subscription = NewSubscription {
        starts_at: None,
        renews_at: None,
        products: vec![
            (ProductRef::Code("glitch_images_std".into()), VersionRef::Default),
            (ProductRef::Code("glitch_upscale".into()), VersionRef::Default),
        ],
    };
    tally_store::ops::subscriptions::create(conn, Mode::Test, &customer.id, &subscription, catalog, made_at)?;
    let share = history_share(args.events, args.customers, index);
    let funding = Adjustment {
        transaction_id: format!("{tag}-funding-{index}"),
        account_name: "default".into(),
        asset: asset.clone(),
        amount: Decimal::from((share * MAX_EVENT_IMG * 2).max(MIN_FUNDING_IMG)),
        description: Some("Seed funding".into()),
        reason: AdjustmentReason::ExternalTopup,
        effective_at: None,
        expires_at: None,
        metadata: Default::default(),
    };
    tally_store::ops::wallet::adjust(conn, Mode::Test, &customer.id, &funding, made_at)?;
    let reference = CustomerRef::Id(customer.id);
    let mut events = 0;
    let mut img = Decimal::ZERO;
    for (at, batch) in batches {
        let report = tally_store::ops::events::ingest(conn, Mode::Test, &reference, batch, catalog, *at)?;
        let (count, amount) = report.billed.get("IMG").copied().unwrap_or_default();
        if count != batch.len() || report.unbilled != 0 {
            return Err(OpError::Conflict(format!(
                "seed: {count} of {} events of customer {index} were billed ({} unbilled): \
                 does the database hold other versions of glitch_images_std or glitch_upscale?",
                batch.len(),
                report.unbilled
            )));
        }
        events += count as u64;
        img += amount;
    }
    Ok((events, img))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds `url` twice (a second seed adds to the first), then checks the counts and that
    /// `ledger verify` finds every balance, grant, fee and rollup agreeing with the ledger.
    fn seed_and_verify(url: &str) {
        // Two chunks of customers, written at once on two threads and connections.
        let args = SeedArgs { events: 2_345, customers: 1_203, days: 30, threads: Some(2) };
        let first = run(&args, url).unwrap();
        // 20 events cost 24 IMG (18 at 1, a 2x at 2, a 4x at 4); customers with fewer than
        // 20 events have no 4x: 1,142 customers of 2 events (2 IMG), 61 of 1 (1 IMG).
        assert_eq!((first.customers, first.events, first.billed), (1_203, 2_345, Decimal::from(2_345)));
        let second = run(&SeedArgs { events: 45, customers: 2, days: 8, threads: None }, url).unwrap();
        // 23 and 22 events: 21 at 1 IMG, a 2x and a 4x (27 IMG); 20, a 2x and a 4x (26 IMG).
        assert_eq!((second.events, second.billed), (45, Decimal::from(53)));
        let store = crate::open_existing_store(url).unwrap();
        let counts: std::collections::HashMap<_, _> =
            store.read(tally_store::repo::export::row_counts).unwrap().into_iter().collect();
        assert_eq!((counts["customers"], counts["usage_events"]), (1_205, 2_390));
        let report = store.read(tally_store::ops::ledger::verify).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!((report.events, report.fees), (2_390, 2_390));
    }

    #[test]
    fn a_seeded_sqlite_store_verifies() {
        let directory = tempfile::tempdir().unwrap();
        seed_and_verify(&format!("sqlite://{}", directory.path().join("seed.db").display()));
    }

    /// Skipped when no PostgreSQL answers, unless TALLY_REQUIRE_POSTGRES=1.
    #[test]
    fn a_seeded_postgres_store_verifies() {
        crate::test_postgres::with_database("tally_seed_test", seed_and_verify);
    }

    #[test]
    fn events_are_spread_over_the_period_inside_the_grace_window() {
        let args = SeedArgs { events: 2_500, customers: 3, days: 30, threads: None };
        let start = Utc::now() - Span::days(30);
        let mut total = 0;
        for index in 0..3 {
            let batches = customer_batches(&args, "t", start, index).unwrap();
            for (at, batch) in &batches {
                assert!(batch.len() <= MAX_BATCH);
                assert!(batch.iter().all(|event| event.occurred_at < *at && event.occurred_at > start));
                assert!(*at < Utc::now());
                total += batch.len();
            }
        }
        assert_eq!(total, 2_500);
    }
}
