//! `GET /jwks` (our public key, for providers to verify our client assertions) and
//! `GET /generator?alg=` (a fresh key pair for people registering a provider, from
//! `key_generator`: one at a time, a budget per address).
use axum::{
    extract::{Query, State},
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;

use super::error::ApiError;
use crate::{key_generator::GeneratorError, key_pairs::KeyPairError, state::AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/jwks", get(jwks)).route("/generator", get(generator))
}

/// How long providers may cache our JWKS; a rotation keeps old keys published longer than this.
pub const JWKS_MAX_AGE_SECS: u64 = 300;

async fn jwks(State(app): State<AppState>) -> Response {
    let mut res = Json(app.keys.jwks()).into_response();
    let cc = HeaderValue::from_str(&format!("public, max-age={JWKS_MAX_AGE_SECS}")).expect("ASCII header");
    res.headers_mut().insert(header::CACHE_CONTROL, cc);
    res
}

#[derive(Deserialize)]
struct GeneratorQuery {
    alg: Option<String>,
}

async fn generator(
    State(app): State<AppState>,
    extensions: axum::http::Extensions,
    Query(q): Query<GeneratorQuery>,
) -> Result<Response, ApiError> {
    let address = crate::http_server::peer_key(&extensions);
    let pair = app.key_generator.generate(&address, q.alg).await.map_err(|e| match e {
        e @ GeneratorError::KeyPair(KeyPairError::UnknownAlgorithm) => ApiError::BadRequest(e.to_string()),
        e @ (GeneratorError::TooMany { .. } | GeneratorError::Busy) => ApiError::TooManyRequests {
            retry_after_secs: e.retry_after().map_or(1, |w| w.as_secs().max(1)),
            message: e.to_string(),
        },
        e => ApiError::Internal(super::error::chain(&e)),
    })?;
    let mut res = Json(pair.to_json()).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
