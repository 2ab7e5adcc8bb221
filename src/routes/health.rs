//! `GET /health`: the process serves and the database answers.
use axum::{extract::State, routing::get, Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

async fn health(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    app.store.ping().await?;
    Ok(Json(json!({ "status": "ok", "runningJobs": app.job_context.jobs.running_count() })))
}
