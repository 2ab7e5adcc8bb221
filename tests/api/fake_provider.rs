//! An in-process FHIR Bulk Data provider (axum) with SMART Backend Services auth that verifies our
//! client assertions against our `/jwks`, scripted export status answers, static manifests, gzip,
//! chunked bodies and bad files. It records every request.
use std::{
    collections::{HashMap, VecDeque},
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Request, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};

/// A scripted failure of one file download.
#[derive(Debug, Clone, Copy)]
pub enum FileFault {
    /// Half the body, then the connection breaks.
    BreakHalfway,
    /// Half the body, then silence for this many milliseconds, then the rest.
    StallHalfway(u64),
    /// `Content-Length` of the whole file, but only half the bytes, then a clean end.
    Truncated,
}

/// One scripted answer of the export status endpoint.
#[derive(Debug, Clone)]
pub enum StatusStep {
    /// 202 with `X-Progress` and an optional `Retry-After` (seconds).
    Pending(Option<u64>),
    /// 429 with a `Retry-After` (seconds).
    TooMany(u64),
    /// 503 with no body.
    Unavailable,
    /// 400 with an OperationOutcome: the export failed.
    Fatal(&'static str),
    /// Any status with an OperationOutcome body (e.g. 404 when the export vanished).
    Status(u16),
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
}

#[derive(Debug, Clone)]
pub struct FakeFile {
    pub name: String,
    pub resource_type: String,
    pub bytes: Bytes,
    pub gzip: bool,
    /// Listed in the manifest but answering 404.
    pub missing: bool,
    /// Sent with `Content-Encoding: gzip` but not gzip at all.
    pub corrupt_gzip: bool,
}

impl FakeFile {
    pub fn new(name: &str, resource_type: &str, bytes: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            resource_type: resource_type.into(),
            bytes: bytes.into(),
            gzip: false,
            missing: false,
            corrupt_gzip: false,
        }
    }
}

#[derive(Default)]
struct Inner {
    auth: bool,
    requires_access_token: bool,
    refuse_post_kickoff: bool,
    consumer_jwks_url: Option<String>,
    tokens: Vec<String>,
    token_lifetime: u64,
    status_script: VecDeque<StatusStep>,
    files: Vec<FakeFile>,
    extra_manifest_urls: Vec<(String, String)>,
    chunk_size: usize,
    requests: Vec<Recorded>,
    fail_token: usize,
    error_files: Vec<String>,
    redirects: HashMap<String, String>,
    page_size: Option<usize>,
    held: Vec<String>,
    kickoff_script: VecDeque<u16>,
    file_faults: HashMap<String, VecDeque<FileFault>>,
}

#[derive(Clone)]
pub struct FakeProvider {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    release: Arc<tokio::sync::Notify>,
}

impl FakeProvider {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            auth: true,
            requires_access_token: true,
            chunk_size: 7,
            token_lifetime: 300,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = FakeProvider { addr, inner, release: Arc::new(tokio::sync::Notify::new()) };
        let router = Router::new()
            .route("/fhir/.well-known/smart-configuration", get(smart_configuration))
            .route("/auth/token", post(token))
            .route("/fhir/$export", get(kickoff).post(kickoff))
            .route("/fhir/status/{n}", get(status).delete(status_delete))
            .route("/fhir/manifest.json", get(static_manifest))
            .route("/fhir/manifest-page/{n}", get(manifest_page))
            .route("/fhir/files/{name}", get(file))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(fake.clone(), record))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        fake
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The FHIR base URL a registration names as `aud`.
    pub fn base(&self) -> String {
        format!("{}/fhir", self.origin())
    }

    pub fn export_url(&self) -> String {
        format!("{}/$export", self.base())
    }

    pub fn manifest_url(&self) -> String {
        format!("{}/manifest.json", self.base())
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap())
    }

    pub fn set_consumer_jwks_url(&self, url: String) {
        self.with(|i| i.consumer_jwks_url = Some(url));
    }
    pub fn without_auth(&self) {
        self.with(|i| i.auth = false);
    }
    pub fn requires_access_token(&self, yes: bool) {
        self.with(|i| i.requires_access_token = yes);
    }
    pub fn refuse_post_kickoff(&self) {
        self.with(|i| i.refuse_post_kickoff = true);
    }
    pub fn script_status(&self, steps: Vec<StatusStep>) {
        self.with(|i| i.status_script = steps.into());
    }
    pub fn fail_token(&self, n: usize) {
        self.with(|i| i.fail_token = n);
    }
    pub fn set_chunk_size(&self, n: usize) {
        self.with(|i| i.chunk_size = n);
    }
    pub fn add_file(&self, name: &str, resource_type: &str, bytes: impl Into<Bytes>) {
        self.push_file(FakeFile::new(name, resource_type, bytes));
    }
    pub fn push_file(&self, f: FakeFile) {
        self.with(|i| i.files.push(f));
    }
    /// A manifest entry with an arbitrary URL (e.g. another host).
    pub fn add_manifest_url(&self, resource_type: &str, url: &str) {
        self.with(|i| i.extra_manifest_urls.push((resource_type.into(), url.into())));
    }
    /// Listed under the manifest's `error` array (OperationOutcome NDJSON).
    pub fn add_error_file(&self, name: &str, bytes: impl Into<Bytes>) {
        self.push_file(FakeFile::new(name, "OperationOutcome", bytes));
        self.with(|i| i.error_files.push(name.into()));
    }
    /// Answer this file's URL with a 307 to `to`.
    pub fn redirect_file(&self, name: &str, to: &str) {
        self.with(|i| i.redirects.insert(name.into(), to.into()));
    }
    /// Split `output` into pages of `n` entries linked by `link` next.
    pub fn page_size(&self, n: usize) {
        self.with(|i| i.page_size = Some(n));
    }
    /// Keep this file's body from being sent until `release_files()`.
    pub fn hold_file(&self, name: &str) {
        self.with(|i| i.held.push(name.into()));
    }
    /// Wait while `name` is held.
    async fn wait_unless_held(&self, name: &str) {
        loop {
            let wait = self.release.notified();
            if !self.with(|i| i.held.iter().any(|h| h == name)) {
                return;
            }
            wait.await;
        }
    }
    /// Keep the answer to an export's release DELETE back until `release_files()`.
    pub fn hold_release(&self) {
        self.hold_file(RELEASE);
    }
    /// Fail the next downloads of `name` in these ways, one per attempt.
    pub fn fault_file(&self, name: &str, faults: Vec<FileFault>) {
        self.with(|i| i.file_faults.insert(name.into(), faults.into()));
    }
    /// Answer the next kick-offs with these statuses (empty body) before accepting.
    pub fn script_kickoff(&self, statuses: Vec<u16>) {
        self.with(|i| i.kickoff_script = statuses.into());
    }
    pub fn release_files(&self) {
        self.with(|i| i.held.clear());
        self.release.notify_waiters();
    }
    pub fn set_token_lifetime(&self, secs: u64) {
        self.with(|i| i.token_lifetime = secs);
    }
    /// Forget every issued token, as if they all expired at once.
    pub fn revoke_tokens(&self) {
        self.with(|i| i.tokens.clear());
    }
    pub fn issued_tokens(&self) -> Vec<String> {
        self.with(|i| i.tokens.clone())
    }
    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|i| i.requests.clone())
    }
    pub fn requests_to(&self, path_prefix: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path.starts_with(path_prefix)).collect()
    }

    fn record(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) {
        let r = Recorded {
            method: method.clone(),
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            authorization: headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string),
            body: String::from_utf8_lossy(body).into_owned(),
        };
        self.with(|i| i.requests.push(r));
    }

    /// Bearer check as a real provider would: only tokens we issued pass.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let (auth, tokens) = self.with(|i| (i.auth, i.tokens.clone()));
        if !auth {
            return true;
        }
        let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        h.strip_prefix("Bearer ").is_some_and(|t| tokens.iter().any(|k| k == t))
    }

    fn manifest(&self) -> Value {
        self.manifest_page(0)
    }

    fn manifest_page(&self, page: usize) -> Value {
        let origin = self.origin();
        self.with(|i| {
            let entry = |f: &FakeFile| json!({"type": f.resource_type, "url": format!("{origin}/fhir/files/{}", f.name)});
            let mut output: Vec<Value> =
                i.files.iter().filter(|f| !i.error_files.contains(&f.name)).map(entry).collect();
            for (t, u) in &i.extra_manifest_urls {
                output.push(json!({"type": t, "url": u}));
            }
            let error: Vec<Value> = i.files.iter().filter(|f| i.error_files.contains(&f.name)).map(entry).collect();
            let mut link = Vec::new();
            if let Some(n) = i.page_size {
                let total = output.len();
                output = output.into_iter().skip(page * n).take(n).collect();
                if (page + 1) * n < total {
                    link.push(json!({"relation": "next", "url": format!("{origin}/fhir/manifest-page/{}", page + 1)}));
                }
            }
            json!({
                "transactionTime": "2026-01-01T00:00:00Z",
                "request": format!("{origin}/fhir/$export"),
                "requiresAccessToken": i.requires_access_token,
                "output": output,
                "error": if page == 0 { error } else { vec![] },
                "link": link
            })
        })
    }
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, Json(oo("token required"))).into_response()
}

/// Every request is recorded here, body included, before its handler runs.
async fn record(State(f): State<FakeProvider>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    f.record(&parts.method, &parts.uri, &parts.headers, &bytes);
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn oo(text: &str) -> Value {
    json!({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":text}]})
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(oo("not found"))).into_response()
}

async fn smart_configuration(State(f): State<FakeProvider>) -> Response {
    if !f.with(|i| i.auth) {
        return StatusCode::NOT_FOUND.into_response();
    }
    Json(json!({
        "token_endpoint": format!("{}/auth/token", f.origin()),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "capabilities": ["client-confidential-asymmetric"]
    }))
    .into_response()
}

/// Verify our client assertion against our published JWKS, as a real provider does.
async fn token(State(f): State<FakeProvider>, body: Bytes) -> Response {
    let fail = f.with(|i| {
        if i.fail_token > 0 {
            i.fail_token -= 1;
            true
        } else {
            false
        }
    });
    if fail {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error":"invalid_client","error_description":"scripted failure"})),
        )
            .into_response();
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let refuse = |why: &str| {
        (StatusCode::BAD_REQUEST, Json(json!({"error":"invalid_client","error_description":why})))
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return refuse("grant_type");
    }
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return refuse("client_assertion_type");
    }
    let Some(assertion) = form.get("client_assertion") else {
        return refuse("client_assertion");
    };
    let Some(jwks_url) = f.with(|i| i.consumer_jwks_url.clone()) else {
        return refuse("no consumer jwks url");
    };
    let jwks: Value = reqwest::get(&jwks_url).await.unwrap().json().await.unwrap();
    let header = josekit::jwt::decode_header(assertion).unwrap();
    let alg = header.claim("alg").and_then(Value::as_str).unwrap_or_default().to_string();
    let kid = header.claim("kid").and_then(Value::as_str).unwrap_or_default().to_string();
    let key = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).cloned();
    let Some(key) = key else {
        return refuse("unknown kid");
    };
    let jwk = josekit::jwk::Jwk::from_map(key.as_object().unwrap().clone()).unwrap();
    let verifier = bulk_import::auth::algorithms::verifier(&alg, &jwk).unwrap();
    let Ok((payload, _)) = josekit::jwt::decode_with_verifier(assertion, &*verifier) else {
        return refuse("signature");
    };
    let token_url = format!("{}/auth/token", f.origin());
    if payload.audience() != Some(vec![token_url.as_str()]) || payload.issuer() != Some("consumer-at-fake") {
        return refuse("aud or iss");
    }
    let token = uuid::Uuid::new_v4().to_string();
    let lifetime = f.with(|i| {
        i.tokens.push(token.clone());
        i.token_lifetime
    });
    Json(json!({"access_token": token, "token_type": "bearer", "expires_in": lifetime, "scope": form.get("scope")})).into_response()
}

async fn kickoff(State(f): State<FakeProvider>, method: Method, headers: HeaderMap) -> Response {
    if method == Method::POST && f.with(|i| i.refuse_post_kickoff) {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if !f.authorized(&headers) {
        return unauthorized();
    }
    if let Some(code) = f.with(|i| i.kickoff_script.pop_front()) {
        let mut res =
            (StatusCode::from_u16(code).unwrap(), Json(oo("scripted kick-off answer"))).into_response();
        res.headers_mut().insert("retry-after", "1".parse().unwrap());
        return res;
    }
    if headers.get("prefer").and_then(|v| v.to_str().ok()) != Some("respond-async") {
        return (StatusCode::BAD_REQUEST, Json(oo("Prefer: respond-async required"))).into_response();
    }
    let mut res = StatusCode::ACCEPTED.into_response();
    res.headers_mut().insert("content-location", format!("{}/fhir/status/1", f.origin()).parse().unwrap());
    res
}

async fn status(State(f): State<FakeProvider>, Path(_n): Path<String>, headers: HeaderMap) -> Response {
    if !f.authorized(&headers) {
        return unauthorized();
    }
    let step = f.with(|i| i.status_script.pop_front());
    match step {
        None => Json(f.manifest()).into_response(),
        Some(StatusStep::Pending(retry)) => {
            let mut res = StatusCode::ACCEPTED.into_response();
            res.headers_mut().insert("x-progress", "50% done".parse().unwrap());
            if let Some(s) = retry {
                res.headers_mut().insert("retry-after", s.to_string().parse().unwrap());
            }
            res
        }
        Some(StatusStep::TooMany(s)) => {
            let mut res = (StatusCode::TOO_MANY_REQUESTS, Json(oo("slow down"))).into_response();
            res.headers_mut().insert("retry-after", s.to_string().parse().unwrap());
            res
        }
        Some(StatusStep::Unavailable) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Some(StatusStep::Fatal(text)) => (StatusCode::BAD_REQUEST, Json(oo(text))).into_response(),
        Some(StatusStep::Status(code)) => {
            (StatusCode::from_u16(code).unwrap(), Json(oo("scripted status"))).into_response()
        }
    }
}

/// The `held` entry that stands for the release DELETE.
const RELEASE: &str = "(release DELETE)";

async fn status_delete(State(f): State<FakeProvider>) -> Response {
    f.wait_unless_held(RELEASE).await;
    StatusCode::ACCEPTED.into_response()
}

async fn static_manifest(State(f): State<FakeProvider>, headers: HeaderMap) -> Response {
    if !f.authorized(&headers) {
        return unauthorized();
    }
    Json(f.manifest()).into_response()
}

async fn manifest_page(State(f): State<FakeProvider>, Path(n): Path<usize>, headers: HeaderMap) -> Response {
    if !f.authorized(&headers) {
        return unauthorized();
    }
    Json(f.manifest_page(n)).into_response()
}

async fn file(State(f): State<FakeProvider>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let (requires, file, chunk) =
        f.with(|i| (i.requires_access_token, i.files.iter().find(|x| x.name == name).cloned(), i.chunk_size));
    if requires && !f.authorized(&headers) {
        return unauthorized();
    }
    if let Some(to) = f.with(|i| i.redirects.get(&name).cloned()) {
        let mut res = StatusCode::TEMPORARY_REDIRECT.into_response();
        res.headers_mut().insert("location", to.parse().unwrap());
        return res;
    }
    f.wait_unless_held(&name).await;
    let Some(file) = file.filter(|f| !f.missing) else {
        return (StatusCode::NOT_FOUND, Json(oo("no such file"))).into_response();
    };
    let bytes = if file.gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&file.bytes).unwrap();
        Bytes::from(enc.finish().unwrap())
    } else {
        file.bytes.clone()
    };
    let fault = f.with(|i| i.file_faults.get_mut(&name).and_then(|q| q.pop_front()));
    if let Some(fault) = fault {
        let half = bytes.len() / 2;
        let (head, tail) = (bytes.slice(..half), bytes.slice(half..));
        if let FileFault::Truncated = fault {
            let stream = futures::stream::iter([Ok::<_, std::io::Error>(head)]);
            let mut res = Response::new(Body::from_stream(stream));
            res.headers_mut().insert("content-length", bytes.len().to_string().parse().unwrap());
            return res;
        }
        let stream = async_stream(head, tail, fault);
        return Response::new(Body::from_stream(stream));
    }
    // Small chunks so lines and multi-byte characters are split across network reads.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        bytes.chunks(chunk.max(1)).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let mut res = Response::new(Body::from_stream(futures::stream::iter(chunks)));
    res.headers_mut().insert("content-type", "application/fhir+ndjson".parse().unwrap());
    if file.gzip || file.corrupt_gzip {
        res.headers_mut().insert("content-encoding", "gzip".parse().unwrap());
    }
    res
}

/// The body of a faulty download: the head, then a break or a stall, then (for a stall) the tail.
fn async_stream(
    head: Bytes,
    tail: Bytes,
    fault: FileFault,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures::stream::unfold(0u8, move |step| {
        let (head, tail) = (head.clone(), tail.clone());
        async move {
            match (step, fault) {
                (0, _) => Some((Ok(head), 1)),
                (1, FileFault::BreakHalfway) => {
                    Some((Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "scripted break")), 2))
                }
                (1, FileFault::Truncated) => None,
                (1, FileFault::StallHalfway(ms)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    Some((Ok(tail), 2))
                }
                _ => None,
            }
        }
    })
}
