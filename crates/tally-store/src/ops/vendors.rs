//! Vendors.

use super::OpError;
use crate::conn::Conn;
use crate::ids;
use crate::repo::vendors::{self, Vendor};
use chrono::{DateTime, Utc};
use tally_core::Mode;

pub fn create(
    conn: &mut dyn Conn,
    mode: Mode,
    name: &str,
    external_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vendor, OpError> {
    let taken =
        || OpError::Conflict(format!("a vendor with external_id {:?} exists already", external_id.unwrap_or_default()));
    if let Some(external_id) = external_id {
        if vendors::find_by_external_id(conn, mode, external_id)?.is_some() {
            return Err(taken());
        }
    }
    let vendor = Vendor {
        id: ids::new_id("vnd"),
        name: name.to_owned(),
        external_id: external_id.map(str::to_owned),
        created_at: now,
    };
    vendors::insert(conn, mode, &vendor).map_err(|error| match error {
        crate::StoreError::Conflict(_) => taken(),
        other => other.into(),
    })?;
    Ok(vendor)
}

pub fn require(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Vendor, OpError> {
    vendors::get(conn, mode, id)?.ok_or_else(|| OpError::NotFound(format!("vendor {id} not found")))
}
