//! Every line of SQL Tally runs. Functions take an open transaction (`&mut dyn Conn`) and
//! plain records; they do no business logic and no JSON beyond (de)serialising metadata.

pub mod activity;
pub mod api_keys;
pub mod assets;
pub mod auto_top_ups;
pub mod backlog;
pub mod connected_accounts;
pub mod customers;
pub mod events;
pub mod export;
pub mod grant_cache;
pub mod holds;
pub mod idempotency;
pub mod job_retries;
pub mod ledger;
pub mod portal;
pub mod products;
pub mod revenue;
pub mod rollups;
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

/// How a listing orders its rows and how its keyset cursors look: `columns` (all `NOT NULL`,
/// the last one unique) in one direction, and a `tag` naming the listing so that a cursor given
/// out by one endpoint is refused by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    pub tag: &'static str,
    pub columns: &'static [&'static str],
    /// One letter per column: `i` an integer, `t` text.
    pub kinds: &'static str,
    pub descending: bool,
}

/// Where a keyset page starts: after (`next`) or before (`prev`) the row with these key values.
#[derive(Debug, Clone, PartialEq)]
pub enum Cursor {
    After(Vec<crate::conn::Value>),
    Before(Vec<crate::conn::Value>),
}

impl Cursor {
    /// Opaque to clients: the hex of `n` or `p`, the listing's tag and the key values as JSON.
    pub fn encode(&self, keys: &Keys) -> String {
        let (direction, values) = match self {
            Cursor::After(values) => ("n", values),
            Cursor::Before(values) => ("p", values),
        };
        let values: Vec<serde_json::Value> = values
            .iter()
            .map(|value| match value {
                crate::conn::Value::Int(number) => serde_json::Value::from(*number),
                crate::conn::Value::Text(text) => serde_json::Value::from(text.as_str()),
                crate::conn::Value::Null => serde_json::Value::Null,
            })
            .collect();
        hex::encode(serde_json::json!([direction, keys.tag, values]).to_string())
    }

    /// The cursor `text` encodes, when it is one `keys`' listing gave out for `direction`
    /// (`n` for `next`, `p` for `prev`).
    pub fn decode(text: &str, direction: char, keys: &Keys) -> Option<Cursor> {
        let json: serde_json::Value = serde_json::from_slice(&hex::decode(text).ok()?).ok()?;
        let parts = json.as_array()?;
        if parts.len() != 3 || parts[0].as_str()? != direction.to_string() || parts[1].as_str()? != keys.tag {
            return None;
        }
        let raw = parts[2].as_array()?;
        if raw.len() != keys.columns.len() {
            return None;
        }
        let values = raw
            .iter()
            .zip(keys.kinds.chars())
            .map(|(value, kind)| match kind {
                'i' => value.as_i64().map(crate::conn::Value::Int),
                _ => value.as_str().map(|text| crate::conn::Value::Text(text.to_owned())),
            })
            .collect::<Option<Vec<_>>>()?;
        Some(if direction == 'n' { Cursor::After(values) } else { Cursor::Before(values) })
    }
}

/// What a listing request asks for: a page by `offset`, or by a keyset `cursor` (then `offset`
/// is not used), and whether `total` must be exact however many rows match.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub page: Page,
    pub cursor: Option<Cursor>,
    pub exact_total: bool,
}

impl From<Page> for Window {
    fn from(page: Page) -> Window {
        Window { page, cursor: None, exact_total: false }
    }
}

/// Counting stops here unless the request asks for an exact total: counting every row of a
/// large table cannot stay fast. Past it, `total` is a lower bound above this number.
pub const COUNT_LIMIT: i64 = 10_000;

/// How many rows of `from` match `condition`, counting no further than past [`COUNT_LIMIT`]:
/// exact up to it, `COUNT_LIMIT + 1` ("more") beyond, so a count costs the same at any size.
pub(crate) fn count_up_to_limit(
    conn: &mut dyn Conn,
    from: &str,
    condition: &str,
    values: &[crate::conn::Value],
) -> Result<i64, StoreError> {
    count_planned(
        conn,
        &format!("SELECT COUNT(*) FROM (SELECT 1 FROM {from} WHERE {condition} LIMIT {}) counted", COUNT_LIMIT + 1),
        values,
    )
}

/// A count planned for its values (see `Conn::query_planned_for_values`), as a list's page is.
fn count_planned(conn: &mut dyn Conn, sql: &str, values: &[crate::conn::Value]) -> Result<i64, StoreError> {
    match conn.query_planned_for_values(sql, values)?.first() {
        Some(row) => row.int(0),
        None => Err(StoreError::Corrupt("a count returned no row".into())),
    }
}

/// One page of a listing: its items, how many rows match (exact up to [`COUNT_LIMIT`], or when
/// asked), and the cursors of the neighbouring pages, when there are rows there.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub next: Option<Cursor>,
    pub prev: Option<Cursor>,
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
    /// What [`Filter::page`] counts the matches over, when not the page's own `from`.
    count_from: Option<&'static str>,
    /// Columns of a joined table equal to the keys (see [`Filter::keys_also_on`]).
    key_mirrors: &'static [&'static str],
}

impl Filter {
    /// Starts with one condition; `?` in a condition stands for its value.
    pub fn new(condition: &str, value: impl Into<crate::conn::Value>) -> Filter {
        let mut filter = Filter { conditions: Vec::new(), values: Vec::new(), count_from: None, key_mirrors: &[] };
        filter.and(condition, value);
        filter
    }

    /// Counts the matches over `from` alone: for a listing whose joins add columns but never
    /// rows (each row joins exactly one row of each other table), so that the count reads one
    /// index instead of joining up to [`COUNT_LIMIT`] rows. The conditions must name only its
    /// columns.
    pub fn counting_over(mut self, from: &'static str) -> Filter {
        self.count_from = Some(from);
        self
    }

    /// States a cursor's range on `columns` too: columns of a joined table that the join makes
    /// equal to the keys, one for each. PostgreSQL carries an equality through a join but not
    /// a range, and a merge join then read the joined table from its start up to the cursor
    /// (137 ms at the 100,000th of a product's subscribers).
    pub fn keys_also_on(mut self, columns: &'static [&'static str]) -> Filter {
        self.key_mirrors = columns;
        self
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

    /// Counts the matching rows of `from` (see [`COUNT_LIMIT`]) and reads one page of
    /// `columns` in the order of `keys`, from the window's offset or cursor.
    pub fn page<T>(
        self,
        conn: &mut dyn Conn,
        from: &str,
        columns: &str,
        keys: &Keys,
        window: &Window,
        read: impl Fn(&crate::Row) -> Result<T, StoreError>,
    ) -> Result<Listing<T>, StoreError> {
        let condition = self.conditions.join(" AND ");
        let counted = self.count_from.unwrap_or(from);
        let mut total = if window.exact_total {
            count_planned(conn, &format!("SELECT COUNT(*) FROM {counted} WHERE {condition}"), &self.values)?
        } else {
            count_up_to_limit(conn, counted, &condition, &self.values)?
        };
        let key_list = keys.columns.join(", ");
        // Rows after (`later`) or before a position in the listing's order (smaller keys after
        // it when it descends), the position's own row too when `inclusive`.
        let beside =
            |values: &mut Vec<crate::conn::Value>, key: &[crate::conn::Value], later: bool, inclusive: bool| {
                let start = values.len() + 1;
                values.extend(key.iter().cloned());
                let placeholders: Vec<String> = (0..key.len()).map(|index| format!("${}", start + index)).collect();
                let comparison = if later == keys.descending { "<" } else { ">" };
                let equal = if inclusive { "=" } else { "" };
                let placeholders = placeholders.join(", ");
                let mut condition = format!("({key_list}) {comparison}{equal} ({placeholders})");
                if !self.key_mirrors.is_empty() {
                    let mirrors = self.key_mirrors.join(", ");
                    condition.push_str(&format!(" AND ({mirrors}) {comparison}{equal} ({placeholders})"));
                }
                condition
            };
        let after = |values: &mut Vec<crate::conn::Value>, key: &[crate::conn::Value], later: bool| -> String {
            beside(values, key, later, false)
        };
        let backward = matches!(window.cursor, Some(Cursor::Before(_)));
        let direction = if keys.descending != backward { "DESC" } else { "ASC" };
        let order: Vec<String> = keys.columns.iter().map(|column| format!("{column} {direction}")).collect();
        let order = order.join(", ");
        let offset = if window.cursor.is_none() { window.page.offset } else { 0 };
        let mut values = self.values.clone();
        // `None` when no row is at the offset: the page is empty.
        let page_condition = match &window.cursor {
            None if offset > 0 => {
                // The rows an offset skips are found by their keys alone, over the counted
                // table (its index, without the joins and the page's columns), and the page
                // starts at the first row kept: reading and joining the skipped rows cost
                // 70-100 ms at offset 10,000 on PostgreSQL (docs/benchmarks.md).
                let first_kept = format!(
                    "SELECT {key_list} FROM {counted} WHERE {condition} ORDER BY {order} LIMIT 1 OFFSET {offset}"
                );
                let first_kept = conn.query_planned_for_values(&first_kept, &self.values)?.into_iter().next();
                first_kept.map(|row| format!(" AND {}", beside(&mut values, &row.0, true, true)))
            }
            None => Some(String::new()),
            Some(Cursor::After(key)) => Some(format!(" AND {}", after(&mut values, key, true))),
            Some(Cursor::Before(key)) => Some(format!(" AND {}", after(&mut values, key, false))),
        };
        let rows = match page_condition {
            Some(page_condition) => {
                let sql = format!(
                    "SELECT {columns}, {key_list} FROM {from} WHERE {condition}{page_condition} ORDER BY {order} LIMIT {}",
                    window.page.limit + 1
                );
                // Planned for its values: a list's filters can be skewed (few events without
                // fees, among millions), and a plan PostgreSQL kept for typical values read
                // every event of the mode for the rare ones (4.9 s at 3 million events,
                // docs/benchmarks.md).
                conn.query_planned_for_values(&sql, &values)?
            }
            None => Vec::new(),
        };
        let more = rows.len() as i64 > window.page.limit;
        let mut items = Vec::new();
        let mut row_keys = Vec::new();
        for row in rows.iter().take(window.page.limit as usize) {
            items.push(read(row)?);
            row_keys.push(row.0[row.0.len() - keys.columns.len()..].to_vec());
        }
        if backward {
            items.reverse();
            row_keys.reverse();
        }
        let mut exists = |key: &[crate::conn::Value], later: bool| -> Result<bool, StoreError> {
            let mut values = self.values.clone();
            let sql = format!("SELECT 1 FROM {from} WHERE {condition} AND {} LIMIT 1", after(&mut values, key, later));
            Ok(conn.query_optional(&sql, &values)?.is_some())
        };
        let (next, prev) = match (&window.cursor, row_keys.first(), row_keys.last()) {
            (_, None, _) | (_, _, None) => (None, None),
            (None, Some(first), Some(last)) => {
                (more.then(|| Cursor::After(last.clone())), (offset > 0).then(|| Cursor::Before(first.clone())))
            }
            (Some(Cursor::After(_)), Some(first), Some(last)) => (
                more.then(|| Cursor::After(last.clone())),
                exists(first, false)?.then(|| Cursor::Before(first.clone())),
            ),
            (Some(Cursor::Before(_)), Some(first), Some(last)) => {
                (exists(last, true)?.then(|| Cursor::After(last.clone())), more.then(|| Cursor::Before(first.clone())))
            }
        };
        if !window.exact_total && total > COUNT_LIMIT {
            total = total.max(offset + items.len() as i64 + i64::from(more));
        }
        Ok(Listing { items, total, next, prev })
    }
}

/// The most rows one multi-row `INSERT` of [`insert_rows`] carries.
const MAX_ROWS_PER_INSERT: usize = 64;

/// The most rows one statement of arrays carries (`Conn::insert_columns`): a bound on one
/// message's size, far above what a round writes.
const MAX_ROWS_PER_ARRAYS: usize = 10_000;

/// Inserts rows of `width` values each (`values` holds them one row after another): `head` is
/// `INSERT INTO table (columns)`, `tail` what follows the values (`RETURNING …`, or empty).
/// Returns the rows `tail` returns. See [`write_rows`].
pub(crate) fn insert_rows(
    conn: &mut dyn Conn,
    head: &'static str,
    width: usize,
    values: &[crate::conn::Value],
    tail: &'static str,
) -> Result<Vec<crate::Row>, StoreError> {
    write_rows(conn, &[head, tail], head, width, values, tail)
}

/// [`insert_rows`] for a statement that returns nothing (an upsert's `ON CONFLICT` as `tail`).
pub(crate) fn execute_rows(
    conn: &mut dyn Conn,
    head: &'static str,
    width: usize,
    values: &[crate::conn::Value],
    tail: &'static str,
) -> Result<(), StoreError> {
    write_rows(conn, &[head, tail], head, width, values, tail).map(drop)
}

/// Writes rows of `width` values each as `head VALUES (…), … tail`, rows in their order, and
/// returns the rows `tail` returns. Where the backend takes a column's values as one array
/// (PostgreSQL, `Conn::insert_columns`) that is one statement, whatever the number of rows;
/// elsewhere multi-row `VALUES` in chunks of a power of two rows, at most
/// [`MAX_ROWS_PER_INSERT`], so that a table needs few statement texts in the statement caches
/// whatever the batch's size. `key` names the statement (its `&'static` parts) for the
/// per-thread text cache ([`statement_text`]); `head` and `tail` must be the same for the same
/// key.
pub fn write_rows(
    conn: &mut dyn Conn,
    key: &[&'static str],
    head: &str,
    width: usize,
    values: &[crate::conn::Value],
    tail: &str,
) -> Result<Vec<crate::Row>, StoreError> {
    debug_assert!(width > 0 && values.len().is_multiple_of(width));
    if values.is_empty() {
        return Ok(Vec::new());
    }
    // Each text is formatted once per thread: a 64-row statement has a thousand placeholders,
    // and formatting them for every chunk cost more than binding.
    let marker = placeholder_marker(conn.dialect());
    let text = |rows: usize| {
        statement_text(key, &[marker as usize, width, rows], || multi_row_sql(marker, head, width, rows, tail))
    };
    let one_row = text(1);
    // A key names one statement: a text cached under it for another head or tail would write
    // these rows into that statement's table and columns.
    debug_assert!(one_row.starts_with(head) && one_row.ends_with(tail), "{key:?} names another statement");
    let statement = crate::conn::RowsStatement { head, width, tail, one_row: &one_row };
    let mut arrays = values.chunks(MAX_ROWS_PER_ARRAYS * width);
    let first = arrays.next().unwrap_or_default();
    if let Some(rows) = conn.insert_columns(&statement, first) {
        let mut returned = rows?;
        for chunk in arrays {
            let rows = conn
                .insert_columns(&statement, chunk)
                .unwrap_or_else(|| Err(StoreError::Database("the backend stopped taking arrays mid-write".into())));
            returned.extend(rows?);
        }
        return Ok(returned);
    }
    let returning = tail.as_bytes().windows(9).any(|word| word.eq_ignore_ascii_case(b"RETURNING"));
    let mut returned = Vec::new();
    let mut rest = values;
    while !rest.is_empty() {
        let rows = chunk_rows(rest.len() / width);
        let (chunk, after) = rest.split_at(rows * width);
        if returning {
            returned.extend(conn.query(&text(rows), chunk)?);
        } else {
            conn.execute(&text(rows), chunk)?;
        }
        rest = after;
    }
    Ok(returned)
}

/// Runs the query `sql` makes for a list of placeholders (after `leading`'s) over `ids` in
/// chunks of at most 64, each padded to a power of two by repeating its last id (so that few
/// statement texts are prepared), handing `each` every row.
pub(crate) fn query_for_ids(
    conn: &mut dyn Conn,
    ids: &[&str],
    leading: &[crate::conn::Value],
    sql: impl Fn(&str) -> String,
    mut each: impl FnMut(&crate::Row) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for chunk in ids.chunks(64) {
        let padded = chunk.len().next_power_of_two();
        let first = leading.len() + 1;
        let list: Vec<String> = (first..first + padded).map(|index| format!("${index}")).collect();
        let mut params = leading.to_vec();
        params.extend((0..padded).map(|index| crate::conn::Value::from(chunk[index.min(chunk.len() - 1)])));
        for row in conn.query(&sql(&list.join(", ")), &params)? {
            each(&row)?;
        }
    }
    Ok(())
}

/// The placeholder character of `dialect`'s multi-row statements: SQLite's own `?N`, which it
/// would otherwise rewrite `$N` into every time.
pub(crate) fn placeholder_marker(dialect: crate::conn::Dialect) -> char {
    if dialect == crate::conn::Dialect::Sqlite {
        '?'
    } else {
        '$'
    }
}

/// The rows of the next chunk when `remaining` are left: the largest power of two that fits.
pub(crate) fn chunk_rows(remaining: usize) -> usize {
    let largest = if remaining.is_power_of_two() { remaining } else { remaining.next_power_of_two() / 2 };
    largest.min(MAX_ROWS_PER_INSERT)
}

/// A statement text that `build` makes from `'static` texts and some numbers, built once per
/// thread and then shared: the hot path runs the same few statements for every batch, and
/// formatting them each time cost more than running them. Keyed by the texts' addresses and
/// lengths (a `'static` text's address and length always name the same bytes; the length
/// tells apart a literal from a longer one it begins) and the numbers.
pub(crate) fn statement_text(
    texts: &[&'static str],
    numbers: &[usize],
    build: impl FnOnce() -> String,
) -> std::rc::Rc<str> {
    type Texts = std::collections::HashMap<Vec<usize>, std::rc::Rc<str>>;
    thread_local! {
        static TEXTS: std::cell::RefCell<Texts> = Default::default();
    }
    let mut key = Vec::with_capacity(texts.len() * 2 + numbers.len());
    for text in texts {
        key.extend([text.as_ptr() as usize, text.len()]);
    }
    key.extend_from_slice(numbers);
    TEXTS.with(|cache| cache.borrow_mut().entry(key).or_insert_with(|| build().into()).clone())
}

pub(crate) fn multi_row_sql(marker: char, head: &str, width: usize, rows: usize, tail: &str) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * width * 6 + 8);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "{marker}{}", row * width + column + 1);
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

#[cfg(test)]
mod multi_row_tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_up_to_the_limit_and_cover_every_row() {
        for total in 1..300 {
            let mut left = total;
            while left > 0 {
                let rows = chunk_rows(left);
                assert!(rows.is_power_of_two() && rows <= MAX_ROWS_PER_INSERT && rows <= left);
                left -= rows;
            }
        }
    }

    #[test]
    fn placeholders_number_rows_one_after_another() {
        assert_eq!(
            multi_row_sql('$', "INSERT INTO t (a, b)", 2, 2, ""),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            multi_row_sql('?', "INSERT INTO t (a)", 1, 2, " RETURNING a"),
            "INSERT INTO t (a) VALUES (?1), (?2) RETURNING a"
        );
    }
}
