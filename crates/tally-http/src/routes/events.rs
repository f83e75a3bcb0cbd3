use crate::check::Checker;
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody, QueryParams};
use crate::limits::{MAX_DESCRIPTION_CHARS, MAX_TEXT_CHARS};
use crate::types::{parse_decimal, Amount, Timestamp};
use crate::{page_type, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tally_core::pricing::EventData;
use tally_store::ops::events::{self as event_ops, CustomerRef, NewCost, NewEvent, UnbilledCode, VendorRef};
use tally_store::ops::rebill::{self as rebill_ops, RebillReport};
use tally_store::ops::stats::{profitability, Scope};
use tally_store::ops::{FieldError, OpError};
use tally_store::repo::events::{self as event_repo, EventFilter, StoredEvent, UnbilledReason as StoredUnbilledReason};
use utoipa::ToSchema;

/// The most events one `POST /events` may carry.
pub const MAX_BATCH: usize = 1000;
/// How old an event may be when it arrives.
pub const GRACE_DAYS: i64 = 7;
/// How far ahead of the server's clock an event may be stamped (clock skew).
pub const FUTURE_SKEW_SECONDS: i64 = 300;
pub const MAX_DATA_FIELDS: usize = 50;
pub const MAX_COSTS_PER_EVENT: usize = 20;

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CostDataIn {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_volume: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_rate: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_size: Option<Amount>,
    pub amount: Amount,
    /// Defaults to USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct UsageEventIn {
    pub id: String,
    pub event_type: String,
    pub occurred_at: Timestamp,
    pub subject: Option<String>,
    pub description: Option<String>,
    /// Values are strings, booleans or numbers.
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    pub costs: Option<Vec<CostDataIn>>,
    /// A hold of the customer (its `transaction_id`) to capture this event's fees from: the
    /// fees on the hold's account are captured from it, the others debited as usual. A hold
    /// the customer does not have, or that is closed or past its `expires_at`, refuses the
    /// batch (422).
    #[serde(default)]
    pub hold_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UsageRequest {
    pub customer_id: Option<String>,
    pub customer_external_id: Option<String>,
    pub events: Vec<UsageEventIn>,
}

/// Parses a batch. `now` enables the grace window (`None` for simulations).
pub fn parse_events(events: &[UsageEventIn], now: Option<DateTime<Utc>>) -> Result<Vec<NewEvent>, ApiError> {
    let mut checker = Checker::default();
    if events.is_empty() {
        checker.error("events", "a batch needs at least one event");
    }
    if events.len() > MAX_BATCH {
        checker.error("events", format!("at most {MAX_BATCH} events per batch"));
        return Err(checker.finish().unwrap_err());
    }
    let parsed = events.iter().enumerate().map(|(index, event)| parse_event(&mut checker, index, event, now)).collect();
    checker.finish()?;
    Ok(parsed)
}

fn parse_event(checker: &mut Checker, index: usize, event: &UsageEventIn, now: Option<DateTime<Utc>>) -> NewEvent {
    let prefix = format!("events[{index}]");
    let id = checker.client_id(&format!("{prefix}.id"), &event.id);
    let event_type = checker.text(&format!("{prefix}.event_type"), &event.event_type, MAX_TEXT_CHARS);
    if let Some(now) = now {
        if event.occurred_at.0 < now - Duration::days(GRACE_DAYS) {
            checker.error(format!("{prefix}.occurred_at"), format!("is older than the {GRACE_DAYS}-day grace window"));
        }
        if event.occurred_at.0 > now + Duration::seconds(FUTURE_SKEW_SECONDS) {
            checker.error(format!("{prefix}.occurred_at"), "is in the future");
        }
    }
    let subject = checker.opt_text(&format!("{prefix}.subject"), event.subject.as_deref(), MAX_TEXT_CHARS);
    let description =
        checker.opt_text(&format!("{prefix}.description"), event.description.as_deref(), MAX_DESCRIPTION_CHARS);
    let mut data = EventData::new();
    let raw_data = event.data.clone().unwrap_or_default();
    if raw_data.len() > MAX_DATA_FIELDS {
        checker.error(format!("{prefix}.data"), format!("at most {MAX_DATA_FIELDS} fields"));
    }
    for (key, value) in &raw_data {
        let field = format!("{prefix}.data.{key}");
        let parsed = match value {
            serde_json::Value::String(text) if text.chars().count() > MAX_DESCRIPTION_CHARS => None,
            _ => event_ops::event_value(value),
        };
        match parsed {
            Some(value) => {
                data.insert(key.clone(), value);
            }
            None => checker.error(field, "must be a string (up to 1000 characters), a boolean or a number"),
        }
    }
    let costs = event.costs.clone().unwrap_or_default();
    if costs.len() > MAX_COSTS_PER_EVENT {
        checker.error(format!("{prefix}.costs"), format!("at most {MAX_COSTS_PER_EVENT} costs per event"));
    }
    let parsed_costs = costs
        .iter()
        .enumerate()
        .filter_map(|(cost_index, cost)| parse_cost(checker, &format!("{prefix}.costs[{cost_index}]"), cost))
        .collect();
    NewEvent {
        id,
        event_type,
        occurred_at: event.occurred_at.0,
        subject,
        description,
        data,
        data_json: serde_json::Value::Object(raw_data).to_string(),
        costs_json: serde_json::to_string(&costs).unwrap_or_else(|_| "[]".into()),
        costs: parsed_costs,
        hold_id: event.hold_id.as_deref().map(|hold_id| checker.client_id(&format!("{prefix}.hold_id"), hold_id)),
    }
}

fn parse_cost(checker: &mut Checker, prefix: &str, cost: &CostDataIn) -> Option<NewCost> {
    let id = checker.client_id(&format!("{prefix}.id"), &cost.id);
    let vendor = match (&cost.vendor_id, &cost.vendor_external_id) {
        (Some(id), _) => Some(VendorRef::Id(id.clone())),
        (None, Some(external_id)) => Some(VendorRef::ExternalId(external_id.clone())),
        (None, None) => {
            checker.error(format!("{prefix}.vendor_id"), "give vendor_id or vendor_external_id");
            None
        }
    };
    let amount = checker.amount(&format!("{prefix}.amount"), cost.amount);
    if amount < Decimal::ZERO {
        checker.error(format!("{prefix}.amount"), "must not be negative");
    }
    let currency = cost.currency.clone().unwrap_or_else(|| "USD".into());
    let currency = match checker.asset_code(&format!("{prefix}.currency"), &currency) {
        Some(code) if code.is_currency() => code.to_string(),
        Some(_) => {
            checker.error(format!("{prefix}.currency"), "must be an ISO 4217 currency");
            return None;
        }
        None => return None,
    };
    Some(NewCost {
        id,
        vendor: vendor?,
        category: checker.opt_text(&format!("{prefix}.category"), cost.category.as_deref(), MAX_TEXT_CHARS),
        description: checker.opt_text(
            &format!("{prefix}.description"),
            cost.description.as_deref(),
            MAX_DESCRIPTION_CHARS,
        ),
        amount,
        currency,
    })
}

#[utoipa::path(post, path = "/events", operation_id = "send_usage", tag = "Events", request_body = UsageRequest,
    responses((status = 204, description = "Every event is stored (or was already): priced and debited, or stored unbilled \
        with the reason when it cannot be priced."), (status = 409), (status = 422)))]
pub async fn send_usage(
    State(state): State<AppState>,
    auth: Auth,
    JsonBody(request): JsonBody<UsageRequest>,
) -> Result<StatusCode, ApiError> {
    let now = state.now();
    let customer = match (&request.customer_id, &request.customer_external_id) {
        (Some(id), _) => CustomerRef::Id(id.clone()),
        (None, Some(external_id)) => CustomerRef::ExternalId(external_id.clone()),
        (None, None) => return Err(ApiError::invalid("customer_id", "give customer_id or customer_external_id")),
    };
    let events = parse_events(&request.events, Some(now))?;
    let report = state.ingest_rounds.ingest(auth.mode, event_ops::IngestRequest { customer, events, now }).await?;
    crate::telemetry::usage_ingested(auth.mode, &report);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListEventsItem {
    pub id: String,
    pub customer_id: String,
    /// The customer's external id.
    pub external_id: Option<String>,
    pub event_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub occurred_at: Timestamp,
    pub created_at: Timestamp,
    /// The sum of the fees, when they are all in one asset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_fees: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fee_currency: Option<String>,
    pub has_fees: bool,
    /// `billed` (the event has fees) or `unbilled` (stored without fees: see `unbilled_reason`).
    pub billing_status: BillingStatus,
    /// Why the event was not billed; absent when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unbilled_reason: Option<UnbilledReason>,
}

page_type!(PageListEventsItem, ListEventsItem);

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BillingStatus {
    Billed,
    Unbilled,
}

/// Why an event was stored without fees.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UnbilledReason {
    /// `no_subscription`, `no_matching_price`, `no_matching_dimension`, `missing_volume`,
    /// `invalid_volume` or `invalid_price`.
    pub code: String,
    pub message: String,
}

fn billing(unbilled: Option<StoredUnbilledReason>) -> (BillingStatus, Option<UnbilledReason>) {
    match unbilled {
        None => (BillingStatus::Billed, None),
        Some(StoredUnbilledReason { code, message }) => {
            (BillingStatus::Unbilled, Some(UnbilledReason { code, message }))
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventFee {
    pub id: String,
    pub product_id: String,
    pub product_code: String,
    pub product_version: i64,
    pub price_id: String,
    pub price_name: String,
    pub currency: String,
    pub dimensions: BTreeMap<String, String>,
    pub usage_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_volume: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_rate: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package_size: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub amount: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GetEventResponse {
    pub id: String,
    pub event_type: String,
    pub occurred_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub costs: serde_json::Value,
    pub customer_id: String,
    pub created_at: Timestamp,
    pub fees: Vec<EventFee>,
    /// `billed` (the event has fees) or `unbilled` (stored without fees: see `unbilled_reason`).
    pub billing_status: BillingStatus,
    /// Why the event was not billed; absent when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unbilled_reason: Option<UnbilledReason>,
    /// The event's profitability in USD.
    pub stats: crate::routes::vendors::ProfitabilityStats,
}

fn list_item((event, external_id): (StoredEvent, Option<String>)) -> ListEventsItem {
    let (billing_status, unbilled_reason) = billing(event.unbilled);
    ListEventsItem {
        id: event.id,
        customer_id: event.customer_id,
        external_id,
        event_type: event.event_type,
        subject: event.subject,
        description: event.description,
        occurred_at: event.occurred_at.into(),
        created_at: event.created_at.into(),
        total_fees: event.total_fees.map(Amount),
        fee_currency: event.fee_currency,
        has_fees: event.has_fees,
        billing_status,
        unbilled_reason,
    }
}

#[utoipa::path(get, path = "/events", operation_id = "list_events", tag = "Events",
    params(("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("next" = Option<String>, Query), ("prev" = Option<String>, Query), ("include_total" = Option<bool>, Query), ("event_id" = Option<String>, Query),
           ("customer_id" = Option<String>, Query), ("customer_external_id" = Option<String>, Query), ("subject" = Option<String>, Query),
           ("period_from" = Option<String>, Query), ("period_to" = Option<String>, Query),
           ("event_types" = Option<String>, Query, description = "Comma-separated event types."), ("has_fees" = Option<bool>, Query),
           ("billing_status" = Option<String>, Query, description = "`billed` or `unbilled`."),
           ("unbilled_reason" = Option<String>, Query, description = "Unbilled events with this reason code only.")),
    responses((status = 200, body = PageListEventsItem)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    mut query: QueryParams,
) -> Result<Json<PageListEventsItem>, ApiError> {
    let window = query.window(&event_repo::LIST_KEYS);
    let filter = EventFilter {
        event_id: query.string("event_id"),
        customer_id: query.string("customer_id"),
        customer_external_id: query.string("customer_external_id"),
        subject: query.string("subject"),
        period_from: query.time("period_from"),
        period_to: query.time("period_to"),
        event_types: query
            .string("event_types")
            .map(|types| types.split(',').map(|kind| kind.trim().to_owned()).filter(|kind| !kind.is_empty()).collect())
            .unwrap_or_default(),
        has_fees: query.bool("has_fees"),
        billed: match query.string("billing_status").as_deref() {
            None => None,
            Some("billed") => Some(true),
            Some("unbilled") => Some(false),
            Some(_) => {
                query
                    .errors
                    .push(FieldError { field: "billing_status".into(), message: "must be billed or unbilled".into() });
                None
            }
        },
        unbilled_reason: match query.string("unbilled_reason") {
            None => None,
            Some(code) => match UnbilledCode::parse(&code) {
                Some(code) => Some(code.as_str().to_owned()),
                None => {
                    let codes: Vec<&str> = UnbilledCode::ALL.iter().map(|code| code.as_str()).collect();
                    query.errors.push(FieldError {
                        field: "unbilled_reason".into(),
                        message: format!("must be one of {}", codes.join(", ")),
                    });
                    None
                }
            },
        },
    };
    query.finish()?;
    let read_window = window.clone();
    let listing = state.read(move |conn| Ok(event_repo::list(conn, auth.mode, &filter, &read_window)?)).await?;
    Ok(Json(PageListEventsItem::listed(listing, &window, &event_repo::LIST_KEYS, list_item)))
}

fn detail_number(detail: &serde_json::Value, field: &str) -> Option<Amount> {
    detail.get(field).and_then(|value| parse_decimal(&value.to_string())).map(Amount)
}

#[utoipa::path(get, path = "/events/{eventId}", operation_id = "get_event", tag = "Events", params(("eventId" = String, Path)),
    responses((status = 200, body = GetEventResponse), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(event_id): Path<String>,
) -> Result<Json<GetEventResponse>, ApiError> {
    let (event, fees, stats) = state
        .read(move |conn| {
            let (event, _) = event_repo::get(conn, auth.mode, &event_id)?
                .ok_or_else(|| OpError::NotFound(format!("event {event_id} not found")))?;
            let fees = event_repo::fees(conn, auth.mode, &event.id)?;
            let scope = Scope {
                customer_id: Some(event.customer_id.clone()),
                event_id: Some(event.id.clone()),
                from: None,
                to: None,
            };
            let stats = profitability(conn, auth.mode, &scope, "USD")?;
            Ok((event, fees, stats))
        })
        .await?;
    let fees = fees
        .into_iter()
        .map(|fee| {
            let detail: serde_json::Value = serde_json::from_str(&fee.detail).unwrap_or_default();
            EventFee {
                id: fee.id,
                product_id: fee.product_id,
                product_code: fee.product_code,
                product_version: fee.product_version,
                price_id: fee.price_id,
                price_name: fee.price_name,
                currency: fee.asset,
                dimensions: serde_json::from_value(detail["dimensions"].clone()).unwrap_or_default(),
                usage_type: detail["usage_type"].as_str().unwrap_or_default().to_owned(),
                volume_field: detail["volume_field"].as_str().map(str::to_owned),
                input_volume: detail_number(&detail, "input_volume"),
                unit_price: detail_number(&detail, "unit_price"),
                volume_rate: detail_number(&detail, "volume_rate"),
                package_size: detail_number(&detail, "package_size"),
                description: detail["description"].as_str().map(str::to_owned),
                amount: fee.amount.into(),
            }
        })
        .collect();
    let (billing_status, unbilled_reason) = billing(event.unbilled);
    Ok(Json(GetEventResponse {
        id: event.id,
        event_type: event.event_type,
        occurred_at: event.occurred_at.into(),
        subject: event.subject,
        description: event.description,
        data: serde_json::from_str(&event.data).unwrap_or_default(),
        costs: serde_json::from_str(&event.costs).unwrap_or_default(),
        customer_id: event.customer_id,
        created_at: event.created_at.into(),
        fees,
        billing_status,
        unbilled_reason,
        stats: crate::routes::vendors::stats_view(stats),
    }))
}

/// The longest period one `POST /events/rebill` may cover.
pub const MAX_REBILL_PERIOD_DAYS: i64 = 31;
/// How many unbilled events one `POST /events/rebill` looks at, unless `limit` says otherwise.
pub const DEFAULT_REBILL_LIMIT: usize = 100;
/// The most event types one `POST /events/rebill` may name.
pub const MAX_REBILL_EVENT_TYPES: usize = 100;

#[derive(Debug, Deserialize, ToSchema)]
pub struct RebillRequest {
    /// Only this customer's events.
    pub customer_id: Option<String>,
    /// Only events of these types.
    pub event_types: Option<Vec<String>>,
    /// Inclusive lower bound on the events' `occurred_at`.
    pub period_from: Timestamp,
    /// Exclusive upper bound on the events' `occurred_at`: after `period_from`, at most 31 days
    /// after it.
    pub period_to: Timestamp,
    /// Report what a rebill would bill, and bill nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// How many unbilled events to look at, oldest first: 1 to 1000 (default 100).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous answer, to go on after the events it looked at.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RebillResponse {
    pub dry_run: bool,
    /// The unbilled events looked at (an event a concurrent rebill billed first is not).
    pub events_examined: usize,
    pub events_billed: usize,
    pub events_still_unbilled: usize,
    /// The fees billed, per currency.
    pub fees: Vec<RebillTotal>,
    /// The events billed, oldest first, with their fees.
    pub billed: Vec<RebilledEvent>,
    /// The events still unbilled, oldest first, with their reason now.
    pub still_unbilled: Vec<StillUnbilledEvent>,
    /// Whether the range holds more unbilled events after these: send again with `cursor`.
    pub has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RebillTotal {
    pub currency: String,
    /// How many fees.
    pub count: usize,
    pub amount: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RebilledEvent {
    pub id: String,
    pub customer_id: String,
    pub event_type: String,
    pub occurred_at: Timestamp,
    /// The sum of the fees, when they are all in one asset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_fees: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fee_currency: Option<String>,
    pub fees: Vec<RebilledFee>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RebilledFee {
    pub product_id: String,
    pub product_code: String,
    pub product_version: i64,
    pub price_id: String,
    pub price_name: String,
    pub currency: String,
    pub amount: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StillUnbilledEvent {
    pub id: String,
    pub customer_id: String,
    pub event_type: String,
    pub occurred_at: Timestamp,
    pub unbilled_reason: UnbilledReason,
}

/// A cursor names the last event a page looked at: its `occurred_at` in microseconds and id.
fn rebill_cursor(cursor: &event_repo::EventCursor) -> String {
    format!("{}:{}", cursor.occurred_at.timestamp_micros(), cursor.id)
}

fn parse_rebill_cursor(text: &str) -> Option<event_repo::EventCursor> {
    let (micros, id) = text.split_once(':')?;
    let occurred_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    (!id.is_empty()).then(|| event_repo::EventCursor { occurred_at, id: id.to_owned() })
}

#[utoipa::path(post, path = "/events/rebill", operation_id = "rebill_events", tag = "Events", request_body = RebillRequest,
    responses((status = 200, body = RebillResponse, description = "The unbilled events looked at: those billed now, with \
        their fees, and those still unbilled, with their reason. A dry run reports the same and bills nothing."),
        (status = 422)))]
pub async fn rebill(
    State(state): State<AppState>,
    auth: Auth,
    JsonBody(request): JsonBody<RebillRequest>,
) -> Result<Json<RebillResponse>, ApiError> {
    let mut checker = Checker::default();
    let (period_from, period_to) = (request.period_from.0, request.period_to.0);
    if period_to <= period_from {
        checker.error("period_to", "must be after period_from");
    } else if period_to - period_from > Duration::days(MAX_REBILL_PERIOD_DAYS) {
        checker.error("period_to", format!("must be at most {MAX_REBILL_PERIOD_DAYS} days after period_from"));
    }
    let limit = match request.limit {
        None => DEFAULT_REBILL_LIMIT,
        Some(limit) if (1..=MAX_BATCH as i64).contains(&limit) => limit as usize,
        Some(_) => {
            checker.error("limit", format!("must be from 1 to {MAX_BATCH}"));
            DEFAULT_REBILL_LIMIT
        }
    };
    let customer_id = checker.opt_text("customer_id", request.customer_id.as_deref(), MAX_TEXT_CHARS);
    let types = request.event_types.unwrap_or_default();
    if types.len() > MAX_REBILL_EVENT_TYPES {
        checker.error("event_types", format!("at most {MAX_REBILL_EVENT_TYPES} event types"));
    }
    let event_types = types
        .iter()
        .enumerate()
        .map(|(index, kind)| checker.text(&format!("event_types[{index}]"), kind, MAX_TEXT_CHARS))
        .collect();
    let after = match request.cursor.as_deref() {
        None => None,
        Some(text) => {
            let cursor = parse_rebill_cursor(text);
            if cursor.is_none() {
                checker.error("cursor", "is not a next_cursor this endpoint answered");
            }
            cursor
        }
    };
    checker.finish()?;
    let scan = event_repo::UnbilledScan { customer_id, event_types, period_from, period_to, after };
    let catalog = state.catalog.clone();
    let now = state.now();
    let work = move |conn: &mut dyn tally_store::Conn| {
        rebill_ops::rebill(conn, auth.mode, &scan, limit, catalog.as_ref(), now)
    };
    let report = if request.dry_run { state.rehearse(work).await? } else { state.write(work).await? };
    Ok(Json(rebill_view(report, request.dry_run)))
}

fn rebill_view(report: RebillReport, dry_run: bool) -> RebillResponse {
    let billed: Vec<RebilledEvent> = report
        .billed
        .into_iter()
        .map(|(event, fees)| RebilledEvent {
            id: event.id,
            customer_id: event.customer_id,
            event_type: event.event_type,
            occurred_at: event.occurred_at.into(),
            total_fees: event.total_fees.map(Amount),
            fee_currency: event.fee_currency,
            fees: fees
                .into_iter()
                .map(|rated| RebilledFee {
                    product_id: rated.version.product_id.clone(),
                    product_code: rated.version.product_code.clone(),
                    product_version: rated.version.version,
                    price_id: rated.fee.price_id,
                    price_name: rated.price_name,
                    currency: rated.fee.asset,
                    amount: Amount(rated.fee.amount),
                })
                .collect(),
        })
        .collect();
    let still_unbilled: Vec<StillUnbilledEvent> = report
        .still_unbilled
        .into_iter()
        .filter_map(|event| {
            let StoredUnbilledReason { code, message } = event.unbilled?;
            Some(StillUnbilledEvent {
                id: event.id,
                customer_id: event.customer_id,
                event_type: event.event_type,
                occurred_at: event.occurred_at.into(),
                unbilled_reason: UnbilledReason { code, message },
            })
        })
        .collect();
    RebillResponse {
        dry_run,
        events_examined: report.examined,
        events_billed: billed.len(),
        events_still_unbilled: still_unbilled.len(),
        fees: report
            .totals
            .into_iter()
            .map(|(currency, (count, amount))| RebillTotal { currency, count, amount: Amount(amount) })
            .collect(),
        billed,
        still_unbilled,
        has_more: report.next.is_some(),
        next_cursor: report.next.as_ref().map(rebill_cursor),
    }
}
