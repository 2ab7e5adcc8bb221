//! S3 (and S3-compatible stores: MinIO, Ceph, R2): each file becomes the object
//! `{S3_PREFIX}{job}/{name}`. Small files are one PutObject; larger ones a multipart upload whose
//! parts go up while the download continues, with at most `part_size × 2` buffered per file. Any
//! failure or cancel aborts the upload, so nothing half-written becomes visible. Transient S3
//! errors are retried by the SDK's standard retry mode.
use std::collections::VecDeque;

use async_trait::async_trait;
use aws_sdk_s3::{
    config::{
        retry::RetryConfig, timeout::TimeoutConfig, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation,
    },
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective, ObjectIdentifier},
    Client,
};
use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::{
    file_name::is_safe_component, Destination, DestinationError, FileTarget, FileWriter, LineEnd, Receipt,
    Removal, Saved,
};
use crate::error_text::chain;

/// S3's smallest part (all but the last); also our smallest `S3_PART_SIZE`.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// 8 MiB parts: with one part in flight and one filling, 16 MiB per file.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Longest an abort waits for a part upload already on its way.
const PART_LANDING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Parts uploading at once per file while the next one fills.
const PARTS_IN_FLIGHT: usize = 1;
/// Attempts per S3 request (the SDK retries throttling, 5xx and connection errors).
const MAX_ATTEMPTS: u32 = 4;
/// CopyObject (used to record the line count after a multipart upload) stops at 5 GiB.
const MAX_COPY_BYTES: u64 = 5 * 1024 * 1024 * 1024;
const CONTENT_TYPE: &str = "application/fhir+ndjson";
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// One attempt at one request: a part of up to 5 GiB must fit, on a slow link.
const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// For S3-compatible stores (`S3_ENDPOINT_URL`); `None` means AWS.
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`S3_FORCE_PATH_STYLE`), which most S3-compatible stores need.
    pub force_path_style: bool,
    /// Prepended to every key (`S3_PREFIX`), e.g. `imports/`.
    pub prefix: String,
    pub part_size: usize,
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`; `None` uses the standard AWS chain (profiles,
    /// instance and task roles, web identity).
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("force_path_style", &self.force_path_style)
            .field("prefix", &self.prefix)
            .field("part_size", &self.part_size)
            .field("credentials", &self.credentials.as_ref().map(|_| "<static>"))
            .finish()
    }
}

fn s3_error<E: std::error::Error + Send + Sync + 'static>(what: &str, e: E) -> DestinationError {
    DestinationError::S3 { what: what.to_string(), source: Box::new(e) }
}

pub struct S3 {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
}

impl S3 {
    /// Build the client and check the bucket answers, so a bad configuration fails at start.
    pub async fn connect(config: &S3Config) -> Result<Self, DestinationError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(config.region.clone()));
        if let Some((key, secret)) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(key, secret, None, None, "bulk-import"));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.force_path_style)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            // The SDK sets no time limit of its own: a store that stops answering must fail the
            // request (and so the file), not hold the job for ever.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            // Checksums only where S3 requires them: several S3-compatible stores refuse the
            // trailing-checksum encoding the SDK would otherwise use for every upload.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(url) = &config.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        let client = Client::from_conf(builder.build());
        client.head_bucket().bucket(&config.bucket).send().await.map_err(|e| {
            s3_error(&format!("bucket '{}' is not reachable (check AWS_S3_BUCKET_NAME, AWS_REGION, S3_ENDPOINT_URL and credentials)", config.bucket), e)
        })?;
        Ok(Self {
            client,
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            part_size: config.part_size,
        })
    }

    fn job_prefix(&self, job: &str) -> Result<String, DestinationError> {
        if !is_safe_component(job) {
            return Err(DestinationError::UnsafeName(job.into()));
        }
        Ok(format!("{}{job}/", self.prefix))
    }

    fn writer(&self, file: FileTarget<'_>) -> Result<S3Writer, DestinationError> {
        if !is_safe_component(file.name) {
            return Err(DestinationError::UnsafeName(file.name.into()));
        }
        Ok(S3Writer {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: format!("{}{}", self.job_prefix(file.job)?, file.name),
            job: file.job.to_string(),
            resource_type: file.resource_type.to_string(),
            part_size: self.part_size,
            buf: BytesMut::new(),
            buf_start: 0,
            upload_id: None,
            next_part: 0,
            in_flight: VecDeque::new(),
            done: Vec::new(),
            bytes: 0,
            reported: 0,
        })
    }
}

struct S3Writer {
    client: Client,
    bucket: String,
    key: String,
    job: String,
    resource_type: String,
    part_size: usize,
    buf: BytesMut,
    /// Where `buf` starts in the file: the end of the last part cut.
    buf_start: u64,
    upload_id: Option<String>,
    next_part: i32,
    in_flight: VecDeque<JoinHandle<Result<StoredPart, DestinationError>>>,
    /// Uploaded parts, in order.
    done: Vec<StoredPart>,
    bytes: u64,
    /// The end of the last part reported as a durable point.
    reported: u64,
}

/// One uploaded part, as a durable point records it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredPart {
    number: i32,
    etag: Option<String>,
    /// Where the part ends in the file.
    end: u64,
    /// Whether it ends at a line end (all do but a cut through a line longer than two parts).
    whole_lines: bool,
}

/// What another process needs to go on with a multipart upload.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct UploadState {
    upload_id: String,
    parts: Vec<StoredPart>,
}

impl S3Writer {
    /// Cut the first `len` buffered bytes off as the next part and start its upload.
    async fn cut_part(&mut self, len: usize, whole_lines: bool) -> Result<(), DestinationError> {
        // A fresh buffer per part: a split-off part would share (and keep alive) one
        // ever-growing allocation with the part being filled.
        let mut next = BytesMut::with_capacity(self.part_size);
        next.extend_from_slice(&self.buf[len..]);
        self.buf.truncate(len);
        let part = std::mem::replace(&mut self.buf, next);
        self.buf_start += len as u64;
        self.start_part(part.freeze(), whole_lines).await
    }

    async fn start_part(&mut self, body: Bytes, whole_lines: bool) -> Result<(), DestinationError> {
        if self.upload_id.is_none() {
            let created = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type(CONTENT_TYPE)
                .metadata("job-id", &self.job)
                .metadata("resource-type", &self.resource_type)
                .send()
                .await
                .map_err(|e| s3_error("CreateMultipartUpload failed", e))?;
            let id = created
                .upload_id()
                .ok_or_else(|| DestinationError::S3Answer("CreateMultipartUpload without an UploadId"))?;
            self.upload_id = Some(id.to_string());
        }
        self.next_part += 1;
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key.clone());
        let (upload_id, number) = (self.upload_id.clone().unwrap_or_default(), self.next_part);
        let end = self.buf_start;
        self.in_flight.push_back(tokio::spawn(async move {
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| s3_error("UploadPart failed", e))?;
            Ok(StoredPart { number, etag: out.e_tag().map(str::to_string), end, whole_lines })
        }));
        while self.in_flight.len() > PARTS_IN_FLIGHT {
            self.await_oldest().await?;
        }
        Ok(())
    }

    async fn await_oldest(&mut self) -> Result<(), DestinationError> {
        if let Some(handle) = self.in_flight.pop_front() {
            let part = handle.await.map_err(|e| s3_error("an UploadPart task stopped", e))??;
            self.done.push(part);
        }
        Ok(())
    }

    async fn commit(&mut self, resources: u64) -> Result<Receipt, DestinationError> {
        let count = resources.to_string();
        let Some(upload_id) = self.upload_id.clone() else {
            // Small file: one PUT carries the data and all the metadata.
            let body = std::mem::take(&mut self.buf).freeze();
            let put = |only_if_new: bool| {
                let mut req = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .content_type(CONTENT_TYPE)
                    .metadata("job-id", &self.job)
                    .metadata("resource-type", &self.resource_type)
                    .metadata("resources", &count)
                    .body(ByteStream::from(body.clone()));
                if only_if_new {
                    req = req.if_none_match("*");
                }
                req.send()
            };
            let mut put_done = put(true).await.map(|_| ());
            if put_done.as_ref().is_err_and(is_precondition_failed) {
                if self.stored_as_sent().await {
                    tracing::info!(object = %self.location(), "the file was stored already; kept");
                    put_done = Ok(());
                } else {
                    tracing::info!(object = %self.location(), "an older object of this file is replaced");
                    put_done = put(false).await.map(|_| ());
                }
            }
            if let Err(e) = put_done {
                if !self.stored_as_sent().await {
                    return Err(s3_error("PutObject failed", e));
                }
                tracing::warn!(error = %chain(&e), "S3's answer to PutObject could not be read, but the object is stored whole");
            }
            return Ok(Receipt { location: self.location(), bytes: self.bytes });
        };
        if !self.buf.is_empty() {
            let len = self.buf.len();
            self.cut_part(len, true).await?;
        }
        while !self.in_flight.is_empty() {
            self.await_oldest().await?;
        }
        let parts: Vec<CompletedPart> = self
            .done
            .iter()
            .map(|p| CompletedPart::builder().part_number(p.number).set_e_tag(p.etag.clone()).build())
            .collect();
        let complete = |only_if_new: bool| {
            let mut req = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts.clone())).build());
            if only_if_new {
                req = req.if_none_match("*");
            }
            req.send()
        };
        // Only if no object is there yet: one that is may be this file, committed by a process
        // that stopped before recording it.
        let mut completed = complete(true).await.map(|_| ());
        if completed.as_ref().is_err_and(is_precondition_failed) {
            if self.stored_as_sent().await {
                // This upload is not needed: what it holds is stored.
                tracing::info!(object = %self.location(), "the file was stored already; kept");
                self.abort_upload().await?;
                completed = Ok(());
            } else {
                tracing::info!(object = %self.location(), "an older object of this file is replaced");
                completed = complete(false).await.map(|_| ());
            }
        }
        if let Err(e) = completed {
            // An answer we could not read (or none) may still be a completed upload: aborting it
            // would fail, and calling the file failed would leave its object behind.
            if !self.stored_as_sent().await {
                return Err(s3_error("CompleteMultipartUpload failed", e));
            }
            tracing::warn!(error = %chain(&e), "the object is stored whole (S3's answer to CompleteMultipartUpload said otherwise or could not be read)");
        }
        self.upload_id = None;
        // The line count is known only now: record it with a server-side copy onto itself.
        if self.bytes <= MAX_COPY_BYTES {
            let copied = self
                .client
                .copy_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .copy_source(format!("{}/{}", self.bucket, self.key))
                .metadata_directive(MetadataDirective::Replace)
                .content_type(CONTENT_TYPE)
                .metadata("job-id", &self.job)
                .metadata("resource-type", &self.resource_type)
                .metadata("resources", &count)
                .send()
                .await;
            if let Err(e) = copied {
                tracing::warn!(error = %chain(&e), "could not record the line count on the object");
            }
        }
        Ok(Receipt { location: self.location(), bytes: self.bytes })
    }

    /// After an ambiguous commit: whether the object is there as we sent it (our size and our job
    /// id in its metadata). Any doubt counts as not stored.
    async fn stored_as_sent(&self) -> bool {
        let Ok(head) = self.client.head_object().bucket(&self.bucket).key(&self.key).send().await else {
            return false;
        };
        let ours = head.metadata().and_then(|m| m.get("job-id")).is_some_and(|j| *j == self.job);
        head.content_length() == Some(self.bytes as i64) && ours
    }

    async fn abort_upload(&mut self) -> Result<(), DestinationError> {
        // Parts on their way are let land first: one cancelled here may still be stored by the
        // server after the abort, an orphan part no upload owns. Bounded, then cancelled.
        for mut handle in self.in_flight.drain(..) {
            if tokio::time::timeout(PART_LANDING_WAIT, &mut handle).await.is_err() {
                handle.abort();
            }
        }
        if let Some(upload_id) = self.upload_id.take() {
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(upload_id)
                .send()
                .await
                .map_err(|e| s3_error("AbortMultipartUpload failed", e))?;
        }
        Ok(())
    }

    /// The newest uploaded part that ends at a line end, as a durable point, if not reported yet.
    fn newly_saved(&mut self) -> Result<Option<Saved>, DestinationError> {
        let Some(upload_id) = &self.upload_id else { return Ok(None) };
        let Some(last) = self.done.iter().rposition(|p| p.whole_lines && p.end > self.reported) else {
            return Ok(None);
        };
        let parts = self.done[..=last].to_vec();
        let bytes = parts[last].end;
        let state = serde_json::to_string(&UploadState { upload_id: upload_id.clone(), parts })
            .map_err(|e| s3_error("the upload's state could not be written down", e))?;
        self.reported = bytes;
        Ok(Some(Saved { bytes, state }))
    }

    /// Whether S3 still holds every part of a durable point, as uploaded.
    async fn holds_parts(&self, upload_id: &str, parts: &[StoredPart]) -> Result<bool, DestinationError> {
        let mut listed = std::collections::HashMap::new();
        let mut marker = None;
        // S3 lists at most 1,000 parts a page and an upload has at most 10,000.
        for _ in 0..11 {
            let page = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(|e| s3_error("ListParts failed", e))?;
            for p in page.parts() {
                listed.insert(p.part_number().unwrap_or(0), p.size().unwrap_or(-1));
            }
            match page.next_part_number_marker() {
                Some(next) if page.is_truncated() == Some(true) => marker = Some(next.to_string()),
                _ => break,
            }
        }
        let mut start = 0;
        Ok(parts.iter().all(|p| {
            let size = (p.end - start) as i64;
            start = p.end;
            listed.get(&p.number) == Some(&size)
        }))
    }

    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// Whether S3 said an object is already there (`If-None-Match: *`).
fn is_precondition_failed<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    e.raw_response().is_some_and(|r| r.status().as_u16() == 412)
}

/// Where the next part ends, told of a line end `at` bytes into the buffer: there, once the
/// buffer holds a part's worth of whole lines. `None`: not yet.
fn cut_at_line_end(at: usize, part_size: usize) -> Option<usize> {
    (at >= part_size).then_some(at)
}

/// A line running on to twice the part size is cut there: whole lines cannot be had, and the
/// buffer must stay bounded.
fn cut_through_line(buffered: usize, part_size: usize) -> Option<usize> {
    (buffered >= 2 * part_size).then_some(2 * part_size)
}

#[async_trait]
impl FileWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), DestinationError> {
        self.bytes += chunk.len() as u64;
        self.buf.extend_from_slice(&chunk);
        while let Some(cut) = cut_through_line(self.buf.len(), self.part_size) {
            self.cut_part(cut, false).await?;
        }
        Ok(())
    }

    /// Parts are cut at line ends, so each committed part holds whole lines and is a durable
    /// point once uploaded.
    async fn line_end(&mut self, at: u64) -> Result<LineEnd, DestinationError> {
        let within = at.checked_sub(self.buf_start).map(|n| n as usize).filter(|n| *n <= self.buf.len());
        let cut = within.and_then(|n| cut_at_line_end(n, self.part_size));
        if let Some(cut) = cut {
            self.cut_part(cut, true).await?;
        }
        while self.in_flight.front().is_some_and(|h| h.is_finished()) {
            self.await_oldest().await?;
        }
        Ok(LineEnd { taken: cut.is_some(), saved: self.newly_saved()? })
    }

    async fn finish(mut self: Box<Self>, resources: u64) -> Result<Receipt, DestinationError> {
        match self.commit(resources).await {
            Ok(receipt) => Ok(receipt),
            Err(e) => {
                // Nothing half-written may stay behind: abort what was started.
                if let Err(abort) = self.abort().await {
                    tracing::warn!(error = %abort, "could not abort a failed multipart upload");
                }
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), DestinationError> {
        self.abort_upload().await
    }
}

#[async_trait]
impl Destination for S3 {
    async fn open(&self, file: FileTarget<'_>) -> Result<Box<dyn FileWriter>, DestinationError> {
        Ok(Box::new(self.writer(file)?))
    }

    /// Go on with the multipart upload a durable point names, if S3 still holds its parts;
    /// else that upload is aborted and the file starts over.
    async fn reopen(
        &self,
        file: FileTarget<'_>,
        saved: &Saved,
    ) -> Result<Option<Box<dyn FileWriter>>, DestinationError> {
        let Ok(state) = serde_json::from_str::<UploadState>(&saved.state) else { return Ok(None) };
        let mut w = self.writer(file)?;
        let last = state.parts.last().map_or(0, |p| p.end);
        let holds =
            last == saved.bytes && w.holds_parts(&state.upload_id, &state.parts).await.unwrap_or(false);
        w.upload_id = Some(state.upload_id);
        if !holds {
            // What is left of it would cost storage until a lifecycle rule removed it.
            if let Err(e) = w.abort_upload().await {
                tracing::warn!(error = %chain(&e), "could not abort an upload that cannot be continued");
            }
            return Ok(None);
        }
        // Numbered on from the point: some stores take only consecutive part numbers. A part the
        // earlier process still had in flight that lands late under one of ours is caught when
        // the upload completes (S3 checks each part's ETag), and the file is fetched again.
        w.next_part = state.parts.last().map_or(0, |p| p.number);
        w.done = state.parts;
        (w.bytes, w.buf_start, w.reported) = (saved.bytes, saved.bytes, saved.bytes);
        Ok(Some(Box::new(w)))
    }

    async fn delete_file(&self, job: &str, name: &str) -> Result<(), DestinationError> {
        if !is_safe_component(name) {
            return Err(DestinationError::UnsafeName(name.into()));
        }
        let key = format!("{}{}", self.job_prefix(job)?, name);
        // DeleteObject answers success for a key that is not there.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error("DeleteObject failed", e))?;
        Ok(())
    }

    async fn delete_job(&self, job: &str, _why: Removal) -> Result<(), DestinationError> {
        let prefix = self.job_prefix(job)?;
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_error("ListObjectsV2 failed", e))?;
            let ids: Vec<ObjectIdentifier> = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            if !ids.is_empty() {
                let delete = Delete::builder()
                    .set_objects(Some(ids))
                    .quiet(true)
                    .build()
                    .map_err(|e| s3_error("DeleteObjects could not be built", e))?;
                self.client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| s3_error("DeleteObjects failed", e))?;
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(()),
            }
        }
    }

    fn shared(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("s3: objects under s3://{}/{}{{job_id}}/", self.bucket, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::{cut_at_line_end, cut_through_line, MIN_PART_SIZE};

    #[test]
    fn a_part_is_cut_at_a_line_end_once_a_parts_worth_is_buffered() {
        let part = MIN_PART_SIZE + 100;
        assert_eq!(cut_at_line_end(part - 1, part), None, "not a part's worth yet");
        assert_eq!(cut_at_line_end(part, part), Some(part));
        assert_eq!(cut_at_line_end(part + 7, part), Some(part + 7), "the line end told of, past the size");
        assert_eq!(cut_through_line(2 * part - 1, part), None, "a long line waits for its end");
        assert_eq!(cut_through_line(2 * part + 9, part), Some(2 * part), "one longer than two parts is cut");
    }
}
