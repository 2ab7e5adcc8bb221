//! Talking to the provider's Bulk Data export (v2/v3 "Kick-off", "Status", "Complete Status"):
//! POST kick-off with Parameters (GET with query parameters when POST answers 405), status polling
//! that honours `Retry-After`, and reading the manifest with its `link` next pages.
use std::time::Instant;

use bytes::Bytes;
use reqwest::{
    header::{ACCEPT, CONTENT_LOCATION, CONTENT_TYPE},
    StatusCode,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{
    provider_client::{is_transient_status, Auth, ProviderClient, SendError},
    retry, JobError,
};
use crate::{
    fhir::{
        manifest::{Manifest, PlannedFile},
        operation_outcome::OperationOutcome,
        parameters::KickoffParam,
    },
    http_client::read_limited,
};

/// Longest provider error body we quote.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// A person-readable account of a provider's error response.
pub async fn describe_failure(what: &str, resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = read_limited(resp, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
    let detail = OperationOutcome::summarize(&body)
        .or_else(|| {
            let text = String::from_utf8_lossy(&body).trim().chars().take(300).collect::<String>();
            (!text.is_empty()).then_some(text)
        })
        .unwrap_or_else(|| "no details".into());
    format!("{what} answered {status}: {detail}")
}

fn kickoff_body(params: &[KickoffParam]) -> Value {
    let parameter: Vec<Value> = params
        .iter()
        .map(|p| match p.name.as_str() {
            "_since" | "_until" => json!({"name": p.name, "valueInstant": p.value}),
            "includeAssociatedData" => json!({"name": p.name, "valueCode": p.value}),
            "patient" => json!({"name": p.name, "valueReference": {"reference": p.value}}),
            "allowPartialManifests" if p.value == "true" || p.value == "false" => {
                json!({"name": p.name, "valueBoolean": p.value == "true"})
            }
            _ => json!({"name": p.name, "valueString": p.value}),
        })
        .collect();
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// Start the export; returns the status URL (bound to the provider's origin).
///
/// A kick-off is not idempotent (each accepted one starts an export), so it is retried only when
/// the provider surely did not start one: a refused connection, 429, or 503.
pub async fn kick_off(
    client: &ProviderClient,
    export_url: &Url,
    params: &[KickoffParam],
    cancel: &CancellationToken,
) -> Result<Url, JobError> {
    let body = kickoff_body(params).to_string();
    let post = |http: &reqwest::Client, url: Url| {
        http.post(url)
            .header(ACCEPT, "application/fhir+json")
            .header("Prefer", "respond-async")
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(body.clone())
    };
    let mut resp = kick_off_once(client, export_url, &post, cancel).await?;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        if params.iter().any(|p| p.name == "patient") {
            return Err(JobError::Provider(
                "the provider refuses POST kick-off (405) and 'patient' can only be sent by POST".into(),
            ));
        }
        let mut url = export_url.clone();
        for p in params {
            url.query_pairs_mut().append_pair(&p.name, &p.value);
        }
        tracing::info!("provider refused POST kick-off; falling back to GET");
        let get = |http: &reqwest::Client, url: Url| {
            http.get(url).header(ACCEPT, "application/fhir+json").header("Prefer", "respond-async")
        };
        resp = kick_off_once(client, &url, &get, cancel).await?;
    }
    if !resp.status().is_success() {
        return Err(JobError::Provider(describe_failure("the provider's export kick-off", resp).await));
    }
    let location = resp.headers().get(CONTENT_LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
        JobError::Provider("the provider accepted the export but sent no Content-Location status URL".into())
    })?;
    client
        .base
        .same_origin_url(location, export_url)
        .map_err(|e| JobError::Provider(format!("the export status URL was refused: {e}")))
}

async fn kick_off_once(
    client: &ProviderClient,
    url: &Url,
    make: &impl Fn(&reqwest::Client, Url) -> reqwest::RequestBuilder,
    cancel: &CancellationToken,
) -> Result<reqwest::Response, JobError> {
    let mut attempt = 0;
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return Err(JobError::Cancelled),
            r = client.send_once(Auth::WithToken, make, url) => r,
        };
        let last = attempt >= client.limits.max_retries;
        let wait = match result {
            Ok(resp)
                if !last
                    && matches!(
                        resp.status(),
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    ) =>
            {
                client.wait_for(&resp, attempt)
            }
            Ok(resp) => return Ok(resp),
            Err(SendError::Http(e)) if e.is_connect() && !last => client.backoff(attempt),
            Err(SendError::Token(_)) if !last => client.backoff(attempt),
            Err(SendError::Token(e)) => return Err(e),
            Err(e) => {
                return Err(JobError::Provider(format!("the export kick-off failed: {}", e.describe())))
            }
        };
        attempt += 1;
        retry::sleep(wait, cancel).await?;
    }
}

/// Poll the status URL until the manifest is ready. `on_progress` receives text for people.
/// Provider errors are retried with backoff until they have lasted `STATUS_ERROR_BUDGET`.
pub async fn poll<F, Fut>(
    client: &ProviderClient,
    status_url: &Url,
    cancel: &CancellationToken,
    mut on_progress: F,
) -> Result<Bytes, JobError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let limits = &client.limits;
    let deadline = Instant::now() + limits.export_timeout;
    let mut in_progress_polls = 0u32;
    let mut failures = 0u32;
    let mut failing_since: Option<Instant> = None;
    let get = |http: &reqwest::Client, url: Url| http.get(url).header(ACCEPT, "application/json");
    loop {
        if Instant::now() > deadline {
            return Err(JobError::Provider(format!(
                "the export did not finish within {} s (EXPORT_TIMEOUT)",
                limits.export_timeout.as_secs()
            )));
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return Err(JobError::Cancelled),
            r = client.send_once(Auth::WithToken, &get, status_url) => r,
        };
        // Counts a failure; returns true when the error budget is spent.
        let mut give_up = || {
            failures += 1;
            let since = *failing_since.get_or_insert_with(Instant::now);
            failures > limits.max_retries && since.elapsed() >= limits.status_error_budget
        };
        let wait = match result {
            Err(e) => {
                if give_up() {
                    return Err(JobError::Provider(format!(
                        "the export status URL failed {failures} times in a row: {}",
                        e.describe()
                    )));
                }
                on_progress(format!("status request failed; retry {failures}")).await;
                client.backoff(failures)
            }
            Ok(resp) if resp.status() == StatusCode::OK => {
                return read_manifest_body(client, resp).await;
            }
            Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                (failures, failing_since) = (0, None);
                let progress = resp
                    .headers()
                    .get("x-progress")
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.chars().take(100).collect::<String>())
                    .unwrap_or_else(|| "in progress".into());
                on_progress(format!("provider export: {progress}")).await;
                let wait = client.wait_for(&resp, in_progress_polls);
                in_progress_polls += 1;
                wait
            }
            Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                let wait = client.wait_for(&resp, in_progress_polls);
                in_progress_polls += 1;
                on_progress(format!("provider asked us to slow down; waiting {} s", wait.as_secs())).await;
                wait
            }
            Ok(resp) if is_transient_status(resp.status()) => {
                if give_up() {
                    return Err(JobError::Provider(describe_failure("the export status URL", resp).await));
                }
                on_progress(format!("provider status error {}; retry {failures}", resp.status())).await;
                client.wait_for(&resp, failures)
            }
            Ok(resp) => {
                let status = resp.status();
                let body = read_limited(resp, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
                // Bulk Data: an all-`transient` OperationOutcome means "try later", not failure.
                if OperationOutcome::is_transient(&body) && !give_up() {
                    client.backoff(failures)
                } else {
                    let detail = OperationOutcome::summarize(&body).unwrap_or_else(|| "no details".into());
                    return Err(JobError::Provider(format!(
                        "the export status URL answered {status}: {detail}"
                    )));
                }
            }
        };
        retry::sleep(wait, cancel).await?;
    }
}

/// GET a manifest page (static exports, and `link` next pages).
pub async fn fetch_manifest(
    client: &ProviderClient,
    url: &Url,
    cancel: &CancellationToken,
) -> Result<Bytes, JobError> {
    let get = |http: &reqwest::Client, url: Url| http.get(url).header(ACCEPT, "application/json");
    let resp = client.send(Auth::WithToken, cancel, url, get).await?;
    if resp.status() != StatusCode::OK {
        return Err(JobError::Provider(describe_failure("the export manifest URL", resp).await));
    }
    read_manifest_body(client, resp).await
}

async fn read_manifest_body(client: &ProviderClient, resp: reqwest::Response) -> Result<Bytes, JobError> {
    read_limited(resp, client.limits.max_manifest_bytes).await.map_err(|e| {
        JobError::Provider(format!("the export manifest could not be read: {e} (MAX_MANIFEST_BYTES)"))
    })
}

/// Parse the first page and follow `link` next pages, collecting every file.
pub async fn read_manifest(
    client: &ProviderClient,
    first: Bytes,
    first_url: &Url,
    cancel: &CancellationToken,
) -> Result<Vec<PlannedFile>, JobError> {
    let bad = |e: crate::fhir::manifest::ManifestError| JobError::Provider(e.to_string());
    let mut manifest = Manifest::parse(&first).map_err(bad)?;
    let mut files = Vec::new();
    let mut page_url = first_url.clone();
    for page in 1.. {
        files.extend(manifest.planned_files().map_err(bad)?);
        if files.len() > client.limits.max_files_per_job {
            return Err(JobError::Provider(format!(
                "the export lists more than {} files (MAX_FILES_PER_JOB)",
                client.limits.max_files_per_job
            )));
        }
        let Some(next) = manifest.next_page() else {
            break;
        };
        if page >= client.limits.max_manifest_pages {
            return Err(JobError::Provider(format!(
                "the manifest has more than {} pages (MAX_MANIFEST_PAGES)",
                client.limits.max_manifest_pages
            )));
        }
        page_url = client
            .base
            .same_origin_url(next, &page_url)
            .map_err(|e| JobError::Provider(format!("the manifest's next page was refused: {e}")))?;
        let body = fetch_manifest(client, &page_url, cancel).await?;
        manifest = Manifest::parse(&body).map_err(bad)?;
    }
    Ok(files)
}
