//! OAuth 2.0 errors (RFC 6749 §5.2), rendered as `{error, error_description}` with `no-store`.
use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    InvalidRequest(String),
    /// Authentication of the client failed (SMART: "SHALL respond with an invalid_client error").
    #[error("{0}")]
    InvalidClient(String),
    #[error("{0}")]
    InvalidScope(String),
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// A missing or wrong bearer credential on a protected `/auth/*` endpoint (RFC 6750 §3.1).
    #[error("{0}")]
    InvalidToken(String),
    #[error("{0}")]
    NotFound(String),
    #[error("key handling failed")]
    Jose(#[from] josekit::JoseError),
    #[error("storage failed")]
    Store(#[from] crate::store::StoreError),
    /// Too many failed credentials from this client or address (`MAX_AUTH_FAILURES`).
    #[error("too many failed attempts in the last minute (MAX_AUTH_FAILURES); retry in {0} s")]
    TooManyFailures(u64),
    /// A provider's token endpoint could not be used just now (unreachable, 5xx, 429).
    #[error("{0}")]
    Provider(String),
    /// A provider's token endpoint refused us, or may not be contacted: retrying cannot help.
    #[error("{0}")]
    ProviderRefused(String),
}

impl AuthError {
    fn code(&self) -> (&'static str, StatusCode) {
        match self {
            AuthError::InvalidRequest(_) => ("invalid_request", StatusCode::BAD_REQUEST),
            AuthError::InvalidClient(_) => ("invalid_client", StatusCode::UNAUTHORIZED),
            AuthError::InvalidScope(_) => ("invalid_scope", StatusCode::BAD_REQUEST),
            AuthError::UnsupportedGrantType(_) => ("unsupported_grant_type", StatusCode::BAD_REQUEST),
            AuthError::InvalidToken(_) => ("invalid_token", StatusCode::UNAUTHORIZED),
            AuthError::NotFound(_) => ("not_found", StatusCode::NOT_FOUND),
            AuthError::TooManyFailures(_) => ("temporarily_unavailable", StatusCode::TOO_MANY_REQUESTS),
            AuthError::Jose(_)
            | AuthError::Store(_)
            | AuthError::Provider(_)
            | AuthError::ProviderRefused(_) => ("server_error", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (error, status) = self.code();
        let description = if status.is_server_error() {
            tracing::error!(error = %crate::error_text::chain(&self), "auth request failed");
            "the server could not process the request; try again later".to_string()
        } else {
            self.to_string()
        };
        let res = (status, Json(json!({ "error": error, "error_description": description }))).into_response();
        let mut res = crate::routes::no_store(res);
        if error == "invalid_token" {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let AuthError::TooManyFailures(secs) = self {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}
