//! One file of an export (Bulk Data "Output File Request"): fetch (token only when the manifest
//! page requires it; gzip accepted), split into lines under the max-line guard, validate each
//! line, and stream the received bytes unchanged to the destination. A broken connection restarts
//! the file; a bad line fails it with the line number and reason. Only cancellation, storage and
//! destination errors reach the job: every provider problem is this file's outcome.
use futures::StreamExt;
use reqwest::{
    header::{ACCEPT, ACCEPT_ENCODING},
    StatusCode,
};
use tokio_util::sync::CancellationToken;

use super::{
    export::describe_failure,
    gzip::{decoded_body, ACCEPTED},
    ndjson::{validate_line, LineError, LineKind, LineSplitter},
    provider_client::{Auth, ProviderClient},
    retry, JobError,
};
use crate::{
    destination::{Destination, FileTarget, FileWriter},
    fhir::{
        manifest::FileKind,
        operation_outcome::{IssueCode, OperationOutcome, Severity},
    },
    store::jobs::{FileState, JobFile},
};

/// The result of one file, ready to store.
#[derive(Debug)]
pub struct FileResult {
    pub state: FileState,
    pub resources: i64,
    pub bytes: i64,
    pub outcome: OperationOutcome,
}

impl FileResult {
    fn failed(file: &JobFile, code: IssueCode, reason: impl std::fmt::Display) -> Self {
        Self {
            state: FileState::Failed,
            resources: 0,
            bytes: 0,
            outcome: OperationOutcome::error(
                code,
                format!("file {} ({}): {reason}", file.url, file.resource_type),
            ),
        }
    }
}

/// Why one attempt at a file stopped.
enum AttemptError {
    /// Worth another attempt (connection broke, body stalled or truncated, token trouble).
    Transient(String),
    /// The file itself is bad or refused; retrying cannot help.
    Permanent(IssueCode, String),
    Job(JobError),
}

impl From<JobError> for AttemptError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Cancelled | JobError::Store(_) | JobError::Destination(_) => AttemptError::Job(e),
            // `send` already retried these: the file fails, the job goes on.
            JobError::Provider(m) => AttemptError::Permanent(IssueCode::Transient, m),
            JobError::Auth(e) => {
                AttemptError::Transient(format!("authorization at the provider failed: {e}"))
            }
        }
    }
}

/// Import one file. Errors returned are job-level (cancel, storage); file problems are in the result.
pub async fn import_file(
    client: &ProviderClient,
    destination: &dyn Destination,
    file: &JobFile,
    cancel: &CancellationToken,
) -> Result<FileResult, JobError> {
    let url = match client.base.under(&file.url) {
        Ok(u) => u,
        Err(reason) => {
            return Ok(FileResult::failed(file, IssueCode::Security, format!("{reason}; not fetched")))
        }
    };
    let auth = if file.requires_token { Auth::WithToken } else { Auth::Without };
    let mut attempt = 0;
    loop {
        let target = FileTarget { job: &file.job_id, name: &file.name, resource_type: &file.resource_type };
        let writer = destination.open(target).await?;
        match attempt_file(client, &url, auth, file, writer, cancel).await {
            Ok((resources, bytes, location)) => {
                return Ok(FileResult {
                    state: FileState::Done,
                    resources,
                    bytes,
                    outcome: OperationOutcome::single(
                        Severity::Information,
                        IssueCode::Informational,
                        format!(
                        "file {} ({}) imported: {resources} resources, {bytes} bytes, stored as {location}",
                        file.url, file.resource_type
                    ),
                    ),
                })
            }
            Err(AttemptError::Job(e)) => return Err(e),
            Err(AttemptError::Permanent(code, reason)) => return Ok(FileResult::failed(file, code, reason)),
            Err(AttemptError::Transient(reason)) if attempt >= client.limits.max_retries => {
                return Ok(FileResult::failed(
                    file,
                    IssueCode::Incomplete,
                    format!("{reason} (gave up after {} attempts)", attempt + 1),
                ))
            }
            Err(AttemptError::Transient(reason)) => {
                attempt += 1;
                tracing::warn!(file = %redact(&url), attempt, %reason, "file download interrupted; starting it again");
                retry::sleep(client.backoff(attempt), cancel).await?;
            }
        }
    }
}

/// Origin and path only: queries of file URLs can be signatures.
fn redact(url: &url::Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

async fn attempt_file(
    client: &ProviderClient,
    url: &url::Url,
    auth: Auth,
    file: &JobFile,
    mut writer: Box<dyn FileWriter>,
    cancel: &CancellationToken,
) -> Result<(i64, i64, String), AttemptError> {
    let result = stream_into(client, url, auth, file, &mut *writer, cancel).await;
    match result {
        Ok(resources) => {
            let receipt = writer.finish(resources as u64).await.map_err(JobError::from)?;
            Ok((resources, receipt.bytes as i64, receipt.location))
        }
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(error = %crate::routes::error::chain(&abort), "could not remove a partial file");
            }
            Err(e)
        }
    }
}

async fn stream_into(
    client: &ProviderClient,
    url: &url::Url,
    auth: Auth,
    file: &JobFile,
    writer: &mut dyn FileWriter,
    cancel: &CancellationToken,
) -> Result<i64, AttemptError> {
    let get = |http: &reqwest::Client, url: url::Url| {
        http.get(url).header(ACCEPT, "application/fhir+ndjson").header(ACCEPT_ENCODING, ACCEPTED)
    };
    let resp = client.send(auth, cancel, url, get).await?;
    let refused = match resp.status() {
        StatusCode::OK => None,
        StatusCode::NOT_FOUND | StatusCode::GONE => Some(IssueCode::NotFound),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Some(IssueCode::Security),
        _ => Some(IssueCode::Exception),
    };
    if let Some(code) = refused {
        return Err(AttemptError::Permanent(code, describe_failure("the provider", resp).await));
    }
    let expected = file.resource_type.as_str();
    // Provider OperationOutcomes and `deleted` Bundles often carry no id.
    let require_id = file.kind == FileKind::Output;
    let mut splitter = LineSplitter::new(client.limits.max_line_bytes);
    let mut resources = 0i64;
    let mut on_line = |n: u64, line: &[u8]| -> Result<(), LineError> {
        if validate_line(n, line, expected, require_id)? == LineKind::Resource {
            resources += 1;
        }
        Ok(())
    };
    let mut received = 0u64;
    let mut body =
        decoded_body(resp).map_err(|e| AttemptError::Permanent(IssueCode::NotSupported, e.to_string()))?;
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Err(JobError::Cancelled.into()),
            next = body.next() => next,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| {
            AttemptError::Transient(format!("the download broke off: {}", crate::routes::error::chain(&e)))
        })?;
        received += chunk.len() as u64;
        if received > client.limits.max_file_bytes {
            return Err(AttemptError::Permanent(
                IssueCode::TooCostly,
                format!(
                    "the file is larger than {} bytes after decoding (MAX_FILE_BYTES)",
                    client.limits.max_file_bytes
                ),
            ));
        }
        splitter.feed(&chunk, &mut on_line).map_err(line_failure)?;
        writer.write(chunk).await.map_err(JobError::from)?;
    }
    splitter.finish(&mut on_line).map_err(line_failure)?;
    Ok(resources)
}

fn line_failure(e: LineError) -> AttemptError {
    let code = match e {
        LineError::TooLong { .. } => IssueCode::TooLong,
        LineError::WrongType { .. }
        | LineError::NoResourceType { .. }
        | LineError::NoId { .. }
        | LineError::BadMember { .. } => IssueCode::Invalid,
        LineError::NotUtf8 { .. } | LineError::NotJson { .. } => IssueCode::Structure,
    };
    AttemptError::Permanent(code, e.to_string())
}
