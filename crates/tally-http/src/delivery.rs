//! Webhook delivery: the background job that sends the outbox's events to their destinations,
//! signs them, retries failures and records every attempt (see docs/webhooks.md).
//!
//! It follows the worker's claim pattern (`worker.rs`) with one change, because its work is
//! network IO, which must never run inside a database transaction:
//!
//! 1. **Claim and lease** due deliveries in one short write transaction
//!    (`repo::webhooks::claim_due`, `FOR UPDATE … SKIP LOCKED` on PostgreSQL, so several
//!    servers each take different deliveries). The claim gives each its attempt number and
//!    pushes `next_attempt_at` past the send's timeout: the lease. Commit.
//! 2. **Send**, outside any transaction, with a timeout.
//! 3. **Record** the attempt and the delivery's next state in a new transaction.
//!
//! A server that stops between 1 and 3 loses nothing: the delivery stays pending and is
//! claimed again when its lease runs out. The receiver may then get the event twice, which is
//! why delivery is at least once and receivers deduplicate by event id.

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_core::Mode;
use tally_store::repo::webhooks::{self as webhook_repo, Attempt, AttemptOutcome, ClaimedDelivery};
use tally_store::{Store, StoreError};

/// Sent as `User-Agent` with every delivery.
pub const USER_AGENT: &str = concat!("Tally-Webhooks/", env!("CARGO_PKG_VERSION"));
/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "Credyt-Signature";
/// How much longer than the send's timeout a claim holds a delivery: time to record the result.
const LEASE_MARGIN: Duration = Duration::from_secs(60);
/// The longest error text recorded for an attempt.
const MAX_ERROR_CHARS: usize = 500;

/// How deliveries are sent and retried.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// How often the job looks for due deliveries (a full batch looks again at once).
    pub interval: Duration,
    /// How long one attempt may take, connecting included.
    pub timeout: Duration,
    /// The wait before each retry: the first retry waits up to `retry_delays[0]`, and so on;
    /// each wait is drawn uniformly from zero to its delay (full jitter). Past the end of the
    /// list the last delay repeats.
    pub retry_delays: Vec<Duration>,
    /// A delivery fails for good only once every delay has been used and at least this long
    /// has passed since its event.
    pub retry_for: Duration,
    /// The most sends in flight at once, per server.
    pub batch: usize,
    /// How long webhook events are kept once every delivery of them is over (delivered or
    /// failed); then each pass deletes a batch of them (`webhook_repo::prune`).
    pub retention: Duration,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        let minutes = |count: u64| Duration::from_secs(count * 60);
        WebhookConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            retry_delays: vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                minutes(2),
                minutes(10),
                minutes(30),
                minutes(60),
                minutes(2 * 60),
                minutes(4 * 60),
                minutes(8 * 60),
                minutes(12 * 60),
            ],
            retry_for: minutes(24 * 60),
            batch: 50,
            retention: minutes(30 * 24 * 60),
        }
    }
}

/// What becomes of a delivery whose attempt number `attempt` (from 1) failed at `now`.
/// `random` is uniform in [0, 1): the jitter.
pub fn after_failure(
    config: &WebhookConfig,
    attempt: i64,
    event_created_at: DateTime<Utc>,
    now: DateTime<Utc>,
    random: f64,
) -> AttemptOutcome {
    let retries_used = usize::try_from(attempt.max(1) - 1).unwrap_or(usize::MAX);
    let Some(last) = config.retry_delays.last() else {
        return AttemptOutcome::Failed;
    };
    let window_passed = now - event_created_at >= chrono::Duration::from_std(config.retry_for).unwrap_or_default();
    if retries_used >= config.retry_delays.len() && window_passed {
        return AttemptOutcome::Failed;
    }
    let delay = config.retry_delays.get(retries_used).unwrap_or(last).mul_f64(random.clamp(0.0, 1.0));
    AttemptOutcome::RetryAt(now + chrono::Duration::from_std(delay).unwrap_or_default())
}

/// `HEX(HMAC-SHA256(secret, "{timestamp}.{body}"))`, the secret being the destination's
/// `whsec_…` text as UTF-8 bytes.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `Credyt-Signature` header's value: `t=UNIX_SECONDS,v0=HEX`.
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v0={}", sign(secret, timestamp, body))
}

/// The body sent: `{"id", "type", "created", "live_mode", "data"}`.
pub fn envelope(mode: Mode, event: &webhook_repo::Event) -> Result<Vec<u8>, StoreError> {
    let data: serde_json::Value = serde_json::from_str(&event.data)
        .map_err(|error| StoreError::Corrupt(format!("webhook event {} data: {error}", event.id)))?;
    let body = serde_json::json!({
        "id": event.id,
        "type": event.topic,
        "created": event.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "live_mode": mode.is_live(),
        "data": data,
    });
    let mut body = body;
    // Events of a connected account name it, as Credyt's do for `connect` destinations.
    if let Some(account_id) = &event.account_id {
        body["account_id"] = serde_json::Value::String(account_id.clone());
    }
    Ok(body.to_string().into_bytes())
}

pub fn client(config: &WebhookConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        // A redirect could lead anywhere, past the URL checks: a 3xx is a failed attempt.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
        .expect("the webhook HTTP client builds")
}

/// Runs the delivery job until `stop` turns true; sends already under way finish first.
///
/// At most `batch` sends are in flight at once. Each pass claims as many due deliveries as
/// there are free places and starts them without waiting for earlier ones, so one slow
/// receiver holds up only its own sends.
pub async fn run(
    store: Arc<Store>,
    config: Arc<WebhookConfig>,
    clock: crate::clock::Clock,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = client(&config);
    let mut in_flight = tokio::task::JoinSet::new();
    // Retention runs every tenth pass, or at once again while it finds full batches.
    let mut next_prune = std::time::Instant::now();
    loop {
        while in_flight.try_join_next().is_some() {}
        let free = config.batch.max(1).saturating_sub(in_flight.len());
        let claimed = if free == 0 {
            Vec::new()
        } else {
            claim(&store, &config, clock.now(), free).await.unwrap_or_else(|error| {
                tracing::warn!(%error, "claiming due webhook deliveries failed; will retry");
                Vec::new()
            })
        };
        let filled = free > 0 && claimed.len() == free;
        if std::time::Instant::now() >= next_prune {
            let full = prune(&store, &config, clock.now()).await;
            next_prune = std::time::Instant::now() + if full { Duration::ZERO } else { config.interval * 10 };
        }
        for delivery in claimed {
            let (store, client, config, clock) = (store.clone(), client.clone(), config.clone(), clock.clone());
            in_flight.spawn(async move { deliver(&store, &client, &config, &clock, delivery).await });
        }
        if *stop.borrow() {
            break;
        }
        // Every free place taken means more may be due: look again at once.
        if filled {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = stop.changed() => break,
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// Webhook events deleted per pass by retention: small, so that the write stays short.
const PRUNE_BATCH: i64 = 200;

/// Deletes a batch of webhook events past `config.retention` whose deliveries are all over,
/// with their deliveries and attempts (`webhook_repo::prune`). A failure is logged and tried
/// again later. Returns whether the batch was full (more may be waiting).
async fn prune(store: &Arc<Store>, config: &WebhookConfig, now: DateTime<Utc>) -> bool {
    let Some(before) = chrono::Duration::from_std(config.retention).ok().and_then(|age| now.checked_sub_signed(age))
    else {
        return false;
    };
    let store = store.clone();
    let outcome =
        tokio::task::spawn_blocking(move || store.write(|conn| webhook_repo::prune(conn, before, PRUNE_BATCH))).await;
    match outcome {
        Ok(Ok(0)) => false,
        Ok(Ok(deleted)) => {
            tracing::debug!(deleted, "deleted old webhook events");
            deleted >= PRUNE_BATCH as u64
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "deleting old webhook events failed; will retry");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "the webhook retention task failed; will retry");
            false
        }
    }
}

/// Claims up to `limit` due deliveries and leases them for the send's timeout and a margin.
pub async fn claim(
    store: &Arc<Store>,
    config: &WebhookConfig,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let lease_until = now + chrono::Duration::from_std(config.timeout + LEASE_MARGIN).unwrap_or_default();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.write(|conn| webhook_repo::claim_due(conn, now, lease_until, limit)))
        .await
        .map_err(|error| StoreError::Database(format!("the claim task failed: {error}")))?
}

/// Sends one claimed delivery and records what happened.
async fn deliver(
    store: &Arc<Store>,
    client: &reqwest::Client,
    config: &WebhookConfig,
    clock: &crate::clock::Clock,
    delivery: ClaimedDelivery,
) {
    let attempt = send(client, config, clock.now(), &delivery).await;
    let outcome = if attempt.error.is_none() {
        AttemptOutcome::Delivered
    } else {
        after_failure(config, delivery.attempt, delivery.event.created_at, clock.now(), rand::random::<f64>())
    };
    crate::telemetry::webhook_attempt(&outcome);
    let store = store.clone();
    let (mode, sequence, number) = (delivery.mode, delivery.sequence, delivery.attempt);
    let recorded = tokio::task::spawn_blocking(move || {
        store.write(|conn| webhook_repo::record_attempt(conn, mode, sequence, number, &attempt, outcome))
    })
    .await;
    match recorded {
        Ok(Ok(())) => {}
        // The lease runs out and the delivery is claimed again: at least once, never lost.
        Ok(Err(error)) => tracing::warn!(%error, event = %delivery.event.id, "recording a webhook attempt failed"),
        Err(error) => tracing::warn!(%error, event = %delivery.event.id, "recording a webhook attempt failed"),
    }
}

/// POSTs the signed envelope. An attempt without an error got a 2xx.
async fn send(
    client: &reqwest::Client,
    config: &WebhookConfig,
    attempted_at: DateTime<Utc>,
    delivery: &ClaimedDelivery,
) -> Attempt {
    let started = Instant::now();
    let finish = |status_code: Option<i64>, error: Option<String>| Attempt {
        attempted_at,
        status_code,
        error: error.map(|text| text.chars().take(MAX_ERROR_CHARS).collect()),
        duration_ms: started.elapsed().as_millis().try_into().unwrap_or(i64::MAX),
    };
    let body = match envelope(delivery.mode, &delivery.event) {
        Ok(body) => body,
        Err(error) => return finish(None, Some(error.to_string())),
    };
    let signature = signature_header(&delivery.secret, attempted_at.timestamp(), &body);
    let response = client
        .post(&delivery.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    match response {
        Ok(response) if response.status().is_success() => finish(Some(response.status().as_u16().into()), None),
        Ok(response) => {
            let status = response.status();
            finish(Some(status.as_u16().into()), Some(format!("the receiver answered {status}")))
        }
        Err(error) if error.is_timeout() => {
            finish(None, Some(format!("no answer within {} ms", config.timeout.as_millis())))
        }
        Err(error) => finish(None, Some(describe(&error))),
    }
}

/// An error with its causes, which say what actually went wrong (refused, DNS, TLS).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // Against a value computed independently, with Python's hmac module:
        // hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            sign("whsec_test", 1_700_000_000, b"{}"),
            "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
        assert_eq!(
            signature_header("whsec_test", 1_700_000_000, b"{}"),
            format!("t=1700000000,v0={}", sign("whsec_test", 1_700_000_000, b"{}"))
        );
        assert_ne!(sign("whsec_other", 1_700_000_000, b"{}"), sign("whsec_test", 1_700_000_000, b"{}"));
    }

    #[test]
    fn the_default_schedule_retries_for_at_least_a_day() {
        let config = WebhookConfig::default();
        let created = Utc::now();
        // Even with the smallest jitter every time, nothing fails before 24 hours.
        let mut now = created;
        let mut attempt = 1;
        loop {
            match after_failure(&config, attempt, created, now, 0.0) {
                AttemptOutcome::RetryAt(at) => {
                    // Zero jitter retries at once; let each attempt take a minute to answer.
                    assert_eq!(at, now);
                    now += chrono::Duration::minutes(1);
                    attempt += 1;
                }
                AttemptOutcome::Failed => break,
                AttemptOutcome::Delivered => unreachable!(),
            }
        }
        assert!(now - created >= chrono::Duration::hours(24), "gave up after {}", now - created);
        assert!(attempt > config.retry_delays.len() as i64);
    }

    #[test]
    fn each_wait_is_drawn_below_its_delay() {
        let config = WebhookConfig::default();
        let now = Utc::now();
        for (attempt, delay) in [(1, 5), (2, 30), (3, 120)] {
            let AttemptOutcome::RetryAt(at) = after_failure(&config, attempt, now, now, 0.999) else {
                panic!("attempt {attempt} retries");
            };
            assert!(
                at - now <= chrono::Duration::seconds(delay) && at - now > chrono::Duration::seconds(delay) * 9 / 10
            );
            assert_eq!(after_failure(&config, attempt, now, now, 0.0), AttemptOutcome::RetryAt(now));
        }
        // Past the schedule and the window: failed.
        let late = now + chrono::Duration::hours(25);
        assert_eq!(after_failure(&config, 11, now, late, 0.5), AttemptOutcome::Failed);
        // Past the schedule but inside the window: the last delay repeats.
        assert!(matches!(after_failure(&config, 11, now, now, 0.5), AttemptOutcome::RetryAt(_)));
    }
}
