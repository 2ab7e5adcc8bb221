//! Downloading files of a job another replica runs: one job's files are spread over the
//! replicas that have download slots free, not only over its owner's. Every heartbeat period a
//! replica with a free slot claims the first pending file nobody holds of a job a live process
//! runs (`claim_next_file`, one statement), downloads it under its own file lease (renewed here,
//! so the owner sees a helper that dies: its lease lapses and the file is claimed again), and
//! records it fenced by that lease. Only where the destination is shared (S3) and so is the
//! database: a local directory would put the file on the wrong machine.
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::jobs::source_clients::SourceClients;
use crate::{
    domain::JobFile,
    jobs::{
        checkpoint::Checkpoints,
        context::JobContext,
        download::{self, FileResult},
        engine::{self, MAX_FILE_TAKEOVERS},
        error::JobError,
        file_bounds::JobBytes,
        lease_timing::LeaseTiming,
        provider_client::ProviderClient,
    },
    store::leases::Claim,
};

/// Most files taken up in one pass; the next pass takes more.
const MAX_FILES_PER_PASS: usize = 4;

/// Whether this process helps with other replicas' files at all.
pub fn helps(ctx: &JobContext) -> bool {
    ctx.config.database.is_shared() && ctx.destination.shared()
}

/// One pass: claim files while download slots are free; returns how many were taken up.
pub async fn help_with_files(ctx: &JobContext) -> usize {
    let lease = LeaseTiming::of(ctx).lease;
    let mut taken = 0;
    while taken < MAX_FILES_PER_PASS {
        // Room first: a claimed file must not wait for a slot without a heartbeat.
        if !ctx.jobs.download_slots.any_free() {
            break;
        }
        match ctx.store.claim_next_file(&ctx.jobs.owner, lease).await {
            Ok(Some((file, claim))) => {
                // The slot is its provider's: at that provider's share, the file goes back.
                let provider = match ctx.store.job(&file.job_id).await {
                    Ok(Some(job)) => job.client_id,
                    _ => String::new(),
                };
                let Some(slot) = ctx.jobs.download_slots.try_acquire(&provider) else {
                    engine::release_file(ctx, &file, claim.token).await;
                    break;
                };
                taken += 1;
                let span = tracing::info_span!(
                    "file",
                    job = %crate::telemetry::shown_id(&file.job_id),
                    idx = file.idx
                );
                let ctx = ctx.clone();
                ctx.jobs.clone().spawn_task(
                    async move {
                        help(&ctx, &file, claim).await;
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %crate::error_text::chain(&e), "could not look for files to help with");
                break;
            }
        }
    }
    taken
}

/// Download one claimed file and record it; problems are logged (the job's owner sees the file
/// still pending once the lease lapses, and takes it up itself).
async fn help(ctx: &JobContext, file: &JobFile, claim: Claim) {
    tracing::info!("downloading a file of a job another server runs");
    let result = download_held(ctx, file, claim).await;
    let recorded = match result {
        Ok(r) => engine::record_helped_file(ctx, file, r, claim.token).await,
        Err(e) => Err(e),
    };
    match recorded {
        Ok(()) => tracing::info!("file done for the job's owner"),
        Err(JobError::Cancelled) => tracing::info!("stopped downloading a file of another server's job"),
        Err(JobError::LeaseLost) => tracing::warn!("another process took the file over; stopped here"),
        Err(e) => {
            tracing::warn!(error = %crate::error_text::chain(&e), "could not download a file of another server's job; its owner takes it up")
        }
    }
    engine::release_file(ctx, file, claim.token).await;
}

/// The download, under a heartbeat that renews the file's lease: a lost lease, a job that ended
/// or was asked to stop, or a shutdown stop it.
async fn download_held(ctx: &JobContext, file: &JobFile, claim: Claim) -> Result<FileResult, JobError> {
    if claim.takeovers > MAX_FILE_TAKEOVERS {
        return Ok(FileResult::taken_over_too_often(file, claim.takeovers));
    }
    let job = ctx.store.job(&file.job_id).await?.ok_or(JobError::Cancelled)?;
    let provider = ctx.providers.provider(&job.client_id).await?.ok_or(JobError::Revoked)?;
    let client = Arc::new(ProviderClient::for_provider(ctx, &provider).await?);
    let client = SourceClients::new(client).for_file(ctx, file).await?;
    // The job-wide byte bound is its owner's to keep; this file is held to the file bound.
    let job_bytes = JobBytes::new(ctx.config.limits.max_job_bytes, 0)
        .on_disks(&crate::jobs::disk_room::DiskLimits::of(&ctx.config));
    let cancel = ctx.jobs.shutdown.child_token();
    let checkpoints = Checkpoints::new(
        ctx.store.clone(),
        Some(claim.token),
        &file.job_id,
        file.idx,
        ctx.jobs.shutdown.clone(),
    );
    let download = download::import_file(&client, &*ctx.destination, file, &job_bytes, &checkpoints, &cancel);
    tokio::pin!(download);
    let timing = LeaseTiming::of(ctx);
    tokio::select! {
        result = &mut download => result,
        lost = keep_lease(ctx, file, claim.token, timing, &cancel) => {
            cancel.cancel();
            // The download stops at once, aborting what it wrote unless another goes on with it.
            let _ = download.await;
            Err(lost)
        }
    }
}

/// Renew the file's lease until it cannot be: returns why.
async fn keep_lease(
    ctx: &JobContext,
    file: &JobFile,
    token: i64,
    timing: LeaseTiming,
    cancel: &CancellationToken,
) -> JobError {
    let unsure_after = timing.lease.saturating_sub(timing.every);
    let mut renewed = tokio::time::Instant::now();
    loop {
        if cancel.run_until_cancelled(tokio::time::sleep(timing.every)).await.is_none() {
            return JobError::Cancelled;
        }
        match ctx.store.renew_file_lease(&file.job_id, file.idx, &ctx.jobs.owner, token, timing.lease).await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            // Lost, or the file or its job ended or is stopping.
            Ok(false) => return JobError::Cancelled,
            Err(e) if renewed.elapsed() >= unsure_after => {
                tracing::warn!(error = %crate::error_text::chain(&e), "could not renew a file's lease for most of a lease; stopping");
                return JobError::LeaseLost;
            }
            Err(e) => tracing::warn!(error = %crate::error_text::chain(&e), "could not renew a file's lease"),
        }
    }
}
