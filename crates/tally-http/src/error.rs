//! One error type for the whole API. Client errors carry a status, a stable problem type and
//! a message a user can act on; every internal error becomes an opaque 500 that is logged
//! once with its cause. Bodies are `application/problem+json` (RFC 9457).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use tally_store::ops::{FieldError, OpError};
use tally_store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the body is not JSON, or not the JSON shape the endpoint takes.
    Malformed(String),
    /// 401: no key, an unknown key or a revoked key.
    Unauthorized,
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 413: the body is over the size limit.
    TooLarge(usize),
    /// 422: fields with values Tally cannot accept, by JSON path.
    Invalid(Vec<FieldError>),
    /// 503: something Tally depends on is not configured or not reachable.
    Unavailable(String),
    /// 500: logged, never shown.
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid(vec![FieldError { field: field.into(), message: message.into() }])
    }
}

impl From<OpError> for ApiError {
    fn from(error: OpError) -> ApiError {
        match error {
            OpError::NotFound(message) => ApiError::NotFound(message),
            OpError::Conflict(message) => ApiError::Conflict(message),
            OpError::Invalid(fields) => ApiError::Invalid(fields),
            OpError::Store(error) => error.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::Internal(error.to_string())
    }
}

/// One kind of problem: the status it answers, its `type` (an anchor on the errors page),
/// its title, and when it happens. [`PROBLEM_KINDS`] lists them all; the errors page, the
/// OpenAPI document and every error body read them from here.
#[derive(Debug)]
pub struct ProblemKind {
    pub status: StatusCode,
    /// The anchor of this kind on the errors page.
    pub slug: &'static str,
    pub title: &'static str,
    /// When Tally answers it, for the errors page and the OpenAPI document.
    pub when: &'static str,
}

/// The page that explains every problem type; a problem's `type` is this page with the
/// kind's anchor, a reference relative to the server that answered.
pub const ERRORS_PAGE: &str = "/docs/errors";

impl ProblemKind {
    /// The problem's `type`: the errors page, at this kind's anchor.
    pub fn type_uri(&self) -> String {
        format!("{ERRORS_PAGE}#{}", self.slug)
    }
}

pub const MALFORMED: ProblemKind = ProblemKind {
    status: StatusCode::BAD_REQUEST,
    slug: "malformed-request",
    title: "The request is malformed",
    when: "The body is not JSON, or is empty where JSON is required; the query string is not percent-encoded \
           UTF-8; or the body is sent with a Content-Encoding.",
};
pub const UNAUTHORIZED: ProblemKind = ProblemKind {
    status: StatusCode::UNAUTHORIZED,
    slug: "unauthorized",
    title: "Authentication required",
    when: "No API key, an unknown key or a revoked key.",
};
pub const NOT_FOUND: ProblemKind = ProblemKind {
    status: StatusCode::NOT_FOUND,
    slug: "not-found",
    title: "Not found",
    when: "No such resource in this mode, no such endpoint, or an X-CREDYT-ACCOUNT header naming no connected \
           account of this environment.",
};
pub const METHOD_NOT_ALLOWED: ProblemKind = ProblemKind {
    status: StatusCode::METHOD_NOT_ALLOWED,
    slug: "method-not-allowed",
    title: "Method not allowed",
    when: "The path exists but does not take this method; the Allow header lists those it takes.",
};
pub const CONFLICT: ProblemKind = ProblemKind {
    status: StatusCode::CONFLICT,
    slug: "conflict",
    title: "Conflict",
    when: "A duplicate code or external id; an id or idempotency key reused for a different request; a change \
           the resource's state does not allow.",
};
pub const TOO_LARGE: ProblemKind = ProblemKind {
    status: StatusCode::PAYLOAD_TOO_LARGE,
    slug: "too-large",
    title: "The request body is too large",
    when: "The body is over 1 MiB.",
};
pub const VALIDATION: ProblemKind = ProblemKind {
    status: StatusCode::UNPROCESSABLE_ENTITY,
    slug: "validation",
    title: "One or more fields are invalid",
    when: "JSON of the wrong shape, or values Tally cannot accept; `errors` maps each field's JSON path \
           (`rates[0].source`) or query parameter to its messages.",
};
pub const UNAVAILABLE: ProblemKind = ProblemKind {
    status: StatusCode::SERVICE_UNAVAILABLE,
    slug: "unavailable",
    title: "Service unavailable",
    when: "Something Tally depends on (a payment provider) is not configured or not reachable; retry later.",
};
pub const INTERNAL: ProblemKind = ProblemKind {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    slug: "internal",
    title: "Internal server error",
    when: "A fault on Tally's side; logged with its cause, never shown.",
};

/// Every kind of problem Tally answers, in status order.
pub const PROBLEM_KINDS: [&ProblemKind; 9] = [
    &MALFORMED,
    &UNAUTHORIZED,
    &NOT_FOUND,
    &METHOD_NOT_ALLOWED,
    &CONFLICT,
    &TOO_LARGE,
    &VALIDATION,
    &UNAVAILABLE,
    &INTERNAL,
];

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    problem_type: &'a str,
    title: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<BTreeMap<&'a str, Vec<&'a str>>>,
}

/// A problem+json response of `kind`.
fn problem(kind: &ProblemKind, detail: Option<&str>, errors: Option<BTreeMap<&str, Vec<&str>>>) -> Response {
    let problem_type = kind.type_uri();
    let body = Problem { problem_type: &problem_type, title: kind.title, status: kind.status.as_u16(), detail, errors };
    let text = serde_json::to_string(&body).unwrap_or_default();
    (kind.status, [(header::CONTENT_TYPE, "application/problem+json")], text).into_response()
}

/// The answer to a method a path does not take (the router's fallback for those). The router
/// adds the `Allow` header.
pub async fn method_not_allowed() -> Response {
    problem(&METHOD_NOT_ALLOWED, Some("this path does not take this method; see the Allow header"), None)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Malformed(message) => problem(&MALFORMED, Some(message), None),
            ApiError::Unauthorized => problem(
                &UNAUTHORIZED,
                Some("send a valid, unrevoked API key in the X-CREDYT-API-KEY header or as Authorization: Bearer KEY"),
                None,
            ),
            ApiError::NotFound(message) => problem(&NOT_FOUND, Some(message), None),
            ApiError::Conflict(message) => problem(&CONFLICT, Some(message), None),
            ApiError::TooLarge(limit) => {
                problem(&TOO_LARGE, Some(&format!("the body must be at most {limit} bytes")), None)
            }
            ApiError::Invalid(fields) => {
                let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                for field in fields {
                    map.entry(field.field.as_str()).or_default().push(field.message.as_str());
                }
                problem(&VALIDATION, Some("see errors: each field names what is wrong with its value"), Some(map))
            }
            ApiError::Unavailable(message) => problem(&UNAVAILABLE, Some(message), None),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                problem(&INTERNAL, None, None)
            }
        }
    }
}
