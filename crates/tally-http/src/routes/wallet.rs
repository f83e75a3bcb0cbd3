use crate::check::{account_id, parse_account_id, Checker};
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody, QueryParams};
use crate::limits::{MAX_DESCRIPTION_CHARS, MAX_TEXT_CHARS};
use crate::types::{Amount, Timestamp};
use crate::{page_type, AppState};
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::Json;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use tally_core::charge::ChargeInputs;
use tally_core::wallet::{Grant, GrantState, Purpose};
use tally_core::Mode;
use tally_store::ops::customers as customer_ops;
use tally_store::ops::wallet::{
    self as wallet_ops, Adjustment, AdjustmentReason, Charge, Outcome, RESERVED_TRANSACTION_PREFIX,
};
use tally_store::repo::transactions::{self as transaction_repo, Transaction};
use tally_store::repo::wallets::{self as wallet_repo, Account, AccountKey, GrantFilter};
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct WalletAccount {
    /// `{name}:{ASSET}`, matched case-insensitively on input.
    pub id: String,
    pub name: String,
    pub asset: String,
    pub available: Amount,
    pub pending_in: Amount,
    pub pending_out: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GetWalletResponse {
    pub accounts: Vec<WalletAccount>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateAdjustmentRequest {
    pub transaction_id: String,
    pub account_name: Option<String>,
    pub asset: String,
    pub amount: Amount,
    pub description: Option<String>,
    /// `gift`, `external_topup`, `external_refund` or `other`.
    pub reason: String,
    pub effective_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionCreated {
    pub id: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateChargeRequest {
    pub transaction_id: String,
    pub account_name: Option<String>,
    pub asset: String,
    pub subject: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub input_units: Option<Amount>,
    pub input_volume: Option<Amount>,
    pub unit_price: Option<Amount>,
    pub volume_rate: Option<Amount>,
    pub package_size: Option<Amount>,
    /// Required unless the inputs give it; when both are given they must agree.
    pub amount: Option<Amount>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GetTransactionResponse {
    pub id: String,
    /// `adjustment`, `fee` (charges and usage fees) or `expiry`.
    #[serde(rename = "type")]
    pub kind: String,
    pub account_id: String,
    pub asset: String,
    /// Signed from the wallet's side: credits positive, debits negative.
    pub amount: Amount,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executed_at: Option<Timestamp>,
    /// Kind-specific facts: an adjustment's reason, a charge's subject and inputs.
    pub details: serde_json::Value,
}

page_type!(PageTransaction, GetTransactionResponse);

#[derive(Debug, Serialize, ToSchema)]
pub struct CreditGrantItem {
    pub id: String,
    /// `promotion`, `bundled` or `paid`.
    pub purpose: String,
    /// `pending` (not yet effective), `active`, `depleted` or `expired`.
    pub status: String,
    pub amount: Amount,
    /// What remains spendable now.
    pub available: Amount,
    /// What a pending grant will add when it becomes effective.
    pub pending_in: Amount,
    pub effective_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

page_type!(PageCreditGrantItem, CreditGrantItem);

fn account_view(account: Account) -> WalletAccount {
    WalletAccount {
        id: account_id(&account.key.name, &account.key.asset),
        name: account.key.name,
        asset: account.key.asset,
        available: account.state.available.into(),
        pending_in: account.state.pending_in.into(),
        pending_out: account.state.pending_out.into(),
    }
}

/// Grant starts and expiries that fell due since the last background pass are settled
/// before a read, so that what a client reads always has its ledger entries.
async fn settle_then_check(state: &AppState, mode: Mode, customer_id: &str) -> Result<(), ApiError> {
    let now = state.now();
    let id = customer_id.to_owned();
    let due = state
        .read(move |conn| {
            customer_ops::require(conn, mode, &id)?;
            wallet_ops::customer_has_due(conn, &id, now)
        })
        .await?;
    if due {
        let id = customer_id.to_owned();
        state.write(move |conn| wallet_ops::settle_customer(conn, mode, &id, now)).await?;
    }
    Ok(())
}

fn account_key(customer_id: &str, account: &str) -> Result<AccountKey, ApiError> {
    let (name, asset) = parse_account_id(account)
        .ok_or_else(|| ApiError::NotFound(format!("account {account} not found: account ids look like default:USD")))?;
    Ok(AccountKey { customer_id: customer_id.to_owned(), name, asset: asset.to_string() })
}

#[utoipa::path(get, path = "/customers/{customerId}/wallet", operation_id = "get_customer_wallet", tag = "Wallets", params(("customerId" = String, Path)),
    responses((status = 200, body = GetWalletResponse), (status = 404)))]
pub async fn get_wallet(
    State(state): State<AppState>,
    auth: Auth,
    Path(customer_id): Path<String>,
) -> Result<Json<GetWalletResponse>, ApiError> {
    settle_then_check(&state, auth.mode, &customer_id).await?;
    let accounts = state.read(move |conn| Ok(wallet_repo::list_for_customer(conn, &customer_id)?)).await?;
    Ok(Json(GetWalletResponse { accounts: accounts.into_iter().map(account_view).collect() }))
}

#[utoipa::path(get, path = "/customers/{customerId}/wallet/{accountId}", operation_id = "get_wallet_account", tag = "Wallets",
    params(("customerId" = String, Path), ("accountId" = String, Path)),
    responses((status = 200, body = WalletAccount), (status = 404)))]
pub async fn get_account(
    State(state): State<AppState>,
    auth: Auth,
    Path((customer_id, account)): Path<(String, String)>,
) -> Result<Json<WalletAccount>, ApiError> {
    settle_then_check(&state, auth.mode, &customer_id).await?;
    let key = account_key(&customer_id, &account)?;
    let found = state.read(move |conn| Ok(wallet_repo::get(conn, &key)?)).await?;
    found
        .map(|account| Json(account_view(account)))
        .ok_or_else(|| ApiError::NotFound(format!("account {account} not found in this wallet")))
}

fn created(outcome: Outcome) -> (StatusCode, [(HeaderName, HeaderValue); 1], Json<TransactionCreated>) {
    let replayed = HeaderValue::from_static(if outcome.replayed { "true" } else { "false" });
    (
        StatusCode::CREATED,
        [(HeaderName::from_static("idempotent-replayed"), replayed)],
        Json(TransactionCreated { id: outcome.transaction.id, created_at: outcome.transaction.created_at.into() }),
    )
}

fn transaction_id(checker: &mut Checker, value: &str) -> String {
    let id = checker.client_id("transaction_id", value);
    if id.starts_with(RESERVED_TRANSACTION_PREFIX) {
        checker.error(
            "transaction_id",
            format!("must not start with {RESERVED_TRANSACTION_PREFIX}, which Tally keeps for itself"),
        );
    }
    id
}

fn parse_adjustment(request: &CreateAdjustmentRequest) -> Result<Adjustment, ApiError> {
    let mut checker = Checker::default();
    let transaction_id = transaction_id(&mut checker, &request.transaction_id);
    let account_name = checker.account_name("account_name", request.account_name.as_deref());
    let asset = checker.asset_code("asset", &request.asset);
    let amount = checker.non_zero("amount", request.amount);
    let description = checker.opt_text("description", request.description.as_deref(), MAX_DESCRIPTION_CHARS);
    let reason = AdjustmentReason::parse(&request.reason);
    if reason.is_none() {
        checker.error("reason", "must be one of gift, external_topup, external_refund, other");
    }
    let metadata = checker.metadata("metadata", request.metadata.as_ref());
    checker.finish()?;
    Ok(Adjustment {
        transaction_id,
        account_name,
        asset: asset.expect("checked"),
        amount,
        description,
        reason: reason.expect("checked"),
        effective_at: request.effective_at.map(|at| at.0),
        expires_at: request.expires_at.map(|at| at.0),
        metadata,
    })
}

#[utoipa::path(post, path = "/customers/{customerId}/wallet/adjustments", operation_id = "create_adjustment", tag = "Wallets", params(("customerId" = String, Path)),
    request_body = CreateAdjustmentRequest,
    responses((status = 201, body = TransactionCreated), (status = 404), (status = 409), (status = 422)))]
pub async fn create_adjustment(
    State(state): State<AppState>,
    auth: Auth,
    Path(customer_id): Path<String>,
    JsonBody(request): JsonBody<CreateAdjustmentRequest>,
) -> Result<(StatusCode, [(HeaderName, HeaderValue); 1], Json<TransactionCreated>), ApiError> {
    let adjustment = parse_adjustment(&request)?;
    let now = state.now();
    let outcome = state.write(move |conn| wallet_ops::adjust(conn, auth.mode, &customer_id, &adjustment, now)).await?;
    Ok(created(outcome))
}

fn parse_charge(request: &CreateChargeRequest) -> Result<Charge, ApiError> {
    let mut checker = Checker::default();
    let transaction_id = transaction_id(&mut checker, &request.transaction_id);
    let account_name = checker.account_name("account_name", request.account_name.as_deref());
    let asset = checker.asset_code("asset", &request.asset);
    let mut input = |field: &str, value: Option<Amount>| value.map(|value| checker.positive(field, value));
    let inputs = ChargeInputs {
        units: input("input_units", request.input_units),
        unit_price: input("unit_price", request.unit_price),
        volume: input("input_volume", request.input_volume),
        volume_rate: input("volume_rate", request.volume_rate),
        package_size: input("package_size", request.package_size),
    };
    let stated = request.amount.map(|amount| checker.positive("amount", amount));
    let computed = inputs.amount().unwrap_or_else(|error| {
        checker.error("amount", error.to_string());
        None
    });
    let amount = match (stated, computed) {
        (Some(stated), Some(computed)) if stated != computed => {
            checker.error("amount", format!("is {stated} but the inputs come to {computed}"));
            stated
        }
        (Some(amount), _) | (None, Some(amount)) => amount,
        (None, None) => {
            checker.error("amount", "give an amount, or input_units with unit_price, or input_volume with volume_rate");
            Decimal::ZERO
        }
    };
    // A stated amount was checked above; one computed from the inputs is checked here, once.
    if stated.is_none() && computed.is_some() {
        if let Err(error) = tally_core::money::check_positive(amount) {
            checker.error("amount", error.to_string());
        }
    }
    let subject = checker.opt_text("subject", request.subject.as_deref(), MAX_TEXT_CHARS);
    let description = checker.opt_text("description", request.description.as_deref(), MAX_DESCRIPTION_CHARS);
    let metadata = checker.metadata("metadata", request.metadata.as_ref());
    checker.finish()?;
    Ok(Charge {
        transaction_id,
        account_name,
        asset: asset.expect("checked"),
        amount,
        inputs,
        subject,
        description,
        metadata,
    })
}

#[utoipa::path(post, path = "/customers/{customerId}/wallet/charges", operation_id = "create_charge", tag = "Wallets", params(("customerId" = String, Path)),
    request_body = CreateChargeRequest,
    responses((status = 201, body = TransactionCreated), (status = 404), (status = 409), (status = 422)))]
pub async fn create_charge(
    State(state): State<AppState>,
    auth: Auth,
    Path(customer_id): Path<String>,
    JsonBody(request): JsonBody<CreateChargeRequest>,
) -> Result<(StatusCode, [(HeaderName, HeaderValue); 1], Json<TransactionCreated>), ApiError> {
    let charge = parse_charge(&request)?;
    let now = state.now();
    let outcome = state.write(move |conn| wallet_ops::charge(conn, auth.mode, &customer_id, &charge, now)).await?;
    Ok(created(outcome))
}

fn transaction_view(transaction: Transaction) -> GetTransactionResponse {
    let mut details: serde_json::Value = serde_json::from_str(&transaction.detail).unwrap_or_default();
    if let Some(map) = details.as_object_mut() {
        map.retain(|_, value| !value.is_null());
    }
    GetTransactionResponse {
        account_id: account_id(&transaction.account_name, &transaction.asset),
        id: transaction.id,
        kind: transaction.kind,
        asset: transaction.asset,
        amount: transaction.amount.into(),
        description: transaction.description,
        metadata: transaction.metadata,
        created_at: transaction.created_at.into(),
        executed_at: transaction.executed_at.map(Timestamp),
        details,
    }
}

#[utoipa::path(get, path = "/customers/{customerId}/wallet/transactions/{transactionId}", operation_id = "get_transaction", tag = "Wallets",
    params(("customerId" = String, Path), ("transactionId" = String, Path)),
    responses((status = 200, body = GetTransactionResponse), (status = 404)))]
pub async fn get_transaction(
    State(state): State<AppState>,
    auth: Auth,
    Path((customer_id, transaction_id)): Path<(String, String)>,
) -> Result<Json<GetTransactionResponse>, ApiError> {
    settle_then_check(&state, auth.mode, &customer_id).await?;
    let found = state.read(move |conn| Ok(transaction_repo::get(conn, &customer_id, &transaction_id)?)).await?;
    found
        .map(|transaction| Json(transaction_view(transaction)))
        .ok_or_else(|| ApiError::NotFound("transaction not found".into()))
}

#[utoipa::path(get, path = "/customers/{customerId}/wallet/{accountId}/transactions", operation_id = "list_transactions", tag = "Wallets",
    params(("customerId" = String, Path), ("accountId" = String, Path), ("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("next" = Option<String>, Query), ("prev" = Option<String>, Query), ("include_total" = Option<bool>, Query)),
    responses((status = 200, body = PageTransaction), (status = 404)))]
pub async fn list_transactions(
    State(state): State<AppState>,
    auth: Auth,
    Path((customer_id, account)): Path<(String, String)>,
    mut query: QueryParams,
) -> Result<Json<PageTransaction>, ApiError> {
    let window = query.window(&transaction_repo::LIST_KEYS);
    query.finish()?;
    settle_then_check(&state, auth.mode, &customer_id).await?;
    let key = account_key(&customer_id, &account)?;
    let read_window = window.clone();
    let listing = state
        .read(move |conn| {
            require_account(conn, &key, &account)?;
            Ok(transaction_repo::list_for_account(conn, &key.customer_id, &key.name, &key.asset, &read_window)?)
        })
        .await?;
    Ok(Json(PageTransaction::listed(listing, &window, &transaction_repo::LIST_KEYS, transaction_view)))
}

/// Lists of an account's contents answer 404 for an account that does not exist, as reading
/// the account itself does.
fn require_account(
    conn: &mut dyn tally_store::Conn,
    key: &AccountKey,
    account: &str,
) -> Result<(), tally_store::ops::OpError> {
    match wallet_repo::get(conn, key)? {
        Some(_) => Ok(()),
        None => Err(tally_store::ops::OpError::NotFound(format!("account {account} not found in this wallet"))),
    }
}

fn grant_view(grant: Grant, now: chrono::DateTime<chrono::Utc>) -> CreditGrantItem {
    let past_expiry = grant.expires_at.is_some_and(|expires_at| expires_at <= now);
    let status = match grant.state {
        GrantState::Pending => "pending",
        // A spent grant is not settled at its expiry (nothing moves), but it has expired all the same.
        GrantState::Active if grant.remaining.is_zero() && past_expiry => "expired",
        GrantState::Active if grant.remaining.is_zero() => "depleted",
        GrantState::Active => "active",
        GrantState::Expired => "expired",
    };
    let (available, pending_in) = match grant.state {
        GrantState::Pending => (Decimal::ZERO, grant.remaining),
        GrantState::Active => (grant.remaining, Decimal::ZERO),
        GrantState::Expired => (Decimal::ZERO, Decimal::ZERO),
    };
    CreditGrantItem {
        id: grant.id.to_string(),
        purpose: grant.purpose.as_str().to_owned(),
        status: status.to_owned(),
        amount: grant.amount.into(),
        available: available.into(),
        pending_in: pending_in.into(),
        effective_at: grant.effective_at.into(),
        expires_at: grant.expires_at.map(Timestamp),
        created_at: grant.created_at.into(),
    }
}

#[utoipa::path(get, path = "/customers/{customerId}/wallet/{accountId}/grants", operation_id = "get_credit_grants", tag = "Wallets",
    params(("customerId" = String, Path), ("accountId" = String, Path), ("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("next" = Option<String>, Query), ("prev" = Option<String>, Query), ("include_total" = Option<bool>, Query),
           ("purpose" = Option<String>, Query), ("exclude_expired" = Option<bool>, Query),
           ("effective_from" = Option<String>, Query), ("effective_to" = Option<String>, Query),
           ("expired_from" = Option<String>, Query), ("expired_to" = Option<String>, Query)),
    responses((status = 200, body = PageCreditGrantItem), (status = 404)))]
pub async fn list_grants(
    State(state): State<AppState>,
    auth: Auth,
    Path((customer_id, account)): Path<(String, String)>,
    mut query: QueryParams,
) -> Result<Json<PageCreditGrantItem>, ApiError> {
    let window = query.window(&wallet_repo::GRANT_KEYS);
    let purpose = query.string("purpose");
    let purpose = purpose.and_then(|text| {
        let parsed = Purpose::parse(&text);
        if parsed.is_none() {
            query.errors.push(tally_store::ops::FieldError {
                field: "purpose".into(),
                message: "must be promotion, bundled or paid".into(),
            });
        }
        parsed
    });
    let now = state.now();
    let filter = GrantFilter {
        purpose,
        exclude_expired_at: query.bool("exclude_expired").unwrap_or(false).then_some(now),
        effective_from: query.time("effective_from"),
        effective_to: query.time("effective_to"),
        expired_from: query.time("expired_from"),
        expired_to: query.time("expired_to"),
    };
    query.finish()?;
    settle_then_check(&state, auth.mode, &customer_id).await?;
    let key = account_key(&customer_id, &account)?;
    let read_window = window.clone();
    let listing = state
        .read(move |conn| {
            require_account(conn, &key, &account)?;
            Ok(wallet_repo::list_grants(conn, &key, &filter, &read_window)?)
        })
        .await?;
    Ok(Json(PageCreditGrantItem::listed(listing, &window, &wallet_repo::GRANT_KEYS, |grant| grant_view(grant, now))))
}
