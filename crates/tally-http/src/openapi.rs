//! The OpenAPI 3.1 document, generated from the handlers' annotations and the request and
//! response types. `docs/openapi.json` is the checked-in copy; a test fails when they differ.

use crate::error::{ProblemKind, PROBLEM_KINDS, VALIDATION};
use crate::routes::{
    accounts, assets, customers, events, holds, portal, products, reports, subscriptions, topups, vendors, wallet,
    webhooks,
};
use axum::http::header;
use axum::response::IntoResponse;
use std::collections::BTreeMap;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(title = "Tally API", description = "Tally: a self-hostable, Credyt-compatible real-time usage billing engine."),
    paths(
        accounts::get_self, accounts::create, accounts::list, accounts::get,
        assets::create, assets::list, assets::get, assets::add_rate, assets::quote, assets::set_top_up,
        customers::create, customers::list, customers::get, customers::update,
        wallet::get_wallet, wallet::get_account, wallet::create_adjustment, wallet::create_charge,
        wallet::get_transaction, wallet::list_transactions, wallet::list_grants,
        holds::create, holds::list, holds::get, holds::capture, holds::release,
        subscriptions::create, subscriptions::update, subscriptions::update_product,
        products::create, products::list, products::get, products::create_version, products::get_version,
        products::update_version, products::archive_version, products::delete, products::subscribers, products::simulate_usage,
        events::send_usage, events::list, events::get, events::rebill,
        topups::initiate, topups::get, topups::test_succeed, topups::test_fail,
        portal::create_portal_session,
        vendors::create, vendors::list, vendors::get, vendors::vendor_stats, vendors::customer_stats, vendors::list_customer_stats,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::delete, webhooks::test_one,
        webhooks::test_all, webhooks::list_events, webhooks::test_one_connected, webhooks::test_all_connected,
        reports::revenue_report,
    ),
    components(schemas(ProblemDetails, ValidationProblem)),
    modifiers(&Security, &Problems),
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

/// The body of every error answer, `application/problem+json` (RFC 9457). Documentation
/// only: `error.rs` writes the bodies, from the same [`PROBLEM_KINDS`].
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
struct ProblemDetails {
    /// The kind of problem: the errors page at its anchor (`/docs/errors#not-found`), a
    /// reference relative to the server.
    #[serde(rename = "type")]
    problem_type: String,
    /// A short summary of the kind of problem; the same for every occurrence.
    title: String,
    /// The HTTP status of the answer.
    status: u16,
    /// What went wrong this time, for a person to act on.
    detail: Option<String>,
}

/// A 422's body: a problem whose `errors` maps each field's JSON path (`rates[0].source`), or
/// query parameter, to what is wrong with its value.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
struct ValidationProblem {
    /// `/docs/errors#validation`.
    #[serde(rename = "type")]
    problem_type: String,
    title: String,
    status: u16,
    detail: Option<String>,
    errors: BTreeMap<String, Vec<String>>,
}

/// Statuses every operation can answer, whatever it does: a malformed request (a query string
/// that is not UTF-8, a compressed body), a missing or bad key, an `X-CREDYT-ACCOUNT` naming
/// no connected account, a body over the limit.
const EVERY_OPERATION: [&ProblemKind; 4] =
    [&crate::error::MALFORMED, &crate::error::UNAUTHORIZED, &crate::error::NOT_FOUND, &crate::error::TOO_LARGE];

/// Gives every error answer of every operation its problem+json body: the shared responses
/// in `components.responses` (one per kind of problem), referenced by each operation, and
/// the statuses every operation can answer.
struct Problems;

impl Problems {
    fn response_name(kind: &ProblemKind) -> String {
        kind.slug.split('-').map(|word| word[..1].to_uppercase() + &word[1..]).collect()
    }

    fn content(status: &str) -> Content {
        let schema = if status == VALIDATION.status.as_str() { "ValidationProblem" } else { "ProblemDetails" };
        Content::new(Some(Ref::from_schema_name(schema)))
    }
}

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for kind in PROBLEM_KINDS {
            let response = Response::builder()
                .description(format!("{} ({}). {}", kind.title, kind.type_uri(), kind.when))
                .content("application/problem+json", Self::content(kind.status.as_str()))
                .build();
            components.responses.insert(Self::response_name(kind), RefOr::T(response));
        }
        let shared: BTreeMap<&str, &ProblemKind> =
            PROBLEM_KINDS.iter().map(|kind| (kind.status.as_str(), *kind)).collect();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                // A JSON body can have the wrong shape, and any query value can be too long or
                // not the type it names (`extract.rs`): either is a 422.
                let takes_input = operation.request_body.is_some()
                    || operation
                        .parameters
                        .iter()
                        .flatten()
                        .any(|parameter| parameter.parameter_in == ParameterIn::Query);
                let responses = &mut operation.responses.responses;
                let validated = takes_input.then_some(&VALIDATION);
                for kind in EVERY_OPERATION.into_iter().chain(validated) {
                    responses.entry(kind.status.as_str().to_owned()).or_insert_with(|| RefOr::T(Response::new("")));
                }
                for (status, response) in responses.iter_mut() {
                    let RefOr::T(inline) = response else { continue };
                    if !(status.starts_with('4') || status.starts_with('5')) {
                        continue;
                    }
                    match shared.get(status.as_str()) {
                        // The shared response, unless the operation says more about it.
                        Some(kind) if inline.description.is_empty() && inline.content.is_empty() => {
                            *response = RefOr::Ref(Ref::from_response_name(Self::response_name(kind)));
                        }
                        _ => {
                            inline.content.insert("application/problem+json".to_owned(), Self::content(status));
                        }
                    }
                }
            }
        }
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
