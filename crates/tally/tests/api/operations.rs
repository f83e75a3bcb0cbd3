//! Running Tally in production (docs/operations.md): Prometheus metrics by route template,
//! the metrics token, request ids in responses and log lines, the readiness probe, and the
//! administrative commands' refusal to create a database by accident.
//!
//! Metrics belong to the process, and the test binary runs many servers at once, so the
//! metric tests compare a scrape before with one after and expect at least their own share.

use crate::harness::{body, test_webhook_config, Backend, TestApp, TestDatabase};
use crate::on_both_backends;
use crate::server_process::{ServerProcess, ANY_PORT};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

on_both_backends!(
    requests_are_counted_by_route_template_and_billing_by_asset,
    the_metrics_token_guards_metrics_only,
    request_ids_are_echoed_or_made,
    ready_checks_the_database_schema_and_the_worker,
    admin_commands_refuse_a_database_tally_did_not_make,
);

/// The sum of the samples of `name` whose labels include every pair of `labels`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in metrics.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let matches = series_name == name
            && labels.iter().all(|(key, wanted)| series_labels.contains(&format!("{key}=\"{wanted}\"")));
        if matches {
            total += value.parse::<f64>().unwrap_or_else(|_| panic!("a number in {line:?}"));
        }
    }
    total
}

async fn scrape(app: &TestApp) -> String {
    let reply = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let content_type = reply.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    reply.text().await.unwrap()
}

const IMG: &str =
    r#"{"code":"IMG","name":"Image Generation","precision":2,"label":"image","rates":[{"source":"USD","rate":0.10}]}"#;

/// `/metrics` counts requests by method, route template and status (never by raw URL, which
/// would make a series per customer), times them, and counts usage billed by asset.
async fn requests_are_counted_by_route_template_and_billing_by_asset(app: TestApp) {
    const ROUTE: &str = "/customers/{customer_id}";
    let before = scrape(&app).await;
    let customer = app.customer("Metered").await;
    app.get(&format!("/customers/{customer}")).await.expect(200);
    app.get(&format!("/customers/{customer}")).await.expect(200);
    app.get("/customers/cust_nobody").await.expect(404);
    app.get("/no/such/endpoint").await.expect(404);

    app.post("/assets", body(IMG)).await.expect(201);
    app.post("/products", body(tally::bench::GLITCH_IMAGES)).await.expect(201);
    let subscribed = app
        .post("/customers", json!({"name": "Fan", "subscriptions": [{"products": [{"code": "glitch_images_std"}]}]}))
        .await
        .expect(201);
    let fan = subscribed.body["id"].as_str().unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    let events: Vec<Value> = (0..3)
        .map(|index| json!({"id": format!("metered-{index}"), "event_type": "image_generated", "occurred_at": now}))
        .collect();
    app.post("/events", json!({"customer_id": fan, "events": events})).await.expect(204);

    let after = scrape(&app).await;
    let increase = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);
    let get_customer = [("method", "GET"), ("route", ROUTE), ("status", "200")];
    assert!(increase("tally_http_requests_total", &get_customer) >= 2.0, "{after}");
    assert!(increase("tally_http_request_duration_seconds_count", &get_customer) >= 2.0, "{after}");
    assert!(
        after.contains(r#"tally_http_request_duration_seconds_bucket{method="GET",route="/customers/{customer_id}",status="200",le="0.005"}"#),
        "latency is a histogram with buckets: {after}"
    );
    assert!(increase("tally_http_requests_total", &[("route", ROUTE), ("status", "404")]) >= 1.0);
    assert!(increase("tally_http_requests_total", &[("route", "unmatched"), ("status", "404")]) >= 1.0);
    assert!(!after.contains(&customer) && !after.contains("/no/such/endpoint"), "raw URLs never become labels");

    assert!(increase("tally_events_ingested_total", &[("environment", "test")]) >= 3.0);
    assert!(increase("tally_usage_fees_total", &[("environment", "test"), ("asset", "IMG")]) >= 3.0);
    // One IMG per image, as the seed product prices it.
    assert!(increase("tally_usage_billed_amount", &[("environment", "test"), ("asset", "IMG")]) >= 3.0);

    // Read at scrape time: the background tasks, the job backlog and the connections.
    assert_eq!(sample(&after, "tally_background_task_up", &[("task", "worker")]), 1.0, "{after}");
    assert_eq!(sample(&after, "tally_database_up", &[]), 1.0);
    for job in ["settle_grants", "subscriptions", "webhook_deliveries"] {
        assert!(after.contains(&format!("tally_job_lag_seconds{{job=\"{job}\"}}")), "{job}: {after}");
    }
    assert!(after.contains("tally_webhook_deliveries_pending "));
    assert!(after.contains("tally_database_connections{state=\"idle\"}"));
    match app.backend {
        Backend::Sqlite => assert!(sample(&after, "tally_sqlite_commit_round_jobs_count", &[]) >= 1.0, "{after}"),
        Backend::Postgres => assert!(sample(&after, "tally_database_connections_max", &[]) >= 1.0, "{after}"),
    }
    assert!(after.contains("# TYPE tally_http_requests_total counter"));
}

/// With a metrics token configured, `/metrics` wants it as a bearer token (401 otherwise);
/// the API keys neither open it nor does the token open the API.
async fn the_metrics_token_guards_metrics_only(app: TestApp) {
    let guarded = TestApp::spawn_with_state(app.database.clone(), app.backend, test_webhook_config(), |mut state| {
        let config = tally_http::HttpConfig { metrics_token: Some("m3trics-t0ken".into()), ..(*state.config).clone() };
        state.config = Arc::new(config);
        state
    })
    .await;
    let metrics = format!("{}/metrics", guarded.base);
    let plain = guarded.client.get(&metrics).send().await.unwrap();
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(plain.headers()["www-authenticate"], "Bearer");
    assert_eq!(plain.headers()["content-type"], "application/problem+json");
    let wrong = guarded.client.get(&metrics).bearer_auth("m3trics-t0ke").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let api_key = guarded.client.get(&metrics).bearer_auth(&guarded.test_key).send().await.unwrap();
    assert_eq!(api_key.status(), StatusCode::UNAUTHORIZED, "an API key is not the metrics token");
    let right = guarded.client.get(&metrics).bearer_auth("m3trics-t0ken").send().await.unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    assert!(right.text().await.unwrap().contains("tally_http_requests_total"));
    let api = guarded.client.get(format!("{}/customers", guarded.base)).bearer_auth("m3trics-t0ken").send().await;
    assert_eq!(api.unwrap().status(), StatusCode::UNAUTHORIZED, "the metrics token is not an API key");
    // Probes stay open: an orchestrator has no token.
    let health = guarded.client.get(format!("{}/health", guarded.base)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Without a token, /metrics is open (the first server).
    scrape(&app).await;
}

/// A plausible `X-Request-Id` comes back unchanged on the response; a missing or unfit one is
/// replaced by a fresh `req_…` id, on errors and unknown routes too.
async fn request_ids_are_echoed_or_made(app: TestApp) {
    let send = |path: &str, id: Option<&str>| {
        let mut request = app.client.get(format!("{}{path}", app.base)).header("X-CREDYT-API-KEY", &app.test_key);
        if let Some(id) = id {
            request = request.header("X-Request-Id", id);
        }
        request.send()
    };
    let id_of = |reply: &reqwest::Response| reply.headers()["x-request-id"].to_str().unwrap().to_owned();
    let echoed = send("/customers", Some("lb-7f3a9c:0001")).await.unwrap();
    assert_eq!(echoed.status(), StatusCode::OK);
    assert_eq!(id_of(&echoed), "lb-7f3a9c:0001");
    let failed = send("/customers/cust_nobody", Some("trace-404")).await.unwrap();
    assert_eq!((failed.status(), id_of(&failed)), (StatusCode::NOT_FOUND, "trace-404".to_owned()));
    let first = id_of(&send("/customers", None).await.unwrap());
    let second = id_of(&send("/no/such/endpoint", None).await.unwrap());
    assert!(first.starts_with("req_") && second.starts_with("req_") && first != second, "{first} {second}");
    let unfit = id_of(&send("/customers", Some(&"x".repeat(200))).await.unwrap());
    assert!(unfit.starts_with("req_"), "an overlong id is replaced: {unfit}");
    let probe = id_of(&send("/health", Some("probe-1")).await.unwrap());
    assert_eq!(probe, "probe-1");
}

async fn ready(base: &str, client: &reqwest::Client) -> (StatusCode, String, Value) {
    let reply = client.get(format!("{base}/ready")).send().await.unwrap();
    let status = reply.status();
    let content_type = reply.headers()["content-type"].to_str().unwrap().to_owned();
    (status, content_type, reply.json().await.unwrap())
}

/// `/ready` answers 200 with its checks when the database answers, its schema is current and
/// the background tasks run; 503 problem+json naming the failed check otherwise.
async fn ready_checks_the_database_schema_and_the_worker(app: TestApp) {
    let (status, _, body) = ready(&app.base, &app.client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "ready", "checks": {"database": "ok", "migrations": "ok", "worker": "ok"}}));

    // The router alone, without `serve` and so without its background tasks: not ready.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = tally_http::AppState::new(app.store.clone(), tally_http::HttpConfig::default());
    let router = tally_http::router(state);
    let bare = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let (status, content_type, body) = ready(&base, &app.client).await;
    bare.abort();
    assert_eq!((status, content_type.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "application/problem+json"));
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["worker"], "not running: worker, webhook_delivery, auto_top_up", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("worker"), "{body}");

    // A schema older than the server (as after a deploy whose migrations did not run).
    let store = app.store.clone();
    let newest = tokio::task::spawn_blocking(move || {
        store
            .write(|conn| {
                let newest = conn.count("SELECT MAX(version) FROM tally_migrations", &[])?;
                conn.execute("DELETE FROM tally_migrations WHERE version = $1", tally_store::params![newest])?;
                Ok::<_, tally_store::StoreError>(newest)
            })
            .unwrap()
    })
    .await
    .unwrap();
    let (status, _, body) = ready(&app.base, &app.client).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["migrations"], format!("not applied: {newest}"), "{body}");
    assert_eq!((body["checks"]["database"].as_str(), body["checks"]["worker"].as_str()), (Some("ok"), Some("ok")));
    assert_eq!(body["status"], 503);
}

/// Runs `tally ARGS` in `dir` with nothing from the environment but `TALLY_LOG`.
fn tally(dir: &Path, args: &[&str]) -> std::process::Output {
    bare_command(dir).args(args).output().expect("run tally")
}

fn bare_command(dir: &Path) -> Command {
    let mut command = Command::new(TALLY);
    command.current_dir(dir).env("TALLY_LOG", "warn");
    for variable in ["TALLY_CONFIG", "TALLY_DATABASE_URL", "DATABASE_URL", "PORT", "TALLY_LISTEN", "TALLY_LOG_FORMAT"] {
        command.env_remove(variable);
    }
    command
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `tally api-keys …` and `tally ledger verify` never create a database: a SQLite file that
/// does not exist, or a database without Tally's schema, is refused (exit status 1) with where
/// Tally looked, and left as it was. Once `tally migrate` made it, they work.
async fn admin_commands_refuse_a_database_tally_did_not_make(app: TestApp) {
    let backend = app.backend;
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let commands: [&[&str]; 3] =
            [&["api-keys", "create", "--mode", "test"], &["api-keys", "list"], &["ledger", "verify"]];
        if backend == Backend::Sqlite {
            let missing = dir.path().join("typo").join("tally.db");
            let url = format!("sqlite://{}", missing.display());
            for command in commands {
                let output = tally(dir.path(), &[&["--database", url.as_str()][..], command].concat());
                assert_eq!(output.status.code(), Some(1), "{command:?}: {}", stderr(&output));
                assert!(output.stdout.is_empty(), "{command:?} printed no key");
                let message = stderr(&output);
                assert!(message.contains(&format!("no Tally database at {}", missing.display())), "{message}");
                assert!(!dir.path().join("typo").exists(), "{command:?} created the database's directory");
            }
            // A relative path is shown as where it was looked for.
            let output = tally(dir.path(), &["--database", "sqlite://elsewhere.db", "api-keys", "list"]);
            let canonical = dir.path().canonicalize().unwrap().join("elsewhere.db");
            let message = stderr(&output);
            assert!(
                message.contains(&dir.path().join("elsewhere.db").display().to_string())
                    || message.contains(&canonical.display().to_string()),
                "{message}"
            );
            assert!(!dir.path().join("elsewhere.db").exists());
        }
        // A database that exists but holds no Tally schema (an empty file, a new database).
        let empty = TestDatabase::create(backend).expect("the backend is reachable: its server started");
        let url = match backend {
            Backend::Sqlite => {
                let path = dir.path().join("empty.db");
                std::fs::write(&path, b"").unwrap();
                format!("sqlite://{}", path.display())
            }
            Backend::Postgres => empty.url.clone(),
        };
        for command in commands {
            let output = tally(dir.path(), &[&["--database", url.as_str()][..], command].concat());
            assert_eq!(output.status.code(), Some(1), "{command:?}: {}", stderr(&output));
            assert!(stderr(&output).contains("holds no Tally schema"), "{}", stderr(&output));
        }
        let store = tally_store::Store::open(&tally_store::DatabaseUrl::parse(&url).unwrap()).unwrap();
        assert_eq!(store.read(tally_store::migrate::pending).unwrap(), None, "the commands created no table");
        drop(store);
        // Made by Tally, the same commands work.
        assert!(tally(dir.path(), &["--database", &url, "migrate"]).status.success());
        let created = tally(dir.path(), &["--database", &url, "api-keys", "create", "--mode", "test"]);
        assert!(created.status.success(), "{}", stderr(&created));
        assert!(String::from_utf8_lossy(&created.stdout).trim().starts_with("key_test_"));
        assert!(tally(dir.path(), &["--database", &url, "ledger", "verify"]).status.success());
    })
    .await
    .unwrap();
}

/// A `tally serve` process writing its log to a file; killed when dropped.
/// Starts `tally serve` with `args`, the database given as hosting platforms give it
/// (`DATABASE_URL`), logging at info.
fn start_server(database_url: &str, args: &[&str]) -> ServerProcess {
    ServerProcess::start(ANY_PORT, |dir| {
        let mut command = bare_command(dir);
        command.env("TALLY_LOG", "info").env("DATABASE_URL", database_url).args(args);
        command
    })
}

/// With `--log-format json` each request is one JSON line naming its method, route template,
/// status, latency and request id; the database password never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_request_logs_carry_the_request_id_and_no_secret() {
    let Some(database) = tokio::task::spawn_blocking(|| TestDatabase::create(Backend::Postgres)).await.unwrap() else {
        return;
    };
    // PostgreSQL trusts local connections here, so any password is accepted, and must be hidden.
    let (scheme, rest) = database.url.split_once("://").unwrap();
    let (user_info, host) = rest.split_once('@').expect("the test URL names a user");
    let user = user_info.split(':').next().unwrap();
    let with_password = format!("{scheme}://{user}:hunter2-secret@{host}");
    let mut server = start_server(&with_password, &["--log-format", "json"]);
    let client = reqwest::Client::new();
    server.wait_until_answering(&client, "/ready").await;
    let reply = client
        .get(format!("{}/customers/cust_missing", server.base))
        .header("X-CREDYT-API-KEY", "key_test_unknown")
        .header("X-Request-Id", "json-trace-1")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    let log = server.wait_for_log("the request's log line", |log| log.contains("json-trace-1")).await;
    let line: Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["span"]["request_id"] == "json-trace-1")
        .unwrap_or_else(|| panic!("a JSON line for the request:\n{log}"));
    assert_eq!(line["message"], "request finished", "{line}");
    assert_eq!(line["status"], 401, "{line}");
    assert!(line["latency_ms"].is_number(), "{line}");
    assert_eq!(line["span"]["method"], "GET", "{line}");
    assert_eq!(line["span"]["route"], "/customers/{customer_id}", "{line}");
    assert!(log.contains(&format!("{scheme}://{user}:***@{host}")), "the URL is logged, redacted:\n{log}");
    assert!(!log.contains("hunter2"), "the password reached the log:\n{log}");
    assert!(!log.contains("key_test_unknown") && !log.contains("cust_missing"), "{log}");
}

/// Text logs written to a file (not a terminal) carry no colour codes, and each request's
/// line names its route, status and request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_request_logs_have_no_colour_codes_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tally.db").display());
    let mut server = start_server(&url, &[]);
    let client = reqwest::Client::new();
    server.wait_until_answering(&client, "/ready").await;
    let reply = client
        .get(format!("{}/openapi.json", server.base))
        .header("X-Request-Id", "text-trace-1")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let log = server.wait_for_log("the request's log line", |log| log.contains("text-trace-1")).await;
    let line = log.lines().find(|line| line.contains("text-trace-1")).unwrap();
    assert!(line.contains("route=/openapi.json") && line.contains("status=200"), "{line}");
    assert!(line.contains("request finished") && line.contains("latency_ms="), "{line}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file:\n{log}");
}
