//! HTTP routes: each module owns its paths; the browser UI's files are the fallback.
pub mod admin;
pub mod auth;
pub mod bulk_submit;
pub mod caller;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod import;
pub mod info;
pub mod jobs;
pub mod jwks;
pub mod metrics;
pub mod oauth_error;
pub mod request_log;
pub mod response_policy;
pub mod ui;

use axum::{
    extract::DefaultBodyLimit,
    http::{header, HeaderMap, HeaderValue},
    response::Response,
    Router,
};
use tower_http::trace::TraceLayer;

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    let request_timeout = state.config.server.request_timeout;
    let routes = Router::new()
        .merge(import::routes())
        .merge(bulk_submit::routes())
        .merge(jobs::routes())
        .merge(auth::routes())
        .merge(jwks::routes())
        .merge(info::routes())
        .merge(health::routes())
        .merge(metrics::routes())
        .merge(dashboard::routes())
        .fallback(axum::routing::get(ui::serve))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.job_context.metrics.clone(), request_log::log));
    let max_header_bytes = state.config.server.max_header_bytes;
    response_policy::apply(routes, request_timeout, max_header_bytes)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Mark a response as never to be cached (status, tokens, registrations, job details).
pub fn no_store(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

/// The media type of the request body, lowercased, without parameters.
pub fn media_type(headers: &HeaderMap) -> String {
    let raw = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    raw.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// Our externally visible base URL, without a trailing slash: `PUBLIC_URL`, else the request's Host.
pub fn base_url(app: &AppState, headers: &HeaderMap) -> String {
    if let Some(u) = &app.config.public_url {
        return u.as_str().trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}:{}", app.config.host, app.config.port));
    let proto = match headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()) {
        Some("https") => "https",
        _ => "http",
    };
    format!("{proto}://{host}")
}
