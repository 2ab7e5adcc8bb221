//! Resuming after a restart, in one place. Every step of a job is stored before it is taken, so a
//! job resumes from its stored state: a queued one starts; an exporting one polls the status URL it
//! stored (or kicks off again, noting an interrupted kick-off); an importing one fetches only the
//! files still pending (a `.part` of an interrupted file is replaced); a finished one is left.
use crate::jobs::context::JobContext;
use crate::jobs::error::JobError;
use crate::jobs::pipeline;

/// Start every job that was unfinished when the process stopped and that no other process holds
/// (on a shared database the others' jobs are theirs; a lapsed one is taken over later); returns
/// how many.
pub async fn resume_unfinished(ctx: &JobContext) -> Result<usize, JobError> {
    let mut unfinished = Vec::new();
    for job in ctx.store.unfinished_jobs().await? {
        match ctx.store.lease_holder(&job.id).await? {
            Some(holder) if holder != ctx.jobs.owner => {}
            _ => unfinished.push(job),
        }
    }
    if !unfinished.is_empty() {
        tracing::info!(jobs = unfinished.len(), "resuming unfinished jobs");
    }
    let count = unfinished.len();
    for job in unfinished {
        pipeline::start(ctx, job.id).await;
    }
    Ok(count)
}
