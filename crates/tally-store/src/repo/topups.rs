//! Top-ups, saved payment methods and auto top-up settings.

use super::{metadata_from_text, metadata_to_text, Metadata, Page};
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::rate::ExchangeRate;
use tally_core::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopUpStatus {
    Initiated,
    Pending,
    Succeeded,
    Failed,
    Expired,
}

impl TopUpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TopUpStatus::Initiated => "initiated",
            TopUpStatus::Pending => "pending",
            TopUpStatus::Succeeded => "succeeded",
            TopUpStatus::Failed => "failed",
            TopUpStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<TopUpStatus> {
        match text {
            "initiated" => Some(TopUpStatus::Initiated),
            "pending" => Some(TopUpStatus::Pending),
            "succeeded" => Some(TopUpStatus::Succeeded),
            "failed" => Some(TopUpStatus::Failed),
            "expired" => Some(TopUpStatus::Expired),
            _ => None,
        }
    }

    pub fn is_open(self) -> bool {
        match self {
            TopUpStatus::Initiated | TopUpStatus::Pending => true,
            TopUpStatus::Succeeded | TopUpStatus::Failed | TopUpStatus::Expired => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopUp {
    pub id: String,
    pub customer_id: String,
    /// Fiat paid, in major units.
    pub amount: Decimal,
    pub currency: String,
    pub account_name: String,
    pub asset: String,
    /// What the wallet receives on success, fixed when the top-up was made.
    pub asset_amount: Decimal,
    pub rate: ExchangeRate,
    pub rate_overridden: bool,
    pub credit_expires_at: Option<DateTime<Utc>>,
    pub return_url: String,
    pub failure_url: String,
    pub description: Option<String>,
    pub metadata: Metadata,
    pub status: TopUpStatus,
    /// `test` or `stripe`.
    pub provider: String,
    pub provider_reference: Option<String>,
    pub redirect_url: Option<String>,
    /// The secret in the test checkout page's link.
    pub checkout_token: String,
    pub failure_reason: Option<String>,
    /// `api`, `portal` or `auto`.
    pub origin: String,
    /// The subscription this top-up pays for, if it was made to activate one.
    pub subscription_id: Option<String>,
    pub save_payment_method: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When the provider said the payment is on its way (a bank debit): from then on the
    /// top-up waits for the outcome and never expires for want of payment.
    pub processing_since: Option<DateTime<Utc>>,
    /// When the credit granted on success expires (`None` before success, or never).
    pub granted_credit_expires_at: Option<DateTime<Utc>>,
}

impl TopUp {
    /// Whether the customer may still pay through its checkout link at `now`: open, and
    /// either inside its payment window or already paying (a payment on its way).
    pub fn is_payable(&self, now: DateTime<Utc>) -> bool {
        self.status.is_open() && (self.processing_since.is_some() || self.expires_at > now)
    }
}

const COLUMNS: &str = "id, customer_id, amount, currency, account_name, asset, asset_amount, rate_kind, rate_value, rate_overridden, \
     credit_expires_at, return_url, failure_url, description, metadata, status, provider, provider_reference, redirect_url, \
     checkout_token, failure_reason, origin, subscription_id, save_payment_method, created_at, expires_at, completed_at, \
     processing_since, granted_credit_expires_at";
/// The index of the column after [`COLUMNS`] (the mode, where a query adds it).
const MODE_COLUMN: usize = 29;

fn rate_parts(rate: ExchangeRate) -> (&'static str, Decimal) {
    match rate {
        ExchangeRate::Rate(value) => ("rate", value),
        ExchangeRate::Inverse(value) => ("inverse_rate", value),
    }
}

pub fn insert(conn: &mut dyn Conn, mode: Mode, top_up: &TopUp) -> Result<(), StoreError> {
    let (rate_kind, rate_value) = rate_parts(top_up.rate);
    conn.execute(
        &format!(
            "INSERT INTO top_ups ({COLUMNS}, mode, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
             $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $25)"
        ),
        params![
            &top_up.id,
            &top_up.customer_id,
            top_up.amount,
            &top_up.currency,
            &top_up.account_name,
            &top_up.asset,
            top_up.asset_amount,
            rate_kind,
            rate_value,
            top_up.rate_overridden,
            top_up.credit_expires_at,
            &top_up.return_url,
            &top_up.failure_url,
            top_up.description.clone(),
            metadata_to_text(&top_up.metadata),
            top_up.status.as_str(),
            &top_up.provider,
            top_up.provider_reference.clone(),
            top_up.redirect_url.clone(),
            &top_up.checkout_token,
            top_up.failure_reason.clone(),
            &top_up.origin,
            top_up.subscription_id.clone(),
            top_up.save_payment_method,
            top_up.created_at,
            top_up.expires_at,
            top_up.completed_at,
            top_up.processing_since,
            top_up.granted_credit_expires_at,
            mode.as_str()
        ],
    )?;
    Ok(())
}

/// Saves what changes over a top-up's life.
pub fn update(conn: &mut dyn Conn, top_up: &TopUp, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE top_ups SET status = $2, provider_reference = $3, redirect_url = $4, failure_reason = $5, completed_at = $6,
         updated_at = $7, processing_since = $8, granted_credit_expires_at = $9 WHERE id = $1",
        params![
            &top_up.id,
            top_up.status.as_str(),
            top_up.provider_reference.clone(),
            top_up.redirect_url.clone(),
            top_up.failure_reason.clone(),
            top_up.completed_at,
            now,
            top_up.processing_since,
            top_up.granted_credit_expires_at
        ],
    )?;
    Ok(())
}

fn from_row(row: &crate::Row) -> Result<TopUp, StoreError> {
    let rate_value = row.decimal(8)?;
    let rate = match row.text(7)?.as_str() {
        "rate" => ExchangeRate::Rate(rate_value),
        "inverse_rate" => ExchangeRate::Inverse(rate_value),
        other => return Err(StoreError::Corrupt(format!("top-up rate kind {other}"))),
    };
    Ok(TopUp {
        id: row.text(0)?,
        customer_id: row.text(1)?,
        amount: row.decimal(2)?,
        currency: row.text(3)?,
        account_name: row.text(4)?,
        asset: row.text(5)?,
        asset_amount: row.decimal(6)?,
        rate,
        rate_overridden: row.bool(9)?,
        credit_expires_at: row.opt_time(10)?,
        return_url: row.text(11)?,
        failure_url: row.text(12)?,
        description: row.opt_text(13)?,
        metadata: metadata_from_text(&row.text(14)?)?,
        status: TopUpStatus::parse(&row.text(15)?).ok_or_else(|| StoreError::Corrupt("top-up status".into()))?,
        provider: row.text(16)?,
        provider_reference: row.opt_text(17)?,
        redirect_url: row.opt_text(18)?,
        checkout_token: row.text(19)?,
        failure_reason: row.opt_text(20)?,
        origin: row.text(21)?,
        subscription_id: row.opt_text(22)?,
        save_payment_method: row.bool(23)?,
        created_at: row.time(24)?,
        expires_at: row.time(25)?,
        completed_at: row.opt_time(26)?,
        processing_since: row.opt_time(27)?,
        granted_credit_expires_at: row.opt_time(28)?,
    })
}

pub fn get(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Option<TopUp>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM top_ups WHERE mode = $1 AND id = $2"),
        params![mode.as_str(), id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// Finds a top-up by id in either mode (provider notifications and checkout pages carry only
/// the id); callers check the mode against what they expect.
pub fn get_any_mode(conn: &mut dyn Conn, id: &str) -> Result<Option<(Mode, TopUp)>, StoreError> {
    let row = conn.query_optional(&format!("SELECT {COLUMNS}, mode FROM top_ups WHERE id = $1"), params![id])?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mode = Mode::parse(&row.text(MODE_COLUMN)?).ok_or_else(|| StoreError::Corrupt("top-up mode".into()))?;
    Ok(Some((mode, from_row(&row)?)))
}

pub fn find_by_reference(
    conn: &mut dyn Conn,
    provider: &str,
    reference: &str,
) -> Result<Option<(Mode, TopUp)>, StoreError> {
    let row = conn.query_optional(
        &format!("SELECT {COLUMNS}, mode FROM top_ups WHERE provider = $1 AND provider_reference = $2"),
        params![provider, reference],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mode = Mode::parse(&row.text(MODE_COLUMN)?).ok_or_else(|| StoreError::Corrupt("top-up mode".into()))?;
    Ok(Some((mode, from_row(&row)?)))
}

/// A customer's top-ups, newest first.
pub fn for_customer(conn: &mut dyn Conn, customer_id: &str, page: Page) -> Result<(Vec<TopUp>, i64), StoreError> {
    let total = conn.count("SELECT COUNT(*) FROM top_ups WHERE customer_id = $1", params![customer_id])?;
    let items = conn
        .query(
            &format!("SELECT {COLUMNS} FROM top_ups WHERE customer_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"),
            params![customer_id, page.limit, page.offset],
        )?
        .iter()
        .map(from_row)
        .collect::<Result<_, _>>()?;
    Ok((items, total))
}

/// Claims the open top-up whose payment window closed longest ago, locking its customer;
/// returns its mode and id. A top-up whose payment is on its way is never claimed.
pub fn claim_expired(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<Option<(Mode, String)>, StoreError> {
    let sql = format!(
        "SELECT t.mode, t.id FROM top_ups t JOIN customers c ON c.id = t.customer_id
         WHERE t.status IN ('initiated', 'pending') AND t.processing_since IS NULL AND t.expires_at <= $1{}
         ORDER BY t.expires_at LIMIT 1{}",
        crate::repo::job_retries::not_waiting(crate::repo::job_retries::EXPIRE_TOP_UPS, "t.id"),
        conn.skip_locked_of("c")
    );
    let Some(row) = conn.query_optional(&sql, params![now])? else {
        return Ok(None);
    };
    let mode = Mode::parse(&row.text(0)?).ok_or_else(|| StoreError::Corrupt("top-up mode".into()))?;
    Ok(Some((mode, row.text(1)?)))
}

#[derive(Debug, Clone, PartialEq)]
pub struct PaymentMethod {
    pub id: String,
    pub customer_id: String,
    pub provider: String,
    pub provider_reference: String,
    pub provider_customer: Option<String>,
    pub brand: Option<String>,
    pub last4: Option<String>,
    /// When the card expires, as its provider reports it.
    pub expiry: Option<CardExpiry>,
    pub created_at: DateTime<Utc>,
}

/// The month and year a card expires (it works through the end of that month).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardExpiry {
    /// 1 to 12.
    pub month: u32,
    /// Four digits.
    pub year: i32,
}

impl CardExpiry {
    /// The expiry of a provider's month and year, when both are given and make sense.
    pub fn of(month: Option<i64>, year: Option<i64>) -> Option<CardExpiry> {
        let month = u32::try_from(month?).ok().filter(|month| (1..=12).contains(month))?;
        let year = i32::try_from(year?).ok().filter(|year| (1000..=9999).contains(year))?;
        Some(CardExpiry { month, year })
    }
}

pub fn insert_payment_method(conn: &mut dyn Conn, mode: Mode, method: &PaymentMethod) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO payment_methods (id, mode, customer_id, provider, provider_reference, provider_customer, brand, last4,
             expiry_month, expiry_year, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        params![
            &method.id,
            mode.as_str(),
            &method.customer_id,
            &method.provider,
            &method.provider_reference,
            method.provider_customer.clone(),
            method.brand.clone(),
            method.last4.clone(),
            method.expiry.map(|expiry| i64::from(expiry.month)),
            method.expiry.map(|expiry| i64::from(expiry.year)),
            method.created_at
        ],
    )?;
    Ok(())
}

/// A customer's saved payment methods (not removed ones): the default first, then newest first.
pub fn payment_methods(conn: &mut dyn Conn, customer_id: &str) -> Result<Vec<PaymentMethod>, StoreError> {
    conn.query(
        &format!(
            "SELECT {PAYMENT_METHOD_COLUMNS} FROM payment_methods
             WHERE customer_id = $1 AND removed_at IS NULL ORDER BY is_default DESC, created_at DESC, id DESC"
        ),
        params![customer_id],
    )?
    .iter()
    .map(payment_method_from_row)
    .collect()
}

const PAYMENT_METHOD_COLUMNS: &str =
    "id, customer_id, provider, provider_reference, provider_customer, brand, last4, created_at, expiry_month, expiry_year";

fn payment_method_from_row(row: &crate::Row) -> Result<PaymentMethod, StoreError> {
    Ok(PaymentMethod {
        id: row.text(0)?,
        customer_id: row.text(1)?,
        provider: row.text(2)?,
        provider_reference: row.text(3)?,
        provider_customer: row.opt_text(4)?,
        brand: row.opt_text(5)?,
        last4: row.opt_text(6)?,
        expiry: CardExpiry::of(row.opt_int(8)?, row.opt_int(9)?),
        created_at: row.time(7)?,
    })
}

/// The card `reference` of `provider` the customer saved, removed or not (a provider's
/// notification repeated after the card was removed must not bring it back).
pub fn payment_method_by_reference(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    provider: &str,
    reference: &str,
) -> Result<Option<PaymentMethod>, StoreError> {
    conn.query_optional(
        &format!(
            "SELECT {PAYMENT_METHOD_COLUMNS} FROM payment_methods
             WHERE mode = $1 AND customer_id = $2 AND provider = $3 AND provider_reference = $4 ORDER BY created_at, id LIMIT 1"
        ),
        params![mode.as_str(), customer_id, provider, reference],
    )?
    .map(|row| payment_method_from_row(&row))
    .transpose()
}

/// The provider's customer (`cus_…`) the customer's newest card of `provider` is kept on,
/// removed cards included: new cards go on the same one.
pub fn provider_customer(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    provider: &str,
) -> Result<Option<String>, StoreError> {
    conn.query_optional(
        "SELECT provider_customer FROM payment_methods
         WHERE mode = $1 AND customer_id = $2 AND provider = $3 AND provider_customer IS NOT NULL
         ORDER BY created_at DESC, id DESC LIMIT 1",
        params![mode.as_str(), customer_id, provider],
    )?
    .map(|row| row.text(0))
    .transpose()
}

/// The id of the customer's default card, if one of their saved cards is.
pub fn default_payment_method(conn: &mut dyn Conn, customer_id: &str) -> Result<Option<String>, StoreError> {
    conn.query_optional(
        "SELECT id FROM payment_methods WHERE customer_id = $1 AND removed_at IS NULL AND is_default = 1",
        params![customer_id],
    )?
    .map(|row| row.text(0))
    .transpose()
}

/// Makes `id` the customer's one default card; false when it is not one of their saved cards.
pub fn set_default_payment_method(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    id: &str,
) -> Result<bool, StoreError> {
    let chosen = conn.execute(
        "UPDATE payment_methods SET is_default = 1 WHERE id = $1 AND mode = $2 AND customer_id = $3 AND removed_at IS NULL",
        params![id, mode.as_str(), customer_id],
    )?;
    if chosen == 0 {
        return Ok(false);
    }
    conn.execute(
        "UPDATE payment_methods SET is_default = 0 WHERE mode = $1 AND customer_id = $2 AND id <> $3 AND is_default = 1",
        params![mode.as_str(), customer_id, id],
    )?;
    Ok(true)
}

/// Removes a saved card: it is never listed or charged again. False when it is not one of the
/// customer's saved cards.
pub fn remove_payment_method(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    id: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let removed = conn.execute(
        "UPDATE payment_methods SET removed_at = $4, is_default = 0 WHERE id = $1 AND mode = $2 AND customer_id = $3 AND removed_at IS NULL",
        params![id, mode.as_str(), customer_id, now],
    )?;
    Ok(removed > 0)
}

/// The open top-ups made to pay for a subscription, newest first.
pub fn open_for_subscription(conn: &mut dyn Conn, subscription_id: &str) -> Result<Vec<TopUp>, StoreError> {
    conn.query(
        &format!(
            "SELECT {COLUMNS} FROM top_ups WHERE subscription_id = $1 AND status IN ('initiated', 'pending') ORDER BY created_at DESC"
        ),
        params![subscription_id],
    )?
    .iter()
    .map(from_row)
    .collect()
}

/// Every top-up made to pay for a subscription, newest first.
pub fn for_subscription(conn: &mut dyn Conn, subscription_id: &str) -> Result<Vec<TopUp>, StoreError> {
    conn.query(
        &format!("SELECT {COLUMNS} FROM top_ups WHERE subscription_id = $1 ORDER BY created_at DESC, id DESC"),
        params![subscription_id],
    )?
    .iter()
    .map(from_row)
    .collect()
}
