//! Every line of SQL Tally runs. Functions take an open transaction (`&mut dyn Conn`) and
//! plain records; they do no business logic and no JSON beyond (de)serialising metadata.

pub mod api_keys;
pub mod assets;
pub mod auto_top_ups;
pub mod backlog;
pub mod connected_accounts;
pub mod customers;
pub mod events;
pub mod export;
pub mod grant_cache;
pub mod idempotency;
pub mod job_retries;
pub mod ledger;
pub mod portal;
pub mod products;
pub mod subscriptions;
pub mod topups;
pub mod transactions;
pub mod vendors;
pub mod wallets;
pub mod webhooks;

use crate::conn::Conn;
use crate::{params, StoreError};
use std::collections::BTreeMap;

/// One page of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: i64,
    pub limit: i64,
}

pub type Metadata = BTreeMap<String, String>;

pub fn metadata_to_text(metadata: &Metadata) -> String {
    serde_json::to_string(metadata).unwrap_or_else(|_| "{}".to_owned())
}

pub fn metadata_from_text(text: &str) -> Result<Metadata, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt(format!("metadata: {error}")))
}

/// The identifier of this Tally installation, made at the first migration.
pub fn platform_account_id(conn: &mut dyn Conn) -> Result<String, StoreError> {
    conn.query_one("SELECT value FROM tally_meta WHERE key = $1", params!["platform_account_id"])?.text(0)
}

/// A `WHERE` clause built condition by condition, numbering the parameters as it goes, and
/// the two queries every paged listing needs: the total count, and one page in a fixed order.
pub struct Filter {
    conditions: Vec<String>,
    values: Vec<crate::conn::Value>,
}

impl Filter {
    /// Starts with one condition; `?` in a condition stands for its value.
    pub fn new(condition: &str, value: impl Into<crate::conn::Value>) -> Filter {
        let mut filter = Filter { conditions: Vec::new(), values: Vec::new() };
        filter.and(condition, value);
        filter
    }

    pub fn and(&mut self, condition: &str, value: impl Into<crate::conn::Value>) {
        self.values.push(value.into());
        self.conditions.push(condition.replace('?', &format!("${}", self.values.len())));
    }

    /// A condition that takes no value.
    pub fn and_sql(&mut self, condition: &str) {
        self.conditions.push(condition.to_owned());
    }

    /// `column IN (…)` over `values`; nothing when `values` is empty.
    pub fn and_in(&mut self, column: &str, values: &[String]) {
        if values.is_empty() {
            return;
        }
        let start = self.values.len() + 1;
        let placeholders: Vec<String> = (0..values.len()).map(|index| format!("${}", start + index)).collect();
        self.values.extend(values.iter().map(crate::conn::Value::from));
        self.conditions.push(format!("{column} IN ({})", placeholders.join(", ")));
    }

    /// Counts the matching rows of `from` and reads one page of `columns` in `order`.
    pub fn page<T>(
        mut self,
        conn: &mut dyn Conn,
        from: &str,
        columns: &str,
        order: &str,
        page: Page,
        read: impl Fn(&crate::Row) -> Result<T, StoreError>,
    ) -> Result<(Vec<T>, i64), StoreError> {
        let condition = self.conditions.join(" AND ");
        let total = conn.count(&format!("SELECT COUNT(*) FROM {from} WHERE {condition}"), &self.values)?;
        let limit = self.values.len() + 1;
        self.values.push(page.limit.into());
        self.values.push(page.offset.into());
        let sql = format!(
            "SELECT {columns} FROM {from} WHERE {condition} ORDER BY {order} LIMIT ${limit} OFFSET ${}",
            limit + 1
        );
        let items = conn.query(&sql, &self.values)?.iter().map(read).collect::<Result<_, _>>()?;
        Ok((items, total))
    }
}
