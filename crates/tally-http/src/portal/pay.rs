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
use crate::html::{escape, Branding};
use crate::payments::{test_provider, CardSetupRequest, SavedCard};
use crate::routes::topups::public_url;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
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

fn new_card_page(branding: &Branding, session: &PortalSession, test_cards: bool, errors: &[String]) -> String {
    if !test_cards {
        let body = format!(
            r#"<h1>Add a card</h1><form class="card" method="post" action="/portal/cards/new">{errors}
<input type="hidden" name="csrf" value="{csrf}">
<p>You enter the card on our payment provider's secure page; nothing is charged. It is saved for automatic top-ups.</p>
<button type="submit">Continue to add a card</button></form><p><a href="/portal/cards">Back to your cards</a></p>"#,
            errors = errors_box(errors),
            csrf = escape(&session.csrf_token),
        );
        return portal_page(branding, session, Tab::Cards, "Add a card", &body);
    }
    let invalid = if errors.is_empty() { "" } else { r#" aria-invalid="true""# };
    let body = format!(
        r#"<h1>Add a card</h1><form class="card" method="post" action="/portal/cards/new">{errors}
<input type="hidden" name="csrf" value="{csrf}">
<label for="card_number">Card number</label>
<input id="card_number" name="card_number" inputmode="numeric" autocomplete="cc-number" required placeholder="4242 4242 4242 4242"{invalid}>
<p class="muted">Test mode: 4242 4242 4242 4242 is saved, 4000 0000 0000 0002 is declined.</p>
<button type="submit">Save card</button></form><p><a href="/portal/cards">Back to your cards</a></p>"#,
        errors = errors_box(errors),
        csrf = escape(&session.csrf_token),
    );
    portal_page(branding, session, Tab::Cards, "Add a card", &body)
}

fn cards_page(
    branding: &Branding,
    session: &PortalSession,
    viewer: &Viewer,
    methods: &[PaymentMethod],
    notice: Option<&str>,
    errors: &[String],
) -> String {
    let csrf = escape(&session.csrf_token);
    let list: String = if methods.is_empty() {
        r#"<p class="muted">No saved cards. A card you pay a top-up with is saved when you tick &ldquo;Save this card&rdquo;.</p>"#.into()
    } else {
        let items: String = methods
            .iter()
            .enumerate()
            .map(|(index, method)| {
                // The default card is listed first (see repo::topups::payment_methods).
                let is_default = index == 0;
                let id = escape(&method.id);
                let label = escape(&method_label(method));
                let default = if is_default {
                    r#" <span class="badge">Default</span>"#.to_owned()
                } else {
                    format!(
                        r#"<form method="post" action="/portal/cards/{id}/default"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="secondary" aria-label="Make {label} the default">Make default</button></form>"#
                    )
                };
                format!(
                    r#"<li class="card saved-card" data-card="{id}"><div><strong>{label}</strong>{default_badge}<br><span class="muted">Saved {when}</span></div><div class="actions">{default_form}<form method="post" action="/portal/cards/{id}/remove"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="secondary" aria-label="Remove {label}">Remove</button></form></div></li>"#,
                    default_badge = if is_default { default.as_str() } else { "" },
                    default_form = if is_default { "" } else { default.as_str() },
                    when = escape(&viewer.date_time(method.created_at)),
                )
            })
            .collect();
        format!(r#"<ul class="cards">{items}</ul>"#)
    };
    let notice =
        notice.map(|text| format!(r#"<div class="ok" role="status">{}</div>"#, escape(text))).unwrap_or_default();
    let body = format!(
        r#"<h1>Saved cards</h1>{notice}{errors}<p class="muted">Auto top-up charges the card you choose for it; the default card is offered first. A removed card is never charged again.</p>{list}<p><a class="button" href="/portal/cards/new">Add a card</a></p>{zone}"#,
        errors = errors_box(errors),
        zone = viewer.zone_note(),
    );
    portal_page(branding, session, Tab::Cards, "Saved cards", &body)
}

/// The top-up page: the form, then the history, where an open portal top-up can be resumed
/// or cancelled.
pub fn top_ups(branding: &Branding, session: &PortalSession, viewer: &Viewer, page: &TopUpPage) -> String {
    let csrf = escape(&session.csrf_token);
    let form = if page.options.is_empty() {
        r#"<p class="muted">There is nothing to buy here yet.</p>"#.to_owned()
    } else {
        let chosen = page.chosen.trim().to_ascii_uppercase();
        let options: String = page
            .options
            .iter()
            .map(|option| {
                let value = option.value();
                let selected = if value == chosen { " selected" } else { "" };
                format!(
                    r#"<option value="{value}"{selected}>{name} ({label}), paid in {currency}</option>"#,
                    value = escape(&value),
                    name = escape(&option.asset.name),
                    label = escape(&option.asset.label),
                    currency = escape(&option.currency.code),
                )
            })
            .collect();
        let presets: String = page
            .options
            .iter()
            .filter(|option| !option.presets.is_empty())
            .map(|option| {
                let buttons: String = option
                    .presets
                    .iter()
                    .map(|amount| {
                        format!(
                            r#"<button type="submit" class="preset" name="preset" value="{value}|{amount}" formnovalidate>{shown}</button>"#,
                            value = escape(&option.value()),
                            amount = amount.normalize(),
                            shown = escape(&viewer.amount(&option.currency, *amount)),
                        )
                    })
                    .collect();
                let group = format!("Quick amounts: {} paid in {}", option.asset.name, option.currency.code);
                format!(
                    r#"<div class="presets" role="group" aria-label="{label}"><span class="muted">{label}</span> {buttons}</div>"#,
                    label = escape(&group),
                )
            })
            .collect();
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
                format!(
                    "1 {} buys {} {}",
                    option.currency.code,
                    option.rate.inverse_rate().normalize(),
                    option.asset.label
                )
            })
            .collect();
        let invalid = if page.errors.is_empty() { "" } else { r#" aria-invalid="true""# };
        let checked = if page.save_card { " checked" } else { "" };
        format!(
            r#"<form id="top-up-form" class="card" method="post" action="/portal/top-ups">
<input type="hidden" name="csrf" value="{csrf}">{errors}
<div class="fields"><div><label for="option">What to buy</label><select id="option" name="option">{options}</select></div>
<div><label for="amount">Amount to pay</label><input id="amount" name="amount" inputmode="decimal" autocomplete="off" required placeholder="10.00" value="{amount}"{invalid} aria-describedby="quote rates"></div></div>
{presets}<output id="quote" class="quote" for="option amount" aria-live="polite"></output>
<p id="rates" class="muted">{rates}{minimums}You pay on the next page.</p>
<label class="check" for="save_card"><input type="checkbox" id="save_card" name="save_card" value="on"{checked}> Save this card for automatic top-ups</label>
<button type="submit">Continue to payment</button></form>"#,
            errors = errors_box(&page.errors),
            amount = escape(&page.amount),
            rates =
                if rates.is_empty() { String::new() } else { format!("Rates now: {}. ", escape(&rates.join("; "))) },
            minimums = if minimums.is_empty() {
                String::new()
            } else {
                format!("Minimum top-up: {}. ", escape(&minimums.join("; ")))
            },
        )
    };
    let cancelled = page
        .cancelled
        .as_ref()
        .map(|_| r#"<div class="ok" role="status">The top-up was cancelled; nothing was charged.</div>"#)
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Top up</h1>{form}<h2>Top-up history</h2>{cancelled}{history}{pager}{zone}"#,
        history = super::pages::top_up_table(viewer, &page.history.items, Some(&csrf)),
        zone = viewer.zone_note(),
        pager = pager("/portal/top-ups", &page.history),
    );
    portal_page(branding, session, Tab::TopUp, "Top up", &body)
}
