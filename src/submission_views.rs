//! Bulk Submit submissions as the dashboard and the command line's `submissions` show them: each
//! with its submitter, status and progress, and every manifest it named with what became of it
//! (files listed, imported, failed). Manifest URLs are shown without their query, which may be a
//! credential; the job id is the dashboard's link to the job page.
use serde_json::{json, Value};

use crate::{
    auth::provider_base::redact,
    domain::{ManifestRequest, PlanManifest, RequestState, Submission},
    store::{
        job_pages::ManifestFiles,
        job_store::{JobStore, SubmissionStore},
        StoreError,
    },
    time_util::instant,
};

/// Submissions listed at most.
pub const MAX_LISTED: i64 = 200;

/// The newest submissions of every client first.
pub async fn list(store: &dyn JobStore, subs: &dyn SubmissionStore) -> Result<Vec<Value>, StoreError> {
    let mut out = Vec::new();
    for s in subs.recent_submissions(MAX_LISTED).await? {
        out.push(describe(store, subs, &s).await?);
    }
    Ok(out)
}

/// The submission a job imports, if it is one.
pub async fn of_job(
    store: &dyn JobStore,
    subs: &dyn SubmissionStore,
    job_id: &str,
) -> Result<Option<Value>, StoreError> {
    match subs.submission_of_job(job_id).await? {
        Some(s) => Ok(Some(describe(store, subs, &s).await?)),
        None => Ok(None),
    }
}

async fn describe(
    store: &dyn JobStore,
    subs: &dyn SubmissionStore,
    s: &Submission,
) -> Result<Value, StoreError> {
    let job = store.job(&s.job_id).await?;
    let counts = store.file_counts(&s.job_id).await?;
    let requests = subs.manifest_requests(&s.job_id).await?;
    let plan = store.manifests(&s.job_id).await?;
    // Counted in the database: a submission of 50,000 files costs a poll what one of 5 does.
    let files = store.manifest_files(&s.job_id).await?;
    let manifests: Vec<Value> = requests.iter().map(|r| describe_request(r, &plan, &files)).collect();
    Ok(json!({
        "submission_id": s.submission_id,
        "client_id": s.client_id,
        "submitter": {"system": s.submitter_system, "value": s.submitter_value},
        "status": s.status.as_str(),
        "job_id": s.job_id,
        "job_state": job.as_ref().map(|j| j.state.as_str()),
        "progress_percent": if counts.total == 0 { 0.0 } else { counts.percent() },
        "files_total": counts.total,
        "files_finished": counts.finished,
        "created_at": instant(s.created_at),
        "updated_at": instant(s.updated_at),
        "manifests": manifests,
    }))
}

fn shown(raw: Option<&str>) -> Option<String> {
    raw.map(|r| url::Url::parse(r).map(|u| redact(&u)).unwrap_or_else(|_| "(not a URL)".into()))
}

fn describe_request(r: &ManifestRequest, plan: &[PlanManifest], files: &[ManifestFiles]) -> Value {
    let listed = plan
        .iter()
        .rev()
        .find(|m| Some(m.url.as_str()) == r.manifest_url.as_deref())
        .and_then(|m| files.iter().find(|f| f.manifest_idx == m.idx).copied())
        .unwrap_or_default();
    let failure = match (r.state, r.outcome.as_deref()) {
        (RequestState::Failed, Some(o)) => {
            crate::fhir::operation_outcome::OperationOutcome::summarize(o.as_bytes())
        }
        _ => None,
    };
    json!({
        "seq": r.seq,
        "manifest_url": shown(r.manifest_url.as_deref()),
        "replaces": shown(r.replaces_url.as_deref()),
        "state": r.state.as_str(),
        "failure": failure,
        "files": listed.files,
        "imported": listed.done,
        "failed": listed.failed,
        "withdrawn": listed.withdrawn,
        "requested_at": instant(r.added_at),
    })
}
