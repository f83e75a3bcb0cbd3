use crate::error::ApiError;
use crate::extract::{Auth, JsonBody};
use crate::types::Timestamp;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tally_core::Mode;
use tally_store::ops::products::{Catalog, VersionRef};
use tally_store::ops::subscriptions::{self as subscription_ops, Created, NewSubscription, ProductRef};
use tally_store::ops::OpError;
use tally_store::repo::products as product_repo;
use tally_store::repo::subscriptions::Subscription;
use tally_store::Conn;
use utoipa::ToSchema;

/// A version number, or `"default"`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum VersionIn {
    Number(i64),
    Name(String),
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CustomerSubscriptionProduct {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<VersionIn>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CreateCustomerSubscription {
    pub starts_at: Option<Timestamp>,
    pub renews_at: Option<Timestamp>,
    pub products: Vec<CustomerSubscriptionProduct>,
    pub return_url: Option<String>,
    pub failure_url: Option<String>,
    pub redirect_to: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RequiredSubscriptionAction {
    #[serde(rename = "type")]
    pub kind: String,
    pub redirect_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerSubscription {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renews_at: Option<Timestamp>,
    /// `active`, `inactive`, `scheduled` or `action_required`.
    pub status: String,
    pub products: Vec<CustomerSubscriptionProduct>,
    pub required_actions: Vec<RequiredSubscriptionAction>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateCustomerSubscriptionRequest {
    /// `active` or `inactive`.
    pub status: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateCustomerSubscriptionProductRequest {
    pub version: VersionIn,
}

fn version_ref(field: &str, version: Option<&VersionIn>) -> Result<VersionRef, ApiError> {
    match version {
        None => Ok(VersionRef::Default),
        Some(VersionIn::Number(number)) if *number >= 1 => Ok(VersionRef::Number(*number)),
        Some(VersionIn::Name(name)) if name == "default" => Ok(VersionRef::Default),
        Some(_) => Err(ApiError::invalid(field, "must be a version number from 1, or \"default\"")),
    }
}

/// Parses a subscription request; `prefix` names it in errors (`subscriptions[0]`).
pub fn parse_subscription(prefix: &str, request: &CreateCustomerSubscription) -> Result<NewSubscription, ApiError> {
    if request.products.is_empty() || request.products.len() > 20 {
        return Err(ApiError::invalid(format!("{prefix}products"), "a subscription has 1 to 20 products"));
    }
    let mut products = Vec::with_capacity(request.products.len());
    for (index, product) in request.products.iter().enumerate() {
        let field = format!("{prefix}products[{index}]");
        let reference = match (&product.id, &product.code) {
            (Some(id), _) => ProductRef::Id(id.clone()),
            (None, Some(code)) => ProductRef::Code(code.clone()),
            (None, None) => return Err(ApiError::invalid(field, "give the product's id or code")),
        };
        products.push((reference, version_ref(&format!("{field}.version"), product.version.as_ref())?));
    }
    if request.redirect_to.as_deref().is_some_and(|target| !matches!(target, "return_url" | "portal")) {
        return Err(ApiError::invalid(format!("{prefix}redirect_to"), "must be return_url or portal"));
    }
    // The URLs a payment's checkout sends the customer back to.
    let mut checker = crate::check::Checker::default();
    checker.opt_http_url(&format!("{prefix}return_url"), request.return_url.as_deref());
    checker.opt_http_url(&format!("{prefix}failure_url"), request.failure_url.as_deref());
    checker.finish()?;
    Ok(NewSubscription {
        starts_at: request.starts_at.map(|at| at.0),
        renews_at: request.renews_at.map(|at| at.0),
        products,
    })
}

/// The API view of a subscription, with each product's code.
pub fn subscription_view(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &Subscription,
) -> Result<CustomerSubscription, OpError> {
    let required_actions = match subscription.status {
        tally_store::repo::subscriptions::SubscriptionStatus::ActionRequired => {
            tally_store::repo::topups::open_for_subscription(conn, &subscription.id)?
                .into_iter()
                .filter_map(|top_up| top_up.redirect_url)
                .map(|redirect_url| RequiredSubscriptionAction { kind: "payment".into(), redirect_url })
                .collect()
        }
        _ => Vec::new(),
    };
    let mut products = Vec::with_capacity(subscription.products.len());
    for pinned in &subscription.products {
        let code = product_repo::get(conn, mode, &pinned.product_id)?.map(|product| product.code);
        products.push(CustomerSubscriptionProduct {
            id: Some(pinned.product_id.clone()),
            code,
            version: Some(VersionIn::Number(pinned.version)),
        });
    }
    Ok(CustomerSubscription {
        id: subscription.id.clone(),
        started_at: subscription.started_at.map(Timestamp),
        renews_at: subscription.renews_at.map(Timestamp),
        status: subscription.status.as_str().to_owned(),
        products,
        required_actions,
    })
}

/// What a newly created subscription still needs paid: `(subscription id, [(currency, amount)])`.
pub type PaymentsDue = Vec<(String, Vec<(String, rust_decimal::Decimal)>)>;

/// Inside the creating transaction: what each waiting subscription needs paid. A request
/// without `return_url`/`failure_url` sends the payer to Tally's own "payment complete" page
/// (`GET /checkout/complete`) instead.
pub fn payments_due(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &Subscription,
    catalog: &dyn Catalog,
) -> Result<PaymentsDue, OpError> {
    if subscription.status != tally_store::repo::subscriptions::SubscriptionStatus::ActionRequired {
        return Ok(Vec::new());
    }
    let due = subscription_ops::payment_due(conn, mode, subscription, catalog)?;
    Ok(vec![(subscription.id.clone(), due)])
}

/// After the subscription is committed: a top-up per amount due, whose checkout link becomes
/// the subscription's required action. Paying it starts the subscription.
pub async fn start_payments(
    state: &AppState,
    mode: Mode,
    customer_id: &str,
    due: PaymentsDue,
    request: &CreateCustomerSubscription,
    public: &str,
) -> Result<(), ApiError> {
    for (subscription_id, amounts) in due {
        for (currency, amount) in amounts {
            let code = tally_core::asset::AssetCode::parse(&currency)
                .map_err(|error| ApiError::Internal(error.to_string()))?;
            let minor_units = code.currency_minor_units().unwrap_or(2);
            // Round up: the payment must cover the fee.
            let amount = amount.round_dp_with_strategy(minor_units, rust_decimal::RoundingStrategy::AwayFromZero);
            let new = tally_store::ops::topups::NewTopUp {
                customer_id: customer_id.to_owned(),
                amount,
                currency: code,
                account_name: "default".into(),
                asset: None,
                exchange_rate: None,
                credit_expires_at: None,
                return_url: request.return_url.clone().unwrap_or_else(|| format!("{public}/checkout/complete")),
                failure_url: request.failure_url.clone().unwrap_or_else(|| format!("{public}/checkout/complete")),
                description: Some("Subscription fee".into()),
                metadata: Default::default(),
                origin: "subscription".into(),
                save_payment_method: true,
                subscription_id: Some(subscription_id.clone()),
            };
            crate::routes::topups::start(state, mode, new, public.to_owned()).await?;
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/customers/{customerId}/subscriptions", operation_id = "create_subscription", tag = "Customers",
    params(("customerId" = String, Path), ("Idempotency-Key" = Option<String>, Header,
        description = "Makes the request safe to retry: a retry with the same key returns the subscription the first request made and creates nothing; the same key with a different request is a 409.")),
    request_body = CreateCustomerSubscription,
    responses((status = 201, body = CustomerSubscription), (status = 404), (status = 409), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: axum::http::HeaderMap,
    Path(customer_id): Path<String>,
    JsonBody(request): JsonBody<CreateCustomerSubscription>,
) -> Result<(StatusCode, Json<CustomerSubscription>), ApiError> {
    let new = parse_subscription("", &request)?;
    let key = crate::routes::topups::idempotency_key(&headers)?;
    let now = state.now();
    let catalog = state.catalog.clone();
    let (owner, request_copy) = (customer_id.clone(), request.clone());
    let (subscription, due) = state
        .write(move |conn| {
            let catalog_ref = catalog.as_ref() as &dyn Catalog;
            let subscription = match key {
                None => subscription_ops::create(conn, auth.mode, &owner, &new, catalog_ref, now)?,
                Some(key) => {
                    let hash = tally_store::ops::request_hash(&format!(
                        "{owner}|{new:?}|{:?}|{:?}|{:?}",
                        request_copy.return_url, request_copy.failure_url, request_copy.redirect_to
                    ));
                    match subscription_ops::create_once(conn, auth.mode, &owner, &new, &key, &hash, catalog_ref, now)? {
                        // A retry: the first request made it (and started its payments).
                        Created::Replay(subscription) => return Ok((subscription, Vec::new())),
                        Created::New(subscription) => subscription,
                    }
                }
            };
            let due = payments_due(conn, auth.mode, &subscription, catalog.as_ref())?;
            Ok((subscription, due))
        })
        .await?;
    let public = crate::routes::topups::public_url(&state, &headers);
    start_payments(&state, auth.mode, &customer_id, due, &request, &public).await?;
    let view = state.read(move |conn| subscription_view(conn, auth.mode, &subscription)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(patch, path = "/customers/{customerId}/subscriptions/{subscriptionId}", operation_id = "update_subscription", tag = "Customers",
    params(("customerId" = String, Path), ("subscriptionId" = String, Path)), request_body = UpdateCustomerSubscriptionRequest,
    responses((status = 204), (status = 404), (status = 422)))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path((customer_id, subscription_id)): Path<(String, String)>,
    JsonBody(request): JsonBody<UpdateCustomerSubscriptionRequest>,
) -> Result<StatusCode, ApiError> {
    let active = match request.status.as_str() {
        "active" => true,
        "inactive" => false,
        _ => return Err(ApiError::invalid("status", "must be active or inactive")),
    };
    let now = state.now();
    let catalog = state.catalog.clone();
    state
        .write(move |conn| {
            subscription_ops::set_status(conn, auth.mode, &customer_id, &subscription_id, active, catalog.as_ref(), now)
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/customers/{customerId}/subscriptions/{subscriptionId}/products/{productId}", operation_id = "update_subscription_product", tag = "Customers",
    params(("customerId" = String, Path), ("subscriptionId" = String, Path), ("productId" = String, Path)),
    request_body = UpdateCustomerSubscriptionProductRequest, responses((status = 204), (status = 404), (status = 422)))]
pub async fn update_product(
    State(state): State<AppState>,
    auth: Auth,
    Path((customer_id, subscription_id, product_id)): Path<(String, String, String)>,
    JsonBody(request): JsonBody<UpdateCustomerSubscriptionProductRequest>,
) -> Result<StatusCode, ApiError> {
    let version = version_ref("version", Some(&request.version))?;
    let now = state.now();
    let catalog = state.catalog.clone();
    state
        .write(move |conn| {
            subscription_ops::change_version(
                conn,
                auth.mode,
                &customer_id,
                &subscription_id,
                &product_id,
                version,
                catalog.as_ref(),
                now,
            )
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
