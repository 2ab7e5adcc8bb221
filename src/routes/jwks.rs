//! `GET /jwks` (our public key, for providers to verify our client assertions) and
//! `GET /generator?alg=` (a fresh key pair for people registering a provider).
use axum::{
    extract::{Query, State},
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use crate::{auth::keys, state::AppState};

pub const GENERATOR_ALGORITHMS: &[&str] = &["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"];

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
    let alg = q.alg.unwrap_or_else(|| keys::GENERATED_KEY_ALG.into()).to_ascii_uppercase();
    if !GENERATOR_ALGORITHMS.contains(&alg.as_str()) {
        return Err(ApiError::BadRequest(format!("alg must be one of {}", GENERATOR_ALGORITHMS.join(", "))));
    }
    // RSA generation takes a while; keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || -> Result<_, josekit::JoseError> {
        let private = keys::generate(&alg)?;
        let public = keys::public_of(&private)?;
        let (public_pem, private_pem) = keys::pem_pair(&private)?;
        Ok(json!({
            "alg": alg,
            // Public members only: a JWKS is meant to be published.
            "jwks": { "keys": [public.as_ref()] },
            "publicAsJWK": public.as_ref(),
            "publicAsPEM": public_pem,
            "privateAsJWK": private.as_ref(),
            "privateAsPEM": private_pem,
        }))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(super::error::chain(&e)))?;
    let mut res = Json(result).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
