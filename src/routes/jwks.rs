//! `GET /jwks` (our public key, for providers to verify our client assertions) and
//! `GET /generator?alg=` (a fresh key pair for people registering a provider, from `key_pairs`).
use axum::{
    extract::{Query, State},
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;

use super::error::ApiError;
use crate::{
    key_pairs::{self, KeyPairError},
    state::AppState,
};

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

async fn generator(Query(q): Query<GeneratorQuery>) -> Result<Response, ApiError> {
    // RSA generation takes a while; keep it off the async workers.
    let pair = tokio::task::spawn_blocking(move || key_pairs::generate(q.alg.as_deref()))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| match e {
            e @ KeyPairError::UnknownAlgorithm => ApiError::BadRequest(e.to_string()),
            e => ApiError::Internal(super::error::chain(&e)),
        })?;
    let mut res = Json(pair.to_json()).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
