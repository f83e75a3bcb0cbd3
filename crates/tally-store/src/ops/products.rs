//! The product catalog: products, their numbered versions, publishing and the default.
//!
//! Rules: versions count from 1; a published version never changes (a change is a new
//! version); only published versions can be the default or be subscribed to; the first
//! version published becomes the default when there is none; the default version cannot be
//! archived (make another one default first); a product nobody ever subscribed to is deleted,
//! otherwise it is archived with all its versions and existing subscriptions keep their pins.

use super::OpError;
use crate::conn::Conn;
use crate::ids;
use crate::params;
use crate::repo::products::{self, Product, Version, VersionStatus};
use crate::repo::subscriptions;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use tally_core::catalog::ProductVersion;
use tally_core::Mode;

/// Parsed product versions, by product id and version number. The HTTP layer implements it
/// (it owns the JSON the definitions are stored in) and caches: versions never change.
pub trait Catalog: Send + Sync {
    fn version(
        &self,
        conn: &mut dyn Conn,
        mode: Mode,
        product_id: &str,
        version: i64,
    ) -> Result<Arc<ProductVersion>, OpError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Number(i64),
    Default,
}

pub fn not_found(product_id: &str) -> OpError {
    OpError::NotFound(format!("product {product_id} not found"))
}

pub fn create(
    conn: &mut dyn Conn,
    mode: Mode,
    code: &str,
    name: &str,
    definition: &str,
    publish: bool,
    now: DateTime<Utc>,
) -> Result<(Product, Version), OpError> {
    if products::find_by_code(conn, mode, code)?.is_some() {
        return Err(OpError::Conflict(format!("a product with code {code} exists already")));
    }
    let status = if publish { VersionStatus::Published } else { VersionStatus::Draft };
    let product = Product {
        id: ids::new_id("prp"),
        code: code.to_owned(),
        name: name.to_owned(),
        default_version: publish.then_some(1),
        archived_at: None,
        created_at: now,
    };
    products::insert(conn, mode, &product).map_err(|error| match error {
        crate::StoreError::Conflict(_) => OpError::Conflict(format!("a product with code {code} exists already")),
        other => other.into(),
    })?;
    let version = Version {
        product_id: product.id.clone(),
        version: 1,
        status,
        definition: definition.to_owned(),
        created_at: now,
    };
    products::insert_version(conn, mode, &version)?;
    Ok((product, version))
}

fn lock_active(conn: &mut dyn Conn, mode: Mode, product_id: &str) -> Result<Product, OpError> {
    let product = products::get_for_update(conn, mode, product_id)?.ok_or_else(|| not_found(product_id))?;
    if product.archived_at.is_some() {
        return Err(OpError::Conflict(format!("product {product_id} is archived")));
    }
    Ok(product)
}

pub fn create_version(
    conn: &mut dyn Conn,
    mode: Mode,
    product_id: &str,
    definition: &str,
    publish: bool,
    now: DateTime<Utc>,
) -> Result<(Product, Version), OpError> {
    let mut product = lock_active(conn, mode, product_id)?;
    let number = products::latest_version_number(conn, product_id)? + 1;
    let status = if publish { VersionStatus::Published } else { VersionStatus::Draft };
    let version = Version {
        product_id: product_id.to_owned(),
        version: number,
        status,
        definition: definition.to_owned(),
        created_at: now,
    };
    products::insert_version(conn, mode, &version)?;
    if publish && product.default_version.is_none() {
        product.default_version = Some(number);
        products::update(conn, &product)?;
    }
    Ok((product, version))
}

/// The product and the version a reference names.
pub fn resolve(
    conn: &mut dyn Conn,
    mode: Mode,
    product_id: &str,
    reference: VersionRef,
) -> Result<(Product, Version), OpError> {
    let product = products::get(conn, mode, product_id)?.ok_or_else(|| not_found(product_id))?;
    let number = match reference {
        VersionRef::Number(number) => number,
        VersionRef::Default => product
            .default_version
            .ok_or_else(|| OpError::NotFound(format!("product {product_id} has no default version: publish one")))?,
    };
    let version = products::get_version(conn, product_id, number)?
        .ok_or_else(|| OpError::NotFound(format!("product {product_id} has no version {number}")))?;
    Ok((product, version))
}

/// [`resolve`] for a subscription about to pin the version: the product row stays locked
/// against a concurrent delete or archive until the transaction ends, so the product a
/// subscription pins always exists (a delete that comes second sees the subscription and
/// archives instead; a subscription that comes second finds no product).
pub fn resolve_for_subscribing(
    conn: &mut dyn Conn,
    mode: Mode,
    product_id: &str,
    reference: VersionRef,
) -> Result<(Product, Version), OpError> {
    products::get_for_share(conn, mode, product_id)?.ok_or_else(|| not_found(product_id))?;
    resolve(conn, mode, product_id, reference)
}

/// Publishes a draft and/or makes a published version the default.
pub fn update_version(
    conn: &mut dyn Conn,
    mode: Mode,
    product_id: &str,
    reference: VersionRef,
    publish: Option<bool>,
    make_default: Option<bool>,
) -> Result<(), OpError> {
    let mut product = lock_active(conn, mode, product_id)?;
    let (_, version) = resolve(conn, mode, product_id, reference)?;
    let mut status = version.status;
    match (publish, status) {
        (Some(true), VersionStatus::Draft) => {
            status = VersionStatus::Published;
            products::set_version_status(conn, product_id, version.version, status)?;
            if product.default_version.is_none() {
                product.default_version = Some(version.version);
            }
        }
        (Some(true), VersionStatus::Published) | (Some(false), VersionStatus::Draft) | (None, _) => {}
        (Some(true), VersionStatus::Archived) => {
            return Err(OpError::Conflict(format!("version {} is archived and cannot be published", version.version)))
        }
        (Some(false), VersionStatus::Published | VersionStatus::Archived) => {
            return Err(OpError::Conflict("a published version cannot be unpublished: archive it instead".into()))
        }
    }
    match make_default {
        Some(true) if status != VersionStatus::Published => {
            return Err(OpError::Conflict(format!(
                "version {} is not published: only published versions can be default",
                version.version
            )))
        }
        Some(true) => product.default_version = Some(version.version),
        Some(false) if product.default_version == Some(version.version) => {
            return Err(OpError::Conflict(
                "a product keeps a default version: make another version default instead".into(),
            ))
        }
        Some(false) | None => {}
    }
    products::update(conn, &product)?;
    Ok(())
}

pub fn archive_version(
    conn: &mut dyn Conn,
    mode: Mode,
    product_id: &str,
    reference: VersionRef,
) -> Result<(), OpError> {
    let product = lock_active(conn, mode, product_id)?;
    let (_, version) = resolve(conn, mode, product_id, reference)?;
    if product.default_version == Some(version.version) {
        return Err(OpError::Conflict(format!(
            "version {} is the default version; make another version default before archiving it",
            version.version
        )));
    }
    products::set_version_status(conn, product_id, version.version, VersionStatus::Archived)?;
    Ok(())
}

/// Deletes a product nobody subscribed to, or archives one somebody did.
pub fn delete(conn: &mut dyn Conn, mode: Mode, product_id: &str, now: DateTime<Utc>) -> Result<(), OpError> {
    let mut product = products::get_for_update(conn, mode, product_id)?.ok_or_else(|| not_found(product_id))?;
    if !subscriptions::product_has_subscriptions(conn, product_id)? {
        conn.execute("DELETE FROM product_versions WHERE product_id = $1", params![product_id])?;
        conn.execute("DELETE FROM products WHERE id = $1", params![product_id])?;
        return Ok(());
    }
    for version in products::versions(conn, product_id)? {
        products::set_version_status(conn, product_id, version.version, VersionStatus::Archived)?;
    }
    product.archived_at.get_or_insert(now);
    product.default_version = None;
    products::update(conn, &product)?;
    Ok(())
}
