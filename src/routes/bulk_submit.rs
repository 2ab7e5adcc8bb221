//! Bulk Submit (HL7 Bulk Data IG, STU4 ballot): `POST /$bulk-submit` answers 200 once a request
//! is taken into its submission; `POST /$bulk-submit-status` answers 202 with the status URL,
//! where polls get 202 with `X-Progress` until the submission is done, then 200 with the status
//! manifest; each request's outcome lines are served under it; DELETE removes the submission.
//! Every call needs a `system/bulk-submit` token, and a client sees only its own submissions.
use axum::{
    body::Bytes,
    extract::{
        rejection::{BytesRejection, QueryRejection},
        Path, Query, State,
    },
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};

use super::{
    caller::SubmitCaller,
    error::{outcome_response, ApiError},
    media_type, no_store,
};
use crate::{
    fhir::{
        bulk_submit::{StatusRequest, SubmitRequest},
        operation_outcome::OperationOutcome,
    },
    state::AppState,
    submissions::{StatusUrls, SubmissionError, SubmissionView, Submissions},
};

/// Seconds we suggest between status polls.
const POLL_RETRY_AFTER_SECS: u64 = 2;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/$bulk-submit", post(submit))
        .route("/$bulk-submit-status", post(status_request))
        .route("/bulk-submit-status/{job}", get(status).delete(remove))
        .route("/bulk-submit-status/{job}/outcome/{seq}", get(outcome_file))
}

impl From<SubmissionError> for ApiError {
    fn from(e: SubmissionError) -> Self {
        match e {
            e @ SubmissionError::UnknownSubmitter(_) => ApiError::Forbidden(e.to_string()),
            e @ SubmissionError::NotFound(_) => ApiError::NotFound(e.to_string()),
            e @ (SubmissionError::Closed { .. } | SubmissionError::Duplicate(_)) => {
                ApiError::Conflict(e.to_string())
            }
            e @ (SubmissionError::NotTheProviders(_) | SubmissionError::BadKey(_)) => {
                ApiError::BadRequest(e.to_string())
            }
            SubmissionError::Busy(message) => ApiError::TooManyRequests { message, retry_after_secs: 60 },
            SubmissionError::Store(e) => ApiError::Store(e),
            SubmissionError::Import(e) => e.into(),
        }
    }
}

fn submissions(app: &AppState) -> Submissions<'_> {
    Submissions { jobs: &app.job_context }
}

/// Parameters as JSON: both FHIR's media type and plain JSON (the SMART provider sends that).
fn body_of(
    app: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    let media = media_type(headers);
    if media != "application/fhir+json" && media != "application/json" {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body must be a FHIR Parameters resource sent as application/fhir+json or application/json (Content-Type was: '{media}')"
        )));
    }
    body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => ApiError::PayloadTooLarge(format!(
            "the body is larger than {} bytes (MAX_REQUEST_BODY_BYTES)",
            app.config.limits.max_body_bytes
        )),
        other => ApiError::BadRequest(other.body_text()),
    })
}

async fn submit(
    State(app): State<AppState>,
    caller: SubmitCaller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if let Err(wait) = app.submit_budget.take(&caller.provider.client_id) {
        return Err(ApiError::TooManyRequests {
            message: format!(
                "more than {} $bulk-submit requests from this client in a minute (SUBMIT_REQUESTS_PER_MINUTE); try again later",
                app.config.limits.submit_requests_per_minute
            ),
            retry_after_secs: wait.as_secs().max(1),
        });
    }
    let body = body_of(&app, &headers, body)?;
    let request = SubmitRequest::parse(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let submission = submissions(&app).submit(&caller.provider, request).await?;
    let text = format!("submission '{}' is {}", submission.submission_id, submission.status.as_str());
    Ok(outcome_response(StatusCode::OK, &OperationOutcome::information(text)).into_response())
}

async fn status_request(
    State(app): State<AppState>,
    caller: SubmitCaller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_of(&app, &headers, body)?;
    let request = StatusRequest::parse(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let submitter = (request.submitter.system.as_deref(), request.submitter.value.as_str());
    let submission = submissions(&app).find(&caller.provider, submitter, &request.submission_id).await?;
    let location = format!("{}/bulk-submit-status/{}", super::base_url(&app, &headers), submission.job_id);
    let mut res = outcome_response(
        StatusCode::ACCEPTED,
        &OperationOutcome::information(format!("poll {location} for the submission's status")),
    );
    res.headers_mut().insert(
        header::CONTENT_LOCATION,
        HeaderValue::from_str(&location).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok(no_store(res.into_response()))
}

/// `?page=N` of a status manifest in pages.
#[derive(serde::Deserialize)]
struct PageQuery {
    page: Option<usize>,
}

async fn status(
    State(app): State<AppState>,
    caller: SubmitCaller,
    Path(job): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("page: {}", e.body_text())))?;
    let service = submissions(&app);
    let submission = service.of_job(&caller.provider, &job).await?;
    let base = format!("{}/bulk-submit-status/{job}", super::base_url(&app, &headers));
    let urls =
        StatusUrls { outcome: &|seq| format!("{base}/outcome/{seq}"), page: &|n| format!("{base}?page={n}") };
    let res = match service.status(&submission, query.page.unwrap_or(0), &urls).await? {
        SubmissionView::InProgress { percent, text } => {
            let mut res = StatusCode::ACCEPTED.into_response();
            let h = res.headers_mut();
            // A percentage first: readers find it with /(\d+)%/.
            let progress: String = format!("{}% {text}", percent.floor())
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control())
                .take(200)
                .collect();
            if let Ok(v) = HeaderValue::from_str(&progress) {
                h.insert(HeaderName::from_static("x-progress"), v);
            }
            h.insert(header::RETRY_AFTER, HeaderValue::from(POLL_RETRY_AFTER_SECS));
            res
        }
        SubmissionView::Done(manifest) => Json(manifest).into_response(),
        SubmissionView::Failed(oo) => {
            outcome_response(StatusCode::INTERNAL_SERVER_ERROR, &oo).into_response()
        }
    };
    Ok(no_store(res))
}

async fn outcome_file(
    State(app): State<AppState>,
    caller: SubmitCaller,
    Path((job, seq)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    let service = submissions(&app);
    let submission = service.of_job(&caller.provider, &job).await?;
    let mut body = String::new();
    for line in service.request_outcome(&submission, seq).await? {
        body.push_str(&line.to_string());
        body.push('\n');
    }
    let mut res = body.into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
    Ok(no_store(res))
}

async fn remove(
    State(app): State<AppState>,
    caller: SubmitCaller,
    Path(job): Path<String>,
) -> Result<Response, ApiError> {
    let submission = submissions(&app).of_job(&caller.provider, &job).await?;
    crate::imports::Imports { jobs: &app.job_context }.remove(&submission.job_id).await?;
    let text = format!("submission '{}' and its data were removed", submission.submission_id);
    Ok(outcome_response(StatusCode::ACCEPTED, &OperationOutcome::information(text)).into_response())
}
