//! Usage events, their fees and costs, and the per-price usage counters that tiering reads.

use super::{Filter, Keys, Listing, Window};
use crate::conn::{Conn, Dialect, Value};
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;
use tally_core::pricing::Usage;
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: String,
    pub customer_id: String,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub subject: Option<String>,
    pub description: Option<String>,
    /// The event's `data`, as JSON text.
    pub data: String,
    /// The event's `costs`, as JSON text.
    pub costs: String,
    pub has_fees: bool,
    /// The sum of the fees in `fee_currency`, when they are all in one asset.
    pub total_fees: Option<Decimal>,
    pub fee_currency: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The hash of the event's content (`ops::events::content_hash`); empty for events stored
    /// before it was recorded.
    pub content_hash: String,
    /// Why the event owes no fee (`None` when it is billed, that is when it has fees).
    pub unbilled: Option<UnbilledReason>,
}

/// Why a stored event was not billed: a stable code (`ops::events::UnbilledCode`) and words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnbilledReason {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredFee {
    pub id: String,
    pub event_id: String,
    pub customer_id: String,
    pub line: i64,
    pub product_id: String,
    pub product_code: String,
    pub product_version: i64,
    pub price_id: String,
    pub price_name: String,
    pub asset: String,
    pub account_name: String,
    /// How the fee was computed (dimensions, usage type, volume, prices), as JSON text.
    pub detail: String,
    pub amount: Decimal,
    pub occurred_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// The events among `ids` already stored in this mode (of any customer), by id.
pub fn existing(conn: &mut dyn Conn, mode: Mode, ids: &[&str]) -> Result<HashMap<String, StoredEvent>, StoreError> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(500) {
        let rows = if let [id] = chunk {
            // One id is the whole key: every plan of it, kept or not, reads one index entry.
            conn.query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM usage_events e JOIN customers c ON c.id = e.customer_id
                     WHERE e.mode = $1 AND e.id = $2"
                ),
                params![mode.as_str(), *id],
            )?
        } else {
            events_by_ids(conn, mode, chunk, EVENT_COLUMNS, "JOIN customers c ON c.id = e.customer_id")?
        };
        for row in rows {
            let (event, _) = event_from_row(&row)?;
            found.insert(event.id.clone(), event);
        }
    }
    Ok(found)
}

/// `columns` of the events among `ids` in `mode` (`usage_events e`, and the tables `joins`
/// adds), each id read by its key. Planned for its ids every time (see
/// `Conn::query_planned_for_values`): it runs for every batch, on a table that only grows.
pub(crate) fn events_by_ids(
    conn: &mut dyn Conn,
    mode: Mode,
    ids: &[impl AsRef<str>],
    columns: &str,
    joins: &str,
) -> Result<Vec<crate::Row>, StoreError> {
    let mut values: Vec<Value> = vec![mode.as_str().into()];
    values.extend(ids.iter().map(|id| Value::from(id.as_ref())));
    conn.query_planned_for_values(&events_by_ids_sql(conn.dialect(), ids.len(), columns, joins), &values)
}

/// The SQL of [`events_by_ids`] for `count` ids (`$2`…) in a mode (`$1`).
///
/// Written `e.mode = $1 AND e.id IN (…)`, a database may read every event of the mode instead
/// and filter them by id, because it guesses that `mode = ?` matches few rows: SQLite, which
/// plans without statistics, when an index of the mode covers the columns (2.4 s a portal
/// page at 11 million events); PostgreSQL from its statistics when they lack the mode (a table
/// never analysed, as in the first minute of a new database, or `live` events after many
/// `test` ones), which read 16,000-22,000 rows a batch in `tally bench` and took half of
/// PostgreSQL's time. So the ids are a table (`VALUES`) that leads the join: on SQLite by a
/// `CROSS JOIN`, which it never reorders (joined plainly, it read the ids as the inner table of
/// a scan of the mode's events); on PostgreSQL, which could still hash that join over a read of
/// the mode, each id is looked up in a subquery of its own (`LATERAL`, kept apart by its
/// `LIMIT`). Either way the only sensible plan left reads each id by the key's index.
fn events_by_ids_sql(dialect: Dialect, count: usize, columns: &str, joins: &str) -> String {
    let ids: Vec<String> = (0..count).map(|index| format!("(${})", index + 2)).collect();
    let ids = ids.join(", ");
    match dialect {
        Dialect::Sqlite => format!(
            "SELECT {columns} FROM (VALUES {ids}) AS wanted CROSS JOIN usage_events e {joins}
             WHERE e.mode = $1 AND e.id = wanted.column1"
        ),
        Dialect::Postgres => format!(
            "SELECT found.* FROM (VALUES {ids}) AS wanted
             CROSS JOIN LATERAL (SELECT {columns} FROM usage_events e {joins}
                                 WHERE e.mode = $1 AND e.id = wanted.column1 LIMIT 1) AS found"
        ),
    }
}

/// Inserts events with multi-row `INSERT`s, in the order given.
pub fn insert_many(conn: &mut dyn Conn, mode: Mode, events: &[StoredEvent]) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(events.len() * 16);
    for event in events {
        values.extend_from_slice(params![
            mode.as_str(),
            &event.id,
            &event.customer_id,
            &event.event_type,
            event.occurred_at,
            event.subject.clone(),
            event.description.clone(),
            &event.data,
            &event.costs,
            event.has_fees,
            event.total_fees,
            event.fee_currency.clone(),
            event.created_at,
            &event.content_hash,
            event.unbilled.as_ref().map(|reason| reason.code.clone()),
            event.unbilled.as_ref().map(|reason| reason.message.clone())
        ]);
    }
    super::insert_rows(
        conn,
        "INSERT INTO usage_events (mode, id, customer_id, event_type, occurred_at, subject, description, data, costs, has_fees,
                                   total_fees, fee_currency, created_at, content_hash, unbilled_reason, unbilled_message)",
        16,
        &values,
        "",
    )?;
    Ok(())
}

/// Inserts fees with multi-row `INSERT`s.
pub fn insert_fees(conn: &mut dyn Conn, mode: Mode, fees: &[StoredFee]) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(fees.len() * 16);
    for fee in fees {
        values.extend_from_slice(params![
            &fee.id,
            mode.as_str(),
            &fee.event_id,
            &fee.customer_id,
            fee.line,
            &fee.product_id,
            &fee.product_code,
            fee.product_version,
            &fee.price_id,
            &fee.price_name,
            &fee.asset,
            &fee.account_name,
            &fee.detail,
            fee.amount,
            fee.occurred_at,
            fee.created_at
        ]);
    }
    super::insert_rows(
        conn,
        "INSERT INTO event_fees (id, mode, event_id, customer_id, line, product_id, product_code, product_version, price_id,
                                 price_name, asset, account_name, detail, amount, occurred_at, created_at)",
        16,
        &values,
        "",
    )?;
    Ok(())
}

pub(crate) const EVENT_COLUMNS: &str =
    "e.id, e.customer_id, e.event_type, e.occurred_at, e.subject, e.description, e.data, e.costs, e.has_fees, \
                             e.total_fees, e.fee_currency, e.created_at, c.external_id, e.content_hash, \
                             e.unbilled_reason, e.unbilled_message";

pub(crate) fn event_from_row(row: &crate::Row) -> Result<(StoredEvent, Option<String>), StoreError> {
    Ok((
        StoredEvent {
            id: row.text(0)?,
            customer_id: row.text(1)?,
            event_type: row.text(2)?,
            occurred_at: row.time(3)?,
            subject: row.opt_text(4)?,
            description: row.opt_text(5)?,
            data: row.text(6)?,
            costs: row.text(7)?,
            has_fees: row.bool(8)?,
            total_fees: row.opt_decimal(9)?,
            fee_currency: row.opt_text(10)?,
            created_at: row.time(11)?,
            content_hash: row.text(13)?,
            unbilled: match row.opt_text(14)? {
                Some(code) => Some(UnbilledReason { code, message: row.opt_text(15)?.unwrap_or_default() }),
                None => None,
            },
        },
        row.opt_text(12)?,
    ))
}

/// An event with its customer's external id.
pub fn get(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Option<(StoredEvent, Option<String>)>, StoreError> {
    conn.query_optional(
        &format!("SELECT {EVENT_COLUMNS} FROM usage_events e JOIN customers c ON c.id = e.customer_id WHERE e.mode = $1 AND e.id = $2"),
        params![mode.as_str(), id],
    )?
    .as_ref()
    .map(event_from_row)
    .transpose()
}

pub fn fees(conn: &mut dyn Conn, mode: Mode, event_id: &str) -> Result<Vec<StoredFee>, StoreError> {
    conn.query(
        "SELECT id, event_id, customer_id, line, product_id, product_code, product_version, price_id, price_name, asset,
                account_name, detail, amount, occurred_at, created_at
         FROM event_fees WHERE mode = $1 AND event_id = $2 ORDER BY line",
        params![mode.as_str(), event_id],
    )?
    .iter()
    .map(|row| {
        Ok(StoredFee {
            id: row.text(0)?,
            event_id: row.text(1)?,
            customer_id: row.text(2)?,
            line: row.int(3)?,
            product_id: row.text(4)?,
            product_code: row.text(5)?,
            product_version: row.int(6)?,
            price_id: row.text(7)?,
            price_name: row.text(8)?,
            asset: row.text(9)?,
            account_name: row.text(10)?,
            detail: row.text(11)?,
            amount: row.decimal(12)?,
            occurred_at: row.time(13)?,
            created_at: row.time(14)?,
        })
    })
    .collect()
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub event_id: Option<String>,
    pub customer_id: Option<String>,
    pub customer_external_id: Option<String>,
    pub subject: Option<String>,
    /// Inclusive lower bound on `occurred_at`.
    pub period_from: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `occurred_at`.
    pub period_to: Option<DateTime<Utc>>,
    pub event_types: Vec<String>,
    pub has_fees: Option<bool>,
    /// `Some(true)` for billed events only, `Some(false)` for unbilled ones only.
    pub billed: Option<bool>,
    /// Unbilled events with this reason code only.
    pub unbilled_reason: Option<String>,
}

/// An event and its customer's external id.
pub type EventWithCustomer = (StoredEvent, Option<String>);

/// The order of `GET /events`: newest first, by `occurred_at`, then id.
pub const LIST_KEYS: Keys = Keys { tag: "events", columns: &["e.occurred_at", "e.id"], kinds: "it", descending: true };

/// Which filter of [`list`] leads its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    EventId,
    Customer,
    Subject,
    EventType,
    Fees,
    None,
}

/// Events newest first (by `occurred_at`, then id).
pub fn list(
    conn: &mut dyn Conn,
    mode: Mode,
    filter: &EventFilter,
    window: &Window,
) -> Result<Listing<EventWithCustomer>, StoreError> {
    let mut query = Filter::new("e.mode = ?", mode.as_str());
    // The narrowest filter given leads: its index is read and the other conditions are checked
    // on its rows. SQLite plans without statistics (nothing runs ANALYZE), so among indexes
    // that each serve some conditions and the order it may take a wide one (every event of a
    // period, or every billed event) over a narrow one (one customer's): the leading condition
    // is marked `unlikely()`, which tells its planner that few rows match. PostgreSQL plans by
    // its statistics and gets the condition plain. tests/api/query_plans.rs checks the leads.
    let sqlite = conn.dialect() == Dialect::Sqlite;
    let lead = if filter.event_id.is_some() {
        Lead::EventId
    } else if filter.customer_id.is_some() || filter.customer_external_id.is_some() {
        Lead::Customer
    } else if filter.subject.is_some() {
        Lead::Subject
    } else if filter.event_types.len() == 1 {
        Lead::EventType
    } else if filter.has_fees.is_some() || filter.billed == Some(true) {
        Lead::Fees
    } else {
        Lead::None
    };
    let marked = |condition: &str, this: Lead| {
        if sqlite && this == lead {
            format!("unlikely({condition})")
        } else {
            condition.to_owned()
        }
    };
    if let Some(id) = &filter.event_id {
        query.and(&marked("e.id = ?", Lead::EventId), id);
    }
    if let Some(customer_id) = &filter.customer_id {
        query.and(&marked("e.customer_id = ?", Lead::Customer), customer_id);
    }
    if let Some(external_id) = &filter.customer_external_id {
        // The customer first (one row, by its unique index), then its events by theirs.
        let customer = format!(
            "e.customer_id = (SELECT c.id FROM customers c WHERE c.mode = '{}' AND c.external_id = ?)",
            mode.as_str()
        );
        query.and(&marked(&customer, Lead::Customer), external_id);
    }
    if let Some(subject) = &filter.subject {
        query.and(&marked("e.subject = ?", Lead::Subject), subject);
    }
    if let Some(from) = filter.period_from {
        query.and("e.occurred_at >= ?", from);
    }
    if let Some(to) = filter.period_to {
        query.and("e.occurred_at < ?", to);
    }
    // `has_fees` and `billing_status=billed` read `usage_events_by_fees` (mode, has_fees,
    // occurred_at, id, unbilled_reason) when they lead, with a period or without: a page and
    // its count then read that index alone. Billed is having fees and no reason to be
    // unbilled, the same events (docs/api.md), written so that the index serves it.
    if let Some(has_fees) = filter.has_fees {
        query.and(&marked("e.has_fees = ?", Lead::Fees), has_fees);
    }
    match filter.billed {
        Some(true) => {
            query.and(&marked("e.has_fees = ?", Lead::Fees), true);
            query.and_sql("e.unbilled_reason IS NULL");
        }
        Some(false) => query.and_sql("e.unbilled_reason IS NOT NULL"),
        None => {}
    }
    if let Some(reason) = &filter.unbilled_reason {
        query.and("e.unbilled_reason = ?", reason);
    }
    if let [event_type] = filter.event_types.as_slice() {
        query.and(&marked("e.event_type = ?", Lead::EventType), event_type.as_str());
    } else {
        query.and_in("e.event_type", &filter.event_types);
    }
    // No join: counting the matches reads the events' index alone, and only the page's rows
    // look up their customer's external id.
    let columns =
        EVENT_COLUMNS.replace("c.external_id", "(SELECT c.external_id FROM customers c WHERE c.id = e.customer_id)");
    query.page(conn, "usage_events e", &columns, &LIST_KEYS, window, event_from_row)
}

pub fn counter(conn: &mut dyn Conn, customer_id: &str, price_id: &str, period_start: i64) -> Result<Usage, StoreError> {
    let row = conn.query_optional(
        "SELECT units, volume FROM usage_counters WHERE customer_id = $1 AND price_id = $2 AND period_start = $3",
        params![customer_id, price_id, period_start],
    )?;
    match row {
        Some(row) => Ok(Usage { units: row.decimal(0)?, volume: row.decimal(1)? }),
        None => Ok(Usage::ZERO),
    }
}

/// A tier counter's key: customer, price, period start.
pub type CounterKey = (String, String, i64);

/// The tier counters of `keys` (distinct) in few statements (chunks of 32 keys, padded to a
/// power of two), zero for those never stored: what [`counter`] would answer for each.
pub fn counters_many(conn: &mut dyn Conn, keys: &[CounterKey]) -> Result<HashMap<CounterKey, Usage>, StoreError> {
    let mut found: HashMap<CounterKey, Usage> = keys.iter().map(|key| (key.clone(), Usage::ZERO)).collect();
    let marker = super::placeholder_marker(conn.dialect());
    for chunk in keys.chunks(32) {
        let padded = chunk.len().next_power_of_two();
        let sql = super::statement_text(&["counters_many"], &[marker as usize, padded], || {
            let matches: Vec<String> = (0..padded)
                .map(|index| {
                    let first = index * 3 + 1;
                    format!(
                        "(customer_id = {marker}{first} AND price_id = {marker}{} AND period_start = {marker}{})",
                        first + 1,
                        first + 2
                    )
                })
                .collect();
            format!(
                "SELECT customer_id, price_id, period_start, units, volume FROM usage_counters WHERE {}",
                matches.join(" OR ")
            )
        });
        let mut params: Vec<Value> = Vec::with_capacity(padded * 3);
        for index in 0..padded {
            let (customer_id, price_id, period_start) = &chunk[index.min(chunk.len() - 1)];
            params.extend_from_slice(params![customer_id, price_id, *period_start]);
        }
        for row in conn.query(&sql, &params)? {
            let key = (row.text(0)?, row.text(1)?, row.int(2)?);
            found.insert(key, Usage { units: row.decimal(3)?, volume: row.decimal(4)? });
        }
    }
    Ok(found)
}

/// A tier counter's value to store.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterRow {
    pub customer_id: String,
    pub price_id: String,
    pub period_start: i64,
    pub usage: Usage,
}

/// Stores each counter's value (a multi-row upsert, chunks of a power of two rows). The keys
/// of one call must differ: PostgreSQL refuses to update a row twice in one statement.
pub fn put_counters(conn: &mut dyn Conn, counters: &[CounterRow]) -> Result<(), StoreError> {
    debug_assert!(
        {
            let mut keys: Vec<_> = counters
                .iter()
                .map(|counter| (&counter.customer_id, &counter.price_id, counter.period_start))
                .collect();
            keys.sort();
            keys.windows(2).all(|pair| pair[0] != pair[1])
        },
        "one write stores each counter once"
    );
    const HEAD: &str = "INSERT INTO usage_counters (customer_id, price_id, period_start, units, volume)";
    const TAIL: &str = " ON CONFLICT (customer_id, price_id, period_start) \
                        DO UPDATE SET units = excluded.units, volume = excluded.volume";
    let mut values = Vec::with_capacity(counters.len() * 5);
    for counter in counters {
        values.extend_from_slice(params![
            &counter.customer_id,
            &counter.price_id,
            counter.period_start,
            counter.usage.units,
            counter.usage.volume
        ]);
    }
    super::execute_rows(conn, HEAD, 5, &values, TAIL)
}

pub fn put_counter(
    conn: &mut dyn Conn,
    customer_id: &str,
    price_id: &str,
    period_start: i64,
    usage: &Usage,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO usage_counters (customer_id, price_id, period_start, units, volume) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (customer_id, price_id, period_start) DO UPDATE SET units = excluded.units, volume = excluded.volume",
        params![customer_id, price_id, period_start, usage.units, usage.volume],
    )?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredCost {
    pub event_id: String,
    pub line: i64,
    pub customer_id: String,
    pub cost_id: String,
    pub vendor_id: String,
    pub category: Option<String>,
    pub description: Option<String>,
    pub amount: Decimal,
    pub currency: String,
    pub occurred_at: DateTime<Utc>,
}

pub fn insert_cost(conn: &mut dyn Conn, mode: Mode, cost: &StoredCost) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO event_costs (mode, event_id, line, customer_id, cost_id, vendor_id, category, description, amount, currency, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        params![
            mode.as_str(),
            &cost.event_id,
            cost.line,
            &cost.customer_id,
            &cost.cost_id,
            &cost.vendor_id,
            cost.category.clone(),
            cost.description.clone(),
            cost.amount,
            &cost.currency,
            cost.occurred_at
        ],
    )?;
    Ok(())
}

/// Where a scan of unbilled events resumes: after this event, in `occurred_at`, then id, order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCursor {
    pub occurred_at: DateTime<Utc>,
    pub id: String,
}

/// Which unbilled events a rebill looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct UnbilledScan {
    pub customer_id: Option<String>,
    pub event_types: Vec<String>,
    /// Inclusive lower bound on `occurred_at`.
    pub period_from: DateTime<Utc>,
    /// Exclusive upper bound on `occurred_at`.
    pub period_to: DateTime<Utc>,
    pub after: Option<EventCursor>,
}

/// Up to `limit` unbilled events of `scan`, oldest first (by `occurred_at`, then id): each
/// one's id and customer. Reads without locking: [`lock_unbilled`] reads them again under the
/// customer's lock before anything bills them.
pub fn unbilled_in_range(
    conn: &mut dyn Conn,
    mode: Mode,
    scan: &UnbilledScan,
    limit: i64,
) -> Result<Vec<(EventCursor, String)>, StoreError> {
    let mut query = Filter::new("mode = ?", mode.as_str());
    query.and_sql("unbilled_reason IS NOT NULL");
    query.and("occurred_at >= ?", scan.period_from);
    query.and("occurred_at < ?", scan.period_to);
    if let Some(customer_id) = &scan.customer_id {
        query.and("customer_id = ?", customer_id);
    }
    query.and_in("event_type", &scan.event_types);
    if let Some(after) = &scan.after {
        query.values.push(after.occurred_at.into());
        query.values.push(after.id.as_str().into());
        let (at, id) = (query.values.len() - 1, query.values.len());
        query.conditions.push(format!("(occurred_at > ${at} OR (occurred_at = ${at} AND id > ${id}))"));
    }
    query.values.push(limit.into());
    let sql = format!(
        "SELECT id, occurred_at, customer_id FROM usage_events WHERE {} ORDER BY occurred_at, id LIMIT ${}",
        query.conditions.join(" AND "),
        query.values.len()
    );
    conn.query(&sql, &query.values)?
        .iter()
        .map(|row| Ok((EventCursor { id: row.text(0)?, occurred_at: row.time(1)? }, row.text(2)?)))
        .collect()
}

/// The events among `ids` of one customer that are still unbilled, oldest first, locked on
/// PostgreSQL until the transaction ends. Called under the customer's lock, which every
/// writer of an event's billing holds, so what it reads is what is billed.
pub fn lock_unbilled(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    ids: &[String],
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut found = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let placeholders: Vec<String> = (0..chunk.len()).map(|index| format!("${}", index + 3)).collect();
        let mut values: Vec<Value> = vec![mode.as_str().into(), customer_id.into()];
        values.extend(chunk.iter().map(|id| Value::from(id.as_str())));
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM usage_events e JOIN customers c ON c.id = e.customer_id
             WHERE e.mode = $1 AND e.customer_id = $2 AND e.unbilled_reason IS NOT NULL AND e.id IN ({}){}",
            placeholders.join(", "),
            conn.for_update()
        );
        for row in conn.query_planned_for_values(&sql, &values)? {
            found.push(event_from_row(&row)?.0);
        }
    }
    found.sort_by(|left, right| (left.occurred_at, &left.id).cmp(&(right.occurred_at, &right.id)));
    Ok(found)
}

/// Writes an event's billing: its fee totals and its reason for being unbilled, if any.
pub fn set_billing(conn: &mut dyn Conn, mode: Mode, event: &StoredEvent) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE usage_events SET has_fees = $3, total_fees = $4, fee_currency = $5, unbilled_reason = $6,
                                 unbilled_message = $7
         WHERE mode = $1 AND id = $2",
        params![
            mode.as_str(),
            &event.id,
            event.has_fees,
            event.total_fees,
            event.fee_currency.clone(),
            event.unbilled.as_ref().map(|reason| reason.code.clone()),
            event.unbilled.as_ref().map(|reason| reason.message.clone())
        ],
    )?;
    Ok(())
}
