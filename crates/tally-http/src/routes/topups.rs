use crate::check::Checker;
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody};
use crate::html::{escape, page};
use crate::limits::MAX_DESCRIPTION_CHARS;
use crate::payments::{test_provider, CheckoutRequest};
use crate::types::{Amount, Timestamp};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tally_core::Mode;
use tally_store::ops::topups::{self as topup_ops, NewPaymentMethod, NewTopUp};
use tally_store::ops::OpError;
use tally_store::repo::customers as customer_repo;
use tally_store::repo::topups::{self as topup_repo, TopUp};
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct TopUpDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    pub asset: String,
    /// Source units per asset unit, overriding the asset's rate (platform-initiated top-ups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_rate: Option<Amount>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InitiateTopUpRequest {
    pub customer_id: String,
    pub amount: Amount,
    pub currency: String,
    pub description: Option<String>,
    pub destination: Option<TopUpDestination>,
    pub credit_expires_at: Option<Timestamp>,
    pub return_url: String,
    pub failure_url: String,
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InitiateTopUpResponse {
    pub id: String,
    pub status: String,
    pub redirect_url: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GetTopUpResponse {
    pub id: String,
    pub customer_id: String,
    pub amount: Amount,
    pub currency: String,
    pub destination: TopUpDestination,
    /// `initiated`, `pending`, `succeeded`, `failed` or `expired`.
    pub status: String,
    /// What the wallet receives (or received) on success.
    pub asset_amount: Amount,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
}

pub fn top_up_view(top_up: TopUp) -> GetTopUpResponse {
    GetTopUpResponse {
        destination: TopUpDestination {
            account_name: Some(top_up.account_name.clone()),
            asset: top_up.asset.clone(),
            exchange_rate: Some(top_up.rate.rate().into()),
        },
        id: top_up.id,
        customer_id: top_up.customer_id,
        amount: top_up.amount.into(),
        currency: top_up.currency,
        status: top_up.status.as_str().to_owned(),
        asset_amount: top_up.asset_amount.into(),
        redirect_url: top_up.redirect_url,
        description: top_up.description,
        metadata: top_up.metadata,
        failure_reason: top_up.failure_reason,
        created_at: top_up.created_at.into(),
        expires_at: top_up.expires_at.into(),
        completed_at: top_up.completed_at.map(Timestamp),
    }
}

/// Tally's public base URL: the configured one, or the scheme and host the request came in on.
pub fn public_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers.get("host").and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1:8080");
    format!("http://{host}")
}

/// An absolute http(s) URL of sensible length.
pub fn check_url(checker: &mut Checker, field: &str, value: &str) -> String {
    let url = value.trim();
    let valid = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2048
        && !url.contains(char::is_whitespace);
    if !valid {
        checker.error(field, "must be an absolute http(s) URL of at most 2048 characters");
    }
    url.to_owned()
}

/// Starts a top-up through the mode's provider: records it (holding `pending_in`), opens the
/// provider's checkout outside any transaction, then records the checkout.
pub async fn start(state: &AppState, mode: Mode, new: NewTopUp, public: String) -> Result<TopUp, ApiError> {
    let provider = state
        .providers
        .for_mode(mode)
        .ok_or_else(|| ApiError::Unavailable("live payments are not configured: set stripe_secret_key".into()))?;
    let now = chrono::Utc::now();
    let expires_at =
        now + chrono::Duration::from_std(state.config.top_up_expiry).unwrap_or(chrono::Duration::hours(24));
    let provider_name = provider.name();
    let customer_id = new.customer_id.clone();
    let top_up = state.write(move |conn| topup_ops::initiate(conn, mode, &new, provider_name, expires_at, now)).await?;
    let email = state
        .read(move |conn| Ok(customer_repo::get(conn, mode, &customer_id)?.and_then(|customer| customer.email)))
        .await?;
    let request = CheckoutRequest {
        top_up_id: top_up.id.clone(),
        customer_id: top_up.customer_id.clone(),
        customer_email: email,
        amount: top_up.amount,
        currency: top_up.currency.clone(),
        description: top_up.description.clone().unwrap_or_else(|| format!("{} {}", top_up.asset_amount, top_up.asset)),
        success_url: top_up.return_url.clone(),
        cancel_url: top_up.failure_url.clone(),
        expires_at,
        save_payment_method: top_up.save_payment_method,
        checkout_token: top_up.checkout_token.clone(),
        public_url: public,
    };
    match provider.start_checkout(&request).await {
        Ok(checkout) => {
            let id = top_up.id.clone();
            let now = chrono::Utc::now();
            state
                .write(move |conn| {
                    topup_ops::attach_checkout(conn, mode, &id, &checkout.reference, &checkout.redirect_url, now)
                })
                .await
        }
        Err(error) => {
            let id = top_up.id.clone();
            let reason = error.to_string();
            let now = chrono::Utc::now();
            state.write(move |conn| topup_ops::fail(conn, mode, &id, &reason, false, now)).await?;
            Err(ApiError::Unavailable(format!("the payment provider could not start a checkout: {error}")))
        }
    }
}

#[utoipa::path(post, path = "/top-ups", tag = "TopUps", request_body = InitiateTopUpRequest,
    responses((status = 201, body = InitiateTopUpResponse), (status = 422), (status = 503)))]
pub async fn initiate(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    JsonBody(request): JsonBody<InitiateTopUpRequest>,
) -> Result<(StatusCode, Json<InitiateTopUpResponse>), ApiError> {
    let mut checker = Checker::default();
    let customer_id = checker.client_id("customer_id", &request.customer_id);
    let amount = checker.positive("amount", request.amount);
    let currency = checker.asset_code("currency", &request.currency);
    let destination = request.destination.as_ref();
    let account_name = checker.account_name(
        "destination.account_name",
        destination.and_then(|destination| destination.account_name.as_deref()),
    );
    let asset = destination.and_then(|destination| checker.asset_code("destination.asset", &destination.asset));
    let exchange_rate = destination
        .and_then(|destination| destination.exchange_rate)
        .map(|rate| checker.positive("destination.exchange_rate", rate));
    let return_url = check_url(&mut checker, "return_url", &request.return_url);
    let failure_url = check_url(&mut checker, "failure_url", &request.failure_url);
    let description = checker.opt_text("description", request.description.as_deref(), MAX_DESCRIPTION_CHARS);
    let metadata = checker.metadata("metadata", request.metadata.as_ref());
    checker.finish()?;
    let new = NewTopUp {
        customer_id,
        amount,
        currency: currency.expect("checked"),
        account_name,
        asset,
        exchange_rate,
        credit_expires_at: request.credit_expires_at.map(|at| at.0),
        return_url,
        failure_url,
        description,
        metadata,
        origin: "api".into(),
        save_payment_method: false,
        subscription_id: None,
    };
    let top_up = start(&state, auth.mode, new, public_url(&state, &headers)).await?;
    Ok((
        StatusCode::CREATED,
        Json(InitiateTopUpResponse {
            id: top_up.id,
            status: top_up.status.as_str().to_owned(),
            redirect_url: top_up.redirect_url.unwrap_or_default(),
            created_at: top_up.created_at.into(),
            expires_at: top_up.expires_at.into(),
        }),
    ))
}

#[utoipa::path(get, path = "/top-ups/{topUpId}", tag = "TopUps", params(("topUpId" = String, Path)),
    responses((status = 200, body = GetTopUpResponse), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<GetTopUpResponse>, ApiError> {
    let top_up = state
        .read(move |conn| {
            topup_repo::get(conn, auth.mode, &id)?.ok_or_else(|| OpError::NotFound(format!("top-up {id} not found")))
        })
        .await?;
    Ok(Json(top_up_view(top_up)))
}

fn test_mode_only(auth: &crate::extract::Auth) -> Result<(), ApiError> {
    match auth.mode {
        Mode::Test => Ok(()),
        Mode::Live => Err(ApiError::NotFound("test helpers exist only in test mode".into())),
    }
}

#[utoipa::path(post, path = "/test-helpers/top-ups/{topUpId}/succeed", tag = "TopUps", params(("topUpId" = String, Path)),
    responses((status = 200, body = GetTopUpResponse), (status = 404), (status = 409)))]
pub async fn test_succeed(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<GetTopUpResponse>, ApiError> {
    test_mode_only(&auth)?;
    let now = chrono::Utc::now();
    let method = NewPaymentMethod {
        provider_reference: format!("pm_test_card_{}", test_provider::SUCCEEDING_CARD),
        provider_customer: None,
        brand: Some("visa".into()),
        last4: Some("4242".into()),
    };
    let settled = state.write(move |conn| topup_ops::succeed(conn, auth.mode, &id, Some(&method), now)).await?;
    Ok(Json(top_up_view(settled.top_up)))
}

#[utoipa::path(post, path = "/test-helpers/top-ups/{topUpId}/fail", tag = "TopUps", params(("topUpId" = String, Path)),
    responses((status = 200, body = GetTopUpResponse), (status = 404), (status = 409)))]
pub async fn test_fail(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<GetTopUpResponse>, ApiError> {
    test_mode_only(&auth)?;
    let now = chrono::Utc::now();
    let top_up =
        state.write(move |conn| topup_ops::fail(conn, auth.mode, &id, "failed by a test helper", false, now)).await?;
    Ok(Json(top_up_view(top_up)))
}

#[derive(Debug, Deserialize)]
pub struct CheckoutQuery {
    pub token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CheckoutForm {
    pub token: String,
    pub card_number: String,
}

/// Loads a test-mode top-up whose checkout token matches, or answers a plain 404 page.
async fn checkout_top_up(state: &AppState, id: String, token: &str) -> Result<TopUp, Response> {
    let found =
        state.read(move |conn| Ok(topup_repo::get_any_mode(conn, &id)?)).await.map_err(IntoResponse::into_response)?;
    match found {
        Some((Mode::Test, top_up))
            if top_up.provider == "test" && constant_time_eq(top_up.checkout_token.as_bytes(), token.as_bytes()) =>
        {
            Ok(top_up)
        }
        _ => Err((
            StatusCode::NOT_FOUND,
            Html(page(&state.branding, "Not found", "<h1>This checkout link is not valid.</h1>")),
        )
            .into_response()),
    }
}

pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

fn checkout_page(state: &AppState, top_up: &TopUp, error: Option<&str>) -> String {
    let notice = error
        .map(|message| format!(r#"<div class="error" role="alert">{}</div>"#, escape(message)))
        .unwrap_or_default();
    let body = if top_up.status.is_open() {
        format!(
            r#"<h1>Pay {amount} {currency}</h1>{notice}
<div class="card"><p>You receive <strong>{asset_amount} {asset}</strong>.</p>
<form method="post" action="/checkout/{id}">
<input type="hidden" name="token" value="{token}">
<label for="card_number">Card number</label>
<input id="card_number" name="card_number" inputmode="numeric" autocomplete="cc-number" required placeholder="4242 4242 4242 4242">
<button type="submit">Pay {amount} {currency}</button></form>
<p class="muted">Test mode: 4242 4242 4242 4242 succeeds, 4000 0000 0000 0002 is declined.</p></div>
<p><a href="{failure_url}">Cancel and go back</a></p>"#,
            amount = escape(&top_up.amount.to_string()),
            currency = escape(&top_up.currency),
            asset_amount = escape(&top_up.asset_amount.to_string()),
            asset = escape(&top_up.asset),
            id = escape(&top_up.id),
            token = escape(&top_up.checkout_token),
            failure_url = escape(&top_up.failure_url),
        )
    } else {
        let link = if top_up.status == tally_store::repo::topups::TopUpStatus::Succeeded {
            &top_up.return_url
        } else {
            &top_up.failure_url
        };
        format!(
            r#"<h1>Top-up {status}</h1>{notice}<p><a class="button" href="{link}">Continue</a></p>"#,
            status = escape(top_up.status.as_str()),
            link = escape(link),
        )
    };
    page(&state.branding, "Checkout", &body)
}

/// The test provider's checkout page. Opening it moves the top-up to `pending`.
pub async fn checkout(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<CheckoutQuery>,
) -> Response {
    let top_up = match checkout_top_up(&state, id, query.token.as_deref().unwrap_or_default()).await {
        Ok(top_up) => top_up,
        Err(response) => return response,
    };
    let id = top_up.id.clone();
    let now = chrono::Utc::now();
    let top_up = match state.write(move |conn| topup_ops::mark_pending(conn, Mode::Test, &id, now)).await {
        Ok(top_up) => top_up,
        Err(error) => return error.into_response(),
    };
    Html(checkout_page(&state, &top_up, None)).into_response()
}

/// Pays with a test card: the succeeding card credits the wallet and returns the customer to
/// `return_url`; the declined card fails the top-up and says so.
pub async fn pay(State(state): State<AppState>, Path(id): Path<String>, Form(form): Form<CheckoutForm>) -> Response {
    let top_up = match checkout_top_up(&state, id, &form.token).await {
        Ok(top_up) => top_up,
        Err(response) => return response,
    };
    if !top_up.status.is_open() {
        return Html(checkout_page(&state, &top_up, None)).into_response();
    }
    let now = chrono::Utc::now();
    let id = top_up.id.clone();
    match test_provider::card_outcome(&form.card_number) {
        Some(Ok(())) => {
            let digits: String = form.card_number.chars().filter(char::is_ascii_digit).collect();
            let method = NewPaymentMethod {
                provider_reference: format!("pm_test_card_{digits}"),
                provider_customer: None,
                brand: Some("visa".into()),
                last4: Some(digits[digits.len().saturating_sub(4)..].to_owned()),
            };
            match state.write(move |conn| topup_ops::succeed(conn, Mode::Test, &id, Some(&method), now)).await {
                Ok(settled) => Redirect::to(&settled.top_up.return_url).into_response(),
                Err(error) => error.into_response(),
            }
        }
        Some(Err(reason)) => {
            let message = reason.clone();
            match state.write(move |conn| topup_ops::fail(conn, Mode::Test, &id, &message, false, now)).await {
                Ok(failed) => {
                    (StatusCode::PAYMENT_REQUIRED, Html(checkout_page(&state, &failed, Some(&reason)))).into_response()
                }
                Err(error) => error.into_response(),
            }
        }
        None => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(checkout_page(
                &state,
                &top_up,
                Some("That is not a test card. Use 4242 4242 4242 4242 or 4000 0000 0000 0002."),
            )),
        )
            .into_response(),
    }
}
