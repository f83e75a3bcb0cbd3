use crate::check::Checker;
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody, QueryParams};
use crate::limits::{MAX_STARTING_RATES, MAX_TEXT_CHARS};
use crate::types::{Amount, Timestamp};
use crate::{page_type, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tally_core::asset::{self, AssetCode};
use tally_core::rate::{self as rates, ExchangeRate};
use tally_store::ops::assets::{self as asset_ops, KnownAsset, NewAsset, NewRate};
use tally_store::repo::assets as asset_repo;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
pub struct StartingExchangeRate {
    pub source: String,
    pub rate: Option<Amount>,
    pub inverse_rate: Option<Amount>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateAssetRequest {
    pub code: String,
    pub name: String,
    pub precision: Option<i64>,
    pub label: Option<String>,
    pub symbol: Option<String>,
    pub rates: Option<Vec<StartingExchangeRate>>,
    /// Tally extension: what the billing portal's top-up form offers, per currency paid.
    pub top_up: Option<BTreeMap<String, TopUpSettings>>,
}

/// Tally extension (not in Credyt's asset model): the billing portal's top-up form for an
/// asset bought with one currency. Amounts are in that currency, what the customer pays.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
pub struct TopUpSettings {
    /// Amounts offered as one-click choices, at most 6.
    #[serde(default)]
    pub preset_amounts: Vec<Amount>,
    /// The least one top-up from the portal may pay; smaller ones are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_amount: Option<Amount>,
}

/// At most this many preset amounts per currency.
pub const MAX_PRESET_AMOUNTS: usize = 6;

/// Checks top-up settings: ISO currencies, positive amounts payable in their currency.
pub fn check_top_up(checker: &mut Checker, settings: &BTreeMap<String, TopUpSettings>) {
    if settings.len() > MAX_STARTING_RATES {
        checker.error("top_up", format!("at most {MAX_STARTING_RATES} currencies"));
    }
    for (currency, entry) in settings {
        let field = format!("top_up.{currency}");
        let Some(places) = AssetCode::parse(currency).ok().and_then(|code| code.currency_minor_units()) else {
            checker.error(field, "must be keyed by an ISO 4217 currency");
            continue;
        };
        if entry.preset_amounts.len() > MAX_PRESET_AMOUNTS {
            checker.error(format!("{field}.preset_amounts"), format!("at most {MAX_PRESET_AMOUNTS} amounts"));
        }
        let amounts = entry
            .preset_amounts
            .iter()
            .enumerate()
            .map(|(index, amount)| (format!("{field}.preset_amounts[{index}]"), *amount));
        for (name, amount) in
            amounts.chain(entry.minimum_amount.map(|amount| (format!("{field}.minimum_amount"), amount)))
        {
            let value = checker.positive(&name, amount);
            if value.scale() > places {
                checker.error(name, format!("{currency} amounts take at most {places} decimal places"));
            }
        }
    }
}

/// The stored form of top-up settings (`None` when there are none).
pub fn top_up_text(settings: Option<&BTreeMap<String, TopUpSettings>>) -> Option<String> {
    settings.filter(|settings| !settings.is_empty()).and_then(|settings| serde_json::to_string(settings).ok())
}

/// Top-up settings as stored; text that no longer parses reads as none.
pub fn parse_top_up(text: Option<&str>) -> Option<BTreeMap<String, TopUpSettings>> {
    text.and_then(|text| serde_json::from_str(text).ok())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateAssetResponse {
    pub code: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AssetExchangeRate {
    pub valid_from: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<Timestamp>,
    pub rate: Amount,
    pub inverse_rate: Amount,
}

/// The schedule of one source currency, newest first. It is given twice, as `schedule` (the
/// name in the SDK's model) and as `rates` (the name in Credyt's documentation), so that
/// clients written against either read it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssetRates {
    pub source: String,
    pub schedule: Vec<AssetExchangeRate>,
    pub rates: Vec<AssetExchangeRate>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GetAssetResponse {
    pub code: String,
    pub name: String,
    pub precision: u32,
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// `custom` or `fiat`.
    pub kind: String,
    pub rates: Vec<AssetRates>,
    pub created_at: Timestamp,
    /// Tally extension: the billing portal's top-up settings, when the asset has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_up: Option<BTreeMap<String, TopUpSettings>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListAssetsItem {
    pub code: String,
    pub name: String,
    pub precision: u32,
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
}

page_type!(PageListAssetsItem, ListAssetsItem);

#[derive(Debug, Deserialize, ToSchema)]
pub struct AddAssetRateRequest {
    pub source: String,
    pub valid_from: Option<Timestamp>,
    pub valid_to: Option<Timestamp>,
    pub rate: Option<Amount>,
    pub inverse_rate: Option<Amount>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct QuoteAssetRequest {
    pub source: String,
    pub amount: Amount,
    pub exchange_at: Option<Timestamp>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuoteAssetResponse {
    pub source: String,
    pub source_amount: Amount,
    pub destination: String,
    pub destination_amount: Amount,
    pub rate: Amount,
    pub inverse_rate: Amount,
    pub exchange_at: Timestamp,
}

/// Exactly one of `rate` and `inverse_rate`, positive and within the amount limits.
fn exchange_rate(
    checker: &mut Checker,
    prefix: &str,
    rate: Option<Amount>,
    inverse: Option<Amount>,
) -> Option<ExchangeRate> {
    match (rate, inverse) {
        (Some(rate), None) => Some(ExchangeRate::Rate(checker.positive(&format!("{prefix}rate"), rate))),
        (None, Some(inverse)) => {
            Some(ExchangeRate::Inverse(checker.positive(&format!("{prefix}inverse_rate"), inverse)))
        }
        (Some(_), Some(_)) => {
            checker.error(format!("{prefix}rate"), "give either rate or inverse_rate, not both");
            None
        }
        (None, None) => {
            checker.error(format!("{prefix}rate"), "give one of rate or inverse_rate");
            None
        }
    }
}

fn parse_new_asset(request: &CreateAssetRequest) -> Result<NewAsset, ApiError> {
    let mut checker = Checker::default();
    let code = checker.asset_code("code", &request.code);
    let name = checker.text("name", &request.name, MAX_TEXT_CHARS);
    let precision = match request.precision {
        None => asset::DEFAULT_PRECISION,
        Some(precision) if (0..=asset::MAX_PRECISION as i64).contains(&precision) => precision as u32,
        Some(_) => {
            checker.error("precision", format!("must be from 0 to {}", asset::MAX_PRECISION));
            0
        }
    };
    let label = checker.opt_text("label", request.label.as_deref(), 32);
    if let Some(symbol) = &request.symbol {
        if !asset::is_single_symbol(symbol) {
            checker.error("symbol", "must be a single character or emoji");
        }
    }
    let starting = request.rates.as_deref().unwrap_or_default();
    if starting.len() > MAX_STARTING_RATES {
        checker.error("rates", format!("at most {MAX_STARTING_RATES} starting rates"));
    }
    let mut parsed_rates = Vec::new();
    for (index, rate) in starting.iter().enumerate() {
        let source = checker.asset_code(&format!("rates[{index}].source"), &rate.source);
        if source.as_ref().is_some_and(|source| !source.is_currency()) {
            checker
                .error(format!("rates[{index}].source"), "must be an ISO 4217 currency: assets are bought with fiat");
        }
        let exchange = exchange_rate(&mut checker, &format!("rates[{index}]."), rate.rate, rate.inverse_rate);
        if let (Some(source), Some(exchange)) = (source, exchange) {
            parsed_rates.push((source, exchange));
        }
    }
    if let Some(settings) = &request.top_up {
        check_top_up(&mut checker, settings);
    }
    checker.finish()?;
    Ok(NewAsset {
        code: code.expect("checked"),
        name,
        precision,
        label,
        symbol: request.symbol.clone(),
        rates: parsed_rates,
        top_up: top_up_text(request.top_up.as_ref()),
    })
}

#[utoipa::path(post, path = "/assets", operation_id = "create_asset", tag = "Assets", request_body = CreateAssetRequest,
    responses((status = 201, body = CreateAssetResponse), (status = 409), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    JsonBody(request): JsonBody<CreateAssetRequest>,
) -> Result<(StatusCode, Json<CreateAssetResponse>), ApiError> {
    let new = parse_new_asset(&request)?;
    let now = state.now();
    let asset = state.write(move |conn| asset_ops::create(conn, auth.mode, &new, now)).await?;
    Ok((StatusCode::CREATED, Json(CreateAssetResponse { code: asset.code, created_at: asset.created_at.into() })))
}

#[utoipa::path(get, path = "/assets", operation_id = "list_assets", tag = "Assets", params(("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("next" = Option<String>, Query), ("prev" = Option<String>, Query), ("include_total" = Option<bool>, Query)),
    responses((status = 200, body = PageListAssetsItem)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    mut query: QueryParams,
) -> Result<Json<PageListAssetsItem>, ApiError> {
    let window = query.window(&asset_repo::LIST_KEYS);
    query.finish()?;
    let read_window = window.clone();
    let listing = state.read(move |conn| Ok(asset_repo::list(conn, auth.mode, &read_window)?)).await?;
    let page = PageListAssetsItem::listed(listing, &window, &asset_repo::LIST_KEYS, |asset| ListAssetsItem {
        code: asset.code,
        name: asset.name,
        precision: asset.precision,
        label: asset.label,
        symbol: asset.symbol,
    });
    Ok(Json(page))
}

fn path_code(code: &str) -> Result<AssetCode, ApiError> {
    AssetCode::parse(code).map_err(|_| ApiError::NotFound(format!("asset {code} not found")))
}

#[utoipa::path(get, path = "/assets/{assetCode}", operation_id = "get_asset", tag = "Assets", params(("assetCode" = String, Path)),
    responses((status = 200, body = GetAssetResponse), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(code): Path<String>,
) -> Result<Json<GetAssetResponse>, ApiError> {
    let code = path_code(&code)?;
    let (asset, rate_rows) = state
        .read(move |conn| {
            let found = asset_ops::find(conn, auth.mode, &code)?
                .ok_or_else(|| tally_store::ops::OpError::NotFound(format!("asset {code} not found")))?;
            let rows = match &found {
                KnownAsset::Custom(asset) => asset_repo::rates(conn, auth.mode, &asset.code)?,
                KnownAsset::Currency { .. } => Vec::new(),
            };
            Ok((found, rows))
        })
        .await?;
    Ok(Json(asset_response(asset, rate_rows)))
}

fn asset_response(asset: KnownAsset, rate_rows: Vec<asset_repo::RateRow>) -> GetAssetResponse {
    let mut sources: Vec<String> = rate_rows.iter().map(|row| row.source.clone()).collect();
    sources.sort();
    sources.dedup();
    let rates = sources
        .into_iter()
        .map(|source| {
            let mut schedule: Vec<_> =
                rate_rows.iter().filter(|row| row.source == source).map(|row| row.scheduled.clone()).collect();
            // Newest first: by start, then by the order written.
            schedule.sort_by_key(|entry| std::cmp::Reverse((entry.valid_from, entry.sequence)));
            let entries: Vec<AssetExchangeRate> = schedule
                .iter()
                .map(|entry| AssetExchangeRate {
                    valid_from: entry.valid_from.into(),
                    valid_to: rates::effective_valid_to(&schedule, entry).map(Timestamp),
                    rate: entry.rate.rate().into(),
                    inverse_rate: entry.rate.inverse_rate().into(),
                })
                .collect();
            AssetRates { source, schedule: entries.clone(), rates: entries }
        })
        .collect();
    match asset {
        KnownAsset::Custom(asset) => GetAssetResponse {
            code: asset.code,
            name: asset.name,
            precision: asset.precision,
            label: asset.label,
            symbol: asset.symbol,
            kind: "custom".to_owned(),
            rates,
            created_at: asset.created_at.into(),
            top_up: parse_top_up(asset.top_up.as_deref()),
        },
        KnownAsset::Currency { code, minor_units } => GetAssetResponse {
            name: code.clone(),
            label: code.clone(),
            code,
            precision: minor_units,
            symbol: None,
            kind: "fiat".to_owned(),
            rates,
            created_at: Timestamp(chrono::DateTime::UNIX_EPOCH),
            top_up: None,
        },
    }
}

#[utoipa::path(put, path = "/assets/{assetCode}/top-up", operation_id = "set_asset_top_up", tag = "Assets", params(("assetCode" = String, Path)),
    request_body = BTreeMap<String, TopUpSettings>, responses((status = 200, body = GetAssetResponse), (status = 404), (status = 422)))]
/// Tally extension: replaces what the billing portal's top-up form offers for a custom asset,
/// keyed by the currency paid. `{}` removes every setting.
pub async fn set_top_up(
    State(state): State<AppState>,
    auth: Auth,
    Path(code): Path<String>,
    JsonBody(request): JsonBody<BTreeMap<String, TopUpSettings>>,
) -> Result<Json<GetAssetResponse>, ApiError> {
    let code = path_code(&code)?;
    let mut checker = Checker::default();
    check_top_up(&mut checker, &request);
    checker.finish()?;
    let text = top_up_text(Some(&request));
    let (asset, rows) = state
        .write(move |conn| {
            let asset = asset_ops::set_top_up(conn, auth.mode, &code, text.as_deref())?;
            let rows = asset_repo::rates(conn, auth.mode, &asset.code)?;
            Ok((asset, rows))
        })
        .await?;
    Ok(Json(asset_response(KnownAsset::Custom(asset), rows)))
}

#[utoipa::path(post, path = "/assets/{assetCode}/rates", operation_id = "add_asset_rate", tag = "Assets", params(("assetCode" = String, Path)),
    request_body = AddAssetRateRequest, responses((status = 204), (status = 404), (status = 422)))]
pub async fn add_rate(
    State(state): State<AppState>,
    auth: Auth,
    Path(code): Path<String>,
    JsonBody(request): JsonBody<AddAssetRateRequest>,
) -> Result<StatusCode, ApiError> {
    let code = path_code(&code)?;
    let mut checker = Checker::default();
    let source = checker.asset_code("source", &request.source);
    let rate = exchange_rate(&mut checker, "", request.rate, request.inverse_rate);
    checker.finish()?;
    let new = NewRate {
        source: source.expect("checked"),
        valid_from: request.valid_from.map(|at| at.0),
        valid_to: request.valid_to.map(|at| at.0),
        rate: rate.expect("checked"),
    };
    let now = state.now();
    state.write(move |conn| asset_ops::add_rate(conn, auth.mode, &code, &new, now)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/assets/{assetCode}/quote", operation_id = "quote_asset", tag = "Assets", params(("assetCode" = String, Path)),
    request_body = QuoteAssetRequest, responses((status = 200, body = QuoteAssetResponse), (status = 404), (status = 422)))]
pub async fn quote(
    State(state): State<AppState>,
    auth: Auth,
    Path(code): Path<String>,
    JsonBody(request): JsonBody<QuoteAssetRequest>,
) -> Result<Json<QuoteAssetResponse>, ApiError> {
    let code = path_code(&code)?;
    let mut checker = Checker::default();
    let source = checker.asset_code("source", &request.source);
    let amount = checker.positive("amount", request.amount);
    checker.finish()?;
    let source = source.expect("checked");
    let at = request.exchange_at.map_or_else(|| state.now(), |at| at.0);
    let quote = state.read(move |conn| asset_ops::quote(conn, auth.mode, &code, &source, amount, at)).await?;
    Ok(Json(QuoteAssetResponse {
        source: quote.source,
        source_amount: quote.source_amount.into(),
        destination: quote.destination,
        destination_amount: quote.destination_amount.into(),
        rate: quote.rate.rate().into(),
        inverse_rate: quote.rate.inverse_rate().into(),
        exchange_at: at.into(),
    }))
}
