//! Errors of our OAuth server (RFC 6749 §5.2); `routes::oauth_error` renders them. Getting a token
//! from a provider fails with `provider_token::ProviderTokenError` instead.
use axum::http::StatusCode;

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
    /// The request clashes with what is there (e.g. a pull of that export runs already).
    #[error("{0}")]
    Conflict(String),
    /// No room for it now (the job caps); it may be asked again later.
    #[error("{0}")]
    Busy(String),
    #[error("key handling failed")]
    Jose(#[from] josekit::JoseError),
    #[error("storage failed")]
    Store(#[from] crate::store::StoreError),
    #[error("the resource store failed")]
    Resources(#[from] crate::destination::resource_store::TablesError),
    /// Too many failed credentials from this client or address (`MAX_AUTH_FAILURES`).
    #[error("too many failed attempts in the last minute (MAX_AUTH_FAILURES); retry in {0} s")]
    TooManyFailures(u64),
}

impl AuthError {
    /// The OAuth `error` code and HTTP status of this error.
    pub fn code(&self) -> (&'static str, StatusCode) {
        match self {
            AuthError::InvalidRequest(_) => ("invalid_request", StatusCode::BAD_REQUEST),
            AuthError::InvalidClient(_) => ("invalid_client", StatusCode::UNAUTHORIZED),
            AuthError::InvalidScope(_) => ("invalid_scope", StatusCode::BAD_REQUEST),
            AuthError::UnsupportedGrantType(_) => ("unsupported_grant_type", StatusCode::BAD_REQUEST),
            AuthError::InvalidToken(_) => ("invalid_token", StatusCode::UNAUTHORIZED),
            AuthError::NotFound(_) => ("not_found", StatusCode::NOT_FOUND),
            AuthError::Conflict(_) => ("invalid_request", StatusCode::CONFLICT),
            AuthError::Busy(_) => ("temporarily_unavailable", StatusCode::TOO_MANY_REQUESTS),
            AuthError::TooManyFailures(_) => ("temporarily_unavailable", StatusCode::TOO_MANY_REQUESTS),
            AuthError::Jose(_) | AuthError::Store(_) | AuthError::Resources(_) => {
                ("server_error", StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}
