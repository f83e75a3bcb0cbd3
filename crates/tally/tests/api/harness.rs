//! The test harness: each test starts the real server on 127.0.0.1:0 with a fresh database
//! (a temporary SQLite file, or a PostgreSQL database created for it and dropped after) and
//! speaks HTTP to it. `on_both_backends!` runs each test against both stores, unchanged.
//!
//! PostgreSQL comes from TALLY_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432).
//! When it cannot be reached the PostgreSQL variants pass without running and say so, unless
//! TALLY_REQUIRE_POSTGRES=1 (set by CI), when they fail.

#![allow(dead_code)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use tally_core::Mode;
use tally_store::{DatabaseUrl, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn postgres_base_url() -> String {
    std::env::var("TALLY_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

fn postgres_required() -> bool {
    std::env::var("TALLY_REQUIRE_POSTGRES").is_ok_and(|value| value == "1")
}

/// A database made for one test. PostgreSQL databases are dropped when this is dropped.
pub struct TestDatabase {
    pub url: String,
    postgres_name: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestDatabase {
    /// `None` when the backend is PostgreSQL and it cannot be reached (and is not required).
    pub fn create(backend: Backend) -> Option<TestDatabase> {
        let dir = tempfile::tempdir().expect("temporary directory");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("tally.db").display());
                Some(TestDatabase { url, postgres_name: None, _dir: dir })
            }
            Backend::Postgres => {
                let admin_url = format!("{}/postgres", postgres_base_url());
                let mut admin = match postgres::Client::connect(&admin_url, postgres::NoTls) {
                    Ok(client) => client,
                    Err(error) if !postgres_required() => {
                        eprintln!("PostgreSQL NOT RUN: cannot reach {admin_url} ({error}); set TALLY_REQUIRE_POSTGRES=1 to fail instead");
                        return None;
                    }
                    Err(error) => panic!("PostgreSQL is required but unreachable at {admin_url}: {error}"),
                };
                let name = format!("tally_test_{}", tally_store::ids::new_secret(8));
                admin.batch_execute(&format!("CREATE DATABASE {name}")).expect("create test database");
                let url = format!("{}/{name}", postgres_base_url());
                Some(TestDatabase { url, postgres_name: Some(name), _dir: dir })
            }
        }
    }

    pub fn open_store(&self) -> Arc<Store> {
        let store = Store::open(&DatabaseUrl::parse(&self.url).unwrap()).expect("open store");
        store.migrate().expect("migrate");
        Arc::new(store)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(name) = &self.postgres_name {
            let admin_url = format!("{}/postgres", postgres_base_url());
            let name = name.clone();
            // Dropped on a plain thread: the driver may not block inside the test's runtime.
            let _ = std::thread::spawn(move || {
                if let Ok(mut admin) = postgres::Client::connect(&admin_url, postgres::NoTls) {
                    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            })
            .join();
        }
    }
}

pub struct TestApp {
    pub backend: Backend,
    pub base: String,
    pub test_key: String,
    pub live_key: String,
    pub client: reqwest::Client,
    pub store: Arc<Store>,
    /// The server's clock: `advance` moves the server's "now" forward without waiting.
    pub clock: tally_http::clock::Clock,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    pub database: Arc<TestDatabase>,
}

/// A response: status, headers and the parsed JSON body (`Value::Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Reply {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text);
        self
    }

    pub fn content_type(&self) -> &str {
        self.headers.get("content-type").and_then(|value| value.to_str().ok()).unwrap_or_default()
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        let database = tokio::task::spawn_blocking(move || TestDatabase::create(backend)).await.unwrap()?;
        Some(TestApp::spawn_on(Arc::new(database), backend).await)
    }

    /// Starts another server on the same database (for multi-server tests).
    pub async fn spawn_on(database: Arc<TestDatabase>, backend: Backend) -> TestApp {
        TestApp::spawn_with(database, backend, test_webhook_config()).await
    }

    /// Starts a server on `database` that delivers webhooks as `webhooks` says.
    pub async fn spawn_with(
        database: Arc<TestDatabase>,
        backend: Backend,
        webhooks: tally_http::WebhookConfig,
    ) -> TestApp {
        TestApp::spawn_with_state(database, backend, webhooks, |state| state).await
    }

    /// Starts a server whose state `configure` adjusts before it serves (a live payment
    /// provider, for one).
    pub async fn spawn_with_state(
        database: Arc<TestDatabase>,
        backend: Backend,
        webhooks: tally_http::WebhookConfig,
        configure: impl FnOnce(tally_http::AppState) -> tally_http::AppState,
    ) -> TestApp {
        let opened = database.clone();
        let (store, test_key, live_key) = tokio::task::spawn_blocking(move || {
            let store = opened.open_store();
            let now = chrono::Utc::now();
            let (_, test_key) =
                store.write(|conn| tally_store::repo::api_keys::create(conn, Mode::Test, Some("tests"), now)).unwrap();
            let (_, live_key) =
                store.write(|conn| tally_store::repo::api_keys::create(conn, Mode::Live, Some("tests"), now)).unwrap();
            (store, test_key, live_key)
        })
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let config = tally_http::HttpConfig {
            platform_name: "Test Platform".into(),
            settle_interval: std::time::Duration::from_millis(100),
            webhooks,
            ..tally_http::HttpConfig::default()
        };
        let state = configure(tally_http::AppState::new(store.clone(), config));
        let clock = state.config.clock.clone();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            tally_http::serve(listener, state, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestApp {
            backend,
            base,
            test_key,
            live_key,
            client: reqwest::Client::new(),
            store,
            clock,
            shutdown: Some(shutdown),
            server: Some(server),
            database,
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    pub async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<&Value>) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("X-CREDYT-API-KEY", key);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text.clone()))
        };
        Reply { status, headers, body, text }
    }

    pub async fn raw(&self, method: Method, path: &str, body: &str) -> Reply {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("X-CREDYT-API-KEY", &self.test_key)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, body, text }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(&self.test_key), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(&self.test_key), Some(&body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(&self.test_key), Some(&body)).await
    }

    pub async fn delete_version(&self, product_id: &str, version: &str) -> Reply {
        self.call(Method::DELETE, &format!("/products/{product_id}/{version}"), Some(&self.test_key), None).await
    }

    /// Creates a test-mode customer and returns its id.
    pub async fn customer(&self, name: &str) -> String {
        let reply = self.post("/customers", json!({ "name": name })).await.expect(201);
        reply.body["id"].as_str().unwrap().to_owned()
    }

    /// Credits `amount` of `asset` to the default account as an external top-up.
    pub async fn fund(&self, customer: &str, asset: &str, amount: &str, transaction_id: &str) {
        let body: Value = serde_json::from_str(&format!(
            r#"{{"transaction_id":"{transaction_id}","asset":"{asset}","amount":{amount},"reason":"external_topup"}}"#
        ))
        .unwrap();
        self.post(&format!("/customers/{customer}/wallet/adjustments"), body).await.expect(201);
    }

    /// The account's balances as exact decimal text: (available, pending_in, pending_out).
    pub async fn balances(&self, customer: &str, account: &str) -> (String, String, String) {
        let reply = self.get(&format!("/customers/{customer}/wallet/{account}")).await.expect(200);
        let text = |field: &str| reply.body[field].to_string();
        (text("available"), text("pending_in"), text("pending_out"))
    }

    /// Waits until `check` holds, looking again every 20 ms, and fails the test after 30 s.
    /// For effects of the background worker: move `clock` first, then wait for the effect.
    pub async fn eventually<F: std::future::Future<Output = bool>>(
        &self,
        what: &str,
        mut check: impl FnMut() -> F,
    ) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !check().await {
            assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Recomputes every balance from the ledger and asserts the books agree.
    /// `ledger verify` finds the books clean, both ways: the join passes, and the fingerprints
    /// (which must agree on clean books, or every verification would pay for both).
    pub async fn assert_ledger_agrees(&self) {
        use tally_store::ops::ledger;
        let store = self.store.clone();
        let (report, fast) = tokio::task::spawn_blocking(move || {
            store
                .read(|conn| {
                    Ok::<_, tally_store::StoreError>((
                        ledger::verify_in_chunks(conn, 500)?,
                        ledger::verify_by_fingerprints(conn)?,
                    ))
                })
                .unwrap()
        })
        .await
        .unwrap();
        assert!(report.problems.is_empty(), "ledger mismatch: {:#?}", report.problems);
        assert_eq!(fast.as_ref(), Some(&report), "the fingerprints agree with the join passes");
        let store = self.store.clone();
        let on_two =
            tokio::task::spawn_blocking(move || store.read_pair(ledger::verify_on_two).unwrap()).await.unwrap();
        assert_eq!(on_two, report, "the halves read on two connections at once agree too");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Webhooks for tests: looked for every 50 ms, retried within a second or two, given up after
/// five attempts.
pub fn test_webhook_config() -> tally_http::WebhookConfig {
    let millis = std::time::Duration::from_millis;
    tally_http::WebhookConfig {
        interval: millis(50),
        timeout: millis(2000),
        retry_delays: vec![millis(100), millis(200), millis(300), millis(400)],
        retry_for: millis(0),
        batch: 50,
        retention: std::time::Duration::from_secs(30 * 24 * 60 * 60),
    }
}

/// Parses JSON text with exact numbers, for request bodies with decimals.
pub fn body(text: &str) -> Value {
    serde_json::from_str(text).expect("valid test JSON")
}

/// Generates, for each listed `async fn NAME(app: TestApp)` of the calling module, one test
/// on SQLite and one on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::harness::TestApp::spawn($crate::harness::Backend::Sqlite).await.expect("sqlite is embedded");
                    super::$name(app).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::harness::TestApp::spawn($crate::harness::Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
    };
}
