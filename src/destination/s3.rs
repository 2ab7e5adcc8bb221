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

use super::{file_name::is_safe_component, Destination, DestinationError, FileTarget, FileWriter, Receipt};
use crate::error_text::chain;

/// S3's smallest part (all but the last); also our smallest `S3_PART_SIZE`.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// 8 MiB parts: with one part in flight and one filling, 16 MiB per file.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
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
}

struct S3Writer {
    client: Client,
    bucket: String,
    key: String,
    job: String,
    resource_type: String,
    part_size: usize,
    buf: BytesMut,
    upload_id: Option<String>,
    next_part: i32,
    in_flight: VecDeque<JoinHandle<Result<CompletedPart, DestinationError>>>,
    done: Vec<CompletedPart>,
    bytes: u64,
}

impl S3Writer {
    async fn start_part(&mut self, body: Bytes) -> Result<(), DestinationError> {
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
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
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
            let put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type(CONTENT_TYPE)
                .metadata("job-id", &self.job)
                .metadata("resource-type", &self.resource_type)
                .metadata("resources", &count)
                .body(ByteStream::from(body))
                .send()
                .await;
            if let Err(e) = put {
                if !self.stored_as_sent().await {
                    return Err(s3_error("PutObject failed", e));
                }
                tracing::warn!(error = %chain(&e), "S3's answer to PutObject could not be read, but the object is stored whole");
            }
            return Ok(Receipt { location: self.location(), bytes: self.bytes });
        };
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf).freeze();
            self.start_part(last).await?;
        }
        while !self.in_flight.is_empty() {
            self.await_oldest().await?;
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await;
        if let Err(e) = completed {
            // An answer we could not read (or none) may still be a completed upload: aborting it
            // would fail, and calling the file failed would leave its object behind.
            if !self.stored_as_sent().await {
                return Err(s3_error("CompleteMultipartUpload failed", e));
            }
            tracing::warn!(error = %chain(&e), "S3's answer to CompleteMultipartUpload could not be read, but the object is stored whole");
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
        for handle in self.in_flight.drain(..) {
            handle.abort();
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

    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// Where the next part ends, once the buffer holds one: after the last line end between the
/// smallest part S3 takes and `part_size`, else after the first one past `part_size`; a line that
/// runs on to twice `part_size` is cut there (whole lines cannot be had). `None`: not yet.
fn part_cut(buf: &[u8], part_size: usize) -> Option<usize> {
    if buf.len() < part_size {
        return None;
    }
    let from = MIN_PART_SIZE.min(part_size) - 1;
    if let Some(at) = memchr::memrchr(b'\n', &buf[from..part_size]) {
        return Some(from + at + 1);
    }
    match memchr::memchr(b'\n', &buf[part_size..]) {
        Some(at) => Some(part_size + at + 1),
        None if buf.len() >= 2 * part_size => Some(2 * part_size),
        None => None,
    }
}

#[async_trait]
impl FileWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), DestinationError> {
        self.bytes += chunk.len() as u64;
        self.buf.extend_from_slice(&chunk);
        // Each part ends at a line end (past the smallest part S3 takes), so a committed part
        // holds whole lines and the partial line starts the next one.
        while let Some(cut) = part_cut(&self.buf, self.part_size) {
            // A fresh buffer per part: a split-off part would share (and keep alive) one
            // ever-growing allocation with the part being filled.
            let mut next = BytesMut::with_capacity(self.part_size);
            next.extend_from_slice(&self.buf[cut..]);
            self.buf.truncate(cut);
            let part = std::mem::replace(&mut self.buf, next);
            self.start_part(part.freeze()).await?;
        }
        Ok(())
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
        if !is_safe_component(file.name) {
            return Err(DestinationError::UnsafeName(file.name.into()));
        }
        Ok(Box::new(S3Writer {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: format!("{}{}", self.job_prefix(file.job)?, file.name),
            job: file.job.to_string(),
            resource_type: file.resource_type.to_string(),
            part_size: self.part_size,
            buf: BytesMut::new(),
            upload_id: None,
            next_part: 0,
            in_flight: VecDeque::new(),
            done: Vec::new(),
            bytes: 0,
        }))
    }

    async fn delete_file(&self, file: FileTarget<'_>) -> Result<(), DestinationError> {
        if !is_safe_component(file.name) {
            return Err(DestinationError::UnsafeName(file.name.into()));
        }
        let key = format!("{}{}", self.job_prefix(file.job)?, file.name);
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

    async fn delete_job(&self, job: &str) -> Result<(), DestinationError> {
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

    fn describe(&self) -> String {
        format!("s3: objects under s3://{}/{}{{job_id}}/", self.bucket, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::{part_cut, MIN_PART_SIZE};

    #[test]
    fn a_part_ends_at_a_line_end_past_the_smallest_part_s3_takes() {
        let part = MIN_PART_SIZE + 100;
        let mut buf = vec![b'x'; part + 50];
        assert_eq!(part_cut(&buf[..part - 1], part), None, "not full yet");
        buf[MIN_PART_SIZE + 10] = b'\n';
        buf[MIN_PART_SIZE - 10] = b'\n';
        assert_eq!(part_cut(&buf, part), Some(MIN_PART_SIZE + 11), "the last line end in the slack");
        buf[MIN_PART_SIZE + 10] = b'x';
        assert_eq!(part_cut(&buf, part), None, "a line end before the smallest part does not do; wait");
        buf[part + 20] = b'\n';
        assert_eq!(part_cut(&buf, part), Some(part + 21), "the first line end past the part size");
        let long = vec![b'x'; 2 * part];
        assert_eq!(part_cut(&long, part), Some(2 * part), "a line longer than two parts is cut");
        // A part of exactly the smallest size has no slack: the next line end decides.
        let mut tight = vec![b'x'; MIN_PART_SIZE + 5];
        tight[MIN_PART_SIZE + 2] = b'\n';
        assert_eq!(part_cut(&tight, MIN_PART_SIZE), Some(MIN_PART_SIZE + 3));
    }
}
