//! `POST /billing-portal/sessions`: a platform asks for a pre-authenticated link to its
//! customer's billing portal. The pages themselves live in `crate::portal`.

use crate::check::Checker;
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody};
use crate::routes::topups::{check_url, public_url};
use crate::types::Timestamp;
use crate::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use tally_store::ops::portal as portal_ops;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateSessionRequest {
    /// The customer whose portal to open.
    pub customer_id: String,
    /// Where the portal's "back" link takes the customer.
    pub return_url: String,
    /// Where an expired or already-used link takes the customer.
    pub failure_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateSessionResponse {
    /// The pre-authenticated portal link: good for one use, until `expires_at`.
    pub redirect_url: String,
    /// When the link stops working (10 minutes after it was made).
    pub expires_at: Timestamp,
}

#[utoipa::path(post, path = "/billing-portal/sessions", operation_id = "create_portal_session", tag = "BillingPortal", request_body = CreateSessionRequest,
    responses((status = 200, body = CreateSessionResponse), (status = 422)))]
pub async fn create_portal_session(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CreateSessionRequest>,
) -> Result<Json<CreateSessionResponse>, ApiError> {
    let mut checker = Checker::default();
    let customer_id = checker.client_id("customer_id", &request.customer_id);
    let return_url = check_url(&mut checker, "return_url", &request.return_url);
    let failure_url = check_url(&mut checker, "failure_url", &request.failure_url);
    checker.finish()?;
    let now = state.now();
    let link = state
        .write(move |conn| portal_ops::create_link(conn, auth.mode, &customer_id, &return_url, &failure_url, now))
        .await?;
    Ok(Json(CreateSessionResponse {
        redirect_url: format!("{}/portal/enter?token={}", public_url(&state, &headers), link.token),
        expires_at: link.expires_at.into(),
    }))
}
