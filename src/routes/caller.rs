//! The Bearer extractor that protects `/$import`: our access token, unexpired, with an import
//! scope, of a registration that is still active.
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

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
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
        if !scope::allows_import(&claims.scope) {
            return Err(ApiError::Forbidden(format!(
                "the access token's scope '{}' does not allow $import; request 'system/*.write' (or v2 'system/*.cud')",
                claims.scope
            )));
        }
        let provider = app.registrations.provider(&claims.client_id).await?.ok_or_else(|| {
            ApiError::Unauthorized("the registration behind this token is unknown or revoked".into())
        })?;
        Ok(Caller { claims, provider })
    }
}
