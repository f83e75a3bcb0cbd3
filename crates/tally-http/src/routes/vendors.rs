use crate::check::Checker;
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody, QueryParams};
use crate::limits::MAX_TEXT_CHARS;
use crate::types::{Amount, Timestamp};
use crate::{page_type, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tally_store::ops::stats::{self, Profitability, Scope};
use tally_store::ops::{customers as customer_ops, vendors as vendor_ops};
use tally_store::repo::customers::{self as customer_repo, CustomerFilter};
use tally_store::repo::vendors::{self as vendor_repo, Vendor};
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateVendorRequest {
    pub name: String,
    pub external_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateVendorResponse {
    pub id: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VendorSummary {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub name: String,
    pub created_at: Timestamp,
}

page_type!(PageVendorSummary, VendorSummary);

#[derive(Debug, Serialize, ToSchema)]
pub struct VendorCategoryStats {
    pub category: String,
    pub cost: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VendorStats {
    pub total_costs: Amount,
    pub categories: Vec<VendorCategoryStats>,
    pub currency: String,
    pub period_from: String,
    pub period_to: String,
}

/// Profitability in one fiat currency; see `docs/api.md` for the rules.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfitabilityStats {
    pub gross_revenue: Amount,
    pub total_costs: Amount,
    pub net_revenue: Amount,
    /// Percent, rounded to 2 places.
    pub margin: Amount,
    pub currency: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerStatsItem {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub name: String,
    pub stats: ProfitabilityStats,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerStatsPage {
    pub summary: ProfitabilityStats,
    pub period_from: String,
    pub period_to: String,
    pub items: Vec<CustomerStatsItem>,
    pub total_count: i64,
    pub limit: i64,
    pub offset: i64,
}

pub fn stats_view(stats: Profitability) -> ProfitabilityStats {
    ProfitabilityStats {
        gross_revenue: stats.gross_revenue.into(),
        total_costs: stats.total_costs.into(),
        net_revenue: stats.net_revenue.into(),
        margin: stats.margin.into(),
        currency: stats.currency,
    }
}

fn vendor_view(vendor: Vendor) -> VendorSummary {
    VendorSummary {
        id: vendor.id,
        external_id: vendor.external_id,
        name: vendor.name,
        created_at: vendor.created_at.into(),
    }
}

/// A period from `period_from` and `period_to` (dates, both included, or date-times, `to`
/// excluded); by default the current calendar month up to now.
fn period(query: &mut QueryParams, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let month_start = Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now);
    let is_date =
        |text: &Option<String>| text.as_deref().is_some_and(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok());
    let to_is_date = is_date(&query_value(query, "period_to"));
    let from = query.time("period_from").unwrap_or(month_start);
    let to = query
        .time("period_to")
        .map(|to| if to_is_date { to + Duration::days(1) } else { to })
        .unwrap_or(now + Duration::seconds(1));
    if to <= from {
        query.errors.push(tally_store::ops::FieldError {
            field: "period_to".into(),
            message: "must be after period_from".into(),
        });
    }
    (from, to)
}

fn query_value(query: &mut QueryParams, name: &str) -> Option<String> {
    let errors_before = query.errors.len();
    let value = query.string(name);
    query.errors.truncate(errors_before);
    value
}

fn report_currency(query: &mut QueryParams) -> String {
    let currency = query.string("currency").unwrap_or_else(|| "USD".into()).to_ascii_uppercase();
    if !tally_core::currency::is_currency(&currency) {
        query.errors.push(tally_store::ops::FieldError {
            field: "currency".into(),
            message: "must be an ISO 4217 currency".into(),
        });
    }
    currency
}

fn day(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

#[utoipa::path(post, path = "/vendors", operation_id = "create_vendor", tag = "Vendors", request_body = CreateVendorRequest,
    responses((status = 201, body = CreateVendorResponse), (status = 409), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    JsonBody(request): JsonBody<CreateVendorRequest>,
) -> Result<(StatusCode, Json<CreateVendorResponse>), ApiError> {
    let mut checker = Checker::default();
    let name = checker.text("name", &request.name, MAX_TEXT_CHARS);
    let external_id = checker.opt_text("external_id", request.external_id.as_deref(), MAX_TEXT_CHARS);
    checker.finish()?;
    let now = state.now();
    let vendor =
        state.write(move |conn| vendor_ops::create(conn, auth.mode, &name, external_id.as_deref(), now)).await?;
    Ok((StatusCode::CREATED, Json(CreateVendorResponse { id: vendor.id, created_at: vendor.created_at.into() })))
}

#[utoipa::path(get, path = "/vendors", operation_id = "list_vendors", tag = "Vendors",
    params(("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("next" = Option<String>, Query), ("prev" = Option<String>, Query), ("include_total" = Option<bool>, Query), ("external_id" = Option<String>, Query)),
    responses((status = 200, body = PageVendorSummary)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    mut query: QueryParams,
) -> Result<Json<PageVendorSummary>, ApiError> {
    let window = query.window(&vendor_repo::LIST_KEYS);
    let external_id = query.string("external_id");
    query.finish()?;
    let read_window = window.clone();
    let listing =
        state.read(move |conn| Ok(vendor_repo::list(conn, auth.mode, external_id.as_deref(), &read_window)?)).await?;
    Ok(Json(PageVendorSummary::listed(listing, &window, &vendor_repo::LIST_KEYS, vendor_view)))
}

#[utoipa::path(get, path = "/vendors/{vendorId}", operation_id = "get_vendor", tag = "Vendors", params(("vendorId" = String, Path)),
    responses((status = 200, body = VendorSummary), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<VendorSummary>, ApiError> {
    let vendor = state.read(move |conn| vendor_ops::require(conn, auth.mode, &id)).await?;
    Ok(Json(vendor_view(vendor)))
}

#[utoipa::path(get, path = "/vendors/{vendorId}/stats", operation_id = "get_vendor_stats", tag = "Vendors",
    params(("vendorId" = String, Path), ("period_from" = Option<String>, Query), ("period_to" = Option<String>, Query),
           ("category" = Option<String>, Query), ("currency" = Option<String>, Query)),
    responses((status = 200, body = VendorStats), (status = 404)))]
pub async fn vendor_stats(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    mut query: QueryParams,
) -> Result<Json<VendorStats>, ApiError> {
    let (from, to) = period(&mut query, state.now());
    let category = query.string("category");
    let currency = report_currency(&mut query);
    query.finish()?;
    let report_in = currency.clone();
    let (total, categories) = state
        .read(move |conn| {
            vendor_ops::require(conn, auth.mode, &id)?;
            stats::vendor_costs(conn, &id, from, to, category.as_deref(), &report_in)
        })
        .await?;
    Ok(Json(VendorStats {
        total_costs: total.into(),
        categories: categories
            .into_iter()
            .map(|(category, cost)| VendorCategoryStats { category, cost: cost.into() })
            .collect(),
        currency,
        period_from: day(from),
        period_to: day(to - Duration::microseconds(1)),
    }))
}

#[utoipa::path(get, path = "/customers/{customerId}/stats", operation_id = "get_customer_stats", tag = "Customers",
    params(("customerId" = String, Path), ("period_from" = Option<String>, Query), ("period_to" = Option<String>, Query), ("currency" = Option<String>, Query)),
    responses((status = 200, body = ProfitabilityStats), (status = 404)))]
pub async fn customer_stats(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    mut query: QueryParams,
) -> Result<Json<ProfitabilityStats>, ApiError> {
    let from = query.time("period_from");
    let to = query.time("period_to");
    let currency = report_currency(&mut query);
    query.finish()?;
    let result = state
        .read(move |conn| {
            customer_ops::require(conn, auth.mode, &id)?;
            stats::profitability(conn, auth.mode, &Scope { customer_id: Some(id), event_id: None, from, to }, &currency)
        })
        .await?;
    Ok(Json(stats_view(result)))
}

#[utoipa::path(get, path = "/customers/stats", operation_id = "list_customer_stats", tag = "Customers",
    params(("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("period_from" = Option<String>, Query),
           ("period_to" = Option<String>, Query), ("currency" = Option<String>, Query)),
    responses((status = 200, body = CustomerStatsPage)))]
pub async fn list_customer_stats(
    State(state): State<AppState>,
    auth: Auth,
    mut query: QueryParams,
) -> Result<Json<CustomerStatsPage>, ApiError> {
    let page = query.page();
    let (from, to) = period(&mut query, state.now());
    let currency = report_currency(&mut query);
    query.finish()?;
    let (summary, items, total) = state
        .read(move |conn| {
            let all = Scope { customer_id: None, event_id: None, from: Some(from), to: Some(to) };
            let summary = stats::profitability(conn, auth.mode, &all, &currency)?;
            let listing = customer_repo::list(conn, auth.mode, &CustomerFilter::default(), &page.into())?;
            let (customers, total) = (listing.items, listing.total);
            let mut items = Vec::with_capacity(customers.len());
            for customer in customers {
                let scope = Scope { customer_id: Some(customer.id.clone()), ..all.clone() };
                let customer_stats = stats::profitability(conn, auth.mode, &scope, &currency)?;
                items.push(CustomerStatsItem {
                    id: customer.id,
                    external_id: customer.external_id,
                    name: customer.name,
                    stats: stats_view(customer_stats),
                });
            }
            Ok((summary, items, total))
        })
        .await?;
    Ok(Json(CustomerStatsPage {
        summary: stats_view(summary),
        period_from: day(from),
        period_to: day(to - Duration::microseconds(1)),
        items,
        total_count: total,
        limit: page.limit,
        offset: page.offset,
    }))
}
