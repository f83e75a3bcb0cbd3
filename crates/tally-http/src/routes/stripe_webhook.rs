//! `POST /payments/stripe/webhook`: Stripe's events about live-mode top-ups. No API key: the
//! `Stripe-Signature` header authenticates the body. Not part of the Credyt API, so not in the
//! OpenAPI document.
//!
//! | event | effect |
//! |---|---|
//! | `checkout.session.completed`, `payment_status` `paid` | credit the top-up (and save the card when asked) |
//! | `checkout.session.completed`, `mode` `setup` (the portal's "Add a card") | save the card, once |
//! | `checkout.session.completed`, unpaid (delayed payment methods) | the top-up goes `pending` and waits, never expiring |
//! | `checkout.session.async_payment_succeeded` | credit the top-up, even if it had expired meanwhile |
//! | `checkout.session.async_payment_failed` | the top-up fails |
//! | `checkout.session.expired` | the top-up expires |
//! | `payment_intent.succeeded` with `metadata.top_up_id` | credit the off-session top-up |
//! | `payment_intent.payment_failed` with `metadata.top_up_id` | the off-session top-up fails |
//!
//! Stripe delivers at least once and retries whatever is not answered 2xx, so every effect is
//! idempotent (a top-up is credited once, `ops::topups::succeed`; money received is credited
//! even when it arrives after the top-up failed or expired), events Tally does not act on
//! are answered 200, and only a transient failure (the database, or Stripe's API while learning
//! the payment method) is answered 5xx so that Stripe retries. Only live-mode top-ups made
//! through Stripe are ever touched.

use crate::error::ApiError;
use crate::payments::stripe::{
    event_object, to_minor_units, verify_signature, CheckoutSession, EventHead, PaymentIntent, StripeProvider,
    CARD_SETUP_PURPOSE, SIGNATURE_TOLERANCE,
};
use crate::payments::{PaymentError, PaymentProvider, SavedCard};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;
use tally_core::Mode;
use tally_store::ops::topups::{self as topup_ops, NewPaymentMethod};
use tally_store::repo::topups::{self as topup_repo, TopUp, TopUpStatus};

/// What became of an event, echoed in the 200 answer (visible in Stripe's dashboard).
type Outcome = &'static str;

pub async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, ApiError> {
    let stripe = state.providers.stripe.clone().ok_or_else(|| {
        ApiError::NotFound("Stripe is not configured: set stripe_secret_key and stripe_webhook_secret".into())
    })?;
    let header = headers.get("stripe-signature").and_then(|value| value.to_str().ok());
    let now = state.now().timestamp();
    if let Err(error) = verify_signature(stripe.webhook_secret(), header, &body, now, SIGNATURE_TOLERANCE) {
        tracing::warn!(%error, "refused a Stripe webhook");
        return Err(ApiError::Malformed(error.to_string()));
    }
    let head: EventHead = serde_json::from_slice(&body)
        .map_err(|error| ApiError::Malformed(format!("the body is not a Stripe event: {error}")))?;
    let outcome = match head.kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            session_completed(&state, &stripe, parse(&body)?).await?
        }
        "checkout.session.async_payment_failed" => {
            let reason = "the payment failed after checkout";
            session_ended(&state, parse(&body)?, reason, false).await?
        }
        "checkout.session.expired" => {
            let reason = "the Stripe Checkout Session expired before it was paid";
            session_ended(&state, parse(&body)?, reason, true).await?
        }
        "payment_intent.succeeded" => intent_succeeded(&state, parse(&body)?).await?,
        "payment_intent.payment_failed" => intent_failed(&state, parse(&body)?).await?,
        _ => "ignored: not an event Tally acts on",
    };
    tracing::info!(event = %head.id, kind = %head.kind, outcome, "Stripe webhook");
    Ok(Json(json!({ "received": true, "outcome": outcome })))
}

fn parse<T: for<'de> serde::Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    event_object(body).map_err(|error| ApiError::Malformed(format!("the event's data.object is malformed: {error}")))
}

/// The live Stripe top-up a Checkout Session pays for: by the top-up id Tally gave the session
/// (`client_reference_id`, or `metadata.top_up_id`), else by the session id.
async fn session_top_up(state: &AppState, session: &CheckoutSession) -> Result<Option<(Mode, TopUp)>, ApiError> {
    let top_up_id = session.top_up_id().map(str::to_owned);
    let session_id = session.id.clone();
    let found = state
        .read(move |conn| {
            if let Some(found) = top_up_id.map(|id| topup_repo::get_any_mode(conn, &id)).transpose()?.flatten() {
                return Ok(Some(found));
            }
            Ok(topup_repo::find_by_reference(conn, "stripe", &session_id)?)
        })
        .await?;
    let Some((mode, top_up)) = live_stripe_top_up(found) else {
        return Ok(None);
    };
    // The session must be the one Tally opened for this top-up.
    if top_up.provider_reference.as_deref().is_some_and(|reference| reference != session.id) {
        tracing::warn!(top_up = %top_up.id, session = %session.id, "a Checkout Session that is not the top-up's own");
        return Ok(None);
    }
    Ok(Some((mode, top_up)))
}

/// The live Stripe top-up an off-session PaymentIntent pays for, by `metadata.top_up_id`.
/// Checkout Sessions' own PaymentIntents carry no such metadata: their sessions' events settle
/// them.
async fn intent_top_up(state: &AppState, intent: &PaymentIntent) -> Result<Option<(Mode, TopUp)>, ApiError> {
    let Some(top_up_id) = intent.top_up_id().map(str::to_owned) else {
        return Ok(None);
    };
    let found = state.read(move |conn| Ok(topup_repo::get_any_mode(conn, &top_up_id)?)).await?;
    Ok(live_stripe_top_up(found))
}

/// Stripe's events touch live-mode top-ups made through Stripe (the platform's or a connected
/// account's), nothing else.
fn live_stripe_top_up(found: Option<(Mode, TopUp)>) -> Option<(Mode, TopUp)> {
    match found {
        Some((mode, top_up)) if mode.is_live() && top_up.provider == "stripe" => Some((mode, top_up)),
        Some((mode, top_up)) => {
            tracing::warn!(top_up = %top_up.id, mode = mode.as_str(), provider = %top_up.provider,
                "a Stripe event names a top-up that is not a live Stripe one; ignored");
            None
        }
        None => None,
    }
}

/// Whether Stripe charged what the top-up asked for. A mismatch (a discount or tax added in
/// Stripe's settings) is not credited: the books would no longer match what was paid.
fn charged_as_asked(top_up: &TopUp, amount: Option<i64>, currency: Option<&str>) -> bool {
    let expected = to_minor_units(top_up.amount, &top_up.currency).ok();
    let amount_matches = amount.is_none() || amount == expected;
    let currency_matches = currency.is_none_or(|currency| currency.eq_ignore_ascii_case(&top_up.currency));
    if !(amount_matches && currency_matches) {
        tracing::error!(top_up = %top_up.id, ?amount, ?currency, expected = ?expected, top_up_currency = %top_up.currency,
            "Stripe charged a different amount than the top-up asked for; not credited: check the payment in Stripe");
    }
    amount_matches && currency_matches
}

async fn session_completed(
    state: &AppState,
    stripe: &Arc<StripeProvider>,
    session: CheckoutSession,
) -> Result<Outcome, ApiError> {
    if session.mode.as_deref() == Some("setup") {
        return card_set_up(state, stripe, session).await;
    }
    let Some((mode, top_up)) = session_top_up(state, &session).await? else {
        return Ok("ignored: no live Stripe top-up for this session");
    };
    let id = top_up.id.clone();
    let now = state.now();
    match session.payment_status.as_deref() {
        Some("paid") => {}
        // Completed with a delayed payment method (a bank debit): the money is on its way and
        // `async_payment_succeeded` or `async_payment_failed` will say how it ended, days later
        // perhaps. Until then the top-up waits and does not expire.
        Some("unpaid") => {
            state.write(move |conn| topup_ops::mark_processing(conn, mode, &id, now)).await?;
            return Ok("pending: waiting for the delayed payment");
        }
        _ => return Ok("ignored: the session is not paid"),
    }
    if !charged_as_asked(&top_up, session.amount_total, session.currency.as_deref()) {
        return Ok("ignored: the amount paid differs from the top-up's");
    }
    let method = if top_up.save_payment_method && top_up.status != TopUpStatus::Succeeded {
        payment_method(stripe, &session).await?
    } else {
        None
    };
    succeed(state, mode, id, method).await
}

/// A setup-mode session opened by the portal's "Add a card" (live mode) completed: the card
/// its SetupIntent saved is read from Stripe and saved for the customer named in the session's
/// metadata, once however many times Stripe delivers the event. The customer's first card
/// becomes their default, in Tally and on the Stripe customer.
async fn card_set_up(
    state: &AppState,
    stripe: &Arc<StripeProvider>,
    session: CheckoutSession,
) -> Result<Outcome, ApiError> {
    if session.metadata_value("purpose") != Some(CARD_SETUP_PURPOSE) {
        return Ok("ignored: not a card setup Tally opened");
    }
    let mode = session.metadata_value("tally_mode").and_then(Mode::parse).filter(|mode| mode.is_live());
    let (Some(mode), Some(customer_id)) = (mode, session.metadata_value("customer_id").map(str::to_owned)) else {
        return Ok("ignored: the card setup names no live customer");
    };
    let Some(setup) = &session.setup_intent else {
        return Ok("ignored: the session has no SetupIntent");
    };
    let intent = match stripe.setup_intent(setup.id()).await {
        Ok(intent) => intent,
        Err(error) => return stripe_lookup_failed(&session, error),
    };
    let Some(method) = intent.payment_method.as_ref().filter(|_| intent.status.as_deref() == Some("succeeded")) else {
        return Ok("ignored: the SetupIntent saved no card");
    };
    let method = match stripe.payment_method(method.id()).await {
        Ok(method) => method,
        Err(error) => return stripe_lookup_failed(&session, error),
    };
    let provider_customer =
        session.customer.as_ref().or(intent.customer.as_ref()).map(|customer| customer.id().to_owned());
    let card = method.card.clone().unwrap_or_default();
    let new = NewPaymentMethod {
        provider_reference: method.id.clone(),
        provider_customer,
        expiry: card.expiry(),
        brand: card.brand,
        last4: card.last4,
    };
    let now = state.now();
    let saved = state
        .write(move |conn| {
            let (saved, is_new) = topup_ops::save_card_once(conn, mode, &customer_id, "stripe", &new, now)?;
            let is_default = topup_repo::default_payment_method(conn, &customer_id)?.as_deref() == Some(&saved.id);
            Ok::<_, tally_store::ops::OpError>((saved, is_new, is_default))
        })
        .await;
    let (saved, is_new, is_default) = match saved {
        Ok(saved) => saved,
        // No retry would find the customer: answered, so that Stripe stops sending it.
        Err(ApiError::NotFound(message)) => {
            tracing::warn!(session = %session.id, %message, "a card setup for a customer Tally does not have");
            return Ok("ignored: no such customer");
        }
        Err(error) => return Err(error),
    };
    if is_default {
        // Said again on a repeated event, so that a first answer lost on the way is made up.
        let card = SavedCard { payment_method: saved.provider_reference, provider_customer: saved.provider_customer };
        match stripe.set_default_card(&card).await {
            Ok(()) => {}
            Err(PaymentError::Unavailable(message)) => {
                return Err(ApiError::Unavailable(format!("cannot set the default card at Stripe: {message}")))
            }
            Err(PaymentError::Refused(message)) => {
                tracing::warn!(session = %session.id, %message, "Stripe refused the default card; saved it in Tally only");
            }
        }
    }
    Ok(if is_new { "card saved" } else { "ignored: the card is already saved" })
}

/// Stripe could not say which card a setup saved: unreachable, it is asked to retry the event
/// (a 503); refusing, the event is answered and logged, as a retry would be refused too.
fn stripe_lookup_failed(session: &CheckoutSession, error: PaymentError) -> Result<Outcome, ApiError> {
    match error {
        PaymentError::Unavailable(message) => {
            Err(ApiError::Unavailable(format!("cannot read the saved card from Stripe: {message}")))
        }
        PaymentError::Refused(message) => {
            tracing::warn!(session = %session.id, %message, "cannot read the card a setup saved; not saved");
            Ok("ignored: Stripe refused to say which card was saved")
        }
    }
}

/// The card the customer paid with and the Stripe customer it is kept on, for later
/// off-session charges. The session names its PaymentIntent; the PaymentIntent names the
/// payment method, read from Stripe unless the event already carries it expanded.
async fn payment_method(
    stripe: &Arc<StripeProvider>,
    session: &CheckoutSession,
) -> Result<Option<NewPaymentMethod>, ApiError> {
    let (Some(customer), Some(intent)) = (&session.customer, &session.payment_intent) else {
        return Ok(None);
    };
    let fetched;
    let intent = match intent.object().filter(|intent| intent.payment_method.is_some()) {
        Some(intent) => intent,
        None => match stripe.payment_intent(intent.id()).await {
            Ok(intent) => {
                fetched = intent;
                &fetched
            }
            // Stripe will retry the event; the top-up is credited then, card included.
            Err(PaymentError::Unavailable(message)) => {
                return Err(ApiError::Unavailable(format!("cannot read the payment method from Stripe: {message}")))
            }
            Err(PaymentError::Refused(message)) => {
                tracing::warn!(session = %session.id, %message, "cannot read the payment method; crediting without saving it");
                return Ok(None);
            }
        },
    };
    let Some(method) = &intent.payment_method else {
        return Ok(None);
    };
    let card = method.object().and_then(|method| method.card.clone()).unwrap_or_default();
    Ok(Some(NewPaymentMethod {
        provider_reference: method.id().to_owned(),
        provider_customer: Some(customer.id().to_owned()),
        expiry: card.expiry(),
        brand: card.brand,
        last4: card.last4,
    }))
}

/// Credits the top-up, once however many times Stripe says so. Money received is credited
/// even when it comes after the top-up failed or expired.
async fn succeed(
    state: &AppState,
    mode: Mode,
    id: String,
    method: Option<NewPaymentMethod>,
) -> Result<Outcome, ApiError> {
    let now = state.now();
    let top_up_id = id.clone();
    let settled = state.write(move |conn| topup_ops::succeed(conn, mode, &id, method.as_ref(), now)).await?;
    match (settled.credited, settled.late) {
        (true, false) => Ok("credited"),
        (true, true) => {
            tracing::warn!(top_up = %top_up_id, "Stripe reported a payment after the top-up had ended; credited it");
            Ok("credited: the payment came after the top-up had ended")
        }
        (false, _) => Ok("ignored: already credited"),
    }
}

async fn session_ended(
    state: &AppState,
    session: CheckoutSession,
    reason: &'static str,
    expired: bool,
) -> Result<Outcome, ApiError> {
    let Some((mode, top_up)) = session_top_up(state, &session).await? else {
        return Ok("ignored: no live Stripe top-up for this session");
    };
    fail(state, mode, top_up.id, reason.to_owned(), expired).await
}

async fn fail(state: &AppState, mode: Mode, id: String, reason: String, expired: bool) -> Result<Outcome, ApiError> {
    let now = state.now();
    let top_up_id = id.clone();
    match state.write(move |conn| topup_ops::fail(conn, mode, &id, &reason, expired, now)).await {
        Ok(_) if expired => Ok("expired"),
        Ok(_) => Ok("failed"),
        Err(ApiError::Conflict(message)) => {
            tracing::warn!(top_up = %top_up_id, %message, "a Stripe failure for a top-up that already ended; ignored");
            Ok("ignored: the top-up had already ended")
        }
        Err(error) => Err(error),
    }
}

async fn intent_succeeded(state: &AppState, intent: PaymentIntent) -> Result<Outcome, ApiError> {
    let Some((mode, top_up)) = intent_top_up(state, &intent).await? else {
        return Ok("ignored: no live Stripe top-up for this payment");
    };
    if !charged_as_asked(&top_up, intent.amount, intent.currency.as_deref()) {
        return Ok("ignored: the amount paid differs from the top-up's");
    }
    // An off-session charge uses a card already saved: nothing more to keep.
    succeed(state, mode, top_up.id, None).await
}

async fn intent_failed(state: &AppState, intent: PaymentIntent) -> Result<Outcome, ApiError> {
    let Some((mode, top_up)) = intent_top_up(state, &intent).await? else {
        return Ok("ignored: no live Stripe top-up for this payment");
    };
    fail(state, mode, top_up.id, intent.failure_reason(), false).await
}
