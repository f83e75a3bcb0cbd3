use crate::catalog::{parse_definition, Definition, EntitlementIn, PriceIn};
use crate::check::Checker;
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody, QueryParams};
use crate::limits::MAX_TEXT_CHARS;
use crate::routes::events::{parse_events, UsageEventIn};
use crate::types::{Amount, Timestamp};
use crate::{page_type, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tally_core::asset::AssetCode;
use tally_core::Mode;
use tally_store::ops::assets as asset_ops;
use tally_store::ops::products::{self as product_ops, Catalog, VersionRef};
use tally_store::ops::{events as event_ops, FieldError, OpError};
use tally_store::repo::products::{self as product_repo, Product, Version};
use tally_store::repo::subscriptions as subscription_repo;
use tally_store::Conn;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateProductRequest {
    pub name: String,
    pub code: String,
    pub prices: Vec<PriceIn>,
    pub entitlements: Option<Vec<EntitlementIn>>,
    pub publish: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateProductVersionRequest {
    pub prices: Vec<PriceIn>,
    pub entitlements: Option<Vec<EntitlementIn>>,
    pub publish: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateProductResponse {
    pub id: String,
    pub code: String,
    pub version: i64,
    /// `draft`, `published` or `archived`.
    pub status: String,
    pub is_default: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GetProductDataResponse {
    pub id: String,
    pub code: String,
    pub name: String,
}

page_type!(PageGetProductDataResponse, GetProductDataResponse);

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductVersionReference {
    pub version: i64,
    pub created_at: Timestamp,
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DefaultVersion {
    pub version: i64,
    pub entitlements: Vec<EntitlementIn>,
    pub prices: Vec<PriceIn>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GetProductResponse {
    pub id: String,
    pub code: String,
    pub name: String,
    /// Null while no version is published.
    pub default_version: Option<DefaultVersion>,
    /// Newest first.
    pub versions: Vec<ProductVersionReference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<Timestamp>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GetProductVersionResponse {
    pub id: String,
    pub version: i64,
    pub code: String,
    pub name: String,
    pub prices: Vec<PriceIn>,
    pub entitlements: Vec<EntitlementIn>,
    pub status: String,
    pub is_default: bool,
    pub created_at: Timestamp,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateProductVersionRequest {
    pub publish: Option<bool>,
    pub make_default: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductSubscriberResponse {
    pub customer_id: String,
    pub customer_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub subscription_id: String,
    pub subscription_status: String,
    pub started_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renews_at: Option<Timestamp>,
    /// The product's id.
    pub product_rate_plan_id: String,
    pub version: i64,
}

page_type!(PageProductSubscriberResponse, ProductSubscriberResponse);

#[derive(Debug, Deserialize, ToSchema)]
pub struct SimulateUsageRequest {
    pub events: Vec<UsageEventIn>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CalculatedFee {
    pub price_id: String,
    pub price_name: String,
    pub currency: String,
    pub usage_id: String,
    pub event_type: String,
    pub dimensions: BTreeMap<String, String>,
    pub usage_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_volume: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_rate: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package_size: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub amount: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SimulateUsageResponse {
    pub fees: Vec<CalculatedFee>,
    /// One per event that would be stored unbilled: its id, its type, the reason's code (as
    /// `GET /events/{id}` gives it in `unbilled_reason.code`) and why.
    pub warnings: Vec<String>,
}

/// Checks a definition, including that every asset it names exists in this mode, and returns
/// the JSON to store.
fn checked_definition(
    conn: &mut dyn Conn,
    mode: Mode,
    prices: Vec<PriceIn>,
    entitlements: Vec<EntitlementIn>,
) -> Result<String, OpError> {
    let mut checker = Checker::default();
    let parsed = parse_definition(Definition { prices, entitlements }, &mut checker);
    let mut errors = match checker.finish() {
        Ok(()) => Vec::new(),
        Err(ApiError::Invalid(errors)) => errors,
        Err(_) => Vec::new(),
    };
    let Some(parsed) = parsed.filter(|_| errors.is_empty()) else {
        return Err(OpError::Invalid(errors));
    };
    for (field, asset) in &parsed.assets {
        let code = AssetCode::parse(asset).map_err(|error| OpError::invalid(field.clone(), error.to_string()))?;
        if asset_ops::find(conn, mode, &code)?.is_none() {
            errors.push(FieldError {
                field: field.clone(),
                message: format!("{asset} is neither a custom asset nor an ISO 4217 currency"),
            });
        }
    }
    if !errors.is_empty() {
        return Err(OpError::Invalid(errors));
    }
    serde_json::to_string(&parsed.definition)
        .map_err(|error| OpError::Store(tally_store::StoreError::Corrupt(error.to_string())))
}

fn check_code(checker: &mut Checker, code: &str) -> String {
    let valid = !code.is_empty()
        && code.len() <= 64
        && code.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        checker.error("code", "must be 1 to 64 letters, digits, '_', '-' or '.'");
    }
    code.to_owned()
}

fn created(product: &Product, version: &Version) -> CreateProductResponse {
    CreateProductResponse {
        id: product.id.clone(),
        code: product.code.clone(),
        version: version.version,
        status: version.status.as_str().to_owned(),
        is_default: product.default_version == Some(version.version),
    }
}

#[utoipa::path(post, path = "/products", operation_id = "create_product", tag = "Products", request_body = CreateProductRequest,
    responses((status = 201, body = CreateProductResponse), (status = 409), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    JsonBody(request): JsonBody<CreateProductRequest>,
) -> Result<(StatusCode, Json<CreateProductResponse>), ApiError> {
    let mut checker = Checker::default();
    let code = check_code(&mut checker, &request.code);
    let name = checker.text("name", &request.name, MAX_TEXT_CHARS);
    checker.finish()?;
    let publish = request.publish.unwrap_or(false);
    let now = state.now();
    let (product, version) = state
        .write(move |conn| {
            let definition =
                checked_definition(conn, auth.mode, request.prices, request.entitlements.unwrap_or_default())?;
            product_ops::create(conn, auth.mode, &code, &name, &definition, publish, now)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created(&product, &version))))
}

#[utoipa::path(post, path = "/products/{productId}", operation_id = "create_product_version", tag = "Products", params(("productId" = String, Path)),
    request_body = CreateProductVersionRequest,
    responses((status = 201, body = CreateProductResponse), (status = 404), (status = 409), (status = 422)))]
pub async fn create_version(
    State(state): State<AppState>,
    auth: Auth,
    Path(product_id): Path<String>,
    JsonBody(request): JsonBody<CreateProductVersionRequest>,
) -> Result<(StatusCode, Json<CreateProductResponse>), ApiError> {
    let publish = request.publish.unwrap_or(false);
    let now = state.now();
    let (product, version) = state
        .write(move |conn| {
            product_repo::get(conn, auth.mode, &product_id)?.ok_or_else(|| product_ops::not_found(&product_id))?;
            let definition =
                checked_definition(conn, auth.mode, request.prices, request.entitlements.unwrap_or_default())?;
            product_ops::create_version(conn, auth.mode, &product_id, &definition, publish, now)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created(&product, &version))))
}

#[utoipa::path(get, path = "/products", operation_id = "list_products", tag = "Products",
    params(("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("next" = Option<String>, Query), ("prev" = Option<String>, Query), ("include_total" = Option<bool>, Query), ("code" = Option<String>, Query)),
    responses((status = 200, body = PageGetProductDataResponse)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    mut query: QueryParams,
) -> Result<Json<PageGetProductDataResponse>, ApiError> {
    let window = query.window(&product_repo::LIST_KEYS);
    let code = query.string("code");
    query.finish()?;
    let read_window = window.clone();
    let listing =
        state.read(move |conn| Ok(product_repo::list(conn, auth.mode, code.as_deref(), &read_window)?)).await?;
    Ok(Json(PageGetProductDataResponse::listed(listing, &window, &product_repo::LIST_KEYS, |product| {
        GetProductDataResponse { id: product.id, code: product.code, name: product.name }
    })))
}

fn stored_definition(version: &Version) -> Result<Definition, ApiError> {
    serde_json::from_str(&version.definition)
        .map_err(|error| ApiError::Internal(format!("stored product definition: {error}")))
}

#[utoipa::path(get, path = "/products/{productId}", operation_id = "get_product", tag = "Products", params(("productId" = String, Path)),
    responses((status = 200, body = GetProductResponse), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(product_id): Path<String>,
) -> Result<Json<GetProductResponse>, ApiError> {
    let (product, versions) = state
        .read(move |conn| {
            let product =
                product_repo::get(conn, auth.mode, &product_id)?.ok_or_else(|| product_ops::not_found(&product_id))?;
            let versions = product_repo::versions(conn, &product.id)?;
            Ok((product, versions))
        })
        .await?;
    let default_version = match versions.iter().find(|version| Some(version.version) == product.default_version) {
        Some(version) => {
            let definition = stored_definition(version)?;
            Some(DefaultVersion {
                version: version.version,
                entitlements: definition.entitlements,
                prices: definition.prices,
            })
        }
        None => None,
    };
    Ok(Json(GetProductResponse {
        id: product.id,
        code: product.code,
        name: product.name,
        default_version,
        versions: versions
            .iter()
            .map(|version| ProductVersionReference {
                version: version.version,
                created_at: version.created_at.into(),
                status: version.status.as_str().to_owned(),
            })
            .collect(),
        archived_at: product.archived_at.map(Timestamp),
    }))
}

fn version_ref(text: &str) -> Result<VersionRef, ApiError> {
    if text.eq_ignore_ascii_case("default") {
        return Ok(VersionRef::Default);
    }
    match text.parse::<i64>() {
        Ok(number) if number >= 1 => Ok(VersionRef::Number(number)),
        _ => Err(ApiError::NotFound(format!("version {text} not found: versions are numbers from 1, or default"))),
    }
}

#[utoipa::path(get, path = "/products/{productId}/{version}", operation_id = "get_product_version", tag = "Products",
    params(("productId" = String, Path), ("version" = String, Path, description = "A version number or `default`.")),
    responses((status = 200, body = GetProductVersionResponse), (status = 404)))]
pub async fn get_version(
    State(state): State<AppState>,
    auth: Auth,
    Path((product_id, version)): Path<(String, String)>,
) -> Result<Json<GetProductVersionResponse>, ApiError> {
    let reference = version_ref(&version)?;
    let (product, version) =
        state.read(move |conn| product_ops::resolve(conn, auth.mode, &product_id, reference)).await?;
    let definition = stored_definition(&version)?;
    Ok(Json(GetProductVersionResponse {
        id: product.id,
        version: version.version,
        code: product.code,
        name: product.name,
        prices: definition.prices,
        entitlements: definition.entitlements,
        status: version.status.as_str().to_owned(),
        is_default: product.default_version == Some(version.version),
        created_at: version.created_at.into(),
    }))
}

#[utoipa::path(patch, path = "/products/{productId}/{version}", operation_id = "update_product_version", tag = "Products",
    params(("productId" = String, Path), ("version" = String, Path)), request_body = UpdateProductVersionRequest,
    responses((status = 204), (status = 404), (status = 409)))]
pub async fn update_version(
    State(state): State<AppState>,
    auth: Auth,
    Path((product_id, version)): Path<(String, String)>,
    JsonBody(request): JsonBody<UpdateProductVersionRequest>,
) -> Result<StatusCode, ApiError> {
    let reference = version_ref(&version)?;
    state
        .write(move |conn| {
            product_ops::update_version(conn, auth.mode, &product_id, reference, request.publish, request.make_default)
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/products/{productId}/{version}", operation_id = "archive_product_version", tag = "Products",
    params(("productId" = String, Path), ("version" = String, Path)), responses((status = 204), (status = 404), (status = 409)))]
pub async fn archive_version(
    State(state): State<AppState>,
    auth: Auth,
    Path((product_id, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let reference = version_ref(&version)?;
    state.write(move |conn| product_ops::archive_version(conn, auth.mode, &product_id, reference)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/products/{productId}", operation_id = "delete_product", tag = "Products", params(("productId" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(product_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let now = state.now();
    state.write(move |conn| product_ops::delete(conn, auth.mode, &product_id, now)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/products/{productId}/subscribers", operation_id = "get_product_subscribers", tag = "Products",
    params(("productId" = String, Path), ("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("next" = Option<String>, Query), ("prev" = Option<String>, Query), ("include_total" = Option<bool>, Query)),
    responses((status = 200, body = PageProductSubscriberResponse), (status = 404)))]
pub async fn subscribers(
    State(state): State<AppState>,
    auth: Auth,
    Path(product_id): Path<String>,
    mut query: QueryParams,
) -> Result<Json<PageProductSubscriberResponse>, ApiError> {
    let window = query.window(&subscription_repo::SUBSCRIBER_KEYS);
    query.finish()?;
    let product_id_for_response = product_id.clone();
    let read_window = window.clone();
    let listing = state
        .read(move |conn| {
            product_repo::get(conn, auth.mode, &product_id)?.ok_or_else(|| product_ops::not_found(&product_id))?;
            Ok(subscription_repo::subscribers(conn, &product_id, &read_window)?)
        })
        .await?;
    let product_id_of_page = product_id_for_response;
    let page =
        PageProductSubscriberResponse::listed(listing, &window, &subscription_repo::SUBSCRIBER_KEYS, |subscriber| {
            ProductSubscriberResponse {
                customer_id: subscriber.customer_id,
                customer_name: subscriber.customer_name,
                external_id: subscriber.external_id,
                email: subscriber.email,
                subscription_id: subscriber.subscription_id,
                subscription_status: subscriber.status,
                started_at: subscriber.started_at.unwrap_or(subscriber.starts_at).into(),
                renews_at: subscriber.renews_at.map(Timestamp),
                product_rate_plan_id: product_id_of_page.clone(),
                version: subscriber.version,
            }
        });
    Ok(Json(page))
}

#[utoipa::path(post, path = "/products/{productId}/{version}/simulate-usage", operation_id = "simulate_usage", tag = "Products",
    params(("productId" = String, Path), ("version" = String, Path)), request_body = SimulateUsageRequest,
    responses((status = 200, body = SimulateUsageResponse), (status = 404), (status = 422)))]
pub async fn simulate_usage(
    State(state): State<AppState>,
    auth: Auth,
    Path((product_id, version)): Path<(String, String)>,
    JsonBody(request): JsonBody<SimulateUsageRequest>,
) -> Result<Json<SimulateUsageResponse>, ApiError> {
    let reference = version_ref(&version)?;
    // Simulations may use any instant: they change nothing, so there is no grace window.
    let events = parse_events(&request.events, None)?;
    let catalog = state.catalog.clone();
    let (fees, warnings) = state
        .read(move |conn| {
            let (_, version) = product_ops::resolve(conn, auth.mode, &product_id, reference)?;
            let parsed = catalog.version(conn, auth.mode, &version.product_id, version.version)?;
            event_ops::simulate(&parsed, &events).map(|(fees, warnings)| {
                let fees = fees
                    .into_iter()
                    .map(|(event_id, rated)| {
                        let event_type = events
                            .iter()
                            .find(|event| event.id == event_id)
                            .map(|event| event.event_type.clone())
                            .unwrap_or_default();
                        (event_id, event_type, rated)
                    })
                    .collect::<Vec<_>>();
                (fees, warnings)
            })
        })
        .await?;
    let fees = fees
        .into_iter()
        .map(|(usage_id, event_type, rated)| CalculatedFee {
            price_id: rated.fee.price_id.clone(),
            price_name: rated.price_name.clone(),
            currency: rated.fee.asset.clone(),
            usage_id,
            event_type,
            dimensions: rated.fee.dimensions.clone(),
            usage_type: rated.fee.usage_type.as_str().to_owned(),
            volume_field: rated.volume_field.clone(),
            input_volume: rated.fee.volume.map(Amount),
            unit_price: rated.fee.unit_price.map(Amount),
            volume_rate: rated.fee.volume_rate.map(Amount),
            package_size: rated.fee.package_size.map(Amount),
            description: None,
            amount: rated.fee.amount.into(),
        })
        .collect();
    Ok(Json(SimulateUsageResponse { fees, warnings }))
}
