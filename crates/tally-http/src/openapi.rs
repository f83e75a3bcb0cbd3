//! The OpenAPI 3.1 document, generated from the handlers' annotations and the request and
//! response types. `docs/openapi.json` is the checked-in copy; a test fails when they differ.

use crate::routes::{
    accounts, assets, customers, events, portal, products, subscriptions, topups, vendors, wallet, webhooks,
};
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Tally API", description = "Tally: a self-hostable, Credyt-compatible real-time usage billing engine."),
    paths(
        accounts::get_self, accounts::create, accounts::list, accounts::get,
        assets::create, assets::list, assets::get, assets::add_rate, assets::quote,
        customers::create, customers::list, customers::get, customers::update,
        wallet::get_wallet, wallet::get_account, wallet::create_adjustment, wallet::create_charge,
        wallet::get_transaction, wallet::list_transactions, wallet::list_grants,
        subscriptions::create, subscriptions::update, subscriptions::update_product,
        products::create, products::list, products::get, products::create_version, products::get_version,
        products::update_version, products::archive_version, products::delete, products::subscribers, products::simulate_usage,
        events::send_usage, events::list, events::get,
        topups::initiate, topups::get, topups::test_succeed, topups::test_fail,
        portal::create_portal_session,
        vendors::create, vendors::list, vendors::get, vendors::vendor_stats, vendors::customer_stats, vendors::list_customer_stats,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::delete, webhooks::test_one,
        webhooks::test_all, webhooks::list_events, webhooks::test_one_connected, webhooks::test_all_connected,
    ),
    modifiers(&Security),
    security(("api_key" = []), ("bearer" = [])),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-CREDYT-API-KEY"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON, exactly as checked in.
pub fn document() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}
