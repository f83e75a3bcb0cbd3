//! What an operator sees of a running server: Prometheus metrics (`GET /metrics`), one log
//! line per request under a request id, and the probes (`GET /health`, `GET /ready`). The
//! metrics and log lines are listed in docs/operations.md.
//!
//! Metrics go through the `metrics` facade to one Prometheus recorder per process, installed
//! by the first [`AppState`] made. The series are the process's, not one server's: every
//! server a process runs (the tests run many) adds to the same counters, which is what a
//! scrape of a process should show. Library code (the SQLite group commit) records through
//! the same facade, on whatever thread it runs, without knowing about HTTP.

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rust_decimal::prelude::ToPrimitive;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tally_core::Mode;
use tally_store::ops::auto_top_up::ChargeResult;
use tally_store::ops::events::IngestReport;
use tally_store::repo::webhooks::AttemptOutcome;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnBodyChunk, DefaultOnEos, MakeSpan, OnResponse, TraceLayer};
use tracing::Span;

/// The header a request id comes in and goes back out in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// A client's request id is kept when it is 1 to this many visible ASCII characters;
/// anything else is replaced, so that a log line never carries what a client made up freely.
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// The `route` of a request that matched no route: raw paths would make a series per URL.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// How long `/ready` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/metrics` waits for the backlog query before it answers without it.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(5);
/// How often histogram samples are folded into their buckets between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Request latency buckets, in seconds: 1 ms (a cached read) to 10 s (a stuck transaction).
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Jobs per group-commit round: 1 to `sqlite::MAX_JOBS_PER_ROUND`.
const ROUND_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The process's Prometheus recorder, installed on first use. `None` when another global
/// recorder was installed first (by a program embedding Tally): its own exporter then shows
/// Tally's series and `/metrics` answers 503.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|builder| {
                    builder
                        .set_buckets_for_metric(Matcher::Full("tally_sqlite_commit_round_jobs".into()), ROUND_BUCKETS)
                })
                .expect("the buckets are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => {
                    tracing::warn!("another metrics recorder is installed: /metrics answers 503");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("tally_http_requests_total", "HTTP requests answered, by method, route and status.");
    describe_histogram!(
        "tally_http_request_duration_seconds",
        Unit::Seconds,
        "Time to the response's headers, by method, route and status."
    );
    describe_counter!("tally_events_ingested_total", "Usage events stored (replays not counted).");
    describe_counter!("tally_events_duplicate_total", "Usage events received again and ignored as exact replays.");
    describe_counter!("tally_usage_fees_total", "Fees rated for stored usage events, by asset.");
    describe_gauge!(
        "tally_usage_billed_amount",
        "Sum of the fees rated since the process started, by asset. Approximate (a float): for dashboards, not accounting."
    );
    describe_counter!("tally_webhook_attempts_total", "Webhook delivery attempts, by outcome.");
    describe_gauge!("tally_webhook_deliveries_pending", "Webhook deliveries not yet delivered nor given up.");
    describe_counter!("tally_auto_top_ups_total", "Auto top-up attempts, by outcome.");
    describe_gauge!(
        "tally_job_lag_seconds",
        Unit::Seconds,
        "How late the oldest due item of each background job is (0: none overdue)."
    );
    describe_gauge!("tally_background_task_up", "1 while the background task runs in this process.");
    describe_gauge!("tally_database_up", "1 when the last scrape's database query succeeded.");
    describe_gauge!("tally_database_connections", "Database connections, by state (open, idle).");
    describe_gauge!("tally_database_connections_max", "The most connections the PostgreSQL pool opens.");
    describe_gauge!("tally_sqlite_write_queue", "Writers waiting for SQLite's write connection.");
    describe_histogram!("tally_sqlite_commit_round_jobs", "Writes committed together by one SQLite group commit.");
    describe_histogram!(
        "tally_sqlite_commit_round_seconds",
        Unit::Seconds,
        "Time a SQLite group-commit round was open, its COMMIT (fsync) included."
    );
}

/// Folds histogram samples into their buckets every [`UPKEEP_INTERVAL`] until `stop` turns
/// true, so memory stays bounded when nobody scrapes.
pub async fn upkeep(mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Some(handle) = prometheus() {
            handle.run_upkeep();
        }
        tokio::select! {
            _ = tokio::time::sleep(UPKEEP_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests: ids, log lines, metrics.

/// Gives every request an id: the client's `X-Request-Id` when it is a plausible one, else a
/// new `req_…` id. The id goes on the request (for the log span) and back on the response.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let given = request.headers().get(REQUEST_ID_HEADER).and_then(|value| value.to_str().ok());
    let id = match given.filter(|id| acceptable_request_id(id)) {
        Some(id) => id.to_owned(),
        None => tally_store::ids::new_id("req"),
    };
    let value = HeaderValue::from_str(&id).expect("a request id is visible ASCII");
    request.headers_mut().insert(REQUEST_ID_HEADER, value.clone());
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, value);
    response
}

fn acceptable_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_CHARS).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_graphic())
}

/// The route a request matched, as its template (`/customers/{customer_id}`).
fn route_of<B>(request: &axum::http::Request<B>) -> String {
    request.extensions().get::<MatchedPath>().map_or(UNMATCHED_ROUTE, MatchedPath::as_str).to_owned()
}

/// The method as a label: the standard ones, else `other` (a label per made-up method would
/// let clients create series).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts each request and times it, by method, route template and status.
pub async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = route_of(&request);
    let response = next.run(request).await;
    let labels = [("method", method.to_owned()), ("route", route), ("status", response.status().as_u16().to_string())];
    metrics::counter!("tally_http_requests_total", &labels).increment(1);
    metrics::histogram!("tally_http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

/// The request log: a span per request carrying its method, route and id (so every line
/// logged while handling it names them), and one line when the response is ready.
pub type RequestTrace = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    RequestSpan,
    (),
    RequestLog,
    DefaultOnBodyChunk,
    DefaultOnEos,
    (),
>;

pub fn request_trace() -> RequestTrace {
    // No line when a request starts, and none for a 5xx on top of the response line: the
    // error itself is logged once, with its cause, by `ApiError`.
    TraceLayer::new_for_http().make_span_with(RequestSpan).on_request(()).on_response(RequestLog).on_failure(())
}

#[derive(Debug, Clone, Copy)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> Span {
        let request_id = request.headers().get(REQUEST_ID_HEADER).and_then(|value| value.to_str().ok()).unwrap_or("");
        // At ERROR level so that the span, and the request id on every line inside it, is
        // there whatever level the log filter lets through. The raw URL is never logged: a
        // query string or path may carry a token (billing-portal links, checkout pages).
        tracing::error_span!(
            "request",
            method = %method_label(request.method()),
            route = %route_of(request),
            request_id = %request_id,
        )
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RequestLog;

impl<B> OnResponse<B> for RequestLog {
    fn on_response(self, response: &axum::http::Response<B>, latency: Duration, _span: &Span) {
        let latency_ms = (latency.as_secs_f64() * 1_000_000.0).round() / 1000.0;
        tracing::info!(status = response.status().as_u16(), latency_ms, "request finished");
    }
}

// ---------------------------------------------------------------------------------------------
// What the API and the background jobs record.

/// Records a stored batch of usage events and the fees rated for them.
pub fn usage_ingested(mode: Mode, report: &IngestReport) {
    let environment = mode.environment().as_str();
    metrics::counter!("tally_events_ingested_total", "environment" => environment).increment(report.stored as u64);
    if report.duplicates > 0 {
        metrics::counter!("tally_events_duplicate_total", "environment" => environment)
            .increment(report.duplicates as u64);
    }
    for (asset, (fees, amount)) in &report.billed {
        let labels = [("environment", environment.to_owned()), ("asset", asset.clone())];
        metrics::counter!("tally_usage_fees_total", &labels).increment(*fees as u64);
        metrics::gauge!("tally_usage_billed_amount", &labels).increment(amount.to_f64().unwrap_or_default());
    }
}

/// Records one webhook delivery attempt.
pub fn webhook_attempt(outcome: &AttemptOutcome) {
    let outcome = match outcome {
        AttemptOutcome::Delivered => "delivered",
        AttemptOutcome::RetryAt(_) => "retrying",
        AttemptOutcome::Failed => "failed",
    };
    metrics::counter!("tally_webhook_attempts_total", "outcome" => outcome).increment(1);
}

/// Records an auto top-up's charge.
pub fn auto_top_up_charged(result: &ChargeResult) {
    let outcome = match result {
        ChargeResult::Succeeded { .. } => "succeeded",
        ChargeResult::Processing { .. } => "processing",
        ChargeResult::Declined { .. } => "declined",
        ChargeResult::Unknown { .. } => "unknown",
    };
    metrics::counter!("tally_auto_top_ups_total", "outcome" => outcome).increment(1);
}

/// Records an auto top-up that could not be started (its failure is recorded on the account).
pub fn auto_top_up_not_started() {
    metrics::counter!("tally_auto_top_ups_total", "outcome" => "not_started").increment(1);
}

// ---------------------------------------------------------------------------------------------
// Background tasks.

/// The background tasks `serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Worker,
    WebhookDelivery,
    AutoTopUp,
}

impl Task {
    pub const ALL: [Task; 3] = [Task::Worker, Task::WebhookDelivery, Task::AutoTopUp];

    pub fn name(self) -> &'static str {
        match self {
            Task::Worker => "worker",
            Task::WebhookDelivery => "webhook_delivery",
            Task::AutoTopUp => "auto_top_up",
        }
    }
}

/// Which background tasks of a server are running, for `/ready` and `/metrics`.
#[derive(Debug, Default)]
pub struct Background {
    running: [AtomicBool; 3],
}

impl Background {
    /// Marks `task` running until the returned guard drops: when the task returns, panics, or
    /// is dropped unrun.
    pub fn start(self: &Arc<Self>, task: Task) -> Running {
        self.running[task as usize].store(true, Ordering::SeqCst);
        Running { background: self.clone(), task }
    }

    pub fn is_running(&self, task: Task) -> bool {
        self.running[task as usize].load(Ordering::SeqCst)
    }
}

pub struct Running {
    background: Arc<Background>,
    task: Task,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.background.running[self.task as usize].store(false, Ordering::SeqCst);
    }
}

/// Spawns `work` as `task`, marked running for as long as it runs.
pub fn spawn<F>(background: &Arc<Background>, task: Task, work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let running = background.start(task);
    tokio::spawn(async move {
        let _running = running;
        work.await
    })
}

// ---------------------------------------------------------------------------------------------
// Endpoints.

/// `GET /health`: the process is up and answers HTTP. Checks nothing else, so a database
/// outage never gets a healthy process restarted (see `/ready` for that).
pub async fn health() -> &'static str {
    "ok"
}

/// `GET /ready`: the database answers, its schema is this build's, and the background tasks
/// run. 200 with each check, or 503 problem+json naming what failed.
pub async fn ready(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    let schema = tokio::time::timeout(
        READY_TIMEOUT,
        tokio::task::spawn_blocking(move || store.read(tally_store::migrate::pending)),
    )
    .await;
    let (database, migrations) = match schema {
        Err(_) => (format!("no answer within {} ms", READY_TIMEOUT.as_millis()), "unknown".to_owned()),
        Ok(Err(error)) => (format!("the query failed: {error}"), "unknown".to_owned()),
        Ok(Ok(Err(error))) => (format!("the query failed: {error}"), "unknown".to_owned()),
        Ok(Ok(Ok(None))) => ("ok".to_owned(), "the database has no Tally schema".to_owned()),
        Ok(Ok(Ok(Some(pending)))) if pending.is_empty() => ("ok".to_owned(), "ok".to_owned()),
        Ok(Ok(Ok(Some(pending)))) => {
            let versions: Vec<String> = pending.iter().map(i64::to_string).collect();
            ("ok".to_owned(), format!("not applied: {}", versions.join(", ")))
        }
    };
    let stopped: Vec<&str> =
        Task::ALL.into_iter().filter(|task| !state.background.is_running(*task)).map(Task::name).collect();
    let worker = if stopped.is_empty() { "ok".to_owned() } else { format!("not running: {}", stopped.join(", ")) };
    let checks = json!({ "database": database, "migrations": migrations, "worker": worker });
    let failed: Vec<String> = [("database", &database), ("migrations", &migrations), ("worker", &worker)]
        .into_iter()
        .filter(|(_, outcome)| outcome.as_str() != "ok")
        .map(|(check, outcome)| format!("{check}: {outcome}"))
        .collect();
    if failed.is_empty() {
        return (StatusCode::OK, axum::Json(json!({ "status": "ready", "checks": checks }))).into_response();
    }
    let problem = json!({
        "type": "/docs/operations.md#probes",
        "title": "Not ready",
        "status": 503,
        "detail": failed.join("; "),
        "checks": checks,
    });
    (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "application/problem+json")], problem.to_string())
        .into_response()
}

/// `GET /metrics`: the Prometheus text format. When a metrics token is configured the scraper
/// must send it as `Authorization: Bearer TOKEN`.
pub async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = state.config.metrics_token.as_deref().filter(|token| !token.is_empty()) {
        if !bearer(&headers).is_some_and(|presented| same_secret(presented, token)) {
            let problem = json!({
                "type": "/docs/operations.md#metrics",
                "title": "Authentication required",
                "status": 401,
                "detail": "send the metrics token as Authorization: Bearer TOKEN",
            });
            return (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "application/problem+json"), (header::WWW_AUTHENTICATE, "Bearer")],
                problem.to_string(),
            )
                .into_response();
        }
    }
    let Some(handle) = prometheus() else {
        return crate::error::ApiError::Unavailable("another metrics recorder is installed in this process".into())
            .into_response();
    };
    record_gauges(&state).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares digests, so that the time taken says nothing about the token, its length included.
fn same_secret(presented: &str, expected: &str) -> bool {
    crate::routes::topups::constant_time_eq(&Sha256::digest(presented), &Sha256::digest(expected))
}

/// Sets the gauges read at scrape time: connections, background tasks, and job backlogs.
async fn record_gauges(state: &AppState) {
    let pool = state.store.pool_status();
    if let Some(open) = pool.open {
        metrics::gauge!("tally_database_connections", "state" => "open").set(open as f64);
    }
    metrics::gauge!("tally_database_connections", "state" => "idle").set(pool.idle as f64);
    if let Some(max) = pool.max {
        metrics::gauge!("tally_database_connections_max").set(max as f64);
    }
    if let Some(queue) = pool.write_queue {
        metrics::gauge!("tally_sqlite_write_queue").set(queue as f64);
    }
    for task in Task::ALL {
        let up = if state.background.is_running(task) { 1.0 } else { 0.0 };
        metrics::gauge!("tally_background_task_up", "task" => task.name()).set(up);
    }
    let store = state.store.clone();
    let backlog = tokio::time::timeout(
        BACKLOG_TIMEOUT,
        tokio::task::spawn_blocking(move || store.read(tally_store::repo::backlog::read)),
    )
    .await;
    let Ok(Ok(Ok(backlog))) = backlog else {
        metrics::gauge!("tally_database_up").set(0.0);
        return;
    };
    metrics::gauge!("tally_database_up").set(1.0);
    let now = state.now();
    let lag = |due: Option<chrono::DateTime<chrono::Utc>>| {
        due.map_or(0.0, |due| ((now - due).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0))
    };
    metrics::gauge!("tally_job_lag_seconds", "job" => "settle_grants").set(lag(backlog.grants_due_since));
    metrics::gauge!("tally_job_lag_seconds", "job" => "subscriptions").set(lag(backlog.subscriptions_due_since));
    metrics::gauge!("tally_job_lag_seconds", "job" => "webhook_deliveries").set(lag(backlog.webhooks_due_since));
    metrics::gauge!("tally_webhook_deliveries_pending").set(backlog.webhooks_pending as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_plausible() {
        assert!(acceptable_request_id("3f2a-abc_DEF.1:2"));
        assert!(!acceptable_request_id(""));
        assert!(!acceptable_request_id("has space"));
        assert!(!acceptable_request_id("é"));
        assert!(!acceptable_request_id(&"x".repeat(MAX_REQUEST_ID_CHARS + 1)));
    }

    #[test]
    fn bearer_tokens_are_read_whatever_the_scheme_case() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer s3cret"));
        assert_eq!(bearer(&headers), Some("s3cret"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic s3cret"));
        assert_eq!(bearer(&headers), None);
        assert!(same_secret("s3cret", "s3cret") && !same_secret("s3cret", "s3cre"));
    }
}
