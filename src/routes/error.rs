//! `ApiError`: every FHIR-side failure rendered as an OperationOutcome with the right status.
//! 5xx causes are logged once here with their chain; clients get a generic message.
use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

use crate::{
    fhir::operation_outcome::{IssueCode, OperationOutcome},
    store::StoreError,
};

pub const FHIR_JSON: &str = "application/fhir+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotAcceptable(String),
    /// The request does not fit the resource's state (cancelling a finished job).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_secs: u64 },
    /// Not now, for a reason the caller may know (a job still stopping on another replica).
    #[error("{message}")]
    Unavailable { message: String, retry_after_secs: u64 },
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("internal failure")]
    Internal(String),
}

pub use crate::error_text::chain;

/// An OperationOutcome body with the FHIR media type.
pub fn outcome_response(status: StatusCode, outcome: &OperationOutcome) -> Response {
    let body = serde_json::to_vec(outcome).unwrap_or_default();
    let mut res = (status, body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, IssueCode::Invalid),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, IssueCode::Login),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, IssueCode::Forbidden),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, IssueCode::NotFound),
            ApiError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, IssueCode::NotSupported),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, IssueCode::Processing),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, IssueCode::NotSupported)
            }
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, IssueCode::TooCostly),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, IssueCode::Throttled),
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, IssueCode::Transient),
            ApiError::Store(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception)
            }
        };
        let text = if status.is_server_error() && !matches!(self, ApiError::Unavailable { .. }) {
            tracing::error!(error = %chain(&self), "request failed");
            "the server failed to process the request; try again later".to_string()
        } else {
            self.to_string()
        };
        let mut res = outcome_response(status, &OperationOutcome::error(code, text));
        match self {
            ApiError::Unauthorized(_) => {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyRequests { retry_after_secs, .. }
            | ApiError::Unavailable { retry_after_secs, .. } => {
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        res
    }
}
