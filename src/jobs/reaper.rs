//! The reaper: removes jobs (rows and files) `JOBS_MAX_AGE` after they finished, and cancels and
//! removes jobs still unfinished after twice that.
use crate::jobs::context::JobContext;
use crate::time_util::now_unix;

/// Remove one job everywhere: stop it, delete its files, delete its rows.
pub async fn remove_job(ctx: &JobContext, id: &str) -> Result<(), crate::jobs::error::JobError> {
    ctx.jobs.cancel_and_wait(id).await;
    ctx.destination.delete_job(id).await?;
    ctx.store.delete_job(id).await?;
    Ok(())
}

/// One pass; returns how many jobs were removed. One job that cannot be removed (its files, say)
/// is logged and skipped, so it never blocks the others.
async fn reap_once(ctx: &JobContext) -> Result<usize, crate::jobs::error::JobError> {
    let max_age = ctx.config.jobs_max_age.as_secs_f64();
    let now = now_unix();
    let finished_before = now - max_age.ceil() as i64;
    let silent_since = now - (2.0 * max_age).ceil() as i64;
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
