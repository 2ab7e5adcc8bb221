//! Import status (Ping and Pull "Status polling"), the outcome file, and cancel/remove, rendered
//! from the imports service. A ping-and-pull job's id is an unguessable capability (≥128 random
//! bits), so these need no token. A Bulk Submit job's data belongs to the client that submitted
//! it: here only that client's access token or the admin credential reach it (else 404, as for
//! no job); the client's own status URL is `/bulk-submit-status/{id}`.
use axum::{
    extract::{FromRequestParts, Path, State},
    http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};

use super::{
    error::{outcome_response, ApiError},
    no_store,
};
use crate::{
    fhir::operation_outcome::{IssueCode, OperationOutcome, Severity},
    imports::{ImportError, Imports, StatusView},
    state::AppState,
};

/// Seconds we suggest between status polls.
const POLL_RETRY_AFTER_SECS: u64 = 2;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/job/{id}", get(status).delete(remove))
        .route("/job/{id}/import-outcome.ndjson", get(outcome_file))
        .route("/job/{id}/cancel", axum::routing::post(cancel))
}

fn imports(app: &AppState) -> Imports<'_> {
    Imports { jobs: &app.job_context }
}

/// A job id from a `/job/{id}` path the caller may reach: any ping-and-pull job; a Bulk Submit
/// job only with the operator's admin credential or the submitting client's access token (else
/// 404, as for no job). A refused token counts as a failed admin guess from that address, so the
/// link is no oracle. A job running here is told apart without a database round trip per poll.
struct JobLink(String);

impl FromRequestParts<AppState> for JobLink {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        // `Some(submitter)` for a Bulk Submit job (its client, when its record was read).
        let submitted = match app.job_context.jobs.is_submission(&id) {
            Some(known) => known.then_some(None),
            None => {
                let job = imports(app).find(&id).await?;
                (job.export_type == crate::fhir::parameters::ExportType::Submit)
                    .then_some(Some(job.client_id))
            }
        };
        let Some(submitter) = submitted else { return Ok(JobLink(id)) };
        let address = crate::http_server::peer_key(&parts.extensions);
        let failures = &app.auth_failures.admin_address;
        if let Err(wait) = failures.check(&address) {
            let message = "too many failed credentials from this address; try again later".to_string();
            return Err(ApiError::TooManyRequests { message, retry_after_secs: wait.as_secs().max(1) });
        }
        let presented = crate::auth::bearer::bearer_token(&parts.headers).ok();
        let allowed = match presented {
            Some(token) if super::admin::is_admin_token(app, token) => true,
            Some(token) => match crate::auth::access_token::verify(&app.keys, token) {
                // A job running here was checked without its record: read it for its client.
                Ok(claims) => match submitter {
                    Some(client_id) => claims.client_id == client_id,
                    None => imports(app).find(&id).await?.client_id == claims.client_id,
                },
                Err(_) => false,
            },
            None => false,
        };
        if allowed {
            return Ok(JobLink(id));
        }
        if presented.is_some() {
            failures.failed(&address, "a token that is not the submitter's on a submission's job link");
        }
        Err(ImportError::NotFound(id).into())
    }
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        match e {
            e @ ImportError::NotFound(_) => ApiError::NotFound(e.to_string()),
            ImportError::Store(e) => ApiError::Store(e),
            ImportError::Job(e @ crate::jobs::error::JobError::StillStopping) => {
                ApiError::Unavailable { message: e.to_string(), retry_after_secs: 5 }
            }
            e @ (ImportError::Job(_) | ImportError::BadRegistration(_)) => {
                ApiError::Internal(super::error::chain(&e))
            }
            e @ ImportError::NotTheProviders(_) => ApiError::BadRequest(e.to_string()),
            ImportError::Busy(message) => ApiError::TooManyRequests { message, retry_after_secs: 60 },
            e @ ImportError::Finished(_) => ApiError::Conflict(e.to_string()),
            e @ ImportError::Destination(_) => ApiError::Internal(super::error::chain(&e)),
        }
    }
}

async fn status(
    State(app): State<AppState>,
    JobLink(id): JobLink,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let outcome_url = format!("{}/job/{id}/import-outcome.ndjson", super::base_url(&app, &headers));
    let res = match imports(&app).status(&id, &outcome_url).await? {
        StatusView::InProgress { percent, text } => in_progress(percent, &text),
        StatusView::Completed { body, summary } => {
            let mut res = Json(body).into_response();
            if let Ok(v) = HeaderValue::from_str(&summary) {
                res.headers_mut().insert(HeaderName::from_static("x-status"), v);
            }
            res
        }
        StatusView::Failed(oo) => outcome_response(StatusCode::INTERNAL_SERVER_ERROR, &oo),
        // Gone on purpose: a poller learns that, not just "not found".
        StatusView::Cancelled(oo) => outcome_response(StatusCode::GONE, &oo),
    };
    Ok(no_store(res))
}

/// 202 with `X-Progress` (percent) and `X-Status` (text).
fn in_progress(percent: f64, text: &str) -> Response {
    let mut res = StatusCode::ACCEPTED.into_response();
    let h = res.headers_mut();
    // X-Progress stays a bare number: the sample pinger parseFloat()s it.
    h.insert(
        HeaderName::from_static("x-progress"),
        HeaderValue::from_str(&percent.to_string()).expect("a number is a header"),
    );
    let text: String = text.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).take(200).collect();
    if let Ok(v) = HeaderValue::from_str(&text) {
        h.insert(HeaderName::from_static("x-status"), v);
    }
    h.insert(header::RETRY_AFTER, HeaderValue::from(POLL_RETRY_AFTER_SECS));
    res
}

async fn outcome_file(State(app): State<AppState>, JobLink(id): JobLink) -> Result<Response, ApiError> {
    let mut body = String::new();
    for line in imports(&app).outcome_lines(&id).await? {
        body.push_str(&line);
        body.push('\n');
    }
    let mut res = body.into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
    Ok(no_store(res))
}

async fn cancel(
    State(app): State<AppState>,
    extensions: axum::http::Extensions,
    JobLink(id): JobLink,
) -> Result<Response, ApiError> {
    imports(&app).cancel(&id).await?;
    let from = crate::http_server::peer_key(&extensions);
    let job = crate::telemetry::shown_id(&id);
    crate::audit::record(&*app.audit, crate::audit::Actor::JobLink(&from), "job cancelled", Some(&job), None)
        .await;
    let oo = OperationOutcome::single(
        Severity::Information,
        IssueCode::Processing,
        format!(
            "the import was cancelled: {}; its record stays until it expires (DELETE removes it now)",
            app.config.destination.what_a_stop_does()
        ),
    );
    Ok(outcome_response(StatusCode::OK, &oo))
}

async fn remove(
    State(app): State<AppState>,
    extensions: axum::http::Extensions,
    JobLink(id): JobLink,
) -> Result<Response, ApiError> {
    let job = imports(&app).remove(&id).await?;
    let from = crate::http_server::peer_key(&extensions);
    let shown = crate::telemetry::shown_id(&id);
    crate::audit::record(&*app.audit, crate::audit::Actor::JobLink(&from), "job deleted", Some(&shown), None)
        .await;
    let oo = OperationOutcome::single(
        Severity::Information,
        IssueCode::Processing,
        format!(
            "import job {} was {}deleted: {}; its record and outcomes are gone",
            job.id,
            if job.state.is_finished() { "" } else { "cancelled and " },
            app.config.destination.what_a_stop_does()
        ),
    );
    Ok(outcome_response(StatusCode::ACCEPTED, &oo))
}
