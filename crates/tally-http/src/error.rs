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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, problem_type, title, detail): (StatusCode, &str, &str, Option<&str>) = match &self {
            ApiError::Malformed(message) => {
                (StatusCode::BAD_REQUEST, "malformed-request", "The request is malformed", Some(message))
            }
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
                Some("send a valid, unrevoked API key in the X-CREDYT-API-KEY header or as Authorization: Bearer KEY"),
            ),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, "not-found", "Not found", Some(message)),
            ApiError::Conflict(message) => (StatusCode::CONFLICT, "conflict", "Conflict", Some(message)),
            ApiError::TooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too-large", "The request body is too large", None)
            }
            ApiError::Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "One or more fields are invalid",
                Some("see errors: each field names what is wrong with its value"),
            ),
            ApiError::Unavailable(message) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", Some(message))
            }
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error", None)
            }
        };
        let too_large_detail;
        let detail = match &self {
            ApiError::TooLarge(limit) => {
                too_large_detail = format!("the body must be at most {limit} bytes");
                Some(too_large_detail.as_str())
            }
            _ => detail,
        };
        let errors = match &self {
            ApiError::Invalid(fields) => {
                let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                for field in fields {
                    map.entry(field.field.as_str()).or_default().push(field.message.as_str());
                }
                Some(map)
            }
            _ => None,
        };
        // A relative reference to the section of the API guide that explains the problem.
        let problem_type = format!("/docs/api.md#{problem_type}");
        let body = Problem { problem_type: &problem_type, title, status: status.as_u16(), detail, errors };
        let text = serde_json::to_string(&body).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, "application/problem+json")], text).into_response()
    }
}
