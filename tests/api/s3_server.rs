//! A real S3-protocol server in process: `s3s` over an `s3s-fs` directory, on loopback, with
//! signature-checked credentials. It fails the test (never skips) when it cannot start.
use std::path::{Path, PathBuf};

use bulk_import::destination::s3::S3Config;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder as ConnBuilder,
};
use s3s::{
    auth::SimpleAuth, dto::*, s3_error, service::S3ServiceBuilder, S3Request, S3Response, S3Result, S3,
};
use tempfile::TempDir;

pub const BUCKET: &str = "imports";
pub const KEY: &str = "test-access-key";
pub const SECRET: &str = "test-secret-key-0123456789";

pub struct S3Server {
    pub endpoint: String,
    root: TempDir,
}

/// s3s-fs, except that every UploadPart after the first fails with a 500: a store that breaks
/// in the middle of a multipart upload.
struct FailsAfterFirstPart(s3s_fs::FileSystem);

#[async_trait::async_trait]
impl S3 for FailsAfterFirstPart {
    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.0.head_bucket(req).await
    }
    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.0.put_object(req).await
    }
    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.0.create_multipart_upload(req).await
    }
    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        if req.input.part_number > 1 {
            return Err(s3_error!(InternalError, "scripted failure"));
        }
        self.0.upload_part(req).await
    }
    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.0.complete_multipart_upload(req).await
    }
    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.0.abort_multipart_upload(req).await
    }
    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.0.head_object(req).await
    }
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.0.list_objects_v2(req).await
    }
    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.0.delete_objects(req).await
    }
}

impl S3Server {
    pub async fn start() -> Self {
        Self::start_with(|fs| fs, false).await
    }

    /// A server whose multipart uploads break after the first part.
    pub async fn start_failing_parts() -> Self {
        Self::start_with(FailsAfterFirstPart, false).await
    }

    /// A server that completes multipart uploads but answers with a body the SDK cannot read (as
    /// moto_server 5.2.1 does with its `CompleteMultipartUploadResponse` root).
    pub async fn start_with_unreadable_completions() -> Self {
        Self::start_with(|fs| fs, true).await
    }

    async fn start_with<T: S3>(wrap: impl FnOnce(s3s_fs::FileSystem) -> T, garble_completions: bool) -> Self {
        let root = TempDir::new().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).expect("the S3 test server starts");
        let mut builder = S3ServiceBuilder::new(wrap(fs));
        builder.set_auth(SimpleAuth::from_single(KEY, SECRET));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let service = service.clone();
                let answer = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let completion = req.method() == hyper::Method::POST
                        && req.uri().query().is_some_and(|q| q.contains("uploadId"));
                    let service = service.clone();
                    async move {
                        let res = hyper::service::Service::call(&service, req).await?;
                        if !(garble_completions && completion && res.status().is_success()) {
                            return Ok(res);
                        }
                        let (mut parts, _) = res.into_parts();
                        parts.headers.remove(hyper::header::CONTENT_LENGTH);
                        let body = "<CompleteMultipartUploadResponse><Bucket>imports</Bucket>".to_string();
                        Ok::<_, s3s::HttpError>(hyper::Response::from_parts(parts, s3s::Body::from(body)))
                    }
                });
                let conn = http.serve_connection(TokioIo::new(socket), answer).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        S3Server { endpoint, root }
    }

    pub fn config(&self, part_size: usize) -> S3Config {
        S3Config {
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            endpoint_url: Some(self.endpoint.clone()),
            force_path_style: true,
            prefix: "bulk/".into(),
            part_size,
            credentials: Some((KEY.into(), SECRET.into())),
        }
    }

    /// The stored bytes of an object, straight from the server's directory.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.path().join(BUCKET).join(key)).ok()
    }

    /// Every file the server holds (objects, metadata and multipart staging), relative paths.
    pub fn all_files(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path: PathBuf = entry.path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else {
                    out.push(path.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(self.root.path(), self.root.path(), &mut out);
        out.sort();
        out
    }

    /// An SDK client for checks the destination itself does not offer (metadata).
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(KEY, SECRET, None, None, "test");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// The parts uploaded so far to open multipart uploads, in part order (s3s-fs keeps each
    /// in a file of its own until the upload completes).
    pub fn uploaded_parts(&self) -> Vec<Vec<u8>> {
        let mut parts: Vec<(u32, PathBuf)> = std::fs::read_dir(self.root.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let number = name.strip_prefix(".upload_id-")?.rsplit_once(".part-")?.1.parse().ok()?;
                Some((number, e.path()))
            })
            .collect();
        parts.sort();
        parts.into_iter().map(|(_, path)| std::fs::read(path).unwrap()).collect()
    }

    /// Multipart uploads the server still holds open.
    pub fn open_uploads(&self) -> Vec<String> {
        self.all_files().into_iter().filter(|f| f.contains(".upload")).collect()
    }
}
