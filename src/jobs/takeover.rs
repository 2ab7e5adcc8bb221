//! Taking work up across replicas: every heartbeat period, while this process has a free job slot,
//! it claims the oldest unfinished job nobody holds: a lease that lapsed (its process crashed or
//! stalled) or a job whose process never got to it. Claimed with `claim_next` (one statement;
//! replicas claiming at once each get a different job), then run as if this process had started it.
//! Then, where replicas share the destination, files of other replicas' jobs (`file_help`).
use crate::jobs::{context::JobContext, lease_timing::LeaseTiming, pipeline};

/// Most jobs claimed in one pass, so one pass stays short; the next pass takes more.
const MAX_CLAIMS_PER_PASS: usize = 16;

/// One pass; returns how many jobs were claimed.
pub async fn claim_free_jobs(ctx: &JobContext) -> usize {
    let timing = LeaseTiming::of(ctx);
    let mut claimed = 0;
    while claimed < MAX_CLAIMS_PER_PASS {
        // The slot first: a claimed lease must not wait for one without a heartbeat.
        let Some(slot) = ctx.jobs.try_slot() else { break };
        let silent_since = crate::jobs::reaper::silent_since(ctx);
        match ctx.store.claim_next(&ctx.jobs.owner, timing.lease, silent_since).await {
            Ok(Some((job, claim))) => {
                if ctx.jobs.holds(&job.id) {
                    // Started here a moment ago and about to claim it itself.
                    if let Err(e) = ctx.store.release_lease(&job.id, &ctx.jobs.owner, claim.token).await {
                        tracing::warn!(error = %crate::error_text::chain(&e), "could not release a lease claimed twice");
                    }
                    break;
                }
                claimed += 1;
                pipeline::start_claimed(ctx, job.id, claim, slot);
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %crate::error_text::chain(&e), "could not look for jobs to take over");
                break;
            }
        }
    }
    claimed
}

/// Run until shutdown.
pub async fn run(ctx: JobContext) {
    let every = LeaseTiming::of(&ctx).every;
    let shutdown = ctx.jobs.shutdown.clone();
    let helps = crate::jobs::file_help::helps(&ctx);
    while shutdown.run_until_cancelled(tokio::time::sleep(every)).await.is_some() {
        claim_free_jobs(&ctx).await;
        if helps {
            crate::jobs::file_help::help_with_files(&ctx).await;
        }
    }
}
