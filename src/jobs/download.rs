//! One file of an export (Bulk Data "Output File Request"): fetch (token only when the manifest
//! page requires it; gzip accepted), split into lines under the max-line guard, validate each
//! line, and stream the received bytes unchanged to the destination. A broken connection restarts
//! the file; a bad line fails it with the line number and reason. Only cancellation, storage and
//! destination errors reach the job: every provider problem is this file's outcome. Files the
//! manifest lists as the provider's own errors are read into the outcome and never stored as data.
use std::collections::BTreeMap;

use futures::{stream::BoxStream, StreamExt};
use reqwest::{
    header::{ACCEPT, ACCEPT_ENCODING},
    StatusCode,
};
use tokio_util::sync::CancellationToken;

use crate::jobs::byte_range::{Answer, Continuation, Validator};
use crate::jobs::checkpoint::{Checkpoint, Checkpoints, Keeping, Mark};
use crate::jobs::error::JobError;
use crate::jobs::export::describe_failure;
use crate::jobs::file_bounds::{Exceeded, FileMeter, JobBytes};
use crate::jobs::gzip::{decoded_body, DecodeError, ACCEPTED};
use crate::jobs::jwe::Decrypted;
use crate::jobs::ndjson::{validate_any_line, validate_line, AnyLine, LineError, LineKind, LineSplitter};
use crate::jobs::provider_client::{is_transient_status, Auth, ProviderClient, SendError};
use crate::jobs::provider_report::{ProviderReport, MAX_KEPT_ISSUES};
use crate::jobs::retry::{self, Attempt, Try};
use crate::jobs::spool::Spool;
use crate::{
    auth::provider_base::{redact, ProviderBase},
    destination::{Destination, FileTarget, FileWriter},
    domain::{FileState, JobFile},
    fhir::{
        manifest::FileKind,
        operation_outcome::{Issue, IssueCode, OperationOutcome, Severity},
    },
};

/// Attempts in a row a file may be too slow (`MIN_TRANSFER_RATE`) before it fails: two windows,
/// not `MAX_RETRIES` of them (a 1 B/s drip would hold a slot for six minutes).
const MAX_SLOW_ATTEMPTS: u32 = 2;

/// The result of one file, ready to store.
#[derive(Debug)]
pub struct FileResult {
    pub state: FileState,
    pub resources: i64,
    pub bytes: i64,
    pub outcome: OperationOutcome,
    /// Error and fatal issues the provider reported in this file (its `error[]` files).
    pub provider_errors: i64,
    /// Resources per type, for a file whose manifest entry named no type (`organizeOutputBy`).
    pub type_counts: Option<BTreeMap<String, i64>>,
}

impl FileResult {
    fn failed(file: &JobFile, code: IssueCode, reason: impl std::fmt::Display) -> Self {
        Self {
            state: FileState::Failed,
            resources: 0,
            bytes: 0,
            outcome: OperationOutcome::error(code, format!("file {}: {reason}", describe(file))),
            provider_errors: 0,
            type_counts: None,
        }
    }

    /// A file whose lease lapsed under one process after another too often.
    pub fn taken_over_too_often(file: &JobFile, takeovers: i64) -> Self {
        let why = format!(
            "its download was taken over {takeovers} times from a process that stopped (crashed or stalled) while downloading it; not tried again"
        );
        Self::failed(file, IssueCode::Incomplete, why)
    }

    fn stored(file: &JobFile, streamed: Streamed, bytes: i64, location: String) -> Self {
        let resources = streamed.resources;
        Self {
            state: FileState::Done,
            resources,
            bytes,
            outcome: OperationOutcome::single(
                Severity::Information,
                IssueCode::Informational,
                format!(
                    "file {} imported: {resources} resources, {bytes} bytes, stored as {location}",
                    describe(file)
                ),
            ),
            provider_errors: 0,
            type_counts: streamed.by_type,
        }
    }

    /// An `error[]` file read: one issue saying what it held, then the provider's own issues.
    fn reported(file: &JobFile, report: ProviderReport) -> Self {
        let summary = format!(
            "the provider reported {} error(s), {} warning(s) and {} other issue(s) about its export in {}",
            report.errors, report.warnings, report.others, file.url
        );
        let severity = if report.errors > 0 { Severity::Error } else { Severity::Information };
        let mut issue = vec![Issue { severity, code: IssueCode::Processing, diagnostics: Some(summary) }];
        let left_out = report.total() - report.kept.len() as i64;
        issue.extend(report.kept);
        if left_out > 0 {
            let more = format!("{left_out} more issue(s) not shown (the first {MAX_KEPT_ISSUES} are)");
            issue.push(Issue {
                severity: Severity::Information,
                code: IssueCode::Informational,
                diagnostics: Some(more),
            });
        }
        Self {
            state: FileState::Done,
            resources: 0,
            bytes: 0,
            outcome: OperationOutcome {
                resource_type: "OperationOutcome".into(),
                id: None,
                extension: vec![],
                issue,
            },
            provider_errors: report.errors,
            type_counts: None,
        }
    }
}

/// "URL (Type)", or the URL alone for an untyped (`organizeOutputBy`) entry.
pub fn describe(file: &JobFile) -> String {
    let url = shown_url(&file.url);
    if file.resource_type.is_empty() {
        url
    } else {
        format!("{url} ({})", file.resource_type)
    }
}

/// A file URL as outcomes show it: without its query, which is a signature on pre-signed URLs.
fn shown_url(raw: &str) -> String {
    url::Url::parse(raw).map_or_else(|_| raw.to_string(), |u| redact(&u))
}

/// What a file held, counted while it streamed.
#[derive(Debug, Default)]
struct Streamed {
    resources: i64,
    by_type: Option<BTreeMap<String, i64>>,
}

/// Where a file's lines go.
enum Sink<'a> {
    /// Data: the received bytes, unchanged, to the destination, and its durable points to the
    /// store when the download could be continued.
    Store(&'a mut dyn FileWriter, Option<&'a mut Keeping>),
    /// The provider's own OperationOutcomes: read into our outcome, stored nowhere.
    Report(&'a mut ProviderReport),
}

/// Why one attempt at a file stopped.
enum AttemptError {
    /// Worth another attempt (connection broke, body stalled or truncated, token trouble, a
    /// transient status), after `after` if the provider said how long.
    Transient {
        after: Option<std::time::Duration>,
        why: String,
    },
    /// The body came slower than `MIN_TRANSFER_RATE` over a window: worth one more attempt (a
    /// bad route may pass), not more (a provider that drips does so every time).
    TooSlow(String),
    /// The file itself is bad or refused; retrying cannot help.
    Permanent(IssueCode, String),
    /// The same, because of one resource we can name (`Type/id`).
    BadResource(IssueCode, String, String),
    Job(JobError),
}

impl From<JobError> for AttemptError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Destination(d) if d.refuses_the_file() => {
                AttemptError::Permanent(IssueCode::Invalid, crate::error_text::chain(&d))
            }
            JobError::Cancelled
            | JobError::Store(_)
            | JobError::Destination(_)
            | JobError::Spool(_)
            | JobError::Bound(_)
            | JobError::TimeLimit(_)
            | JobError::LeaseLost
            | JobError::StillStopping
            | JobError::Plan(_) => AttemptError::Job(e),
            // Retried already where retrying helps: the file fails, the job goes on.
            JobError::Provider(m) => AttemptError::Permanent(IssueCode::Transient, m),
            e @ (JobError::Manifest(_) | JobError::Revoked | JobError::Internal(_)) => AttemptError::Job(e),
            JobError::Refused(m) => AttemptError::Permanent(IssueCode::Security, m),
            JobError::Url(e) => AttemptError::Permanent(IssueCode::Security, e.to_string()),
            e @ JobError::Auth(_) if e.is_permanent() => {
                AttemptError::Permanent(IssueCode::Security, crate::error_text::chain(&e))
            }
            // Token trouble that may pass is retried with the file; this is the last attempt.
            e @ JobError::Auth(_) => {
                AttemptError::Permanent(IssueCode::Transient, crate::error_text::chain(&e))
            }
        }
    }
}

/// Import one file. Errors returned are job-level (cancel, storage); file problems are in the result.
pub async fn import_file(
    client: &ProviderClient,
    destination: &dyn Destination,
    file: &JobFile,
    job_bytes: &JobBytes,
    checkpoints: &Checkpoints,
    cancel: &CancellationToken,
) -> Result<FileResult, JobError> {
    let (url, auth) = match file_url(&client.base, file) {
        Ok(found) => found,
        Err(reason) => return Ok(FileResult::failed(file, IssueCode::Security, reason)),
    };
    let url = &url;
    // A data file's download so far, for the next attempt to continue: to begin with, what an
    // earlier process stored of it.
    let resumed = match file.kind {
        FileKind::Error => None,
        _ if client.content_key().is_some() => None,
        _ => resume(client, destination, file, job_bytes, checkpoints).await,
    };
    let partial = tokio::sync::Mutex::new(resumed);
    let partial = &partial;
    // Attempts in a row that were too slow.
    let slow = std::sync::atomic::AtomicU32::new(0);
    let slow = &slow;
    let one_attempt = |t: Try| async move {
        let fetch = Fetch { client, url, auth, file, t, cancel };
        let result = if file.kind == FileKind::Error {
            attempt_report(&fetch, job_bytes).await
        } else {
            attempt_data(&fetch, destination, job_bytes, checkpoints, &mut *partial.lock().await).await
        };
        match result {
            Ok(done) => Attempt::Done(Ok(done)),
            Err(AttemptError::Job(e)) => Attempt::Done(Err(e)),
            Err(AttemptError::Permanent(code, reason)) => {
                Attempt::Done(Ok(FileResult::failed(file, code, reason)))
            }
            Err(AttemptError::BadResource(code, reason, resource)) => {
                let mut failed = FileResult::failed(file, code, reason);
                failed.outcome = failed.outcome.about(resource);
                Attempt::Done(Ok(failed))
            }
            Err(AttemptError::TooSlow(why)) => {
                let in_a_row = slow.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if in_a_row >= MAX_SLOW_ATTEMPTS || t.last {
                    let why = format!(
                        "{why} (gave up after {} attempts, {in_a_row} of them too slow in a row)",
                        t.number + 1
                    );
                    return Attempt::Done(Ok(FileResult::failed(file, IssueCode::Timeout, why)));
                }
                Attempt::Again { after: None, why: format!("file {}: {why}", redact(url)) }
            }
            Err(AttemptError::Transient { why, .. }) if t.last => Attempt::Done(Ok(FileResult::failed(
                file,
                IssueCode::Incomplete,
                format!("{why} (gave up after {} attempts)", t.number + 1),
            ))),
            Err(AttemptError::Transient { after, why }) => {
                slow.store(0, std::sync::atomic::Ordering::Relaxed);
                Attempt::Again { after, why: format!("file {}: {why}", redact(url)) }
            }
        }
    };
    let result = retry::run(client.retry_policy(), cancel, "file download", one_attempt).await;
    let mut left = partial.lock().await;
    let stored = left.as_ref().and_then(|p| p.keeping.as_ref()).is_some_and(|k| k.stored);
    if stored && checkpoints.stopping() {
        // The server is stopping: its next start (or another replica) continues the file.
        drop(left.take());
    } else {
        // Cancelled (or out of attempts) with a download kept for a continuation: nothing of
        // it stays.
        discard(&mut left).await;
    }
    result
}

/// A download an earlier process stored part of, reopened where its checkpoint says, if the
/// destination still holds that part; else the file starts over (and the checkpoint goes).
async fn resume<'a>(
    client: &ProviderClient,
    destination: &dyn Destination,
    file: &JobFile,
    job_bytes: &'a JobBytes,
    checkpoints: &Checkpoints,
) -> Option<Partial<'a>> {
    let checkpoint = checkpoints.load().await?;
    let validator = Validator::from_text(&checkpoint.validator);
    let target = FileTarget {
        job: &file.job_id,
        name: &file.name,
        resource_type: &file.resource_type,
        provider: client.provider(),
        kind: file.kind,
    };
    let reopened = match validator {
        Some(_) => destination.reopen(target, &checkpoint.saved).await,
        None => Ok(None),
    };
    let writer = match reopened {
        Ok(Some(writer)) => writer,
        Ok(None) => {
            tracing::info!("what an earlier process stored of the file is gone; it starts over");
            checkpoints.clear().await;
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %crate::error_text::chain(&e), "could not reopen what an earlier process stored of the file; it starts over");
            checkpoints.clear().await;
            return None;
        }
    };
    let meter = FileMeter::new(job_bytes, &client.limits, file.idx);
    let mut meter =
        if file.kind == FileKind::Output { meter.of_type(&file.resource_type) } else { meter.not_data() };
    let Checkpoint { saved, lines, resources, blank, by_type, validator: kept, total } = checkpoint;
    if meter.resumed(saved.bytes, resources.max(0) as u64).is_err() {
        // Over a bound already (lowered since?): the file starts over and meets it again.
        if checkpoints.clear().await {
            if let Err(e) = writer.abort().await {
                tracing::warn!(error = %crate::error_text::chain(&e), "could not remove a partial file");
            }
        }
        return None;
    }
    let untyped = file.resource_type.is_empty();
    let by_type = if untyped { Some(by_type.unwrap_or_default()) } else { None };
    let lines = Lines {
        splitter: LineSplitter::after(client.limits.max_line_bytes, lines),
        counted: Streamed { resources, by_type },
        blank,
    };
    tracing::info!(from = saved.bytes, "the file goes on from what an earlier process stored of it");
    let keeping = Keeping::new(checkpoints.clone(), kept, total, true);
    Some(Partial { writer, meter, lines, received: saved.bytes, validator, total, keeping: Some(keeping) })
}

/// The file's URL and whether it gets our token. A file that needs the token must be on a trusted
/// origin; one that does not may be anywhere the SSRF guard and `file_origins` allow (pre-signed
/// object-store URLs, CDNs), checked again on every redirect hop.
fn file_url(base: &ProviderBase, file: &JobFile) -> Result<(url::Url, Auth), String> {
    let url =
        url::Url::parse(&file.url).map_err(|_| "the URL is not an absolute URL; not fetched".to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the URL is not http(s); not fetched".into());
    }
    if !file.requires_token {
        base.file_host_allowed(&url).map_err(|e| e.to_string())?;
        return Ok((url, Auth::Without));
    }
    if !base.is_trusted(&url) {
        return Err(format!(
            "the manifest says this file requires our access token, but {} is not {}; the token was not sent and the file was not fetched (list that origin in the registration's token_origins if it belongs to the provider)",
            url.origin().ascii_serialization(),
            base.trusted_list()
        ));
    }
    Ok((url, Auth::WithToken))
}

/// Lines of one file as they are validated; kept with a download that continues.
struct Lines {
    splitter: LineSplitter,
    counted: Streamed,
    blank: u64,
}

impl Lines {
    fn new(fetch: &Fetch<'_>) -> Self {
        let untyped = fetch.file.resource_type.is_empty();
        Self {
            splitter: LineSplitter::new(fetch.client.limits.max_line_bytes),
            counted: Streamed { resources: 0, by_type: untyped.then(BTreeMap::new) },
            blank: 0,
        }
    }
}

/// A data file's download so far. Kept across attempts when the provider can send the rest of
/// the same file (`byte_range`), so a broken download continues where its bytes stopped: the
/// writer, the meter and the line state go on as if the connection had never broken.
struct Partial<'a> {
    writer: Box<dyn FileWriter>,
    meter: FileMeter<'a>,
    lines: Lines,
    /// Bytes received and written: where a continuation starts.
    received: u64,
    /// `None`: the provider cannot continue it; a break starts the file over.
    validator: Option<Validator>,
    /// The file's length as its first answer gave it (`Content-Length` of an unencoded 200).
    total: Option<u64>,
    /// Its durable points, stored for another process to continue from; `None` when it could
    /// not be continued.
    keeping: Option<Keeping>,
}

/// Abort a kept download: its partial file goes, and first the checkpoint that pointed to it.
/// One that cannot be cleared (the lease was taken over) may be what another process goes on
/// from: then the partial file is left to it.
/// False in that case: the file is no longer this process's to write at all.
async fn discard(slot: &mut Option<Partial<'_>>) -> bool {
    let Some(p) = slot.take() else { return true };
    if let Some(k) = p.keeping.as_ref().filter(|k| k.stored) {
        if !k.checkpoints.clear().await {
            tracing::info!("the file's partial download is left to the process that holds it now");
            return false;
        }
    }
    if let Err(abort) = p.writer.abort().await {
        tracing::warn!(error = %crate::error_text::chain(&abort), "could not remove a partial file");
    }
    true
}

/// `e`, once the kept download is thrown away; if it had to be left to another process, no
/// attempt may follow.
async fn discarded(slot: &mut Option<Partial<'_>>, e: AttemptError) -> AttemptError {
    if discard(slot).await {
        e
    } else {
        not_ours()
    }
}

/// The file's lease (or the file) is gone from this process.
fn not_ours() -> AttemptError {
    let why =
        "the file is no longer this server's to write: it was withdrawn, or another server took it over";
    AttemptError::Permanent(IssueCode::Processing, why.into())
}

/// One attempt at a provider's `error[]` file: read whole into the outcome, stored nowhere.
async fn attempt_report(fetch: &Fetch<'_>, job_bytes: &JobBytes) -> Result<FileResult, AttemptError> {
    let resp = refuse_unless_ok(fetch, request(fetch, None).await?).await?;
    let mut report = ProviderReport::default();
    let mut meter = FileMeter::new(job_bytes, &fetch.client.limits, fetch.file.idx).not_data();
    let (mut lines, mut received) = (Lines::new(fetch), 0);
    pump(fetch, resp, Sink::Report(&mut report), &mut meter, &mut lines, &mut received).await?;
    Ok(FileResult::reported(fetch.file, report))
}

/// One attempt at a data file: the rest of the kept download if the provider can send it, else
/// the whole file into a fresh writer.
async fn attempt_data<'a>(
    fetch: &Fetch<'_>,
    destination: &dyn Destination,
    job_bytes: &'a JobBytes,
    checkpoints: &Checkpoints,
    slot: &mut Option<Partial<'a>>,
) -> Result<FileResult, AttemptError> {
    let file = fetch.file;
    let continuation = slot.as_ref().and_then(|p| {
        let validator = p.validator.clone()?;
        (p.received > 0).then_some(Continuation { from: p.received, validator, total: p.total })
    });
    let resp = match request(fetch, continuation.as_ref()).await {
        Ok(resp) => resp,
        Err(e @ AttemptError::Transient { .. }) if continuation.is_some() => return Err(e),
        Err(e @ AttemptError::Job(JobError::Cancelled)) => return Err(e),
        Err(e) => return Err(discarded(slot, e).await),
    };
    let continued = match continuation.as_ref().map(|c| c.answered(&resp)) {
        Some(Answer::Rest) => true,
        Some(Answer::Unusable) => {
            let why = format!(
                "the provider answered {} to a request for the rest of the file; it starts over",
                resp.status()
            );
            return Err(discarded(slot, AttemptError::Transient { after: None, why }).await);
        }
        Some(Answer::Whole) | None => false,
    };
    let resp = if continued {
        tracing::info!(file = %redact(fetch.url), from = slot.as_ref().map_or(0, |p| p.received), "the download continues where it broke off");
        resp
    } else {
        if !discard(slot).await {
            return Err(not_ours());
        }
        let resp = refuse_unless_ok(fetch, resp).await?;
        let target = FileTarget {
            job: &file.job_id,
            name: &file.name,
            resource_type: &file.resource_type,
            provider: fetch.client.provider(),
            kind: file.kind,
        };
        let writer = destination.open(target).await.map_err(|e| AttemptError::Job(e.into()))?;
        let meter = FileMeter::new(job_bytes, &fetch.client.limits, file.idx);
        let meter =
            if file.kind == FileKind::Output { meter.of_type(&file.resource_type) } else { meter.not_data() };
        // An encrypted file's bytes on the wire are not the bytes stored: a break starts it over.
        let validator =
            if fetch.client.content_key().is_some() { None } else { Validator::of(resp.headers()) };
        let total = resp.content_length();
        let keeping = validator
            .as_ref()
            .and_then(Validator::as_text)
            .map(|v| Keeping::new(checkpoints.clone(), v.to_string(), total, false));
        let lines = Lines::new(fetch);
        *slot = Some(Partial { writer, meter, lines, received: 0, validator, total, keeping });
        resp
    };
    stream_kept(fetch, resp, slot).await
}

/// Stream an answer into the kept download; commit it at the end. A transient break keeps it
/// for a continuation when the provider can send the rest; anything else removes it.
async fn stream_kept(
    fetch: &Fetch<'_>,
    resp: reqwest::Response,
    slot: &mut Option<Partial<'_>>,
) -> Result<FileResult, AttemptError> {
    let Some(p) = slot.as_mut() else {
        return Err(AttemptError::Job(JobError::Internal("no download to continue".into())));
    };
    let sink = Sink::Store(&mut *p.writer, p.keeping.as_mut());
    let result = pump(fetch, resp, sink, &mut p.meter, &mut p.lines, &mut p.received).await;
    match result {
        Ok(()) => {
            let gone = || AttemptError::Job(JobError::Internal("the download vanished".into()));
            let p = slot.take().ok_or_else(gone)?;
            let streamed = p.lines.counted;
            let receipt = p.writer.finish(streamed.resources as u64).await.map_err(JobError::from)?;
            p.meter.keep();
            Ok(FileResult::stored(fetch.file, streamed, receipt.bytes as i64, receipt.location))
        }
        Err(e @ (AttemptError::Transient { .. } | AttemptError::TooSlow(_))) if p.validator.is_some() => {
            Err(e)
        }
        // What becomes of it is decided once the retries end (a stopping server keeps it).
        Err(e @ AttemptError::Job(JobError::Cancelled)) => Err(e),
        Err(e) => Err(discarded(slot, e).await),
    }
}

/// One attempt at one file: where from, with which client, and which attempt it is.
struct Fetch<'a> {
    client: &'a ProviderClient,
    url: &'a url::Url,
    auth: Auth,
    file: &'a JobFile,
    t: Try,
    cancel: &'a CancellationToken,
}

/// Send one GET for the file (for the rest of it, with a continuation); transient trouble is
/// worth another attempt, the rest fails the file.
async fn request(
    fetch: &Fetch<'_>,
    continuation: Option<&Continuation>,
) -> Result<reqwest::Response, AttemptError> {
    let Fetch { client, url, auth, t, cancel, .. } = *fetch;
    let get = |http: &reqwest::Client, url: url::Url| {
        let req = http.get(url).header(ACCEPT, "application/fhir+ndjson");
        match continuation {
            Some(c) => c.ask(req),
            None => req.header(ACCEPT_ENCODING, ACCEPTED),
        }
    };
    let sent = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(JobError::Cancelled.into()),
        sent = client.send_once(auth, &get, url) => sent,
    };
    match sent {
        Ok(resp) if is_transient_status(resp.status()) && !t.last => {
            let after = client.retry_policy().retry_after(resp.headers());
            Err(AttemptError::Transient { after, why: format!("the provider answered {}", resp.status()) })
        }
        Ok(resp) => Ok(resp),
        Err(SendError::Token(e)) if !e.is_permanent() && !t.last => {
            Err(AttemptError::Transient { after: None, why: crate::error_text::chain(&e) })
        }
        Err(SendError::Token(e)) => Err(e.into()),
        Err(e @ SendError::Refused(_)) => Err(AttemptError::Permanent(IssueCode::Security, e.describe())),
        Err(e) if t.last => {
            let reason = format!(
                "the provider could not be reached after {} attempts: {}",
                t.number + 1,
                e.describe()
            );
            Err(AttemptError::Permanent(IssueCode::Transient, reason))
        }
        Err(e) => Err(AttemptError::Transient { after: None, why: e.describe() }),
    }
}

/// The answer, if it is the whole file (200); else the file fails with the provider's reason.
async fn refuse_unless_ok(
    fetch: &Fetch<'_>,
    resp: reqwest::Response,
) -> Result<reqwest::Response, AttemptError> {
    if resp.status() == StatusCode::OK {
        return Ok(resp);
    }
    let code = match resp.status() {
        StatusCode::NOT_FOUND | StatusCode::GONE => IssueCode::NotFound,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => IssueCode::Security,
        _ => IssueCode::Exception,
    };
    // The error page is read under the same cancellation as the body.
    let reason = retry::unless_cancelled(fetch.cancel, describe_failure("the provider", resp)).await?;
    Err(AttemptError::Permanent(code, reason))
}

/// How each line of a file is checked and counted.
struct LineCheck<'a> {
    expected: &'a str,
    /// Provider OperationOutcomes and `deleted` Bundles often carry no id.
    require_id: bool,
    max_blank: u64,
}

impl LineCheck<'_> {
    fn line(
        &self,
        counted: &mut Streamed,
        blank: &mut u64,
        report: Option<&mut ProviderReport>,
        n: u64,
        line: &[u8],
    ) -> Result<(), LineError> {
        let mut on_blank = || {
            *blank += 1;
            if *blank > self.max_blank {
                return Err(LineError::TooManyBlank { line: n, max: self.max_blank });
            }
            Ok(())
        };
        if let Some(by_type) = &mut counted.by_type {
            let kind = validate_any_line(n, line, self.require_id)?;
            if kind == AnyLine::Blank {
                on_blank()?;
            }
            if let AnyLine::Resource(t) = kind {
                counted.resources += 1;
                // A new type is rare: only then is its name copied.
                match by_type.get_mut(t.as_ref()) {
                    Some(n) => *n += 1,
                    None => {
                        by_type.insert(t.into_owned(), 1);
                    }
                }
            }
        } else {
            match validate_line(n, line, self.expected, self.require_id)? {
                LineKind::Resource => {
                    counted.resources += 1;
                    if let Some(r) = report {
                        r.add(line);
                    }
                }
                LineKind::Blank => on_blank()?,
            }
        }
        Ok(())
    }
}

/// Stream a body through the line checks into `sink`, counting `received` bytes as they pass.
async fn pump(
    fetch: &Fetch<'_>,
    resp: reqwest::Response,
    sink: Sink<'_>,
    meter: &mut FileMeter<'_>,
    lines: &mut Lines,
    received: &mut u64,
) -> Result<(), AttemptError> {
    let Fetch { client, file, cancel, .. } = *fetch;
    let check = LineCheck {
        expected: file.resource_type.as_str(),
        require_id: file.kind == FileKind::Output,
        max_blank: client.limits.max_blank_lines,
    };
    let Lines { splitter, counted, blank } = lines;
    let (mut writer, mut keeping, mut report) = match sink {
        Sink::Store(w, k) => (Some(w), k, None),
        Sink::Report(r) => (None, None, Some(r)),
    };
    meter.body_started();
    let body = decoded_body(resp, client.limits.max_gzip_ratio)
        .map_err(|e| AttemptError::Permanent(IssueCode::NotSupported, e.to_string()))?;
    // A submission's JWE-encrypted file is decrypted into a spool and read on only once its tag
    // verifies: its bytes are counted against the bounds as they arrive, and not again.
    let (mut body, metered) = match client.content_key() {
        Some(key) => {
            let plain = Decrypted::new(body, key.clone());
            (spooled(fetch, plain, meter).await?, false)
        }
        None => (body, true),
    };
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(JobError::Cancelled.into()),
            next = body.next() => next,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(body_failure)?;
        // Too slow is found once the chunk is here: it is kept (a continuation starts after it).
        let too_slow = if metered { metered_chunk(meter, chunk.len() as u64)? } else { None };
        let before = counted.resources;
        splitter
            .feed(&chunk, |n, line| check.line(counted, blank, report.as_deref_mut(), n, line))
            .map_err(line_failure)?;
        meter.resources((counted.resources - before).max(0) as u64);
        if let Some(max) = most_resources(file).filter(|max| counted.resources > *max) {
            let count = file.expected_resources.unwrap_or_default();
            let why = format!(
                "the file holds more than {max} resources, past what its manifest entry's count ({count}) allows; an export's file does not grow without end"
            );
            return Err(AttemptError::Permanent(IssueCode::TooCostly, why));
        }
        let n = chunk.len() as u64;
        if let Some(w) = writer.as_deref_mut() {
            let started = std::time::Instant::now();
            w.write(chunk).await.map_err(JobError::from)?;
            // Every line before the one still open is complete: a place to cut and keep.
            let at = *received + n - splitter.pending() as u64;
            let end = w.line_end(at).await.map_err(JobError::from)?;
            meter.paused(started.elapsed());
            if let Some(k) = keeping.as_deref_mut() {
                if end.taken {
                    let (resources, by_type) = (counted.resources, counted.by_type.clone());
                    k.taken(Mark { at, lines: splitter.lines(), resources, blank: *blank, by_type });
                }
                if let Some(saved) = end.saved {
                    if !k.saved(saved).await {
                        return Err(not_ours());
                    }
                }
            }
        }
        *received += n;
        if let Some(e) = too_slow {
            return Err(e);
        }
    }
    let before = counted.resources;
    splitter
        .finish(|n, line| check.line(counted, blank, report.as_deref_mut(), n, line))
        .map_err(line_failure)?;
    meter.resources((counted.resources - before).max(0) as u64);
    Ok(())
}

/// Counts in manifests can be a little off (real-providers.md: the reference provider's race):
/// a file may hold up to twice its `count` and this many more before it is cut off as endless.
const COUNT_SLACK: i64 = 1_000;

/// The most resources a file may hold, when its manifest entry counts them.
fn most_resources(file: &JobFile) -> Option<i64> {
    file.expected_resources.filter(|c| *c >= 0).map(|c| c.saturating_mul(2).saturating_add(COUNT_SLACK))
}

/// Why a body chunk did not come.
fn body_failure(e: DecodeError) -> AttemptError {
    match e {
        e @ DecodeError::Bomb(_) => AttemptError::Permanent(IssueCode::TooCostly, e.to_string()),
        e @ DecodeError::Jwe(_) => AttemptError::Permanent(IssueCode::Security, e.to_string()),
        e => AttemptError::Transient {
            after: None,
            why: format!("the download broke off: {}", crate::error_text::chain(&e)),
        },
    }
}

/// Count a chunk that arrived against the file's and the job's bounds: over a byte bound is an
/// error; too slow comes back to be raised once the chunk is handled.
fn metered_chunk(meter: &mut FileMeter<'_>, n: u64) -> Result<Option<AttemptError>, AttemptError> {
    match meter.chunk(n) {
        Ok(()) => Ok(None),
        Err(e) if e.is_job_bound() => Err(AttemptError::Job(JobError::Bound(e))),
        Err(e @ Exceeded::TooSlow { .. }) => Ok(Some(AttemptError::TooSlow(e.to_string()))),
        Err(e) => Err(AttemptError::Permanent(IssueCode::TooCostly, e.to_string())),
    }
}

/// An encrypted file's whole plaintext, spooled as it is decrypted (and metered), handed on only
/// once the stream has ended with its tag verified; a bad tag ends here, nothing of it passed on.
async fn spooled(
    fetch: &Fetch<'_>,
    mut plain: impl futures::Stream<Item = Result<bytes::Bytes, DecodeError>> + Unpin,
    meter: &mut FileMeter<'_>,
) -> Result<BoxStream<'static, Result<bytes::Bytes, DecodeError>>, AttemptError> {
    let spool_failed = |e| AttemptError::Job(JobError::Spool(e));
    let mut spool = Spool::create(fetch.client.spool_dir()).map_err(spool_failed)?;
    loop {
        let next = tokio::select! {
            biased;
            _ = fetch.cancel.cancelled() => return Err(JobError::Cancelled.into()),
            next = plain.next() => next,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(body_failure)?;
        // A decrypted file is never continued, so too slow is raised at once.
        if let Some(too_slow) = metered_chunk(meter, chunk.len() as u64)? {
            return Err(too_slow);
        }
        spool.write(&chunk).await.map_err(spool_failed)?;
    }
    let back = spool.read_back().await.map_err(spool_failed)?;
    Ok(back.map(|r| r.map_err(DecodeError::Spool)).boxed())
}

fn line_failure(e: LineError) -> AttemptError {
    let code = match e {
        LineError::TooLong { .. } => IssueCode::TooLong,
        LineError::TooManyBlank { .. } => IssueCode::TooCostly,
        LineError::WrongType { .. }
        | LineError::NoResourceType { .. }
        | LineError::NoId { .. }
        | LineError::BadMember { .. } => IssueCode::Invalid,
        LineError::NotUtf8 { .. } | LineError::NotJson { .. } => IssueCode::Structure,
    };
    match e.resource() {
        Some(resource) => AttemptError::BadResource(code, e.to_string(), resource),
        None => AttemptError::Permanent(code, e.to_string()),
    }
}
