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

/// Longest piece of a provider's non-FHIR error text we quote.
const MAX_QUOTED_CHARS: usize = 200;

/// A person-readable account of a provider's error response: its OperationOutcome, else a short
/// plain text (an HTML error page is reduced to its title or text, never quoted as markup).
pub async fn describe_failure(what: &str, resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = read_limited(resp, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
    match OperationOutcome::summarize(&body).or_else(|| plain_text(&body)) {
        // A page titled "404 Not Found" says nothing the status did not.
        Some(detail)
            if !detail.eq_ignore_ascii_case(status.canonical_reason().unwrap_or_default())
                && !detail.eq_ignore_ascii_case(&status.to_string()) =>
        {
            format!("{what} answered {status}: {detail}")
        }
        _ => format!("{what} answered {status}"),
    }
}

/// A short plain-text form of an error body: an HTML page's `<title>` (else its text without
/// tags), or the body itself, whitespace collapsed and cut to `MAX_QUOTED_CHARS`.
fn plain_text(body: &[u8]) -> Option<String> {
    let raw = String::from_utf8_lossy(body);
    let lower = raw.to_ascii_lowercase();
    let text = if lower.contains("<html") || lower.contains("<!doctype") || lower.contains("<body") {
        let title = lower.find("<title").and_then(|at| {
            let open = at + lower[at..].find('>')? + 1;
            let close = open + lower[open..].find("</title")?;
            Some(raw[open..close].to_string())
        });
        title.filter(|t| !t.trim().is_empty()).unwrap_or_else(|| strip_tags(&raw))
    } else {
        raw.into_owned()
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out: String = words.join(" ").chars().take(MAX_QUOTED_CHARS).collect();
    if out.chars().count() == MAX_QUOTED_CHARS {
        out.push('…');
    }
    (!out.is_empty()).then_some(out)
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
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
        let reason =
            retry::unless_cancelled(cancel, describe_failure("the provider's export kick-off", resp)).await?;
        return Err(JobError::Provider(reason));
    }
    let location = resp.headers().get(CONTENT_LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
        JobError::Provider("the provider accepted the export but sent no Content-Location status URL".into())
    })?;
    client
        .base
        .trusted_url(location, export_url)
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
        client.pace(url, cancel, |_| async {}).await?;
        let result = tokio::select! {
            biased;
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
            Err(SendError::Token(e)) if !last && !e.is_permanent() => client.backoff(attempt),
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
        client.pace(status_url, cancel, &mut on_progress).await?;
        let result = tokio::select! {
            biased;
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
            Err(e) if e.is_permanent() => {
                return Err(JobError::Provider(format!("the export status request failed: {}", e.describe())))
            }
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
                return read_manifest_body(client, resp, cancel).await;
            }
            Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                (failures, failing_since) = (0, None);
                let progress = resp
                    .headers()
                    .get("x-progress")
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.chars().take(100).collect::<String>())
                    .unwrap_or_else(|| "in progress".into());
                let asked = retry::retry_after(resp.headers(), limits.poll_interval, limits.max_retry_after);
                let wait = retry::poll_wait(
                    asked,
                    limits.poll_interval,
                    in_progress_polls,
                    limits.max_poll_interval,
                );
                in_progress_polls += 1;
                on_progress(format!(
                    "provider export: {progress}; next check in {} s",
                    wait.as_secs_f64().ceil()
                ))
                .await;
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
                    let reason =
                        retry::unless_cancelled(cancel, describe_failure("the export status URL", resp))
                            .await?;
                    return Err(JobError::Provider(reason));
                }
                on_progress(format!("provider status error {}; retry {failures}", resp.status())).await;
                client.wait_for(&resp, failures)
            }
            Ok(resp) => {
                let status = resp.status();
                let body = retry::unless_cancelled(cancel, read_limited(resp, MAX_ERROR_BODY_BYTES))
                    .await?
                    .unwrap_or_default();
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
    client.pace(url, cancel, |_| async {}).await?;
    let resp = client.send(Auth::WithToken, cancel, url, get).await?;
    if resp.status() != StatusCode::OK {
        let reason =
            retry::unless_cancelled(cancel, describe_failure("the export manifest URL", resp)).await?;
        return Err(JobError::Provider(reason));
    }
    read_manifest_body(client, resp, cancel).await
}

async fn read_manifest_body(
    client: &ProviderClient,
    resp: reqwest::Response,
    cancel: &CancellationToken,
) -> Result<Bytes, JobError> {
    retry::unless_cancelled(cancel, read_limited(resp, client.limits.max_manifest_bytes)).await?.map_err(
        |e| JobError::Provider(format!("the export manifest could not be read: {e} (MAX_MANIFEST_BYTES)")),
    )
}

/// Parse the first page and follow `link` next pages, collecting every file.
pub async fn read_manifest(
    client: &ProviderClient,
    first: Bytes,
    first_url: &Url,
    cancel: &CancellationToken,
) -> Result<Vec<PlannedFile>, JobError> {
    let bad = JobError::Manifest;
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
            .trusted_url(next, &page_url)
            .map_err(|e| JobError::Provider(format!("the manifest's next page was refused: {e}")))?;
        let body = fetch_manifest(client, &page_url, cancel).await?;
        manifest = Manifest::parse(&body).map_err(bad)?;
    }
    Ok(files)
}
