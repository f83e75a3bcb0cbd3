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

use crate::catalog::CatalogCache;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tally_store::ops::{subscriptions, wallet, OpError};
use tally_store::repo::{subscriptions as subscription_repo, wallets};
use tally_store::{Conn, Store};

/// Items claimed per pass, so that one pass never holds a blocking thread for long. When a
/// pass fills its batch the next starts at once instead of after the interval.
const BATCH: usize = 500;

pub async fn run(
    store: Arc<Store>,
    catalog: Arc<CatalogCache>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (pass_store, pass_catalog) = (store.clone(), catalog.clone());
        let pass = move || {
            let now = Utc::now();
            // Each job runs whatever befell the other, so one failing item stalls only its job.
            let jobs = [
                ("renewing due subscriptions", renew_due(&pass_store, pass_catalog.as_ref(), now)),
                ("settling due grants", settle_due(&pass_store, now)),
                ("expiring unpaid top-ups", expire_top_ups(&pass_store, now)),
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
}

/// Runs `job` in one write transaction after another until it finds nothing to claim or has
/// claimed `limit` items. `job` claims one item as the module documentation describes and
/// returns `None` when nothing is due, or `Some(changed)`. The first error ends the pass;
/// the item it failed on stays due and is tried again next pass.
pub fn drain(
    store: &Store,
    limit: usize,
    mut job: impl FnMut(&mut dyn Conn) -> Result<Option<bool>, OpError>,
) -> Result<Pass, OpError> {
    let mut pass = Pass::default();
    while pass.claimed < limit {
        match store.write(&mut job)? {
            None => break,
            Some(changed) => {
                pass.claimed += 1;
                pass.changed += usize::from(changed);
            }
        }
    }
    Ok(pass)
}

/// Settles grant starts and expiries due at `now`, one customer per transaction.
pub fn settle_due(store: &Store, now: DateTime<Utc>) -> Result<Pass, OpError> {
    drain(store, BATCH, |conn| settle_next(conn, now))
}

/// Claims the customer with the most overdue item and settles every account of theirs that
/// is still due.
fn settle_next(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<bool>, OpError> {
    let Some((mode, customer_id)) = wallets::claim_due(conn, now)? else {
        return Ok(None);
    };
    let mut changed = false;
    for account in wallets::list_for_customer(conn, &customer_id)? {
        changed |= wallet::settle_account(conn, mode, &account.key, now)?;
    }
    Ok(Some(changed))
}

/// Runs subscription actions due at `now` (scheduled starts, renewals, entitlement refreshes),
/// one subscription per transaction.
pub fn renew_due(store: &Store, catalog: &CatalogCache, now: DateTime<Utc>) -> Result<Pass, OpError> {
    drain(store, BATCH, |conn| {
        let Some((mode, subscription_id)) = subscription_repo::claim_due(conn, now)? else {
            return Ok(None);
        };
        subscriptions::process_due(conn, mode, &subscription_id, catalog, now).map(Some)
    })
}

/// Expires top-ups whose payment window closed unpaid, releasing their `pending_in`.
pub fn expire_top_ups(store: &Store, now: DateTime<Utc>) -> Result<Pass, OpError> {
    drain(store, BATCH, |conn| tally_store::ops::topups::expire_next(conn, now))
}
