//! Products and their versions. A version's definition (prices and entitlements) is stored as
//! the JSON the API speaks; the HTTP layer parses it (and caches the parsed form: versions
//! never change once written).

use super::Filter;
use crate::conn::Conn;
use crate::{params, StoreError};
use chrono::{DateTime, Utc};
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub id: String,
    pub code: String,
    pub name: String,
    pub default_version: Option<i64>,
    pub archived_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStatus {
    Draft,
    Published,
    Archived,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Draft => "draft",
            VersionStatus::Published => "published",
            VersionStatus::Archived => "archived",
        }
    }

    pub fn parse(text: &str) -> Option<VersionStatus> {
        match text {
            "draft" => Some(VersionStatus::Draft),
            "published" => Some(VersionStatus::Published),
            "archived" => Some(VersionStatus::Archived),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub product_id: String,
    pub version: i64,
    pub status: VersionStatus,
    /// JSON: `{"prices": [...], "entitlements": [...]}`.
    pub definition: String,
    pub created_at: DateTime<Utc>,
}

pub fn insert(conn: &mut dyn Conn, mode: Mode, product: &Product) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO products (id, mode, code, name, default_version, archived_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        params![
            &product.id,
            mode.as_str(),
            &product.code,
            &product.name,
            product.default_version,
            product.archived_at,
            product.created_at
        ],
    )?;
    Ok(())
}

pub fn update(conn: &mut dyn Conn, product: &Product) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE products SET default_version = $2, archived_at = $3 WHERE id = $1",
        params![&product.id, product.default_version, product.archived_at],
    )?;
    Ok(())
}

const COLUMNS: &str = "id, code, name, default_version, archived_at, created_at";

fn from_row(row: &crate::Row) -> Result<Product, StoreError> {
    Ok(Product {
        id: row.text(0)?,
        code: row.text(1)?,
        name: row.text(2)?,
        default_version: row.opt_int(3)?,
        archived_at: row.opt_time(4)?,
        created_at: row.time(5)?,
    })
}

pub fn get(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Option<Product>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM products WHERE mode = $1 AND id = $2"),
        params![mode.as_str(), id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// Locks the product row so that version numbers and the default are changed one at a time.
pub fn get_for_update(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Option<Product>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM products WHERE mode = $1 AND id = $2{}", conn.for_update());
    conn.query_optional(&sql, params![mode.as_str(), id])?.as_ref().map(from_row).transpose()
}

/// Locks the product row against deletion and archiving (which lock it `FOR UPDATE`) while
/// letting other subscribers share it, so that a subscription is never made on a product
/// being deleted at the same moment. SQLite's single writer needs no lock.
pub fn get_for_share(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Option<Product>, StoreError> {
    let lock = match conn.dialect() {
        crate::conn::Dialect::Sqlite => "",
        crate::conn::Dialect::Postgres => " FOR SHARE",
    };
    let sql = format!("SELECT {COLUMNS} FROM products WHERE mode = $1 AND id = $2{lock}");
    conn.query_optional(&sql, params![mode.as_str(), id])?.as_ref().map(from_row).transpose()
}

pub fn find_by_code(conn: &mut dyn Conn, mode: Mode, code: &str) -> Result<Option<Product>, StoreError> {
    conn.query_optional(
        &format!("SELECT {COLUMNS} FROM products WHERE mode = $1 AND code = $2"),
        params![mode.as_str(), code],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// The order of `GET /products`: oldest first.
pub const LIST_KEYS: super::Keys =
    super::Keys { tag: "products", columns: &["created_at", "id"], kinds: "it", descending: false };

pub fn list(
    conn: &mut dyn Conn,
    mode: Mode,
    code: Option<&str>,
    window: &super::Window,
) -> Result<super::Listing<Product>, StoreError> {
    let mut query = Filter::new("mode = ?", mode.as_str());
    if let Some(code) = code {
        query.and("code = ?", code);
    }
    query.page(conn, "products", COLUMNS, &LIST_KEYS, window, from_row)
}

pub fn insert_version(conn: &mut dyn Conn, mode: Mode, version: &Version) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO product_versions (product_id, version, mode, status, definition, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        params![
            &version.product_id,
            version.version,
            mode.as_str(),
            version.status.as_str(),
            &version.definition,
            version.created_at
        ],
    )?;
    Ok(())
}

pub fn set_version_status(
    conn: &mut dyn Conn,
    product_id: &str,
    version: i64,
    status: VersionStatus,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE product_versions SET status = $3 WHERE product_id = $1 AND version = $2",
        params![product_id, version, status.as_str()],
    )?;
    Ok(())
}

const VERSION_COLUMNS: &str = "product_id, version, status, definition, created_at";

fn version_from_row(row: &crate::Row) -> Result<Version, StoreError> {
    Ok(Version {
        product_id: row.text(0)?,
        version: row.int(1)?,
        status: VersionStatus::parse(&row.text(2)?).ok_or_else(|| StoreError::Corrupt("version status".into()))?,
        definition: row.text(3)?,
        created_at: row.time(4)?,
    })
}

pub fn get_version(conn: &mut dyn Conn, product_id: &str, version: i64) -> Result<Option<Version>, StoreError> {
    conn.query_optional(
        &format!("SELECT {VERSION_COLUMNS} FROM product_versions WHERE product_id = $1 AND version = $2"),
        params![product_id, version],
    )?
    .as_ref()
    .map(version_from_row)
    .transpose()
}

/// Every version of a product, newest first.
pub fn versions(conn: &mut dyn Conn, product_id: &str) -> Result<Vec<Version>, StoreError> {
    conn.query(
        &format!("SELECT {VERSION_COLUMNS} FROM product_versions WHERE product_id = $1 ORDER BY version DESC"),
        params![product_id],
    )?
    .iter()
    .map(version_from_row)
    .collect()
}

pub fn latest_version_number(conn: &mut dyn Conn, product_id: &str) -> Result<i64, StoreError> {
    conn.count("SELECT COALESCE(MAX(version), 0) FROM product_versions WHERE product_id = $1", params![product_id])
}
