//! Several Tally servers on one database. On PostgreSQL the servers are real `tally serve`
//! processes started at the same moment on a fresh database (so they also race to migrate
//! it); on SQLite they are two in-process servers sharing one file. Both are driven at once
//! with adjustments, charges that overdraw, the same transaction id sent to both servers at
//! the same moment, replays, reused ids, grants that start and expire while the servers'
//! workers race to settle them. Then every balance must be the exact expected decimal, each
//! settlement must have happened once, and `tally ledger verify` must pass.

use crate::harness::{Backend, TestApp, TestDatabase};
use crate::server_process::{tally_command, ServerProcess, ANY_PORT};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tally_store::{Conn, Store, StoreError};

/// Runs the `tally` command against `database_url` and returns its output.
fn tally(database_url: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    tally_command(database_url, dir.path()).args(args).output().expect("run tally")
}

fn assert_success(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One server as the workload sees it.
#[derive(Clone)]
struct Endpoint {
    base: String,
    key: String,
}

/// Starts `tally serve` on the database, its workers racing each other for due
/// settlements every 50 ms. Does not wait.
fn start_server(database_url: &str) -> ServerProcess {
    ServerProcess::start(ANY_PORT, |dir| {
        let mut command = tally_command(database_url, dir);
        command.env("TALLY_SETTLE_INTERVAL_MS", "50");
        command
    })
}

/// A reply as the workload checks it.
struct Answer {
    status: StatusCode,
    replayed: Option<String>,
    body: Value,
}

async fn send(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> Answer {
    let mut request =
        client.request(method, format!("{}{path}", endpoint.base)).header("X-CREDYT-API-KEY", &endpoint.key);
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_owned());
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let replayed =
        response.headers().get("idempotent-replayed").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, replayed, body }
}

fn adjustment(id: &str, account: &str, amount: &str, extra: &str) -> String {
    format!(
        r#"{{"transaction_id":"{id}","account_name":"{account}","asset":"USD","amount":{amount},"reason":"gift"{extra}}}"#
    )
}

fn charge(id: &str, amount: &str) -> String {
    format!(r#"{{"transaction_id":"{id}","asset":"USD","amount":{amount}}}"#)
}

fn decimal(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

/// Credits grants that are already due: an hour ago they were made to start (`LATER` of
/// them, on account `later`) or expire (one, on account `expiring`) a minute later. Made
/// through the store with that past instant, so that no wall-clock window decides whether
/// the servers' workers, rather than the request itself, settle them.
async fn credit_due_grants(store: Arc<Store>, customer: String) {
    tokio::task::spawn_blocking(move || {
        use tally_store::ops::wallet::{adjust, Adjustment, AdjustmentReason};
        let made_at = chrono::Utc::now() - chrono::Duration::hours(1);
        let due_at = made_at + chrono::Duration::minutes(1);
        let credit = |id: String, account: &str, amount: &str| Adjustment {
            transaction_id: id,
            account_name: account.into(),
            asset: tally_core::asset::AssetCode::parse("USD").unwrap(),
            amount: decimal(amount),
            description: None,
            reason: AdjustmentReason::Gift,
            effective_at: None,
            expires_at: None,
            metadata: Default::default(),
        };
        let mut grants: Vec<Adjustment> = (0..LATER)
            .map(|index| Adjustment {
                effective_at: Some(due_at),
                ..credit(format!("later-{index}"), "later", LATER_CREDIT)
            })
            .collect();
        grants.push(Adjustment { expires_at: Some(due_at), ..credit("expiring-0".into(), "expiring", EXPIRING) });
        for grant in grants {
            store
                .write(|conn| adjust(conn, tally_core::Mode::Test, &customer, &grant, made_at))
                .unwrap_or_else(|error| panic!("{}: {error:?}", grant.transaction_id));
        }
    })
    .await
    .unwrap();
}

const CREDITS: usize = 60;
const CREDIT: &str = "1.37";
const CHARGES: usize = 90;
const CHARGE: &str = "1.23";
/// Ids sent to both servers at the same moment: half adjustments, half charges.
const TWINS: usize = 20;
const TWIN_CREDIT: &str = "2.5";
const TWIN_CHARGE: &str = "0.75";
/// Grants that start a little later, on their own account, for the workers to activate.
const LATER: usize = 10;
const LATER_CREDIT: &str = "3.33";
const EXPIRING: &str = "5";

/// Drives both servers at once and checks what a client can see. Returns the customer id.
async fn drive(backend: &str, servers: [Endpoint; 2], store: Arc<Store>) -> String {
    let client = reqwest::Client::new();
    let created = send(&client, &servers[0], reqwest::Method::POST, "/customers", Some(r#"{"name":"Shared"}"#)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let customer = created.body["id"].as_str().unwrap().to_owned();
    let adjustments = format!("/customers/{customer}/wallet/adjustments");
    let charges = format!("/customers/{customer}/wallet/charges");

    let mut requests: Vec<(usize, String, String)> = Vec::new();
    for index in 0..CREDITS {
        requests.push((index % 2, adjustments.clone(), adjustment(&format!("credit-{index}"), "default", CREDIT, "")));
    }
    for index in 0..CHARGES {
        requests.push(((index + 1) % 2, charges.clone(), charge(&format!("charge-{index}"), CHARGE)));
    }

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (server, path, body) in requests.clone() {
        let (client, endpoint) = (client.clone(), servers[server].clone());
        tasks.spawn(async move {
            let answer = send(&client, &endpoint, reqwest::Method::POST, &path, Some(&body)).await;
            assert_eq!(answer.status, StatusCode::CREATED, "{body}: {}", answer.body);
            assert_eq!(answer.replayed.as_deref(), Some("false"), "{body}");
        });
    }
    // The same id to both servers at the same moment: one makes it, the other replays it.
    for index in 0..TWINS {
        let (path, body) = if index % 2 == 0 {
            (adjustments.clone(), adjustment(&format!("twin-{index}"), "default", TWIN_CREDIT, ""))
        } else {
            (charges.clone(), charge(&format!("twin-{index}"), TWIN_CHARGE))
        };
        let (client, servers) = (client.clone(), servers.clone());
        tasks.spawn(async move {
            let (first, second) = tokio::join!(
                send(&client, &servers[0], reqwest::Method::POST, &path, Some(&body)),
                send(&client, &servers[1], reqwest::Method::POST, &path, Some(&body)),
            );
            let id = format!("twin-{index}");
            for answer in [&first, &second] {
                assert_eq!(answer.status, StatusCode::CREATED, "{body}: {}", answer.body);
                assert_eq!(answer.body["id"], id.as_str());
            }
            let mut replayed = [first.replayed.unwrap(), second.replayed.unwrap()];
            replayed.sort();
            assert_eq!(replayed, ["false", "true"], "{id}: exactly one of the two servers made it");
            assert_eq!(first.body["created_at"], second.body["created_at"], "{id}: both report the one transaction");
        });
    }
    // Grants that are due at once, each on an account no request touches afterwards, so that
    // only the servers' background workers settle them, while the requests keep the
    // customer's row busy.
    credit_due_grants(store, customer.clone()).await;
    while let Some(task) = tasks.join_next().await {
        task.expect("a request task");
    }
    let elapsed = started.elapsed();
    let sent = requests.len() + 2 * TWINS;
    eprintln!(
        "multi-server on {backend}: {sent} concurrent writes to one customer across 2 servers in {elapsed:.2?} ({:.0}/s)",
        sent as f64 / elapsed.as_secs_f64()
    );

    // Replays at the other server change nothing; a reused id with another body is refused.
    let mut replays = tokio::task::JoinSet::new();
    for (server, path, body) in requests.iter().step_by(7).cloned() {
        let (client, endpoint) = (client.clone(), servers[1 - server].clone());
        replays.spawn(async move {
            let answer = send(&client, &endpoint, reqwest::Method::POST, &path, Some(&body)).await;
            assert_eq!(answer.status, StatusCode::CREATED, "{body}: {}", answer.body);
            assert_eq!(answer.replayed.as_deref(), Some("true"), "{body}");
        });
    }
    while let Some(task) = replays.join_next().await {
        task.expect("a replay task");
    }
    let reused = send(&client, &servers[1], reqwest::Method::POST, &charges, Some(&charge("charge-0", "99"))).await;
    assert_eq!(reused.status, StatusCode::CONFLICT, "{}", reused.body);
    customer
}

/// Waits until the workers have settled every start and expiry, without any API read (a
/// read would settle them itself), then checks each was settled exactly once.
async fn wait_for_workers(store: Arc<Store>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let store = store.clone();
        let (activations, expiries) = tokio::task::spawn_blocking(move || {
            store.read(|conn| {
                let count = |conn: &mut dyn Conn, kind: &str| {
                    conn.count("SELECT COUNT(*) FROM ledger_entries WHERE kind = $1", tally_store::params![kind])
                };
                Ok::<_, StoreError>((count(conn, "activation")?, count(conn, "expiry")?))
            })
        })
        .await
        .unwrap()
        .unwrap();
        assert!(
            activations <= LATER as i64 && expiries <= 1,
            "settled twice: {activations} activations, {expiries} expiries"
        );
        if activations == LATER as i64 && expiries == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workers did not settle: {activations} activations, {expiries} expiries"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = store.clone();
    let settled_twice = tokio::task::spawn_blocking(move || {
        store.read(|conn| {
            conn.count(
                "SELECT COUNT(*) FROM (SELECT grant_id FROM ledger_entries WHERE kind IN ('activation', 'expiry')
                 GROUP BY grant_id, kind HAVING COUNT(*) > 1) twice",
                &[],
            )
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(settled_twice, 0, "no grant was started or expired twice");
}

/// Checks the balances a client reads against the exact expected decimals.
async fn check_balances(server: &Endpoint, customer: &str) {
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        async move {
            let answer = send(&client, server, reqwest::Method::GET, &path, None).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
            answer.body
        }
    };
    let amount = |value: &Value| decimal(&value.to_string());
    let times = |count: usize, each: &str| Decimal::from(count) * decimal(each);
    let expected =
        times(CREDITS, CREDIT) + times(TWINS / 2, TWIN_CREDIT) - times(CHARGES, CHARGE) - times(TWINS / 2, TWIN_CHARGE);
    assert!(expected < Decimal::ZERO, "the workload overdraws the account");
    let default = get(format!("/customers/{customer}/wallet/default:USD")).await;
    assert_eq!(amount(&default["available"]), expected, "no update lost, none applied twice: {default}");
    assert_eq!(amount(&default["pending_in"]), Decimal::ZERO);
    let listed = get(format!("/customers/{customer}/wallet/default:USD/transactions?limit=1")).await;
    assert_eq!(listed["total_count"], CREDITS + CHARGES + TWINS, "one transaction per id");

    let later = get(format!("/customers/{customer}/wallet/later:USD")).await;
    assert_eq!(amount(&later["available"]), times(LATER, LATER_CREDIT), "{later}");
    assert_eq!(amount(&later["pending_in"]), Decimal::ZERO, "{later}");
    let expiring = get(format!("/customers/{customer}/wallet/expiring:USD")).await;
    assert_eq!(amount(&expiring["available"]), Decimal::ZERO, "{expiring}");
    let expired = get(format!("/customers/{customer}/wallet/expiring:USD/transactions")).await;
    let kinds: Vec<&str> =
        expired["items"].as_array().unwrap().iter().map(|item| item["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["expiry", "adjustment"], "{expired}");
}

fn verify_with_cli(database_url: &str) {
    let output = tally(database_url, &["ledger", "verify"]);
    assert_success(&output, "tally ledger verify");
    assert!(String::from_utf8_lossy(&output.stdout).contains("ledger OK"));
}

fn recorded_migrations(store: &Store) -> (i64, i64) {
    store
        .read(|conn| {
            Ok::<_, StoreError>((
                conn.count("SELECT COUNT(*) FROM tally_migrations", &[])?,
                conn.count("SELECT COUNT(DISTINCT version) FROM tally_migrations", &[])?,
            ))
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_server_processes_on_one_postgres_database_stay_exact() {
    let Some(database) = tokio::task::spawn_blocking(|| TestDatabase::create(Backend::Postgres)).await.unwrap() else {
        return;
    };
    let url = database.url.clone();
    // Both start at once on an empty database: they race to migrate it.
    let mut servers = [start_server(&url), start_server(&url)];
    let client = reqwest::Client::new();
    for server in &mut servers {
        server.wait_until_answering(&client, "/health").await;
    }
    let store = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Arc::new(Store::open(&tally_store::DatabaseUrl::parse(&url).unwrap()).unwrap())
        })
        .await
        .unwrap()
    };
    let migrations = tally_store::migrate::MIGRATIONS.len() as i64;
    let reader = store.clone();
    let recorded = tokio::task::spawn_blocking(move || recorded_migrations(&reader)).await.unwrap();
    assert_eq!(recorded, (migrations, migrations), "two servers starting at once applied each migration once");

    let key_url = url.clone();
    let key = tokio::task::spawn_blocking(move || {
        let output = tally(&key_url, &["api-keys", "create", "--mode", "test", "--name", "multi-server"]);
        assert_success(&output, "tally api-keys create");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    })
    .await
    .unwrap();
    let endpoints = servers.each_ref().map(|server| Endpoint { key: key.clone(), base: server.base.clone() });

    let customer = drive("PostgreSQL", endpoints.clone(), store.clone()).await;
    wait_for_workers(store.clone()).await;
    check_balances(&endpoints[1], &customer).await;

    let cli_url = url.clone();
    tokio::task::spawn_blocking(move || {
        verify_with_cli(&cli_url);
        for run in ["first", "second"] {
            assert_success(&tally(&cli_url, &["migrate"]), &format!("the {run} tally migrate on a migrated database"));
        }
    })
    .await
    .unwrap();
    for server in &mut servers {
        server.stop().await;
    }
    drop(tokio::task::spawn_blocking(move || drop(store)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_sqlite_database_stay_exact() {
    let database =
        Arc::new(tokio::task::spawn_blocking(|| TestDatabase::create(Backend::Sqlite)).await.unwrap().unwrap());
    let mut first = TestApp::spawn_on(database.clone(), Backend::Sqlite).await;
    let mut second = TestApp::spawn_on(database.clone(), Backend::Sqlite).await;
    let endpoints = [
        Endpoint { base: first.base.clone(), key: first.test_key.clone() },
        Endpoint { base: second.base.clone(), key: second.test_key.clone() },
    ];
    let customer = drive("SQLite", endpoints.clone(), first.store.clone()).await;
    wait_for_workers(first.store.clone()).await;
    check_balances(&endpoints[0], &customer).await;
    first.assert_ledger_agrees().await;
    let url = database.url.clone();
    tokio::task::spawn_blocking(move || verify_with_cli(&url)).await.unwrap();
    first.stop().await;
    second.stop().await;
}

/// `tally migrate` started several times at once on an empty database: every run succeeds
/// and each migration is recorded once.
fn migrate_from_several_processes_at_once(backend: Backend) {
    let Some(database) = TestDatabase::create(backend) else { return };
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let runs: Vec<Child> = dirs
        .iter()
        .map(|dir| {
            tally_command(&database.url, dir.path())
                .arg("migrate")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start tally migrate")
        })
        .collect();
    for run in runs {
        assert_success(&run.wait_with_output().unwrap(), "a concurrent tally migrate");
    }
    let store = database.open_store();
    let migrations = tally_store::migrate::MIGRATIONS.len() as i64;
    assert_eq!(recorded_migrations(&store), (migrations, migrations));
    assert_eq!(store.migrate().unwrap(), Vec::<i64>::new(), "nothing is left to apply");
}

#[test]
fn concurrent_migrate_commands_on_postgres() {
    migrate_from_several_processes_at_once(Backend::Postgres);
}

#[test]
fn concurrent_migrate_commands_on_sqlite() {
    migrate_from_several_processes_at_once(Backend::Sqlite);
}

/// Two servers' worker passes at the same instant over the same due customers: every due
/// start is settled, once, between them.
fn workers_settle_each_due_customer_once(backend: Backend) {
    let Some(database) = TestDatabase::create(backend) else { return };
    let servers = [database.open_store(), database.open_store()];
    let created = chrono::Utc::now();
    const CUSTOMERS: usize = 40;
    let mut due = BTreeSet::new();
    for index in 0..CUSTOMERS {
        let id = servers[index % 2]
            .write(|conn| {
                use tally_store::ops::customers::{create, NewCustomer};
                use tally_store::ops::wallet::{adjust, Adjustment, AdjustmentReason};
                let customer = create(
                    conn,
                    tally_core::Mode::Test,
                    &NewCustomer { name: format!("C{index}"), ..Default::default() },
                    created,
                )?;
                let credit = Adjustment {
                    transaction_id: format!("start-{index}"),
                    account_name: "default".into(),
                    asset: tally_core::asset::AssetCode::parse("USD").unwrap(),
                    amount: decimal("7.5"),
                    description: None,
                    reason: AdjustmentReason::Gift,
                    effective_at: Some(created + chrono::Duration::minutes(5)),
                    expires_at: None,
                    metadata: Default::default(),
                };
                adjust(conn, tally_core::Mode::Test, &customer.id, &credit, created)?;
                Ok::<_, tally_store::ops::OpError>(customer.id)
            })
            .unwrap();
        due.insert(id);
    }
    let now = created + chrono::Duration::minutes(10);
    let together = Arc::new(Barrier::new(2));
    let passes: Vec<tally_http::worker::Pass> = std::thread::scope(|scope| {
        let runs: Vec<_> = servers
            .iter()
            .map(|store| {
                let together = together.clone();
                scope.spawn(move || {
                    together.wait();
                    tally_http::worker::settle_due(store, now).expect("a worker pass")
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    eprintln!("worker passes on two {backend:?} servers over {CUSTOMERS} due customers: {passes:?}");
    assert_eq!(passes.iter().map(|pass| pass.changed).sum::<usize>(), CUSTOMERS, "each due customer settled once");
    let (activations, report) = servers[0]
        .read(|conn| {
            let activations = conn.count("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'activation'", &[])?;
            Ok::<_, StoreError>((activations, tally_store::ops::ledger::verify(conn)?))
        })
        .unwrap();
    assert_eq!(activations, CUSTOMERS as i64);
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    let again = tally_http::worker::settle_due(&servers[1], now).unwrap();
    assert_eq!(again, tally_http::worker::Pass::default(), "nothing is left due");
}

#[test]
fn two_workers_settle_each_due_customer_once_on_postgres() {
    workers_settle_each_due_customer_once(Backend::Postgres);
}

#[test]
fn two_workers_settle_each_due_customer_once_on_sqlite() {
    workers_settle_each_due_customer_once(Backend::Sqlite);
}
