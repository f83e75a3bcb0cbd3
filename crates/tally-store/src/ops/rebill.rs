//! Rebilling: pricing again the events stored unbilled, once the catalog can price them.
//!
//! A rebill looks at one page of unbilled events of a period (oldest first, at most `limit`),
//! and bills each through the code that ingestion bills with ([`Pricer`], [`store_fees`]): the
//! subscriptions active at the event's `occurred_at`, the tier counters of the period holding
//! it, fees recorded at that `occurred_at` and debited now, from the wallet as it stands, with
//! the same ledger entries and webhooks. Where a subscription has since been moved to a newer
//! version of a product, the event is rated on that version: moving the subscription to a
//! version that prices it is how the catalog is fixed, since versions never change.
//!
//! Exactly once: an event is billed while its customer is locked (ingestion takes the same
//! lock), its row read again under that lock and, on PostgreSQL, locked too; its billing
//! status changes in the transaction that writes its fees. A concurrent rebill of the same
//! events waits for the lock and then finds them billed. On SQLite the one writer serialises
//! them.

use super::events::{fee_total, store_fees, BatchWrites, NewEvent, Pricer, RatedFee, Rating};
use super::products::Catalog;
use super::subscriptions::run_due;
use super::{FieldError, OpError};
use crate::conn::Conn;
use crate::repo::customers;
use crate::repo::events::{self, EventCursor, StoredEvent, UnbilledReason, UnbilledScan};
use crate::repo::subscriptions::{self as subscription_repo, ActiveInterval};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use tally_core::Mode;

/// What one rebill call did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RebillReport {
    /// The unbilled events of the page that were still unbilled under their customer's lock.
    pub examined: usize,
    /// The events billed, as stored now, with their fees.
    pub billed: Vec<(StoredEvent, Vec<RatedFee>)>,
    /// The events that stay unbilled, with their (possibly new) reason.
    pub still_unbilled: Vec<StoredEvent>,
    /// The fees billed by asset: how many, and their sum.
    pub totals: BTreeMap<String, (usize, Decimal)>,
    /// Where the next page starts, when there are more unbilled events in the range.
    pub next: Option<EventCursor>,
}

/// Bills, or tries again to bill, up to `limit` unbilled events of `scan`, oldest first.
pub fn rebill(
    conn: &mut dyn Conn,
    mode: Mode,
    scan: &UnbilledScan,
    limit: usize,
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<RebillReport, OpError> {
    if let Some(customer_id) = &scan.customer_id {
        if customers::get(conn, mode, customer_id)?.is_none() {
            return Err(OpError::invalid("customer_id", format!("no customer {customer_id}")));
        }
    }
    let mut page = events::unbilled_in_range(conn, mode, scan, limit as i64 + 1)?;
    let mut report = RebillReport::default();
    if page.len() > limit {
        page.truncate(limit);
        report.next = page.last().map(|(cursor, _)| cursor.clone());
    }
    // Customers in id order, so two rebills lock them in the same order.
    let mut by_customer: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (cursor, customer_id) in page {
        by_customer.entry(customer_id).or_default().push(cursor.id);
    }
    for (customer_id, ids) in &by_customer {
        rebill_customer(conn, mode, customer_id, ids, catalog, now, &mut report)?;
    }
    Ok(report)
}

fn rebill_customer(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    ids: &[String],
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
    report: &mut RebillReport,
) -> Result<(), OpError> {
    customers::get_for_update(conn, mode, customer_id)?.ok_or_else(|| super::customers::not_found(customer_id))?;
    let unbilled = events::lock_unbilled(conn, mode, customer_id, ids)?;
    let Some(earliest) = unbilled.first().map(|event| event.occurred_at) else {
        return Ok(());
    };
    // Runs whatever fell due (a scheduled start, a renewal), so that the history is complete.
    run_due(conn, mode, customer_id, catalog, now)?;
    let history = subscription_repo::history_since(conn, mode, customer_id, earliest)?;
    let history = on_current_versions(conn, customer_id, history)?;
    let mut pricer = Pricer::new(customer_id, history, catalog);
    let mut writes = BatchWrites::default();
    let mut errors = Vec::new();
    for stored in unbilled {
        report.examined += 1;
        let event = NewEvent::from_stored(&stored);
        match pricer.rate(conn, mode, &event)? {
            Rating::Billed(fees) => {
                let (total_fees, fee_currency) = fee_total(&fees);
                let billed = StoredEvent { has_fees: true, total_fees, fee_currency, unbilled: None, ..stored };
                events::set_billing(conn, mode, &billed)?;
                store_fees(conn, mode, customer_id, &event, &fees, &mut writes, now)
                    .map_err(|error| name_the_event(error, &event.id))?;
                for rated in &fees {
                    let total = report.totals.entry(rated.fee.asset.clone()).or_default();
                    total.0 += 1;
                    total.1 += rated.fee.amount;
                }
                report.billed.push((billed, fees));
            }
            Rating::Unbilled(unbilled) => {
                let reason = UnbilledReason { code: unbilled.code.as_str().into(), message: unbilled.message };
                let changed = stored.unbilled.as_ref() != Some(&reason);
                let still = StoredEvent { unbilled: Some(reason), ..stored };
                if changed {
                    events::set_billing(conn, mode, &still)?;
                }
                report.still_unbilled.push(still);
            }
            Rating::Refused(message) => {
                errors.push(FieldError { field: "events".into(), message: format!("event {}: {message}", event.id) })
            }
        }
    }
    if !errors.is_empty() {
        return Err(OpError::Invalid(errors));
    }
    writes.save_accounts(conn, mode, now)?;
    pricer.save_counters(conn)
}

/// The intervals, each on the newer of the version its product was on then and the version
/// its subscription is on now.
fn on_current_versions(
    conn: &mut dyn Conn,
    customer_id: &str,
    mut history: Vec<ActiveInterval>,
) -> Result<Vec<ActiveInterval>, OpError> {
    let pinned: HashMap<(String, String), i64> = subscription_repo::for_customer(conn, customer_id)?
        .into_iter()
        .flat_map(|subscription| {
            subscription.products.into_iter().map(move |pin| ((subscription.id.clone(), pin.product_id), pin.version))
        })
        .collect();
    for interval in &mut history {
        if let Some(version) = pinned.get(&(interval.subscription_id.clone(), interval.product_id.clone())) {
            interval.version = interval.version.max(*version);
        }
    }
    Ok(history)
}

/// A fee the wallet refuses (past the debt's limit) names the event that owes it.
fn name_the_event(error: OpError, event_id: &str) -> OpError {
    match error {
        OpError::Invalid(fields) => OpError::Invalid(
            fields
                .into_iter()
                .map(|field| FieldError {
                    field: "events".into(),
                    message: format!("event {event_id}: its fee {}", field.message),
                })
                .collect(),
        ),
        other => other,
    }
}
