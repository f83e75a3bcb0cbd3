//! The billing portal: server-rendered pages a platform sends its customers to, to see their
//! balances, spend and usage, buy credit and set auto top-up.
//!
//! # Sessions
//! `POST /billing-portal/sessions` (`routes::portal`) makes a single-use link valid for 10
//! minutes. `GET /portal/enter?token=…` swaps it for a session cookie (`tally_portal`:
//! HttpOnly, SameSite=Lax, Path=/portal, Secure when Tally's public URL is https) scoped to
//! that one customer and mode, valid for one hour from entry (fixed, not sliding), then
//! redirects to the portal's home. An expired or reused link redirects to the platform's
//! `failure_url`; a link Tally never made gets a plain error page, since there is no
//! `failure_url` it could trust.
//!
//! # Forms
//! Every POST carries the session's CSRF token (compared in constant time) and is refused
//! with 403 without it. Pages work without JavaScript; one small script (`/portal/portal.js`)
//! only fetches the live quote on the top-up form. Every page is sent with a strict Content
//! Security Policy and `no-store` caching; framing is forbidden unless the server's
//! `portal_frame_ancestors` allows origins (see `edges.rs`).

mod activity;
mod edges;
pub mod format;
pub mod locale;
mod overview;
mod pages;
mod pay;

use crate::error::ApiError;
use crate::routes::topups::{constant_time_eq, public_url, start};
use crate::types::parse_decimal;
use crate::AppState;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use chrono::{DateTime, NaiveDate, Utc};
use format::AssetLook;
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tally_core::asset::AssetCode;
use tally_core::money::check_positive;
use tally_core::rate::{self, ExchangeRate};
use tally_core::Mode;
use tally_store::ops::assets::{self as asset_ops, KnownAsset};
use tally_store::ops::auto_top_up::{self as auto_ops, Settings};
use tally_store::ops::portal::{self as portal_ops, Refusal, SESSION_VALIDITY_MINUTES};
use tally_store::ops::topups::NewTopUp;
use tally_store::ops::wallet as wallet_ops;
use tally_store::ops::{FieldError, OpError};
use tally_store::repo::assets as asset_repo;
use tally_store::repo::auto_top_ups::{self as auto_repo, AutoTopUp};
use tally_store::repo::portal::{self as portal_repo, FeeLine, PortalSession};
use tally_store::repo::topups::{self as topup_repo, PaymentMethod, TopUp};
use tally_store::repo::wallets::{self as wallet_repo, Account, AccountKey};
use tally_store::repo::{Metadata, Page};
use tally_store::Conn;

pub const COOKIE_NAME: &str = "tally_portal";
const PAGE_SIZE: i64 = 20;
/// The furthest page of a history one may ask for, so that an offset stays bounded.
const MAX_PAGE: i64 = 10_000;
/// The furthest page of the usage list: the fees it pages through are counted, and an offset
/// read, up to `repo::COUNT_LIMIT` (10,000) rows; all of a longer history is on the activity
/// page, which pages by a cursor, and in its CSV.
const MAX_USAGE_PAGE: i64 = tally_store::repo::COUNT_LIMIT / PAGE_SIZE;
/// Custom assets offered on the top-up form (the first ones the platform made).
const MAX_TOP_UP_ASSETS: i64 = 100;

/// The policy of every page, before `frame-ancestors`, which `edges::frame_headers` adds.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
     style-src 'unsafe-inline'; img-src https: http: data:; base-uri 'none'; form-action 'self' https: http:";

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/portal/enter", get(enter))
        .route("/portal", get(home))
        .route("/portal/usage", get(usage))
        .route("/portal/top-ups", get(top_ups).post(start_top_up))
        .route("/portal/auto-top-up", get(auto_top_up).post(save_auto_top_up))
        .route("/portal/quote", get(quote))
        .route("/portal/portal.js", get(script))
        .route("/portal/activity", get(activity::activity))
        .route("/portal/activity.csv", get(activity::activity_csv))
        .route("/portal/view.js", get(locale::view_script))
        .merge(pay::router())
        .route("/checkout/{top_up_id}", get(crate::payments::checkout::show).post(crate::payments::checkout::pay))
        .route("/checkout/{top_up_id}/cancel", axum::routing::post(crate::payments::checkout::cancel))
        .route("/portal/{*rest}", axum::routing::any(edges::not_found))
        .layer(axum::middleware::map_response_with_state(edges::Framing::of(&state.config), edges::frame_headers))
}

/// A page with the portal's security headers.
fn html(status: StatusCode, body: maud::Markup) -> Response {
    let mut response = (status, body).into_response();
    secure_headers(response.headers_mut());
    response
}

fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
}

/// A failure as a page: client errors say what went wrong, internal ones are logged once
/// (by `ApiError`) and shown as an apology.
fn failure(state: &AppState, error: ApiError) -> Response {
    let (status, message) = match error {
        ApiError::NotFound(message) => (StatusCode::NOT_FOUND, message),
        ApiError::Conflict(message) => (StatusCode::CONFLICT, message),
        ApiError::Unavailable(message) => (StatusCode::SERVICE_UNAVAILABLE, message),
        ApiError::Invalid(fields) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            fields.iter().map(|field| format!("{}: {}", field.field, field.message)).collect::<Vec<_>>().join("; "),
        ),
        ApiError::Malformed(message) => (StatusCode::BAD_REQUEST, message),
        ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.".to_owned()),
        ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Your session has ended.".to_owned()),
        ApiError::Internal(cause) => {
            tracing::error!(%cause, "internal error in the billing portal");
            (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong on our side. Please try again.".to_owned())
        }
    };
    html(status, pages::message(&state.branding, "Something went wrong", &message))
}

fn is_token(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The session token of the request's cookie, if it has the form of one.
fn session_token(cookies: &CookieJar) -> Option<String> {
    cookies.get(COOKIE_NAME).map(|cookie| cookie.value().to_owned()).filter(|token| is_token(token))
}

/// The portal session of the request's cookie. Without one, the request gets a page saying
/// the session has ended and how to open the portal again.
pub struct Session(pub PortalSession);

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Session, Response> {
        let ended =
            |back: Option<String>| html(StatusCode::UNAUTHORIZED, edges::ended(&state.branding, back.as_deref()));
        let Some(token) = session_token(&CookieJar::from_headers(&parts.headers)) else {
            return Err(ended(None));
        };
        let now = state.now();
        let found = state
            .read(move |conn| match portal_ops::session(conn, &token, now)? {
                Some(session) => Ok(Ok(session)),
                None => Ok(Err(portal_ops::session_return_url(conn, &token)?)),
            })
            .await;
        match found {
            Ok(Ok(session)) => Ok(Session(session)),
            Ok(Err(back)) => Err(ended(back)),
            Err(error) => Err(failure(state, error)),
        }
    }
}

fn csrf_ok(session: &PortalSession, presented: &str) -> bool {
    !presented.is_empty() && constant_time_eq(session.csrf_token.as_bytes(), presented.as_bytes())
}

fn forbidden(state: &AppState) -> Response {
    html(
        StatusCode::FORBIDDEN,
        pages::message(
            &state.branding,
            "This form has expired",
            "The form was not sent from this billing portal session. Go back, reload the page and try again.",
        ),
    )
}

#[derive(Debug, Deserialize)]
pub struct EnterQuery {
    pub token: Option<String>,
}

/// Swaps a portal link for a session cookie, once.
async fn enter(
    State(state): State<AppState>,
    headers: HeaderMap,
    cookies: CookieJar,
    Query(query): Query<EnterQuery>,
) -> Response {
    let token = query.token.unwrap_or_default();
    let invalid =
        || html(StatusCode::FORBIDDEN, edges::invalid_link(&state.branding, state.config.portal_home_url.as_deref()));
    if !is_token(&token) {
        return invalid();
    }
    let now = state.now();
    let outcome = match state.write(move |conn| portal_ops::enter(conn, &token, now)).await {
        Ok(outcome) => outcome,
        Err(error) => return failure(&state, error),
    };
    let mut response = match outcome {
        Ok(entered) => {
            let https = public_url(&state, &headers).starts_with("https://");
            // Inside a platform's frame the cookie is a third-party one: only SameSite=None
            // (which browsers take only with Secure) travels there, partitioned by the
            // embedding site. CSRF tokens protect the forms either way.
            let framed = https && !state.config.portal_frame_ancestors.is_empty();
            let cookie = Cookie::build((COOKIE_NAME, entered.token))
                .path("/portal")
                .max_age(cookie::time::Duration::minutes(SESSION_VALIDITY_MINUTES))
                .http_only(true)
                .same_site(if framed { SameSite::None } else { SameSite::Lax })
                .secure(https)
                .partitioned(framed);
            (cookies.add(cookie), Redirect::to("/portal")).into_response()
        }
        Err(Refusal::Unknown) => return invalid(),
        Err(Refusal::Expired { failure_url }) => {
            Redirect::to(&edges::with_reason(&failure_url, "expired")).into_response()
        }
        Err(Refusal::Used { failure_url }) => Redirect::to(&edges::with_reason(&failure_url, "used")).into_response(),
        Err(Refusal::Invalid { failure_url }) => {
            Redirect::to(&edges::with_reason(&failure_url, "invalid")).into_response()
        }
    };
    // The link's token must not travel on in a Referer header.
    response.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Grant starts and expiries that fell due are settled before a page shows balances, as the
/// API does before a wallet read.
async fn settle_if_due(state: &AppState, session: &PortalSession) -> Result<(), ApiError> {
    let (mode, customer_id, now) = (session.mode, session.customer_id.clone(), state.now());
    let id = customer_id.clone();
    if state.read(move |conn| wallet_ops::customer_has_due(conn, &id, now)).await? {
        state.write(move |conn| wallet_ops::settle_customer(conn, mode, &customer_id, now)).await?;
    }
    Ok(())
}

/// How each asset among `codes` looks.
fn looks(
    conn: &mut dyn Conn,
    mode: Mode,
    codes: impl IntoIterator<Item = String>,
) -> Result<HashMap<String, AssetLook>, OpError> {
    let mut found = HashMap::new();
    for code in codes.into_iter().collect::<BTreeSet<_>>() {
        let look = match AssetCode::parse(&code) {
            Ok(parsed) => asset_ops::find(conn, mode, &parsed)?.map(|known| AssetLook::of(&known)),
            Err(_) => None,
        };
        found.insert(code.clone(), look.unwrap_or_else(|| AssetLook::unknown(&code)));
    }
    Ok(found)
}

fn look_of(looks: &HashMap<String, AssetLook>, code: &str) -> AssetLook {
    looks.get(code).cloned().unwrap_or_else(|| AssetLook::unknown(code))
}

/// One fee as the usage history shows it.
#[derive(Debug, Clone)]
pub struct UsageLine {
    pub fee: FeeLine,
    pub look: AssetLook,
    pub product: Option<String>,
    pub subject: Option<String>,
    /// When the usage happened: its event's `occurred_at` for a usage fee, else when the fee
    /// was made.
    pub when: DateTime<Utc>,
}

/// The usage lines of `fees`, each dated by when its usage occurred.
fn usage_lines(
    conn: &mut dyn Conn,
    mode: Mode,
    fees: Vec<FeeLine>,
    looks: &HashMap<String, AssetLook>,
) -> Result<Vec<UsageLine>, OpError> {
    let details: Vec<serde_json::Value> =
        fees.iter().map(|fee| serde_json::from_str(&fee.detail).unwrap_or_default()).collect();
    let text =
        |detail: &serde_json::Value, field: &str| detail.get(field).and_then(|value| value.as_str()).map(str::to_owned);
    let event_ids: Vec<String> = details.iter().filter_map(|detail| text(detail, "event_id")).collect();
    let occurred: HashMap<String, DateTime<Utc>> =
        portal_repo::event_times(conn, mode, &event_ids)?.into_iter().collect();
    Ok(fees
        .into_iter()
        .zip(details)
        .map(|(fee, detail)| UsageLine {
            look: look_of(looks, &fee.asset),
            product: text(&detail, "product_name"),
            subject: text(&detail, "subject"),
            when: text(&detail, "event_id").and_then(|id| occurred.get(&id).copied()).unwrap_or(fee.created_at),
            fee,
        })
        .collect())
}

/// One top-up as the history shows it.
#[derive(Debug, Clone)]
pub struct TopUpLine {
    pub top_up: TopUp,
    pub asset: AssetLook,
    pub currency: AssetLook,
}

fn top_up_lines(top_ups: Vec<TopUp>, looks: &HashMap<String, AssetLook>) -> Vec<TopUpLine> {
    top_ups
        .into_iter()
        .map(|top_up| TopUpLine {
            asset: look_of(looks, &top_up.asset),
            currency: look_of(looks, &top_up.currency),
            top_up,
        })
        .collect()
}

/// What the home page shows.
pub struct Overview {
    pub accounts: Vec<(Account, AssetLook)>,
    pub month_start: NaiveDate,
    pub month_spend: Vec<(AssetLook, Decimal)>,
    /// Spend per product per day of the customer's calendar, plan fees apart.
    pub charts: Vec<overview::ProductChart>,
    pub plans: Vec<overview::Plan>,
    /// Whether a subscription is active, so that included credit renews.
    pub renewing: bool,
    /// The "pay now" link of each overdrawn account, by account id.
    pub pay_now: HashMap<String, String>,
    pub viewer: locale::Viewer,
    pub now: DateTime<Utc>,
    pub recent_usage: Vec<UsageLine>,
    pub usage_count: i64,
    pub recent_top_ups: Vec<TopUpLine>,
    pub top_up_count: i64,
    /// The customer's latest portal top-up, when they just came back from paying.
    pub returned_from: Option<TopUpLine>,
}

fn load_overview(
    conn: &mut dyn Conn,
    session: &PortalSession,
    returned: bool,
    now: DateTime<Utc>,
    catalog: &dyn tally_store::ops::products::Catalog,
    viewer: locale::Viewer,
) -> Result<Overview, OpError> {
    let (mode, customer_id) = (session.mode, session.customer_id.as_str());
    let mut accounts = wallet_repo::list_for_customer(conn, customer_id)?;
    for account in &mut accounts {
        account.state.grants = wallet_repo::open_grants_in_burn_order(conn, &account.key)?;
    }
    let spend = overview::spend(conn, mode, customer_id, &viewer, now)?;
    let (recent_fees, usage_count) = portal_repo::fees(conn, mode, customer_id, Page { offset: 0, limit: 5 })?;
    let (recent_top_ups, top_up_count) = topup_repo::for_customer(conn, customer_id, Page { offset: 0, limit: 5 })?;
    let returned_from = if returned {
        let (latest, _) = topup_repo::for_customer(conn, customer_id, Page { offset: 0, limit: PAGE_SIZE })?;
        latest.into_iter().find(|top_up| top_up.origin == "portal")
    } else {
        None
    };
    let codes = accounts.iter().map(|account| account.key.asset.clone()).chain(spend.assets().cloned()).chain(
        recent_top_ups.iter().chain(&returned_from).flat_map(|top_up| [top_up.asset.clone(), top_up.currency.clone()]),
    );
    let looks = looks(conn, mode, codes.collect::<Vec<_>>())?;
    let month_spend = spend.month.iter().map(|(asset, total)| (look_of(&looks, asset), *total)).collect();
    let recent_usage = usage_lines(conn, mode, recent_fees, &looks)?;
    let charts = overview::product_charts(&spend, &looks);
    let look_one = |conn: &mut dyn Conn, code: &str| -> Result<AssetLook, OpError> {
        let found = self::looks(conn, mode, [code.to_owned()])?;
        Ok(look_of(&found, code))
    };
    let plans = overview::plans(conn, mode, customer_id, catalog, &look_one, &viewer)?;
    let renewing = plans.iter().any(|plan| plan.status == tally_store::repo::subscriptions::SubscriptionStatus::Active);
    let pay_now = if accounts.iter().any(|account| account.state.available < Decimal::ZERO) {
        let options = top_up_options(conn, mode, &accounts, now)?;
        accounts
            .iter()
            .filter_map(|account| {
                overview::pay_now_link(account, &options).map(|link| (account_id(&account.key), link))
            })
            .collect()
    } else {
        HashMap::new()
    };
    Ok(Overview {
        accounts: accounts
            .into_iter()
            .map(|account| {
                let look = look_of(&looks, &account.key.asset);
                (account, look)
            })
            .collect(),
        month_start: spend.month_start,
        month_spend,
        charts,
        plans,
        renewing,
        pay_now,
        viewer,
        now,
        recent_usage,
        usage_count,
        recent_top_ups: top_up_lines(recent_top_ups, &looks),
        top_up_count,
        returned_from: returned_from.map(|top_up| top_up_lines(vec![top_up], &looks).remove(0)),
    })
}

#[derive(Debug, Deserialize)]
pub struct HomeQuery {
    /// Set by the return and failure URLs of a portal top-up.
    pub checkout: Option<String>,
}

async fn home(
    State(state): State<AppState>,
    Session(session): Session,
    viewer: locale::Viewer,
    Query(query): Query<HomeQuery>,
) -> Response {
    if let Err(error) = settle_if_due(&state, &session).await {
        return failure(&state, error);
    }
    let returned = query.checkout.is_some();
    let (loaded, now, catalog) = (session.clone(), state.now(), state.catalog.clone());
    match state.read(move |conn| load_overview(conn, &loaded, returned, now, catalog.as_ref(), viewer)).await {
        Ok(overview) => html(StatusCode::OK, pages::home(&state.branding_for(session.mode).await, &session, &overview)),
        Err(error) => failure(&state, error),
    }
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub page: Option<String>,
}

fn page_number(query: &PageQuery) -> i64 {
    query.page.as_deref().and_then(|text| text.parse::<i64>().ok()).unwrap_or(1).clamp(1, MAX_PAGE)
}

/// One page of a history, numbered from 1.
pub struct Paged<T> {
    pub items: Vec<T>,
    pub page: i64,
    pub total: i64,
    /// The furthest page that may be asked for.
    pub last_page: i64,
}

impl<T> Paged<T> {
    pub fn has_next(&self) -> bool {
        self.page * PAGE_SIZE < self.total && self.page < self.last_page
    }
}

async fn usage(
    State(state): State<AppState>,
    Session(session): Session,
    viewer: locale::Viewer,
    Query(query): Query<PageQuery>,
) -> Response {
    let page = page_number(&query).min(MAX_USAGE_PAGE);
    let loaded = session.clone();
    let result = state
        .read(move |conn| {
            let window = Page { offset: (page - 1) * PAGE_SIZE, limit: PAGE_SIZE };
            let (fees, total) = portal_repo::fees(conn, loaded.mode, &loaded.customer_id, window)?;
            let looks = looks(conn, loaded.mode, fees.iter().map(|fee| fee.asset.clone()).collect::<Vec<_>>())?;
            Ok(Paged { items: usage_lines(conn, loaded.mode, fees, &looks)?, page, total, last_page: MAX_USAGE_PAGE })
        })
        .await;
    match result {
        Ok(paged) => {
            html(StatusCode::OK, pages::usage(&state.branding_for(session.mode).await, &session, &viewer, &paged))
        }
        Err(error) => failure(&state, error),
    }
}

/// Something the top-up form offers: an asset, the currency that buys it, and the rate.
#[derive(Debug, Clone)]
pub struct TopUpOption {
    pub asset: AssetLook,
    pub currency: AssetLook,
    pub rate: ExchangeRate,
    /// One-click amounts and the least one may pay, in `currency` (the asset's `top_up`).
    pub presets: Vec<Decimal>,
    pub minimum: Option<Decimal>,
}

impl TopUpOption {
    pub fn value(&self) -> String {
        format!("{}:{}", self.asset.code, self.currency.code)
    }
}

/// What the customer can buy now: each custom asset with a rate in force, per currency, and
/// the currencies they hold accounts in. Assets they already hold come first.
fn top_up_options(
    conn: &mut dyn Conn,
    mode: Mode,
    accounts: &[Account],
    now: DateTime<Utc>,
) -> Result<Vec<TopUpOption>, OpError> {
    let held: BTreeSet<&str> = accounts.iter().map(|account| account.key.asset.as_str()).collect();
    let mut options = Vec::new();
    let assets = asset_repo::list(conn, mode, &Page { offset: 0, limit: MAX_TOP_UP_ASSETS }.into())?.items;
    for asset in assets {
        let mut schedules: BTreeMap<String, Vec<rate::ScheduledRate>> = BTreeMap::new();
        for row in asset_repo::rates(conn, mode, &asset.code)? {
            schedules.entry(row.source).or_default().push(row.scheduled);
        }
        let settings = crate::routes::assets::parse_top_up(asset.top_up.as_deref()).unwrap_or_default();
        let look = AssetLook::of(&KnownAsset::Custom(asset));
        for (source, schedule) in schedules {
            let setting = settings.get(&source).cloned().unwrap_or_default();
            let Some(entry) = rate::in_force(&schedule, now) else { continue };
            let Some(minor_units) = tally_core::currency::minor_units(&source) else { continue };
            options.push(TopUpOption {
                asset: look.clone(),
                currency: AssetLook::of(&KnownAsset::Currency { code: source, minor_units }),
                rate: entry.rate,
                presets: setting.preset_amounts.iter().map(|amount| amount.0).collect(),
                minimum: setting.minimum_amount.map(|amount| amount.0),
            });
        }
    }
    for account in accounts {
        let code = &account.key.asset;
        if let Some(minor_units) = tally_core::currency::minor_units(code) {
            if !options.iter().any(|option| &option.asset.code == code) {
                let look = AssetLook::of(&KnownAsset::Currency { code: code.clone(), minor_units });
                options.push(TopUpOption {
                    asset: look.clone(),
                    currency: look,
                    rate: ExchangeRate::Rate(Decimal::ONE),
                    presets: Vec::new(),
                    minimum: None,
                });
            }
        }
    }
    options.sort_by_key(|option| !held.contains(option.asset.code.as_str()));
    Ok(options)
}

/// What the top-up page shows, and what the customer typed when the form comes back.
pub struct TopUpPage {
    pub options: Vec<TopUpOption>,
    pub history: Paged<TopUpLine>,
    pub chosen: String,
    pub amount: String,
    pub errors: Vec<String>,
    /// Whether the card paid with is kept for automatic top-ups (the customer may say no).
    pub save_card: bool,
    /// A top-up of the history just cancelled.
    pub cancelled: Option<String>,
}

async fn load_top_up_page(state: &AppState, session: &PortalSession, page: i64) -> Result<TopUpPage, ApiError> {
    let (loaded, now) = (session.clone(), state.now());
    state
        .read(move |conn| {
            let accounts = wallet_repo::list_for_customer(conn, &loaded.customer_id)?;
            let options = top_up_options(conn, loaded.mode, &accounts, now)?;
            let window = Page { offset: (page - 1) * PAGE_SIZE, limit: PAGE_SIZE };
            let (top_ups, total) = topup_repo::for_customer(conn, &loaded.customer_id, window)?;
            let codes: Vec<String> =
                top_ups.iter().flat_map(|top_up| [top_up.asset.clone(), top_up.currency.clone()]).collect();
            let looks = looks(conn, loaded.mode, codes)?;
            Ok(TopUpPage {
                chosen: options.first().map(TopUpOption::value).unwrap_or_default(),
                options,
                history: Paged { items: top_up_lines(top_ups, &looks), page, total, last_page: MAX_PAGE },
                amount: String::new(),
                errors: Vec::new(),
                save_card: true,
                cancelled: None,
            })
        })
        .await
}

#[derive(Debug, Deserialize)]
pub struct TopUpsQuery {
    pub page: Option<String>,
    pub cancelled: Option<String>,
    /// Prefilled choice and amount, as an overdrawn balance's "pay now" link sends them.
    pub option: Option<String>,
    pub amount: Option<String>,
}

async fn top_ups(
    State(state): State<AppState>,
    Session(session): Session,
    viewer: locale::Viewer,
    Query(query): Query<TopUpsQuery>,
) -> Response {
    match load_top_up_page(&state, &session, page_number(&PageQuery { page: query.page })).await {
        Ok(mut page) => {
            page.cancelled = query.cancelled.filter(|id| page.history.items.iter().any(|line| &line.top_up.id == id));
            if let Some(option) =
                query.option.filter(|option| page.options.iter().any(|offered| &offered.value() == option))
            {
                page.chosen = option;
            }
            page.amount = query.amount.filter(|amount| parse_decimal(amount).is_some()).unwrap_or(page.amount);
            html(StatusCode::OK, pay::top_ups(&state.branding_for(session.mode).await, &session, &viewer, &page))
        }
        Err(error) => failure(&state, error),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TopUpForm {
    pub csrf: String,
    pub option: String,
    pub amount: String,
    /// A preset button: `OPTION|AMOUNT`, which overrides `option` and `amount`.
    pub preset: String,
    /// The "save this card" checkbox: present when ticked.
    pub save_card: Option<String>,
}

fn parse_option(value: &str) -> Option<(AssetCode, AssetCode)> {
    let (asset, currency) = value.split_once(':')?;
    Some((AssetCode::parse(asset).ok()?, AssetCode::parse(currency).ok()?))
}

/// A fiat amount to pay: positive, within the limits, and payable in `currency`.
fn parse_payment(text: &str, currency: &AssetCode) -> Result<Decimal, String> {
    let amount = parse_decimal(text).ok_or_else(|| "Enter an amount such as 10 or 10.50.".to_owned())?;
    let amount = check_positive(amount).map_err(|error| format!("The amount {error}."))?;
    let places = currency.currency_minor_units().unwrap_or(0);
    if amount.scale() > places {
        return Err(format!("{currency} amounts take at most {places} decimal places."));
    }
    Ok(amount)
}

/// Refuses an amount under the option's minimum, saying what the minimum is.
fn check_minimum(
    viewer: &locale::Viewer,
    amount: Decimal,
    minimum: Option<&(Decimal, AssetLook)>,
) -> Result<Decimal, String> {
    match minimum {
        Some((minimum, currency)) if amount < *minimum => {
            Err(format!("The minimum top-up is {}.", viewer.amount(currency, *minimum)))
        }
        _ => Ok(amount),
    }
}

/// Starts a top-up from the form and sends the customer to the payment page.
async fn start_top_up(
    State(state): State<AppState>,
    Session(session): Session,
    viewer: locale::Viewer,
    headers: HeaderMap,
    Form(form): Form<TopUpForm>,
) -> Response {
    if !csrf_ok(&session, &form.csrf) {
        return forbidden(&state);
    }
    let mut page = match load_top_up_page(&state, &session, 1).await {
        Ok(page) => page,
        Err(error) => return failure(&state, error),
    };
    let mut form = form;
    if let Some((option, amount)) = form.preset.split_once('|') {
        (form.option, form.amount) = (option.to_owned(), amount.to_owned());
    }
    page.chosen = form.option.clone();
    page.amount = form.amount.clone();
    page.save_card = form.save_card.is_some();
    let offered = parse_option(&form.option)
        .filter(|_| page.options.iter().any(|option| option.value() == form.option.trim().to_ascii_uppercase()));
    let Some((asset, currency)) = offered else {
        page.errors.push("Choose what to buy.".into());
        return html(
            StatusCode::UNPROCESSABLE_ENTITY,
            pay::top_ups(&state.branding_for(session.mode).await, &session, &viewer, &page),
        );
    };
    let minimum = page
        .options
        .iter()
        .find(|option| option.value() == form.option.trim().to_ascii_uppercase())
        .and_then(|option| option.minimum.map(|minimum| (minimum, option.currency.clone())));
    let amount = match parse_payment(&form.amount, &currency)
        .and_then(|amount| check_minimum(&viewer, amount, minimum.as_ref()))
    {
        Ok(amount) => amount,
        Err(message) => {
            page.errors.push(message);
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                pay::top_ups(&state.branding_for(session.mode).await, &session, &viewer, &page),
            );
        }
    };
    let public = public_url(&state, &headers);
    let back = format!("{public}/portal?checkout=done");
    let new = NewTopUp {
        customer_id: session.customer_id.clone(),
        amount,
        currency,
        account_name: "default".into(),
        asset: Some(asset),
        exchange_rate: None,
        credit_expires_at: None,
        return_url: back.clone(),
        failure_url: back,
        description: None,
        metadata: Metadata::new(),
        origin: "portal".into(),
        save_payment_method: page.save_card,
        subscription_id: None,
    };
    match start(&state, session.mode, new, public).await {
        Ok(top_up) => match top_up.redirect_url {
            Some(url) => Redirect::to(&url).into_response(),
            None => failure(&state, ApiError::Internal(format!("top-up {} has no payment page", top_up.id))),
        },
        Err(ApiError::Invalid(fields)) => {
            page.errors.extend(fields.into_iter().map(|field| field.message));
            html(
                StatusCode::UNPROCESSABLE_ENTITY,
                pay::top_ups(&state.branding_for(session.mode).await, &session, &viewer, &page),
            )
        }
        Err(ApiError::Unavailable(message)) => {
            page.errors.push(format!("Payments are unavailable right now: {message}"));
            html(
                StatusCode::SERVICE_UNAVAILABLE,
                pay::top_ups(&state.branding_for(session.mode).await, &session, &viewer, &page),
            )
        }
        Err(error) => failure(&state, error),
    }
}

#[derive(Debug, Deserialize)]
pub struct QuoteQuery {
    pub option: Option<String>,
    pub amount: Option<String>,
}

/// The live quote for the top-up form: what `amount` of the option's currency buys now.
async fn quote(
    State(state): State<AppState>,
    Session(session): Session,
    viewer: locale::Viewer,
    Query(query): Query<QuoteQuery>,
) -> Response {
    let refuse = |message: String| {
        let mut response =
            (StatusCode::UNPROCESSABLE_ENTITY, Json(serde_json::json!({ "error": message }))).into_response();
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    };
    let Some((asset, currency)) = query.option.as_deref().and_then(parse_option) else {
        return refuse("Choose what to buy.".into());
    };
    let amount = match parse_payment(query.amount.as_deref().unwrap_or_default(), &currency) {
        Ok(amount) => amount,
        Err(message) => return refuse(message),
    };
    let mode = session.mode;
    let now = state.now();
    let result = state
        .read(move |conn| {
            let quote = asset_ops::quote(conn, mode, &asset, &currency, amount, now)?;
            let known = asset_ops::find(conn, mode, &asset)?;
            let minimum = match &known {
                Some(KnownAsset::Custom(custom)) => crate::routes::assets::parse_top_up(custom.top_up.as_deref())
                    .and_then(|settings| settings.get(currency.as_str()).and_then(|setting| setting.minimum_amount))
                    .map(|minimum| {
                        let minor_units = currency.currency_minor_units().unwrap_or(2);
                        (minimum.0, AssetLook::of(&KnownAsset::Currency { code: currency.to_string(), minor_units }))
                    }),
                _ => None,
            };
            Ok((quote, known, minimum))
        })
        .await;
    match result {
        Ok((_, Some(_), Some(minimum))) if check_minimum(&viewer, amount, Some(&minimum)).is_err() => {
            refuse(check_minimum(&viewer, amount, Some(&minimum)).err().unwrap_or_default())
        }
        Ok((quote, Some(known), _)) => {
            let look = AssetLook::of(&known);
            let mut response = Json(serde_json::json!({
                "asset": look.code,
                "asset_amount": look.number(quote.destination_amount),
                "display": viewer.amount(&look, quote.destination_amount),
                "currency": quote.source,
                "amount": amount.to_string(),
            }))
            .into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Ok((_, None, _)) => refuse("That asset no longer exists.".into()),
        Err(ApiError::Invalid(fields)) => {
            refuse(fields.into_iter().map(|field| field.message).collect::<Vec<_>>().join("; "))
        }
        Err(ApiError::NotFound(message)) => refuse(message),
        Err(error) => error.into_response(),
    }
}

/// The auto top-up form of one account.
#[derive(Debug, Clone)]
pub struct AutoAccount {
    pub account: Account,
    pub look: AssetLook,
    pub setting: Option<AutoTopUp>,
    /// Currencies that can buy this account's asset now.
    pub currencies: Vec<String>,
    /// What the customer typed, when the form came back with errors.
    pub typed: Option<AutoForm>,
    pub errors: Vec<String>,
}

pub struct AutoPage {
    pub accounts: Vec<AutoAccount>,
    pub methods: Vec<PaymentMethod>,
    /// The account whose settings were just saved.
    pub saved: Option<String>,
}

async fn load_auto_page(state: &AppState, session: &PortalSession) -> Result<AutoPage, ApiError> {
    let (loaded, now) = (session.clone(), state.now());
    state
        .read(move |conn| {
            let (mode, customer_id) = (loaded.mode, loaded.customer_id.as_str());
            let accounts = wallet_repo::list_for_customer(conn, customer_id)?;
            let options = top_up_options(conn, mode, &accounts, now)?;
            let settings = auto_repo::for_customer(conn, mode, customer_id)?;
            let methods = topup_repo::payment_methods(conn, customer_id)?;
            let looks =
                looks(conn, mode, accounts.iter().map(|account| account.key.asset.clone()).collect::<Vec<_>>())?;
            let accounts = accounts
                .into_iter()
                .map(|account| AutoAccount {
                    look: look_of(&looks, &account.key.asset),
                    setting: settings.iter().find(|setting| setting.key == account.key).cloned(),
                    currencies: options
                        .iter()
                        .filter(|option| option.asset.code == account.key.asset)
                        .map(|option| option.currency.code.clone())
                        .collect(),
                    account,
                    typed: None,
                    errors: Vec::new(),
                })
                .collect();
            Ok(AutoPage { accounts, methods, saved: None })
        })
        .await
}

#[derive(Debug, Deserialize)]
pub struct AutoQuery {
    pub saved: Option<String>,
}

async fn auto_top_up(
    State(state): State<AppState>,
    Session(session): Session,
    viewer: locale::Viewer,
    Query(query): Query<AutoQuery>,
) -> Response {
    match load_auto_page(&state, &session).await {
        Ok(mut page) => {
            page.saved =
                query.saved.filter(|saved| page.accounts.iter().any(|entry| &account_id(&entry.account.key) == saved));
            html(StatusCode::OK, pages::auto_top_up(&state.branding_for(session.mode).await, &session, &viewer, &page))
        }
        Err(error) => failure(&state, error),
    }
}

pub fn account_id(key: &AccountKey) -> String {
    format!("{}:{}", key.name, key.asset)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AutoForm {
    pub csrf: String,
    pub account: String,
    pub enabled: Option<String>,
    pub threshold: String,
    pub amount: String,
    pub currency: String,
    pub payment_method_id: String,
}

/// Parses the auto top-up form into settings; what cannot be parsed is reported by field.
fn parse_auto_form(form: &AutoForm, key: AccountKey) -> Result<Settings, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut error = |field: &str, message: &str| {
        errors.push(FieldError { field: field.to_owned(), message: message.to_owned() });
    };
    let threshold = parse_decimal(&form.threshold);
    if threshold.is_none() {
        error("threshold", "Enter the balance to top up at, such as 50.");
    }
    let amount = parse_decimal(&form.amount);
    if amount.is_none() {
        error("amount", "Enter the amount to pay each time, such as 10.");
    }
    let currency = AssetCode::parse(&form.currency).ok();
    if currency.is_none() {
        error("currency", "Choose a currency.");
    }
    let payment_method_id = Some(form.payment_method_id.trim().to_owned()).filter(|id| !id.is_empty());
    match (threshold, amount, currency) {
        (Some(threshold), Some(amount), Some(currency)) if errors.is_empty() => {
            Ok(Settings { key, enabled: form.enabled.is_some(), threshold, amount, currency, payment_method_id })
        }
        _ => Err(errors),
    }
}

/// Saves one account's auto top-up settings.
async fn save_auto_top_up(
    State(state): State<AppState>,
    Session(session): Session,
    viewer: locale::Viewer,
    Form(form): Form<AutoForm>,
) -> Response {
    if !csrf_ok(&session, &form.csrf) {
        return forbidden(&state);
    }
    let mut page = match load_auto_page(&state, &session).await {
        Ok(page) => page,
        Err(error) => return failure(&state, error),
    };
    // Only this customer's accounts can be named: the key is built from the session.
    let Some(index) = page.accounts.iter().position(|entry| account_id(&entry.account.key) == form.account) else {
        return failure(&state, ApiError::NotFound(format!("account {} not found in your wallet", form.account)));
    };
    let key = page.accounts[index].account.key.clone();
    let result = match parse_auto_form(&form, key) {
        Ok(settings) => {
            let (mode, now) = (session.mode, state.now());
            state.write(move |conn| auto_ops::configure(conn, mode, &settings, now)).await.map_err(
                |error| match error {
                    ApiError::Invalid(fields) => Ok(fields),
                    other => Err(other),
                },
            )
        }
        Err(fields) => Err(Ok(fields)),
    };
    match result {
        Ok(_) => Redirect::to(&format!("/portal/auto-top-up?saved={}", url_escape(&form.account))).into_response(),
        Err(Ok(fields)) => {
            let entry = &mut page.accounts[index];
            entry.errors = fields.into_iter().map(|field| pages::field_message(&field)).collect();
            entry.typed = Some(form);
            html(
                StatusCode::UNPROCESSABLE_ENTITY,
                pages::auto_top_up(&state.branding_for(session.mode).await, &session, &viewer, &page),
            )
        }
        Err(Err(error)) => failure(&state, error),
    }
}

/// Percent-encodes a query value (account ids hold `:` and word characters only, but a form
/// can send anything).
fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The one script: asks for a live quote as the customer types. The form works without it.
const SCRIPT: &str = r#"(function () {
  var form = document.getElementById('top-up-form');
  if (!form || !window.fetch) return;
  var output = document.getElementById('quote'), option = form.elements['option'], amount = form.elements['amount'];
  var timer, latest = 0;
  function update() {
    clearTimeout(timer);
    timer = setTimeout(function () {
      var asked = ++latest;
      if (!amount.value.trim()) { output.textContent = ''; return; }
      var url = '/portal/quote?option=' + encodeURIComponent(option.value) + '&amount=' + encodeURIComponent(amount.value.trim());
      fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'application/json' } })
        .then(function (response) { return response.json(); })
        .then(function (body) {
          if (asked !== latest) return;
          output.textContent = body.display ? 'You get ' + body.display : (body.error || '');
        })
        .catch(function () { output.textContent = ''; });
    }, 150);
  }
  option.addEventListener('change', update);
  amount.addEventListener('input', update);
  update();
})();
"#;

async fn script() -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_tokens() {
        let token = "a".repeat(64);
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&format!("a=1; tally_portal={token} ; b=2")).unwrap());
        assert_eq!(session_token(&CookieJar::from_headers(&headers)), Some(token));
        headers.insert(header::COOKIE, HeaderValue::from_static("tally_portal=abc"));
        assert_eq!(session_token(&CookieJar::from_headers(&headers)), None, "not a token");
        assert!(!is_token("abc"));
        assert!(is_token(&"a".repeat(64)));
        assert!(!is_token(&"g".repeat(64)));
        assert_eq!(url_escape("default:MIN&x=<"), "default:MIN%26x%3D%3C");
    }

    /// The usage list's pages end where its count stops being exact (10,000 fees): a customer
    /// with more is shown the newest 10,000, and the activity page for the rest.
    #[test]
    fn usage_pages_end_where_counting_stops() {
        let limit = tally_store::repo::COUNT_LIMIT;
        let paged = |page, total| Paged::<()> { items: Vec::new(), page, total, last_page: MAX_USAGE_PAGE };
        assert_eq!(MAX_USAGE_PAGE * PAGE_SIZE, limit);
        assert!(paged(1, 21).has_next());
        assert!(!paged(1, 20).has_next());
        assert!(paged(MAX_USAGE_PAGE - 1, limit + 1).has_next());
        assert!(!paged(MAX_USAGE_PAGE, limit + 1).has_next(), "no link past the counted fees");
        let top_ups = Paged::<()> { items: Vec::new(), page: MAX_USAGE_PAGE, total: limit * 2, last_page: MAX_PAGE };
        assert!(top_ups.has_next(), "other histories keep their own bound");
    }
}
