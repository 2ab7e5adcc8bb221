//! `GET /health`: the process serves and the database answers.
use axum::{extract::State, routing::get, Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

async fn health(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    sqlx::query("SELECT 1").execute(app.store.pool()).await.map_err(crate::store::StoreError::from)?;
    Ok(Json(json!({ "status": "ok", "runningJobs": app.jobs.running_count() })))
}
