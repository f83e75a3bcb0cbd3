//! The billing portal's links and sessions.
//!
//! A platform asks for a link (`create_link`); the customer's browser opens it once
//! (`enter`), which swaps it for a session; every page then finds the session by its cookie
//! (`session`). Tokens are 256 random bits, shown once and stored only as SHA-256 hashes: a
//! link cannot be forged without guessing, and a database copy opens nothing. A link is good
//! for [`LINK_VALIDITY_MINUTES`] and one use; a session for [`SESSION_VALIDITY_MINUTES`] from
//! its start, fixed rather than sliding, so that a page view is a read and never a write.

use super::OpError;
use crate::conn::Conn;
use crate::ids;
use crate::repo::api_keys::hash_key;
use crate::repo::customers;
use crate::repo::portal::{self, PortalLink, PortalSession};
use chrono::{DateTime, Duration, Utc};
use tally_core::Mode;

pub const LINK_VALIDITY_MINUTES: i64 = 10;
pub const SESSION_VALIDITY_MINUTES: i64 = 60;
/// Expired links are kept this long so that a late or repeated use still lands on the
/// platform's `failure_url` rather than on a bare error page; then the worker deletes them.
pub const EXPIRED_RETENTION_HOURS: i64 = 24;

/// A link made for a customer: the one copy of its token, and when it stops working.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLink {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

pub fn create_link(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    return_url: &str,
    failure_url: &str,
    now: DateTime<Utc>,
) -> Result<NewLink, OpError> {
    customers::get(conn, mode, customer_id)?
        .ok_or_else(|| OpError::invalid("customer_id", format!("no customer {customer_id}")))?;
    let token = ids::new_secret(32);
    let expires_at = now + Duration::minutes(LINK_VALIDITY_MINUTES);
    portal::insert_link(
        conn,
        &PortalLink {
            token_hash: hash_key(&token),
            mode,
            customer_id: customer_id.to_owned(),
            return_url: return_url.to_owned(),
            failure_url: failure_url.to_owned(),
            expires_at,
            used_at: None,
            created_at: now,
        },
    )?;
    Ok(NewLink { token, expires_at })
}

/// A session just started: the cookie's token (its one copy) and the session.
#[derive(Debug, Clone, PartialEq)]
pub struct Entered {
    pub token: String,
    pub session: PortalSession,
}

/// Why a link did not open the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such link: forged, mistyped, or deleted long after it expired. There is no
    /// `failure_url` to trust.
    Unknown,
    Expired {
        failure_url: String,
    },
    Used {
        failure_url: String,
    },
    /// The link exists but can no longer open the portal: its customer is gone.
    Invalid {
        failure_url: String,
    },
}

/// Swaps a link for a session, once. Any later use, and any use after the link's validity,
/// is refused with the link's `failure_url`.
pub fn enter(conn: &mut dyn Conn, token: &str, now: DateTime<Utc>) -> Result<Result<Entered, Refusal>, OpError> {
    let Some(link) = portal::get_link_for_update(conn, &hash_key(token))? else {
        return Ok(Err(Refusal::Unknown));
    };
    if link.used_at.is_some() {
        return Ok(Err(Refusal::Used { failure_url: link.failure_url }));
    }
    if link.expires_at <= now {
        return Ok(Err(Refusal::Expired { failure_url: link.failure_url }));
    }
    if customers::get(conn, link.mode, &link.customer_id)?.is_none() {
        return Ok(Err(Refusal::Invalid { failure_url: link.failure_url }));
    }
    // The row lock (PostgreSQL) or the single writer (SQLite) already serialises first uses;
    // the conditional update makes the rule hold even without either.
    if !portal::use_link(conn, &link.token_hash, now)? {
        return Ok(Err(Refusal::Used { failure_url: link.failure_url }));
    }
    let token = ids::new_secret(32);
    let session = PortalSession {
        token_hash: hash_key(&token),
        mode: link.mode,
        customer_id: link.customer_id,
        csrf_token: ids::new_secret(32),
        return_url: link.return_url,
        expires_at: now + Duration::minutes(SESSION_VALIDITY_MINUTES),
        created_at: now,
    };
    portal::insert_session(conn, &session)?;
    Ok(Ok(Entered { token, session }))
}

/// The live session a cookie's token names, if any.
pub fn session(conn: &mut dyn Conn, token: &str, now: DateTime<Utc>) -> Result<Option<PortalSession>, OpError> {
    Ok(portal::live_session(conn, &hash_key(token), now)?)
}

/// Where an ended (or live) session's customer goes back to, by its cookie's token.
pub fn session_return_url(conn: &mut dyn Conn, token: &str) -> Result<Option<String>, OpError> {
    Ok(portal::session_return_url(conn, &hash_key(token))?)
}

/// Deletes links and sessions long expired. Returns how many rows went.
pub fn purge_expired(conn: &mut dyn Conn, now: DateTime<Utc>) -> Result<u64, OpError> {
    Ok(portal::purge(conn, now - Duration::hours(EXPIRED_RETENTION_HOURS))?)
}
