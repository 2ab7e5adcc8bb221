//! `GET /info`: what a person needs to connect a provider, as `[{label, value, description}]`.
use axum::{extract::State, http::HeaderMap, routing::get, Json, Router};
use serde_json::{json, Value};

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/info", get(info))
}

async fn info(State(app): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let base = super::base_url(&app, &headers);
    let public_key = app.keys.jwks()["keys"][0].to_string();
    Json(json!([
        {"label": "Server URL", "value": base, "description": "The base URL of this import server"},
        {"label": "Version", "value": env!("CARGO_PKG_VERSION"), "description": "The bulk-import version serving these URLs"},
        {"label": "Import Kick-off URL", "value": format!("{base}/$import"), "description": "Providers POST their ping (a FHIR Parameters resource) here"},
        {"label": "Registration Endpoint", "value": format!("{base}/auth/register"), "description": "For the operator, with the admin credential: registers a provider's keys and base URL and returns the client_id to hand to the provider (providers do not call it)"},
        {"label": "Token Endpoint", "value": format!("{base}/auth/token"), "description": "Providers get access tokens here with a signed client assertion (SMART Backend Services)"},
        {"label": "JWKS URL", "value": format!("{base}/jwks"), "description": "Our public key; register it at providers so we can pull their exports"},
        {"label": "Public Key", "value": public_key, "description": "Our public key as a JWK"},
        {"label": "Import File Behavior", "value": app.job_context.destination.describe(), "description": "Where imported files are stored"},
    ]))
}
