//! The background worker: settles grant starts and expiries when they fall due, so that they
//! reach the ledger at their instant even when nobody touches the account. Each account is
//! settled in its own transaction under the customer's lock, so two servers running this at
//! once settle each due item once (the second finds nothing left to do).

use std::sync::Arc;
use std::time::Duration;
use tally_store::ops::wallet;
use tally_store::repo::wallets;
use tally_store::Store;

/// Accounts settled per pass, so one pass never holds the database for long.
const BATCH: i64 = 500;

pub async fn run(store: Arc<Store>, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let pass_store = store.clone();
        match tokio::task::spawn_blocking(move || settle_due(&pass_store)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "settling due grants failed; will retry"),
            Err(error) => tracing::warn!(%error, "the settlement task failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Settles every account with something due now. Returns how many changed.
pub fn settle_due(store: &Store) -> Result<usize, tally_store::ops::OpError> {
    let now = chrono::Utc::now();
    let due = store.read(|conn| wallets::due(conn, now, BATCH))?;
    let mut settled = 0;
    for (mode, key) in due {
        if store.write(|conn| wallet::settle_account(conn, mode, &key, now))? {
            settled += 1;
        }
    }
    Ok(settled)
}
