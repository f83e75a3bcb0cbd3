//! The platform's own account (`/accounts/self`) and its connected accounts (Credyt for
//! Platforms). Connected accounts belong to the platform's environment of the key that made
//! them; `X-CREDYT-ACCOUNT` does not change which ones these routes see.

use crate::check::Checker;
use crate::error::ApiError;
use crate::extract::{Auth, JsonBody, QueryParams};
use crate::limits::MAX_TEXT_CHARS;
use crate::types::Timestamp;
use crate::{page_type, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tally_store::ops::connected_accounts as account_ops;
use tally_store::repo::connected_accounts::{self as account_repo, ConnectedAccount as StoredAccount};
use utoipa::ToSchema;

/// Who the API key belongs to and which mode it works in.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountContext {
    /// The platform's id, or the connected account's when the request names one.
    pub account_id: String,
    /// `test` or `live`.
    pub environment: String,
    pub name: String,
}

#[utoipa::path(get, path = "/accounts/self", operation_id = "get_account_context", tag = "Accounts", responses((status = 200, body = AccountContext)))]
pub async fn get_self(State(state): State<AppState>, auth: Auth) -> Result<Json<AccountContext>, ApiError> {
    let environment = auth.mode.environment();
    let (account_id, name) = match auth.mode.connected_account() {
        Some(id) => {
            let account = state.read(move |conn| account_ops::require(conn, environment, id)).await?;
            (account.id, account.name)
        }
        None => {
            let id = state.read(|conn| Ok(tally_store::repo::platform_account_id(conn)?)).await?;
            (id, state.config.platform_name.clone())
        }
    };
    Ok(Json(AccountContext { account_id, environment: environment.as_str().to_owned(), name }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateAccountRequest {
    pub name: String,
    pub external_id: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateAccountResponse {
    pub id: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectedAccount {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub name: String,
    pub created_at: Timestamp,
    pub metadata: BTreeMap<String, String>,
}

page_type!(PageConnectedAccount, ConnectedAccount);

fn account_view(account: StoredAccount) -> ConnectedAccount {
    ConnectedAccount {
        id: account.id,
        external_id: account.external_id,
        name: account.name,
        created_at: account.created_at.into(),
        metadata: account.metadata,
    }
}

#[utoipa::path(post, path = "/accounts", tag = "Accounts", operation_id = "create_account",
    request_body = CreateAccountRequest,
    responses((status = 201, body = CreateAccountResponse), (status = 409), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    JsonBody(request): JsonBody<CreateAccountRequest>,
) -> Result<(StatusCode, Json<CreateAccountResponse>), ApiError> {
    let mut checker = Checker::default();
    let name = checker.text("name", &request.name, MAX_TEXT_CHARS);
    let external_id = checker.opt_text("external_id", request.external_id.as_deref(), MAX_TEXT_CHARS);
    let metadata = checker.metadata("metadata", request.metadata.as_ref());
    checker.finish()?;
    let (environment, now) = (auth.mode.environment(), state.now());
    let account = state
        .write(move |conn| account_ops::create(conn, environment, &name, external_id.as_deref(), metadata, now))
        .await?;
    Ok((StatusCode::CREATED, Json(CreateAccountResponse { id: account.id, created_at: account.created_at.into() })))
}

#[utoipa::path(get, path = "/accounts", tag = "Accounts", operation_id = "list_accounts",
    params(("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("next" = Option<String>, Query), ("prev" = Option<String>, Query), ("include_total" = Option<bool>, Query), ("external_id" = Option<String>, Query)),
    responses((status = 200, body = PageConnectedAccount)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    mut query: QueryParams,
) -> Result<Json<PageConnectedAccount>, ApiError> {
    let window = query.window(&account_repo::LIST_KEYS);
    let external_id = query.string("external_id");
    query.finish()?;
    let environment = auth.mode.environment();
    let read_window = window.clone();
    let listing = state
        .read(move |conn| Ok(account_repo::list(conn, environment, external_id.as_deref(), &read_window)?))
        .await?;
    Ok(Json(PageConnectedAccount::listed(listing, &window, &account_repo::LIST_KEYS, account_view)))
}

#[utoipa::path(get, path = "/accounts/{accountId}", tag = "Accounts", operation_id = "get_account",
    params(("accountId" = String, Path)),
    responses((status = 200, body = ConnectedAccount), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<ConnectedAccount>, ApiError> {
    let environment = auth.mode.environment();
    let account = state.read(move |conn| account_ops::require(conn, environment, &id)).await?;
    Ok(Json(account_view(account)))
}
