//! The reaper: removes jobs (rows and files) `JOBS_MAX_AGE` after they finished, and cancels and
//! removes jobs still unfinished after twice that.
use crate::destination::Removal;
use crate::jobs::context::JobContext;
use crate::jobs::error::JobError;
use crate::time_util::now_unix;

/// Remove one job everywhere: stop it (here, or wherever it runs), delete its files, delete its rows.
pub async fn remove_job(ctx: &JobContext, id: &str) -> Result<(), JobError> {
    stop_job(ctx, id).await?;
    ctx.destination.delete_job(id, Removal::Expired).await?;
    ctx.store.delete_job(id).await?;
    Ok(())
}

/// Longest a stop waits for another process to let a job go, so a DELETE answers well within
/// the request timeout; past it the caller is told to try again.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Stop a job wherever it runs: here at once; on another process at its next heartbeat, which
/// sees the cancel request and lets the lease go. That is waited for (up to a lease, at most
/// `STOP_WAIT`), so the job's files are never written after they are deleted; a holder still
/// there after it is `StillStopping`.
pub async fn stop_job(ctx: &JobContext, id: &str) -> Result<(), JobError> {
    ctx.store.request_cancel(id).await?;
    ctx.jobs.cancel_and_wait(id).await;
    let timing = crate::jobs::lease_timing::LeaseTiming::of(ctx);
    let deadline = tokio::time::Instant::now() + (timing.lease + timing.every).min(STOP_WAIT);
    let poll = (timing.every / 4).max(std::time::Duration::from_millis(50));
    // Ours stopped above (or will not write again once its lease is gone); another process
    // running it, or downloading one of its files, stops at its next heartbeat.
    while ctx.store.held_by_others(id, &ctx.jobs.owner).await? {
        if tokio::time::Instant::now() >= deadline {
            return Err(JobError::StillStopping);
        }
        tokio::time::sleep(poll).await;
    }
    Ok(())
}

/// An unfinished job with no sign of life since before this is stuck: the reaper removes it
/// (and no process takes it over).
pub fn silent_since(ctx: &JobContext) -> i64 {
    now_unix() - (2.0 * ctx.config.jobs_max_age.as_secs_f64()).ceil() as i64
}

/// One pass; returns how many jobs were removed. One job that cannot be removed (its files, say)
/// is logged and skipped, so it never blocks the others.
async fn reap_once(ctx: &JobContext) -> Result<usize, crate::jobs::error::JobError> {
    let finished_before = now_unix() - ctx.config.jobs_max_age.as_secs_f64().ceil() as i64;
    let silent_since = silent_since(ctx);
    // One replica at a time: two reapers would race to delete the same files.
    let Some(_alone) = ctx.exclusive.try_exclusive("bulk-import reaper").await? else {
        return Ok(0);
    };
    let ids = ctx.store.expired_jobs(finished_before, silent_since).await?;
    let mut removed = 0;
    for id in &ids {
        match remove_job(ctx, id).await {
            Ok(()) => {
                removed += 1;
                tracing::info!(job = %crate::telemetry::shown_id(id), "reaped expired job");
            }
            Err(e) => {
                tracing::error!(job = %crate::telemetry::shown_id(id), error = %crate::error_text::chain(&e), "could not reap a job")
            }
        }
    }
    Ok(removed)
}

/// Run until shutdown.
pub async fn run(ctx: JobContext) {
    let shutdown = ctx.jobs.shutdown.clone();
    loop {
        if let Err(e) = reap_once(&ctx).await {
            tracing::error!(error = %crate::error_text::chain(&e), "reaper pass failed; will try again");
        }
        if shutdown.run_until_cancelled(tokio::time::sleep(ctx.config.reaper_interval)).await.is_none() {
            break;
        }
    }
}
