//! Resuming after a restart, in one place. Every step of a job is stored before it is taken, so a
//! job resumes from its stored state: a queued one starts; an exporting one polls the status URL it
//! stored (or kicks off again, noting an interrupted kick-off); an importing one fetches only the
//! files still pending (a `.part` of an interrupted file is replaced); a finished one is left.
use crate::jobs::context::JobContext;
use crate::jobs::error::JobError;
use crate::jobs::pipeline;

/// Start every job that was unfinished when the process stopped; returns how many.
pub async fn resume_unfinished(ctx: &JobContext) -> Result<usize, JobError> {
    let unfinished = ctx.store.unfinished_jobs().await?;
    if !unfinished.is_empty() {
        tracing::info!(jobs = unfinished.len(), "resuming unfinished jobs");
    }
    let count = unfinished.len();
    for job in unfinished {
        pipeline::start(ctx, job.id).await;
    }
    Ok(count)
}
