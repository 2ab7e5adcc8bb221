//! Talking to the provider's Bulk Data export (v2/v3 "Kick-off", "Status", "Complete Status"):
//! POST kick-off with Parameters (GET with query parameters when POST answers 405), status polling
//! that honours `Retry-After`, and reading the manifest with its `link` next pages.
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{
    header::{ACCEPT, CONTENT_LOCATION, CONTENT_TYPE},
    StatusCode,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::jobs::error::JobError;
use crate::jobs::jwe;
use crate::jobs::provider_client::{is_transient_status, Auth, ProviderClient, SendError};
use crate::jobs::retry::{self, Attempt, Try};
use crate::{
    auth::provider_base::redact,
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
    let Some(location) = resp.headers().get(CONTENT_LOCATION).and_then(|v| v.to_str().ok()) else {
        // The usual mistake: a static export's manifest URL pinged as a dynamic export.
        let hint = match resp.status() {
            StatusCode::OK => "; it answered 200 rather than 202, as a static export's manifest does: if the exportUrl is a manifest (bulk-import provide prints one), ping with exportType static (CLI: --export-type static)",
            _ => "",
        };
        return Err(JobError::Provider(format!(
            "the provider accepted the export but sent no Content-Location status URL{hint}"
        )));
    };
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
    retry::run(client.retry_policy(), cancel, "export kick-off", |t: Try| async move {
        if let Err(e) = client.pace(url, cancel, |_| async {}).await {
            return Attempt::Done(Err(e));
        }
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Attempt::Done(Err(JobError::Cancelled)),
            r = client.send_once(Auth::WithToken, make, url) => r,
        };
        match result {
            Ok(resp)
                if !t.last
                    && matches!(
                        resp.status(),
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    ) =>
            {
                Attempt::Again {
                    after: client.retry_policy().retry_after(resp.headers()),
                    why: format!("the provider answered {} to the kick-off", resp.status()),
                }
            }
            Ok(resp) => Attempt::Done(Ok(resp)),
            Err(SendError::Http(e)) if e.is_connect() && !t.last => {
                Attempt::Again { after: None, why: SendError::Http(e).describe() }
            }
            Err(SendError::Token(e)) if !t.last && !e.is_permanent() => {
                Attempt::Again { after: None, why: crate::error_text::chain(&e) }
            }
            Err(SendError::Token(e)) => Attempt::Done(Err(e)),
            Err(e) => Attempt::Done(Err(JobError::Provider(format!(
                "the export kick-off failed: {}",
                e.describe()
            )))),
        }
    })
    .await
}

/// What one status check found.
enum Status {
    Ready(Bytes),
    /// Still running: check again after `wait`; `text` is for people.
    Running {
        wait: Duration,
        text: String,
    },
}

/// Poll the status URL until the manifest is ready. `on_progress` receives text for people.
/// Each check runs under the retry policy, failing for at most `STATUS_ERROR_BUDGET`; an answer
/// that the export still runs starts the next check afresh.
pub async fn poll<F, Fut>(
    client: &ProviderClient,
    status_url: &Url,
    cancel: &CancellationToken,
    on_progress: F,
) -> Result<Bytes, JobError>
where
    F: FnMut(String) -> Fut + Send,
    Fut: std::future::Future<Output = ()>,
{
    let limits = &client.limits;
    let deadline = Instant::now() + limits.export_timeout;
    let policy = client.retry_policy().lasting(limits.status_error_budget);
    let mut in_progress_polls = 0u32;
    // Attempts and the loop both tell people what happens; one at a time.
    let on_progress = std::sync::Mutex::new(on_progress);
    let tell = |text: String| {
        let mut f = on_progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(text)
    };
    // Bounded by EXPORT_TIMEOUT.
    loop {
        if Instant::now() > deadline {
            return Err(JobError::Provider(format!(
                "the export did not finish within {} s (EXPORT_TIMEOUT)",
                limits.export_timeout.as_secs()
            )));
        }
        let polls = in_progress_polls;
        let check = |t: Try| async move {
            if let Err(e) = client.pace(status_url, cancel, tell).await {
                return Attempt::Done(Err(e));
            }
            let step = check_status(client, status_url, cancel, t, polls).await;
            if let Attempt::Again { why, .. } = &step {
                if !t.last {
                    tell(format!("{why}; retry {}", t.number + 1)).await;
                }
            }
            step
        };
        match retry::run(policy, cancel, "export status", check).await? {
            Status::Ready(body) => return Ok(body),
            Status::Running { wait, text } => {
                in_progress_polls += 1;
                tell(text).await;
                retry::sleep(wait, cancel).await?;
            }
        }
    }
}

/// One status request.
async fn check_status(
    client: &ProviderClient,
    status_url: &Url,
    cancel: &CancellationToken,
    t: Try,
    in_progress_polls: u32,
) -> Attempt<Status> {
    let limits = &client.limits;
    let get = |http: &reqwest::Client, url: Url| http.get(url).header(ACCEPT, "application/json");
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Attempt::Done(Err(JobError::Cancelled)),
        r = client.send_once(Auth::WithToken, &get, status_url) => r,
    };
    let resp = match result {
        Err(e) if e.is_permanent() => {
            let e = JobError::Provider(format!("the export status request failed: {}", e.describe()));
            return Attempt::Done(Err(e));
        }
        Err(e) if t.last => {
            return Attempt::Done(Err(JobError::Provider(format!(
                "the export status URL failed {} times in a row: {}",
                t.number + 1,
                e.describe()
            ))))
        }
        Err(_) => return Attempt::Again { after: None, why: "status request failed".into() },
        Ok(resp) => resp,
    };
    match resp.status() {
        StatusCode::OK => Attempt::Done(read_manifest_body(client, resp, cancel).await.map(Status::Ready)),
        StatusCode::ACCEPTED => {
            let progress = resp
                .headers()
                .get("x-progress")
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(100).collect::<String>())
                .unwrap_or_else(|| "in progress".into());
            let asked = retry::retry_after(resp.headers(), limits.poll_interval, limits.max_retry_after);
            let wait =
                retry::poll_wait(asked, limits.poll_interval, in_progress_polls, limits.max_poll_interval);
            let text = format!("provider export: {progress}; next check in {} s", wait.as_secs_f64().ceil());
            Attempt::Done(Ok(Status::Running { wait, text }))
        }
        // Slowing down is not failing: it does not use up the error budget.
        StatusCode::TOO_MANY_REQUESTS => {
            let wait = client.wait_for(&resp, in_progress_polls);
            let text = format!("provider asked us to slow down; waiting {} s", wait.as_secs());
            Attempt::Done(Ok(Status::Running { wait, text }))
        }
        status if is_transient_status(status) => {
            if t.last {
                let reason =
                    retry::unless_cancelled(cancel, describe_failure("the export status URL", resp)).await;
                return Attempt::Done(reason.and_then(|r| Err(JobError::Provider(r))));
            }
            let after = client.retry_policy().retry_after(resp.headers());
            Attempt::Again { after, why: format!("provider status error {status}") }
        }
        status => {
            let body = match retry::unless_cancelled(cancel, read_limited(resp, MAX_ERROR_BODY_BYTES)).await {
                Ok(body) => body.unwrap_or_default(),
                Err(e) => return Attempt::Done(Err(e)),
            };
            // Bulk Data: an all-`transient` OperationOutcome means "try later", not failure.
            if OperationOutcome::is_transient(&body) && !t.last {
                return Attempt::Again { after: None, why: format!("provider status {status}, transient") };
            }
            let detail = OperationOutcome::summarize(&body).unwrap_or_else(|| "no details".into());
            Attempt::Done(Err(JobError::Provider(format!(
                "the export status URL answered {status}: {detail}"
            ))))
        }
    }
}

/// GET a manifest page (static exports, and `link` next pages).
pub async fn fetch_manifest(
    client: &ProviderClient,
    url: &Url,
    cancel: &CancellationToken,
) -> Result<Bytes, JobError> {
    fetch_manifest_as(client, Auth::WithToken, url, cancel).await
}

/// The same, with or without our token (a Bulk Submit manifest gets one only when the submission
/// says where to get it).
pub async fn fetch_manifest_as(
    client: &ProviderClient,
    auth: Auth,
    url: &Url,
    cancel: &CancellationToken,
) -> Result<Bytes, JobError> {
    let get = |http: &reqwest::Client, url: Url| http.get(url).header(ACCEPT, "application/json");
    client.pace(url, cancel, |_| async {}).await?;
    let resp = client.send(auth, cancel, url, get).await?;
    if resp.status() != StatusCode::OK {
        let reason =
            retry::unless_cancelled(cancel, describe_failure("the export manifest URL", resp)).await?;
        return Err(JobError::Provider(reason));
    }
    let body = read_manifest_body(client, resp, cancel).await?;
    match client.content_key() {
        Some(key) => jwe::decrypt_all(key, &body)
            .map_err(|e| JobError::Provider(format!("the manifest could not be decrypted: {e}"))),
        _ => Ok(body),
    }
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

/// A manifest read, all its pages.
pub struct Listed {
    pub files: Vec<PlannedFile>,
    /// The first page's `transactionTime`, if it gave one.
    pub transaction_time: Option<String>,
}

/// Parse the first page and follow `link` next pages (fetched as the first was, `auth`),
/// collecting every file.
pub async fn read_manifest(
    client: &ProviderClient,
    auth: Auth,
    first: Bytes,
    first_url: &Url,
    cancel: &CancellationToken,
) -> Result<Listed, JobError> {
    let bad = JobError::Manifest;
    let mut manifest = Manifest::parse(&first).map_err(bad)?;
    let transaction_time = manifest.transaction_time().map(str::to_string);
    let mut files = Vec::new();
    let mut page_url = first_url.clone();
    // Pages read so far: a `next` back to one of them is a loop, not more pages.
    let mut seen = std::collections::HashSet::from([first_url.clone()]);
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
        if !seen.insert(page_url.clone()) {
            return Err(JobError::Provider(format!(
                "the manifest's page {} links back to a page already read ({}) as its next: the pages loop",
                page,
                redact(&page_url)
            )));
        }
        let body = fetch_manifest_as(client, auth, &page_url, cancel).await?;
        manifest = Manifest::parse(&body).map_err(bad)?;
    }
    Ok(Listed { files, transaction_time })
}
