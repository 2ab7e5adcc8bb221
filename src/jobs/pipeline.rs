//! One import job from start (or resume) to a final state: claim its lease, let its intake make
//! the plan (ping-and-pull: export or manifest), let the engine import it, and record how it
//! ended. Every step is persisted first, so a restart continues where the job stopped.
use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::fhir::parameters::ExportType;
use crate::jobs::context::JobContext;
use crate::jobs::download;
use crate::jobs::engine::{self, Work};
use crate::jobs::error::JobError;
use crate::jobs::lease_timing::LeaseTiming;
use crate::jobs::progress::Progress;
use crate::jobs::provider_client::ProviderClient;
use crate::jobs::pull;
use crate::jobs::recorder::Recorder;
use crate::jobs::runner::{JobHandles, JobSlot};
use crate::jobs::sync_record;
use crate::{
    domain::{FileState, JobState},
    fhir::operation_outcome::{IssueCode, OperationOutcome},
    store::leases::{Claim, Renewal},
    time_util::now_unix,
};

/// Start (or resume) job `id` in the background: once a job slot is free, it runs here if this
/// process gets its lease (another process may hold it).
pub async fn start(ctx: &JobContext, id: String) {
    // A sign of life now, so a job waiting for a slot is not mistaken for a stuck one.
    if let Err(e) = ctx.store.touch(&id, now_unix()).await {
        tracing::warn!(error = %crate::error_text::chain(&e), "could not record job start");
    }
    let job_ctx = ctx.clone();
    ctx.jobs.spawn(id.clone(), move |handles| async move {
        let timing = LeaseTiming::of(&job_ctx);
        match job_ctx.store.claim_job(&id, &job_ctx.jobs.owner, timing.lease).await {
            Ok(Some(claim)) => run_claimed(job_ctx, id, handles, Lease { token: claim.token, timing }, claim).await,
            Ok(None) => tracing::info!(job = %crate::telemetry::shown_id(&id), "another process runs this job"),
            Err(e) => tracing::error!(job = %crate::telemetry::shown_id(&id), error = %crate::error_text::chain(&e), "could not claim the job; it resumes at the next start"),
        }
    });
}

/// Run a job this process has just claimed (`takeover`), in the slot it took for it.
pub fn start_claimed(ctx: &JobContext, id: String, claim: Claim, slot: JobSlot) {
    let job_ctx = ctx.clone();
    ctx.jobs.spawn_in_slot(id.clone(), slot, move |handles| async move {
        let lease = Lease { token: claim.token, timing: LeaseTiming::of(&job_ctx) };
        run_claimed(job_ctx, id, handles, lease, claim).await
    });
}

/// Most takeovers of one job: a job whose every run kills (or stalls) its process must not go
/// round the replicas for ever.
pub const MAX_TAKEOVERS: i64 = 3;

async fn run_claimed(ctx: JobContext, id: String, handles: JobHandles, lease: Lease, claim: Claim) {
    if claim.takeovers > 0 {
        tracing::warn!(job = %crate::telemetry::shown_id(&id), takeovers = claim.takeovers, "took over a job whose process stopped renewing its lease");
    }
    if claim.takeovers > MAX_TAKEOVERS {
        let message = format!(
            "the job was taken over {} times after the process running it stopped answering (crashed or stalled); it is not tried again",
            claim.takeovers
        );
        tracing::error!(job = %crate::telemetry::shown_id(&id), takeovers = claim.takeovers, "the job was taken over too often; it fails");
        record_failure(&ctx, &id, message, lease.token).await;
        pull::release_export(&ctx, &id).await;
        if let Err(e) = ctx.store.release_lease(&id, &ctx.jobs.owner, lease.token).await {
            tracing::warn!(error = %crate::error_text::chain(&e), "could not release the job's lease");
        }
        return;
    }
    run_job(ctx, id, handles, lease).await
}

/// The lease this process holds on a job.
#[derive(Debug, Clone, Copy)]
struct Lease {
    token: i64,
    timing: LeaseTiming,
}

/// Run a job; failures are stored on it, cancellation leaves it as it is. A panic inside the job
/// is caught and recorded as a failure, so no job stays "running" forever.
async fn run_job(ctx: JobContext, id: String, handles: JobHandles, lease: Lease) {
    let JobHandles { cancel, progress, plan_changed } = handles;
    let span = tracing::info_span!("job", job = %crate::telemetry::shown_id(&id));
    async {
        // Every step of the job checks `cancel` (body reads included), so nothing is dropped
        // half-way: downloads abort their writers, and a kick-off's status URL is always recorded.
        // A lost lease stops the work the same way, then is told apart.
        let work_cancel = cancel.child_token();
        let run = run(&ctx, &id, &work_cancel, &progress, &plan_changed, lease.token);
        let held = with_lease(&ctx, &id, lease, &cancel, &work_cancel, run);
        let outcome = match std::panic::AssertUnwindSafe(held).catch_unwind().await {
            Ok(result) => result,
            Err(_) => Err(JobError::Internal("a bug; see the server log".into())),
        };
        match outcome {
            // Logged where it completed, with or without errors.
            Ok(Ran::Completed) => {
                sync_record::record(&ctx, &id, sync_record::Ended::Completed).await;
                crate::jobs::notice::send(&ctx, &id);
                pull::release_export(&ctx, &id).await
            }
            Ok(Ran::AlreadyFinished) => {}
            Err(JobError::LeaseLost) => {
                progress.close();
                tracing::warn!("another process took this job over (its lease lapsed); stopped here");
                return;
            }
            Err(JobError::Cancelled) => {
                Recorder { store: &*ctx.store, id: &id, progress: &progress, fence: None }
                    .keep_throughput()
                    .await;
                progress.close();
                tracing::info!("job stopped");
                if !ctx.jobs.shutdown.is_cancelled() {
                    // What the release needs is read now: a DELETE removes the job right after.
                    // The release itself runs on its own task, so the DELETE need not wait for it.
                    if let Some(target) = pull::release_target(&ctx, &id).await {
                        let span = tracing::Span::current();
                        ctx.jobs.tracker.spawn(pull::release(target).instrument(span));
                    }
                }
            }
            Err(e) => {
                let reason = crate::error_text::chain(&e);
                tracing::warn!(%reason, "job failed");
                let message = failure_text(&e, reason);
                // The chart first: the job page stops asking once it reads "failed".
                Recorder { store: &*ctx.store, id: &id, progress: &progress, fence: None }
                    .keep_throughput()
                    .await;
                record_failure(&ctx, &id, message, lease.token).await;
                sync_record::record(&ctx, &id, sync_record::Ended::Failed).await;
                crate::jobs::notice::send(&ctx, &id);
                let failed = crate::metrics::StateLabel { state: "failed".into() };
                ctx.metrics.jobs_finished.get_or_create(&failed).inc();
                progress.close();
                pull::release_export(&ctx, &id).await;
            }
        }
        // Another process may take the job up at once (after a shutdown, say).
        if let Err(e) = ctx.store.release_lease(&id, &ctx.jobs.owner, lease.token).await {
            tracing::warn!(error = %crate::error_text::chain(&e), "could not release the job's lease");
        }
    }
    .instrument(span)
    .await
}

/// The failure as the job's status tells it: storage trouble says what to do; the rest is the
/// error's own text.
fn failure_text(e: &JobError, reason: String) -> String {
    match e {
        JobError::Destination(d) | JobError::Plan(crate::jobs::plan::PlanError::Destination(d)) => d.advice(),
        JobError::Store(_) | JobError::Plan(crate::jobs::plan::PlanError::Store(_)) => {
            "the import failed inside bulk-import (its database); the server log has the cause".into()
        }
        _ => reason,
    }
}

/// A failed job keeps nothing half-imported: what it stored is removed (the import is incomplete,
/// and on a full disk it would make the next job fail too), and every file still pending gets an
/// outcome saying why it was not imported.
async fn record_failure(ctx: &JobContext, id: &str, message: String, token: i64) {
    let log = |e: &dyn std::error::Error, what: &str| tracing::error!(error = %crate::error_text::chain(e), "could not record the job failure: {what}");
    let files = match ctx.store.files(id).await {
        Ok(files) => files,
        Err(e) => {
            log(&e, "its files");
            Vec::new()
        }
    };
    let stored = files.iter().any(|f| f.state == FileState::Done && f.bytes > 0);
    let mut message = message;
    if stored {
        message.push_str("; files stored before the failure were removed, as the import is incomplete");
        if ctx.config.destination.has_resource_store() {
            message.push_str(
                " (what the resource store took stays: each resource is the provider's own version)",
            );
        }
    }
    // The state first, and only if the job had not finished: a job that completed keeps its files
    // whatever fails after, and a crash past this point finds a failed job, not a running one
    // with its files gone.
    // Fenced: a process whose lease was taken over must not fail (and empty) another's job.
    match ctx.store.fail_job(id, &message, now_unix(), Some(token)).await {
        Ok(true) => {}
        Ok(false) => return,
        // Its files stay: without the state stored, this process may no longer be the job's.
        Err(e) => return log(&e, "its state"),
    }
    match ctx.destination.delete_job(id, crate::destination::Removal::Failed).await {
        Ok(()) => {
            let why = format!("the job failed: {}", ctx.config.destination.what_a_stop_does());
            let restated = crate::jobs::removed_note::restated(&files, &why);
            if let Err(e) = ctx.store.restate_done_files(id, &restated).await {
                log(&e, "what became of its done files");
            }
        }
        Err(e) => {
            tracing::warn!(error = %crate::error_text::chain(&e), "could not remove a failed job's files")
        }
    }
    let pending: Vec<(i64, String)> = files
        .iter()
        .filter(|f| f.state == FileState::Pending)
        .map(|f| {
            let text =
                format!("file {}: not imported: the job failed first ({message})", download::describe(f));
            let outcome = OperationOutcome::error(IssueCode::Incomplete, text);
            (f.idx, serde_json::to_string(&outcome).unwrap_or_default())
        })
        .collect();
    if let Err(e) = ctx.store.fail_pending_files(id, &pending).await {
        log(&e, "outcomes of its pending files");
    }
}

/// Run `work` while renewing the job's lease (also the sign of life the reaper reads). A cancel
/// request stops the job as a DELETE here would; a lost lease stops `work_cancel` at once and the
/// job ends as `LeaseLost`.
async fn with_lease<T>(
    ctx: &JobContext,
    id: &str,
    lease: Lease,
    cancel: &CancellationToken,
    work_cancel: &CancellationToken,
    work: impl std::future::Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    let owner = ctx.jobs.owner.as_str();
    let lost = std::sync::atomic::AtomicBool::new(false);
    let beat = async {
        // Past this without a renewal, another process may have the job: stop as if it were lost.
        let unsure_after = lease.timing.lease.saturating_sub(lease.timing.every);
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(lease.timing.every).await;
            let renewal = ctx.store.renew_lease(id, owner, lease.token, lease.timing.lease).await;
            if matches!(renewal, Ok(Renewal::Held | Renewal::CancelRequested)) {
                // The files this process downloads for the job live as long as the job's lease.
                if let Err(e) = ctx.store.renew_file_leases(id, owner, lease.timing.lease).await {
                    tracing::warn!(error = %crate::error_text::chain(&e), "could not renew the leases of the job's files");
                }
            }
            match renewal {
                Ok(Renewal::Held) => renewed = tokio::time::Instant::now(),
                Ok(Renewal::CancelRequested) => {
                    renewed = tokio::time::Instant::now();
                    cancel.cancel();
                }
                Ok(Renewal::Lost) => {
                    lost.store(true, std::sync::atomic::Ordering::Relaxed);
                    work_cancel.cancel();
                    return;
                }
                Err(e) if renewed.elapsed() >= unsure_after => {
                    tracing::warn!(error = %crate::error_text::chain(&e), "could not renew the job's lease for most of a lease; stopping before another process takes it over");
                    lost.store(true, std::sync::atomic::Ordering::Relaxed);
                    work_cancel.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error_text::chain(&e), "could not renew the job's lease")
                }
            }
        }
    };
    tokio::pin!(work);
    let result = tokio::select! {
        out = &mut work => out,
        () = beat => work.await,
    };
    if lost.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(JobError::LeaseLost);
    }
    result
}

/// How a run ended well.
enum Ran {
    Completed,
    /// Nothing to do: the job had finished before (a resume after its end).
    AlreadyFinished,
}

async fn run(
    ctx: &JobContext,
    id: &str,
    cancel: &CancellationToken,
    progress: &Progress,
    plan_changed: &Notify,
    token: i64,
) -> Result<Ran, JobError> {
    let Some(job) = ctx.store.job(id).await? else {
        return Err(JobError::Cancelled);
    };
    if job.state.is_finished() {
        return Ok(Ran::AlreadyFinished);
    }
    progress.set_submission(job.export_type == ExportType::Submit);
    let record = Recorder { store: &*ctx.store, id, progress, fence: Some(token) };
    record.resumed(job.state, job.progress.clone());
    let provider = ctx.providers.provider(&job.client_id).await?.ok_or(JobError::Revoked)?;
    let client = Arc::new(ProviderClient::for_provider(ctx, &provider).await?);
    // Counted from the ping, so a restart does not grant a job a fresh allowance.
    let limit = ctx.config.limits.max_job_duration;
    let left = (job.created_at as f64 + limit.as_secs_f64() - now_unix() as f64).max(0.0);
    // At the limit the job is cancelled like any other, so it stops cleanly, then it fails.
    let stop = cancel.child_token();
    let work = async {
        let work =
            Work { ctx, client: &client, id, cancel: &stop, progress, plan_changed, fence: Some(token) };
        if job.export_type == ExportType::Submit {
            // Its manifests arrive while it imports: the intake plans them, the engine moves files.
            let intake = crate::jobs::submit::intake(ctx, &client, &job, &stop);
            return tokio::try_join!(intake, engine::import_plan(work)).map(|_| ());
        }
        if matches!(job.state, JobState::Queued | JobState::Exporting) {
            pull::plan_export(ctx, &client, &job, &stop, &record).await?;
        }
        engine::import_plan(work).await
    };
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => result.map(|()| Ran::Completed),
        _ = tokio::time::sleep(Duration::from_secs_f64(left)) => {
            stop.cancel();
            // A destination that stopped answering must not keep the job (and its slot) for ever.
            match tokio::time::timeout(STOP_GRACE, work).await {
                Err(_) | Ok(Err(JobError::Cancelled)) if !cancel.is_cancelled() => Err(JobError::TimeLimit(limit)),
                Err(_) => Err(JobError::Cancelled),
                Ok(other) => other.map(|()| Ran::Completed),
            }
        }
    }
}

/// How long a job stopped at its time limit gets to stop cleanly before it is dropped.
const STOP_GRACE: Duration = Duration::from_secs(30);
