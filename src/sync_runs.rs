//! Pulls this server starts itself: a registration's sync plan run now (an operator asks) or
//! when due (the scheduler). Each is a dynamic export of the plan's export with `_since` where its
//! last whole import ended (none the first time), through the same engine, leases and limits as
//! a ping. With several replicas a due pull runs once: it is claimed in the database, by moving
//! the plan's next time on, before it starts.
use std::time::Duration;

use crate::{
    domain::{Job, JobState, Provider},
    fhir::parameters::{ExportType, ImportRequest},
    imports::{ImportError, Imports},
    jobs::context::JobContext,
    store::StoreError,
    telemetry::shown_id,
    time_util::now_unix,
};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("registration '{0}' has no sync plan (register it with \"sync\": {{\"export_url\": …}})")]
    NoPlan(String),
    #[error("a pull of this export is still running (job {0}…); it is not started twice")]
    Running(String),
    #[error("a pull of this export is being started right now (elsewhere); it is not started twice")]
    Starting,
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("storage failed")]
    Store(#[from] StoreError),
}

/// Start the next pull of `provider`'s sync plan.
pub async fn run_now(ctx: &JobContext, provider: &Provider) -> Result<Job, SyncError> {
    let plan = provider.sync().ok_or_else(|| SyncError::NoPlan(provider.client_id.clone()))?;
    // Looking for a running pull and starting one are a pair no other start may come between:
    // here (an operator's request beside the schedule), and on other replicas.
    let _here = ctx.sync_starts.lock().await;
    let name = format!("bulk-import sync start {}", provider.client_id);
    let Some(_everywhere) = ctx.exclusive.try_exclusive(&name).await? else {
        return Err(SyncError::Starting);
    };
    let summaries = ctx.store.job_summaries().await?;
    let running = summaries.iter().find(|j| {
        j.client_id == provider.client_id
            && j.export_url == plan.export_url
            && !JobState::parse(&j.state).is_finished()
    });
    if let Some(j) = running {
        return Err(SyncError::Running(shown_id(&j.id)));
    }
    let state = ctx.sync.sync_state(&provider.client_id, &plan.source().key()).await?;
    let since = state.and_then(|s| s.since);
    let request = ImportRequest {
        export_url: plan.export_url.clone(),
        export_type: ExportType::Dynamic,
        kickoff: plan.kickoff(since.as_deref()),
    };
    let job = Imports { jobs: ctx }.start_pull(provider, request).await?;
    tracing::info!(job = %shown_id(&job.id), client_id = %provider.client_id, since = since.as_deref().unwrap_or("the beginning"), "sync pull started");
    Ok(job)
}

/// Start every due pull, each once across replicas; how many started here.
pub async fn run_due(ctx: &JobContext) -> Result<usize, StoreError> {
    let now = now_unix();
    let mut started = 0;
    for provider in ctx.providers.due_syncs(now).await? {
        let (Some(plan), Some(was)) = (provider.sync(), provider.sync_next_at) else { continue };
        let Some(every) = plan.every_secs else { continue };
        // Missed runs (the server was down) are not made up: the next is one interval from now.
        if !ctx.providers.claim_sync(&provider.client_id, was, now + every).await? {
            continue;
        }
        match run_now(ctx, &provider).await {
            Ok(_) => started += 1,
            // No room now (the job caps) or the store faltered: tried again at the next look,
            // not an interval later.
            Err(e @ (SyncError::Import(ImportError::Busy(_)) | SyncError::Store(_))) => {
                let soon = now + ctx.config.sync_check_interval.as_secs().max(1) as i64;
                ctx.providers.claim_sync(&provider.client_id, now + every, soon).await?;
                tracing::warn!(client_id = %provider.client_id, reason = %crate::error_text::chain(&e), "a scheduled sync pull could not start yet; it is tried again shortly");
            }
            Err(e) => {
                tracing::warn!(client_id = %provider.client_id, reason = %crate::error_text::chain(&e), "a scheduled sync pull was not started; the next is due in {every} s")
            }
        }
    }
    Ok(started)
}

/// Look for due pulls every `every` until the server stops.
pub async fn schedule(ctx: JobContext, every: Duration) {
    let shutdown = ctx.jobs.shutdown.clone();
    // Bounded by the shutdown: each pass is one look.
    loop {
        if let Err(e) = run_due(&ctx).await {
            tracing::error!(error = %crate::error_text::chain(&e), "looking for due sync pulls failed; will try again");
        }
        if shutdown.run_until_cancelled(tokio::time::sleep(every)).await.is_none() {
            break;
        }
    }
}
