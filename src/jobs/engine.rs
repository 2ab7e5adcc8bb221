//! The engine: moves the files of a job's plan, whichever intake made it, through download →
//! validate → destination → record, several at once. It picks up files added to the plan while it
//! runs, drops withdrawn ones, and completes the job once the plan is closed and nothing is
//! pending.
use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use futures::{stream::FuturesUnordered, StreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::fhir::manifest::FileKind;
use crate::jobs::checkpoint::Checkpoints;
use crate::jobs::context::JobContext;
use crate::jobs::download::{self, FileResult};
use crate::jobs::error::JobError;
use crate::jobs::file_bounds::JobBytes;
use crate::jobs::lease_timing::LeaseTiming;
use crate::jobs::plan;
use crate::jobs::progress::Progress;
use crate::jobs::provider_client::ProviderClient;
use crate::jobs::recorder::Recorder;
use crate::jobs::source_clients::SourceClients;
use crate::{
    domain::{FileCounts, FileState, FinishedFile, JobFile},
    metrics::{FileLabels, StateLabel},
};

/// What the engine works on: one job, its provider, and the signals that reach it.
pub struct Work<'a> {
    pub ctx: &'a JobContext,
    pub client: &'a Arc<ProviderClient>,
    pub id: &'a str,
    pub cancel: &'a CancellationToken,
    pub progress: &'a Progress,
    pub plan_changed: &'a Notify,
    /// The lease token the job runs under here.
    pub fence: Option<i64>,
}

/// Import every file of the plan until it is closed and done, charting its throughput meanwhile.
pub async fn import_plan(work: Work<'_>) -> Result<(), JobError> {
    let (progress, store, id) = (work.progress, work.ctx.store.clone(), work.id);
    let result = tokio::select! {
        result = import_files(work) => result,
        never = progress.keep_sampling() => match never {},
    };
    // From here on the job's numbers are its files' results (a takeover writes its own).
    if !matches!(result, Err(JobError::LeaseLost)) {
        if let Err(e) = store.clear_live(id).await {
            tracing::warn!(error = %crate::error_text::chain(&e), "could not clear the job's progress");
        }
    }
    result
}

async fn import_files(work: Work<'_>) -> Result<(), JobError> {
    let Work { ctx, client, id, cancel, progress, plan_changed, fence } = work;
    let record = Recorder { store: &*ctx.store, id, progress, fence };
    let timing = LeaseTiming::of(ctx);
    let files = ctx.store.files(id).await?;
    let done = || files.iter().filter(|f| f.state == FileState::Done);
    let stored: u64 = done().map(|f| f.bytes.max(0) as u64).sum();
    // Data files only: the lines of error and deleted files are not the export's resources.
    let resources: u64 =
        done().filter(|f| f.kind == FileKind::Output).map(|f| f.resources.max(0) as u64).sum();
    let job_bytes = JobBytes::new(ctx.config.limits.max_job_bytes, stored).with_resources(resources);
    let job_bytes = Arc::new(job_bytes.on_disks(&crate::jobs::disk_room::DiskLimits::of(&ctx.config)));
    // A resumed job's chart goes on from the points its earlier runs kept.
    if let Some(json) = ctx.store.throughput(id).await? {
        progress.resume_chart(serde_json::from_str(&json).unwrap_or_default());
    }
    progress.watch(job_bytes.clone());
    // Every other replica and view reads this job's progress from the store.
    let _live = crate::jobs::live_publisher::spawn(ctx.store.clone(), id, job_bytes.clone());
    // On a job error the downloads are cancelled, and every task is awaited before the job
    // returns: none may still write when the job's files are removed.
    let downloads = cancel.child_token();
    let _stop_downloads = downloads.clone().drop_guard();
    let mut tasks = FuturesUnordered::new();
    let mut in_flight: HashSet<i64> = HashSet::new();
    let mut queue: VecDeque<JobFile> = VecDeque::new();
    let mut plan_open = true;
    let mut reload = true;
    // A pending file another process downloads: its end is looked for every heartbeat period
    // (and the file claimed here if that process's lease on it lapses).
    let mut held_elsewhere = false;
    let mut announced = false;
    let mut first_error: Option<JobError> = None;
    let mut sources = SourceClients::new(client.clone());
    // Bounded: each pass finishes a download, takes a plan change, or ends; the job's time limit
    // bounds the whole.
    loop {
        if reload && first_error.is_none() && !cancel.is_cancelled() {
            reload = false;
            // The plan's state first, then its files: a file added before the plan closed is seen.
            let job = ctx.store.job(id).await?.ok_or(JobError::Cancelled)?;
            if job.state.is_finished() {
                // Ended elsewhere (cancelled, failed by another process).
                return Err(JobError::Cancelled);
            }
            plan_open = job.plan_open;
            let files = ctx.store.files(id).await?;
            let listed: Vec<&JobFile> = files.iter().filter(|f| f.state != FileState::Withdrawn).collect();
            let finished = listed.iter().filter(|f| f.state != FileState::Pending).count() as i64;
            let expected = crate::domain::expected_resources(listed.iter().copied());
            record.importing(FileCounts { total: listed.len() as i64, finished }, expected);
            queue = files
                .into_iter()
                .filter(|f| f.state == FileState::Pending && !in_flight.contains(&f.idx))
                .collect();
            if !announced || !queue.is_empty() {
                tracing::info!(files = queue.len(), "importing files");
                announced = true;
            }
        }
        while first_error.is_none() && tasks.len() < ctx.config.limits.parallel_downloads {
            let Some(file) = queue.pop_front() else { break };
            let Some(claim) = ctx.store.claim_file(id, file.idx, &ctx.jobs.owner, timing.lease).await? else {
                held_elsewhere = true;
                continue;
            };
            if claim.takeovers > MAX_FILE_TAKEOVERS {
                let r = FileResult::taken_over_too_often(&file, claim.takeovers);
                record_file(ctx, &record, &file, r, claim.token).await?;
                release_file(ctx, &file, claim.token).await;
                continue;
            }
            in_flight.insert(file.idx);
            let client = sources.for_file(ctx, &file).await?;
            tasks.push(spawn_download(ctx, &client, file, &job_bytes, claim.token, &downloads));
        }
        if tasks.is_empty() {
            if first_error.is_some() || cancel.is_cancelled() {
                break;
            }
            if !plan_open && !held_elsewhere {
                // Conditional in the store: false if a file is still pending (read again).
                if record.completed().await? {
                    log_completion(ctx, id).await;
                    return Ok(());
                }
                reload = true;
                continue;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = plan_changed.notified() => reload = true,
                _ = tokio::time::sleep(timing.every), if held_elsewhere => {
                    held_elsewhere = false;
                    reload = true;
                }
            }
            continue;
        }
        tokio::select! {
            biased;
            Some(joined) = tasks.next() => {
                let recorded = match joined {
                    Err(e) => Err(JobError::Internal(format!("a download task stopped: {e}"))),
                    Ok((file, token, Ok(r))) => {
                        in_flight.remove(&file.idx);
                        let recorded = record_file(ctx, &record, &file, r, token).await;
                        job_bytes.recorded(file.idx);
                        release_file(ctx, &file, token).await;
                        recorded
                    }
                    Ok((file, token, Err(e))) => {
                        in_flight.remove(&file.idx);
                        job_bytes.recorded(file.idx);
                        release_file(ctx, &file, token).await;
                        Err(e)
                    }
                };
                if let Err(e) = recorded {
                    downloads.cancel();
                    // A cancelled sibling is the consequence, not the cause.
                    if first_error.is_none() || matches!(first_error, Some(JobError::Cancelled)) {
                        first_error = Some(e);
                    }
                }
            }
            _ = plan_changed.notified(), if first_error.is_none() => reload = true,
            _ = tokio::time::sleep(timing.every), if held_elsewhere && first_error.is_none() => {
                held_elsewhere = false;
                reload = true;
            }
        }
    }
    // A stop from outside (cancel, shutdown, the time limit) wins over what it caused in siblings:
    // the job resumes or ends as stopped, not failed.
    if cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    Err(first_error.unwrap_or(JobError::Cancelled))
}

/// Claims of one file after its lease lapsed under another process, beyond which it fails: a
/// file that kills every process that downloads it must not go round for ever.
pub const MAX_FILE_TAKEOVERS: i64 = 3;

/// Let go of a file's lease once its download ended here (only logged: it lapses anyway).
pub async fn release_file(ctx: &JobContext, file: &JobFile, token: i64) {
    if let Err(e) = ctx.store.release_file_lease(&file.job_id, file.idx, &ctx.jobs.owner, token).await {
        tracing::warn!(error = %crate::error_text::chain(&e), "could not release a file's lease");
    }
}

type Download = tokio::task::JoinHandle<(JobFile, i64, Result<FileResult, JobError>)>;

/// Each download is its own task, so validation of several files uses every core.
fn spawn_download(
    ctx: &JobContext,
    client: &Arc<ProviderClient>,
    file: JobFile,
    job_bytes: &Arc<JobBytes>,
    token: i64,
    cancel: &CancellationToken,
) -> Download {
    let (client, destination, cancel) = (client.clone(), ctx.destination.clone(), cancel.clone());
    let shutdown = ctx.jobs.shutdown.clone();
    let checkpoints = Checkpoints::new(ctx.store.clone(), Some(token), &file.job_id, file.idx, shutdown);
    let job_bytes = job_bytes.clone();
    let slots = ctx.jobs.download_slots.clone();
    tokio::spawn(
        async move {
            let _slot = tokio::select! {
                biased;
                _ = cancel.cancelled() => return (file, token, Err(JobError::Cancelled)),
                slot = slots.acquire(client.provider()) => slot,
            };
            let result =
                download::import_file(&client, &*destination, &file, &job_bytes, &checkpoints, &cancel).await;
            (file, token, result)
        }
        .instrument(tracing::Span::current()),
    )
}

/// Store one file's result. A file withdrawn while it downloaded is not recorded, and what it
/// stored is removed.
async fn record_file(
    ctx: &JobContext,
    record: &Recorder<'_>,
    file: &JobFile,
    r: FileResult,
    token: i64,
) -> Result<(), JobError> {
    let (outcome, type_counts) = stored_form(&r)?;
    let done = finished(&r, &outcome, type_counts.as_deref());
    let recorded = record.file_finished(file.idx, &done, token).await?;
    after_recording(ctx, file, &r, recorded).await
}

/// Record a file downloaded for a job another process runs (`file_help`).
pub async fn record_helped_file(
    ctx: &JobContext,
    file: &JobFile,
    r: FileResult,
    token: i64,
) -> Result<(), JobError> {
    let (outcome, type_counts) = stored_form(&r)?;
    let done = finished(&r, &outcome, type_counts.as_deref());
    let recorded = ctx.store.finish_file(&file.job_id, file.idx, &done, Some(token)).await?;
    after_recording(ctx, file, &r, recorded).await
}

/// The outcome and per-type counts as the store keeps them (JSON).
fn stored_form(r: &FileResult) -> Result<(String, Option<String>), JobError> {
    let outcome = serde_json::to_string(&r.outcome).map_err(crate::store::StoreError::from)?;
    let type_counts = r
        .type_counts
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(crate::store::StoreError::from)?;
    Ok((outcome, type_counts))
}

fn finished<'a>(r: &FileResult, outcome: &'a str, type_counts: Option<&'a str>) -> FinishedFile<'a> {
    FinishedFile {
        state: r.state,
        resources: r.resources,
        bytes: r.bytes,
        outcome,
        provider_errors: r.provider_errors,
        type_counts,
    }
}

async fn after_recording(
    ctx: &JobContext,
    file: &JobFile,
    r: &FileResult,
    recorded: bool,
) -> Result<(), JobError> {
    if recorded {
        count_file(ctx, r);
    }
    if !recorded {
        // Not pending any more (withdrawn), or the fence was stale: then another process runs
        // the job, and what this one stored is that process's to keep or replace.
        let files = ctx.store.files(&file.job_id).await?;
        let now = files.iter().find(|f| f.idx == file.idx).map(|f| f.state);
        if now == Some(FileState::Pending) {
            return Err(JobError::LeaseLost);
        }
        let finished = JobFile { state: r.state, ..file.clone() };
        // Withdrawn while it was downloading: whatever it stored goes, even of a file that failed
        // (a resource store keeps the batches a failed file committed).
        let withdrawn = now == Some(FileState::Withdrawn) && file.kind != FileKind::Error;
        if plan::has_data(&finished) || withdrawn {
            ctx.destination.delete_file(&finished.job_id, &finished.name).await?;
        }
    }
    Ok(())
}

fn count_file(ctx: &JobContext, r: &FileResult) {
    let m = &ctx.metrics;
    let code = r.outcome.issue.first().map(|i| i.code.as_str()).unwrap_or("informational");
    let outcome = if r.state == FileState::Done { "done" } else { "failed" };
    m.files.get_or_create(&FileLabels { outcome: outcome.into(), code: code.into() }).inc();
    m.bytes.inc_by(r.bytes.max(0) as u64);
    m.resources.inc_by(r.resources.max(0) as u64);
}

/// Only for the log: nothing after the completion may fail the job.
async fn log_completion(ctx: &JobContext, id: &str) {
    let Ok(totals) = ctx.store.file_totals(id).await else { return };
    let result = if totals.has_errors() { "completed-with-errors" } else { "completed" };
    ctx.metrics.jobs_finished.get_or_create(&StateLabel { state: result.into() }).inc();
    let kept = crate::time_util::kept_until(crate::time_util::now_unix(), ctx.config.jobs_max_age);
    if totals.has_errors() {
        tracing::warn!(
            failed_files = totals.failed,
            provider_errors = totals.provider_errors,
            kept_until = %kept,
            "job completed with errors"
        );
    } else {
        tracing::info!(files = totals.files, resources = totals.resources, kept_until = %kept, "job completed");
    }
}
