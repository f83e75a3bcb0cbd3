//! Request parsing at the edge: authentication, JSON bodies with field-level errors, and
//! query strings. Handlers receive parsed values or never run.

use crate::error::ApiError;
use crate::limits;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tally_store::ops::FieldError;
use tally_store::repo::{api_keys, Cursor, Keys, Page, Window};

/// Who a request acts for: the mode of the API key that authenticated it, narrowed to one
/// connected account when the request names one in `X-CREDYT-ACCOUNT`.
#[derive(Debug, Clone, Copy)]
pub struct Auth {
    pub mode: tally_core::Mode,
}

/// The header by which a platform acts inside one of its connected accounts.
pub const ACCOUNT_HEADER: &str = "x-credyt-account";

fn presented_key(parts: &Parts) -> Option<String> {
    // Header names are case-insensitive; `HeaderMap` already folds them.
    if let Some(value) = parts.headers.get("x-credyt-api-key").and_then(|value| value.to_str().ok()) {
        return Some(value.trim().to_owned());
    }
    let authorization = parts.headers.get("authorization")?.to_str().ok()?;
    let (scheme, key) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim().to_owned())
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Auth, ApiError> {
        let key_mode = key_mode(parts, state).await?;
        let Some(header) = parts.headers.get(ACCOUNT_HEADER) else {
            return Ok(Auth { mode: key_mode });
        };
        let unknown = || ApiError::NotFound("X-CREDYT-ACCOUNT names no connected account of this environment".into());
        let account_id = header.to_str().map_err(|_| unknown())?.trim().to_owned();
        if let Some(mode) = key_mode.connected(&account_id).filter(|mode| state.auth_cache.knows_account(*mode)) {
            return Ok(Auth { mode });
        }
        let found = state
            .read(move |conn| Ok(tally_store::ops::connected_accounts::mode_for(conn, key_mode, &account_id)?))
            .await?;
        let mode = found.ok_or_else(unknown)?;
        state.auth_cache.remember_account(mode);
        Ok(Auth { mode })
    }
}

/// The mode of the request's API key, from the cache or the database.
async fn key_mode(parts: &Parts, state: &AppState) -> Result<tally_core::Mode, ApiError> {
    let key = presented_key(parts).filter(|key| !key.is_empty() && key.len() <= 200).ok_or(ApiError::Unauthorized)?;
    let hash = api_keys::hash_key(&key);
    // Read before the database, so that a revocation made while the lookup runs
    // invalidates what the lookup caches.
    let revocations = api_keys::revocations();
    if let Some(mode) = state.auth_cache.get(&hash, revocations) {
        return Ok(mode);
    }
    let found = state.read(move |conn| Ok(api_keys::authenticate(conn, &key)?)).await?;
    match found {
        Some((_, mode)) => {
            state.auth_cache.insert(hash, mode, revocations);
            Ok(mode)
        }
        None => Err(ApiError::Unauthorized),
    }
}

/// How long an accepted key is trusted without asking the database again. A key revoked by
/// another process (`tally api-keys revoke` beside a running server, or another server on
/// the same PostgreSQL database) stops working within this bound; one revoked in this
/// process stops working at once, for every request that starts after the revocation
/// returns.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(1);
/// The most keys the cache holds; past it, it starts over.
const AUTH_CACHE_MAX_KEYS: usize = 10_000;

/// Keys that were accepted lately, by the SHA-256 hash of the key (the key itself is not
/// kept), so that most requests authenticate without a trip to the database. Unknown and
/// revoked keys are never cached: a new key works at once, and a refused one is asked about
/// every time.
#[derive(Default)]
pub struct AuthCache {
    entries: Mutex<CachedKeys>,
    /// Connected accounts' modes seen to exist. Accounts are never deleted, so a mode once
    /// found stays valid.
    accounts: Mutex<std::collections::HashSet<tally_core::Mode>>,
}

#[derive(Default)]
struct CachedKeys {
    /// `api_keys::revocations()` when these entries were looked up; when it moves on, every
    /// entry is dropped.
    revocations: u64,
    by_hash: HashMap<String, (tally_core::Mode, Instant)>,
}

impl AuthCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, CachedKeys> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The entries, emptied if a key was revoked since they were looked up; `None` when the
    /// caller's count of revocations is older than theirs.
    fn current(&self, revocations: u64) -> Option<std::sync::MutexGuard<'_, CachedKeys>> {
        let mut entries = self.entries();
        if entries.revocations < revocations {
            entries.by_hash.clear();
            entries.revocations = revocations;
        }
        (entries.revocations == revocations).then_some(entries)
    }

    fn knows_account(&self, mode: tally_core::Mode) -> bool {
        self.accounts.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&mode)
    }

    fn remember_account(&self, mode: tally_core::Mode) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if accounts.len() >= AUTH_CACHE_MAX_KEYS {
            accounts.clear();
        }
        accounts.insert(mode);
    }

    /// The mode of a key accepted less than [`AUTH_CACHE_TTL`] ago with no revocation since.
    fn get(&self, hash: &str, revocations: u64) -> Option<tally_core::Mode> {
        let mut entries = self.current(revocations)?;
        match entries.by_hash.get(hash) {
            Some((mode, accepted_at)) if accepted_at.elapsed() < AUTH_CACHE_TTL => Some(*mode),
            Some(_) => {
                entries.by_hash.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Remembers a key the database accepted; `revocations` is the count read before asking.
    fn insert(&self, hash: String, mode: tally_core::Mode, revocations: u64) {
        // A key revoked since the lookup began makes its answer suspect: keep nothing.
        let Some(mut entries) = self.current(revocations) else {
            return;
        };
        if entries.by_hash.len() >= AUTH_CACHE_MAX_KEYS {
            entries.by_hash.retain(|_, (_, accepted_at)| accepted_at.elapsed() < AUTH_CACHE_TTL);
            if entries.by_hash.len() >= AUTH_CACHE_MAX_KEYS {
                entries.by_hash.clear();
            }
        }
        entries.by_hash.insert(hash, (mode, Instant::now()));
    }
}

/// A JSON body of type `T`. Not JSON at all: 400. JSON of the wrong shape (a missing field, a
/// string where a number goes): 422 with the path of the field.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<JsonBody<T>, ApiError> {
        let bytes =
            Bytes::from_request(request, state).await.map_err(|_| ApiError::TooLarge(limits::MAX_BODY_BYTES))?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Malformed("the request needs a JSON body".into()));
    }
    // Syntax is checked first so that a broken document is a 400 wherever the break is.
    if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(ApiError::Malformed(format!("the body is not valid JSON: {error}")));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { "$".to_owned() } else { path };
        let message = error.into_inner().to_string();
        // serde's messages end with " at line 1 column 42": the path says where already.
        let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
        ApiError::invalid(field, message)
    })
}

/// Query-string parameters, parsed one by one so that every bad one is reported.
pub struct QueryParams {
    values: HashMap<String, String>,
    pub errors: Vec<FieldError>,
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<QueryParams, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let values = decode_query(query).map_err(ApiError::Malformed)?.into_iter().collect();
        Ok(QueryParams { values, errors: Vec::new() })
    }
}

/// The pairs of an `application/x-www-form-urlencoded` query string, decoded strictly: every
/// `%` starts two hex digits and the decoded bytes are UTF-8. A lenient decoder would keep a
/// stray `%zz` as text and turn bad bytes into U+FFFD, answering a question nobody asked.
pub fn decode_query(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode_component(name)?, decode_component(value)?))
        })
        .collect()
}

fn decode_component(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let stray = bytes.iter().enumerate().any(|(index, byte)| {
        *byte == b'%' && !bytes.get(index + 1..index + 3).is_some_and(|pair| pair.iter().all(u8::is_ascii_hexdigit))
    });
    if stray {
        return Err(format!("the query string is not valid percent-encoding: `%…` in {text:?}"));
    }
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| format!("the query string does not decode to UTF-8 text: {text:?}"))
}

/// Refuses, before any handler runs, a request no handler could read as meant: a body in a
/// content coding (`Content-Encoding`) Tally does not decode (it decodes none: bodies are
/// sent as they are), and a query string that is not percent-encoded UTF-8. Both are 400.
pub async fn check_encodings(
    request: Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    for coding in request.headers().get_all(axum::http::header::CONTENT_ENCODING) {
        let coding = coding.to_str().unwrap_or("?");
        if coding.split(',').any(|coding| !coding.trim().eq_ignore_ascii_case("identity")) {
            return Err(ApiError::Malformed(format!(
                "Content-Encoding {coding:?} is not supported: send the body uncompressed, without Content-Encoding"
            )));
        }
    }
    if let Some(query) = request.uri().query() {
        decode_query(query).map_err(ApiError::Malformed)?;
    }
    Ok(next.run(read_whole_body(request).await?).await)
}

/// Reads the request's body before any handler or extractor runs. A request refused before
/// its body was read (a bad key, an unknown `X-CREDYT-ACCOUNT`, an unknown route) would
/// otherwise leave the body unread, and the server then drops the keep-alive connection
/// without saying so: the client's next request on it fails ("remote end closed
/// connection"), and clients do not retry a POST. Bodies are small (`MAX_BODY_BYTES`), and
/// every handler that takes one reads it whole anyway.
async fn read_whole_body(request: Request) -> Result<Request, ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, limits::MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge(limits::MAX_BODY_BYTES))?;
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

impl QueryParams {
    fn error(&mut self, field: &str, message: &str) {
        self.errors.push(FieldError { field: field.to_owned(), message: message.to_owned() });
    }

    pub fn string(&mut self, name: &str) -> Option<String> {
        let value = self.values.get(name)?.trim().to_owned();
        if value.chars().count() > limits::MAX_TEXT_CHARS {
            self.error(name, "is too long");
            return None;
        }
        (!value.is_empty()).then_some(value)
    }

    pub fn int(&mut self, name: &str) -> Option<i64> {
        let text = self.string(name)?;
        match text.parse() {
            Ok(value) => Some(value),
            Err(_) => {
                self.error(name, "must be a whole number");
                None
            }
        }
    }

    pub fn bool(&mut self, name: &str) -> Option<bool> {
        let text = self.string(name)?;
        match text.to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => {
                self.error(name, "must be true or false");
                None
            }
        }
    }

    pub fn time(&mut self, name: &str) -> Option<DateTime<Utc>> {
        let text = self.string(name)?;
        let parsed = crate::types::parse_timestamp(&text);
        if parsed.is_none() {
            self.error(name, "must be an RFC 3339 date-time or a date");
        }
        parsed
    }

    /// `offset` (default 0) and `limit` (default 20, at most 100).
    pub fn page(&mut self) -> Page {
        let offset = self.int("offset").unwrap_or(0);
        let limit = self.int("limit").unwrap_or(limits::DEFAULT_PAGE_SIZE);
        if offset < 0 {
            self.error("offset", "must be zero or more");
        }
        if !(1..=limits::MAX_PAGE_SIZE).contains(&limit) {
            self.error("limit", "must be from 1 to 100");
        }
        Page { offset: offset.max(0), limit: limit.clamp(1, limits::MAX_PAGE_SIZE) }
    }

    /// [`QueryParams::page`] with `offset` at most [`limits::MAX_OFFSET`], or a keyset page:
    /// `next` or `prev`, a cursor a page of this list (`keys`) gave out, instead of `offset`.
    /// `include_total=true` asks for an exact `total_count` however many rows match (otherwise
    /// counting stops past `repo::COUNT_LIMIT`).
    pub fn window(&mut self, keys: &Keys) -> Window {
        let offset_given = self.values.contains_key("offset");
        let page = self.page();
        if page.offset > limits::MAX_OFFSET {
            let message = format!(
                "must be at most {}: for pages past it, follow `next` (each page with rows after it gives one)",
                limits::MAX_OFFSET
            );
            self.error("offset", &message);
        }
        let exact_total = self.bool("include_total").unwrap_or(false);
        let mut cursor = None;
        for (name, direction) in [("next", 'n'), ("prev", 'p')] {
            let Some(text) = self.values.get(name).map(|text| text.trim().to_owned()).filter(|text| !text.is_empty())
            else {
                continue;
            };
            if cursor.is_some() {
                self.error(name, "give next or prev, not both");
            } else if offset_given {
                self.error("offset", "give offset or a cursor (next or prev), not both");
            } else {
                match (text.len() <= 4096).then(|| Cursor::decode(&text, direction, keys)).flatten() {
                    Some(decoded) => cursor = Some(decoded),
                    None => self.error(name, "is not a cursor this list gave out"),
                }
            }
        }
        Window { page, cursor, exact_total }
    }

    /// Fails with every problem found, if any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::Mode;

    #[test]
    fn query_strings_decode_strictly() {
        let pairs = decode_query("a=1&b=caf%C3%A9+au+lait&&flag&empty=").unwrap();
        let expected = [("a", "1"), ("b", "café au lait"), ("flag", ""), ("empty", "")];
        assert_eq!(pairs, expected.map(|(name, value)| (name.to_owned(), value.to_owned())));
        for bad in ["a=%zz", "a=%4", "a=%", "a=%ff", "%C3=1", "a=%C3%28"] {
            assert!(decode_query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_accepted_key_is_cached_until_a_revocation() {
        let cache = AuthCache::default();
        assert_eq!(cache.get("hash", 0), None);
        cache.insert("hash".into(), Mode::Live, 0);
        assert_eq!(cache.get("hash", 0), Some(Mode::Live));
        assert_eq!(cache.get("other", 0), None);
        // Any revocation empties the cache.
        assert_eq!(cache.get("hash", 1), None);
        assert_eq!(cache.get("hash", 1), None);
    }

    #[test]
    fn an_answer_looked_up_before_a_revocation_is_not_kept() {
        let cache = AuthCache::default();
        assert_eq!(cache.get("newer", 1), None);
        // This lookup began before revocation 1: its answer may predate it.
        cache.insert("hash".into(), Mode::Test, 0);
        assert_eq!(cache.get("hash", 1), None);
        // A caller whose count is behind the cache's gets nothing either.
        cache.insert("hash".into(), Mode::Test, 1);
        assert_eq!(cache.get("hash", 0), None);
        assert_eq!(cache.get("hash", 1), Some(Mode::Test));
    }

    #[test]
    fn entries_expire_and_the_cache_stays_bounded() {
        let cache = AuthCache::default();
        cache.entries().by_hash.insert("old".into(), (Mode::Test, Instant::now() - AUTH_CACHE_TTL));
        assert_eq!(cache.get("old", 0), None);
        for index in 0..AUTH_CACHE_MAX_KEYS + 10 {
            cache.insert(format!("key-{index}"), Mode::Test, 0);
        }
        assert!(cache.entries().by_hash.len() <= AUTH_CACHE_MAX_KEYS);
        assert_eq!(cache.get(&format!("key-{}", AUTH_CACHE_MAX_KEYS + 9), 0), Some(Mode::Test));
    }
}
