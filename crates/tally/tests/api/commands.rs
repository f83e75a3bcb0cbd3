//! The operator's commands, run as the built binary: `tally demo` fills a new database that
//! a server then serves (its key works, its portal link opens, its books verify);
//! `tally backup` / `tally restore` copy a SQLite database consistently while a server
//! writes; `tally export` writes every row once, page after page; and
//! `GET /customers/{customerId}/events.csv` answers the same rows over the API.

use crate::harness::{body, Backend, TestApp, TestDatabase};
use crate::on_both_backends;
use crate::server_process::{free_port, tally_command, ServerProcess, TALLY};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tally::bench::GLITCH_IMAGES;
use tally_store::{DatabaseUrl, Store};

/// Runs `tally ARGS` on `database_url` (on a blocking thread) and returns its output.
async fn tally(database_url: &str, args: &[&str]) -> Output {
    tally_with_env(database_url, args, &[]).await
}

async fn tally_with_env(database_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let database_url = database_url.to_owned();
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let env: Vec<(String, String)> =
        env.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let mut command = tally_command(&database_url, dir.path());
        command.args(&args).envs(env);
        command.output().expect("run tally")
    })
    .await
    .unwrap()
}

#[track_caller]
fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[track_caller]
fn assert_failure(output: &Output, what: &str, says: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "{what} should fail, but succeeded:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.contains(says), "{what} should say {says:?}, but said:\n{stderr}");
}

async fn verify_with_cli(database_url: &str) {
    let output = tally(database_url, &["ledger", "verify"]).await;
    assert_success(&output, "tally ledger verify");
    assert!(String::from_utf8_lossy(&output.stdout).contains("ledger OK"));
}

/// Starts `tally serve` on the database at `port` and waits until it answers.
async fn start_server(database_url: &str, port: u16) -> ServerProcess {
    let mut server = ServerProcess::start(port, |dir| tally_command(database_url, dir));
    server.wait_until_answering(&reqwest::Client::new(), "/health").await;
    server
}

/// The first whitespace-separated word of `text` that `matches`.
fn word(text: &str, matches: impl Fn(&str) -> bool) -> Option<&str> {
    text.split_whitespace().find(|word| matches(word))
}

fn parse_csv(text: &str) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    let rows = reader
        .records()
        .map(|record| {
            let record = record.expect("a well-formed CSV record");
            header.iter().cloned().zip(record.iter().map(str::to_owned)).collect()
        })
        .collect();
    (header, rows)
}

// ---------------------------------------------------------------------------------------
// tally demo

/// `tally demo` on a new database: a server started on it afterwards accepts the printed key,
/// shows the demo's customers with usage on several days, opens the printed portal link, and
/// the ledger verifies. A second run refuses the database, which now holds data.
async fn demo_fills_a_new_database(backend: Backend) {
    let Some(database) = tokio::task::spawn_blocking(move || TestDatabase::create(backend)).await.unwrap() else {
        return;
    };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let output = tally_with_env(&database.url, &["demo"], &[("TALLY_LISTEN", &listen)]).await;
    assert_success(&output, "tally demo");
    eprintln!("tally demo on {backend:?} took {:.1?}", started.elapsed());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = word(&stdout, |word| word.starts_with("key_test_")).expect("a test key is printed").to_owned();
    let link =
        word(&stdout, |word| word.contains("/portal/enter?token=")).expect("a portal link is printed").to_owned();
    assert!(link.starts_with(&format!("http://{listen}/")), "the link points at the server to start: {link}");
    // The revenue report of the demo's paid credits: a line of IMG bought with USD whose
    // recognised usage is not zero.
    let recognised: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("IMG revenue in USD"))
        .map(|line| line.split_whitespace().rev().nth(3).unwrap())
        .collect();
    assert!(recognised.iter().any(|amount| *amount != "0.00"), "recognised on usage: {recognised:?}\n{stdout}");

    let mut server = start_server(&database.url, port).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = |path: String| {
        let (client, key, base) = (client.clone(), key.clone(), server.base.clone());
        async move {
            let response = client.get(format!("{base}{path}")).header("X-CREDYT-API-KEY", key).send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    let (status, text) = get("/customers?limit=100".into()).await;
    assert_eq!(status, StatusCode::OK, "the printed key works: {text}");
    let customers: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(customers["total_count"], 3, "{customers}");
    let (status, text) = get("/events?billing_status=unbilled".into()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["total_count"], 0, "every demo event is billed");
    // The upscale stored unbilled was billed by a rebill, on the version that prices it.
    let (status, text) = get("/events/demo-upscale-1".into()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["fees"][0]["product_version"], 2, "{text}");
    for customer in customers["items"].as_array().unwrap() {
        let id = customer["id"].as_str().unwrap();
        let (status, text) = get(format!("/customers/{id}/wallet")).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let wallet: Value = serde_json::from_str(&text).unwrap();
        let available = Decimal::from_str(&wallet["accounts"][0]["available"].to_string()).unwrap();
        assert!(available > Decimal::ZERO, "{}: topped up more than it used: {wallet}", customer["name"]);
        let printed = format!("{id}  ");
        assert!(stdout.contains(&printed), "the demo lists {id}");
        // Usage spread over several past days, sent back-dated and priced as it occurred.
        let (status, csv) = get(format!("/customers/{id}/events.csv")).await;
        assert_eq!(status, StatusCode::OK, "{csv}");
        let (_, rows) = parse_csv(&csv);
        let days: BTreeSet<&str> = rows.iter().map(|row| &row["occurred_at"][..10]).collect();
        assert!(days.len() >= 5, "{}: usage on {} days only", customer["name"], days.len());
        assert!(rows.iter().all(|row| row["billing_status"] == "billed" && row["total_fees"] == "1"));
    }

    // The portal link opens the customer's portal.
    let entered = client.get(&link).send().await.unwrap();
    assert_eq!(entered.status(), StatusCode::SEE_OTHER, "the portal link is accepted");
    assert_eq!(entered.headers()["location"], "/portal");
    let cookie = entered.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let portal = client.get(format!("{}/portal", server.base)).header("cookie", cookie).send().await.unwrap();
    assert_eq!(portal.status(), StatusCode::OK);
    assert!(portal.text().await.unwrap().contains("Image Generation"), "the portal shows the IMG wallet");
    server.end();

    verify_with_cli(&database.url).await;
    let again = tally(&database.url, &["demo"]).await;
    assert_failure(&again, "a second tally demo", "already holds data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_fills_a_new_sqlite_database() {
    demo_fills_a_new_database(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_fills_a_new_postgres_database() {
    demo_fills_a_new_database(Backend::Postgres).await;
}

/// A database that a platform already uses is refused, and nothing is added to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_refuses_a_database_with_data() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let before = row_counts(app.store.clone()).await;
    let output = tally(&app.database.url, &["demo"]).await;
    assert_failure(&output, "tally demo on a used database", "already holds data");
    assert!(String::from_utf8_lossy(&output.stdout).is_empty(), "no key is printed");
    assert_eq!(row_counts(app.store.clone()).await, before, "nothing was added");
}

// ---------------------------------------------------------------------------------------
// tally backup / tally restore

async fn row_counts(store: Arc<Store>) -> Vec<(&'static str, i64)> {
    tokio::task::spawn_blocking(move || store.read(tally_store::repo::export::row_counts).unwrap()).await.unwrap()
}

fn open(database_url: &str) -> Arc<Store> {
    Arc::new(Store::open(&DatabaseUrl::parse(database_url).unwrap()).unwrap())
}

/// Credits and charges one customer over HTTP until told to stop; returns the transaction ids
/// the server acknowledged, in order.
fn start_writer(
    app: &TestApp,
    customer: &str,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let (client, base, key, customer) =
        (app.client.clone(), app.base.clone(), app.test_key.clone(), customer.to_owned());
    let written = acknowledged.clone();
    let task = tokio::spawn(async move {
        let mut index = 0;
        while !stop.load(Ordering::SeqCst) {
            let (path, id, body) = if index % 3 == 2 {
                let id = format!("charge-{index}");
                ("charges", id.clone(), format!(r#"{{"transaction_id":"{id}","asset":"USD","amount":0.5}}"#))
            } else {
                let id = format!("credit-{index}");
                (
                    "adjustments",
                    id.clone(),
                    format!(r#"{{"transaction_id":"{id}","asset":"USD","amount":1.25,"reason":"external_topup"}}"#),
                )
            };
            let response = client
                .post(format!("{base}/customers/{customer}/wallet/{path}"))
                .header("X-CREDYT-API-KEY", &key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
            written.lock().unwrap().push(id);
            index += 1;
        }
    });
    (acknowledged, task)
}

/// A backup taken while a server writes is a consistent snapshot: restored into a new path,
/// its ledger verifies and it holds every write acknowledged before the backup began. Taken
/// when the writes have stopped, the restored copy holds exactly the rows of the original.
/// `restore` refuses to overwrite a database without --force.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_while_a_server_writes_restores_a_consistent_copy() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let customer = app.customer("Busy").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (acknowledged, writer) = start_writer(&app, &customer, stop.clone());
    app.eventually("the writer has made 30 writes", || async { acknowledged.lock().unwrap().len() >= 30 }).await;

    let dir = tempfile::tempdir().unwrap();
    let backup_path = dir.path().join("during.db");
    let before_backup: Vec<String> = acknowledged.lock().unwrap().clone();
    let output = tally(&app.database.url, &["backup", backup_path.to_str().unwrap()]).await;
    assert_success(&output, "tally backup while a server writes");
    assert!(String::from_utf8_lossy(&output.stderr).contains("backed up"));
    let count = acknowledged.lock().unwrap().len();
    app.eventually("the writer goes on after the backup", || async {
        acknowledged.lock().unwrap().len() >= count + 10
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let all_acknowledged = acknowledged.lock().unwrap().len();

    // Restored into a new path: consistent, and holding every write acknowledged before it.
    let restored_url = format!("sqlite://{}", dir.path().join("restored/tally.db").display());
    let output = tally(&restored_url, &["restore", backup_path.to_str().unwrap()]).await;
    assert_success(&output, "tally restore into a new path");
    verify_with_cli(&restored_url).await;
    let restored = open(&restored_url);
    let (customer_id, ids) = (customer.clone(), before_backup.clone());
    let (missing, held) = tokio::task::spawn_blocking(move || {
        restored
            .read(|conn| {
                let mut missing = Vec::new();
                for id in &ids {
                    if tally_store::repo::transactions::get(conn, &customer_id, id)?.is_none() {
                        missing.push(id.clone());
                    }
                }
                let counts = tally_store::repo::export::row_counts(conn)?;
                Ok::<_, tally_store::StoreError>((missing, counts))
            })
            .unwrap()
    })
    .await
    .unwrap();
    assert!(missing.is_empty(), "acknowledged before the backup, missing from it: {missing:?}");
    let transactions = held.iter().find(|(table, _)| *table == "transactions").unwrap().1;
    assert!(
        (before_backup.len() as i64..=all_acknowledged as i64).contains(&transactions),
        "the backup holds {transactions} transactions: between the {} acknowledged before it and the {all_acknowledged} in all",
        before_backup.len()
    );

    // Taken at rest, the copy holds exactly what the original holds.
    let quiet_path = dir.path().join("quiet.db");
    assert_success(&tally(&app.database.url, &["backup", quiet_path.to_str().unwrap()]).await, "tally backup at rest");
    let copy_url = format!("sqlite://{}", dir.path().join("copy.db").display());
    assert_success(&tally(&copy_url, &["restore", quiet_path.to_str().unwrap()]).await, "tally restore");
    verify_with_cli(&copy_url).await;
    let original = row_counts(app.store.clone()).await;
    assert_eq!(row_counts(open(&copy_url)).await, original, "the same rows, table by table");
    assert_eq!(original.iter().find(|(table, _)| *table == "transactions").unwrap().1, all_acknowledged as i64);

    // A database that holds data is replaced only with --force.
    let refused = tally(&copy_url, &["restore", backup_path.to_str().unwrap()]).await;
    assert_failure(&refused, "tally restore over a database", "--force");
    assert_eq!(row_counts(open(&copy_url)).await, original, "the refused restore changed nothing");
    let forced = tally(&copy_url, &["restore", "--force", backup_path.to_str().unwrap()]).await;
    assert_success(&forced, "tally restore --force");
    assert_eq!(row_counts(open(&copy_url)).await, held, "the older backup replaced it");
    verify_with_cli(&copy_url).await;

    // A backup never overwrites a file unasked, and a restore needs a Tally database.
    assert_failure(
        &tally(&app.database.url, &["backup", quiet_path.to_str().unwrap()]).await,
        "backup over a file",
        "--force",
    );
    let stray = dir.path().join("stray.txt");
    std::fs::write(&stray, "not a database").unwrap();
    let new_url = format!("sqlite://{}", dir.path().join("new.db").display());
    assert_failure(
        &tally(&new_url, &["restore", stray.to_str().unwrap()]).await,
        "restore of a text file",
        "not a SQLite database",
    );
}

/// PostgreSQL has its own tools: the commands say which, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_point_postgres_to_its_own_tools() {
    let url = format!("{}/tally_never_made", crate::harness::postgres_base_url());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.db");
    assert_failure(&tally(&url, &["backup", path.to_str().unwrap()]).await, "tally backup on PostgreSQL", "pg_dump");
    assert_failure(
        &tally(&url, &["restore", path.to_str().unwrap()]).await,
        "tally restore on PostgreSQL",
        "pg_restore",
    );
    assert!(!path.exists());
}

// ---------------------------------------------------------------------------------------
// tally export and GET /customers/{customerId}/events.csv

const IMG: &str =
    r#"{"code":"IMG","name":"Image Generation","precision":2,"label":"image","rates":[{"source":"USD","rate":0.10}]}"#;

/// Two subscribed, funded customers; returns their ids.
async fn two_customers(app: &TestApp) -> [String; 2] {
    app.post("/assets", body(IMG)).await.expect(201);
    app.post("/products", body(GLITCH_IMAGES)).await.expect(201);
    let mut ids = Vec::new();
    for name in ["Alpha", "Beta"] {
        let customer = app
            .post("/customers", json!({"name": name, "subscriptions": [{"products": [{"code": "glitch_images_std"}]}]}))
            .await
            .expect(201);
        let id = customer.body["id"].as_str().unwrap().to_owned();
        app.fund(&id, "IMG", "10000", &format!("fund-{name}")).await;
        ids.push(id);
    }
    ids.try_into().unwrap()
}

/// A description CSV must quote: a comma, a doubled quote, a non-ASCII letter. (The API
/// takes no line break in a description; `data`'s JSON text holds quotes in every row.)
const AWKWARD: &str = "a \"quoted\", comma-separated description, ça va";

/// Sends `count` events for `customer` in batches of up to 1000, numbered from `first`,
/// event `n` occurring `n` seconds before `base`.
async fn send_events(app: &TestApp, customer: &str, first: usize, count: usize, base: chrono::DateTime<chrono::Utc>) {
    let numbers: Vec<usize> = (first..first + count).collect();
    for chunk in numbers.chunks(1000) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|n| {
                json!({
                    "id": format!("ev-{n:05}"),
                    "event_type": "image_generated",
                    "occurred_at": tally_http::types::format_timestamp(base - chrono::Duration::seconds(*n as i64)),
                    "description": if n % 250 == 7 { AWKWARD } else { "plain" },
                    "data": {"n": n}
                })
            })
            .collect();
        app.post("/events", json!({"customer_id": customer, "events": events})).await.expect(204);
    }
}

/// The base instant of the test events: a whole second, so period bounds fall between events.
/// The server's clock moves an hour on first, so that the 20 minutes of events before it all
/// fall after the subscriptions began (usage is priced as it occurred).
fn events_base(app: &TestApp) -> chrono::DateTime<chrono::Utc> {
    app.clock.advance(chrono::Duration::hours(1));
    let now = app.clock.now() - chrono::Duration::minutes(1);
    chrono::DateTime::from_timestamp(now.timestamp(), 0).unwrap()
}

/// `tally export` writes every row of the mode once, across pages (1200 events and 1202
/// transactions, more than two pages of each), in CSV whose fields read back exactly and in
/// JSON Lines, filtered by customer, period and mode; with no terminal, no progress bar.
async fn export_writes_every_row_once(app: TestApp) {
    let [alpha, beta] = two_customers(&app).await;
    let base = events_base(&app);
    // Beta's events are numbered between Alpha's, so each customer's pages interleave by time.
    send_events(&app, &alpha, 0, 700, base).await;
    send_events(&app, &beta, 700, 500, base).await;
    let url = app.database.url.clone();

    let output = tally(&url, &["export", "events", "--mode", "test"]).await;
    assert_success(&output, "tally export events");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "exported 1200 rows",
        "no progress bar without a terminal"
    );
    let (header, rows) = parse_csv(&String::from_utf8(output.stdout).unwrap());
    assert_eq!(header, tally_http::export::EVENT_COLUMNS);
    assert_eq!(rows.len(), 1200);
    let ids: BTreeSet<&str> = rows.iter().map(|row| row["id"].as_str()).collect();
    assert_eq!(ids.len(), 1200, "each event once");
    let awkward = rows.iter().find(|row| row["id"] == "ev-00007").unwrap();
    assert_eq!(awkward["description"], AWKWARD, "quoted fields read back exactly");
    assert_eq!(awkward["data"], r#"{"n":7}"#);
    assert!(rows
        .iter()
        .all(|row| row["mode"] == "test" && row["billing_status"] == "billed" && row["total_fees"] == "1"));

    // One customer; a period of occurred_at (events 100 to 299 fall in it).
    let output = tally(&url, &["export", "events", "--mode", "test", "--customer", &beta]).await;
    assert_success(&output, "tally export events --customer");
    let (_, rows) = parse_csv(&String::from_utf8(output.stdout).unwrap());
    assert_eq!(rows.len(), 500);
    assert!(rows.iter().all(|row| row["customer_id"] == beta));
    let from = tally_http::types::format_timestamp(base - chrono::Duration::seconds(299));
    let to = tally_http::types::format_timestamp(base - chrono::Duration::seconds(99));
    let output =
        tally(&url, &["export", "events", "--mode", "test", "--from", &from, "--to", &to, "--format", "jsonl"]).await;
    assert_success(&output, "tally export events --from --to");
    let lines: Vec<Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let numbers: BTreeSet<u64> = lines.iter().map(|line| line["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (100..300).collect(), "from is inclusive, to exclusive");
    assert!(lines.iter().all(|line| line["total_fees"] == 1 && line["fee_currency"] == "IMG"));

    // Another mode holds nothing of this one.
    let output = tally(&url, &["export", "events", "--mode", "live"]).await;
    assert_success(&output, "tally export events --mode live");
    assert_eq!(parse_csv(&String::from_utf8(output.stdout).unwrap()).1.len(), 0);

    // Transactions into a file: every one once, and each customer's add up to its balance.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("transactions.jsonl");
    let output = tally(
        &url,
        &["export", "transactions", "--mode", "test", "--format", "jsonl", "--output", file.to_str().unwrap()],
    )
    .await;
    assert_success(&output, "tally export transactions");
    assert!(output.stdout.is_empty(), "rows go to the file");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 1202);
    let keys: BTreeSet<(String, String)> =
        lines.iter().map(|line| (line["customer_id"].to_string(), line["id"].to_string())).collect();
    assert_eq!(keys.len(), 1202, "each transaction once");
    for customer in [&alpha, &beta] {
        let sum: Decimal = lines
            .iter()
            .filter(|line| line["customer_id"] == customer.as_str())
            .map(|line| Decimal::from_str(&line["amount"].to_string()).unwrap())
            .sum();
        assert_eq!(sum.normalize().to_string(), app.balances(customer, "default:IMG").await.0);
    }
    let output =
        tally(&url, &["export", "transactions", "--mode", "test", "--customer", &alpha, "--to", "2000-01-01"]).await;
    assert_success(&output, "tally export transactions --to");
    assert_eq!(parse_csv(&String::from_utf8(output.stdout).unwrap()).1.len(), 0, "nothing before 2000");

    let output = tally(&url, &["export", "events", "--mode", "test", "--from", "yesterday"]).await;
    assert_failure(&output, "tally export with a bad --from", "--from must be");
}

/// `GET /customers/{customerId}/events.csv`: the customer's events and no other's, as CSV
/// that reads back exactly, over a period; a customer of another mode or none is a 404.
async fn customer_events_csv(app: TestApp) {
    let [alpha, beta] = two_customers(&app).await;
    let base = events_base(&app);
    send_events(&app, &alpha, 0, 620, base).await;
    send_events(&app, &beta, 620, 30, base).await;

    let reply = app.get(&format!("/customers/{alpha}/events.csv")).await.expect(200);
    assert_eq!(reply.content_type(), "text/csv; charset=utf-8");
    assert!(reply.headers["content-disposition"].to_str().unwrap().contains(&format!("events-{alpha}.csv")));
    let (header, rows) = parse_csv(&reply.text);
    assert_eq!(header, tally_http::export::EVENT_COLUMNS);
    assert_eq!(rows.len(), 620, "every event, across pages");
    assert!(rows.iter().all(|row| row["customer_id"] == alpha));
    assert_eq!(rows.iter().map(|row| row["id"].as_str()).collect::<BTreeSet<_>>().len(), 620);
    let awkward = rows.iter().find(|row| row["id"] == "ev-00257").unwrap();
    assert_eq!(awkward["description"], AWKWARD);

    let from = tally_http::types::format_timestamp(base - chrono::Duration::seconds(19));
    let to = tally_http::types::format_timestamp(base - chrono::Duration::seconds(9));
    let query = format!("period_from={}&period_to={}", from.replace('+', "%2B"), to.replace('+', "%2B"));
    let reply = app.get(&format!("/customers/{alpha}/events.csv?{query}")).await.expect(200);
    let ids: BTreeSet<String> = parse_csv(&reply.text).1.into_iter().map(|row| row["id"].clone()).collect();
    assert_eq!(ids, (10..20).map(|n| format!("ev-{n:05}")).collect(), "period_from inclusive, period_to exclusive");

    app.get(&format!("/customers/{alpha}/events.csv?period_from=soon")).await.expect(422);
    app.get("/customers/cust_nobody/events.csv").await.expect(404);
    let live =
        app.call(reqwest::Method::GET, &format!("/customers/{alpha}/events.csv"), Some(&app.live_key), None).await;
    assert_eq!(live.status, StatusCode::NOT_FOUND, "a live key sees no test customer");
    let anonymous = app.call(reqwest::Method::GET, &format!("/customers/{alpha}/events.csv"), None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

on_both_backends!(export_writes_every_row_once, customer_events_csv, migrate_status_reports_and_checksums_guard);

// ---------------------------------------------------------------------------------------
// tally migrate --status

/// `tally migrate --status` lists every migration as applied and exits 0 on a current
/// database; a migration whose recorded checksum differs from this build's text is shown as
/// CHANGED, exits 1, and a server refuses to start on that database; one the build does not
/// know is UNKNOWN and refused too.
async fn migrate_status_reports_and_checksums_guard(app: TestApp) {
    let url = app.database.url.clone();
    let output = tally(&url, &["migrate", "--status"]).await;
    assert_success(&output, "tally migrate --status");
    let listed = String::from_utf8_lossy(&output.stdout).to_string();
    for migration in tally_store::migrate::MIGRATIONS {
        let line = listed.lines().find(|line| line.split_whitespace().next() == Some(&migration.version.to_string()));
        let line = line.unwrap_or_else(|| panic!("migration {} not listed:\n{listed}", migration.version));
        assert!(line.contains(migration.name) && line.contains("applied"), "{line}");
    }

    let store = app.store.clone();
    let first = tally_store::migrate::MIGRATIONS[0].version;
    let tamper = move |sql: &'static str| {
        let store = store.clone();
        async move {
            tokio::task::spawn_blocking(move || store.write(|conn| conn.execute(sql, &[]).map(drop)))
                .await
                .unwrap()
                .unwrap()
        }
    };
    tamper("UPDATE tally_migrations SET checksum = 'edited' WHERE version = 1").await;
    let output = tally(&url, &["migrate", "--status"]).await;
    assert!(!output.status.success(), "a changed migration is not current");
    let listed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        listed.lines().any(|line| line.trim_start().starts_with(&format!("{first} ")) && line.contains("CHANGED")),
        "{listed}"
    );
    let output = tally(&url, &["migrate"]).await;
    assert_failure(&output, "tally migrate on a changed migration", "was changed after this database applied it");

    tamper("UPDATE tally_migrations SET checksum = NULL WHERE version = 1").await;
    assert_success(&tally(&url, &["migrate"]).await, "a missing checksum is recorded, not refused");
    tamper(
        "INSERT INTO tally_migrations (version, name, applied_at, checksum) VALUES (99999, 'from_the_future', 0, 'x')",
    )
    .await;
    let output = tally(&url, &["migrate", "--status"]).await;
    assert!(String::from_utf8_lossy(&output.stdout).contains("UNKNOWN"), "{}", String::from_utf8_lossy(&output.stdout));
    assert_failure(&tally(&url, &["migrate"]).await, "tally migrate on a newer database", "does not have");
}

// ---------------------------------------------------------------------------------------
// tally bench

/// `tally bench` runs both scenarios to their request budget on a temporary SQLite store and
/// prints its figures, latency percentiles included, with no request failing. (It measures;
/// this only checks that it runs and reports, never how fast.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_and_prints_its_figures() {
    let output = tokio::task::spawn_blocking(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(TALLY);
        command
            .args(["bench", "--customers", "3", "--connections", "2", "--batch-size", "5", "--requests", "8"])
            .args(["--duration-secs", "600"])
            .current_dir(dir.path())
            .env_remove("TALLY_CONFIG")
            .env_remove("TALLY_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .env("TALLY_LOG", "warn")
            .stdin(Stdio::null());
        command.output().expect("run tally bench")
    })
    .await
    .unwrap();
    assert_success(&output, "tally bench");
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(printed.contains("batches of 5: 8 requests, 40 events"), "{printed}");
    assert!(printed.contains("single events: 8 requests, 8 events"), "{printed}");
    assert_eq!(printed.matches("latency: p50 ").count(), 2, "{printed}");
    assert!(!printed.contains("ERRORS") && !printed.contains("MISMATCH"), "{printed}");
    assert!(printed.contains("events of the run: 48 acknowledged, 48 stored, 48 IMG billed: they agree"), "{printed}");
}
