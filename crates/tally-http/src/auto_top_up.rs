//! The auto top-up job: charges saved payment methods for accounts that fell below their
//! customer's threshold (rules in `tally_store::ops::auto_top_up`).
//!
//! It follows the worker's claim pattern (`worker.rs`), split in two around the payment
//! because network IO never runs inside a database transaction:
//!
//! 1. **Claim and record**, in one write transaction: claim a due account (its customer row,
//!    `SKIP LOCKED` on PostgreSQL), re-check it under the lock, make the top-up (its asset
//!    amount waits in `pending_in`) and mark it the account's one in-flight attempt. Commit.
//! 2. **Charge** the saved payment method off-session, outside any transaction.
//! 3. **Record** the outcome in a new transaction: credit the wallet, or fail the top-up and
//!    back off.
//!
//! A server that stops between 1 and 3 leaves the attempt in flight: nothing starts another
//! for that account until the top-up ends (a provider notification, or its expiry, which the
//! same job then counts as a failure). Each pass also frees accounts whose in-flight top-up was
//! settled elsewhere, and now and then deletes long-expired billing-portal links and sessions.

use crate::payments::{ChargeOutcome, OffSessionCharge, Providers};
use crate::worker::{drain, Attempt, Pass, Retries};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_store::ops::auto_top_up::{self as auto_ops, ChargeResult, ClaimedAccount, PlannedCharge, Step};
use tally_store::ops::{portal as portal_ops, OpError};
use tally_store::repo::job_retries;
use tally_store::Store;

/// Accounts charged per pass at most: one pass never holds the job for long.
const BATCH: usize = 50;
/// The longest a payment provider may take to answer an off-session charge.
const CHARGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often expired portal links and sessions are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(60 * 60);

/// The time a pass works at. A pass can wait long for the database (behind other writers, for
/// a connection) while the accounts it will claim keep changing, so each step reads the time
/// afresh, inside its transaction once it holds its claim: an account is never topped up, and
/// no failure dated, at an instant older than the balance the pass acted on (a rate that came
/// into force meanwhile would otherwise seem missing and the attempt fail). The server's
/// passes read its clock; [`PassTime::at`] fixes the instant of every step (tests).
#[derive(Clone)]
pub struct PassTime(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl PassTime {
    /// Every step at `at`.
    pub fn at(at: DateTime<Utc>) -> PassTime {
        PassTime(Arc::new(move || at))
    }

    /// Each step at what `now` answers when the step reads the time.
    pub fn reading(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> PassTime {
        PassTime(Arc::new(now))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl From<DateTime<Utc>> for PassTime {
    fn from(at: DateTime<Utc>) -> PassTime {
        PassTime::at(at)
    }
}

impl From<crate::clock::Clock> for PassTime {
    fn from(clock: crate::clock::Clock) -> PassTime {
        PassTime::reading(move || clock.now())
    }
}

/// Runs the job every `interval` until `stop` turns true.
pub async fn run(
    store: Arc<Store>,
    providers: Providers,
    clock: crate::clock::Clock,
    top_up_expiry: Duration,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_purge: Option<Instant> = None;
    loop {
        if let Err(error) = run_due(&store, &providers, top_up_expiry, clock.clone()).await {
            tracing::warn!(%error, "auto top-up failed; will retry");
        }
        if last_purge.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
            last_purge = Some(Instant::now());
            let now = clock.now();
            let purge_store = store.clone();
            let purged =
                tokio::task::spawn_blocking(move || purge_store.write(|conn| portal_ops::purge_expired(conn, now)));
            match purged.await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "deleting expired portal links failed; will retry"),
                Err(error) => tracing::warn!(%error, "deleting expired portal links failed; will retry"),
            }
        }
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One pass at `time` (see [`PassTime`]): frees accounts whose in-flight top-up ended, then
/// starts, charges and records the top-ups of accounts that are due. An account whose step
/// fails with an error waits to be retried (`worker::Retries`) and the pass goes on with the
/// others.
pub async fn run_due(
    store: &Arc<Store>,
    providers: &Providers,
    top_up_expiry: Duration,
    time: impl Into<PassTime>,
) -> Result<Pass, OpError> {
    let time = time.into();
    let top_up_expiry = chrono::Duration::from_std(top_up_expiry).unwrap_or(chrono::Duration::hours(24));
    let (settle_store, settle_time) = (store.clone(), time.clone());
    let mut pass = blocking(move || {
        drain(
            &settle_store,
            job_retries::AUTO_TOP_UP_SETTLE,
            BATCH,
            settle_time.now(),
            |conn| auto_ops::claim_settled(conn, settle_time.now()),
            |conn, ClaimedAccount(mode, key)| auto_ops::settle(conn, *mode, key, settle_time.now()),
        )
    })
    .await?;
    let (load_store, load_time) = (store.clone(), time.clone());
    let mut retries = blocking(move || Retries::load(&load_store, job_retries::AUTO_TOP_UP, load_time.now())).await?;
    while pass.claimed < 2 * BATCH {
        let names = providers.clone();
        let (claim_store, claim_time) = (store.clone(), time.clone());
        let (step, returned) = blocking(move || {
            let provider_for = |mode| names.for_mode(mode).map(|provider| provider.name());
            let step = retries.attempt(
                &claim_store,
                &mut |conn| auto_ops::claim_due(conn, claim_time.now()),
                &mut |conn, ClaimedAccount(mode, key)| {
                    // Read under the claim: no earlier than the balance that made the account due.
                    let now = claim_time.now();
                    auto_ops::start(conn, *mode, key, now, now + top_up_expiry, &provider_for)
                },
            );
            Ok((step, retries))
        })
        .await?;
        retries = returned;
        let charge = match step? {
            Attempt::Nothing => break,
            // A claim the re-check turned down means something stays due that this job does
            // not clear: stop rather than claim it again and again.
            Attempt::Done(Step::Nothing) => break,
            Attempt::Failed => {
                pass.claimed += 1;
                pass.failed += 1;
                continue;
            }
            Attempt::Done(Step::Failed) => {
                crate::telemetry::auto_top_up_not_started();
                pass.claimed += 1;
                pass.changed += 1;
                continue;
            }
            Attempt::Done(Step::Charge(charge)) => charge,
        };
        pass.claimed += 1;
        pass.changed += 1;
        let result = charge_now(providers, &charge).await;
        crate::telemetry::auto_top_up_charged(&result);
        if let ChargeResult::Unknown { reason } = &result {
            tracing::warn!(top_up = %charge.top_up_id, %reason, "an auto top-up's payment has an unknown outcome; waiting for the provider");
        }
        let (record_store, record_time) = (store.clone(), time.clone());
        let top_up_id = charge.top_up_id.clone();
        let recorded = blocking(move || {
            record_store.write(|conn| auto_ops::record_outcome(conn, &charge, &result, record_time.now()))
        })
        .await;
        // The account stays in flight: the top-up's own end (a provider notification, or its
        // expiry) frees it later. The other accounts go on.
        if let Err(error) = recorded {
            tracing::warn!(top_up = %top_up_id, %error, "recording an auto top-up's payment failed; its top-up settles it later");
        }
    }
    Ok(pass)
}

/// Charges the saved payment method, outside any transaction.
async fn charge_now(providers: &Providers, charge: &PlannedCharge) -> ChargeResult {
    let Some(provider) = providers.for_mode(charge.mode) else {
        return ChargeResult::Declined { reason: format!("{} payments are not configured", charge.mode.as_str()) };
    };
    let request = OffSessionCharge {
        top_up_id: charge.top_up_id.clone(),
        amount: charge.amount,
        currency: charge.currency.clone(),
        payment_method: charge.payment_method.clone(),
        provider_customer: charge.provider_customer.clone(),
        description: charge.description.clone(),
    };
    match tokio::time::timeout(CHARGE_TIMEOUT, provider.charge_off_session(&request)).await {
        Ok(Ok(ChargeOutcome::Succeeded { reference })) => ChargeResult::Succeeded { reference },
        Ok(Ok(ChargeOutcome::Processing { reference })) => ChargeResult::Processing { reference },
        Ok(Ok(ChargeOutcome::Declined { reason })) => ChargeResult::Declined { reason },
        // A refusal is definite (the provider made no payment); unreachable is not.
        Ok(Err(crate::payments::PaymentError::Refused(reason))) => ChargeResult::Declined { reason },
        Ok(Err(crate::payments::PaymentError::Unavailable(reason))) => ChargeResult::Unknown { reason },
        Err(_) => ChargeResult::Unknown { reason: "the payment provider did not answer in time".into() },
    }
}

async fn blocking<R: Send + 'static>(work: impl FnOnce() -> Result<R, OpError> + Send + 'static) -> Result<R, OpError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => Err(OpError::Store(tally_store::StoreError::Database(format!("a storage task failed: {error}")))),
    }
}
