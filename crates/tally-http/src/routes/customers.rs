use crate::check::Checker;
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody, QueryParams};
use crate::limits::MAX_TEXT_CHARS;
use crate::routes::subscriptions::{
    parse_subscription, payments_due, start_payments, subscription_view, CreateCustomerSubscription,
    CustomerSubscription,
};
use crate::types::Timestamp;
use crate::{page_type, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use tally_store::ops::customers::{self as customer_ops, CustomerPatch, NewCustomer};
use tally_store::ops::subscriptions as subscription_ops;
use tally_store::ops::OpError;
use tally_store::repo::customers::{self as customer_repo, Customer, CustomerFilter};
use tally_store::repo::subscriptions as subscription_repo;
use tally_store::repo::Listing;
use utoipa::ToSchema;

/// Names a nested request's fields by their place in the outer request.
fn prefix_fields(error: OpError, prefix: &str) -> OpError {
    match error {
        OpError::Invalid(fields) => OpError::Invalid(
            fields
                .into_iter()
                .map(|field| tally_store::ops::FieldError {
                    field: format!("{prefix}{}", field.field),
                    message: field.message,
                })
                .collect(),
        ),
        other => other,
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateCustomerRequest {
    pub name: String,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// Subscriptions made with the customer, in the same transaction.
    pub subscriptions: Option<Vec<CreateCustomerSubscription>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateCustomerResponse {
    pub id: String,
    /// Check each subscription's status: some may need an action.
    pub subscriptions: Vec<CustomerSubscription>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerSummary {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub active_subscription_count: i64,
}

page_type!(PageCustomerSummary, CustomerSummary);

#[derive(Debug, Serialize, ToSchema)]
pub struct GetCustomerResponse {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub active_subscription_count: i64,
    pub created_at: Timestamp,
    pub metadata: BTreeMap<String, String>,
    pub subscriptions: Vec<CustomerSubscription>,
}

/// `null` clears an optional field; leaving the field out keeps it.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct UpdateCustomerRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub external_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Tells a field sent as `null` (`Some(None)`) from a field left out (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

fn summary((customer, active_subscription_count): (Customer, i64)) -> CustomerSummary {
    CustomerSummary {
        id: customer.id,
        external_id: customer.external_id,
        name: customer.name,
        email: customer.email,
        active_subscription_count,
    }
}

#[utoipa::path(post, path = "/customers", operation_id = "create_customer", tag = "Customers", request_body = CreateCustomerRequest,
    responses((status = 201, body = CreateCustomerResponse), (status = 409), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: axum::http::HeaderMap,
    JsonBody(request): JsonBody<CreateCustomerRequest>,
) -> Result<(StatusCode, Json<CreateCustomerResponse>), ApiError> {
    let mut checker = Checker::default();
    let new = NewCustomer {
        name: checker.text("name", &request.name, MAX_TEXT_CHARS),
        external_id: checker.opt_text("external_id", request.external_id.as_deref(), MAX_TEXT_CHARS),
        email: checker.email("email", request.email.as_deref()),
        metadata: checker.metadata("metadata", request.metadata.as_ref()),
    };
    checker.finish()?;
    let subscriptions = request
        .subscriptions
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, subscription)| parse_subscription(&format!("subscriptions[{index}]."), subscription))
        .collect::<Result<Vec<_>, _>>()?;
    let now = state.now();
    let catalog = state.catalog.clone();
    let requests = request.subscriptions.clone().unwrap_or_default();
    let (customer_id, created, due) = state
        .write(move |conn| {
            let customer = customer_ops::create(conn, auth.mode, &new, now)?;
            let mut created = Vec::new();
            let mut due = Vec::new();
            for (index, subscription) in subscriptions.iter().enumerate() {
                let prefix = format!("subscriptions[{index}].");
                let made = subscription_ops::create(conn, auth.mode, &customer.id, subscription, catalog.as_ref(), now)
                    .map_err(|error| prefix_fields(error, &prefix))?;
                due.push((index, payments_due(conn, auth.mode, &made, catalog.as_ref())?));
                created.push(made);
            }
            Ok((customer.id, created, due))
        })
        .await?;
    let public = crate::routes::topups::public_url(&state, &headers);
    for (index, payments) in due {
        start_payments(&state, auth.mode, &customer_id, payments, &requests[index], &public).await?;
    }
    let id = customer_id.clone();
    let views = state
        .read(move |conn| {
            created
                .iter()
                .map(|subscription| subscription_view(conn, auth.mode, subscription))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let response = CreateCustomerResponse { id, subscriptions: views };
    Ok((StatusCode::CREATED, Json(response)))
}

#[utoipa::path(get, path = "/customers", operation_id = "list_customers", tag = "Customers",
    params(("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("next" = Option<String>, Query), ("prev" = Option<String>, Query), ("include_total" = Option<bool>, Query), ("customer_id" = Option<String>, Query),
           ("external_id" = Option<String>, Query), ("email" = Option<String>, Query, description = "exact, in any case"), ("name" = Option<String>, Query, description = "a prefix of the name, in any case"),
           ("status" = Option<String>, Query, description = "active: with an active subscription; inactive: without one")),
    responses((status = 200, body = PageCustomerSummary), (status = 422)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    mut query: QueryParams,
) -> Result<Json<PageCustomerSummary>, ApiError> {
    let window = query.window(&customer_repo::LIST_KEYS);
    let filter = CustomerFilter {
        customer_id: query.string("customer_id"),
        external_id: query.string("external_id"),
        email: query.string("email"),
        name: query.string("name"),
        active: match query.string("status").map(|status| status.to_ascii_lowercase()).as_deref() {
            None => None,
            Some("active") => Some(true),
            Some("inactive") => Some(false),
            Some(_) => {
                query.errors.push(tally_store::ops::FieldError {
                    field: "status".into(),
                    message: "must be active or inactive".into(),
                });
                None
            }
        },
    };
    query.finish()?;
    let read_window = window.clone();
    let listing = state
        .read(move |conn| {
            let listing = customer_repo::list(conn, auth.mode, &filter, &read_window)?;
            let mut counted = Vec::with_capacity(listing.items.len());
            for customer in listing.items {
                let count = subscription_repo::active_count(conn, &customer.id)?;
                counted.push((customer, count));
            }
            Ok(Listing { items: counted, total: listing.total, next: listing.next, prev: listing.prev })
        })
        .await?;
    Ok(Json(PageCustomerSummary::listed(listing, &window, &customer_repo::LIST_KEYS, summary)))
}

#[utoipa::path(get, path = "/customers/{customerId}", operation_id = "get_customer", tag = "Customers", params(("customerId" = String, Path)),
    responses((status = 200, body = GetCustomerResponse), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<GetCustomerResponse>, ApiError> {
    // A subscription waiting for a payment always shows a checkout link that still works.
    let public = crate::routes::topups::public_url(&state, &headers);
    crate::routes::topups::renew_subscription_payment_links(&state, auth.mode, &id, public).await;
    let (customer, subscriptions) = state
        .read(move |conn| {
            let customer = customer_ops::require(conn, auth.mode, &id)?;
            let mut views = Vec::new();
            for subscription in subscription_repo::for_customer(conn, &customer.id)? {
                views.push(subscription_view(conn, auth.mode, &subscription)?);
            }
            Ok((customer, views))
        })
        .await?;
    Ok(Json(GetCustomerResponse {
        id: customer.id,
        external_id: customer.external_id,
        name: customer.name,
        email: customer.email,
        active_subscription_count: subscriptions.iter().filter(|subscription| subscription.status == "active").count()
            as i64,
        created_at: customer.created_at.into(),
        metadata: customer.metadata,
        subscriptions,
    }))
}

#[utoipa::path(patch, path = "/customers/{customerId}", operation_id = "update_customer", tag = "Customers", params(("customerId" = String, Path)),
    request_body = UpdateCustomerRequest, responses((status = 204), (status = 404), (status = 409), (status = 422)))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<UpdateCustomerRequest>,
) -> Result<StatusCode, ApiError> {
    let mut checker = Checker::default();
    let patch = CustomerPatch {
        name: match &request.name {
            None => None,
            Some(None) => {
                checker.error("name", "must not be null: a customer always has a name");
                None
            }
            Some(Some(name)) => Some(checker.text("name", name, MAX_TEXT_CHARS)),
        },
        external_id: request
            .external_id
            .as_ref()
            .map(|value| checker.opt_text("external_id", value.as_deref(), MAX_TEXT_CHARS)),
        email: request.email.as_ref().map(|value| checker.email("email", value.as_deref())),
        metadata: request.metadata.as_ref().map(|metadata| checker.metadata("metadata", Some(metadata))),
    };
    checker.finish()?;
    let now = state.now();
    state.write(move |conn| customer_ops::update(conn, auth.mode, &id, &patch, now)).await?;
    Ok(StatusCode::NO_CONTENT)
}
