//! `GET /admin/jobs`, `GET /admin/jobs/{id}`, `GET /admin/submissions` and `GET /admin/resources`:
//! the browser UI's jobs dashboard, job page, Bulk Submit submissions and the resource store's
//! counts, rendering `job_views` and `submission_views`. They list every provider's jobs, so they need the admin credential; errors are RFC 6749 JSON
//! like the other admin endpoints.
use axum::{
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

use super::{admin::Admin, no_store};
use crate::{
    auth::AuthError,
    imports::ImportError,
    job_views,
    state::AppState,
    submission_views,
    sync_runs::{self, SyncError},
    sync_views,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/jobs", get(list))
        .route("/admin/jobs/{id}", get(show))
        .route("/admin/audit", get(audit_trail))
        .route("/admin/submissions", get(submissions))
        .route("/admin/sync", get(sync_states))
        .route("/admin/sync/{client_id}", axum::routing::post(sync_now))
        .route("/admin/resources", get(resource_counts))
}

/// What the resource store holds: resources per type per provider.
async fn resource_counts(State(app): State<AppState>, _admin: Admin) -> Result<Response, AuthError> {
    let Some(tables) = &app.resources else {
        return Err(AuthError::NotFound(
            "no resource store: DESTINATION_TYPE does not include resource-store".into(),
        ));
    };
    let counts = tables.counts().await?;
    let store = tables.describe();
    Ok(no_store(Json(json!({ "store": store, "resources": counts })).into_response()))
}

/// Start the next pull of a registration's sync plan now: 202 with the job's status URL.
async fn sync_now(
    State(app): State<AppState>,
    _admin: Admin,
    Path(client_id): Path<String>,
    extensions: axum::http::Extensions,
    headers: axum::http::HeaderMap,
) -> Result<Response, AuthError> {
    let ctx = &app.job_context;
    let provider =
        ctx.providers.provider(&client_id).await?.ok_or_else(|| {
            AuthError::NotFound(format!("no active registration with client_id '{client_id}'"))
        })?;
    let job = match sync_runs::run_now(ctx, &provider).await {
        Ok(job) => job,
        Err(e @ (SyncError::NoPlan(_) | SyncError::Running(_) | SyncError::Starting)) => {
            return Err(AuthError::Conflict(e.to_string()))
        }
        Err(SyncError::Import(ImportError::Busy(m))) => return Err(AuthError::Busy(m)),
        Err(SyncError::Import(e)) => return Err(AuthError::InvalidRequest(e.to_string())),
        Err(SyncError::Store(e)) => return Err(e.into()),
    };
    let from = crate::http_server::peer_key(&extensions);
    crate::audit::record(
        &*app.audit,
        crate::audit::Actor::Admin(&from),
        "sync pull started",
        Some(&crate::telemetry::shown_id(&job.id)),
        Some(&client_id),
    )
    .await;
    let url = format!("{}/job/{}", super::base_url(&app, &headers), job.id);
    let mut res = (axum::http::StatusCode::ACCEPTED, Json(json!({"job_id": job.id, "status_url": url})))
        .into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&url) {
        res.headers_mut().insert(axum::http::header::CONTENT_LOCATION, v);
    }
    Ok(no_store(res))
}

async fn sync_states(State(app): State<AppState>, _admin: Admin) -> Result<Response, AuthError> {
    let sources = sync_views::list(&*app.job_context.sync).await?;
    Ok(no_store(Json(json!({ "sources": sources })).into_response()))
}

async fn submissions(State(app): State<AppState>, _admin: Admin) -> Result<Response, AuthError> {
    let ctx = &app.job_context;
    let listed = submission_views::list(&*ctx.store, &*ctx.submissions).await?;
    Ok(no_store(Json(json!({ "submissions": listed })).into_response()))
}

async fn list(State(app): State<AppState>, _admin: Admin) -> Result<Response, AuthError> {
    let jobs = job_views::list(&*app.job_context.store, app.config.jobs_max_age).await?;
    Ok(no_store(Json(json!({ "jobs": jobs })).into_response()))
}

/// Events shown by `GET /admin/audit`, newest first.
const AUDIT_PAGE: i64 = 200;

/// `?kind=refused` (only refused pings) or `?kind=others` (all but them); all by default.
#[derive(Debug, serde::Deserialize)]
struct AuditQuery {
    kind: Option<String>,
}

async fn audit_trail(
    State(app): State<AppState>,
    _admin: Admin,
    axum::extract::Query(q): axum::extract::Query<AuditQuery>,
) -> Result<Response, AuthError> {
    use crate::domain::AuditClass;
    let class = match q.kind.as_deref() {
        None | Some("" | "all") => AuditClass::All,
        Some("refused") => AuditClass::RefusedPings,
        Some("others") => AuditClass::AllButRefusedPings,
        Some(other) => {
            return Err(AuthError::InvalidRequest(format!(
                "kind must be all, refused or others, not '{other}'"
            )))
        }
    };
    let events = crate::audit::recent(&*app.audit, class, AUDIT_PAGE).await?;
    Ok(no_store(Json(json!({ "events": events })).into_response()))
}

/// `?offset=N&limit=M` of a job's file list.
#[derive(serde::Deserialize)]
struct FilesQuery {
    offset: Option<i64>,
    limit: Option<i64>,
}

async fn show(
    State(app): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<FilesQuery>,
) -> Result<Response, AuthError> {
    let mut page = job_views::FilesPage::default();
    page.offset = q.offset.unwrap_or(page.offset);
    page.limit = q.limit.unwrap_or(page.limit);
    // A job running here also shows what arrived so far, files in progress included.
    let jobs = &app.job_context.jobs;
    let running = jobs.progress(&id).map(|snapshot| job_views::Running {
        snapshot,
        throughput: jobs.throughput(&id).unwrap_or_default(),
    });
    let mut body = job_views::show(&*app.job_context.store, &id, app.config.jobs_max_age, running, page)
        .await?
        .ok_or_else(|| AuthError::NotFound(format!("no import job with id '{id}'")))?;
    // What a cancel or delete would do to what it stored, for the page's dialogs.
    body["a_stop_does"] = json!(app.config.destination.what_a_stop_does());
    // A submission's job also shows the submission, manifest by manifest.
    let ctx = &app.job_context;
    if let Some(submission) = submission_views::of_job(&*ctx.store, &*ctx.submissions, &id).await? {
        body["submission"] = submission;
    }
    Ok(no_store(Json(body).into_response()))
}
