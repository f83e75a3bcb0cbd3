//! Webhooks: destinations, the outbox of events, one delivery per event and destination, and
//! every attempt to deliver it.
//!
//! A delivery is `pending` until an attempt gets a 2xx (`delivered`) or its retries run out
//! (`failed`). While pending, `next_attempt_at` says when it may next be claimed; a claim
//! pushes it forward by a lease, so a server that stops mid-send leaves the delivery to be
//! claimed again once the lease runs out.

use crate::conn::{Conn, Value};
use crate::{params, Row, StoreError};
use chrono::{DateTime, Utc};
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub id: String,
    pub url: String,
    pub topics: Vec<String>,
    pub connect: bool,
    pub enabled: bool,
    pub secret: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Destination {
    /// Whether the destination subscribes to `topic` (directly or through `*`).
    pub fn wants(&self, topic: &str) -> bool {
        self.topics.iter().any(|wanted| wanted == "*" || wanted == topic)
    }
}

const DESTINATION_COLUMNS: &str = "id, url, topics, connect, enabled, secret, created_at, updated_at";

fn destination_from_row(row: &Row) -> Result<Destination, StoreError> {
    Ok(Destination {
        id: row.text(0)?,
        url: row.text(1)?,
        topics: serde_json::from_str(&row.text(2)?)
            .map_err(|error| StoreError::Corrupt(format!("webhook topics: {error}")))?,
        connect: row.bool(3)?,
        enabled: row.bool(4)?,
        secret: row.text(5)?,
        created_at: row.time(6)?,
        updated_at: row.time(7)?,
    })
}

fn topics_text(topics: &[String]) -> String {
    serde_json::to_string(topics).unwrap_or_else(|_| "[]".to_owned())
}

pub fn insert_destination(conn: &mut dyn Conn, mode: Mode, destination: &Destination) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO webhook_destinations (id, mode, url, topics, connect, enabled, secret, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        params![
            &destination.id,
            mode.as_str(),
            &destination.url,
            topics_text(&destination.topics),
            destination.connect,
            destination.enabled,
            &destination.secret,
            destination.created_at,
            destination.updated_at
        ],
    )?;
    Ok(())
}

/// A destination that has not been deleted.
pub fn get_destination(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Option<Destination>, StoreError> {
    conn.query_optional(
        &format!(
            "SELECT {DESTINATION_COLUMNS} FROM webhook_destinations WHERE mode = $1 AND id = $2 AND deleted_at IS NULL"
        ),
        params![mode.as_str(), id],
    )?
    .as_ref()
    .map(destination_from_row)
    .transpose()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestinationFilter {
    pub enabled: Option<bool>,
    pub connect: Option<bool>,
}

/// Every destination of the mode that has not been deleted, oldest first.
pub fn list_destinations(
    conn: &mut dyn Conn,
    mode: Mode,
    filter: DestinationFilter,
) -> Result<Vec<Destination>, StoreError> {
    let mut conditions = vec!["mode = $1".to_owned(), "deleted_at IS NULL".to_owned()];
    let mut values: Vec<Value> = vec![mode.as_str().into()];
    for (column, wanted) in [("enabled", filter.enabled), ("connect", filter.connect)] {
        if let Some(wanted) = wanted {
            values.push(wanted.into());
            conditions.push(format!("{column} = ${}", values.len()));
        }
    }
    conn.query(
        &format!(
            "SELECT {DESTINATION_COLUMNS} FROM webhook_destinations WHERE {} ORDER BY created_at, id",
            conditions.join(" AND ")
        ),
        &values,
    )?
    .iter()
    .map(destination_from_row)
    .collect()
}

/// Destinations that have not been deleted, in the mode.
pub fn count_destinations(conn: &mut dyn Conn, mode: Mode) -> Result<i64, StoreError> {
    conn.count(
        "SELECT COUNT(*) FROM webhook_destinations WHERE mode = $1 AND deleted_at IS NULL",
        params![mode.as_str()],
    )
}

pub fn update_destination(conn: &mut dyn Conn, mode: Mode, destination: &Destination) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE webhook_destinations SET url = $3, topics = $4, enabled = $5, updated_at = $6
         WHERE mode = $1 AND id = $2 AND deleted_at IS NULL",
        params![
            mode.as_str(),
            &destination.id,
            &destination.url,
            topics_text(&destination.topics),
            destination.enabled,
            destination.updated_at
        ],
    )?;
    Ok(())
}

/// Deletes a destination: it keeps its row (so that its deliveries still list) but not its
/// secret, and every delivery still pending to it fails now. Returns whether it existed.
pub fn delete_destination(conn: &mut dyn Conn, mode: Mode, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let deleted = conn.execute(
        "UPDATE webhook_destinations SET deleted_at = $3, updated_at = $3, enabled = 0, secret = ''
         WHERE mode = $1 AND id = $2 AND deleted_at IS NULL",
        params![mode.as_str(), id, now],
    )?;
    if deleted == 0 {
        return Ok(false);
    }
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'failed', failed_at = $2, next_attempt_at = NULL,
                last_error = 'the destination was deleted'
         WHERE destination_id = $1 AND status = 'pending'",
        params![id, now],
    )?;
    Ok(true)
}

/// Enabled, undeleted destinations of the mode, for the outbox to match topics against.
pub fn enabled_destinations(conn: &mut dyn Conn, mode: Mode) -> Result<Vec<Destination>, StoreError> {
    list_destinations(conn, mode, DestinationFilter { enabled: Some(true), connect: None })
}

/// One event of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub topic: String,
    pub customer_id: Option<String>,
    /// The connected account the event happened in; `None` for the platform's own.
    pub account_id: Option<String>,
    /// The event's `data`, as JSON text.
    pub data: String,
    pub created_at: DateTime<Utc>,
}

pub fn insert_event(conn: &mut dyn Conn, mode: Mode, event: &Event) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO webhook_events (id, mode, topic, customer_id, data, created_at, account_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        params![
            &event.id,
            mode.as_str(),
            &event.topic,
            event.customer_id.clone(),
            &event.data,
            event.created_at,
            event.account_id.clone()
        ],
    )?;
    Ok(())
}

/// Queues `event` for `destination_id`, due at once.
pub fn insert_delivery(conn: &mut dyn Conn, mode: Mode, event: &Event, destination_id: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO webhook_deliveries (mode, event_id, destination_id, event_created_at, status, attempts, next_attempt_at)
         VALUES ($1, $2, $3, $4, 'pending', 0, $4)",
        params![mode.as_str(), &event.id, destination_id, event.created_at],
    )?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// A delivery claimed for sending, with everything the sender needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    pub sequence: i64,
    /// The number of this attempt, from 1.
    pub attempt: i64,
    pub mode: Mode,
    pub event: Event,
    pub destination_id: String,
    pub url: String,
    pub secret: String,
}

/// Claims up to `limit` deliveries due at `now` and leases them until `lease_until`: each
/// gets its attempt number and is not claimable again before the lease runs out.
///
/// On PostgreSQL the claim locks the delivery rows and passes over rows another server is
/// claiming at the same moment (`FOR UPDATE OF d SKIP LOCKED`); a row another server has
/// just leased no longer matches `next_attempt_at <= now` when re-checked under the lock. So
/// each due delivery goes to one server, and the lease, not a held transaction, covers the
/// network IO that follows.
///
/// A delivery whose destination was deleted after it was queued (an event emitted while the
/// deletion committed) fails here instead of being sent.
pub fn claim_due(
    conn: &mut dyn Conn,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let sql = format!(
        "SELECT d.sequence, d.attempts, d.mode, e.id, e.topic, e.customer_id, e.data, e.created_at, w.id, w.url, w.secret, w.deleted_at, e.account_id
         FROM webhook_deliveries d
         JOIN webhook_events e ON e.id = d.event_id
         JOIN webhook_destinations w ON w.id = d.destination_id
         WHERE d.status = 'pending' AND d.next_attempt_at <= $1
         ORDER BY d.next_attempt_at, d.sequence LIMIT $2{}",
        conn.skip_locked_of("d")
    );
    let rows = conn.query(&sql, params![now, limit])?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let sequence = row.int(0)?;
        let attempt = row.int(1)? + 1;
        if row.opt_time(11)?.is_some() {
            conn.execute(
                "UPDATE webhook_deliveries SET status = 'failed', failed_at = $2, next_attempt_at = NULL,
                        last_error = 'the destination was deleted'
                 WHERE sequence = $1",
                params![sequence, now],
            )?;
            continue;
        }
        conn.execute(
            "UPDATE webhook_deliveries SET attempts = $2, next_attempt_at = $3 WHERE sequence = $1",
            params![sequence, attempt, lease_until],
        )?;
        claimed.push(ClaimedDelivery {
            sequence,
            attempt,
            mode: Mode::parse(&row.text(2)?).ok_or_else(|| StoreError::Corrupt("delivery mode".into()))?,
            event: Event {
                id: row.text(3)?,
                topic: row.text(4)?,
                customer_id: row.opt_text(5)?,
                account_id: row.opt_text(12)?,
                data: row.text(6)?,
                created_at: row.time(7)?,
            },
            destination_id: row.text(8)?,
            url: row.text(9)?,
            secret: row.text(10)?,
        });
    }
    Ok(claimed)
}

/// What one attempt got.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub attempted_at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<i64>,
    /// Why the attempt failed, when it did.
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    RetryAt(DateTime<Utc>),
    Failed,
}

/// Records attempt number `attempt` of a claimed delivery and moves the delivery on.
///
/// A success marks the delivery delivered whatever else happened to it meanwhile: the
/// receiver has the event. A failure reschedules or fails it only while it is still pending
/// at this attempt number, so that the result of an attempt whose lease ran out (and was
/// claimed again elsewhere) cannot undo the newer attempt's schedule.
pub fn record_attempt(
    conn: &mut dyn Conn,
    mode: Mode,
    sequence: i64,
    attempt_number: i64,
    attempt: &Attempt,
    outcome: AttemptOutcome,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO webhook_attempts (delivery_sequence, attempt, mode, attempted_at, status_code, error, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        params![
            sequence,
            attempt_number,
            mode.as_str(),
            attempt.attempted_at,
            attempt.status_code,
            attempt.error.clone(),
            attempt.duration_ms
        ],
    )?;
    let finished_at = attempt.attempted_at + chrono::Duration::milliseconds(attempt.duration_ms);
    match outcome {
        AttemptOutcome::Delivered => conn.execute(
            "UPDATE webhook_deliveries SET status = 'delivered', successful_at = $2, failed_at = NULL,
                    next_attempt_at = NULL, last_status_code = $3, last_error = NULL
             WHERE sequence = $1 AND status <> 'delivered'",
            params![sequence, finished_at, attempt.status_code],
        )?,
        AttemptOutcome::RetryAt(at) => conn.execute(
            "UPDATE webhook_deliveries SET next_attempt_at = $3, last_status_code = $4, last_error = $5
             WHERE sequence = $1 AND attempts = $2 AND status = 'pending'",
            params![sequence, attempt_number, at, attempt.status_code, attempt.error.clone()],
        )?,
        AttemptOutcome::Failed => conn.execute(
            "UPDATE webhook_deliveries SET status = 'failed', failed_at = $3, next_attempt_at = NULL,
                    last_status_code = $4, last_error = $5
             WHERE sequence = $1 AND attempts = $2 AND status = 'pending'",
            params![sequence, attempt_number, finished_at, attempt.status_code, attempt.error.clone()],
        )?,
    };
    Ok(())
}

/// One delivery as `GET /webhooks/events` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryView {
    pub sequence: i64,
    pub event_id: String,
    pub destination_id: String,
    pub topic: String,
    pub time: DateTime<Utc>,
    pub data: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub successful_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryFilter {
    pub destination_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub time_gte: Option<DateTime<Utc>>,
    pub time_lte: Option<DateTime<Utc>>,
}

/// Where a page starts: after (older than) or before (newer than) a delivery's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The newest deliveries.
    First,
    /// Deliveries older than this sequence.
    After(i64),
    /// Deliveries newer than this sequence.
    Before(i64),
}

/// A page of deliveries, newest first, and whether older and newer ones exist beyond it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    pub has_older: bool,
    pub has_newer: bool,
}

const DELIVERY_COLUMNS: &str =
    "d.sequence, d.event_id, d.destination_id, e.topic, d.event_created_at, e.data, d.status,
     d.attempts, d.next_attempt_at, d.successful_at, d.failed_at, d.last_status_code, d.last_error";

fn delivery_from_row(row: &Row) -> Result<DeliveryView, StoreError> {
    Ok(DeliveryView {
        sequence: row.int(0)?,
        event_id: row.text(1)?,
        destination_id: row.text(2)?,
        topic: row.text(3)?,
        time: row.time(4)?,
        data: row.text(5)?,
        status: DeliveryStatus::parse(&row.text(6)?).ok_or_else(|| StoreError::Corrupt("delivery status".into()))?,
        attempts: row.int(7)?,
        next_attempt_at: row.opt_time(8)?,
        successful_at: row.opt_time(9)?,
        failed_at: row.opt_time(10)?,
        last_status_code: row.opt_int(11)?,
        last_error: row.opt_text(12)?,
    })
}

/// Deliveries of the mode, newest first (by the order they were queued), keyset-paged.
pub fn list_deliveries(
    conn: &mut dyn Conn,
    mode: Mode,
    filter: &DeliveryFilter,
    cursor: Cursor,
    limit: i64,
) -> Result<DeliveryPage, StoreError> {
    let mut conditions = vec!["d.mode = $1".to_owned()];
    let mut values: Vec<Value> = vec![mode.as_str().into()];
    let mut add = |condition: &str, value: Value| {
        values.push(value);
        conditions.push(condition.replace('?', &format!("${}", values.len())));
    };
    if let Some(destination_id) = &filter.destination_id {
        add("d.destination_id = ?", destination_id.into());
    }
    if let Some(status) = filter.status {
        add("d.status = ?", status.as_str().into());
    }
    if let Some(at) = filter.time_gte {
        add("d.event_created_at >= ?", at.into());
    }
    if let Some(at) = filter.time_lte {
        add("d.event_created_at <= ?", at.into());
    }
    let base = conditions.join(" AND ");
    let (page_condition, order) = match cursor {
        Cursor::First => (String::new(), "DESC"),
        Cursor::After(sequence) => (format!(" AND d.sequence < {sequence}"), "DESC"),
        Cursor::Before(sequence) => (format!(" AND d.sequence > {sequence}"), "ASC"),
    };
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
         WHERE {base}{page_condition} ORDER BY d.sequence {order} LIMIT {}",
        limit + 1
    );
    let mut items: Vec<DeliveryView> =
        conn.query(&sql, &values)?.iter().map(delivery_from_row).collect::<Result<_, _>>()?;
    let more_in_direction = items.len() as i64 > limit;
    items.truncate(limit as usize);
    if matches!(cursor, Cursor::Before(_)) {
        items.reverse();
    }
    let mut exists = |condition: String| -> Result<bool, StoreError> {
        let sql = format!("SELECT 1 FROM webhook_deliveries d WHERE {base} AND {condition} LIMIT 1");
        Ok(conn.query_optional(&sql, &values)?.is_some())
    };
    let (has_older, has_newer) = match (cursor, items.first(), items.last()) {
        (Cursor::First, _, _) => (more_in_direction, false),
        (Cursor::After(_), Some(first), _) => (more_in_direction, exists(format!("d.sequence > {}", first.sequence))?),
        (Cursor::Before(_), _, Some(last)) => (exists(format!("d.sequence < {}", last.sequence))?, more_in_direction),
        (Cursor::After(sequence), None, _) => (false, exists(format!("d.sequence >= {sequence}"))?),
        (Cursor::Before(sequence), _, None) => (exists(format!("d.sequence <= {sequence}"))?, false),
    };
    Ok(DeliveryPage { items, has_older, has_newer })
}

/// The retention query: up to `$2` webhook events created before `$1` none of whose
/// deliveries is still pending, oldest first (through `webhook_events_by_created`).
pub const PRUNE_CANDIDATES_SQL: &str = "SELECT e.id FROM webhook_events e WHERE e.created_at < $1
     AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id AND d.status = 'pending')
     ORDER BY e.created_at LIMIT $2";

/// Deletes up to `limit` webhook events created before `before` whose deliveries are all over
/// (delivered, or failed for good), with their deliveries and their attempts. Returns how many
/// events it deleted.
pub fn prune(conn: &mut dyn Conn, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
    let ids: Vec<Value> = conn
        .query(PRUNE_CANDIDATES_SQL, params![before, limit])?
        .iter()
        .map(|row| row.text(0).map(Value::from))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Ok(0);
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|index| format!("${index}")).collect();
    let list = placeholders.join(", ");
    conn.execute(
        &format!(
            "DELETE FROM webhook_attempts WHERE delivery_sequence IN
             (SELECT sequence FROM webhook_deliveries WHERE event_id IN ({list}))"
        ),
        &ids,
    )?;
    conn.execute(&format!("DELETE FROM webhook_deliveries WHERE event_id IN ({list})"), &ids)?;
    conn.execute(&format!("DELETE FROM webhook_events WHERE id IN ({list})"), &ids)
}

/// Every attempt of one delivery, in order, for tests and diagnostics.
pub fn attempts(conn: &mut dyn Conn, sequence: i64) -> Result<Vec<Attempt>, StoreError> {
    conn.query(
        "SELECT attempted_at, status_code, error, duration_ms FROM webhook_attempts WHERE delivery_sequence = $1 ORDER BY attempt",
        params![sequence],
    )?
    .iter()
    .map(|row| {
        Ok(Attempt {
            attempted_at: row.time(0)?,
            status_code: row.opt_int(1)?,
            error: row.opt_text(2)?,
            duration_ms: row.int(3)?,
        })
    })
    .collect()
}
