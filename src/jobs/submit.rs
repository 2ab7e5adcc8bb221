//! The Bulk Submit intake: a submission's job takes the manifests its provider names, in the
//! order the requests came, while the engine imports the files already planned. Each request is
//! fetched (following `link` pages) into the plan, replaces or withdraws an earlier manifest, and
//! is marked done or failed with the reason; once the provider says `completed` and every request
//! is taken, the plan closes and the engine completes the job when its files are done.
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use url::Url;

use crate::{
    domain::{Job, ManifestRequest, RequestState},
    fhir::{
        bulk_submit::SubmissionStatus,
        operation_outcome::{IssueCode, OperationOutcome},
    },
    jobs::{
        context::JobContext,
        error::JobError,
        export,
        plan::{self, PlanError},
        provider_client::ProviderClient,
    },
};

/// How often the intake looks for requests besides being told of them.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Take the submission's requests until it is completed (then the plan is closed) or the job is
/// stopped.
pub async fn intake(
    ctx: &JobContext,
    client: &ProviderClient,
    job: &Job,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let look_every = LOOK_EVERY.min(ctx.config.limits.poll_interval.max(Duration::from_millis(20)));
    // Bounded by the job's time limit and its cancel: each pass takes every pending request.
    loop {
        let requests = ctx.submissions.manifest_requests(&job.id).await?;
        for request in requests.iter().filter(|r| r.state == RequestState::Pending) {
            take(ctx, client, request, cancel).await?;
        }
        let Some(submission) = ctx.submissions.submission_of_job(&job.id).await? else {
            return Err(JobError::Cancelled);
        };
        let pending = ctx.submissions.manifest_requests(&job.id).await?;
        let pending = pending.iter().any(|r| r.state == RequestState::Pending);
        match submission.status {
            SubmissionStatus::Completed if !pending => {
                plan::close(ctx, &job.id).await?;
                tracing::info!("submission completed by its provider; its plan is closed");
                return Ok(());
            }
            SubmissionStatus::Stopped => return Err(JobError::Cancelled),
            _ => {}
        }
        if !pending && cancel.run_until_cancelled(tokio::time::sleep(look_every)).await.is_none() {
            return Err(JobError::Cancelled);
        }
    }
}

/// One request: fetched and planned, or failed with why. Job-level trouble (cancel, storage)
/// comes back as an error; a bad manifest fails only its request.
async fn take(
    ctx: &JobContext,
    client: &ProviderClient,
    request: &ManifestRequest,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let outcome = match planned(ctx, client, request, cancel).await {
        Ok(()) => None,
        Err(e @ (JobError::Cancelled | JobError::Store(_) | JobError::LeaseLost)) => return Err(e),
        Err(e) => {
            let why = crate::error_text::chain(&e);
            tracing::warn!(request = request.seq, reason = %why, "a submitted manifest could not be taken");
            Some(OperationOutcome::error(IssueCode::Processing, why))
        }
    };
    let (state, json) = match &outcome {
        None => (RequestState::Done, None),
        Some(o) => {
            (RequestState::Failed, Some(serde_json::to_string(o).map_err(crate::store::StoreError::from)?))
        }
    };
    ctx.submissions.finish_manifest_request(&request.job_id, request.seq, state, json.as_deref()).await?;
    Ok(())
}

async fn planned(
    ctx: &JobContext,
    client: &ProviderClient,
    request: &ManifestRequest,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let job_id = &request.job_id;
    if let Some(old) = &request.replaces_url {
        let removed = plan::withdraw(ctx, job_id, old).await.map_err(from_plan)?;
        tracing::info!(removed, "a submitted manifest was withdrawn");
    }
    let Some(raw) = &request.manifest_url else { return Ok(()) };
    let url = Url::parse(raw).map_err(|_| JobError::Refused(format!("manifestUrl {raw} is not a URL")))?;
    if !client.base.is_trusted(&url) {
        return Err(JobError::Refused(format!(
            "manifestUrl {} is not on {}; list its origin in the registration's token_origins if it belongs to the provider",
            crate::auth::provider_base::redact(&url),
            client.base.trusted_list()
        )));
    }
    let client = &client.reaching(&request.access);
    let auth = client.manifest_auth();
    let body = export::fetch_manifest_as(client, auth, &url, cancel).await?;
    let files = export::read_manifest(client, auth, body, &url, cancel).await?.files;
    tracing::info!(files = files.len(), "submitted manifest read");
    plan::append(ctx, job_id, raw, files, false).await.map_err(from_plan)?;
    Ok(())
}

fn from_plan(e: PlanError) -> JobError {
    match e {
        PlanError::Store(e) => JobError::Store(e),
        other => JobError::Plan(other),
    }
}
