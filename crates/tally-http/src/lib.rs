//! Tally's HTTP edge: the Credyt-compatible JSON API. Handlers parse requests into domain
//! values, run one store operation on a blocking thread, and turn the result into JSON.
//! Nothing here knows SQL or pricing rules.

pub mod auto_top_up;
pub mod catalog;
pub mod check;
pub mod clock;
pub mod delivery;
pub mod docs;
pub mod error;
pub mod export;
pub mod extract;
pub mod html;
pub mod ingest_rounds;
pub mod limits;
pub mod openapi;
pub mod payments;
pub mod portal;
pub mod routes;
pub mod telemetry;
pub mod types;
pub mod worker;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use axum::Router;
use error::ApiError;
use std::sync::Arc;
use std::time::Duration;
use tally_store::ops::OpError;
use tally_store::{Conn, Store};

pub use delivery::WebhookConfig;

/// Settings the HTTP layer needs.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The platform's name, shown by `GET /accounts/self`.
    pub platform_name: String,
    /// How often the background worker settles due grant starts and expiries.
    pub settle_interval: Duration,
    /// Tally's public base URL for links it hands out (checkout, billing portal). When unset,
    /// links use the scheme and host a request came in on.
    pub public_url: Option<String>,
    /// How long a top-up may wait for its payment before it expires.
    pub top_up_expiry: Duration,
    /// How webhooks are delivered and retried.
    pub webhooks: WebhookConfig,
    /// The logo shown on customer-facing pages (billing portal, checkout): an http(s) URL.
    pub portal_logo_url: Option<String>,
    /// The accent colour of customer-facing pages, `#rgb` or `#rrggbb`.
    pub portal_accent_color: Option<String>,
    /// Origins allowed to frame the billing portal and checkout (`frame-ancestors`); empty:
    /// none may.
    pub portal_frame_ancestors: Vec<String>,
    /// The platform's site, linked from the portal's "link not valid" page.
    pub portal_home_url: Option<String>,
    /// How long holds last by default and at most (`hold_expiry_seconds`, `hold_max_expiry_seconds`).
    pub holds: tally_store::ops::holds::HoldLimits,
    /// Where "now" comes from: the system, moved forward only by tests.
    pub clock: clock::Clock,
    /// When set, `GET /metrics` requires `Authorization: Bearer` with this token.
    pub metrics_token: Option<String>,
    /// How many ingestion rounds of `POST /events` run at once (`ingest_rounds`); 0: the
    /// backend's default (`ingest_rounds::default_rounds_at_once`).
    pub ingest_rounds: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            platform_name: "Tally".to_owned(),
            settle_interval: Duration::from_secs(1),
            public_url: None,
            top_up_expiry: Duration::from_secs(24 * 60 * 60),
            webhooks: WebhookConfig::default(),
            portal_logo_url: None,
            portal_accent_color: None,
            portal_frame_ancestors: Vec::new(),
            portal_home_url: None,
            holds: tally_store::ops::holds::HoldLimits::default(),
            clock: clock::Clock::default(),
            metrics_token: None,
            ingest_rounds: 0,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub config: Arc<HttpConfig>,
    /// Parsed product versions, shared by every request and the worker.
    pub catalog: Arc<catalog::CatalogCache>,
    /// The payment provider of each mode.
    pub providers: payments::Providers,
    /// The platform's look on customer-facing pages.
    pub branding: html::Branding,
    /// API keys accepted lately, so that most requests skip the database to authenticate.
    pub auth_cache: Arc<extract::AuthCache>,
    /// Connected accounts' names, shown on their customers' pages. Names never change, so
    /// once read they stay.
    account_names: Arc<std::sync::Mutex<std::collections::HashMap<tally_core::Mode, String>>>,
    /// Which background tasks run, for `/ready` (set by [`serve`]).
    pub background: Arc<telemetry::Background>,
    /// `POST /events` requests, ingested in rounds.
    pub ingest_rounds: Arc<ingest_rounds::IngestRounds>,
}

impl AppState {
    pub fn new(store: Arc<Store>, config: HttpConfig) -> AppState {
        // The process's metrics recorder, installed once, before anything records.
        telemetry::prometheus();
        let defaults = html::Branding::default();
        let branding = html::Branding {
            name: config.platform_name.clone(),
            logo_url: config.portal_logo_url.clone().filter(|url| !url.is_empty()),
            accent_color: config
                .portal_accent_color
                .clone()
                .filter(|color| !color.is_empty())
                .unwrap_or(defaults.accent_color),
        };
        let catalog = Arc::new(catalog::CatalogCache::default());
        AppState {
            ingest_rounds: Arc::new(ingest_rounds::IngestRounds::new(
                store.clone(),
                catalog.clone(),
                config.ingest_rounds,
            )),
            store,
            config: Arc::new(config),
            catalog,
            providers: payments::Providers::default(),
            branding,
            auth_cache: Arc::new(extract::AuthCache::default()),
            account_names: Arc::default(),
            background: Arc::default(),
        }
    }

    /// Live mode pays through Stripe (without this it has no payment provider at all).
    pub fn with_stripe(mut self, stripe: payments::stripe::StripeProvider) -> AppState {
        self.providers = self.providers.with_stripe(Arc::new(stripe));
        self
    }

    /// The look of customer-facing pages in `mode`: the platform's, under the connected
    /// account's own name when the mode is a connected account's.
    pub async fn branding_for(&self, mode: tally_core::Mode) -> html::Branding {
        let Some(account_id) = mode.connected_account() else {
            return self.branding.clone();
        };
        let cached = self.account_names.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&mode).cloned();
        let name = match cached {
            Some(name) => Some(name),
            None => {
                let environment = mode.environment();
                let found = self
                    .read(move |conn| Ok(tally_store::repo::connected_accounts::get(conn, environment, account_id)?))
                    .await;
                let name = found.ok().flatten().map(|account| account.name);
                if let Some(name) = &name {
                    let mut names = self.account_names.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    names.insert(mode, name.clone());
                }
                name
            }
        };
        html::Branding { name: name.unwrap_or_else(|| self.branding.name.clone()), ..self.branding.clone() }
    }

    /// The current instant, from the server's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.config.clock.now()
    }

    /// Runs `work` in a read transaction on a blocking thread.
    pub async fn read<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut dyn Conn) -> Result<R, OpError> + Send + 'static,
    ) -> Result<R, ApiError> {
        let store = self.store.clone();
        blocking(move || store.read(work)).await
    }

    /// Runs `work` in a write transaction on a blocking thread.
    pub async fn write<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut dyn Conn) -> Result<R, OpError> + Send + 'static,
    ) -> Result<R, ApiError> {
        let store = self.store.clone();
        blocking(move || store.write(work)).await
    }

    /// Runs `work` in a write transaction that is always rolled back, and answers what it
    /// answered: what a change would do, with nothing of it kept (a dry run).
    pub async fn rehearse<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut dyn Conn) -> Result<R, OpError> + Send + 'static,
    ) -> Result<R, ApiError> {
        /// The outcome of the work, carried out of the transaction as its error so that the
        /// transaction rolls back.
        struct RolledBack<R>(Result<R, OpError>);
        impl<R> From<tally_store::StoreError> for RolledBack<R> {
            fn from(error: tally_store::StoreError) -> RolledBack<R> {
                RolledBack(Err(error.into()))
            }
        }
        let store = self.store.clone();
        blocking(move || match store.write(|conn| Err::<std::convert::Infallible, _>(RolledBack(work(conn)))) {
            Ok(never) => match never {},
            Err(RolledBack(outcome)) => outcome,
        })
        .await
    }
}

async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> Result<R, OpError> + Send + 'static,
) -> Result<R, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(error) => Err(ApiError::Internal(format!("a storage task failed: {error}"))),
    }
}

pub fn router(state: AppState) -> Router {
    use routes::{accounts, assets, customers, events, products, subscriptions, topups, vendors, wallet, webhooks};
    Router::new()
        .route("/openapi.json", get(openapi::serve))
        .route("/accounts", post(accounts::create).get(accounts::list))
        .route("/accounts/self", get(accounts::get_self))
        .route("/accounts/{account_id}", get(accounts::get))
        .route("/assets", post(assets::create).get(assets::list))
        .route("/assets/{code}", get(assets::get))
        .route("/assets/{code}/rates", post(assets::add_rate))
        .route("/assets/{code}/top-up", axum::routing::put(assets::set_top_up))
        .route("/assets/{code}/quote", post(assets::quote))
        .route("/customers", post(customers::create).get(customers::list))
        .route("/customers/stats", get(vendors::list_customer_stats))
        .route("/customers/{customer_id}", get(customers::get).patch(customers::update))
        .route("/customers/{customer_id}/stats", get(vendors::customer_stats))
        .route("/customers/{customer_id}/events.csv", get(export::customer_events_csv))
        .route("/vendors", post(vendors::create).get(vendors::list))
        .route("/vendors/{vendor_id}", get(vendors::get))
        .route("/vendors/{vendor_id}/stats", get(vendors::vendor_stats))
        .route("/customers/{customer_id}/subscriptions", post(subscriptions::create))
        .route("/customers/{customer_id}/subscriptions/{subscription_id}", patch(subscriptions::update))
        .route(
            "/customers/{customer_id}/subscriptions/{subscription_id}/products/{product_id}",
            patch(subscriptions::update_product),
        )
        .route("/products", post(products::create).get(products::list))
        .route("/products/{product_id}", get(products::get).post(products::create_version).delete(products::delete))
        .route("/products/{product_id}/subscribers", get(products::subscribers))
        .route(
            "/products/{product_id}/{version}",
            get(products::get_version).patch(products::update_version).delete(products::archive_version),
        )
        .route("/products/{product_id}/{version}/simulate-usage", post(products::simulate_usage))
        .route("/top-ups", post(topups::initiate))
        .route("/top-ups/{top_up_id}", get(topups::get))
        .route("/test-helpers/top-ups/{top_up_id}/succeed", post(topups::test_succeed))
        .route("/test-helpers/top-ups/{top_up_id}/fail", post(topups::test_fail))
        .route("/checkout/complete", get(topups::checkout_complete))
        .route("/billing-portal/sessions", post(routes::portal::create_portal_session))
        .merge(portal::router(&state))
        .route("/payments/stripe/webhook", post(routes::stripe_webhook::receive))
        .route("/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/webhooks/events", get(webhooks::list_events))
        .route("/webhooks/test/{topic}", post(webhooks::test_all))
        .route("/webhooks/{webhook_id}", get(webhooks::get).patch(webhooks::update).delete(webhooks::delete))
        .route("/webhooks/{webhook_id}/test/{topic}", post(webhooks::test_one))
        .route("/webhooks/{webhook_id}/test/{topic}/{account_id}", post(webhooks::test_one_connected))
        .route("/webhooks/test/{topic}/{account_id}", post(webhooks::test_all_connected))
        .route("/events", post(events::send_usage).get(events::list))
        .route("/events/rebill", post(events::rebill))
        .route("/events/{event_id}", get(events::get))
        .route("/reports/revenue", get(routes::reports::revenue_report))
        .route("/customers/{customer_id}/wallet", get(wallet::get_wallet))
        .route("/customers/{customer_id}/wallet/adjustments", post(wallet::create_adjustment))
        .route("/customers/{customer_id}/wallet/charges", post(wallet::create_charge))
        .route("/customers/{customer_id}/wallet/holds", post(routes::holds::create).get(routes::holds::list))
        .route("/customers/{customer_id}/wallet/holds/{hold_id}", get(routes::holds::get))
        .route("/customers/{customer_id}/wallet/holds/{hold_id}/capture", post(routes::holds::capture))
        .route("/customers/{customer_id}/wallet/holds/{hold_id}/release", post(routes::holds::release))
        .route("/customers/{customer_id}/wallet/transactions/{transaction_id}", get(wallet::get_transaction))
        .route("/customers/{customer_id}/wallet/{account_id}", get(wallet::get_account))
        .route("/customers/{customer_id}/wallet/{account_id}/grants", get(wallet::list_grants))
        .route("/customers/{customer_id}/wallet/{account_id}/transactions", get(wallet::list_transactions))
        .merge(docs::router())
        .fallback(|| async { ApiError::NotFound("no such endpoint; see /openapi.json".into()) })
        // A path that exists, asked with a method it does not take: 405 problem+json (with Allow).
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
        // On every route and the fallback: a body or query string no handler could read is a 400.
        .layer(axum::middleware::from_fn(extract::check_encodings))
        // Every API request is counted and logged by its route template (see telemetry.rs).
        .layer(axum::middleware::from_fn(telemetry::record_request))
        .layer(telemetry::request_trace())
        // Probes and scrapes come after those layers: neither logged nor counted.
        .route("/health", get(telemetry::health))
        .route("/ready", get(telemetry::ready))
        .route("/metrics", get(telemetry::scrape))
        // Again for the probes, added after the first call.
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn(telemetry::request_id))
        .with_state(state)
}

/// Serves the API on `listener` with the background worker until `shutdown` completes, then
/// finishes in-flight requests and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
    // Each task is marked running for `/ready` while it runs (`telemetry::spawn`).
    use telemetry::Task;
    let background = state.background.clone();
    let worker = worker::run(
        state.store.clone(),
        state.catalog.clone(),
        state.config.clock.clone(),
        state.config.settle_interval,
        worker_stopped.clone(),
    );
    let worker = telemetry::spawn(&background, Task::Worker, worker);
    // Webhook delivery runs beside the worker: its sends are network IO, not transactions.
    let deliveries = delivery::run(
        state.store.clone(),
        Arc::new(state.config.webhooks.clone()),
        state.config.clock.clone(),
        worker_stopped.clone(),
    );
    let deliveries = telemetry::spawn(&background, Task::WebhookDelivery, deliveries);
    // Auto top-up charges saved cards: network IO too, so it runs beside the worker as well.
    let auto_top_ups = auto_top_up::run(
        state.store.clone(),
        state.providers.clone(),
        state.config.clock.clone(),
        state.config.top_up_expiry,
        state.config.settle_interval,
        worker_stopped.clone(),
    );
    let auto_top_ups = telemetry::spawn(&background, Task::AutoTopUp, auto_top_ups);
    let upkeep = tokio::spawn(telemetry::upkeep(worker_stopped));
    let result = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await;
    let _ = stop_worker.send(true);
    let _ = worker.await;
    let _ = deliveries.await;
    let _ = auto_top_ups.await;
    let _ = upkeep.await;
    result
}
