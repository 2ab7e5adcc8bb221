//! OAuth 2.0 errors as responses (RFC 6749 §5.2): `{error, error_description}` with `no-store`.
use axum::{
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::auth::AuthError;

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
        let mut res = super::no_store(res);
        if error == "invalid_token" {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let AuthError::TooManyFailures(secs) = self {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}
