//! Incremental sync's memory: when a ping-and-pull job ends, what its export came to is kept per
//! source (`SyncState`), beyond the job's own retention, so the next pull of that export may start
//! from its `transactionTime`. Only a job that imported every file moves that point: one with a
//! failed file would skip the data that file held.
use crate::{
    domain::{SyncSource, SyncState},
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
    let whole = result == "completed";
    let since = if whole { ctx.store.transaction_time(id).await? } else { None };
    let now = now_unix();
    let source = SyncSource::of(&job.export_url, &job.kickoff);
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
