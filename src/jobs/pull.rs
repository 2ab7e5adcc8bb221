//! The ping-and-pull intake: a ping's export (a static manifest URL, or a dynamic kick-off and
//! status polling) becomes the job's plan, one manifest that closes it. When the job ends, the
//! provider's export is released (Bulk Data v2+: DELETE on the status URL).
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use url::Url;

use crate::jobs::context::JobContext;
use crate::jobs::error::JobError;
use crate::jobs::export;
use crate::jobs::plan;
use crate::jobs::provider_client::{Auth, ProviderClient};
use crate::jobs::recorder::Recorder;
use crate::{domain::Job, fhir::parameters::ExportType};

/// Longest we wait for a provider to acknowledge a release DELETE.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Get the manifest (static GET, or dynamic kick-off and poll) and add it to the plan, closing it.
pub async fn plan_export(
    ctx: &JobContext,
    client: &ProviderClient,
    job: &Job,
    cancel: &CancellationToken,
    record: &Recorder<'_>,
) -> Result<(), JobError> {
    let export_url = client
        .base
        .under(&job.export_url)
        .map_err(|e| JobError::Provider(format!("exportUrl refused: {e}")))?;
    let (body, manifest_url) = match job.export_type {
        ExportType::Static => {
            record.exporting().await?;
            (export::fetch_manifest(client, &export_url, cancel).await?, export_url)
        }
        ExportType::Submit => {
            return Err(JobError::Internal("a submission has no export to pull".into()));
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
    let listed = export::read_manifest(client, Auth::WithToken, body, &manifest_url, cancel).await?;
    // Where an incremental pull of this export may start next time (`_since`).
    if let Some(at) = &listed.transaction_time {
        ctx.store.set_transaction_time(&job.id, at).await?;
    }
    let files = listed.files;
    tracing::info!(files = files.len(), "manifest read");
    plan::append(ctx, &job.id, manifest_url.as_str(), files, true).await?;
    Ok(())
}

/// What releasing a job's export needs: its status URL and a client for its provider.
pub struct ReleaseTarget {
    status: Url,
    client: ProviderClient,
}

/// Read what a release needs (before a DELETE removes the job), bounded in time.
pub async fn release_target(ctx: &JobContext, id: &str) -> Option<ReleaseTarget> {
    let lookup = async {
        let job = ctx.store.job(id).await.ok()??;
        let status = Url::parse(job.status_url.as_deref()?).ok()?;
        let provider = ctx.providers.provider(&job.client_id).await.ok()??;
        let client = ProviderClient::for_provider(ctx, &provider).await.ok()?;
        Some(ReleaseTarget { status, client })
    };
    tokio::time::timeout(RELEASE_TIMEOUT, lookup).await.ok().flatten()
}

/// Best effort: DELETE the provider's export status URL ("done with the files" or "cancel"),
/// bounded in time so it never holds up a cancel or shutdown.
pub async fn release_export(ctx: &JobContext, id: &str) {
    if let Some(target) = release_target(ctx, id).await {
        release(target).await;
    }
}

pub async fn release(ReleaseTarget { status, client }: ReleaseTarget) {
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
