//! What the billing portal's activity page reads: every movement of a customer's accounts,
//! newest first by the movement's own time, a page at a time by a keyset cursor.
//!
//! Movements come from two places. Usage fees are read from `event_fees`, dated by when their
//! event occurred (index `event_fees_by_customer_time`); everything else (plan fees, charges,
//! top-ups, adjustments, entitlement grants, expiries) from `transactions`, dated by when it
//! was made (the partial index `transactions_by_time`, which leaves usage fees out). Each
//! source is read from the cursor on, by its index, at most a page's worth, and the two are
//! merged: a page costs the same on the first page and the thousandth, and nothing counts all
//! rows.

use crate::conn::{Conn, Value};
use crate::StoreError;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// What kind of movement a row is, as the customer reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// A usage event's fee, or a charge made through the API.
    Usage,
    /// A subscription's fixed fee.
    PlanFee,
    /// Credit a subscription includes (an entitlement grant).
    Included,
    TopUp,
    AutoTopUp,
    /// A gift adjustment: promotional credit.
    Promotion,
    /// Any other adjustment: external top-ups, refunds, corrections.
    Adjustment,
    Expiry,
}

impl Category {
    pub const ALL: [Category; 8] = [
        Category::Usage,
        Category::PlanFee,
        Category::Included,
        Category::TopUp,
        Category::AutoTopUp,
        Category::Promotion,
        Category::Adjustment,
        Category::Expiry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Usage => "usage",
            Category::PlanFee => "plan_fee",
            Category::Included => "included",
            Category::TopUp => "top_up",
            Category::AutoTopUp => "auto_top_up",
            Category::Promotion => "promotion",
            Category::Adjustment => "adjustment",
            Category::Expiry => "expiry",
        }
    }

    pub fn parse(text: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|category| category.as_str() == text)
    }

    /// The condition on a `transactions` row `t` (joined to its top-up `u`) of this category.
    /// Prefixes are those of the transaction ids Tally makes (`RESERVED_TRANSACTION_PREFIX`).
    pub fn condition(self) -> &'static str {
        match self {
            Category::Usage => "t.kind = 'fee' AND substr(t.id, 1, 19) <> 'tally_subscription_'",
            Category::PlanFee => "t.kind = 'fee' AND substr(t.id, 1, 19) = 'tally_subscription_'",
            Category::Included => "t.kind = 'adjustment' AND substr(t.id, 1, 18) = 'tally_entitlement_'",
            Category::TopUp => "t.kind = 'top_up' AND (u.origin IS NULL OR u.origin <> 'auto')",
            Category::AutoTopUp => "t.kind = 'top_up' AND u.origin = 'auto'",
            Category::Promotion => {
                "t.kind = 'adjustment' AND substr(t.id, 1, 18) <> 'tally_entitlement_' AND t.detail = '{\"reason\":\"gift\"}'"
            }
            Category::Adjustment => {
                "t.kind NOT IN ('fee', 'top_up', 'expiry') AND substr(t.id, 1, 18) <> 'tally_entitlement_' \
                 AND t.detail <> '{\"reason\":\"gift\"}'"
            }
            Category::Expiry => "t.kind = 'expiry'",
        }
    }

    /// The category of a `transactions` row, by the same rules as [`Category::condition`].
    fn of_transaction(kind: &str, id: &str, detail: &str, origin: Option<&str>) -> Category {
        match kind {
            "fee" if id.starts_with("tally_subscription_") => Category::PlanFee,
            "fee" => Category::Usage,
            "top_up" if origin == Some("auto") => Category::AutoTopUp,
            "top_up" => Category::TopUp,
            "expiry" => Category::Expiry,
            _ if id.starts_with("tally_entitlement_") => Category::Included,
            _ if detail == r#"{"reason":"gift"}"# => Category::Promotion,
            _ => Category::Adjustment,
        }
    }
}

/// Which movements to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// An account: (name, asset).
    pub account: Option<(String, String)>,
    pub category: Option<Category>,
    /// Movements at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Movements before this instant.
    pub until: Option<DateTime<Utc>>,
}

/// Where a page starts: just past (older than) this position. Movements are ordered by
/// time, then transactions before usage fees, then by the transaction's sequence number or
/// the fee's id, all descending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at_micros: i64,
    pub position: Position,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    Transaction { sequence: i64 },
    Fee { id: String },
}

impl Cursor {
    /// As text for a URL: `{micros}t{sequence}` or `{micros}f{fee id}`.
    pub fn encode(&self) -> String {
        match &self.position {
            Position::Transaction { sequence } => format!("{}t{sequence}", self.at_micros),
            Position::Fee { id } => format!("{}f{id}", self.at_micros),
        }
    }

    pub fn parse(text: &str) -> Option<Cursor> {
        let split = text.find(['t', 'f'])?;
        let at_micros = text[..split].parse().ok()?;
        let rest = &text[split + 1..];
        let position = match &text[split..split + 1] {
            "t" => Position::Transaction { sequence: rest.parse().ok()? },
            _ if !rest.is_empty()
                && rest.len() <= 64
                && rest.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_') =>
            {
                Position::Fee { id: rest.to_owned() }
            }
            _ => return None,
        };
        Some(Cursor { at_micros, position })
    }
}

/// One movement of one account.
#[derive(Debug, Clone, PartialEq)]
pub struct Movement {
    pub category: Category,
    /// The wallet transaction's id.
    pub transaction_id: String,
    pub account_name: String,
    pub asset: String,
    /// Signed from the wallet's side: credits positive, debits negative.
    pub amount: Decimal,
    pub description: Option<String>,
    /// The movement's own time: a usage event's `occurred_at`, else when it was made.
    pub at: DateTime<Utc>,
    /// The transaction's details (JSON text): product name, subject, reason.
    pub detail: String,
    /// For usage fees: the price's name and the fee's details (JSON text: volume, unit price).
    pub price_name: Option<String>,
    pub fee_detail: Option<String>,
    pub cursor: Cursor,
}

impl Movement {
    fn rank(&self) -> (i64, u8) {
        (self.cursor.at_micros, matches!(self.cursor.position, Position::Transaction { .. }) as u8)
    }
}

/// The SQL of the usage-fee source, and its parameters after `customer_id` and `mode`.
fn fee_query(filter: &Filter, after: Option<&Cursor>, limit: i64) -> (String, Vec<Value>) {
    let mut sql = String::from(
        "SELECT t.id, f.account_name, f.asset, f.amount, t.description, t.detail, f.occurred_at, f.price_name, f.detail, f.id
         FROM event_fees f JOIN transactions t
              ON t.customer_id = f.customer_id AND t.id = 'tally_event_' || f.event_id || '_' || f.line
         WHERE f.customer_id = $1 AND f.mode = $2",
    );
    let mut values = Vec::new();
    let mut bind = |sql: &mut String, clause: &str, value: Value| {
        values.push(value);
        sql.push_str(&clause.replace('?', &format!("${}", values.len() + 2)));
    };
    if let Some(cursor) = after {
        match &cursor.position {
            // Transactions come first at equal times, so every fee of that instant is left.
            Position::Transaction { .. } => bind(&mut sql, " AND f.occurred_at <= ?", Value::Int(cursor.at_micros)),
            Position::Fee { id } => {
                bind(&mut sql, " AND f.occurred_at <= ?", Value::Int(cursor.at_micros));
                bind(&mut sql, " AND (f.occurred_at < ?", Value::Int(cursor.at_micros));
                bind(&mut sql, " OR f.id < ?)", Value::Text(id.clone()));
            }
        }
    }
    if let Some((name, asset)) = &filter.account {
        bind(&mut sql, " AND f.account_name = ?", Value::Text(name.clone()));
        bind(&mut sql, " AND f.asset = ?", Value::Text(asset.clone()));
    }
    if let Some(from) = filter.from {
        bind(&mut sql, " AND f.occurred_at >= ?", Value::from(from));
    }
    if let Some(until) = filter.until {
        bind(&mut sql, " AND f.occurred_at < ?", Value::from(until));
    }
    bind(&mut sql, " ORDER BY f.occurred_at DESC, f.id DESC LIMIT ?", Value::Int(limit));
    (sql, values)
}

/// The SQL of the transaction source, and its parameters after `customer_id` and `mode`.
fn transaction_query(filter: &Filter, after: Option<&Cursor>, limit: i64) -> (String, Vec<Value>) {
    // The condition on `id` is the one of the partial index `transactions_by_time`, spelled
    // the same so that both databases use it.
    let mut sql = String::from(
        "SELECT t.id, t.account_name, t.asset, t.amount, t.description, t.detail, t.created_at, t.sequence, t.kind, u.origin
         FROM transactions t LEFT JOIN top_ups u ON t.kind = 'top_up' AND u.id = substr(t.id, 14)
         WHERE t.customer_id = $1 AND substr(t.id, 1, 12) <> 'tally_event_' AND t.mode = $2",
    );
    let mut values = Vec::new();
    let mut bind = |sql: &mut String, clause: &str, value: Value| {
        values.push(value);
        sql.push_str(&clause.replace('?', &format!("${}", values.len() + 2)));
    };
    if let Some(cursor) = after {
        match &cursor.position {
            Position::Transaction { sequence } => {
                bind(&mut sql, " AND t.created_at <= ?", Value::Int(cursor.at_micros));
                bind(&mut sql, " AND (t.created_at < ?", Value::Int(cursor.at_micros));
                bind(&mut sql, " OR t.sequence < ?)", Value::Int(*sequence));
            }
            // Fees come after transactions at equal times: those of that instant are done.
            Position::Fee { .. } => bind(&mut sql, " AND t.created_at < ?", Value::Int(cursor.at_micros)),
        }
    }
    if let Some(category) = filter.category {
        sql.push_str(&format!(" AND {}", category.condition()));
    }
    if let Some((name, asset)) = &filter.account {
        bind(&mut sql, " AND t.account_name = ?", Value::Text(name.clone()));
        bind(&mut sql, " AND t.asset = ?", Value::Text(asset.clone()));
    }
    if let Some(from) = filter.from {
        bind(&mut sql, " AND t.created_at >= ?", Value::from(from));
    }
    if let Some(until) = filter.until {
        bind(&mut sql, " AND t.created_at < ?", Value::from(until));
    }
    bind(&mut sql, " ORDER BY t.created_at DESC, t.sequence DESC LIMIT ?", Value::Int(limit));
    (sql, values)
}

fn with_customer(customer_id: &str, mode: tally_core::Mode, rest: Vec<Value>) -> Vec<Value> {
    let mut values = vec![Value::from(customer_id), Value::from(mode.as_str())];
    values.extend(rest);
    values
}

/// The queries one page runs (usage fees, then transactions; either may be left out by the
/// filter), with their parameters: for `EXPLAIN`, and for [`page`].
pub fn queries(
    customer_id: &str,
    mode: tally_core::Mode,
    filter: &Filter,
    after: Option<&Cursor>,
    limit: i64,
) -> Vec<(String, Vec<Value>)> {
    let mut queries = Vec::new();
    if matches!(filter.category, None | Some(Category::Usage)) {
        let (sql, values) = fee_query(filter, after, limit);
        queries.push((sql, with_customer(customer_id, mode, values)));
    }
    let (sql, values) = transaction_query(filter, after, limit);
    queries.push((sql, with_customer(customer_id, mode, values)));
    queries
}

/// Up to `limit` movements older than `after` (from the newest without it), and the cursor
/// of the page after, if there are more.
pub fn page(
    conn: &mut dyn Conn,
    mode: tally_core::Mode,
    customer_id: &str,
    filter: &Filter,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<(Vec<Movement>, Option<Cursor>), StoreError> {
    let limit = limit.max(1);
    let mut sources: Vec<std::collections::VecDeque<Movement>> = Vec::new();
    for (sql, values) in queries(customer_id, mode, filter, after, limit + 1) {
        let is_fees = sql.contains("FROM event_fees");
        // Planned for its values, as list pages are (`repo::Filter::page`): a filter to a rare
        // kind (top-ups among a million fees) must not run on a plan kept for common ones.
        let rows = conn.query_planned_for_values(&sql, &values)?;
        let movements = rows
            .iter()
            .map(|row| if is_fees { fee_from_row(row) } else { transaction_from_row(row) })
            .collect::<Result<_, StoreError>>()?;
        sources.push(movements);
    }
    let mut page = Vec::new();
    let mut more = false;
    loop {
        let newest = sources
            .iter()
            .enumerate()
            .filter_map(|(index, source)| source.front().map(|movement| (movement.rank(), index)))
            .max_by_key(|(rank, _)| *rank);
        let Some((_, index)) = newest else { break };
        if page.len() as i64 == limit {
            more = true;
            break;
        }
        page.extend(sources[index].pop_front());
    }
    let next = if more { page.last().map(|movement: &Movement| movement.cursor.clone()) } else { None };
    Ok((page, next))
}

fn fee_from_row(row: &crate::Row) -> Result<Movement, StoreError> {
    let at = row.time(6)?;
    Ok(Movement {
        category: Category::Usage,
        transaction_id: row.text(0)?,
        account_name: row.text(1)?,
        asset: row.text(2)?,
        amount: -row.decimal(3)?,
        description: row.opt_text(4)?,
        detail: row.text(5)?,
        at,
        price_name: Some(row.text(7)?),
        fee_detail: Some(row.text(8)?),
        cursor: Cursor { at_micros: at.timestamp_micros(), position: Position::Fee { id: row.text(9)? } },
    })
}

fn transaction_from_row(row: &crate::Row) -> Result<Movement, StoreError> {
    let (id, detail, at) = (row.text(0)?, row.text(5)?, row.time(6)?);
    let origin = row.opt_text(9)?;
    Ok(Movement {
        category: Category::of_transaction(&row.text(8)?, &id, &detail, origin.as_deref()),
        transaction_id: id,
        account_name: row.text(1)?,
        asset: row.text(2)?,
        amount: row.decimal(3)?,
        description: row.opt_text(4)?,
        detail,
        at,
        price_name: None,
        fee_detail: None,
        cursor: Cursor { at_micros: at.timestamp_micros(), position: Position::Transaction { sequence: row.int(7)? } },
    })
}

/// Fees of one product on one day of the customer's calendar: `count` fees of `spent` each
/// (or one group's total, with `count` 1).
#[derive(Debug, Clone, PartialEq)]
pub struct ProductSpend {
    pub asset: String,
    /// The product's name, or `None` for charges made through the API (no product).
    pub product: Option<String>,
    pub plan_fee: bool,
    pub spent: Decimal,
    /// Days since the Unix epoch, on the customer's calendar.
    pub day: i64,
    pub count: i64,
}

/// The names of the products `ids` (ids not found are left out).
pub fn product_names(
    conn: &mut dyn Conn,
    mode: tally_core::Mode,
    ids: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (0..ids.len()).map(|index| format!("${}", index + 2)).collect();
    let mut values = vec![Value::from(mode.as_str())];
    values.extend(ids.iter().map(Value::from));
    conn.query(
        &format!("SELECT id, name FROM products WHERE mode = $1 AND id IN ({})", placeholders.join(", ")),
        &values,
    )?
    .iter()
    .map(|row| Ok((row.text(0)?, row.text(1)?)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_junk() {
        for cursor in [
            Cursor { at_micros: 1_700_000_000_000_000, position: Position::Transaction { sequence: 42 } },
            Cursor { at_micros: -5, position: Position::Fee { id: "fee_01abc".into() } },
        ] {
            assert_eq!(Cursor::parse(&cursor.encode()), Some(cursor));
        }
        for junk in ["", "12", "12t", "12tx", "x12t1", "12f", "12fa'b", "12fa b"] {
            assert_eq!(Cursor::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn categories_match_their_sql() {
        assert_eq!(Category::of_transaction("fee", "tally_subscription_s_p_1", "{}", None), Category::PlanFee);
        assert_eq!(Category::of_transaction("fee", "charge-1", "{}", None), Category::Usage);
        assert_eq!(Category::of_transaction("top_up", "tally_top_up_t", "{}", Some("auto")), Category::AutoTopUp);
        assert_eq!(Category::of_transaction("top_up", "tally_top_up_t", "{}", Some("portal")), Category::TopUp);
        assert_eq!(Category::of_transaction("adjustment", "gift-1", r#"{"reason":"gift"}"#, None), Category::Promotion);
        assert_eq!(
            Category::of_transaction("adjustment", "tally_entitlement_x", r#"{"reason":"entitlement"}"#, None),
            Category::Included
        );
        assert_eq!(
            Category::of_transaction("adjustment", "r-1", r#"{"reason":"external_refund"}"#, None),
            Category::Adjustment
        );
        for category in Category::ALL {
            assert_eq!(Category::parse(category.as_str()), Some(category));
        }
    }
}
