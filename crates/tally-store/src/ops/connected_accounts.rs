//! Connected accounts: creating and reading them. Acting inside one is not an operation of
//! its own: a request that names one simply runs in its [`Mode`].

use super::OpError;
use crate::conn::Conn;
use crate::ids;
use crate::repo::connected_accounts::{self, ConnectedAccount};
use crate::repo::Metadata;
use crate::StoreError;
use chrono::{DateTime, Utc};
use tally_core::{Environment, Mode};

pub fn create(
    conn: &mut dyn Conn,
    environment: Environment,
    name: &str,
    external_id: Option<&str>,
    metadata: Metadata,
    now: DateTime<Utc>,
) -> Result<ConnectedAccount, OpError> {
    let taken = || {
        OpError::Conflict(format!(
            "a connected account with external_id {:?} exists already",
            external_id.unwrap_or_default()
        ))
    };
    if let Some(external_id) = external_id {
        if connected_accounts::find_by_external_id(conn, environment, external_id)?.is_some() {
            return Err(taken());
        }
    }
    let account = ConnectedAccount {
        id: ids::new_id("acc"),
        name: name.to_owned(),
        external_id: external_id.map(str::to_owned),
        metadata,
        created_at: now,
    };
    connected_accounts::insert(conn, environment, &account).map_err(|error| match error {
        StoreError::Conflict(_) => taken(),
        other => other.into(),
    })?;
    Ok(account)
}

pub fn require(conn: &mut dyn Conn, environment: Environment, id: &str) -> Result<ConnectedAccount, OpError> {
    connected_accounts::get(conn, environment, id)?
        .ok_or_else(|| OpError::NotFound(format!("connected account {id} not found")))
}

/// The mode a request runs in when it names connected account `id` (the `X-CREDYT-ACCOUNT`
/// header) with a key of `key_mode`: that account's mode in the key's environment, or `None`
/// when no such account exists there.
pub fn mode_for(conn: &mut dyn Conn, key_mode: Mode, id: &str) -> Result<Option<Mode>, StoreError> {
    let Some(mode) = key_mode.connected(id) else {
        return Ok(None);
    };
    Ok(connected_accounts::get(conn, key_mode.environment(), id)?.map(|_| mode))
}
