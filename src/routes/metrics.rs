//! `GET /metrics`: the Prometheus text exposition (see `metrics.rs` for what it holds). It shows
//! counts only, no ids or URLs, so it is open like `/health`; keep it off the public internet
//! with the rest of the operator endpoints if that matters to you.
use axum::{
    extract::State,
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use super::error::ApiError;
use crate::{domain::JobState, metrics::StateLabel, state::AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let ctx = &app.job_context;
    let m = &ctx.metrics;
    // A state with no jobs left reads 0, not its last count.
    for state in
        [JobState::Queued, JobState::Exporting, JobState::Importing, JobState::Completed, JobState::Failed]
    {
        m.jobs.get_or_create(&StateLabel { state: state.as_str().into() }).set(0);
    }
    for (state, n) in ctx.store.job_state_counts().await? {
        m.jobs.get_or_create(&StateLabel { state }).set(n);
    }
    m.jobs_running.set(ctx.jobs.active_count() as i64);
    m.jobs_waiting.set(ctx.jobs.waiting_count() as i64);
    let mut res = m.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(res)
}
