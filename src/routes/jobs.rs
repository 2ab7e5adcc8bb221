//! Import status (Ping and Pull "Status polling"), the outcome file, and cancel/remove.
//! The job id is an unguessable capability (≥128 random bits), so these need no token.
use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

use super::{
    error::{outcome_response, ApiError},
    no_store,
};
use crate::{
    fhir::operation_outcome::{IssueCode, OperationOutcome},
    jobs::reaper::remove_job,
    state::AppState,
    store::jobs::{is_job_id, FileCounts, FileTotals, Job, JobState},
    time_util::instant,
};

/// Seconds we suggest between status polls.
const POLL_RETRY_AFTER_SECS: u64 = 2;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/job/{id}", get(status).delete(remove))
        .route("/job/{id}/import-outcome.ndjson", get(outcome_file))
}

async fn find(app: &AppState, id: &str) -> Result<Job, ApiError> {
    let found = if is_job_id(id) { app.store.job(id).await? } else { None };
    found.ok_or_else(|| ApiError::NotFound(format!("cannot find import job with id \"{id}\"")))
}

async fn status(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(live) = app.jobs.progress(&id) {
        return Ok(no_store(in_progress(live.state, live.text, live.files)));
    }
    let job = find(&app, &id).await?;
    let outcome_url = format!("{}/job/{}/import-outcome.ndjson", super::base_url(&app, &headers), job.id);
    let res = match job.state {
        JobState::Completed => {
            let totals = app.store.file_totals(&job.id).await?;
            let count = outcome_count(&job, totals.outcomes);
            let result = completion_text(&totals);
            let mut res = Json(json!({
                "transactionTime": instant(job.created_at),
                "requiresAccessToken": false,
                "outcome": [{ "type": "OperationOutcome", "url": outcome_url, "count": count }],
                "extension": {
                    "result": if totals.has_errors() { "completed-with-errors" } else { "completed" },
                    "files": totals.files,
                    "failedFiles": totals.failed,
                    "providerErrors": totals.provider_errors,
                    "resources": totals.resources,
                    "resourcesByType": app.store.type_counts(&job.id).await?,
                    "completedAt": job.completed_at.map(instant),
                }
            }))
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&result) {
                res.headers_mut().insert(HeaderName::from_static("x-status"), v);
            }
            res
        }
        JobState::Failed => {
            let reason = job.failure.clone().unwrap_or_else(|| "the import failed".into());
            let mut oo = OperationOutcome::error(IssueCode::Exception, format!("import failed: {reason}"));
            oo.issue.extend(OperationOutcome::information(format!("per-file outcomes: {outcome_url}")).issue);
            outcome_response(StatusCode::INTERNAL_SERVER_ERROR, &oo)
        }
        JobState::Queued | JobState::Exporting | JobState::Importing => {
            let files = if job.state == JobState::Importing {
                app.store.file_counts(&job.id).await?
            } else {
                FileCounts::default()
            };
            in_progress(job.state, job.progress, files)
        }
    };
    Ok(no_store(res))
}

/// 202 with `X-Progress` (percent) and `X-Status` (text), from memory or from the store alike.
fn in_progress(state: JobState, provider_text: Option<String>, files: FileCounts) -> Response {
    let (percent, text) = if state == JobState::Importing {
        let text = if files.total > 0 {
            format!("importing: {} of {} files done", files.finished, files.total)
        } else {
            "finishing".to_string()
        };
        (files.percent(), text)
    } else {
        (0.0, provider_text.unwrap_or_else(|| "waiting for the provider's export".into()))
    };
    let mut res = StatusCode::ACCEPTED.into_response();
    let h = res.headers_mut();
    // X-Progress stays a bare number: the sample pinger parseFloat()s it.
    h.insert(
        HeaderName::from_static("x-progress"),
        HeaderValue::from_str(&percent.to_string()).expect("a number is a header"),
    );
    let text: String = text.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).take(100).collect();
    if let Ok(v) = HeaderValue::from_str(&text) {
        h.insert(HeaderName::from_static("x-status"), v);
    }
    h.insert(header::RETRY_AFTER, HeaderValue::from(POLL_RETRY_AFTER_SECS));
    res
}

/// "completed", or "completed with errors: …" saying what went wrong, for `X-Status` and people.
pub fn completion_text(totals: &FileTotals) -> String {
    if !totals.has_errors() {
        return "completed".into();
    }
    let mut parts = Vec::new();
    if totals.failed > 0 {
        parts.push(format!("{} of {} files failed", totals.failed, totals.files));
    }
    if totals.provider_errors > 0 {
        parts.push(format!("the provider reported {} error(s)", totals.provider_errors));
    }
    format!("completed with errors: {}", parts.join("; "))
}

/// How many lines `outcome_lines` gives, from counts alone (no outcome text is read).
fn outcome_count(job: &Job, file_outcomes: i64) -> i64 {
    let lines = file_outcomes + i64::from(job.failure.is_some());
    if lines == 0 && job.state == JobState::Completed {
        1
    } else {
        lines
    }
}

/// One OperationOutcome per finished file, plus the job's failure; never empty once finished.
async fn outcome_lines(app: &AppState, job: &Job) -> Result<Vec<String>, ApiError> {
    let mut lines = app.store.file_outcomes(&job.id).await?;
    if let Some(reason) = &job.failure {
        let oo = OperationOutcome::error(IssueCode::Exception, format!("import failed: {reason}"));
        lines.push(serde_json::to_string(&oo).unwrap_or_default());
    }
    if lines.is_empty() && job.state == JobState::Completed {
        let oo = OperationOutcome::information("the export listed no files; nothing was imported");
        lines.push(serde_json::to_string(&oo).unwrap_or_default());
    }
    Ok(lines)
}

async fn outcome_file(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = find(&app, &id).await?;
    let mut body = String::new();
    for line in outcome_lines(&app, &job).await? {
        body.push_str(&line);
        body.push('\n');
    }
    let mut res = body.into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
    Ok(no_store(res))
}

async fn remove(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = find(&app, &id).await?;
    remove_job(&app.job_context, &job.id).await.map_err(|e| ApiError::Internal(super::error::chain(&e)))?;
    tracing::info!(job = %crate::telemetry::shown_id(&job.id), "import job removed on request");
    let oo = OperationOutcome::single(
        crate::fhir::operation_outcome::Severity::Information,
        IssueCode::Processing,
        format!("import job {} was cancelled and its files removed", job.id),
    );
    Ok(outcome_response(StatusCode::ACCEPTED, &oo))
}
