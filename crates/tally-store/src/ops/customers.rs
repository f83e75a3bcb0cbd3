//! Customers.

use super::OpError;
use crate::conn::Conn;
use crate::ids;
use crate::repo::customers::{self, Customer};
use crate::repo::Metadata;
use chrono::{DateTime, Utc};
use tally_core::Mode;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewCustomer {
    pub name: String,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub metadata: Metadata,
}

pub fn create(conn: &mut dyn Conn, mode: Mode, new: &NewCustomer, now: DateTime<Utc>) -> Result<Customer, OpError> {
    if let Some(external_id) = &new.external_id {
        ensure_external_id_free(conn, mode, external_id, None)?;
    }
    let customer = Customer {
        id: ids::new_id("cust"),
        name: new.name.clone(),
        external_id: new.external_id.clone(),
        email: new.email.clone(),
        metadata: new.metadata.clone(),
        created_at: now,
    };
    customers::insert(conn, mode, &customer).map_err(|error| match error {
        crate::StoreError::Conflict(_) => external_id_taken(new.external_id.as_deref().unwrap_or_default()),
        other => other.into(),
    })?;
    super::webhooks::customer_created(conn, mode, &customer)?;
    Ok(customer)
}

fn external_id_taken(external_id: &str) -> OpError {
    OpError::Conflict(format!("a customer with external_id {external_id:?} exists already"))
}

fn ensure_external_id_free(
    conn: &mut dyn Conn,
    mode: Mode,
    external_id: &str,
    except: Option<&str>,
) -> Result<(), OpError> {
    match customers::find_by_external_id(conn, mode, external_id)? {
        Some(existing) if Some(existing.id.as_str()) != except => Err(external_id_taken(external_id)),
        _ => Ok(()),
    }
}

/// A partial update: `None` leaves a field as it is; `Some(None)` clears an optional field.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CustomerPatch {
    pub name: Option<String>,
    pub external_id: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub metadata: Option<Metadata>,
}

pub fn update(
    conn: &mut dyn Conn,
    mode: Mode,
    id: &str,
    patch: &CustomerPatch,
    now: DateTime<Utc>,
) -> Result<Customer, OpError> {
    let mut customer = require(conn, mode, id)?;
    if let Some(Some(external_id)) = &patch.external_id {
        ensure_external_id_free(conn, mode, external_id, Some(id))?;
    }
    if let Some(name) = &patch.name {
        customer.name = name.clone();
    }
    if let Some(external_id) = &patch.external_id {
        customer.external_id = external_id.clone();
    }
    if let Some(email) = &patch.email {
        customer.email = email.clone();
    }
    if let Some(metadata) = &patch.metadata {
        customer.metadata = metadata.clone();
    }
    // Another request may have taken the external id since the check above.
    customers::update(conn, mode, &customer, now).map_err(|error| match error {
        crate::StoreError::Conflict(_) => external_id_taken(customer.external_id.as_deref().unwrap_or_default()),
        other => other.into(),
    })?;
    Ok(customer)
}

pub fn require(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Customer, OpError> {
    customers::get(conn, mode, id)?.ok_or_else(|| not_found(id))
}

pub fn not_found(id: &str) -> OpError {
    OpError::NotFound(format!("customer {id} not found"))
}
