//! One import job from start (or resume) to a final state: export or manifest, plan, download.
//! Every step is persisted first, so a restart continues where the job stopped.
use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url::Url;

use super::{
    context::JobContext,
    download, export,
    file_bounds::JobBytes,
    progress::Progress,
    provider_client::{Auth, ProviderClient, Who},
    recorder::Recorder,
    JobError,
};
use crate::{
    address_guard::classes_of,
    auth::provider_base::ProviderBase,
    destination::file_name::{FileNameTemplate, FileNameVars},
    fhir::{
        manifest::FileKind,
        operation_outcome::{IssueCode, OperationOutcome},
        parameters::ExportType,
    },
    store::{
        jobs::{FileCounts, FileState, FinishedFile, Job, JobFile, JobState},
        providers::Provider,
    },
    time_util::now_unix,
};

/// Run a job; failures are stored on it, cancellation leaves it as it is. A panic inside the job
/// is caught and recorded as a failure, so no job stays "running" forever.
pub async fn run_job(ctx: JobContext, id: String, cancel: CancellationToken, progress: Arc<Progress>) {
    let span = tracing::info_span!("job", job = %crate::telemetry::shown_id(&id));
    async {
        // Every step of the job checks `cancel` (body reads included), so nothing is dropped
        // half-way: downloads abort their writers, and a kick-off's status URL is always recorded.
        let run = run(&ctx, &id, &cancel, &progress);
        let work = std::panic::AssertUnwindSafe(with_heartbeat(&ctx, &id, run)).catch_unwind();
        let outcome = match work.await {
            Ok(result) => result,
            Err(_) => Err(JobError::Internal("a bug; see the server log".into())),
        };
        match outcome {
            // Logged where it completed, with or without errors.
            Ok(Ran::Completed) => release_export(&ctx, &id).await,
            Ok(Ran::AlreadyFinished) => {}
            Err(JobError::Cancelled) => {
                progress.close();
                tracing::info!("job stopped");
                if !ctx.jobs.shutdown.is_cancelled() {
                    // What the release needs is read now: a DELETE removes the job right after.
                    // The release itself runs on its own task, so the DELETE need not wait for it.
                    let target = tokio::time::timeout(RELEASE_TIMEOUT, release_target(&ctx, &id)).await;
                    if let Ok(Some(target)) = target {
                        let span = tracing::Span::current();
                        ctx.jobs.tracker.spawn(release(target).instrument(span));
                    }
                }
            }
            Err(e) => {
                let reason = crate::error_text::chain(&e);
                tracing::warn!(%reason, "job failed");
                let message = failure_text(&e, reason);
                record_failure(&ctx, &id, message).await;
                progress.close();
                release_export(&ctx, &id).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// The failure as the job's status tells it: storage trouble says what to do; the rest is the
/// error's own text.
fn failure_text(e: &JobError, reason: String) -> String {
    match e {
        JobError::Destination(d) => d.advice(),
        JobError::Store(_) => {
            "the import failed inside bulk-import (its database); the server log has the cause".into()
        }
        _ => reason,
    }
}

/// A failed job keeps nothing half-imported: what it stored is removed (the import is incomplete,
/// and on a full disk it would make the next job fail too), and every file still pending gets an
/// outcome saying why it was not imported.
async fn record_failure(ctx: &JobContext, id: &str, message: String) {
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
    }
    // The state first, and only if the job had not finished: a job that completed keeps its files
    // whatever fails after, and a crash past this point finds a failed job, not a running one
    // with its files gone.
    match ctx.store.fail_job(id, &message, now_unix()).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => log(&e, "its state"),
    }
    if let Err(e) = ctx.destination.delete_job(id).await {
        tracing::warn!(error = %crate::error_text::chain(&e), "could not remove a failed job's files");
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

/// Run `work` while recording a sign of life, so the reaper tells a long job from a stuck one.
async fn with_heartbeat<T>(ctx: &JobContext, id: &str, work: impl std::future::Future<Output = T>) -> T {
    let every = (ctx.config.jobs_max_age / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
    let beat = async {
        loop {
            if let Err(e) = ctx.store.touch(id, now_unix()).await {
                tracing::warn!(error = %crate::error_text::chain(&e), "could not record job heartbeat");
            }
            tokio::time::sleep(every).await;
        }
    };
    tokio::select! {
        out = work => out,
        never = beat => never,
    }
}

/// The job's view of its provider: trusted origins from the registration, and the internal
/// address classes the SSRF guard lets through for everything else.
async fn provider_client(ctx: &JobContext, provider: &Provider) -> Result<ProviderClient, JobError> {
    let base = ProviderBase::parse(&provider.aud)
        .map_err(JobError::Provider)?
        .with_origins(&provider.token_origin_list(), provider.file_origin_list());
    let policy = ctx.config.internal_addresses;
    let mut allowed = policy.always;
    if let (true, Some(host)) = (policy.same_as_provider, base.url().host()) {
        allowed = allowed.union(classes_of(&host.to_owned(), ctx.outbound.overrides()).await);
    }
    let guarded = ctx
        .outbound
        .guarded(allowed)
        .map_err(|e| JobError::Internal(format!("the HTTP client could not be built: {e}")))?;
    let who = Who {
        client_id: provider.consumer_client_id.clone(),
        scope: provider.scope.clone().unwrap_or_else(|| ctx.config.provider_scope.clone()),
        token_endpoint: provider.token_endpoint.clone(),
    };
    Ok(ProviderClient::new(
        (ctx.http.clone(), guarded),
        ctx.provider_tokens.clone(),
        ctx.request_budget.clone(),
        base,
        who,
        ctx.config.limits.clone(),
    ))
}

/// What releasing a job's export needs: its status URL and a client for its provider.
struct ReleaseTarget {
    status: Url,
    client: ProviderClient,
}

async fn release_target(ctx: &JobContext, id: &str) -> Option<ReleaseTarget> {
    let job = ctx.store.job(id).await.ok()??;
    let status = Url::parse(job.status_url.as_deref()?).ok()?;
    let provider = ctx.providers.provider(&job.client_id).await.ok()??;
    let client = provider_client(ctx, &provider).await.ok()?;
    Some(ReleaseTarget { status, client })
}

/// Best effort: DELETE the provider's export status URL (Bulk Data v2+: "done with the files" or
/// "cancel"), bounded in time so it never holds up a cancel or shutdown.
async fn release_export(ctx: &JobContext, id: &str) {
    if let Some(target) = release_target(ctx, id).await {
        release(target).await;
    }
}

async fn release(ReleaseTarget { status, client }: ReleaseTarget) {
    let delete = |http: &reqwest::Client, url: Url| http.delete(url);
    let release = async {
        tokio::time::sleep(client.reserve_slot(&status)).await;
        client.send_once(Auth::WithToken, &delete, &status).await
    };
    let sent = tokio::time::timeout(RELEASE_TIMEOUT, release).await;
    if !matches!(sent, Ok(Ok(ref r)) if r.status().is_success()) {
        tracing::info!("could not release the provider's export (it expires on its own)");
    }
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
) -> Result<Ran, JobError> {
    let Some(job) = ctx.store.job(id).await? else {
        return Err(JobError::Cancelled);
    };
    if job.state.is_finished() {
        return Ok(Ran::AlreadyFinished);
    }
    Recorder { store: &*ctx.store, id, progress }.resumed(job.state, job.progress.clone());
    let provider = ctx.providers.provider(&job.client_id).await?.ok_or(JobError::Revoked)?;
    let client = Arc::new(provider_client(ctx, &provider).await?);
    // Counted from the ping, so a restart does not grant a job a fresh allowance.
    let limit = ctx.config.limits.max_job_duration;
    let left = (job.created_at as f64 + limit.as_secs_f64() - now_unix() as f64).max(0.0);
    // At the limit the job is cancelled like any other, so it stops cleanly, then it fails.
    let stop = cancel.child_token();
    let work = plan_and_import(ctx, &client, &job, &stop, progress);
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

async fn plan_and_import(
    ctx: &JobContext,
    client: &Arc<ProviderClient>,
    job: &Job,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<(), JobError> {
    let id = job.id.as_str();
    if matches!(job.state, JobState::Queued | JobState::Exporting) {
        plan(ctx, client, job, cancel, progress).await?;
    }
    let files = ctx.store.files(id).await?;
    let stored: u64 =
        files.iter().filter(|f| f.state == FileState::Done).map(|f| f.bytes.max(0) as u64).sum();
    let job_bytes = Arc::new(JobBytes::new(ctx.config.limits.max_job_bytes, stored));
    let total = files.len() as i64;
    let pending: Vec<JobFile> = files.into_iter().filter(|f| f.state == FileState::Pending).collect();
    let record = Recorder { store: &*ctx.store, id, progress };
    record.importing(FileCounts { total, finished: total - pending.len() as i64 });
    tracing::info!(files = pending.len(), "importing files");
    // Each download is its own task, so validation of several files uses every core. On a job
    // error the others are cancelled, and every task is awaited before the job returns: none may
    // still write when the job's files are removed.
    let downloads = cancel.child_token();
    let _stop_downloads = downloads.clone().drop_guard();
    let mut results = futures::stream::iter(pending)
        .map(|file| {
            let (client, destination, cancel) = (client.clone(), ctx.destination.clone(), downloads.clone());
            let job_bytes = job_bytes.clone();
            let slots = ctx.jobs.download_slots.clone();
            let task = tokio::spawn(
                async move {
                    let _slot = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return (file, Err(JobError::Cancelled)),
                        slot = slots.acquire_owned() => slot.ok(),
                    };
                    let result =
                        download::import_file(&client, &*destination, &file, &job_bytes, &cancel).await;
                    (file, result)
                }
                .instrument(tracing::Span::current()),
            );
            task
        })
        .buffer_unordered(ctx.config.limits.parallel_downloads);
    let mut first_error: Option<JobError> = None;
    while let Some(joined) = results.next().await {
        let recorded = match joined {
            Err(e) => Err(JobError::Internal(format!("a download task stopped: {e}"))),
            Ok((file, Ok(r))) => record_file(&record, &file, r).await,
            Ok((_, Err(e))) => Err(e),
        };
        match recorded {
            Ok(()) => {}
            Err(e) => {
                downloads.cancel();
                // A cancelled sibling is the consequence, not the cause.
                if first_error.is_none() || matches!(first_error, Some(JobError::Cancelled)) {
                    first_error = Some(e);
                }
            }
        }
    }
    // A stop from outside (cancel, shutdown, the time limit) wins over what it caused in siblings:
    // the job resumes or ends as stopped, not failed.
    if cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    record.completed().await?;
    // Only for the log: nothing after the completion may fail the job.
    let Ok(totals) = ctx.store.file_totals(id).await else { return Ok(()) };
    if totals.has_errors() {
        tracing::warn!(
            failed_files = totals.failed,
            provider_errors = totals.provider_errors,
            "job completed with errors"
        );
    } else {
        tracing::info!(files = totals.files, resources = totals.resources, "job completed");
    }
    Ok(())
}

/// Store one file's result.
async fn record_file(record: &Recorder<'_>, file: &JobFile, r: download::FileResult) -> Result<(), JobError> {
    let outcome = serde_json::to_string(&r.outcome).map_err(crate::store::StoreError::from)?;
    let type_counts = r
        .type_counts
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(crate::store::StoreError::from)?;
    let done = FinishedFile {
        state: r.state,
        resources: r.resources,
        bytes: r.bytes,
        outcome: &outcome,
        provider_errors: r.provider_errors,
        type_counts: type_counts.as_deref(),
    };
    record.file_finished(file.idx, &done).await
}

/// How long a job stopped at its time limit gets to stop cleanly before it is dropped.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Longest we wait for a provider to acknowledge a release DELETE.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Get the manifest (static GET, or dynamic kick-off and poll) and persist the file plan.
async fn plan(
    ctx: &JobContext,
    client: &ProviderClient,
    job: &Job,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<(), JobError> {
    let record = Recorder { store: &*ctx.store, id: &job.id, progress };
    let export_url = client
        .base
        .under(&job.export_url)
        .map_err(|e| JobError::Provider(format!("exportUrl refused: {e}")))?;
    let (body, manifest_url) = match job.export_type {
        ExportType::Static => {
            record.exporting().await?;
            (export::fetch_manifest(client, &export_url, cancel).await?, export_url)
        }
        ExportType::Dynamic => {
            let status_url = match job.status_url.as_deref().and_then(|s| Url::parse(s).ok()) {
                Some(u) => u,
                None => {
                    if record.kicking_off().await? {
                        // No status URL was stored: the provider's answer never reached us.
                        tracing::warn!("an earlier kick-off of this job was interrupted before the provider's answer was recorded; if the provider started that export, its status URL is unknown, so it cannot be released and expires at the provider on its own");
                    }
                    let u = export::kick_off(client, &export_url, &job.kickoff, cancel).await?;
                    record.status_url(u.as_str()).await?;
                    u
                }
            };
            let body = export::poll(client, &status_url, cancel, |text| record.export_progress(text)).await?;
            (body, status_url)
        }
    };
    let manifest = export::read_manifest(client, body, &manifest_url, cancel).await?;
    // Checked at start (config.rs), so this fails only on a bug.
    let template = FileNameTemplate::parse(&ctx.config.download_file_name).map_err(JobError::Internal)?;
    let files = name_files(&template, &job.id, manifest);
    tracing::info!(files = files.len(), "manifest read");
    ctx.store.save_plan(&job.id, &files).await?;
    Ok(())
}

/// `{resourceType}` in destination names of untyped (`organizeOutputBy`) files.
const UNTYPED_NAME: &str = "Mixed";

/// Destination names: the template, with error/deleted files prefixed and collisions numbered.
fn name_files(
    template: &FileNameTemplate,
    job_id: &str,
    planned: Vec<crate::fhir::manifest::PlannedFile>,
) -> Vec<JobFile> {
    let mut per_type: std::collections::HashMap<(FileKind, String), usize> = Default::default();
    let mut used = HashSet::new();
    planned
        .into_iter()
        .enumerate()
        .map(|(idx, f)| {
            let n = per_type.entry((f.kind, f.resource_type.clone())).or_default();
            *n += 1;
            let mut name = template.render(&FileNameVars {
                job_id,
                resource_type: if f.resource_type.is_empty() { UNTYPED_NAME } else { &f.resource_type },
                file_number: *n,
                url: &f.url,
            });
            if f.kind != FileKind::Output {
                name = format!("{}-{name}", f.kind.as_str());
            }
            let original = name.clone();
            let mut n = idx;
            while !used.insert(name.clone()) {
                name = format!("{n}-{original}");
                n += 1;
            }
            JobFile {
                job_id: job_id.to_string(),
                idx: idx as i64,
                kind: f.kind,
                resource_type: f.resource_type,
                url: f.url,
                requires_token: f.requires_token,
                name,
                state: FileState::Pending,
                resources: 0,
                bytes: 0,
                outcome: None,
                provider_errors: 0,
                type_counts: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::manifest::PlannedFile;

    #[test]
    fn destination_names_never_collide() {
        let template = FileNameTemplate::parse("{originalName}").unwrap();
        let planned =
            ["http://p/2-a.ndjson", "http://p/x/a.ndjson", "http://p/y/a.ndjson", "http://p/z/a.ndjson"]
                .iter()
                .map(|u| PlannedFile {
                    kind: FileKind::Output,
                    resource_type: "Patient".into(),
                    url: u.to_string(),
                    requires_token: true,
                })
                .collect();
        let names: Vec<String> = name_files(&template, "job", planned).into_iter().map(|f| f.name).collect();
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }
}
