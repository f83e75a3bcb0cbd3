//! Paying from the portal: the top-up form (preset amounts, the minimum, saving the card or
//! not), the history's resume and cancel, and the saved cards (list, add, remove, default).
//!
//! A card is removed in Tally and at the provider (Stripe detaches it), so it is never listed
//! or charged again: an auto top-up that named it fails with "the saved payment method no
//! longer exists". Cancelling a top-up closes its checkout at the provider, then expires it;
//! money a provider reports received afterwards is still credited, as always.

use super::locale::Viewer;
use super::pages::{errors_box, method_label, pager, portal_page, Tab};
use super::{csrf_ok, failure, forbidden, html, Session, TopUpPage};
use crate::error::ApiError;
use crate::html::Branding;
use crate::payments::{test_provider, CardSetupRequest, SavedCard};
use crate::routes::topups::public_url;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup};
use serde::Deserialize;
use tally_store::ops::topups as topup_ops;
use tally_store::ops::OpError;
use tally_store::repo::portal::PortalSession;
use tally_store::repo::topups::{self as topup_repo, PaymentMethod};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/portal/top-ups/{top_up_id}/cancel", post(cancel_top_up))
        .route("/portal/cards", get(cards))
        .route("/portal/cards/new", get(new_card).post(add_card))
        .route("/portal/cards/{card_id}/remove", post(remove_card))
        .route("/portal/cards/{card_id}/default", post(make_default))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfForm {
    pub csrf: String,
}

/// Cancels one of the customer's open portal top-ups.
async fn cancel_top_up(
    State(state): State<AppState>,
    Session(session): Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&session, &form.csrf) {
        return forbidden(&state);
    }
    let (mode, customer_id, lookup) = (session.mode, session.customer_id.clone(), id.clone());
    let found = state.read(move |conn| Ok(topup_repo::get(conn, mode, &lookup)?)).await;
    let top_up = match found {
        Ok(Some(top_up)) if top_up.customer_id == customer_id && top_up.origin == "portal" => top_up,
        Ok(_) => return failure(&state, ApiError::NotFound(format!("top-up {id} not found"))),
        Err(error) => return failure(&state, error),
    };
    if top_up.status.is_open() {
        // The provider's checkout closes first, so that no payment starts after the top-up ended.
        if let (Some(provider), Some(reference)) = (state.providers.for_mode(mode), &top_up.provider_reference) {
            if provider.name() == top_up.provider {
                if let Err(error) = provider.cancel_checkout(reference).await {
                    return failure(&state, ApiError::Unavailable(error.to_string()));
                }
            }
        }
        if let Err(error) = crate::payments::checkout::end_by_customer(&state, mode, id).await {
            return failure(&state, error);
        }
    }
    Redirect::to(&format!("/portal/top-ups?cancelled={}", top_up.id)).into_response()
}

async fn load_cards(state: &AppState, session: &PortalSession) -> Result<Vec<PaymentMethod>, ApiError> {
    let customer_id = session.customer_id.clone();
    state.read(move |conn| Ok(topup_repo::payment_methods(conn, &customer_id)?)).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CardsQuery {
    pub added: Option<String>,
    pub removed: Option<String>,
}

async fn cards(
    State(state): State<AppState>,
    Session(session): Session,
    viewer: Viewer,
    Query(query): Query<CardsQuery>,
) -> Response {
    let notice = match (query.added, query.removed) {
        (Some(_), _) => Some("Card saved."),
        (None, Some(_)) => Some("Card removed. It will not be charged again."),
        (None, None) => None,
    };
    match load_cards(&state, &session).await {
        Ok(methods) => {
            let branding = state.branding_for(session.mode).await;
            html(StatusCode::OK, cards_page(&branding, &session, &viewer, &methods, notice, &[]))
        }
        Err(error) => failure(&state, error),
    }
}

/// One of the customer's saved cards, or a 404 page.
async fn own_card(state: &AppState, session: &PortalSession, id: &str) -> Result<PaymentMethod, Response> {
    match load_cards(state, session).await {
        Ok(methods) => methods
            .into_iter()
            .find(|method| method.id == id)
            .ok_or_else(|| failure(state, ApiError::NotFound(format!("card {id} not found")))),
        Err(error) => Err(failure(state, error)),
    }
}

fn saved_card(method: &PaymentMethod) -> SavedCard {
    SavedCard { payment_method: method.provider_reference.clone(), provider_customer: method.provider_customer.clone() }
}

/// What a customer does to a saved card.
#[derive(Clone, Copy)]
enum Change {
    Remove,
    MakeDefault,
}

/// Checks the form's CSRF token and that the card is the customer's, then makes the change at
/// the card's provider first (so a card Tally no longer lists can no longer be charged there).
async fn card_at_provider(
    state: &AppState,
    session: &PortalSession,
    id: &str,
    csrf: &str,
    change: Change,
) -> Result<(), Response> {
    if !csrf_ok(session, csrf) {
        return Err(forbidden(state));
    }
    let method = own_card(state, session, id).await?;
    if let Some(provider) = state.providers.for_mode(session.mode).filter(|provider| provider.name() == method.provider)
    {
        let card = saved_card(&method);
        let done = match change {
            Change::Remove => provider.remove_card(&card).await,
            Change::MakeDefault => provider.set_default_card(&card).await,
        };
        done.map_err(|error| failure(state, ApiError::Unavailable(error.to_string())))?;
    }
    Ok(())
}

async fn remove_card(
    State(state): State<AppState>,
    Session(session): Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(response) = card_at_provider(&state, &session, &id, &form.csrf, Change::Remove).await {
        return response;
    }
    let (mode, customer_id, now) = (session.mode, session.customer_id.clone(), state.now());
    let removed = state
        .write(move |conn| {
            topup_repo::remove_payment_method(conn, mode, &customer_id, &id, now)?;
            // Another card takes over as the default, the newest.
            if topup_repo::default_payment_method(conn, &customer_id)?.is_none() {
                if let Some(next) = topup_repo::payment_methods(conn, &customer_id)?.first() {
                    topup_repo::set_default_payment_method(conn, mode, &customer_id, &next.id)?;
                }
            }
            Ok::<_, OpError>(())
        })
        .await;
    match removed {
        Ok(()) => Redirect::to("/portal/cards?removed=1").into_response(),
        Err(error) => failure(&state, error),
    }
}

async fn make_default(
    State(state): State<AppState>,
    Session(session): Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(response) = card_at_provider(&state, &session, &id, &form.csrf, Change::MakeDefault).await {
        return response;
    }
    let (mode, customer_id) = (session.mode, session.customer_id.clone());
    match state.write(move |conn| Ok(topup_repo::set_default_payment_method(conn, mode, &customer_id, &id)?)).await {
        Ok(_) => Redirect::to("/portal/cards").into_response(),
        Err(error) => failure(&state, error),
    }
}

async fn new_card(State(state): State<AppState>, Session(session): Session) -> Response {
    let test_cards = test_cards(&state, &session);
    html(StatusCode::OK, new_card_page(&state.branding_for(session.mode).await, &session, test_cards, &[]))
}

/// Whether the mode's cards are added on the portal's own form (the test provider's test
/// cards) rather than on the provider's page (Stripe).
fn test_cards(state: &AppState, session: &PortalSession) -> bool {
    state.providers.for_mode(session.mode).is_none_or(|provider| provider.name() == "test")
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CardForm {
    pub csrf: String,
    pub card_number: String,
}

/// Saves a test card (test mode), or sends the customer to the provider's page to save one
/// without paying (Stripe Checkout in setup mode; its webhook saves the card).
async fn add_card(
    State(state): State<AppState>,
    Session(session): Session,
    headers: HeaderMap,
    Form(form): Form<CardForm>,
) -> Response {
    if !csrf_ok(&session, &form.csrf) {
        return forbidden(&state);
    }
    let branding = state.branding_for(session.mode).await;
    let Some(provider) = state.providers.for_mode(session.mode) else {
        let errors =
            ["Cards are saved when you pay a top-up: tick \u{201c}Save this card\u{201d} on the top-up form."
                .to_owned()];
        return html(StatusCode::UNPROCESSABLE_ENTITY, new_card_page(&branding, &session, true, &errors));
    };
    if provider.name() != "test" {
        return set_up_card(&state, &session, provider.as_ref(), &public_url(&state, &headers)).await;
    }
    match test_provider::card_outcome(&form.card_number) {
        Some(Ok(())) => {
            let method = test_provider::saved_card(&form.card_number);
            let (mode, customer_id, now, name) =
                (session.mode, session.customer_id.clone(), state.now(), provider.name());
            match state.write(move |conn| topup_ops::save_card(conn, mode, &customer_id, name, &method, now)).await {
                Ok(_) => Redirect::to("/portal/cards?added=1").into_response(),
                Err(error) => failure(&state, error),
            }
        }
        Some(Err(reason)) => html(
            StatusCode::PAYMENT_REQUIRED,
            new_card_page(&branding, &session, true, &[format!("{reason} Try another card.")]),
        ),
        None => html(
            StatusCode::UNPROCESSABLE_ENTITY,
            new_card_page(&branding, &session, true, &["That is not a test card. Use 4242 4242 4242 4242.".to_owned()]),
        ),
    }
}

/// Opens the provider's page where the customer saves a card without paying, on the provider
/// customer their other cards are kept on (a new one for their first card), and sends them
/// there. The card is saved when the provider's notification says it was set up.
async fn set_up_card(
    state: &AppState,
    session: &PortalSession,
    provider: &dyn crate::payments::PaymentProvider,
    public: &str,
) -> Response {
    let (mode, customer_id, name) = (session.mode, session.customer_id.clone(), provider.name());
    let found = state
        .read(move |conn| {
            let customer = tally_store::repo::customers::get(conn, mode, &customer_id)?;
            let provider_customer = topup_repo::provider_customer(conn, mode, &customer_id, name)?;
            Ok((customer, provider_customer))
        })
        .await;
    let (customer, provider_customer) = match found {
        Ok((Some(customer), provider_customer)) => (customer, provider_customer),
        Ok((None, _)) => {
            return failure(state, ApiError::NotFound(format!("customer {} not found", session.customer_id)))
        }
        Err(error) => return failure(state, error),
    };
    let request = CardSetupRequest {
        customer_id: customer.id,
        mode,
        customer_email: customer.email,
        provider_customer,
        setup_id: tally_store::ids::new_id("setup"),
        success_url: format!("{public}/portal/cards?added=1"),
        cancel_url: format!("{public}/portal/cards"),
    };
    match provider.start_card_setup(&request).await {
        Ok(checkout) => Redirect::to(&checkout.redirect_url).into_response(),
        Err(error) => failure(state, ApiError::Unavailable(error.to_string())),
    }
}

fn new_card_page(branding: &Branding, session: &PortalSession, test_cards: bool, errors: &[String]) -> Markup {
    let body = html! {
        h1 { "Add a card" }
        form class="card" method="post" action="/portal/cards/new" {
            (errors_box(errors))
            input type="hidden" name="csrf" value=(session.csrf_token);
            @if test_cards {
                label for="card_number" { "Card number" }
                input id="card_number" name="card_number" inputmode="numeric" autocomplete="cc-number" required
                    placeholder="4242 4242 4242 4242" aria-invalid=[(!errors.is_empty()).then_some("true")];
                p class="muted" { "Test mode: 4242 4242 4242 4242 is saved, 4000 0000 0000 0002 is declined." }
                button type="submit" { "Save card" }
            } @else {
                p {
                    "You enter the card on our payment provider's secure page; nothing is charged. It is saved for \
                     automatic top-ups."
                }
                button type="submit" { "Continue to add a card" }
            }
        }
        p { a href="/portal/cards" { "Back to your cards" } }
    };
    portal_page(branding, session, Tab::Cards, "Add a card", body)
}

fn cards_page(
    branding: &Branding,
    session: &PortalSession,
    viewer: &Viewer,
    methods: &[PaymentMethod],
    notice: Option<&str>,
    errors: &[String],
) -> Markup {
    let csrf = &session.csrf_token;
    let body = html! {
        h1 { "Saved cards" }
        @if let Some(text) = notice { div class="ok" role="status" { (text) } }
        (errors_box(errors))
        p class="muted" {
            "Auto top-up charges the card you choose for it; the default card is offered first. A removed card is \
             never charged again."
        }
        @if methods.is_empty() {
            p class="muted" {
                "No saved cards. A card you pay a top-up with is saved when you tick \u{201c}Save this card\u{201d}."
            }
        } @else {
            ul class="cards" {
                // The default card is listed first (see repo::topups::payment_methods).
                @for (index, method) in methods.iter().enumerate() {
                    @let label = method_label(method);
                    li class="card saved-card" data-card=(method.id) {
                        div {
                            strong { (label) }
                            @if index == 0 { " " span class="badge" { "Default" } }
                            br;
                            span class="muted" {
                                @if let Some(expiry) = method.expiry {
                                    span class="expiry" { "Expires " (format!("{:02}/{}", expiry.month, expiry.year)) }
                                    " · "
                                }
                                "Saved " (viewer.date_time(method.created_at))
                            }
                        }
                        div class="actions" {
                            @if index > 0 {
                                form method="post" action={ "/portal/cards/" (method.id) "/default" } {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" class="secondary" aria-label={ "Make " (label) " the default" } {
                                        "Make default"
                                    }
                                }
                            }
                            form method="post" action={ "/portal/cards/" (method.id) "/remove" } {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" class="secondary" aria-label={ "Remove " (label) } { "Remove" }
                            }
                        }
                    }
                }
            }
        }
        p { a class="button" href="/portal/cards/new" { "Add a card" } }
        (viewer.zone_note())
    };
    portal_page(branding, session, Tab::Cards, "Saved cards", body)
}

/// The top-up page: the form, then the history, where an open portal top-up can be resumed
/// or cancelled.
pub fn top_ups(branding: &Branding, session: &PortalSession, viewer: &Viewer, page: &TopUpPage) -> Markup {
    let body = html! {
        h1 { "Top up" }
        @if page.options.is_empty() {
            p class="muted" { "There is nothing to buy here yet." }
        } @else {
            (top_up_form(session, viewer, page))
        }
        h2 { "Top-up history" }
        @if page.cancelled.is_some() {
            div class="ok" role="status" { "The top-up was cancelled; nothing was charged." }
        }
        (super::pages::top_up_table(viewer, &page.history.items, Some(&session.csrf_token)))
        (pager("/portal/top-ups", &page.history))
        (viewer.zone_note())
    };
    portal_page(branding, session, Tab::TopUp, "Top up", body)
}

/// The form: what to buy, the amount (or a preset), the rates and minimums, saving the card.
fn top_up_form(session: &PortalSession, viewer: &Viewer, page: &TopUpPage) -> Markup {
    let chosen = page.chosen.trim().to_ascii_uppercase();
    let minimums: Vec<String> = page
        .options
        .iter()
        .filter_map(|option| {
            option.minimum.map(|minimum| {
                format!(
                    "{} paid in {}: at least {}",
                    option.asset.name,
                    option.currency.code,
                    viewer.amount(&option.currency, minimum)
                )
            })
        })
        .collect();
    let rates: Vec<String> = page
        .options
        .iter()
        .filter(|option| !option.asset.is_currency)
        .map(|option| {
            format!("1 {} buys {} {}", option.currency.code, option.rate.inverse_rate().normalize(), option.asset.label)
        })
        .collect();
    html! {
        form id="top-up-form" class="card" method="post" action="/portal/top-ups" {
            input type="hidden" name="csrf" value=(session.csrf_token);
            (errors_box(&page.errors))
            div class="fields" {
                div {
                    label for="option" { "What to buy" }
                    select id="option" name="option" {
                        @for option in &page.options {
                            @let value = option.value();
                            option value=(value) selected[value == chosen] {
                                (option.asset.name) " (" (option.asset.label) "), paid in " (option.currency.code)
                            }
                        }
                    }
                }
                div {
                    label for="amount" { "Amount to pay" }
                    input id="amount" name="amount" inputmode="decimal" autocomplete="off" required placeholder="10.00"
                        value=(page.amount) aria-invalid=[(!page.errors.is_empty()).then_some("true")]
                        aria-describedby="quote rates";
                }
            }
            @for option in page.options.iter().filter(|option| !option.presets.is_empty()) {
                @let group = format!("Quick amounts: {} paid in {}", option.asset.name, option.currency.code);
                div class="presets" role="group" aria-label=(group) {
                    span class="muted" { (group) }
                    @for amount in &option.presets {
                        " "
                        button type="submit" class="preset" name="preset" value={ (option.value()) "|" (amount.normalize()) }
                            formnovalidate { (viewer.amount(&option.currency, *amount)) }
                    }
                }
            }
            output id="quote" class="quote" for="option amount" aria-live="polite" {}
            p id="rates" class="muted" {
                @if !rates.is_empty() { "Rates now: " (rates.join("; ")) ". " }
                @if !minimums.is_empty() { "Minimum top-up: " (minimums.join("; ")) ". " }
                "You pay on the next page."
            }
            label class="check" for="save_card" {
                input type="checkbox" id="save_card" name="save_card" value="on" checked[page.save_card];
                " Save this card for automatic top-ups"
            }
            button type="submit" { "Continue to payment" }
        }
    }
}
