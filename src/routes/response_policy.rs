//! What every request and response go through, whatever route: a header block within
//! `SERVER_MAX_HEADER_BYTES` as sent (hyper's read buffer bounds memory, but lets a block reach
//! nearly twice that), security headers (the UI must not be framed or sniffed, and the CSP is a
//! header, not only a `<meta>` that `frame-ancestors` cannot live in), and an answer within
//! `SERVER_REQUEST_TIMEOUT`.
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

/// Add the security headers, the request timeout and the header-block bound to `router`.
pub fn apply<S: Clone + Send + Sync + 'static>(
    mut router: Router<S>,
    request_timeout: Duration,
    max_header_bytes: usize,
) -> Router<S> {
    router = router.layer(axum::middleware::from_fn_with_state(request_timeout, within_time));
    router = router.layer(axum::middleware::from_fn_with_state(max_header_bytes, header_block_bounded));
    for (name, value) in HEADERS {
        router = router.layer(SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value)));
    }
    router
}

/// The request line and header fields as they were sent, in bytes (RFC 9112 §2.1).
fn header_block_bytes(req: &Request) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + " HTTP/1.1\r\n ".len();
    let fields: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + ": \r\n".len()).sum();
    line + fields + "\r\n".len()
}

/// A header block over the bound gets 431 (RFC 6585 §5) saying which setting bound it.
async fn header_block_bounded(State(max): State<usize>, req: Request, next: Next) -> Response {
    let size = header_block_bytes(&req);
    if size <= max {
        return next.run(req).await;
    }
    let message = format!(
        "the request's header block is {size} bytes, over the {max}-byte limit (SERVER_MAX_HEADER_BYTES)"
    );
    let mut res = outcome_response(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        &OperationOutcome::error(IssueCode::TooLong, message),
    );
    res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
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
