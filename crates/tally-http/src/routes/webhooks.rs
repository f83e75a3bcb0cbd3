//! Webhook destinations, test sends and the delivery log (docs/webhooks.md).

use crate::check::Checker;
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody, QueryParams};
use crate::limits;
use crate::types::Timestamp;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use tally_core::Mode;
use tally_store::ops::webhooks::{self as webhook_ops, DestinationPatch, NewDestination, Topic};
use tally_store::repo::webhooks::{
    self as webhook_repo, Cursor, DeliveryFilter, DeliveryStatus, DeliveryView, Destination, DestinationFilter,
};
use utoipa::ToSchema;

/// The longest destination URL.
pub const MAX_URL_CHARS: usize = 2048;
/// The most topics one destination may list.
pub const MAX_TOPICS: usize = 20;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateWebhookDestinationRequest {
    /// An absolute `https` URL; plain `http` only in test mode or for a loopback host.
    pub url: String,
    /// Topics to receive; `["*"]` (the default) for all.
    pub topics: Option<Vec<String>>,
    /// Receive connected accounts' events instead of the platform's (docs/platforms.md).
    pub connect: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateWebhookDestinationResponse {
    pub id: String,
    /// The signing secret (`whsec_…`); also shown by `GET /webhooks/{webhookId}`.
    pub secret: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDestinationWithoutSecret {
    pub id: String,
    pub url: String,
    pub topics: Vec<String>,
    pub connect: bool,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A destination with its signing secret: the reference's `WebhookDestination`, which extends
/// `WebhookDestinationWithoutSecret`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDestination {
    #[serde(flatten)]
    pub destination: WebhookDestinationWithoutSecret,
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ItemsWebhookDestinationWithoutSecret {
    pub items: Vec<WebhookDestinationWithoutSecret>,
    pub total_count: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateWebhookDestinationRequest {
    pub url: Option<String>,
    pub topics: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestWebhookResponse {
    /// The id of the sample event.
    pub id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEventListItem {
    /// The event's id (the same for every destination it went to).
    pub id: String,
    pub destination_id: String,
    pub topic: String,
    /// When the event happened.
    pub time: Timestamp,
    /// `pending` (being delivered or waiting to retry), `delivered` or `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successful_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Timestamp>,
    /// `attempts`, `next_attempt_at`, `last_status_code`, `last_error`.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// The event's `data`, as sent.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CursorPaginationMetadata {
    pub limit: i64,
    /// Pass as `next` for the following (older) page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Pass as `prev` for the preceding (newer) page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CursorPageWebhookEventListItem {
    pub models: Vec<WebhookEventListItem>,
    pub pagination: CursorPaginationMetadata,
}

fn without_secret(destination: Destination) -> WebhookDestinationWithoutSecret {
    WebhookDestinationWithoutSecret {
        id: destination.id,
        url: destination.url,
        topics: destination.topics,
        connect: destination.connect,
        enabled: destination.enabled,
        created_at: destination.created_at.into(),
        updated_at: destination.updated_at.into(),
    }
}

fn with_secret(mut destination: Destination) -> WebhookDestination {
    let secret = std::mem::take(&mut destination.secret);
    WebhookDestination { destination: without_secret(destination), secret }
}

/// Whether `host` (as a URL writes it: IPv6 in brackets) is this machine: `localhost`,
/// 127.0.0.0/8 or ::1.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|address| address.is_loopback())
}

/// An absolute http(s) URL of at most 2048 characters, without credentials. Live mode needs
/// https except for loopback hosts; test mode takes plain http anywhere.
fn check_url(checker: &mut Checker, field: &str, text: &str, mode: Mode) -> String {
    let text = text.trim();
    // The parser reads `http:host` and `http:/host` as `http://host/`; a destination is
    // written in full, so what is stored is what will be called.
    let full = ["http://", "https://"]
        .iter()
        .any(|prefix| text.get(..prefix.len()).is_some_and(|start| start.eq_ignore_ascii_case(prefix)));
    let problem = crate::check::http_url_problem(text)
        .or_else(|| (!full).then(|| "must be an absolute URL starting with http:// or https://".to_owned()));
    if let Some(problem) = problem {
        checker.error(field, problem);
        return text.to_owned();
    }
    let Ok(parsed) = url::Url::parse(text) else {
        checker.error(field, "must be an absolute http(s) URL");
        return text.to_owned();
    };
    let Some(host) = parsed.host_str() else {
        checker.error(field, "must name a host");
        return text.to_owned();
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        checker.error(field, "must not carry a user name or password");
    }
    match parsed.scheme() {
        "https" => {}
        "http" if !mode.is_live() || is_loopback(host) => {}
        _ => checker.error(field, "must use https in live mode (plain http is allowed only for loopback hosts)"),
    }
    text.to_owned()
}

/// Topic names: known topics or `*`, without repeats, at least one.
fn check_topics(checker: &mut Checker, field: &str, topics: &[String]) -> Vec<String> {
    if topics.is_empty() {
        checker.error(field, "must list at least one topic, or [\"*\"] for all");
    }
    if topics.len() > MAX_TOPICS {
        checker.error(field, format!("must list at most {MAX_TOPICS} topics"));
    }
    let mut kept: Vec<String> = Vec::new();
    for (index, topic) in topics.iter().enumerate() {
        let topic = topic.trim();
        if topic != "*" && Topic::parse(topic).is_none() {
            checker
                .error(format!("{field}[{index}]"), format!("unknown topic {topic:?}; topics are: {}", topic_list()));
        } else if !kept.iter().any(|existing| existing == topic) {
            kept.push(topic.to_owned());
        }
    }
    kept
}

fn topic_list() -> String {
    let mut names: Vec<&str> = vec!["*"];
    names.extend(Topic::ALL.iter().map(|topic| topic.as_str()));
    names.join(", ")
}

/// The body of a test send, read in full and ignored. The SDK always sends one (`null`); a
/// handler that answered without reading it (a 404 or 422 found before) would leave hyper to
/// close the connection after the answer, without `Connection: close`, so a client's next
/// request on that pooled connection would fail.
type IgnoredBody = axum::body::Bytes;

fn parse_topic(text: &str) -> Result<Topic, ApiError> {
    Topic::parse(text)
        .ok_or_else(|| ApiError::invalid("topic", format!("unknown topic {text:?}; topics are: {}", topic_list())))
}

#[utoipa::path(post, path = "/webhooks", operation_id = "create_webhook_destination", tag = "Webhooks", request_body = CreateWebhookDestinationRequest,
    responses((status = 201, body = CreateWebhookDestinationResponse), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    JsonBody(request): JsonBody<CreateWebhookDestinationRequest>,
) -> Result<(StatusCode, Json<CreateWebhookDestinationResponse>), ApiError> {
    let mut checker = Checker::default();
    let new = NewDestination {
        url: check_url(&mut checker, "url", &request.url, auth.mode.platform()),
        topics: check_topics(&mut checker, "topics", request.topics.as_deref().unwrap_or(&["*".to_owned()])),
        connect: request.connect.unwrap_or(false),
    };
    checker.finish()?;
    let now = state.now();
    let destination = state.write(move |conn| webhook_ops::create(conn, auth.mode.platform(), &new, now)).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateWebhookDestinationResponse {
            id: destination.id,
            secret: destination.secret,
            created_at: destination.created_at.into(),
        }),
    ))
}

#[utoipa::path(get, path = "/webhooks", operation_id = "list_webhook_destinations", tag = "Webhooks",
    params(("enabled" = Option<bool>, Query), ("connect" = Option<bool>, Query)),
    responses((status = 200, body = ItemsWebhookDestinationWithoutSecret)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    mut query: QueryParams,
) -> Result<Json<ItemsWebhookDestinationWithoutSecret>, ApiError> {
    let filter = DestinationFilter { enabled: query.bool("enabled"), connect: query.bool("connect") };
    query.finish()?;
    let destinations =
        state.read(move |conn| Ok(webhook_repo::list_destinations(conn, auth.mode.platform(), filter)?)).await?;
    Ok(Json(ItemsWebhookDestinationWithoutSecret {
        total_count: destinations.len() as i64,
        items: destinations.into_iter().map(without_secret).collect(),
    }))
}

#[utoipa::path(get, path = "/webhooks/{webhookId}", operation_id = "get_webhook_destination", tag = "Webhooks", params(("webhookId" = String, Path)),
    responses((status = 200, body = WebhookDestination), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<WebhookDestination>, ApiError> {
    let destination = state.read(move |conn| webhook_ops::require(conn, auth.mode.platform(), &id)).await?;
    Ok(Json(with_secret(destination)))
}

#[utoipa::path(patch, path = "/webhooks/{webhookId}", operation_id = "update_webhook_destination", tag = "Webhooks", params(("webhookId" = String, Path)),
    request_body = UpdateWebhookDestinationRequest,
    responses((status = 200, body = WebhookDestination), (status = 404), (status = 422)))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<UpdateWebhookDestinationRequest>,
) -> Result<Json<WebhookDestination>, ApiError> {
    let mut checker = Checker::default();
    let patch = DestinationPatch {
        url: request.url.as_deref().map(|url| check_url(&mut checker, "url", url, auth.mode.platform())),
        topics: request.topics.as_deref().map(|topics| check_topics(&mut checker, "topics", topics)),
        enabled: request.enabled,
    };
    checker.finish()?;
    let now = state.now();
    let destination =
        state.write(move |conn| webhook_ops::update(conn, auth.mode.platform(), &id, &patch, now)).await?;
    Ok(Json(with_secret(destination)))
}

#[utoipa::path(delete, path = "/webhooks/{webhookId}", operation_id = "delete_webhook_destination", tag = "Webhooks", params(("webhookId" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let now = state.now();
    state.write(move |conn| webhook_ops::delete(conn, auth.mode.platform(), &id, now)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/webhooks/{webhookId}/test/{topic}", operation_id = "test_webhook_destination", tag = "Webhooks",
    params(("webhookId" = String, Path), ("topic" = String, Path)),
    responses((status = 202, body = TestWebhookResponse), (status = 404), (status = 422)))]
pub async fn test_one(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, topic)): Path<(String, String)>,
    _body: IgnoredBody,
) -> Result<(StatusCode, Json<TestWebhookResponse>), ApiError> {
    let topic = parse_topic(&topic)?;
    let now = state.now();
    let id = state.write(move |conn| webhook_ops::send_test(conn, auth.mode.platform(), topic, Some(&id), now)).await?;
    Ok((StatusCode::ACCEPTED, Json(TestWebhookResponse { id })))
}

#[utoipa::path(post, path = "/webhooks/{webhookId}/test/{topic}/{connectedAccountId}", operation_id = "test_connected_webhook_destination", tag = "Webhooks",
    params(("webhookId" = String, Path), ("topic" = String, Path), ("connectedAccountId" = String, Path)),
    responses((status = 202, body = TestWebhookResponse), (status = 404), (status = 422)))]
pub async fn test_one_connected(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, topic, account_id)): Path<(String, String, String)>,
    _body: IgnoredBody,
) -> Result<(StatusCode, Json<TestWebhookResponse>), ApiError> {
    let topic = parse_topic(&topic)?;
    let mode = connected_mode(&state, auth, account_id).await?;
    let now = state.now();
    let id = state.write(move |conn| webhook_ops::send_test(conn, mode, topic, Some(&id), now)).await?;
    Ok((StatusCode::ACCEPTED, Json(TestWebhookResponse { id })))
}

#[utoipa::path(post, path = "/webhooks/test/{topic}/{connectedAccountId}", operation_id = "test_connected_webhook_destinations", tag = "Webhooks",
    params(("topic" = String, Path), ("connectedAccountId" = String, Path)),
    responses((status = 202, body = TestWebhookResponse), (status = 404), (status = 422)))]
pub async fn test_all_connected(
    State(state): State<AppState>,
    auth: Auth,
    Path((topic, account_id)): Path<(String, String)>,
    _body: IgnoredBody,
) -> Result<(StatusCode, Json<TestWebhookResponse>), ApiError> {
    let topic = parse_topic(&topic)?;
    let mode = connected_mode(&state, auth, account_id).await?;
    let now = state.now();
    let id = state.write(move |conn| webhook_ops::send_test(conn, mode, topic, None, now)).await?;
    Ok((StatusCode::ACCEPTED, Json(TestWebhookResponse { id })))
}

/// The mode of the platform's connected account `account_id`, or a 404.
async fn connected_mode(state: &AppState, auth: Auth, account_id: String) -> Result<tally_core::Mode, ApiError> {
    let key_mode = auth.mode.platform();
    let found = state
        .read(move |conn| Ok(tally_store::ops::connected_accounts::mode_for(conn, key_mode, &account_id)?))
        .await?;
    found.ok_or_else(|| ApiError::NotFound("no such connected account in this environment".into()))
}

#[utoipa::path(post, path = "/webhooks/test/{topic}", operation_id = "test_webhook_destinations", tag = "Webhooks", params(("topic" = String, Path)),
    responses((status = 202, body = TestWebhookResponse), (status = 422)))]
pub async fn test_all(
    State(state): State<AppState>,
    auth: Auth,
    Path(topic): Path<String>,
    _body: IgnoredBody,
) -> Result<(StatusCode, Json<TestWebhookResponse>), ApiError> {
    let topic = parse_topic(&topic)?;
    let now = state.now();
    let id = state.write(move |conn| webhook_ops::send_test(conn, auth.mode.platform(), topic, None, now)).await?;
    Ok((StatusCode::ACCEPTED, Json(TestWebhookResponse { id })))
}

/// A `status` filter of `GET /webhooks/events`: Tally's own values, and the SDK's
/// `Success` and `Failed`, in any case.
fn status_filter(text: &str) -> Option<DeliveryStatus> {
    match text.to_ascii_lowercase().as_str() {
        "success" | "succeeded" => Some(DeliveryStatus::Delivered),
        lowered => DeliveryStatus::parse(lowered),
    }
}

/// Cursors are opaque to clients: the hex of a direction and a position.
fn encode_cursor(cursor: Cursor) -> Option<String> {
    match cursor {
        Cursor::First => None,
        Cursor::After(sequence) => Some(hex::encode(format!("n{sequence}"))),
        Cursor::Before(sequence) => Some(hex::encode(format!("p{sequence}"))),
    }
}

fn decode_cursor(text: &str, direction: char) -> Option<Cursor> {
    let raw = String::from_utf8(hex::decode(text).ok()?).ok()?;
    let sequence: i64 = raw.strip_prefix(direction)?.parse().ok()?;
    match direction {
        'n' => Some(Cursor::After(sequence)),
        _ => Some(Cursor::Before(sequence)),
    }
}

fn event_item(delivery: DeliveryView) -> WebhookEventListItem {
    WebhookEventListItem {
        id: delivery.event_id,
        destination_id: delivery.destination_id,
        topic: delivery.topic,
        time: delivery.time.into(),
        status: delivery.status.as_str().to_owned(),
        successful_at: delivery.successful_at.map(Timestamp),
        failed_at: delivery.failed_at.map(Timestamp),
        metadata: serde_json::json!({
            "attempts": delivery.attempts,
            "next_attempt_at": delivery.next_attempt_at.map(crate::types::format_timestamp),
            "last_status_code": delivery.last_status_code,
            "last_error": delivery.last_error,
        }),
        data: serde_json::from_str(&delivery.data).unwrap_or(serde_json::Value::Null),
    }
}

#[utoipa::path(get, path = "/webhooks/events", operation_id = "list_webhook_events", tag = "Webhooks",
    params(("limit" = Option<i64>, Query), ("next" = Option<String>, Query), ("prev" = Option<String>, Query),
           ("destination_id" = Option<String>, Query), ("status" = Option<String>, Query, description = "pending, delivered (Success) or failed, in any case"),
           ("time_gte" = Option<String>, Query), ("time_lte" = Option<String>, Query)),
    responses((status = 200, body = CursorPageWebhookEventListItem), (status = 422)))]
pub async fn list_events(
    State(state): State<AppState>,
    auth: Auth,
    mut query: QueryParams,
) -> Result<Json<CursorPageWebhookEventListItem>, ApiError> {
    let limit = query.int("limit").unwrap_or(limits::DEFAULT_PAGE_SIZE);
    let next = query.string("next");
    let prev = query.string("prev");
    let status = query.string("status");
    let filter = DeliveryFilter {
        destination_id: query.string("destination_id"),
        status: status.as_deref().and_then(status_filter),
        time_gte: query.time("time_gte"),
        time_lte: query.time("time_lte"),
    };
    query.finish()?;
    let mut checker = Checker::default();
    if !(1..=limits::MAX_PAGE_SIZE).contains(&limit) {
        checker.error("limit", format!("must be from 1 to {}", limits::MAX_PAGE_SIZE));
    }
    if status.is_some() && filter.status.is_none() {
        checker.error("status", "must be pending, delivered (or Success) or failed");
    }
    let cursor = match (&next, &prev) {
        (Some(_), Some(_)) => {
            checker.error("next", "give next or prev, not both");
            Cursor::First
        }
        (Some(text), None) => decode_cursor(text, 'n').unwrap_or_else(|| {
            checker.error("next", "is not a cursor this endpoint gave out");
            Cursor::First
        }),
        (None, Some(text)) => decode_cursor(text, 'p').unwrap_or_else(|| {
            checker.error("prev", "is not a cursor this endpoint gave out");
            Cursor::First
        }),
        (None, None) => Cursor::First,
    };
    checker.finish()?;
    let page = state
        .read(move |conn| Ok(webhook_repo::list_deliveries(conn, auth.mode.platform(), &filter, cursor, limit)?))
        .await?;
    let next =
        page.items.last().filter(|_| page.has_older).and_then(|last| encode_cursor(Cursor::After(last.sequence)));
    let prev =
        page.items.first().filter(|_| page.has_newer).and_then(|first| encode_cursor(Cursor::Before(first.sequence)));
    // An empty page past either end still offers the way back.
    let (next, prev) = match (page.items.is_empty(), cursor) {
        (true, Cursor::After(sequence)) if page.has_newer => (None, encode_cursor(Cursor::Before(sequence - 1))),
        (true, Cursor::Before(sequence)) if page.has_older => (encode_cursor(Cursor::After(sequence + 1)), None),
        _ => (next, prev),
    };
    Ok(Json(CursorPageWebhookEventListItem {
        models: page.items.into_iter().map(event_item).collect(),
        pagination: CursorPaginationMetadata { limit, next, prev },
    }))
}
