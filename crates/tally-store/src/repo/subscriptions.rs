//! Subscriptions: a customer's pins on product versions, and when their next action is due.

use super::Page;
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
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
    /// The earliest of a scheduled start, a renewal and an entitlement refresh.
    pub next_action_at: Option<DateTime<Utc>>,
    pub products: Vec<PinnedProduct>,
    pub created_at: DateTime<Utc>,
}

pub fn insert(conn: &mut dyn Conn, mode: Mode, subscription: &Subscription) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO subscriptions (id, mode, customer_id, status, starts_at, started_at, renews_at, next_action_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        params![
            &subscription.id,
            mode.as_str(),
            &subscription.customer_id,
            subscription.status.as_str(),
            subscription.starts_at,
            subscription.started_at,
            subscription.renews_at,
            subscription.next_action_at,
            subscription.created_at
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
        "UPDATE subscriptions SET status = $2, started_at = $3, renews_at = $4, next_action_at = $5, updated_at = $6 WHERE id = $1",
        params![
            &subscription.id,
            subscription.status.as_str(),
            subscription.started_at,
            subscription.renews_at,
            subscription.next_action_at,
            now
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

const COLUMNS: &str = "id, customer_id, status, starts_at, started_at, renews_at, next_action_at, created_at";

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

pub fn active_count(conn: &mut dyn Conn, customer_id: &str) -> Result<i64, StoreError> {
    conn.count("SELECT COUNT(*) FROM subscriptions WHERE customer_id = $1 AND status = 'active'", params![customer_id])
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

pub fn subscribers(conn: &mut dyn Conn, product_id: &str, page: Page) -> Result<(Vec<Subscriber>, i64), StoreError> {
    let total = conn.count("SELECT COUNT(*) FROM subscription_products WHERE product_id = $1", params![product_id])?;
    let rows = conn.query(
        "SELECT c.id, c.name, c.external_id, c.email, s.id, s.status, s.started_at, s.starts_at, s.renews_at, p.version
         FROM subscription_products p
         JOIN subscriptions s ON s.id = p.subscription_id
         JOIN customers c ON c.id = p.customer_id
         WHERE p.product_id = $1 ORDER BY s.created_at, s.id LIMIT $2 OFFSET $3",
        params![product_id, page.limit, page.offset],
    )?;
    let items = rows
        .iter()
        .map(|row| {
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
        .collect::<Result<_, StoreError>>()?;
    Ok((items, total))
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
        "INSERT INTO entitlement_periods (subscription_id, product_id, entitlement_index, customer_id, period_start, next_refresh_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        params![
            &period.subscription_id,
            &period.product_id,
            period.entitlement_index,
            customer_id,
            period.period_start,
            period.next_refresh_at
        ],
    )?;
    Ok(())
}

pub fn entitlement_periods(conn: &mut dyn Conn, subscription_id: &str) -> Result<Vec<EntitlementPeriod>, StoreError> {
    conn.query(
        "SELECT subscription_id, product_id, entitlement_index, period_start, next_refresh_at FROM entitlement_periods
         WHERE subscription_id = $1 ORDER BY product_id, entitlement_index",
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
        })
    })
    .collect()
}

/// Claims the subscription with the most overdue action, locking its customer (see the
/// worker's claim pattern): returns its mode and id.
pub fn claim_due(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<(Mode, String)>, StoreError> {
    let sql = format!(
        "SELECT s.mode, s.id FROM subscriptions s JOIN customers c ON c.id = s.customer_id
         WHERE s.next_action_at <= $1 ORDER BY s.next_action_at LIMIT 1{}",
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
