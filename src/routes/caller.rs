//! The Bearer extractors: `Caller` protects `/$import` (an import scope), `SubmitCaller` the Bulk
//! Submit operations (`system/bulk-submit`). Both need our access token, unexpired, of a
//! registration that is still active.
use axum::{extract::FromRequestParts, http::request::Parts};

use super::error::ApiError;
use crate::{
    auth::{
        access_token::{verify, AccessClaims},
        bearer::{bearer_token, BearerProblem},
        scope,
    },
    domain::Provider,
    state::AppState,
};

/// A verified caller of `/$import`: the Bearer token is ours, unexpired, and its registration active.
pub struct Caller {
    pub claims: AccessClaims,
    pub provider: Provider,
}

/// A verified caller of `$bulk-submit` and its status.
pub struct SubmitCaller {
    pub claims: AccessClaims,
    pub provider: Provider,
}

/// The token's claims and its active registration, once `allowed` accepts its scope (else the
/// refusal names the scope to ask for).
async fn verified(
    parts: &Parts,
    app: &AppState,
    allowed: fn(&str) -> bool,
    ask_for: &str,
) -> Result<(AccessClaims, Provider), ApiError> {
    let token = bearer_token(&parts.headers).map_err(|problem| {
        ApiError::Unauthorized(
            match problem {
                BearerProblem::Missing => {
                    "authorization is required: send 'Authorization: Bearer <token>' from /auth/token"
                }
                BearerProblem::NotText => "the authorization header is not text",
                BearerProblem::NotBearer => "the authorization header must be 'Bearer <token>'",
            }
            .into(),
        )
    })?;
    let claims = verify(&app.keys, token).map_err(ApiError::Unauthorized)?;
    if !allowed(&claims.scope) {
        return Err(ApiError::Forbidden(format!(
            "the access token's scope '{}' does not allow this operation; request {ask_for}",
            claims.scope
        )));
    }
    let provider = app.registrations.provider(&claims.client_id).await?.ok_or_else(|| {
        ApiError::Unauthorized("the registration behind this token is unknown or revoked".into())
    })?;
    Ok((claims, provider))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let ask_for = "'system/*.write' (or v2 'system/*.cud') for $import";
        let (claims, provider) = verified(parts, app, scope::allows_import, ask_for).await?;
        Ok(Caller { claims, provider })
    }
}

impl FromRequestParts<AppState> for SubmitCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let ask_for = "'system/bulk-submit' for Bulk Submit";
        let (claims, provider) = verified(parts, app, scope::allows_submit, ask_for).await?;
        Ok(SubmitCaller { claims, provider })
    }
}
