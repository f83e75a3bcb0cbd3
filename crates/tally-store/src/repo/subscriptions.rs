//! Subscriptions: a customer's pins on product versions, and when their next action is due.

use super::{Filter, Keys, Listing, Window};
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use tally_core::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    /// Starts at `starts_at`, in the future.
    Scheduled,
    Active,
    Inactive,
    /// Waiting for the customer (a payment); see the top-up issue.
    ActionRequired,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Scheduled => "scheduled",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Inactive => "inactive",
            SubscriptionStatus::ActionRequired => "action_required",
        }
    }

    pub fn parse(text: &str) -> Option<SubscriptionStatus> {
        match text {
            "scheduled" => Some(SubscriptionStatus::Scheduled),
            "active" => Some(SubscriptionStatus::Active),
            "inactive" => Some(SubscriptionStatus::Inactive),
            "action_required" => Some(SubscriptionStatus::ActionRequired),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PinnedProduct {
    pub product_id: String,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub customer_id: String,
    pub status: SubscriptionStatus,
    pub starts_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub renews_at: Option<DateTime<Utc>>,
    /// Where the renewal cycle counts from: renewals fall a whole number of intervals after
    /// it, so they keep its day of the month. `None` before the first activation.
    pub renewal_anchor_at: Option<DateTime<Utc>>,
    /// The earliest of a scheduled start, a renewal and an entitlement refresh.
    pub next_action_at: Option<DateTime<Utc>>,
    pub products: Vec<PinnedProduct>,
    pub created_at: DateTime<Utc>,
}

pub fn insert(conn: &mut dyn Conn, mode: Mode, subscription: &Subscription) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO subscriptions (id, mode, customer_id, status, starts_at, started_at, renews_at, next_action_at, created_at, updated_at, renewal_anchor_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
        params![
            &subscription.id,
            mode.as_str(),
            &subscription.customer_id,
            subscription.status.as_str(),
            subscription.starts_at,
            subscription.started_at,
            subscription.renews_at,
            subscription.next_action_at,
            subscription.created_at,
            subscription.renewal_anchor_at
        ],
    )?;
    for product in &subscription.products {
        insert_product(conn, mode, subscription, product)?;
    }
    Ok(())
}

fn insert_product(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &Subscription,
    product: &PinnedProduct,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO subscription_products (subscription_id, product_id, version, customer_id, mode) VALUES ($1, $2, $3, $4, $5)",
        params![&subscription.id, &product.product_id, product.version, &subscription.customer_id, mode.as_str()],
    )?;
    Ok(())
}

pub fn update(conn: &mut dyn Conn, subscription: &Subscription, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE subscriptions SET status = $2, started_at = $3, renews_at = $4, next_action_at = $5, updated_at = $6,
         renewal_anchor_at = $7 WHERE id = $1",
        params![
            &subscription.id,
            subscription.status.as_str(),
            subscription.started_at,
            subscription.renews_at,
            subscription.next_action_at,
            now,
            subscription.renewal_anchor_at
        ],
    )?;
    Ok(())
}

pub fn set_product_version(
    conn: &mut dyn Conn,
    subscription_id: &str,
    product_id: &str,
    version: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE subscription_products SET version = $3 WHERE subscription_id = $1 AND product_id = $2",
        params![subscription_id, product_id, version],
    )?;
    Ok(())
}

const COLUMNS: &str =
    "id, customer_id, status, starts_at, started_at, renews_at, next_action_at, created_at, renewal_anchor_at";

fn from_row(row: &crate::Row) -> Result<Subscription, StoreError> {
    Ok(Subscription {
        id: row.text(0)?,
        customer_id: row.text(1)?,
        status: SubscriptionStatus::parse(&row.text(2)?)
            .ok_or_else(|| StoreError::Corrupt("subscription status".into()))?,
        starts_at: row.time(3)?,
        started_at: row.opt_time(4)?,
        renews_at: row.opt_time(5)?,
        next_action_at: row.opt_time(6)?,
        products: Vec::new(),
        created_at: row.time(7)?,
        // Subscriptions from before anchors were kept count from their next renewal.
        renewal_anchor_at: row.opt_time(8)?.or(row.opt_time(5)?),
    })
}

fn with_products(conn: &mut dyn Conn, mut subscription: Subscription) -> Result<Subscription, StoreError> {
    subscription.products = conn
        .query(
            "SELECT product_id, version FROM subscription_products WHERE subscription_id = $1 ORDER BY product_id",
            params![&subscription.id],
        )?
        .iter()
        .map(|row| Ok(PinnedProduct { product_id: row.text(0)?, version: row.int(1)? }))
        .collect::<Result<_, StoreError>>()?;
    Ok(subscription)
}

pub fn get(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Option<Subscription>, StoreError> {
    let row = conn.query_optional(
        &format!("SELECT {COLUMNS} FROM subscriptions WHERE mode = $1 AND id = $2"),
        params![mode.as_str(), id],
    )?;
    row.as_ref().map(from_row).transpose()?.map(|subscription| with_products(conn, subscription)).transpose()
}

/// A customer's subscriptions, oldest first.
pub fn for_customer(conn: &mut dyn Conn, customer_id: &str) -> Result<Vec<Subscription>, StoreError> {
    let rows = conn.query(
        &format!("SELECT {COLUMNS} FROM subscriptions WHERE customer_id = $1 ORDER BY created_at, id"),
        params![customer_id],
    )?;
    rows.iter().map(|row| from_row(row).and_then(|subscription| with_products(conn, subscription))).collect()
}

/// Another subscription of the customer's (not `except`) that holds `product_id` now:
/// active, scheduled to start, or waiting for a payment to start.
pub fn holding_product(
    conn: &mut dyn Conn,
    customer_id: &str,
    product_id: &str,
    except: Option<&str>,
) -> Result<Option<String>, StoreError> {
    conn.query_optional(
        "SELECT s.id FROM subscriptions s JOIN subscription_products p ON p.subscription_id = s.id
         WHERE s.customer_id = $1 AND p.product_id = $2 AND s.id <> $3
         AND s.status IN ('active', 'scheduled', 'action_required') ORDER BY s.created_at, s.id LIMIT 1",
        params![customer_id, product_id, except.unwrap_or("")],
    )?
    .map(|row| row.text(0))
    .transpose()
}

pub fn active_count(conn: &mut dyn Conn, customer_id: &str) -> Result<i64, StoreError> {
    conn.count("SELECT COUNT(*) FROM subscriptions WHERE customer_id = $1 AND status = 'active'", params![customer_id])
}

/// The customer's subscriptions with an action due at `now`, oldest first.
pub fn due_for_customer(conn: &mut dyn Conn, customer_id: &str, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
    conn.query_map(
        "SELECT id FROM subscriptions WHERE customer_id = $1 AND next_action_at <= $2 ORDER BY created_at, id",
        params![customer_id, now],
        |row| row.text(0),
    )
}

/// A customer's subscriptions with an action due: when, and the subscription's id.
pub type Due = Vec<(DateTime<Utc>, String)>;

/// [`due_for_customer`] for several customers at once: each one's subscriptions with an
/// action due at `now` (and when it is due, so that a caller at an earlier instant can leave
/// out what is not due yet for it), in the same order.
pub fn due_for_customers(
    conn: &mut dyn Conn,
    customer_ids: &[&str],
    now: DateTime<Utc>,
) -> Result<HashMap<String, Due>, StoreError> {
    let mut due: HashMap<String, Due> = HashMap::new();
    super::query_for_ids(
        conn,
        customer_ids,
        &[now.into()],
        |list| {
            format!(
                "SELECT customer_id, next_action_at, id FROM subscriptions
                 WHERE customer_id IN ({list}) AND next_action_at <= $1 ORDER BY customer_id, created_at, id"
            )
        },
        |row| {
            due.entry(row.text(0)?).or_default().push((row.time(1)?, row.text(2)?));
            Ok(())
        },
    )?;
    Ok(due)
}

/// Subscriptions with an action due at `now`, with their mode.
pub fn due(conn: &mut dyn Conn, now: DateTime<Utc>, limit: i64) -> Result<Vec<(Mode, String, String)>, StoreError> {
    conn.query(
        "SELECT mode, id, customer_id FROM subscriptions WHERE next_action_at <= $1 ORDER BY next_action_at LIMIT $2",
        params![now, limit],
    )?
    .iter()
    .map(|row| {
        let mode = Mode::parse(&row.text(0)?).ok_or_else(|| StoreError::Corrupt("subscription mode".into()))?;
        Ok((mode, row.text(1)?, row.text(2)?))
    })
    .collect()
}

/// One subscriber of a product, for `GET /products/{id}/subscribers`.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscriber {
    pub customer_id: String,
    pub customer_name: String,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub subscription_id: String,
    pub status: String,
    pub started_at: Option<DateTime<Utc>>,
    pub starts_at: DateTime<Utc>,
    pub renews_at: Option<DateTime<Utc>>,
    pub version: i64,
}

/// The order of a product's subscribers: by subscription, oldest first (ids sort by creation).
pub const SUBSCRIBER_KEYS: Keys =
    Keys { tag: "subscribers", columns: &["p.subscription_id"], kinds: "t", descending: false };

pub fn subscribers(conn: &mut dyn Conn, product_id: &str, window: &Window) -> Result<Listing<Subscriber>, StoreError> {
    let from = "subscription_products p JOIN subscriptions s ON s.id = p.subscription_id JOIN customers c ON c.id = p.customer_id";
    let columns =
        "c.id, c.name, c.external_id, c.email, s.id, s.status, s.started_at, s.starts_at, s.renews_at, p.version";
    // A product's pin joins one subscription and one customer: counted by the pins' index
    // alone (30 ms -> 5 ms for 200,000 subscribers on PostgreSQL, docs/benchmarks.md).
    let filter =
        Filter::new("p.product_id = ?", product_id).counting_over("subscription_products p").keys_also_on(&["s.id"]);
    filter.page(conn, from, columns, &SUBSCRIBER_KEYS, window, |row| {
        Ok(Subscriber {
            customer_id: row.text(0)?,
            customer_name: row.text(1)?,
            external_id: row.opt_text(2)?,
            email: row.opt_text(3)?,
            subscription_id: row.text(4)?,
            status: row.text(5)?,
            started_at: row.opt_time(6)?,
            starts_at: row.time(7)?,
            renews_at: row.opt_time(8)?,
            version: row.int(9)?,
        })
    })
}

/// Whether any subscription ever pinned the product (then it can only be archived).
pub fn product_has_subscriptions(conn: &mut dyn Conn, product_id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_optional("SELECT 1 FROM subscription_products WHERE product_id = $1 LIMIT 1", params![product_id])?
        .is_some())
}

/// An entitlement's current period on a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct EntitlementPeriod {
    pub subscription_id: String,
    pub product_id: String,
    pub entitlement_index: i64,
    pub period_start: DateTime<Utc>,
    pub next_refresh_at: Option<DateTime<Utc>>,
    /// Where the entitlement's cycle of periods counts from (its first grant).
    pub anchor_at: DateTime<Utc>,
}

pub fn upsert_entitlement_period(
    conn: &mut dyn Conn,
    customer_id: &str,
    period: &EntitlementPeriod,
) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM entitlement_periods WHERE subscription_id = $1 AND product_id = $2 AND entitlement_index = $3",
        params![&period.subscription_id, &period.product_id, period.entitlement_index],
    )?;
    conn.execute(
        "INSERT INTO entitlement_periods (subscription_id, product_id, entitlement_index, customer_id, period_start, next_refresh_at, anchor_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        params![
            &period.subscription_id,
            &period.product_id,
            period.entitlement_index,
            customer_id,
            period.period_start,
            period.next_refresh_at,
            period.anchor_at
        ],
    )?;
    Ok(())
}

/// Forgets an entitlement's periods (its product's version no longer has it).
pub fn delete_entitlement_period(conn: &mut dyn Conn, period: &EntitlementPeriod) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM entitlement_periods WHERE subscription_id = $1 AND product_id = $2 AND entitlement_index = $3",
        params![&period.subscription_id, &period.product_id, period.entitlement_index],
    )?;
    Ok(())
}

pub fn entitlement_periods(conn: &mut dyn Conn, subscription_id: &str) -> Result<Vec<EntitlementPeriod>, StoreError> {
    conn.query(
        "SELECT subscription_id, product_id, entitlement_index, period_start, next_refresh_at, anchor_at
         FROM entitlement_periods WHERE subscription_id = $1 ORDER BY product_id, entitlement_index",
        params![subscription_id],
    )?
    .iter()
    .map(|row| {
        Ok(EntitlementPeriod {
            subscription_id: row.text(0)?,
            product_id: row.text(1)?,
            entitlement_index: row.int(2)?,
            period_start: row.time(3)?,
            next_refresh_at: row.opt_time(4)?,
            // Periods from before anchors were kept count from their current period.
            anchor_at: row.opt_time(5)?.map_or_else(|| row.time(3), Ok)?,
        })
    })
    .collect()
}

/// Claims the subscription with the most overdue action, locking its customer (see the
/// worker's claim pattern): returns its mode and id.
pub fn claim_due(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<(Mode, String)>, StoreError> {
    let sql = format!(
        "SELECT s.mode, s.id FROM subscriptions s JOIN customers c ON c.id = s.customer_id
         WHERE s.next_action_at <= $1{} ORDER BY s.next_action_at LIMIT 1{}",
        crate::repo::job_retries::not_waiting(crate::repo::job_retries::RENEW_SUBSCRIPTIONS, "s.id"),
        conn.skip_locked_of("c")
    );
    let Some(row) = conn.query_optional(&sql, params![now])? else {
        return Ok(None);
    };
    let mode = Mode::parse(&row.text(0)?).ok_or_else(|| StoreError::Corrupt("subscription mode".into()))?;
    Ok(Some((mode, row.text(1)?)))
}

/// Makes a subscription waiting for a payment due now, so that the next pass starts it.
pub fn wake(conn: &mut dyn Conn, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE subscriptions SET next_action_at = $2 WHERE id = $1 AND status = 'action_required'",
        params![id, now],
    )?;
    Ok(())
}

/// A stretch of time one product of a subscription was active on one version: from
/// `active_from` (included) until `active_to` (excluded), or still (`None`).
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveInterval {
    pub subscription_id: String,
    pub product_id: String,
    pub version: i64,
    pub active_from: DateTime<Utc>,
    pub active_to: Option<DateTime<Utc>>,
}

impl ActiveInterval {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.active_from <= at && self.active_to.is_none_or(|to| at < to)
    }
}

/// Brings the subscription's history up to date at `at`: while it is active, each pinned
/// product has one open interval on its pinned version (a product moved to another version
/// has its interval closed and a new one opened at `at`); otherwise no interval is open.
/// Calling it again without a change does nothing.
pub fn record_history(conn: &mut dyn Conn, subscription: &Subscription, at: DateTime<Utc>) -> Result<(), StoreError> {
    let open: Vec<(String, i64)> = conn
        .query(
            "SELECT product_id, version FROM subscription_history WHERE subscription_id = $1 AND active_to IS NULL",
            params![&subscription.id],
        )?
        .iter()
        .map(|row| Ok((row.text(0)?, row.int(1)?)))
        .collect::<Result<_, StoreError>>()?;
    let wanted: &[PinnedProduct] =
        if subscription.status == SubscriptionStatus::Active { &subscription.products } else { &[] };
    for (product_id, version) in &open {
        if !wanted.iter().any(|pinned| &pinned.product_id == product_id && pinned.version == *version) {
            conn.execute(
                "UPDATE subscription_history SET active_to = $3
                 WHERE subscription_id = $1 AND product_id = $2 AND active_to IS NULL",
                params![&subscription.id, product_id, at],
            )?;
        }
    }
    for pinned in wanted {
        if !open.iter().any(|(product_id, version)| *product_id == pinned.product_id && *version == pinned.version) {
            conn.execute(
                "INSERT INTO subscription_history (mode, customer_id, subscription_id, product_id, version, active_from)
                 SELECT mode, customer_id, id, $2, $3, $4 FROM subscriptions WHERE id = $1",
                params![&subscription.id, &pinned.product_id, pinned.version, at],
            )?;
        }
    }
    Ok(())
}

/// [`history_since`] for several customers at once, by customer, each in the same order.
pub fn histories_since(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_ids: &[&str],
    since: DateTime<Utc>,
) -> Result<HashMap<String, Vec<ActiveInterval>>, StoreError> {
    let mut histories: HashMap<String, Vec<ActiveInterval>> = HashMap::new();
    super::query_for_ids(
        conn,
        customer_ids,
        &[mode.as_str().into(), since.into()],
        |list| {
            format!(
                "SELECT h.customer_id, h.subscription_id, h.product_id, h.version, h.active_from, h.active_to
                 FROM subscription_history h JOIN subscriptions s ON s.id = h.subscription_id
                 WHERE h.mode = $1 AND h.customer_id IN ({list}) AND (h.active_to IS NULL OR h.active_to > $2)
                 ORDER BY h.customer_id, s.created_at, s.id, h.product_id, h.active_from"
            )
        },
        |row| {
            histories.entry(row.text(0)?).or_default().push(ActiveInterval {
                subscription_id: row.text(1)?,
                product_id: row.text(2)?,
                version: row.int(3)?,
                active_from: row.time(4)?,
                active_to: row.opt_time(5)?,
            });
            Ok(())
        },
    )?;
    Ok(histories)
}

/// The customer's intervals still open at `since` or later, in the order rating reads them
/// (subscriptions oldest first, then by product).
pub fn history_since(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    since: DateTime<Utc>,
) -> Result<Vec<ActiveInterval>, StoreError> {
    conn.query(
        "SELECT h.subscription_id, h.product_id, h.version, h.active_from, h.active_to
         FROM subscription_history h JOIN subscriptions s ON s.id = h.subscription_id
         WHERE h.mode = $1 AND h.customer_id = $2 AND (h.active_to IS NULL OR h.active_to > $3)
         ORDER BY s.created_at, s.id, h.product_id, h.active_from",
        params![mode.as_str(), customer_id, since],
    )?
    .iter()
    .map(|row| {
        Ok(ActiveInterval {
            subscription_id: row.text(0)?,
            product_id: row.text(1)?,
            version: row.int(2)?,
            active_from: row.time(3)?,
            active_to: row.opt_time(4)?,
        })
    })
    .collect()
}
