//! Finance reports over the ledger: `GET /reports/revenue` (deferred revenue, recognition,
//! breakage and refunds per asset, currency and period; rules in `tally_core::revenue` and
//! docs/api.md).

use crate::error::ApiError;
use crate::extract::{Auth, QueryParams};
use crate::types::{Amount, Timestamp};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use chrono::{Duration, NaiveDate};
use serde::Serialize;
use tally_core::revenue::{Granularity, Line, Period};
use tally_store::ops::revenue::{self, RevenueQuery};
use tally_store::ops::FieldError;
use utoipa::ToSchema;

/// The revenue report: revenue lines in fiat, and credit that is never revenue, in units.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevenueReport {
    pub period_from: Timestamp,
    /// Excluded.
    pub period_to: Timestamp,
    /// `day` or `month` (UTC).
    pub group_by: String,
    /// Paid credit, valued at its cost basis in the currency paid, per asset and currency.
    pub revenue: Vec<RevenueLine>,
    /// Promotional and bundled credit, and paid credit of a custom asset bought without a cost
    /// basis: never revenue, in asset units.
    pub non_revenue_credit: Vec<CreditLine>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevenueLine {
    pub asset: String,
    pub currency: String,
    pub periods: Vec<RevenuePeriod>,
}

/// One period of a revenue line, in the line's currency, exact:
/// `opening_deferred + additions − recognised − breakage − refunds = closing_deferred`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevenuePeriod {
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    pub opening_deferred: Amount,
    /// Paid credit issued (top-ups), at its cost basis.
    pub additions: Amount,
    /// Credit used by fees (plan fees ratably over the period they pay for).
    pub recognised: Amount,
    /// Credit that expired unused.
    pub breakage: Amount,
    /// Credit given back (external refunds and debit adjustments).
    pub refunds: Amount,
    pub closing_deferred: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreditLine {
    pub asset: String,
    /// `promotion`, `bundled` or `paid_unpriced`.
    pub kind: String,
    pub periods: Vec<CreditPeriod>,
}

/// One period of a non-revenue credit line, in asset units:
/// `opening + issued − used − expired − removed = closing`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditPeriod {
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    pub opening: Amount,
    pub issued: Amount,
    pub used: Amount,
    pub expired: Amount,
    pub removed: Amount,
    pub closing: Amount,
}

#[utoipa::path(get, path = "/reports/revenue", operation_id = "get_revenue_report", tag = "Reports",
    params(("period_from" = String, Query, description = "Start, included: an RFC 3339 date-time or a date (midnight UTC)."),
           ("period_to" = String, Query, description = "End: a date-time (excluded) or a date (included)."),
           ("group_by" = Option<String>, Query, description = "`day` or `month` (default), UTC."),
           ("currency" = Option<String>, Query, description = "Only revenue lines in this ISO 4217 currency."),
           ("asset" = Option<String>, Query, description = "Only lines of this asset.")),
    responses((status = 200, body = RevenueReport), (status = 422)))]
pub async fn revenue_report(
    State(state): State<AppState>,
    auth: Auth,
    mut query: QueryParams,
) -> Result<Json<RevenueReport>, ApiError> {
    let request = revenue_query(&mut query);
    query.finish()?;
    let Some(request) = request else {
        return Err(ApiError::invalid("period_from", "is required"));
    };
    revenue::check(&request)?;
    let group_by = request.granularity.as_str().to_owned();
    let (from, to) = (request.period_from, request.period_to);
    let lines = state.read(move |conn| revenue::report(conn, auth.mode, &request)).await?;
    Ok(Json(report_view(from, to, group_by, lines)))
}

/// Parses the report's parameters, recording every problem in `query`.
fn revenue_query(query: &mut QueryParams) -> Option<RevenueQuery> {
    let to_is_date = query.string("period_to").is_some_and(|text| NaiveDate::parse_from_str(&text, "%Y-%m-%d").is_ok());
    let from = query.time("period_from");
    let to = query.time("period_to").map(|to| if to_is_date { to + Duration::days(1) } else { to });
    let granularity = match query.string("group_by") {
        None => Some(Granularity::Month),
        Some(text) => {
            let parsed = Granularity::parse(&text);
            if parsed.is_none() {
                query.errors.push(FieldError { field: "group_by".into(), message: "must be day or month".into() });
            }
            parsed
        }
    };
    let currency = query.string("currency").map(|currency| currency.to_ascii_uppercase());
    if currency.as_deref().is_some_and(|currency| !tally_core::currency::is_currency(currency)) {
        query.errors.push(FieldError { field: "currency".into(), message: "must be an ISO 4217 currency".into() });
    }
    let asset = query.string("asset").map(|asset| asset.to_ascii_uppercase());
    for (name, value) in [("period_from", from), ("period_to", to)] {
        if value.is_none() && !query.errors.iter().any(|error| error.field == name) {
            query.errors.push(FieldError { field: name.into(), message: "is required".into() });
        }
    }
    Some(RevenueQuery { period_from: from?, period_to: to?, granularity: granularity?, asset, currency })
}

fn report_view(
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    group_by: String,
    lines: Vec<(Line, Vec<Period>)>,
) -> RevenueReport {
    let mut report = RevenueReport {
        period_from: from.into(),
        period_to: to.into(),
        group_by,
        revenue: Vec::new(),
        non_revenue_credit: Vec::new(),
    };
    for (line, periods) in lines {
        match line {
            Line::Revenue { asset, currency } => report.revenue.push(RevenueLine {
                asset,
                currency,
                periods: periods
                    .into_iter()
                    .map(|period| RevenuePeriod {
                        period_start: period.start.into(),
                        period_end: period.end.into(),
                        opening_deferred: period.figures.opening.into(),
                        additions: period.figures.additions.into(),
                        recognised: period.figures.recognised.into(),
                        breakage: period.figures.breakage.into(),
                        refunds: period.figures.refunds.into(),
                        closing_deferred: period.figures.closing.into(),
                    })
                    .collect(),
            }),
            Line::Credit { asset, kind } => report.non_revenue_credit.push(CreditLine {
                asset,
                kind: kind.to_owned(),
                periods: periods
                    .into_iter()
                    .map(|period| CreditPeriod {
                        period_start: period.start.into(),
                        period_end: period.end.into(),
                        opening: period.figures.opening.into(),
                        issued: period.figures.additions.into(),
                        used: period.figures.recognised.into(),
                        expired: period.figures.breakage.into(),
                        removed: period.figures.refunds.into(),
                        closing: period.figures.closing.into(),
                    })
                    .collect(),
            }),
        }
    }
    report
}
