//! Holds (pre-authorisation): reserve an estimate before a long job, capture what it used,
//! release the rest. The rules are in `tally_store::ops::holds` and docs/api.md ("Holds").

use crate::check::{account_id, Checker};
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody, QueryParams};
use crate::limits::MAX_DESCRIPTION_CHARS;
use crate::types::{Amount, Timestamp};
use crate::{page_type, AppState};
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tally_store::ops::holds::{self as hold_ops, Capture, CaptureOutcome, HoldOutcome, NewHold};
use tally_store::ops::wallet::RESERVED_TRANSACTION_PREFIX;
use tally_store::ops::{customers as customer_ops, FieldError};
use tally_store::repo::holds::{self as hold_repo, Hold, HoldStatus};
use tally_store::repo::Window;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateHoldRequest {
    /// The hold's id, and its idempotency key: the same request again answers the same hold,
    /// another request with this id is a 409.
    pub transaction_id: String,
    /// Defaults to `default`.
    pub account_name: Option<String>,
    pub asset: String,
    /// What to hold, > 0, in at most the asset's decimal places.
    pub amount: Amount,
    /// Hold even when `available` cannot cover the amount. Without it, a hold `available`
    /// cannot cover is refused (422, naming the shortfall).
    #[serde(default)]
    pub allow_overdraft: bool,
    /// When the worker releases what is left. Defaults to the server's `hold_expiry_seconds`
    /// from now, and may be at most `hold_max_expiry_seconds` from now.
    pub expires_at: Option<Timestamp>,
    pub description: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CaptureHoldRequest {
    /// What the job used, > 0. Up to what the hold still holds comes out of it; the rest is
    /// debited beyond it as usage is (overdraft allowed) and reported as `beyond_hold`.
    pub amount: Amount,
    /// The capture's fee transaction id, and its idempotency key. Without one the capture is
    /// not idempotent: send one to retry safely.
    pub transaction_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoldOut {
    /// The `transaction_id` the hold was made with.
    pub id: String,
    pub customer_id: String,
    pub account_id: String,
    pub asset: String,
    /// `held` (open, possibly partly captured), `captured` (all it held was captured),
    /// `released` or `expired` (what was left went back to `available`).
    pub status: String,
    /// What was held at first.
    pub amount: Amount,
    /// What captures took out of the hold.
    pub captured: Amount,
    /// What went back to `available`, by a release or at expiry.
    pub released: Amount,
    /// What it still holds (`amount - captured - released`); counted in the account's `pending_out`.
    pub held: Amount,
    pub allow_overdraft: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub expires_at: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Timestamp>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CaptureOut {
    /// The fee transaction the capture made (`GET /customers/{id}/wallet/transactions/{id}`).
    pub transaction_id: String,
    /// The whole capture: `from_hold + beyond_hold`.
    pub amount: Amount,
    /// What came out of the hold.
    pub from_hold: Amount,
    /// What was asked beyond what the hold held, debited as usage is.
    pub beyond_hold: Amount,
    /// The hold after the capture.
    pub hold: HoldOut,
}

page_type!(PageHold, HoldOut);

fn hold_view(hold: Hold) -> HoldOut {
    HoldOut {
        account_id: account_id(&hold.account_name, &hold.asset),
        held: hold.remaining().into(),
        id: hold.id,
        customer_id: hold.customer_id,
        asset: hold.asset,
        status: hold.status.as_str().to_owned(),
        amount: hold.amount.into(),
        captured: hold.captured.into(),
        released: hold.released.into(),
        allow_overdraft: hold.allow_overdraft,
        description: hold.description,
        metadata: hold.metadata,
        expires_at: hold.expires_at.into(),
        created_at: hold.created_at.into(),
        updated_at: hold.updated_at.into(),
        closed_at: hold.closed_at.map(Timestamp),
    }
}

fn replayed_header(replayed: bool) -> [(HeaderName, HeaderValue); 1] {
    [(
        HeaderName::from_static("idempotent-replayed"),
        HeaderValue::from_static(if replayed { "true" } else { "false" }),
    )]
}

fn client_transaction_id(checker: &mut Checker, field: &str, value: &str) -> String {
    let id = checker.client_id(field, value);
    if id.starts_with(RESERVED_TRANSACTION_PREFIX) {
        checker
            .error(field, format!("must not start with {RESERVED_TRANSACTION_PREFIX}, which Tally keeps for itself"));
    }
    id
}

fn parse_hold(request: &CreateHoldRequest) -> Result<NewHold, ApiError> {
    let mut checker = Checker::default();
    let transaction_id = client_transaction_id(&mut checker, "transaction_id", &request.transaction_id);
    let account_name = checker.account_name("account_name", request.account_name.as_deref());
    let asset = checker.asset_code("asset", &request.asset);
    let amount = checker.positive("amount", request.amount);
    let description = checker.opt_text("description", request.description.as_deref(), MAX_DESCRIPTION_CHARS);
    let metadata = checker.metadata("metadata", request.metadata.as_ref());
    checker.finish()?;
    Ok(NewHold {
        transaction_id,
        account_name,
        asset: asset.expect("checked"),
        amount,
        allow_overdraft: request.allow_overdraft,
        expires_at: request.expires_at.map(|at| at.0),
        description,
        metadata,
    })
}

#[utoipa::path(post, path = "/customers/{customerId}/wallet/holds", operation_id = "create_hold", tag = "Holds",
    params(("customerId" = String, Path)), request_body = CreateHoldRequest,
    responses((status = 201, body = HoldOut, description = "Held (or an exact replay: `Idempotent-Replayed: true`)."),
        (status = 404), (status = 409), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Path(customer_id): Path<String>,
    JsonBody(request): JsonBody<CreateHoldRequest>,
) -> Result<(StatusCode, [(HeaderName, HeaderValue); 1], Json<HoldOut>), ApiError> {
    let new = parse_hold(&request)?;
    let now = state.now();
    let limits = state.config.holds;
    let HoldOutcome { hold, replayed } =
        state.write(move |conn| hold_ops::create(conn, auth.mode, &customer_id, &new, limits, now)).await?;
    Ok((StatusCode::CREATED, replayed_header(replayed), Json(hold_view(hold))))
}

#[utoipa::path(post, path = "/customers/{customerId}/wallet/holds/{holdId}/capture", operation_id = "capture_hold", tag = "Holds",
    params(("customerId" = String, Path), ("holdId" = String, Path)), request_body = CaptureHoldRequest,
    responses((status = 201, body = CaptureOut, description = "Captured (or an exact replay of a capture with the same `transaction_id`)."),
        (status = 404), (status = 409, description = "The hold is captured, released or expired, or the transaction_id was used for another request."),
        (status = 422)))]
pub async fn capture(
    State(state): State<AppState>,
    auth: Auth,
    Path((customer_id, hold_id)): Path<(String, String)>,
    JsonBody(request): JsonBody<CaptureHoldRequest>,
) -> Result<(StatusCode, [(HeaderName, HeaderValue); 1], Json<CaptureOut>), ApiError> {
    let mut checker = Checker::default();
    let amount = checker.positive("amount", request.amount);
    let transaction_id =
        request.transaction_id.as_deref().map(|id| client_transaction_id(&mut checker, "transaction_id", id));
    checker.finish()?;
    let capture = Capture { hold_id, amount, transaction_id };
    let now = state.now();
    let CaptureOutcome { hold, transaction, from_hold, beyond_hold, replayed } =
        state.write(move |conn| hold_ops::capture(conn, auth.mode, &customer_id, &capture, now)).await?;
    let out = CaptureOut {
        transaction_id: transaction.id,
        amount: (-transaction.amount).into(),
        from_hold: from_hold.into(),
        beyond_hold: beyond_hold.into(),
        hold: hold_view(hold),
    };
    Ok((StatusCode::CREATED, replayed_header(replayed), Json(out)))
}

#[utoipa::path(post, path = "/customers/{customerId}/wallet/holds/{holdId}/release", operation_id = "release_hold", tag = "Holds",
    params(("customerId" = String, Path), ("holdId" = String, Path)),
    responses((status = 200, body = HoldOut, description = "Released (a released hold answers again as it is)."),
        (status = 404), (status = 409, description = "The hold is captured or expired.")))]
pub async fn release(
    State(state): State<AppState>,
    auth: Auth,
    Path((customer_id, hold_id)): Path<(String, String)>,
) -> Result<Json<HoldOut>, ApiError> {
    let now = state.now();
    let hold = state.write(move |conn| hold_ops::release(conn, auth.mode, &customer_id, &hold_id, now)).await?;
    Ok(Json(hold_view(hold)))
}

#[utoipa::path(get, path = "/customers/{customerId}/wallet/holds", operation_id = "list_holds", tag = "Holds",
    params(("customerId" = String, Path), ("status" = Option<String>, Query, description = "held, captured, released or expired"),
           ("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = PageHold), (status = 404), (status = 422)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Path(customer_id): Path<String>,
    mut query: QueryParams,
) -> Result<Json<PageHold>, ApiError> {
    let page = query.page();
    let status = query.string("status").and_then(|text| {
        let parsed = HoldStatus::parse(&text);
        if parsed.is_none() {
            query.errors.push(FieldError {
                field: "status".into(),
                message: "must be held, captured, released or expired".into(),
            });
        }
        parsed
    });
    query.finish()?;
    let listing = state
        .read(move |conn| {
            customer_ops::require(conn, auth.mode, &customer_id)?;
            Ok(hold_repo::list(conn, auth.mode, &customer_id, status, &Window::from(page))?)
        })
        .await?;
    Ok(Json(PageHold::new(listing.items.into_iter().map(hold_view).collect(), listing.total, page)))
}

#[utoipa::path(get, path = "/customers/{customerId}/wallet/holds/{holdId}", operation_id = "get_hold", tag = "Holds",
    params(("customerId" = String, Path), ("holdId" = String, Path)),
    responses((status = 200, body = HoldOut), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path((customer_id, hold_id)): Path<(String, String)>,
) -> Result<Json<HoldOut>, ApiError> {
    let hold = state
        .read(move |conn| {
            customer_ops::require(conn, auth.mode, &customer_id)?;
            hold_ops::require(conn, auth.mode, &customer_id, &hold_id)
        })
        .await?;
    Ok(Json(hold_view(hold)))
}
