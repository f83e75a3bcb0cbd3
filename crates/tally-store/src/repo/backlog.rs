//! How much background work waits, for metrics: read at scrape time, never on a request's path.
//! Each query reads one index (`wallet_accounts_due`, `subscriptions_due`,
//! `webhook_deliveries_due`).

use crate::conn::Conn;
use crate::StoreError;
use chrono::{DateTime, Utc};

/// The oldest due time of each job's items (`None`: nothing scheduled), and the webhook queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// The earliest grant start or expiry not yet settled (the worker's `settle_due`).
    pub grants_due_since: Option<DateTime<Utc>>,
    /// The earliest subscription action (start, renewal, retry) not yet run.
    pub subscriptions_due_since: Option<DateTime<Utc>>,
    /// The earliest next attempt of a pending webhook delivery (a leased delivery counts
    /// from the end of its lease).
    pub webhooks_due_since: Option<DateTime<Utc>>,
    /// Webhook deliveries still pending: due, leased, or waiting for a retry.
    pub webhooks_pending: i64,
}

pub fn read(conn: &mut dyn Conn) -> Result<Backlog, StoreError> {
    let grants = conn.query_one("SELECT MIN(next_due_at) FROM wallet_accounts", &[])?.opt_time(0)?;
    let subscriptions = conn.query_one("SELECT MIN(next_action_at) FROM subscriptions", &[])?.opt_time(0)?;
    let webhooks =
        conn.query_one("SELECT COUNT(*), MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'", &[])?;
    Ok(Backlog {
        grants_due_since: grants,
        subscriptions_due_since: subscriptions,
        webhooks_due_since: webhooks.opt_time(1)?,
        webhooks_pending: webhooks.int(0)?,
    })
}
