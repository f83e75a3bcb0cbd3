//! The test provider's checkout page (`/checkout/{top_up_id}?token=…`), served by Tally in
//! test mode. It shows the top-up as the billing portal does (the asset's name and label,
//! money formatted, the test-mode badge) and takes test cards. A declined card leaves the
//! top-up open, so the customer can try another card on the same page; cancelling ends it.

use super::test_provider;
use crate::html::{page, page_with, Branding};
use crate::portal::format::AssetLook;
use crate::routes::topups::constant_time_eq;
use crate::{ApiError, AppState};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use tally_core::asset::AssetCode;
use tally_core::{Environment, Mode};
use tally_store::ops::assets as asset_ops;
use tally_store::ops::topups as topup_ops;
use tally_store::repo::topups::{self as topup_repo, TopUp, TopUpStatus};

/// Why a customer's cancelled top-up ended.
pub const CANCELLED_REASON: &str = "cancelled by the customer";

#[derive(Debug, Deserialize)]
pub struct CheckoutQuery {
    pub token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CheckoutForm {
    pub token: String,
    #[serde(default)]
    pub card_number: String,
}

/// A test-mode top-up whose checkout token matched, with how its amounts look.
struct Found {
    mode: Mode,
    top_up: TopUp,
    branding: Branding,
    asset: AssetLook,
    currency: AssetLook,
}

fn look(conn: &mut dyn tally_store::Conn, mode: Mode, code: &str) -> Result<AssetLook, tally_store::ops::OpError> {
    Ok(match AssetCode::parse(code) {
        Ok(parsed) => asset_ops::find(conn, mode, &parsed)?.map(|known| AssetLook::of(&known)),
        Err(_) => None,
    }
    .unwrap_or_else(|| AssetLook::unknown(code)))
}

/// Loads a test-mode top-up (the platform's or a connected account's) whose checkout token
/// matches, or answers a 404 page.
async fn find(state: &AppState, id: String, token: &str) -> Result<Found, Response> {
    let found = state
        .read(move |conn| {
            let Some((mode, top_up)) = topup_repo::get_any_mode(conn, &id)? else { return Ok(None) };
            let asset = look(conn, mode, &top_up.asset)?;
            let currency = look(conn, mode, &top_up.currency)?;
            Ok(Some((mode, top_up, asset, currency)))
        })
        .await
        .map_err(IntoResponse::into_response)?;
    match found {
        Some((mode, top_up, asset, currency))
            if mode.environment() == Environment::Test
                && top_up.provider == "test"
                && constant_time_eq(top_up.checkout_token.as_bytes(), token.as_bytes()) =>
        {
            let branding = state.branding_for(mode).await;
            Ok(Found { mode, top_up, branding, asset, currency })
        }
        _ => Err(respond(
            StatusCode::NOT_FOUND,
            page(
                &state.branding,
                "Not found",
                html! {
                    h1 { "This checkout link is not valid." }
                    p { "Go back to where you came from and start the payment again." }
                },
            ),
        )),
    }
}

/// A checkout page with the headers of the portal's pages (no caching, no framing except
/// where the portal may be framed).
fn respond(status: StatusCode, body: Markup) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn checkout_page(found: &Found, error: Option<&str>) -> Markup {
    let Found { top_up, asset, currency, branding, .. } = found;
    let badge = html! {
        nav class="portal-nav" aria-label="Checkout" { span class="badge" { "Test mode" } }
    };
    let paid = currency.amount(top_up.amount);
    let body = if top_up.status.is_open() {
        // The asset's name is added when its label does not already say it.
        let name = !(asset.name.eq_ignore_ascii_case(&asset.label) || asset.is_currency);
        let action = format!("/checkout/{}", top_up.id);
        html! {
            h1 { "Pay " (paid) }
            @if let Some(message) = error { div id="card-error" class="error" role="alert" { (message) } }
            div class="card" {
                p {
                    "You receive " strong { (asset.amount(top_up.asset_amount)) }
                    @if name { " of " (asset.name) }
                    "."
                }
                form method="post" action=(action) {
                    input type="hidden" name="token" value=(top_up.checkout_token);
                    label for="card_number" { "Card number" }
                    input id="card_number" name="card_number" inputmode="numeric" autocomplete="cc-number" required
                        placeholder="4242 4242 4242 4242" aria-invalid=[error.map(|_| "true")]
                        aria-describedby=[error.map(|_| "card-error")];
                    button type="submit" { "Pay " (paid) }
                }
                @if top_up.save_payment_method {
                    p class="muted" { "Your card is saved for automatic top-ups; you can remove it in the billing portal." }
                } @else {
                    p class="muted" { "Your card is not saved." }
                }
                p class="muted" { "Test mode: 4242 4242 4242 4242 succeeds, 4000 0000 0000 0002 is declined." }
            }
            form method="post" action={ (action) "/cancel" } {
                input type="hidden" name="token" value=(top_up.checkout_token);
                button type="submit" class="secondary" { "Cancel and go back" }
            }
        }
    } else {
        let (title, outcome, link) = match top_up.status {
            TopUpStatus::Succeeded => ("Top-up succeeded", format!("You paid {paid}."), &top_up.return_url),
            TopUpStatus::Failed => ("Top-up failed", format!("{paid} was not charged."), &top_up.failure_url),
            TopUpStatus::Expired if top_up.failure_reason.as_deref() == Some(CANCELLED_REASON) => {
                ("Top-up cancelled", format!("{paid} was not charged."), &top_up.failure_url)
            }
            TopUpStatus::Expired => ("Top-up expired", format!("{paid} was not charged."), &top_up.failure_url),
            TopUpStatus::Initiated | TopUpStatus::Pending => ("Top-up open", String::new(), &top_up.failure_url),
        };
        html! {
            h1 { (title) }
            @if let Some(message) = error { div class="error" role="alert" { (message) } }
            p { (outcome) }
            p { a class="button" href=(link) { "Continue" } }
        }
    };
    page_with(branding, "Checkout", badge, body, html! {})
}

/// Sends the customer to `url`, or, should that not make a valid `Location` header (a URL
/// stored before URLs were checked as they are now), shows the outcome page with its link.
fn redirect_or_page(found: &Found, url: &str) -> Response {
    match HeaderValue::from_str(url) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => respond(StatusCode::OK, checkout_page(found, None)),
    }
}

/// The checkout page. Opening it moves the top-up to `pending`.
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<CheckoutQuery>,
) -> Response {
    let mut found = match find(&state, id, query.token.as_deref().unwrap_or_default()).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let (mode, id, now) = (found.mode, found.top_up.id.clone(), state.now());
    found.top_up = match state.write(move |conn| topup_ops::mark_pending(conn, mode, &id, now)).await {
        Ok(top_up) => top_up,
        Err(error) => return error.into_response(),
    };
    respond(StatusCode::OK, checkout_page(&found, None))
}

/// Pays with a test card: the succeeding card credits the wallet and returns the customer to
/// `return_url`; a declined card says so and leaves the top-up open for another card.
pub async fn pay(State(state): State<AppState>, Path(id): Path<String>, Form(form): Form<CheckoutForm>) -> Response {
    let mut found = match find(&state, id, &form.token).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let (mode, now) = (found.mode, state.now());
    let id = found.top_up.id.clone();
    found.top_up = match state.write(move |conn| topup_ops::expire_if_window_closed(conn, mode, &id, now)).await {
        Ok(top_up) => top_up,
        Err(error) => return error.into_response(),
    };
    if !found.top_up.status.is_open() {
        return respond(StatusCode::OK, checkout_page(&found, None));
    }
    let id = found.top_up.id.clone();
    match test_provider::card_outcome(&form.card_number) {
        Some(Ok(())) => {
            let method = test_provider::saved_card(&form.card_number);
            match state.write(move |conn| topup_ops::succeed(conn, mode, &id, Some(&method), now)).await {
                Ok(settled) => {
                    found.top_up = settled.top_up;
                    let url = found.top_up.return_url.clone();
                    redirect_or_page(&found, &url)
                }
                Err(error) => error.into_response(),
            }
        }
        Some(Err(reason)) => respond(
            StatusCode::PAYMENT_REQUIRED,
            checkout_page(&found, Some(&format!("{reason} Try another card, or cancel."))),
        ),
        None => respond(
            StatusCode::UNPROCESSABLE_ENTITY,
            checkout_page(&found, Some("That is not a test card. Use 4242 4242 4242 4242 or 4000 0000 0000 0002.")),
        ),
    }
}

/// Ends an open top-up because its customer gave up: it expires now with
/// [`CANCELLED_REASON`] (money that arrives later is still credited). One that already ended
/// is answered as it is.
pub async fn end_by_customer(state: &AppState, mode: Mode, id: String) -> Result<TopUp, ApiError> {
    let now = state.now();
    state
        .write(move |conn| {
            let top_up = topup_ops::expire_if_window_closed(conn, mode, &id, now)?;
            if top_up.status.is_open() {
                return topup_ops::fail(conn, mode, &id, CANCELLED_REASON, true, now);
            }
            Ok(top_up)
        })
        .await
}

/// The customer gives up: the top-up expires now (money that arrives later is still
/// credited) and they go to its `failure_url`.
pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>, Form(form): Form<CheckoutForm>) -> Response {
    let mut found = match find(&state, id, &form.token).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    found.top_up = match end_by_customer(&state, found.mode, found.top_up.id.clone()).await {
        Ok(top_up) => top_up,
        Err(error) => return error.into_response(),
    };
    if found.top_up.status == TopUpStatus::Succeeded {
        return respond(StatusCode::OK, checkout_page(&found, None));
    }
    let url = found.top_up.failure_url.clone();
    redirect_or_page(&found, &url)
}
