//! The `stripe` payment provider, for live mode: top-ups through Stripe Checkout Sessions,
//! cards saved without paying through setup-mode Checkout Sessions (and their SetupIntents),
//! off-session charges of saved cards (auto top-up) through PaymentIntents, and the
//! verification of the signatures on Stripe's webhook events. It speaks Stripe's documented
//! HTTP API directly: form-encoded requests, the secret key as a bearer token, and the top-up
//! id as the `Idempotency-Key`, so a retried request never opens a second checkout or charges
//! twice. `docs/payments.md` explains the setup.
//!
//! What Stripe's events do to top-ups lives in `routes::stripe_webhook`; this module knows the
//! protocol, not the store.

use super::{
    BoxFuture, CardSetupRequest, ChargeOutcome, Checkout, CheckoutRequest, OffSessionCharge, PaymentError,
    PaymentProvider, SavedCard,
};
use hmac::{Hmac, KeyInit, Mac};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use sha2::Sha256;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";
/// The Stripe API version Tally's requests are written against, pinned so that the objects
/// Stripe answers with keep the shape parsed here whatever the account's default version.
pub const API_VERSION: &str = "2024-06-20";
/// How far a webhook's signed timestamp may be from now, either way, before the event is
/// refused as a replay (Stripe's own libraries use the same five minutes).
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Stripe accepts a Checkout Session `expires_at` from 30 minutes to 24 hours after the
/// session is created. Tally asks for the top-up's own expiry less [`SESSION_CLOSE_MARGIN`],
/// clamped into that window with a minute to spare each side for the clocks of the two
/// machines.
const SESSION_MIN_LIFETIME: Duration = Duration::from_secs(31 * 60);
const SESSION_MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60 - 60);
/// The session closes this long before the top-up expires, so that the event of a payment made
/// at the last moment reaches Tally while the top-up is still open and can be credited.
pub const SESSION_CLOSE_MARGIN: Duration = Duration::from_secs(10 * 60);
/// How long one call to Stripe may take, connecting included, unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest part of an unexpected Stripe answer quoted in an error.
const MAX_QUOTED_CHARS: usize = 300;

/// How Tally talks to Stripe.
#[derive(Clone)]
pub struct StripeConfig {
    /// The secret (`sk_…`) or restricted (`rk_…`) API key.
    pub secret_key: String,
    /// The webhook endpoint's signing secret (`whsec_…`).
    pub webhook_secret: String,
    /// `https://api.stripe.com`, or a local fake in tests.
    pub api_base: String,
    /// How long one API call may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for StripeConfig {
    /// Never prints the secrets.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StripeConfig")
            .field("secret_key", &"[redacted]")
            .field("webhook_secret", &"[redacted]")
            .field("api_base", &self.api_base)
            .field("timeout", &self.timeout)
            .finish()
    }
}

pub struct StripeProvider {
    config: StripeConfig,
    client: reqwest::Client,
}

/// Why a call to Stripe did not return the object asked for.
#[derive(Debug)]
enum CallError {
    /// No answer, or one that is not Stripe's JSON: the network, a timeout, an outage.
    Unreachable(String),
    /// Stripe answered with an error status and its error object.
    Status { status: u16, error: StripeError },
}

impl CallError {
    /// 4xx are refusals, except 429 (rate limited), which like 5xx means "try later".
    fn into_payment_error(self) -> PaymentError {
        match self {
            CallError::Unreachable(message) => PaymentError::Unavailable(message),
            CallError::Status { status, error } if status == 429 || status >= 500 => {
                PaymentError::Unavailable(format!("Stripe answered {status}: {}", error.describe()))
            }
            CallError::Status { status, error } => {
                PaymentError::Refused(format!("Stripe answered {status}: {}", error.describe()))
            }
        }
    }
}

/// Stripe's error object (`{"error": {...}}`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct StripeError {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

impl StripeError {
    fn describe(&self) -> String {
        let message = self.message.clone().unwrap_or_else(|| "no message".to_owned());
        match (&self.code, &self.param) {
            (Some(code), Some(param)) => format!("{message} ({code}, {param})"),
            (Some(code), None) => format!("{message} ({code})"),
            (None, Some(param)) => format!("{message} ({param})"),
            (None, None) => message,
        }
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: StripeError,
}

/// A field Stripe sends as an id, or as the whole object when asked to expand it.
#[derive(Debug, Clone, PartialEq)]
pub enum Expandable<T> {
    Id(String),
    Object(T),
}

/// Objects that carry their own id.
pub trait HasId {
    fn id(&self) -> &str;
}

impl<T: HasId> Expandable<T> {
    pub fn id(&self) -> &str {
        match self {
            Expandable::Id(id) => id,
            Expandable::Object(object) => object.id(),
        }
    }

    pub fn object(&self) -> Option<&T> {
        match self {
            Expandable::Id(_) => None,
            Expandable::Object(object) => Some(object),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Expandable<T> {
    /// Reads a string as an id and a map as the object, without buffering (which would lose
    /// exact numbers).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Expandable<T>, D::Error> {
        struct ExpandableVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ExpandableVisitor<T> {
            type Value = Expandable<T>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("an id or an object")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Expandable<T>, E> {
                Ok(Expandable::Id(value.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Expandable<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Expandable::Object)
            }
        }
        deserializer.deserialize_any(ExpandableVisitor(PhantomData))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Customer {
    pub id: String,
}

impl HasId for Customer {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Card {
    #[serde(default)]
    pub brand: Option<String>,
    #[serde(default)]
    pub last4: Option<String>,
    #[serde(default)]
    pub exp_month: Option<u32>,
    #[serde(default)]
    pub exp_year: Option<u32>,
}

impl Card {
    /// When the card expires (`exp_month`, `exp_year`), if Stripe says.
    pub fn expiry(&self) -> Option<tally_store::repo::topups::CardExpiry> {
        tally_store::repo::topups::CardExpiry::of(self.exp_month.map(i64::from), self.exp_year.map(i64::from))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PaymentMethodObject {
    pub id: String,
    #[serde(default)]
    pub card: Option<Card>,
}

impl HasId for PaymentMethodObject {
    fn id(&self) -> &str {
        &self.id
    }
}

/// The parts of a Checkout Session Tally reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub customer: Option<Expandable<Customer>>,
    #[serde(default)]
    pub payment_intent: Option<Expandable<PaymentIntent>>,
    /// `payment`, or `setup` for a session that only saves a card.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub setup_intent: Option<Expandable<SetupIntent>>,
    /// `paid`, `unpaid` or `no_payment_required`.
    #[serde(default)]
    pub payment_status: Option<String>,
    #[serde(default)]
    pub amount_total: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
}

impl CheckoutSession {
    /// The top-up this session pays for, as Tally named it when creating the session.
    pub fn top_up_id(&self) -> Option<&str> {
        self.client_reference_id.as_deref().or_else(|| self.metadata_value("top_up_id"))
    }

    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref().and_then(|metadata| metadata.get(key)).map(String::as_str)
    }
}

/// The parts of a SetupIntent Tally reads: the card a setup-mode session saved.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SetupIntent {
    pub id: String,
    /// `succeeded` once the card is saved; `requires_payment_method`, `canceled`, … otherwise.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub customer: Option<Expandable<Customer>>,
    #[serde(default)]
    pub payment_method: Option<Expandable<PaymentMethodObject>>,
}

impl HasId for SetupIntent {
    fn id(&self) -> &str {
        &self.id
    }
}

/// The parts of a PaymentIntent Tally reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    /// `succeeded`, `processing`, `requires_payment_method`, `requires_action`, `canceled`, …
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub customer: Option<Expandable<Customer>>,
    #[serde(default)]
    pub payment_method: Option<Expandable<PaymentMethodObject>>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub last_payment_error: Option<StripeError>,
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
}

impl HasId for PaymentIntent {
    fn id(&self) -> &str {
        &self.id
    }
}

impl PaymentIntent {
    pub fn top_up_id(&self) -> Option<&str> {
        self.metadata.as_ref().and_then(|metadata| metadata.get("top_up_id")).map(String::as_str)
    }

    /// Why the payment failed, in Stripe's words when it gave some.
    pub fn failure_reason(&self) -> String {
        self.last_payment_error
            .as_ref()
            .and_then(|error| error.message.clone())
            .unwrap_or_else(|| "the payment failed".to_owned())
    }
}

/// An event's id and type, read before its object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventHead {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Deserialize)]
struct EventData<T> {
    object: T,
}

#[derive(Debug, Deserialize)]
struct Event<T> {
    data: EventData<T>,
}

/// Reads an event's `data.object` as `T`.
pub fn event_object<'de, T: Deserialize<'de>>(payload: &'de [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice::<Event<T>>(payload).map(|event| event.data.object)
}

/// Stripe counts most currencies in hundredths, but not all of them, and not always as ISO 4217
/// does: these are Stripe's zero-decimal currencies.
const ZERO_DECIMAL: [&str; 16] =
    ["BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"];
/// Stripe's three-decimal currencies, whose amounts must end in 0.
const THREE_DECIMAL: [&str; 5] = ["BHD", "JOD", "KWD", "OMR", "TND"];

/// The power of ten Stripe multiplies a currency's major units by.
pub fn stripe_exponent(currency: &str) -> u32 {
    let upper = currency.to_ascii_uppercase();
    if ZERO_DECIMAL.contains(&upper.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&upper.as_str()) {
        3
    } else {
        // Every other currency, ISK, HUF and TWD included, is two-decimal in Stripe's API.
        2
    }
}

/// `amount` in Stripe's smallest unit of `currency`, exactly, or why Stripe cannot take it.
pub fn to_minor_units(amount: Decimal, currency: &str) -> Result<i64, String> {
    let upper = currency.to_ascii_uppercase();
    let exponent = stripe_exponent(&upper);
    let scaled = Decimal::from(10_i64.pow(exponent))
        .checked_mul(amount)
        .ok_or_else(|| format!("{amount} {upper} is too large for Stripe"))?;
    if !scaled.fract().is_zero() {
        return Err(format!("Stripe takes {upper} amounts with at most {exponent} decimal places, not {amount}"));
    }
    if scaled <= Decimal::ZERO {
        return Err(format!("a payment must be positive, not {amount} {upper}"));
    }
    // Stripe's special cases: three-decimal amounts must end in 0, and ISK, zero-decimal in
    // practice, is still sent in hundredths, so it must be a whole number of krónur.
    let step = match (exponent, upper.as_str()) {
        (3, _) => 10,
        (_, "ISK") => 100,
        _ => 1,
    };
    let minor = scaled.to_i64().ok_or_else(|| format!("{amount} {upper} is too large for Stripe"))?;
    if minor % step != 0 {
        return Err(format!("Stripe takes {upper} amounts only in steps of {}", Decimal::new(step, exponent)));
    }
    Ok(minor)
}

/// The Checkout Session's `expires_at`: shortly before the top-up's expiry, clamped into what
/// Stripe accepts. A top-up that expires sooner than Stripe's 30 minutes leaves the session
/// open after the top-up ended (docs/payments.md, "Known limits").
pub fn session_expiry(
    top_up_expires_at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    let duration = |duration: Duration| chrono::Duration::from_std(duration).expect("a short duration");
    let wanted = top_up_expires_at - duration(SESSION_CLOSE_MARGIN);
    wanted.clamp(now + duration(SESSION_MIN_LIFETIME), now + duration(SESSION_MAX_LIFETIME))
}

/// The form fields of `POST /v1/checkout/sessions` for a top-up.
pub fn checkout_form(
    request: &CheckoutRequest,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<(&'static str, String)>, PaymentError> {
    let unit_amount = to_minor_units(request.amount, &request.currency).map_err(PaymentError::Refused)?;
    let mut form = vec![
        ("mode", "payment".to_owned()),
        ("line_items[0][price_data][currency]", request.currency.to_ascii_lowercase()),
        ("line_items[0][price_data][unit_amount]", unit_amount.to_string()),
        ("line_items[0][price_data][product_data][name]", request.description.clone()),
        ("line_items[0][quantity]", "1".to_owned()),
        ("success_url", request.success_url.clone()),
        ("cancel_url", request.cancel_url.clone()),
        ("client_reference_id", request.top_up_id.clone()),
        ("metadata[top_up_id]", request.top_up_id.clone()),
        ("metadata[customer_id]", request.customer_id.clone()),
        ("expires_at", session_expiry(request.expires_at, now).timestamp().to_string()),
    ];
    if let Some(email) = &request.customer_email {
        form.push(("customer_email", email.clone()));
    }
    if request.save_payment_method {
        // A Stripe customer to keep the card on, and the card set up for charges made while
        // the customer is away (auto top-up).
        form.push(("customer_creation", "always".to_owned()));
        form.push(("payment_intent_data[setup_future_usage]", "off_session".to_owned()));
    }
    Ok(form)
}

/// The form fields of `POST /v1/checkout/sessions` for a session that only saves a card
/// (`mode=setup`) on the Stripe customer `customer`. The metadata names Tally's customer and
/// mode, which the `checkout.session.completed` event brings back.
pub fn setup_form(request: &CardSetupRequest, customer: &str) -> Vec<(&'static str, String)> {
    vec![
        ("mode", "setup".to_owned()),
        ("customer", customer.to_owned()),
        // Cards only: auto top-up charges them off-session, which other methods may not allow.
        ("payment_method_types[]", "card".to_owned()),
        ("success_url", request.success_url.clone()),
        ("cancel_url", request.cancel_url.clone()),
        ("metadata[purpose]", CARD_SETUP_PURPOSE.to_owned()),
        ("metadata[customer_id]", request.customer_id.clone()),
        ("metadata[tally_mode]", request.mode.as_str().to_owned()),
        ("setup_intent_data[metadata][customer_id]", request.customer_id.clone()),
    ]
}

/// `metadata[purpose]` of the setup-mode sessions Tally opens.
pub const CARD_SETUP_PURPOSE: &str = "card_setup";

/// The form fields of `POST /v1/payment_intents` for an off-session charge.
pub fn off_session_form(request: &OffSessionCharge) -> Result<Vec<(&'static str, String)>, PaymentError> {
    let amount = to_minor_units(request.amount, &request.currency).map_err(PaymentError::Refused)?;
    let mut form = vec![
        ("amount", amount.to_string()),
        ("currency", request.currency.to_ascii_lowercase()),
        ("payment_method", request.payment_method.clone()),
        ("off_session", "true".to_owned()),
        ("confirm", "true".to_owned()),
        // Nobody is there to follow a redirect, so payment methods that need one are out; this
        // also spares the `return_url` Stripe otherwise asks for when confirming.
        ("automatic_payment_methods[enabled]", "true".to_owned()),
        ("automatic_payment_methods[allow_redirects]", "never".to_owned()),
        ("description", request.description.clone()),
        ("metadata[top_up_id]", request.top_up_id.clone()),
    ];
    if let Some(customer) = &request.provider_customer {
        form.push(("customer", customer.clone()));
    }
    Ok(form)
}

/// What an off-session PaymentIntent's status means for the top-up.
pub fn charge_outcome(intent: &PaymentIntent) -> ChargeOutcome {
    match intent.status.as_deref() {
        Some("succeeded") => ChargeOutcome::Succeeded { reference: intent.id.clone() },
        Some("processing") => ChargeOutcome::Processing { reference: intent.id.clone() },
        Some("requires_action") | Some("requires_confirmation") => ChargeOutcome::Declined {
            reason: "the card's bank asks the customer to authenticate this payment".to_owned(),
        },
        Some("requires_capture") => ChargeOutcome::Declined {
            reason: "Stripe holds the payment for a manual capture, which Tally does not make".to_owned(),
        },
        _ => ChargeOutcome::Declined { reason: intent.failure_reason() },
    }
}

impl StripeProvider {
    pub fn new(config: StripeConfig) -> StripeProvider {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Tally/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the Stripe HTTP client builds");
        StripeProvider { config, client }
    }

    pub fn webhook_secret(&self) -> &str {
        &self.config.webhook_secret
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.api_base.trim_end_matches('/'))
    }

    async fn send<T: for<'de> Deserialize<'de>>(&self, request: reqwest::RequestBuilder) -> Result<T, CallError> {
        let response = request
            .bearer_auth(&self.config.secret_key)
            .header("Stripe-Version", API_VERSION)
            .send()
            .await
            .map_err(|error| CallError::Unreachable(format!("cannot reach Stripe: {error}")))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|error| CallError::Unreachable(format!("Stripe's answer was cut short: {error}")))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|error| {
                CallError::Unreachable(format!(
                    "Stripe answered {status} with an unexpected body ({error}): {}",
                    quote(&body)
                ))
            });
        }
        match serde_json::from_slice::<ErrorEnvelope>(&body) {
            Ok(envelope) => Err(CallError::Status { status, error: envelope.error }),
            // Not Stripe's error shape: a proxy or an outage page; treat it as no answer.
            Err(_) if status >= 500 || status == 429 || !(400..500).contains(&status) => {
                Err(CallError::Unreachable(format!("Stripe answered {status}: {}", quote(&body))))
            }
            Err(_) => Err(CallError::Status {
                status,
                error: StripeError { message: Some(quote(&body)), ..StripeError::default() },
            }),
        }
    }

    async fn post_form<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(&'static str, String)],
    ) -> Result<T, CallError> {
        let request = self.client.post(self.url(path)).header("Idempotency-Key", idempotency_key).form(form);
        self.send(request).await
    }

    /// `GET /v1/setup_intents/{id}`: the payment method a setup-mode session saved.
    pub async fn setup_intent(&self, id: &str) -> Result<SetupIntent, PaymentError> {
        let path = format!("/v1/setup_intents/{}", stripe_id(id)?);
        self.send(self.client.get(self.url(&path))).await.map_err(CallError::into_payment_error)
    }

    /// `GET /v1/payment_methods/{id}`: the card's brand, last four digits and expiry.
    pub async fn payment_method(&self, id: &str) -> Result<PaymentMethodObject, PaymentError> {
        let path = format!("/v1/payment_methods/{}", stripe_id(id)?);
        self.send(self.client.get(self.url(&path))).await.map_err(CallError::into_payment_error)
    }

    /// `POST /v1/customers`: a Stripe customer to keep a customer's cards on.
    async fn create_customer(&self, request: &CardSetupRequest) -> Result<Customer, PaymentError> {
        let mut form = vec![("metadata[customer_id]", request.customer_id.clone())];
        if let Some(email) = &request.customer_email {
            form.push(("email", email.clone()));
        }
        let key = format!("customer_{}", request.setup_id);
        self.post_form("/v1/customers", &key, &form).await.map_err(CallError::into_payment_error)
    }

    /// Reads a PaymentIntent with its payment method expanded (brand and last four digits).
    pub async fn payment_intent(&self, id: &str) -> Result<PaymentIntent, PaymentError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(PaymentError::Refused(format!("{id:?} is not a PaymentIntent id")));
        }
        let path = format!("/v1/payment_intents/{id}");
        let request = self.client.get(self.url(&path)).query(&[("expand[]", "payment_method")]);
        self.send(request).await.map_err(CallError::into_payment_error)
    }
}

fn quote(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(MAX_QUOTED_CHARS).collect()
}

impl PaymentProvider for StripeProvider {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn start_checkout<'a>(&'a self, request: &'a CheckoutRequest) -> BoxFuture<'a, Result<Checkout, PaymentError>> {
        Box::pin(async move {
            let form = checkout_form(request, request.now)?;
            let session: CheckoutSession = self
                .post_form("/v1/checkout/sessions", &request.top_up_id, &form)
                .await
                .map_err(CallError::into_payment_error)?;
            let redirect_url =
                session.url.clone().filter(|url| url.starts_with("https://") || url.starts_with("http://"));
            match redirect_url {
                Some(redirect_url) => Ok(Checkout { reference: session.id, redirect_url }),
                None => Err(PaymentError::Unavailable(format!("Stripe's Checkout Session {} has no URL", session.id))),
            }
        })
    }

    fn charge_off_session<'a>(
        &'a self,
        request: &'a OffSessionCharge,
    ) -> BoxFuture<'a, Result<ChargeOutcome, PaymentError>> {
        Box::pin(async move {
            let form = off_session_form(request)?;
            match self.post_form::<PaymentIntent>("/v1/payment_intents", &request.top_up_id, &form).await {
                Ok(intent) => Ok(charge_outcome(&intent)),
                // A declined card, or one whose bank wants the customer present: Stripe answers
                // 402 with a card error.
                Err(CallError::Status { status: 402, error }) if error.kind.as_deref() == Some("card_error") => {
                    Ok(ChargeOutcome::Declined {
                        reason: error.message.unwrap_or_else(|| "the card was declined".to_owned()),
                    })
                }
                Err(error) => Err(error.into_payment_error()),
            }
        })
    }

    /// A Checkout Session in `mode=setup` on the customer's Stripe customer, created first
    /// (`POST /v1/customers`) when the customer has none yet.
    fn start_card_setup<'a>(&'a self, request: &'a CardSetupRequest) -> BoxFuture<'a, Result<Checkout, PaymentError>> {
        Box::pin(async move {
            let customer = match &request.provider_customer {
                Some(customer) => customer.clone(),
                None => self.create_customer(request).await?.id,
            };
            let form = setup_form(request, stripe_id(&customer)?);
            let session: CheckoutSession = self
                .post_form("/v1/checkout/sessions", &request.setup_id, &form)
                .await
                .map_err(CallError::into_payment_error)?;
            let redirect_url =
                session.url.clone().filter(|url| url.starts_with("https://") || url.starts_with("http://"));
            match redirect_url {
                Some(redirect_url) => Ok(Checkout { reference: session.id, redirect_url }),
                None => Err(PaymentError::Unavailable(format!("Stripe's Checkout Session {} has no URL", session.id))),
            }
        })
    }

    /// `POST /v1/checkout/sessions/{id}/expire`. A session that is already complete or
    /// expired cannot be expired: Stripe says so with a 400, which is no failure here (a
    /// payment it took is credited when its event arrives).
    fn cancel_checkout<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            let path = format!("/v1/checkout/sessions/{}/expire", stripe_id(reference)?);
            match self.post_form::<serde_json::Value>(&path, &format!("expire_{reference}"), &[]).await {
                Ok(_) | Err(CallError::Status { status: 400, .. }) => Ok(()),
                Err(error) => Err(error.into_payment_error()),
            }
        })
    }

    /// `POST /v1/payment_methods/{id}/detach`: a detached payment method cannot be charged.
    fn remove_card<'a>(&'a self, card: &'a SavedCard) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            let path = format!("/v1/payment_methods/{}/detach", stripe_id(&card.payment_method)?);
            match self.post_form::<serde_json::Value>(&path, &format!("detach_{}", card.payment_method), &[]).await {
                Ok(_) => Ok(()),
                // Already detached (or deleted in the Dashboard): nothing left to charge.
                Err(CallError::Status { status: 400 | 404, .. }) => Ok(()),
                Err(error) => Err(error.into_payment_error()),
            }
        })
    }

    /// `POST /v1/customers/{id}` with `invoice_settings[default_payment_method]`.
    fn set_default_card<'a>(&'a self, card: &'a SavedCard) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            let Some(customer) = &card.provider_customer else { return Ok(()) };
            let path = format!("/v1/customers/{}", stripe_id(customer)?);
            let form = [("invoice_settings[default_payment_method]", card.payment_method.clone())];
            let key = format!("default_{}_{}", customer, card.payment_method);
            self.post_form::<Customer>(&path, &key, &form).await.map_err(CallError::into_payment_error)?;
            Ok(())
        })
    }
}

/// A Stripe id as it may go into a URL path.
fn stripe_id(id: &str) -> Result<&str, PaymentError> {
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(id)
    } else {
        Err(PaymentError::Refused(format!("{id:?} is not a Stripe id")))
    }
}

/// Why a webhook's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("no signature in the Stripe-Signature header matches the payload")]
    Mismatch,
    #[error("the signature's timestamp is {age_seconds} s from now, past the {tolerance_seconds} s tolerance")]
    OutsideTolerance { age_seconds: i64, tolerance_seconds: u64 },
}

/// `HEX(HMAC-SHA256(secret, "{timestamp}.{payload}"))`, the secret being the `whsec_…` text.
pub fn sign(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, payload).finalize().into_bytes())
}

fn mac(secret: &str, timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// Checks a `Stripe-Signature: t=…,v1=…[,v1=…]` header against the raw payload: one `v1`
/// must be the HMAC of `t.payload` (compared in constant time; several appear while a secret is
/// being rolled), and `t` must be within `tolerance` of `now_unix`. Returns the timestamp.
pub fn verify_signature(
    secret: &str,
    header: Option<&str>,
    payload: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            return Err(SignatureError::Malformed("each part must be key=value"));
        };
        match key {
            "t" if timestamp.is_none() => {
                timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed("t is not a number"))?);
            }
            "t" => return Err(SignatureError::Malformed("t appears twice")),
            "v1" => signatures.push(value),
            // v0 (Stripe's test scheme) and future schemes are not Tally's to trust.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1 signature"));
    }
    let expected = mac(secret, timestamp, payload);
    let matched = signatures
        .iter()
        .filter_map(|signature| hex::decode(signature).ok())
        .any(|bytes| expected.clone().verify_slice(&bytes).is_ok());
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let age_seconds = now_unix.saturating_sub(timestamp);
    if age_seconds.unsigned_abs() > tolerance.as_secs() {
        return Err(SignatureError::OutsideTolerance { age_seconds, tolerance_seconds: tolerance.as_secs() });
    }
    Ok(timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn decimal(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn minor_units_follow_stripe_not_iso() {
        let check = |amount: &str, currency: &str| to_minor_units(decimal(amount), currency);
        assert_eq!(check("10", "USD"), Ok(1000));
        assert_eq!(check("12.34", "usd"), Ok(1234));
        assert_eq!(check("0.01", "EUR"), Ok(1));
        assert_eq!(check("500", "JPY"), Ok(500));
        assert_eq!(check("5", "ISK"), Ok(500), "ISK goes in hundredths");
        assert_eq!(check("1.23", "KWD"), Ok(1230));
        assert!(check("1.234", "KWD").is_err(), "three-decimal amounts must end in 0");
        assert!(check("10.005", "USD").is_err());
        assert!(check("1.5", "JPY").is_err());
        assert!(check("0", "USD").is_err());
        assert!(check("-1", "USD").is_err());
        assert!(check("100000000000000000", "USD").is_err(), "past i64 minor units");
        assert_eq!(check("92233720368547758.07", "USD"), Ok(i64::MAX));
    }

    #[test]
    fn session_expiry_is_clamped_to_stripes_window() {
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let minutes = chrono::Duration::minutes;
        assert_eq!(session_expiry(now + minutes(5), now), now + minutes(31));
        assert_eq!(session_expiry(now + minutes(41), now), now + minutes(31));
        assert_eq!(session_expiry(now + minutes(120), now), now + minutes(110), "closes before the top-up");
        assert_eq!(session_expiry(now + minutes(24 * 60), now), now + minutes(24 * 60 - 10));
        assert_eq!(session_expiry(now + minutes(48 * 60), now), now + minutes(24 * 60 - 1));
    }

    #[test]
    fn signatures_match_an_independent_computation() {
        // python3: hmac.new(b"whsec_test_secret", b'1700000000.{"id":"evt_1"}', hashlib.sha256).hexdigest()
        let payload = br#"{"id":"evt_1"}"#;
        let expected = "248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a";
        assert_eq!(sign("whsec_test_secret", 1_700_000_000, payload), expected);
        let tolerance = SIGNATURE_TOLERANCE;
        let verify =
            |header: &str, now: i64| verify_signature("whsec_test_secret", Some(header), payload, now, tolerance);
        assert_eq!(verify(&format!("t=1700000000,v1={expected}"), 1_700_000_100), Ok(1_700_000_000));
        // Several v1 entries (a secret being rolled) and other schemes are fine.
        assert_eq!(
            verify(&format!("t=1700000000,v1={},v0=abc,v1={expected}", "00".repeat(32)), 1_700_000_000),
            Ok(1_700_000_000)
        );
        assert_eq!(verify(&format!("t=1700000001,v1={expected}"), 1_700_000_001), Err(SignatureError::Mismatch));
        assert_eq!(verify("t=1700000000,v1=zz", 1_700_000_000), Err(SignatureError::Mismatch));
        assert!(matches!(
            verify(&format!("t=1700000000,v1={expected}"), 1_700_000_301),
            Err(SignatureError::OutsideTolerance { .. })
        ));
        assert!(matches!(
            verify(&format!("t=1700000000,v1={expected}"), 1_699_999_000),
            Err(SignatureError::OutsideTolerance { .. })
        ));
        assert_eq!(
            verify(&format!("t=1700000000,v0={expected}"), 1_700_000_000),
            Err(SignatureError::Malformed("no v1 signature"))
        );
        assert!(matches!(verify("garbage", 0), Err(SignatureError::Malformed(_))));
        assert_eq!(verify_signature("whsec_test_secret", None, payload, 0, tolerance), Err(SignatureError::Missing));
    }

    #[test]
    fn events_parse_with_ids_or_expanded_objects() {
        let payload = br#"{"id":"evt_1","object":"event","type":"checkout.session.completed","created":1700000000,
            "data":{"object":{"id":"cs_test_1","object":"checkout.session","amount_total":1000,"currency":"usd",
            "client_reference_id":"top_1","customer":"cus_1","metadata":{"top_up_id":"top_1"},
            "payment_intent":{"id":"pi_1","object":"payment_intent","amount":1000,"status":"succeeded",
              "payment_method":{"id":"pm_1","card":{"brand":"visa","last4":"4242","exp_month":12,"exp_year":2030}}},
            "payment_status":"paid","url":null}}}"#;
        let head: EventHead = serde_json::from_slice(payload).unwrap();
        assert_eq!((head.id.as_str(), head.kind.as_str()), ("evt_1", "checkout.session.completed"));
        let session: CheckoutSession = event_object(payload).unwrap();
        assert_eq!(session.top_up_id(), Some("top_1"));
        assert_eq!(session.customer.as_ref().map(Expandable::id), Some("cus_1"));
        assert_eq!(session.amount_total, Some(1000));
        let intent = session.payment_intent.unwrap();
        assert_eq!(intent.id(), "pi_1");
        let method = intent.object().unwrap().payment_method.as_ref().unwrap();
        assert_eq!(method.id(), "pm_1");
        assert_eq!(method.object().unwrap().card.as_ref().unwrap().last4.as_deref(), Some("4242"));
    }

    #[test]
    fn setup_sessions_save_a_card_on_the_customer_and_charge_nothing() {
        let request = CardSetupRequest {
            customer_id: "cust_1".into(),
            mode: tally_core::Mode::Live,
            customer_email: Some("buyer@example.com".into()),
            provider_customer: Some("cus_1".into()),
            setup_id: "setup_1".into(),
            success_url: "https://billing.example/portal/cards?added=1".into(),
            cancel_url: "https://billing.example/portal/cards".into(),
        };
        let form = setup_form(&request, "cus_1");
        let field = |name: &str| form.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str());
        assert_eq!(field("mode"), Some("setup"));
        assert_eq!(field("customer"), Some("cus_1"));
        assert_eq!(field("payment_method_types[]"), Some("card"));
        assert_eq!(field("metadata[purpose]"), Some(CARD_SETUP_PURPOSE));
        assert_eq!((field("metadata[customer_id]"), field("metadata[tally_mode]")), (Some("cust_1"), Some("live")));
        assert!(form.iter().all(|(key, _)| !key.starts_with("line_items") && !key.starts_with("payment_intent_data")));
        let payload = br#"{"id":"evt_2","type":"checkout.session.completed","data":{"object":{"id":"cs_2",
            "object":"checkout.session","mode":"setup","customer":"cus_1","setup_intent":"seti_1",
            "payment_status":"no_payment_required","metadata":{"purpose":"card_setup","customer_id":"cust_1"}}}}"#;
        let session: CheckoutSession = event_object(payload).unwrap();
        assert_eq!(
            (session.mode.as_deref(), session.setup_intent.as_ref().map(Expandable::id)),
            (Some("setup"), Some("seti_1"))
        );
        assert_eq!(session.metadata_value("customer_id"), Some("cust_1"));
    }

    #[test]
    fn off_session_statuses_map_to_outcomes() {
        let intent = |status: &str| PaymentIntent {
            id: "pi_1".into(),
            status: Some(status.into()),
            customer: None,
            payment_method: None,
            metadata: None,
            last_payment_error: Some(StripeError {
                message: Some("Your card was declined.".into()),
                ..StripeError::default()
            }),
            amount: None,
            currency: None,
        };
        assert_eq!(charge_outcome(&intent("succeeded")), ChargeOutcome::Succeeded { reference: "pi_1".into() });
        assert_eq!(charge_outcome(&intent("processing")), ChargeOutcome::Processing { reference: "pi_1".into() });
        assert_eq!(
            charge_outcome(&intent("requires_payment_method")),
            ChargeOutcome::Declined { reason: "Your card was declined.".into() }
        );
        assert!(matches!(charge_outcome(&intent("requires_action")), ChargeOutcome::Declined { .. }));
    }
}
