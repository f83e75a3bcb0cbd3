//! Failed items of the background jobs, and when each is tried again (see `worker.rs` in the
//! HTTP crate). A job's claim query passes over an item while it waits here
//! ([`not_waiting`]), so one item that keeps failing never blocks the items behind it.

use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashSet;

/// Job names, as stored. Each claim query names its own.
pub const SETTLE_GRANTS: &str = "settle_grants";
pub const RENEW_SUBSCRIPTIONS: &str = "renew_subscriptions";
pub const EXPIRE_TOP_UPS: &str = "expire_top_ups";
pub const EXPIRE_HOLDS: &str = "expire_holds";
pub const AUTO_TOP_UP: &str = "auto_top_up";
pub const AUTO_TOP_UP_SETTLE: &str = "auto_top_up_settle";

/// The wait after the first failure; each further failure in a row doubles it.
pub const FIRST_RETRY_SECONDS: i64 = 30;
/// The longest wait between two attempts.
pub const MAX_RETRY_SECONDS: i64 = 60 * 60;
/// The longest error text kept.
const MAX_ERROR_CHARS: usize = 500;

/// A condition for a claim query: the item whose id is the SQL expression `item` is not
/// waiting to be retried by `job` at the query's `$1` (every claim query's first parameter is
/// its `now`). `job` is one of this module's constants, never client text.
pub fn not_waiting(job: &'static str, item: &str) -> String {
    format!(
        " AND NOT EXISTS (SELECT 1 FROM job_retries r WHERE r.job = '{job}' AND r.item = {item} AND r.retry_at > $1)"
    )
}

/// The wait before attempt `attempts + 1`, after `attempts` failures in a row.
pub fn delay(attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.clamp(1, 32) - 1).unwrap_or(0);
    let seconds = FIRST_RETRY_SECONDS.saturating_mul(2_i64.saturating_pow(doublings)).min(MAX_RETRY_SECONDS);
    Duration::seconds(seconds)
}

/// Counts a failure of `item` at `now` and returns when it may be tried again.
pub fn record_failure(
    conn: &mut dyn Conn,
    job: &str,
    item: &str,
    error: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, StoreError> {
    let before = conn
        .query_optional("SELECT attempts FROM job_retries WHERE job = $1 AND item = $2", params![job, item])?
        .map(|row| row.int(0))
        .transpose()?
        .unwrap_or(0);
    let attempts = before.saturating_add(1);
    let retry_at = now + delay(attempts);
    let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
    conn.execute(
        "INSERT INTO job_retries (job, item, attempts, retry_at, last_error, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (job, item) DO UPDATE SET attempts = excluded.attempts, retry_at = excluded.retry_at,
           last_error = excluded.last_error, updated_at = excluded.updated_at",
        params![job, item, attempts, retry_at, error, now],
    )?;
    Ok(retry_at)
}

/// Forgets the failures of `item`: it succeeded.
pub fn clear(conn: &mut dyn Conn, job: &str, item: &str) -> Result<(), StoreError> {
    conn.execute("DELETE FROM job_retries WHERE job = $1 AND item = $2", params![job, item])?;
    Ok(())
}

/// The items of `job` with failures on record.
pub fn items(conn: &mut dyn Conn, job: &str) -> Result<HashSet<String>, StoreError> {
    conn.query("SELECT item FROM job_retries WHERE job = $1", params![job])?.iter().map(|row| row.text(0)).collect()
}

/// One item's record: attempts, when it is tried again and the last error.
pub fn get(conn: &mut dyn Conn, job: &str, item: &str) -> Result<Option<(i64, DateTime<Utc>, String)>, StoreError> {
    conn.query_optional(
        "SELECT attempts, retry_at, last_error FROM job_retries WHERE job = $1 AND item = $2",
        params![job, item],
    )?
    .map(|row| Ok((row.int(0)?, row.time(1)?, row.text(2)?)))
    .transpose()
}
