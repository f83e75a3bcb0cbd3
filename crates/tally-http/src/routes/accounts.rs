use crate::error::ApiError;
use crate::extract::Auth;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// Who the API key belongs to and which mode it works in.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountContext {
    pub account_id: String,
    /// `test` or `live`.
    pub environment: String,
    pub name: String,
}

#[utoipa::path(get, path = "/accounts/self", tag = "Accounts", responses((status = 200, body = AccountContext)))]
pub async fn get_self(State(state): State<AppState>, auth: Auth) -> Result<Json<AccountContext>, ApiError> {
    let account_id = state.read(|conn| Ok(tally_store::repo::platform_account_id(conn)?)).await?;
    Ok(Json(AccountContext {
        account_id,
        environment: auth.mode.as_str().to_owned(),
        name: state.config.platform_name.clone(),
    }))
}
