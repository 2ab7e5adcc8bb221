//! Incremental sync's memory: when a ping-and-pull job ends, what its export came to is kept per
//! source (`SyncState`), beyond the job's own retention, so the next pull of that export may start
//! from its `transactionTime`. Only a job that imported every file of the whole source since that
//! point moves it: one with a failed file, or narrowed by its kick-off (a patient, `_until`, a
//! later `_since`), would skip data the next pull never asks for again.
use crate::{
    domain::{Job, SyncSource, SyncState},
    fhir::parameters::ExportType,
    jobs::context::JobContext,
    store::StoreError,
    time_util::now_unix,
};

/// How a job ended, for its source's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Completed,
    Failed,
}

/// Keep how job `id` ended; trouble is logged, it never changes the job's own result.
pub async fn record(ctx: &JobContext, id: &str, ended: Ended) {
    if let Err(e) = try_record(ctx, id, ended).await {
        tracing::warn!(error = %crate::error_text::chain(&e), "could not record the export's sync state");
    }
}

/// Whether the job brought everything its source has changed since the source's `since`: no
/// kick-off parameter narrowed it (a patient, `_until`, `_elements`, …), and it started no later
/// than that point (no `_since`, or that very one). Only then may it move the point on.
async fn covers_the_source(ctx: &JobContext, job: &Job, source: &SyncSource) -> Result<bool, StoreError> {
    let narrowed = job.kickoff.iter().any(|p| !WHOLE_SOURCE_PARAMETERS.contains(&p.name.as_str()));
    if narrowed {
        return Ok(false);
    }
    let Some(from) = job.kickoff.iter().find(|p| p.name == "_since") else { return Ok(true) };
    let kept = ctx.sync.sync_state(&job.client_id, &source.key()).await?;
    Ok(kept.and_then(|k| k.since).as_deref() == Some(from.value.as_str()))
}

/// Kick-off parameters that choose the source (`_type`, `_typeFilter`), where it starts, or only
/// the format: none leaves anything of the source out.
const WHOLE_SOURCE_PARAMETERS: &[&str] = &["_type", "_typeFilter", "_since", "_outputFormat"];

async fn try_record(ctx: &JobContext, id: &str, ended: Ended) -> Result<(), StoreError> {
    let Some(job) = ctx.store.job(id).await? else { return Ok(()) };
    // A submission is the provider's push, not an export of ours to continue.
    if job.export_type == ExportType::Submit {
        return Ok(());
    }
    let totals = ctx.store.file_totals(id).await?;
    let result = match ended {
        Ended::Failed => "failed",
        Ended::Completed if totals.has_errors() => "completed-with-errors",
        Ended::Completed => "completed",
    };
    let source = SyncSource::of(&job.export_url, &job.kickoff);
    let whole = result == "completed" && covers_the_source(ctx, &job, &source).await?;
    let since = if whole { ctx.store.transaction_time(id).await? } else { None };
    let now = now_unix();
    let state = SyncState {
        client_id: job.client_id,
        source: source.key(),
        export_url: source.export_url,
        types: source.types,
        type_filters: source.type_filters,
        since,
        last_success_at: whole.then_some(now),
        last_job_id: job.id,
        last_result: result.into(),
        last_at: now,
        files: totals.files,
        failed_files: totals.failed,
        resources: totals.resources,
    };
    ctx.sync.record_sync(&state).await
}
