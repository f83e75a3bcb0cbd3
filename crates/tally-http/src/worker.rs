//! The background worker. Every server runs it. It settles grant starts and expiries when
//! they fall due, so that they reach the ledger at their own instant even when nobody touches
//! the account, and runs due subscription actions (scheduled starts, renewals, entitlement
//! refreshes). Later jobs (auto top-up) are written the same way. Webhook delivery
//! (`delivery.rs`) runs beside this worker as its own task: its work is network IO, which must
//! not run inside the claiming transaction, so it claims with a lease instead (see there).
//!
//! # Each due item once, however many servers run
//!
//! A job is a function that, inside one write transaction, claims one due item and does it:
//!
//! 1. **Claim.** Select the item's lock root among the due items (the row that every other
//!    change to the item locks first: for wallet work, the customer) with
//!    `conn.skip_locked()` or `conn.skip_locked_of(table)`. On PostgreSQL that locks the row
//!    and passes over rows other transactions hold, so servers draining at once claim
//!    different items and none waits behind another server or a request.
//! 2. **Re-check, then work.** Under READ COMMITTED a claim can land on an item another
//!    server finished a moment ago, so check it is still due, then write its effect and
//!    move its due time in the same transaction.
//! 3. **Commit**, which releases the claim. A crash before that rolls back and releases it
//!    too: no lease to expire, nothing lost, nothing done twice.
//!
//! [`drain`] runs such a job one transaction after another until nothing is claimable or the
//! batch is full. On SQLite one write transaction runs at a time, so a claim is exclusive
//! without row locks. Correctness never rests on the claim alone: the work itself takes the
//! same locks and idempotency checks as a request would; the claim only keeps servers from
//! queueing up to do the same work.
//!
//! # One failing item never blocks the others
//!
//! Claims take the most overdue item first, so an item whose work fails every time (stored
//! data Tally cannot read, a product version that no longer parses) would be claimed first
//! again and again and hold up everything due after it. So a failed item is rolled back,
//! logged, and recorded in `job_retries` with a time to try again, backing off from 30 s to an
//! hour; each job's claim query passes over items waiting there, and the pass goes on with
//! the next item ([`Retries`]). A panic counts as a failure of its item.

use crate::catalog::CatalogCache;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;
use tally_core::Mode;
use tally_store::ops::{holds, subscriptions, topups, wallet, OpError};
use tally_store::repo::topups::{self as topup_repo, TopUpStatus};
use tally_store::repo::{job_retries, subscriptions as subscription_repo, wallets};
use tally_store::{Conn, Store};

/// Items claimed per pass, so that one pass never holds a blocking thread for long. When a
/// pass fills its batch the next starts at once instead of after the interval.
const BATCH: usize = 500;

pub async fn run(
    store: Arc<Store>,
    catalog: Arc<CatalogCache>,
    clock: crate::clock::Clock,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (pass_store, pass_catalog) = (store.clone(), catalog.clone());
        let now = clock.now();
        let pass = move || {
            // Each job runs whatever befell the other, so one failing item stalls only its job.
            let jobs = [
                ("renewing due subscriptions", renew_due(&pass_store, pass_catalog.as_ref(), now)),
                ("settling due grants", settle_due(&pass_store, now)),
                ("expiring unpaid top-ups", expire_top_ups(&pass_store, now)),
                ("expiring holds", expire_holds(&pass_store, now)),
            ];
            let mut more = false;
            for (job, outcome) in jobs {
                match outcome {
                    // A full batch of real work means more may be waiting. A batch of claims
                    // that changed nothing means something stays due that the job does not
                    // clear: wait for the interval rather than spin.
                    Ok(pass) => more |= pass.claimed >= BATCH && pass.changed == pass.claimed,
                    Err(error) => tracing::warn!(%error, "{job} failed; will retry"),
                }
            }
            more
        };
        let more = match tokio::task::spawn_blocking(pass).await {
            Ok(more) => more,
            Err(error) => {
                tracing::warn!(%error, "the background task failed; will retry");
                false
            }
        };
        if *stop.borrow() {
            return;
        }
        if more {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// What one pass of a job did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Items claimed, one transaction each.
    pub claimed: usize,
    /// Claimed items on which the work changed something (the rest were already done).
    pub changed: usize,
    /// Claimed items whose work failed: each waits to be retried (see [`Retries`]).
    pub failed: usize,
}

/// A job's failed items, by the id its claim returns. A failed item is recorded in
/// `job_retries` with the time it may be tried again (30 s after the first failure, doubling
/// up to an hour); the job's claim query passes over it until then, so the pass goes on with
/// the other items. Its next success forgets its failures.
pub struct Retries {
    job: &'static str,
    now: DateTime<Utc>,
    /// Items with failures on record, so that a success clears only what exists.
    recorded: HashSet<String>,
}

/// Claims one due item of a job, in the transaction that will work on it.
pub type Claim<'a, Item> = dyn FnMut(&mut dyn Conn) -> Result<Option<Item>, OpError> + 'a;
/// Works on a claimed item.
pub type Work<'a, Item, R> = dyn FnMut(&mut dyn Conn, &Item) -> Result<R, OpError> + 'a;

/// What one attempt at one item came to.
pub enum Attempt<R> {
    /// Nothing to claim.
    Nothing,
    Done(R),
    /// The work failed; the item waits to be retried.
    Failed,
}

impl Retries {
    /// The failed items of `job`, for a pass at `now`.
    pub fn load(store: &Store, job: &'static str, now: DateTime<Utc>) -> Result<Retries, OpError> {
        let recorded = store.read(|conn| Ok::<_, OpError>(job_retries::items(conn, job)?))?;
        Ok(Retries { job, now, recorded })
    }

    /// Claims one item and works on it in one write transaction. A failing (or panicking)
    /// work is rolled back, logged, and its item recorded to wait; only a failure with no
    /// item to blame (the claim itself, or recording the failure) is returned as an error.
    pub fn attempt<Item: ToString, R>(
        &mut self,
        store: &Store,
        claim: &mut Claim<'_, Item>,
        work: &mut Work<'_, Item, R>,
    ) -> Result<Attempt<R>, OpError> {
        let mut claimed: Option<String> = None;
        let recorded = &self.recorded;
        let job = self.job;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            store.write(|conn| {
                let Some(item) = claim(conn)? else {
                    return Ok(None);
                };
                let key = item.to_string();
                claimed = Some(key.clone());
                let result = work(conn, &item)?;
                if recorded.contains(&key) {
                    job_retries::clear(conn, job, &key)?;
                }
                Ok::<_, OpError>(Some(result))
            })
        }));
        let error = match outcome {
            Ok(Ok(None)) => return Ok(Attempt::Nothing),
            Ok(Ok(Some(result))) => {
                if let Some(key) = claimed {
                    self.recorded.remove(&key);
                }
                return Ok(Attempt::Done(result));
            }
            Ok(Err(error)) => error.to_string(),
            Err(panic) => panic_message(panic.as_ref()),
        };
        let Some(item) = claimed else {
            return Err(OpError::Store(tally_store::StoreError::Database(format!("claiming work failed: {error}"))));
        };
        let retry_at = store
            .write(|conn| Ok::<_, OpError>(job_retries::record_failure(conn, self.job, &item, &error, self.now)?))?;
        tracing::warn!(job = self.job, %item, %error, %retry_at, "a background item failed; it is retried later and the others go on");
        self.recorded.insert(item);
        Ok(Attempt::Failed)
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("panicked: {text}")
}

/// Runs `job` one write transaction per item until its claim finds nothing or `limit` items
/// were claimed. `claim` picks one due item as the module documentation describes (its query
/// passing over items waiting in `job_retries` for this job), and `work` does it, returning
/// whether it changed anything. An item whose work fails waits to be retried ([`Retries`]) and
/// the pass goes on with the next: one failing item never blocks the others.
pub fn drain<Item: ToString>(
    store: &Store,
    job: &'static str,
    limit: usize,
    now: DateTime<Utc>,
    mut claim: impl FnMut(&mut dyn Conn) -> Result<Option<Item>, OpError>,
    mut work: impl FnMut(&mut dyn Conn, &Item) -> Result<bool, OpError>,
) -> Result<Pass, OpError> {
    let mut retries = Retries::load(store, job, now)?;
    let mut pass = Pass::default();
    while pass.claimed < limit {
        match retries.attempt(store, &mut claim, &mut work)? {
            Attempt::Nothing => break,
            Attempt::Done(changed) => {
                pass.claimed += 1;
                pass.changed += usize::from(changed);
            }
            Attempt::Failed => {
                pass.claimed += 1;
                pass.failed += 1;
            }
        }
    }
    Ok(pass)
}

/// A claimed item: its mode and id.
pub struct Claimed(pub Mode, pub String);

impl fmt::Display for Claimed {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.1)
    }
}

fn claimed(found: Option<(Mode, String)>) -> Option<Claimed> {
    found.map(|(mode, id)| Claimed(mode, id))
}

/// Settles grant starts and expiries due at `now`, one customer per transaction: the customer
/// with the most overdue item is claimed and every account of theirs still due is settled.
pub fn settle_due(store: &Store, now: DateTime<Utc>) -> Result<Pass, OpError> {
    drain(
        store,
        job_retries::SETTLE_GRANTS,
        BATCH,
        now,
        |conn| Ok(claimed(wallets::claim_due(conn, now)?)),
        |conn, Claimed(mode, customer_id)| {
            let mut changed = false;
            for account in wallets::list_for_customer(conn, customer_id)? {
                changed |= wallet::settle_account(conn, *mode, &account.key, now)?;
            }
            Ok(changed)
        },
    )
}

/// Runs subscription actions due at `now` (scheduled starts, renewals, entitlement refreshes),
/// one subscription per transaction.
pub fn renew_due(store: &Store, catalog: &CatalogCache, now: DateTime<Utc>) -> Result<Pass, OpError> {
    drain(
        store,
        job_retries::RENEW_SUBSCRIPTIONS,
        BATCH,
        now,
        |conn| Ok(claimed(subscription_repo::claim_due(conn, now)?)),
        |conn, Claimed(mode, subscription_id)| subscriptions::process_due(conn, *mode, subscription_id, catalog, now),
    )
}

/// Expires top-ups whose payment window closed unpaid, releasing their `pending_in`.
pub fn expire_top_ups(store: &Store, now: DateTime<Utc>) -> Result<Pass, OpError> {
    drain(
        store,
        job_retries::EXPIRE_TOP_UPS,
        BATCH,
        now,
        |conn| Ok(claimed(topup_repo::claim_expired(conn, now)?)),
        |conn, Claimed(mode, id)| {
            let top_up = topups::expire_if_window_closed(conn, *mode, id, now)?;
            Ok(top_up.status == TopUpStatus::Expired && top_up.completed_at == Some(now))
        },
    )
}

/// Releases what open holds still hold once their `expires_at` passed, one customer per
/// transaction: the customer with the most overdue hold is claimed and each of their holds
/// then due is expired (`hold.expired`).
pub fn expire_holds(store: &Store, now: DateTime<Utc>) -> Result<Pass, OpError> {
    drain(
        store,
        job_retries::EXPIRE_HOLDS,
        BATCH,
        now,
        |conn| Ok(claimed(tally_store::repo::holds::claim_expired(conn, now)?)),
        |conn, Claimed(mode, customer_id)| holds::expire_due(conn, *mode, customer_id, now),
    )
}
