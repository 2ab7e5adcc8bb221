//! Probes for operators and orchestrators: `GET /health/live` (the process serves; touches
//! nothing), `GET /health` (ready: the database answers too) and `GET /version`.
use axum::{extract::State, routing::get, Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(ready))
        .route("/health/live", get(live))
        .route("/version", get(version))
}

async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    app.job_context.store.ping().await?;
    Ok(Json(json!({ "status": "ok", "runningJobs": app.job_context.jobs.running_count() })))
}

async fn version() -> Json<Value> {
    Json(json!({ "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") }))
}
