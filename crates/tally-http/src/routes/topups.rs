use crate::check::Checker;
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody};
use crate::html::page;
use crate::limits::MAX_DESCRIPTION_CHARS;
use crate::payments::{test_provider, CheckoutRequest, PaymentProvider};
use crate::types::{Amount, Timestamp};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tally_core::{Environment, Mode};
use tally_store::ops::topups::{self as topup_ops, Initiated, NewPaymentMethod, NewTopUp};
use tally_store::ops::OpError;
use tally_store::repo::customers as customer_repo;
use tally_store::repo::topups::{self as topup_repo, TopUp, TopUpStatus};
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
    /// When the credit should expire, as asked when the top-up was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_expires_at: Option<Timestamp>,
    /// Once succeeded: when the credit granted expires. It is `credit_expires_at`, or one year
    /// after the payment (the default lifetime of paid credit) when none was asked or the asked
    /// instant had passed when the payment succeeded; absent when it never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted_credit_expires_at: Option<Timestamp>,
    /// Present when the credit's expiry differs from the one asked, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_expiry_note: Option<String>,
    /// True while the provider reports the payment on its way (a bank debit): the top-up then
    /// waits for the outcome and does not expire.
    pub payment_processing: bool,
}

pub fn top_up_view(top_up: TopUp) -> GetTopUpResponse {
    let credit_expiry_note = match (top_up.status, top_up.credit_expires_at, top_up.completed_at) {
        (TopUpStatus::Succeeded, Some(asked), Some(paid)) if asked <= paid => Some(
            "credit_expires_at had passed when the payment succeeded: the credit expires one year after the payment, \
             the default lifetime of paid credit"
                .to_owned(),
        ),
        _ => None,
    };
    GetTopUpResponse {
        payment_processing: top_up.status.is_open() && top_up.processing_since.is_some(),
        credit_expires_at: top_up.credit_expires_at.map(Timestamp),
        granted_credit_expires_at: top_up.granted_credit_expires_at.map(Timestamp),
        credit_expiry_note,
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

/// An absolute http(s) URL a client gave (see [`Checker::http_url`]).
pub fn check_url(checker: &mut Checker, field: &str, value: &str) -> String {
    checker.http_url(field, value)
}

fn provider_for(state: &AppState, mode: Mode) -> Result<Arc<dyn PaymentProvider>, ApiError> {
    state
        .providers
        .for_mode(mode)
        .ok_or_else(|| ApiError::Unavailable("live payments are not configured: set stripe_secret_key".into()))
}

/// When a top-up made at `now` stops waiting for its payment.
fn payment_window_end(state: &AppState, now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    now + chrono::Duration::from_std(state.config.top_up_expiry).unwrap_or(chrono::Duration::hours(24))
}

/// Starts a top-up through the mode's provider: records it (holding `pending_in`), opens the
/// provider's checkout outside any transaction, then records the checkout.
pub async fn start(state: &AppState, mode: Mode, new: NewTopUp, public: String) -> Result<TopUp, ApiError> {
    let provider = provider_for(state, mode)?;
    let now = state.now();
    let expires_at = payment_window_end(state, now);
    let provider_name = provider.name();
    let top_up = state.write(move |conn| topup_ops::initiate(conn, mode, &new, provider_name, expires_at, now)).await?;
    open_checkout(state, mode, provider.as_ref(), top_up, public).await
}

/// Opens the provider's checkout for a recorded top-up and records it; when the provider
/// cannot, the top-up fails (releasing its `pending_in`) and the error says why.
async fn open_checkout(
    state: &AppState,
    mode: Mode,
    provider: &dyn PaymentProvider,
    top_up: TopUp,
    public: String,
) -> Result<TopUp, ApiError> {
    let customer_id = top_up.customer_id.clone();
    let expires_at = top_up.expires_at;
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
        now: state.now(),
        save_payment_method: top_up.save_payment_method,
        checkout_token: top_up.checkout_token.clone(),
        public_url: public,
    };
    match provider.start_checkout(&request).await {
        Ok(checkout) => {
            let id = top_up.id.clone();
            let now = state.now();
            state
                .write(move |conn| {
                    topup_ops::attach_checkout(conn, mode, &id, &checkout.reference, &checkout.redirect_url, now)
                })
                .await
        }
        Err(error) => {
            let id = top_up.id.clone();
            let reason = error.to_string();
            let now = state.now();
            state.write(move |conn| topup_ops::fail(conn, mode, &id, &reason, false, now)).await?;
            Err(checkout_refused(&error.to_string()))
        }
    }
}

fn checkout_refused(reason: &str) -> ApiError {
    ApiError::Unavailable(format!("the payment provider could not start a checkout: {reason}"))
}

/// Where a subscription waits for a payment, makes sure the customer has a checkout link that
/// still takes it: a top-up that failed or expired unpaid is replaced by a new one (see
/// `ops::topups::renew_subscription_payments`). Run before showing a customer's
/// subscriptions. Problems are logged, never shown: reading a customer must not fail because
/// a payment provider is down.
pub async fn renew_subscription_payment_links(state: &AppState, mode: Mode, customer_id: &str, public: String) {
    if let Err(error) = renew_links(state, mode, customer_id, public).await {
        tracing::warn!(customer = %customer_id, ?error, "could not renew the payment links of waiting subscriptions");
    }
}

async fn renew_links(state: &AppState, mode: Mode, customer_id: &str, public: String) -> Result<(), ApiError> {
    let Some(provider) = state.providers.for_mode(mode) else {
        return Ok(());
    };
    let now = state.now();
    // A read first: most customers have nothing waiting and need no write transaction.
    let (customer, catalog) = (customer_id.to_owned(), state.catalog.clone());
    let nothing_to_do = state
        .read(
            move |conn| Ok(topup_ops::subscription_payments(conn, mode, &customer, catalog.as_ref(), now)?.is_empty()),
        )
        .await?;
    if nothing_to_do {
        return Ok(());
    }
    let (customer, catalog) = (customer_id.to_owned(), state.catalog.clone());
    let (provider_name, expires_at) = (provider.name(), payment_window_end(state, now));
    let unlinked = state
        .write(move |conn| {
            topup_ops::renew_subscription_payments(
                conn,
                mode,
                &customer,
                catalog.as_ref(),
                provider_name,
                expires_at,
                now,
            )
        })
        .await?;
    // The provider's checkout is idempotent by top-up id, so a top-up another request is
    // opening at the same moment gets the same checkout.
    for top_up in unlinked {
        let id = top_up.id.clone();
        if let Err(error) = open_checkout(state, mode, provider.as_ref(), top_up, public.clone()).await {
            tracing::warn!(top_up = %id, ?error, "could not open the checkout of a subscription's payment");
        }
    }
    Ok(())
}

/// The `Idempotency-Key` header, when given: 1 to 255 printable ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().ok().map(str::trim).filter(|key| {
        !key.is_empty()
            && key.len() <= tally_store::repo::idempotency::MAX_KEY_LENGTH
            && key.chars().all(|c| c.is_ascii_graphic())
    });
    match key {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(ApiError::invalid(
            "Idempotency-Key",
            format!(
                "must be 1 to {} printable ASCII characters without spaces",
                tally_store::repo::idempotency::MAX_KEY_LENGTH
            ),
        )),
    }
}

fn initiated_response(top_up: TopUp) -> InitiateTopUpResponse {
    InitiateTopUpResponse {
        id: top_up.id,
        status: top_up.status.as_str().to_owned(),
        redirect_url: top_up.redirect_url.unwrap_or_default(),
        created_at: top_up.created_at.into(),
        expires_at: top_up.expires_at.into(),
    }
}

/// The answer the first request with an idempotency key got, rebuilt from what it made: the
/// top-up as it was when created, or the provider's refusal. While the first request is still
/// opening the checkout, a 409 asks to retry.
fn replayed_response(top_up: TopUp) -> Result<InitiateTopUpResponse, ApiError> {
    match (&top_up.redirect_url, top_up.status.is_open()) {
        (Some(_), _) => Ok(InitiateTopUpResponse {
            status: TopUpStatus::Initiated.as_str().to_owned(),
            ..initiated_response(top_up)
        }),
        (None, true) => Err(ApiError::Conflict(
            "the first request with this Idempotency-Key is still being processed; retry it in a moment".into(),
        )),
        (None, false) => Err(checkout_refused(top_up.failure_reason.as_deref().unwrap_or("unknown reason"))),
    }
}

#[utoipa::path(post, path = "/top-ups", operation_id = "initiate_top_up", tag = "TopUps", request_body = InitiateTopUpRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes the request safe to retry: a retry with the same key returns the first answer and creates nothing; the same key with a different request is a 409.")),
    responses((status = 201, body = InitiateTopUpResponse), (status = 409), (status = 422), (status = 503)))]
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
    let return_url = checker.http_url("return_url", &request.return_url);
    let failure_url = checker.http_url("failure_url", &request.failure_url);
    let description = checker.opt_text("description", request.description.as_deref(), MAX_DESCRIPTION_CHARS);
    let metadata = checker.metadata("metadata", request.metadata.as_ref());
    checker.finish()?;
    let key = idempotency_key(&headers)?;
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
    let public = public_url(&state, &headers);
    let Some(key) = key else {
        let top_up = start(&state, auth.mode, new, public).await?;
        return Ok((StatusCode::CREATED, Json(initiated_response(top_up))));
    };
    let (mode, provider) = (auth.mode, provider_for(&state, auth.mode)?);
    let now = state.now();
    let (provider_name, expires_at) = (provider.name(), payment_window_end(&state, now));
    let initiated = state
        .write(move |conn| topup_ops::initiate_once(conn, mode, &new, &key, provider_name, expires_at, now))
        .await?;
    let top_up = match initiated {
        Initiated::New(top_up) => open_checkout(&state, mode, provider.as_ref(), top_up, public).await?,
        Initiated::Replay(top_up) => return Ok((StatusCode::CREATED, Json(replayed_response(top_up)?))),
    };
    Ok((StatusCode::CREATED, Json(initiated_response(top_up))))
}

#[utoipa::path(get, path = "/top-ups/{topUpId}", operation_id = "get_top_up", tag = "TopUps", params(("topUpId" = String, Path)),
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
    match auth.mode.environment() {
        Environment::Test => Ok(()),
        Environment::Live => Err(ApiError::NotFound("test helpers exist only in test mode".into())),
    }
}

#[utoipa::path(post, path = "/test-helpers/top-ups/{topUpId}/succeed", operation_id = "succeed_test_top_up", tag = "TopUps", params(("topUpId" = String, Path)),
    responses((status = 200, body = GetTopUpResponse), (status = 404), (status = 409)))]
pub async fn test_succeed(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<GetTopUpResponse>, ApiError> {
    test_mode_only(&auth)?;
    let now = state.now();
    let method = NewPaymentMethod {
        provider_reference: format!("pm_test_card_{}", test_provider::SUCCEEDING_CARD),
        provider_customer: None,
        brand: Some("visa".into()),
        last4: Some("4242".into()),
        expiry: Some(test_provider::TEST_CARD_EXPIRY),
    };
    let settled = state.write(move |conn| topup_ops::succeed(conn, auth.mode, &id, Some(&method), now)).await?;
    Ok(Json(top_up_view(settled.top_up)))
}

#[utoipa::path(post, path = "/test-helpers/top-ups/{topUpId}/fail", operation_id = "fail_test_top_up", tag = "TopUps", params(("topUpId" = String, Path)),
    responses((status = 200, body = GetTopUpResponse), (status = 404), (status = 409)))]
pub async fn test_fail(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<GetTopUpResponse>, ApiError> {
    test_mode_only(&auth)?;
    let now = state.now();
    let top_up =
        state.write(move |conn| topup_ops::fail(conn, auth.mode, &id, "failed by a test helper", false, now)).await?;
    Ok(Json(top_up_view(top_up)))
}

/// Whether two secrets are equal, in a time that does not depend on where they differ.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(left, right).into()
}

/// Where a payer lands after paying a subscription's fee when the platform gave no
/// `return_url` of its own.
pub async fn checkout_complete(State(state): State<AppState>) -> Response {
    let body = maud::html! { h1 { "Thank you" } p { "Your payment is being processed. You can close this page." } };
    page(&state.branding, "Payment", body).into_response()
}
