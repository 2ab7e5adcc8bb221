//! What every response carries, whatever route made it: security headers (the UI must not be
//! framed or sniffed, and the CSP is a header, not only a `<meta>` that `frame-ancestors` cannot
//! live in), and an answer within `SERVER_REQUEST_TIMEOUT`.
use std::time::Duration;

use axum::{
    extract::{Request, State},
    http::{header, HeaderName, HeaderValue, StatusCode},
    middleware::Next,
    response::Response,
    Router,
};
use tower_http::set_header::SetResponseHeaderLayer;

use super::error::outcome_response;
use crate::fhir::operation_outcome::{IssueCode, OperationOutcome};

/// Every asset comes from this server; nothing inline, nothing from elsewhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const HEADERS: [(HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// Add the security headers and the request timeout to `router`.
pub fn apply<S: Clone + Send + Sync + 'static>(
    mut router: Router<S>,
    request_timeout: Duration,
) -> Router<S> {
    router = router.layer(axum::middleware::from_fn_with_state(request_timeout, within_time));
    for (name, value) in HEADERS {
        router = router.layer(SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value)));
    }
    router
}

/// A request that takes longer than the limit (a body trickled in, a handler stuck on a slow
/// dependency) gets a 503 OperationOutcome, and its work is dropped.
async fn within_time(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            let message = format!(
                "the request did not complete within {} s (SERVER_REQUEST_TIMEOUT)",
                limit.as_secs_f64()
            );
            let mut res = outcome_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &OperationOutcome::error(IssueCode::Timeout, message),
            );
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            res
        }
    }
}
