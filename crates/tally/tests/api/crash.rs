//! `kill -9` of a real `tally serve` process under load, then a restart on the same database.
//! Concurrent clients send `POST /events` (batches and single events, each id once) and record
//! which requests the server acknowledged with 204; once enough have been, the server gets
//! SIGKILL with requests in flight. After a restart on the same database (SQLite replays its
//! write-ahead log, PostgreSQL recovers its side on its own):
//!
//! - every acknowledged event is stored; a request in flight at the kill may or may not be;
//! - every stored event is billed once: each customer's IMG balance has moved by exactly its
//!   stored events × 1 IMG, and none is unbilled;
//! - sending every request again (acknowledged or not) is answered 204 each, and moves the
//!   balances by exactly the events that had not been stored;
//! - `tally ledger verify` exits 0.
//!
//! The server is killed several times per backend; every process the test starts is killed
//! and reaped when it ends, passed or failed.

use crate::harness::{Backend, TestDatabase};
use crate::server_process::{tally_command, ServerProcess, ANY_PORT};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IMG_ASSET: &str =
    r#"{"code":"IMG","name":"Image Generation","precision":2,"label":"image","rates":[{"source":"USD","rate":0.10}]}"#;
const CUSTOMERS: usize = 3;
/// Each customer's starting balance, in IMG: far more than the test spends.
const FUNDING_IMG: i64 = 1_000_000;
/// Concurrent clients, each sending its next request when the last one is answered.
const CLIENTS: usize = 16;
/// Events in a batch; every other request of a client carries a single event.
const BATCH: usize = 10;
/// The kills, one per round: each after this many of the round's requests were acknowledged.
const KILL_AFTER_ACKNOWLEDGED: [usize; 3] = [40, 120, 25];
/// How long any one wait may take before the test fails (a start, the kill's condition).
const DEADLINE: Duration = Duration::from_secs(60);

/// Starts `tally serve` on the database and waits until it is ready.
async fn start_server(database_url: &str, client: &reqwest::Client) -> ServerProcess {
    let mut server = ServerProcess::start(ANY_PORT, |dir| tally_command(database_url, dir));
    server.wait_until_answering(client, "/ready").await;
    server
}

/// Runs `tally ARGS` to its end and returns its standard output; fails the test unless it
/// exits 0.
fn tally(database_url: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = tally_command(database_url, dir.path()).args(args).output().expect("run tally");
    assert!(
        output.status.success(),
        "tally {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A `tally serve` process on a port of its own. Dropping it kills and reaps the process, so
/// none outlives the test, even one that fails.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).header("X-CREDYT-API-KEY", &self.key);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_owned());
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// Sends a request that must be answered `expected`; returns the body.
    async fn expect(&self, method: reqwest::Method, path: &str, body: Option<&str>, expected: StatusCode) -> Value {
        let (status, reply) = self.send(method.clone(), path, body).await.expect("the server answers");
        assert_eq!(status, expected, "{method} {path}: {reply}");
        reply
    }

    async fn available_img(&self, customer: &str) -> Decimal {
        let account = self
            .expect(reqwest::Method::GET, &format!("/customers/{customer}/wallet/default:IMG"), None, StatusCode::OK)
            .await;
        Decimal::from_str(&account["available"].to_string()).unwrap()
    }

    /// Every stored event: its id and its customer's id, read page by page (nothing writes
    /// meanwhile, and the list is in a total order).
    async fn stored_events(&self) -> BTreeMap<String, String> {
        let mut stored = BTreeMap::new();
        loop {
            let page = self
                .expect(
                    reqwest::Method::GET,
                    &format!("/events?limit=100&offset={}", stored.len()),
                    None,
                    StatusCode::OK,
                )
                .await;
            let items = page["items"].as_array().unwrap();
            for item in items {
                let id = item["id"].as_str().unwrap().to_owned();
                assert!(stored.insert(id, item["customer_id"].as_str().unwrap().to_owned()).is_none(), "listed twice");
            }
            if items.is_empty() || stored.len() as u64 >= page["total_count"].as_u64().unwrap() {
                assert_eq!(stored.len() as u64, page["total_count"].as_u64().unwrap());
                return stored;
            }
        }
    }
}

/// One `POST /events` request as it was sent.
#[derive(Clone)]
struct Sent {
    customer: String,
    ids: Vec<String>,
    body: String,
    acknowledged: bool,
}

fn events_body(customer: &str, ids: &[String], occurred_at: &str) -> String {
    let events: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(r#"{{"id":"{id}","event_type":"image_generated","occurred_at":"{occurred_at}","subject":"crash"}}"#)
        })
        .collect();
    format!(r#"{{"customer_id":"{customer}","events":[{}]}}"#, events.join(","))
}

/// What a round's clients share: the test's data, and the count that decides the kill.
struct Round {
    backend: Backend,
    number: usize,
    customers: Vec<String>,
    occurred_at: String,
    /// The kill comes once this many requests of the round were acknowledged.
    kill_after: usize,
    acknowledged: AtomicUsize,
    reached: tokio::sync::Notify,
    /// Set before the kill: a request may fail from then on, and not before.
    killed: AtomicBool,
}

/// One client: sends requests until one fails, which only the kill may cause, and returns
/// them all, each marked acknowledged or not.
async fn client_loop(api: Api, round: Arc<Round>, client: usize) -> Vec<Sent> {
    let deadline = Instant::now() + DEADLINE;
    let mut sent = Vec::new();
    for sequence in 0.. {
        assert!(Instant::now() < deadline, "client {client} of round {} was never cut off by the kill", round.number);
        let customer = round.customers[(client + sequence) % round.customers.len()].clone();
        let size = if sequence % 2 == 0 { BATCH } else { 1 };
        let ids: Vec<String> =
            (0..size).map(|index| format!("crash-{}-{client}-{sequence}-{index}", round.number)).collect();
        let body = events_body(&customer, &ids, &round.occurred_at);
        let acknowledged = match api.send(reqwest::Method::POST, "/events", Some(&body)).await {
            Ok((StatusCode::NO_CONTENT, _)) => true,
            Ok((status, reply)) => panic!("POST /events answered {status}: {reply}"),
            Err(error) => {
                assert!(round.killed.load(Ordering::SeqCst), "a request failed before the kill: {error}");
                false
            }
        };
        sent.push(Sent { customer, ids, body, acknowledged });
        if !acknowledged {
            return sent;
        }
        if round.acknowledged.fetch_add(1, Ordering::SeqCst) + 1 == round.kill_after {
            round.reached.notify_one();
        }
    }
    unreachable!("the loop returns at the first failed request")
}

/// Each customer's expected balance: its funding less one IMG per event of `events` it owns.
async fn assert_balances(api: &Api, customers: &[String], events: &BTreeMap<String, String>, when: &str) {
    let unbilled =
        api.expect(reqwest::Method::GET, "/events?billing_status=unbilled&limit=1", None, StatusCode::OK).await;
    assert_eq!(unbilled["total_count"], 0, "{when}: every stored event is billed");
    for customer in customers {
        let billed = events.values().filter(|owner| *owner == customer).count() as i64;
        let available = api.available_img(customer).await;
        assert_eq!(available, Decimal::from(FUNDING_IMG - billed), "{when}: {customer} billed once per stored event");
    }
}

fn verify_ledger(database_url: &str) {
    assert!(tally(database_url, &["ledger", "verify"]).contains("ledger OK"));
}

/// The asset, the product and the customers, subscribed and funded. Returns their ids.
async fn set_up(api: &Api) -> Vec<String> {
    api.expect(reqwest::Method::POST, "/assets", Some(IMG_ASSET), StatusCode::CREATED).await;
    api.expect(reqwest::Method::POST, "/products", Some(tally::bench::GLITCH_IMAGES), StatusCode::CREATED).await;
    let mut customers = Vec::new();
    for index in 0..CUSTOMERS {
        let body =
            format!(r#"{{"name":"Crash {index}","subscriptions":[{{"products":[{{"code":"glitch_images_std"}}]}}]}}"#);
        let created = api.expect(reqwest::Method::POST, "/customers", Some(&body), StatusCode::CREATED).await;
        let id = created["id"].as_str().unwrap().to_owned();
        let funding = format!(
            r#"{{"transaction_id":"funding-{index}","asset":"IMG","amount":{FUNDING_IMG},"reason":"external_topup"}}"#
        );
        let path = format!("/customers/{id}/wallet/adjustments");
        api.expect(reqwest::Method::POST, &path, Some(&funding), StatusCode::CREATED).await;
        customers.push(id);
    }
    customers
}

/// Runs the round's clients against `server` and kills it once the round's count of
/// acknowledged requests is reached. Returns every request sent.
async fn load_until_killed(api: &Api, server: &mut ServerProcess, round: Arc<Round>) -> Vec<Sent> {
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        clients.spawn(client_loop(api.clone(), round.clone(), client));
    }
    tokio::time::timeout(DEADLINE, round.reached.notified()).await.expect("enough requests were acknowledged");
    round.killed.store(true, Ordering::SeqCst);
    server.kill();
    let mut sent = Vec::new();
    while let Some(client) = clients.join_next().await {
        sent.extend(client.expect("a client"));
    }
    sent
}

/// The checks after a restart. `before` holds the events of earlier rounds (all stored);
/// returns it with this round's events added, all stored by then.
async fn check_recovery(
    api: &Api,
    round: &Round,
    sent: &[Sent],
    before: BTreeMap<String, String>,
    database_url: &str,
) -> BTreeMap<String, String> {
    let number = round.number;
    let stored = api.stored_events().await;
    for request in sent.iter().filter(|request| request.acknowledged) {
        for id in &request.ids {
            assert_eq!(stored.get(id), Some(&request.customer), "round {number}: acknowledged event {id} is stored");
        }
    }
    let mut after = before.clone();
    for request in sent {
        for id in &request.ids {
            after.insert(id.clone(), request.customer.clone());
        }
    }
    for (id, customer) in &stored {
        assert_eq!(after.get(id), Some(customer), "round {number}: stored event {id} was sent, to its customer");
    }
    assert_balances(api, &round.customers, &stored, &format!("round {number} after the restart")).await;

    // Everything again, acknowledged or not: each is accepted, and only the events that had
    // not been stored move a balance.
    let mut again = tokio::task::JoinSet::new();
    for request in sent.iter().cloned() {
        let api = api.clone();
        again.spawn(async move {
            api.expect(reqwest::Method::POST, "/events", Some(&request.body), StatusCode::NO_CONTENT).await;
        });
    }
    while let Some(resent) = again.join_next().await {
        resent.expect("a request sent again");
    }
    let stored_again = api.stored_events().await;
    assert_eq!(stored_again, after, "round {number}: every event sent is stored once, after sending it again");
    assert_balances(api, &round.customers, &stored_again, &format!("round {number} after sending all again")).await;
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || verify_ledger(&url)).await.unwrap();

    let acknowledged = sent.iter().filter(|request| request.acknowledged);
    let acknowledged_events: usize = acknowledged.clone().map(|request| request.ids.len()).sum();
    eprintln!(
        "crash on {:?}, round {number}: {} requests sent, {} acknowledged ({acknowledged_events} events), {} cut off by the kill, \
         {} events stored without an acknowledgement",
        round.backend,
        sent.len(),
        acknowledged.count(),
        sent.iter().filter(|request| !request.acknowledged).count(),
        stored.len() - before.len() - acknowledged_events,
    );
    after
}

async fn kill_under_load_and_recover(backend: Backend) {
    let Some(database) = tokio::task::spawn_blocking(move || TestDatabase::create(backend)).await.unwrap() else {
        return;
    };
    let url = database.url.clone();
    let started = Instant::now();
    let key_url = url.clone();
    let key = tokio::task::spawn_blocking(move || {
        tally(&key_url, &["migrate"]);
        tally(&key_url, &["api-keys", "create", "--mode", "test", "--name", "crash"]).trim().to_owned()
    })
    .await
    .unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut server = start_server(&url, &http).await;
    let mut api = Api { http: http.clone(), base: server.base.clone(), key };
    let customers = set_up(&api).await;
    // Stamped once, after the subscriptions started (usage is priced as it occurred): a
    // request sent again must be the same request, content and all.
    let occurred_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);

    let mut events = BTreeMap::new();
    for (number, kill_after) in KILL_AFTER_ACKNOWLEDGED.into_iter().enumerate() {
        let round = Arc::new(Round {
            backend,
            number,
            customers: customers.clone(),
            occurred_at: occurred_at.clone(),
            kill_after,
            acknowledged: AtomicUsize::new(0),
            reached: tokio::sync::Notify::new(),
            killed: AtomicBool::new(false),
        });
        let sent = load_until_killed(&api, &mut server, round.clone()).await;
        server = start_server(&url, &http).await;
        api.base = server.base.clone();
        events = check_recovery(&api, &round, &sent, events, &url).await;
    }
    server.stop().await;
    eprintln!("crash on {backend:?}: {} kills in {:.1?}", KILL_AFTER_ACKNOWLEDGED.len(), started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_event_on_sqlite() {
    kill_under_load_and_recover(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_event_on_postgres() {
    kill_under_load_and_recover(Backend::Postgres).await;
}
