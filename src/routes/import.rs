//! `POST /$import` (Ping and Pull import, "Ping request"): authenticate, check headers and body,
//! hand the request to the imports service (which binds `exportUrl` to the caller's registration
//! and stores the job) and answer 202 at once.
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};

use super::{
    caller::Caller,
    error::{outcome_response, ApiError},
    media_type,
};
use crate::{
    audit::{self, Actor},
    fhir::{operation_outcome::OperationOutcome, parameters::ImportRequest},
    imports::{ImportError, Imports},
    state::AppState,
    telemetry::shown_id,
};

/// What we ask an over-eager pinger to wait before trying again.
const BUSY_RETRY_AFTER_SECS: u64 = 60;

pub fn routes() -> Router<AppState> {
    Router::new().route("/$import", post(import))
}

fn check_accept(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(raw) = headers.get(header::ACCEPT) else {
        return Ok(());
    };
    let raw = raw.to_str().unwrap_or_default();
    let ok = raw.split(',').map(|m| m.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).any(|m| {
        matches!(m.as_str(), "application/fhir+json" | "application/json" | "application/*" | "*/*")
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(format!(
            "only \"application/fhir+json\" responses are available (Accept was: {raw})"
        )))
    }
}

fn check_prefer(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(raw) = headers.get("prefer") else {
        return Ok(());
    };
    let raw = raw.to_str().unwrap_or_default();
    if raw.split(',').any(|p| p.trim().eq_ignore_ascii_case("respond-async")) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "only \"respond-async\" is supported in the Prefer header (received: {raw})"
        )))
    }
}

pub(super) fn check_content_type(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if app.config.json_content_types.contains(&media_type(headers)) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "the body must be a FHIR Parameters resource sent as one of: {} (Content-Type was: '{}')",
            app.config.json_content_types.join(", "),
            headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default()
        )))
    }
}

/// Every ping, accepted or refused, is in the audit trail with its reason.
async fn import(
    State(app): State<AppState>,
    caller: Result<Caller, ApiError>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let from = crate::http_server::peer_key(&extensions);
    let client_id = caller.as_ref().ok().map(|c| c.provider.client_id.clone());
    let actor = match &client_id {
        Some(id) => Actor::Provider(id, &from),
        None => Actor::Unknown(&from),
    };
    let result = match caller {
        Ok(caller) => accept(&app, caller, headers, body).await,
        Err(e) => Err(e),
    };
    match &result {
        Ok((_, job)) => audit::record(&*app.audit, actor, "ping accepted", Some(&shown_id(job)), None).await,
        Err(e) => {
            audit::record(&*app.audit, actor, crate::domain::PING_REFUSED, None, Some(&e.to_string())).await
        }
    }
    result.map(|(res, _)| res)
}

/// The ping's response and its job id.
async fn accept(
    app: &AppState,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Response, String), ApiError> {
    check_accept(&headers)?;
    check_prefer(&headers)?;
    check_content_type(app, &headers)?;
    let body = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => ApiError::PayloadTooLarge(format!(
            "the body is larger than {} bytes (MAX_REQUEST_BODY_BYTES)",
            app.config.limits.max_body_bytes
        )),
        other => ApiError::BadRequest(other.body_text()),
    })?;
    let request = ImportRequest::parse(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let job = Imports { jobs: &app.job_context }.start_pull(&caller.provider, request).await.map_err(
        |e| match e {
            e @ ImportError::NotTheProviders(_) => ApiError::BadRequest(e.to_string()),
            ImportError::Busy(message) => {
                ApiError::TooManyRequests { message, retry_after_secs: BUSY_RETRY_AFTER_SECS }
            }
            other => other.into(),
        },
    )?;
    tracing::debug!(job_id = %job.id, job = %crate::telemetry::shown_id(&job.id), "full job id");
    tracing::info!(job = %crate::telemetry::shown_id(&job.id), client_id = %job.client_id, scope = %caller.claims.scope, export_type = job.export_type.as_str(), "import job accepted");
    let location = format!("{}/job/{}", super::base_url(app, &headers), job.id);
    let mut res = outcome_response(
        StatusCode::ACCEPTED,
        &OperationOutcome::information(format!("import job accepted; poll {location} for its status")),
    );
    res.headers_mut().insert(
        header::CONTENT_LOCATION,
        HeaderValue::from_str(&location).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok((res.into_response(), job.id))
}
