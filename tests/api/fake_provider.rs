//! An in-process FHIR Bulk Data provider (axum) with SMART Backend Services auth that verifies our
//! client assertions against our `/jwks`, scripted export status answers, static manifests, gzip,
//! chunked bodies and bad files. It records every request.
use std::{
    collections::{HashMap, VecDeque},
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
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
    /// One byte every this many milliseconds (a body that is never silent and never ends).
    Drip(u64),
    /// The body again and again, up to 1 GiB (a file with no end).
    Endless,
}

/// Most bytes an endless file sends before it ends after all (every loop is bounded).
const ENDLESS_BYTES: usize = 1 << 30;

/// `bytes` one at a time, `every` milliseconds apart.
pub fn drip(bytes: Bytes, every: u64) -> Body {
    let stream = futures::stream::unfold(0usize, move |at| {
        let bytes = bytes.clone();
        async move {
            if at >= bytes.len() {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(every)).await;
            Some((Ok::<_, std::io::Error>(bytes.slice(at..at + 1)), at + 1))
        }
    });
    Body::from_stream(stream)
}

/// One scripted answer of the export status endpoint.
#[derive(Debug, Clone)]
pub enum StatusStep {
    /// 202 with `X-Progress` and an optional `Retry-After` (seconds).
    Pending(Option<u64>),
    /// 429 with a `Retry-After` (seconds).
    TooMany(u64),
    /// 429 with a `Retry-After` that is an absolute Unix time this many seconds ahead, in
    /// milliseconds (`true`) or seconds, as the SMART reference server sends it.
    TooManyUntil(u64, bool),
    /// 202 with an HTTP-date `Retry-After` this many seconds ahead.
    PendingUntilDate(u64),
    /// 503 with no body.
    Unavailable,
    /// 400 with an OperationOutcome: the export failed.
    Fatal(&'static str),
    /// Any status with an OperationOutcome body (e.g. 404 when the export vanished).
    Status(u16),
    /// 500 whose OperationOutcome says `transient` (the reference server's first-poll failure).
    TransientError,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub accept_encoding: Option<String>,
    pub range: Option<String>,
    pub if_range: Option<String>,
    /// Every header, as sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// When the request arrived.
    pub at: std::time::Instant,
}

/// How an encrypted file is spoiled after it was encrypted: what a hostile or broken provider
/// (or someone on the way) might send. Each leaves the ciphertext readable; only the tag tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// The tag's first character changed.
    Tag,
    /// The tag cut to 3 bytes (GCM would check only those).
    ShortTag,
    /// The body ends inside the ciphertext, before its tag.
    Truncated,
    /// Bytes after the tag.
    Trailing,
    /// Ciphertext bits flipped so the plaintext reads `to` where it read `from` (AES-GCM is a
    /// stream cipher underneath: a flipped ciphertext bit flips the same plaintext bit).
    Rewritten { from: &'static str, to: &'static str },
}

impl Tamper {
    /// Every kind, the rewrite turning the first `Müller` into `EVIL-er`.
    pub const ALL: [Tamper; 5] = [
        Tamper::Tag,
        Tamper::ShortTag,
        Tamper::Truncated,
        Tamper::Trailing,
        Tamper::Rewritten { from: "Müller", to: "EVIL-er" },
    ];

    /// `jwe` (a compact JWE of `plain`) spoiled this way.
    pub fn apply(self, jwe: &[u8], plain: &[u8]) -> Bytes {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
        let text = std::str::from_utf8(jwe).unwrap();
        let tag_at = text.rfind('.').unwrap() + 1;
        let spoiled = match self {
            Tamper::Tag => {
                let mut v = text.to_string();
                let c = if text.as_bytes()[tag_at] == b'A' { "B" } else { "A" };
                v.replace_range(tag_at..tag_at + 1, c);
                v
            }
            Tamper::ShortTag => format!("{}{}", &text[..tag_at], URL_SAFE_NO_PAD.encode([0u8, 1, 2])),
            Tamper::Truncated => text[..tag_at - 1 - (tag_at - 1) / 10].to_string(),
            Tamper::Trailing => format!("{text}AAAA"),
            Tamper::Rewritten { from, to } => {
                assert_eq!(from.len(), to.len(), "a rewrite keeps the length");
                let mut parts: Vec<String> = text.split('.').map(str::to_string).collect();
                let mut ct = URL_SAFE_NO_PAD.decode(&parts[3]).unwrap();
                let at = plain.windows(from.len()).position(|w| w == from.as_bytes()).expect("in the file");
                for (i, (a, b)) in from.bytes().zip(to.bytes()).enumerate() {
                    ct[at + i] ^= a ^ b;
                }
                parts[3] = URL_SAFE_NO_PAD.encode(ct);
                parts.join(".")
            }
        };
        Bytes::from(spoiled)
    }
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
    /// Expired: answers 410 Gone.
    pub expired: bool,
    /// Answers 404 with a web server's HTML error page.
    pub html_404: bool,
    /// Encrypted (`encrypt_with`), then spoiled this way.
    pub tampered: Option<Tamper>,
    /// When its resources last changed: an export asking `_since` a later time does not list it.
    pub changed_at: Option<String>,
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
            expired: false,
            html_404: false,
            tampered: None,
            changed_at: None,
        }
    }
}

/// How the provider lays out its URLs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Everything under `ROOT/fhir/`.
    #[default]
    Plain,
    /// The SMART reference server: base `ROOT/<sim>/fhir`, status `ROOT/fhir/bulkstatus/<id>`
    /// (the sim segment dropped), files `ROOT/<file-sim>/fhir/bulkfiles/<name>`, pages `?page=N`.
    Reference,
}

/// The reference server's base64url JSON "sim" segments (here `{"secure":1}` and `{"id":"f"}`).
pub const BASE_SIM: &str = "eyJzZWN1cmUiOjF9";
pub const FILE_SIM: &str = "eyJpZCI6ImYifQ";

/// A request limiter like the reference server's: `max` requests per `window` on a route group,
/// then 429 for `block` (per client address; on loopback that is every client).
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub max: usize,
    pub window: std::time::Duration,
    pub block: std::time::Duration,
}

#[derive(Default)]
struct Limiter {
    window_start: Option<std::time::Instant>,
    count: usize,
    blocked_until: Option<std::time::Instant>,
    refused: usize,
}

#[derive(Default)]
struct Inner {
    layout: Layout,
    files_on_alt_origin: bool,
    refuse_scope_containing: Option<String>,
    token_error: Option<(u16, &'static str)>,
    rate_limit: Option<RateLimit>,
    limiters: HashMap<&'static str, Limiter>,
    no_types: bool,
    wrong_counts: bool,
    /// Each manifest entry says how many lines its file holds.
    true_counts: bool,
    hide_discovery: bool,
    token_endpoint_override: Option<String>,
    reject_all_tokens: bool,
    deleted_files: Vec<String>,
    /// The manifests' `transactionTime` (by default 2026-01-01T00:00:00Z).
    transaction_time: Option<String>,
    /// The last kick-off's `_since`: files changed before it are not listed.
    since: Option<String>,
    auth: bool,
    requires_access_token: bool,
    /// Manifests served to anyone, as a Bulk Submit provider does.
    open_manifests: bool,
    /// Serve manifests and files as compact JWEs (`dir`, A256GCM) under this key.
    jwe_key: Option<Vec<u8>>,
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
    /// The last manifest page links back to the second as its next.
    pages_loop: bool,
    /// Every manifest entry announces this count, whatever its file holds.
    announced_count: Option<usize>,
    held: Vec<String>,
    kickoff_script: VecDeque<u16>,
    file_faults: HashMap<String, VecDeque<FileFault>>,
    drip_manifest: Option<u64>,
    kickoff_delay: Option<u64>,
    ranges: Option<Ranges>,
    /// Answers so far to file requests, for a validator that changes.
    file_answers: u64,
}

/// Whether and how files answer `Range` requests (by default, like many providers, they ignore
/// them and send the whole file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranges {
    /// `Accept-Ranges: bytes` and a strong `ETag`; `If-Range` with it gets 206.
    ETag,
    /// Only `Last-Modified` (an hour before `Date`); `If-Range` with it gets 206.
    LastModified,
    /// Only a weak ETag, which `If-Range` cannot use.
    WeakETag,
    /// The ETag changes on every answer (the file was rewritten): `If-Range` never matches.
    ChangingETag,
    /// A strong ETag, but a continuation gets a 206 that stops short of the file's end.
    ShortRange,
}

#[derive(Clone)]
pub struct FakeProvider {
    pub addr: SocketAddr,
    /// A second listener serving the same provider: another origin (a file host, a CDN).
    pub alt_addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    release: Arc<tokio::sync::Notify>,
}

impl FakeProvider {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            auth: true,
            requires_access_token: true,
            open_manifests: false,
            chunk_size: 7,
            token_lifetime: 300,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let alt = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let alt_addr = alt.local_addr().unwrap();
        let fake = FakeProvider { addr, alt_addr, inner, release: Arc::new(tokio::sync::Notify::new()) };
        let router = Router::new()
            .route("/fhir/.well-known/smart-configuration", get(smart_configuration))
            .route("/{sim}/fhir/.well-known/smart-configuration", get(smart_configuration))
            .route("/auth/token", post(token))
            .route("/auth/protected-resource", get(protected_resource))
            .route("/.well-known/oauth-authorization-server/auth", get(authorization_server))
            .route("/fhir/$export", get(kickoff).post(kickoff))
            .route("/{sim}/fhir/$export", get(kickoff).post(kickoff))
            .route("/fhir/status/{n}", get(status).delete(status_delete))
            .route("/fhir/bulkstatus/{n}", get(status).delete(status_delete))
            .route("/fhir/manifest.json", get(static_manifest))
            .route("/fhir/manifest-page/{n}", get(manifest_page))
            .route("/fhir/files/{name}", get(file))
            .route("/{sim}/fhir/bulkfiles/{name}", get(sim_file))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(fake.clone(), record))
            .with_state(fake.clone());
        let alt_router = router.clone();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        tokio::spawn(async move { axum::serve(alt, alt_router).await.unwrap() });
        fake
    }

    /// The second listener's origin.
    pub fn alt_origin(&self) -> String {
        format!("http://{}", self.alt_addr)
    }

    /// Lay URLs out like the SMART reference server (see `Layout::Reference`).
    pub fn reference_layout(&self) {
        self.with(|i| i.layout = Layout::Reference);
    }
    /// The reference layout's FHIR base (`ROOT/<sim>/fhir`).
    pub fn sim_base(&self) -> String {
        format!("{}/{BASE_SIM}/fhir", self.origin())
    }
    /// List files on the second listener's origin.
    pub fn files_on_alt_origin(&self) {
        self.with(|i| i.files_on_alt_origin = true);
    }
    /// Refuse token requests whose scope contains this (the reference server: `*.*`).
    pub fn refuse_scope_containing(&self, s: &str) {
        self.with(|i| i.refuse_scope_containing = Some(s.into()));
    }
    /// Answer every token request with this status and OAuth error code.
    pub fn token_error(&self, status: u16, error: &'static str) {
        self.with(|i| i.token_error = Some((status, error)));
    }
    /// Limit kick-off and status requests (each group separately) like the reference server.
    pub fn rate_limit(&self, limit: RateLimit) {
        self.with(|i| i.rate_limit = Some(limit));
    }
    /// How many requests the limiter refused with 429.
    pub fn rate_limited(&self) -> usize {
        self.with(|i| i.limiters.values().map(|l| l.refused).sum())
    }
    /// Manifest entries carry a `count` that is wrong (the reference server's race).
    pub fn true_counts(&self) {
        self.with(|i| i.true_counts = true);
    }

    pub fn wrong_counts(&self) {
        self.with(|i| i.wrong_counts = true);
    }
    /// Publish no discovery document (the token endpoint must be pinned).
    pub fn hide_discovery(&self) {
        self.with(|i| i.hide_discovery = true);
    }
    /// Name this token endpoint in the discovery document.
    /// The token endpoint its SMART configuration and RFC 8414 metadata name.
    pub fn advertise_token_endpoint(&self, url: &str) {
        self.with(|i| i.token_endpoint_override = Some(url.into()));
    }
    /// Refuse every token on FHIR requests with 401 "Invalid token".
    pub fn reject_all_tokens(&self) {
        self.with(|i| i.reject_all_tokens = true);
    }
    /// Listed under the manifest's `deleted` array (transaction Bundles of DELETE entries).
    pub fn add_deleted_file(&self, name: &str, bytes: impl Into<Bytes>) {
        self.push_file(FakeFile::new(name, "Bundle", bytes));
        self.with(|i| i.deleted_files.push(name.into()));
    }
    /// A provider that keeps changes: data (or deleted[]) files changed at `at`, listed only to an
    /// export whose `_since` is before it.
    pub fn add_changes(&self, name: &str, resource_type: &str, bytes: impl Into<Bytes>, at: &str) {
        let mut f = FakeFile::new(name, resource_type, bytes);
        f.changed_at = Some(at.into());
        self.push_file(f);
        if resource_type == "Bundle" {
            self.with(|i| i.deleted_files.push(name.into()));
        }
    }
    /// The `transactionTime` of the manifests from now on.
    pub fn set_transaction_time(&self, at: &str) {
        self.with(|i| i.transaction_time = Some(at.into()));
    }
    /// `organizeOutputBy`: manifest entries carry no `type`.
    pub fn untyped_entries(&self) {
        self.with(|i| i.no_types = true);
    }

    /// `Some(429 response)` when the route group is over its limit.
    fn limited(&self, group: &'static str) -> Option<Response> {
        self.with(|i| {
            let limit = i.rate_limit?;
            let now = std::time::Instant::now();
            let l = i.limiters.entry(group).or_default();
            if let Some(until) = l.blocked_until.filter(|u| *u > now) {
                l.refused += 1;
                // Milliseconds on the first refusal, seconds after, as observed.
                let at = SystemTime::now() + (until - now);
                let epoch = at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
                let value =
                    if l.refused == 1 { epoch.as_millis().to_string() } else { epoch.as_secs().to_string() };
                let mut res = (StatusCode::TOO_MANY_REQUESTS, Json(oo("Too many requests"))).into_response();
                res.headers_mut().insert("retry-after", value.parse().unwrap());
                return Some(res);
            }
            if l.window_start.is_none_or(|s| now - s >= limit.window) {
                l.window_start = Some(now);
                l.count = 0;
            }
            l.count += 1;
            if l.count > limit.max {
                l.blocked_until = Some(now + limit.block);
                l.refused += 1;
                let mut res = (StatusCode::TOO_MANY_REQUESTS, Json(oo("Too many requests"))).into_response();
                let epoch = (SystemTime::now() + limit.block).duration_since(SystemTime::UNIX_EPOCH).unwrap();
                res.headers_mut().insert("retry-after", epoch.as_millis().to_string().parse().unwrap());
                return Some(res);
            }
            None
        })
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
    /// Behave as a Bulk Submit provider serving its own manifests and files: no token asked for
    /// either (`requiresAccessToken: false`).
    pub fn serve_openly(&self) {
        self.with(|i| {
            i.open_manifests = true;
            i.requires_access_token = false;
        });
    }

    /// Serve every manifest and file as a compact JWE (`dir`, A256GCM) under `key`, as a Bulk
    /// Submit provider with a `fileEncryptionKey` does.
    pub fn encrypt_with(&self, key: &[u8]) {
        self.with(|i| i.jwe_key = Some(key.to_vec()));
    }

    fn sealed(&self, plain: &[u8]) -> Option<Bytes> {
        let key = self.with(|i| i.jwe_key.clone())?;
        let mut header = josekit::jwe::JweHeader::new();
        header.set_algorithm("dir");
        header.set_content_encryption("A256GCM");
        let encrypter = josekit::jwe::Dir.encrypter_from_bytes(&key).unwrap();
        Some(Bytes::from(josekit::jwe::serialize_compact(plain, &header, &encrypter).unwrap()))
    }

    /// A manifest as served: JSON, or its JWE.
    fn manifest_response(&self, manifest: Value) -> Response {
        match self.sealed(manifest.to_string().as_bytes()) {
            Some(jwe) => ([("content-type", "application/jose")], jwe).into_response(),
            None => Json(manifest).into_response(),
        }
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
    /// Every manifest entry announces `n` resources (a count that is off, as the reference
    /// provider's `patient` race makes it).
    pub fn announce_count(&self, n: usize) {
        self.with(|i| i.announced_count = Some(n));
    }

    /// The last manifest page's `next` goes back to the second page (a loop of links).
    pub fn loop_manifest_pages(&self) {
        self.with(|i| i.pages_loop = true);
    }

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

    /// Answer an accepted kick-off only after `ms` milliseconds (the export exists meanwhile).
    pub fn delay_kickoff(&self, ms: u64) {
        self.with(|i| i.kickoff_delay = Some(ms));
    }

    /// Send the static manifest one byte every `ms` milliseconds.
    pub fn drip_manifest(&self, ms: u64) {
        self.with(|i| i.drip_manifest = Some(ms));
    }

    /// Fail the next downloads of `name` in these ways, one per attempt.
    pub fn fault_file(&self, name: &str, faults: Vec<FileFault>) {
        self.with(|i| i.file_faults.insert(name.into(), faults.into()));
    }
    /// Answer the next kick-offs with these statuses (empty body) before accepting.
    pub fn script_kickoff(&self, statuses: Vec<u16>) {
        self.with(|i| i.kickoff_script = statuses.into());
    }
    /// Answer `Range` requests on files this way.
    pub fn ranges(&self, how: Ranges) {
        self.with(|i| i.ranges = Some(how));
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
            accept_encoding: headers.get("accept-encoding").and_then(|v| v.to_str().ok()).map(str::to_string),
            range: headers.get("range").and_then(|v| v.to_str().ok()).map(str::to_string),
            if_range: headers.get("if-range").and_then(|v| v.to_str().ok()).map(str::to_string),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
            at: std::time::Instant::now(),
        };
        self.with(|i| i.requests.push(r));
    }

    /// Bearer check as a real provider would: only tokens we issued pass.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let (auth, tokens) = self.with(|i| (i.auth, i.tokens.clone()));
        if !auth {
            return true;
        }
        if self.with(|i| i.reject_all_tokens) {
            return false;
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
        let alt = self.alt_origin();
        self.with(|i| {
            let host = if i.files_on_alt_origin { &alt } else { &origin };
            let path = match i.layout {
                Layout::Plain => "fhir/files".to_string(),
                Layout::Reference => format!("{FILE_SIM}/fhir/bulkfiles"),
            };
            let entry = |f: &FakeFile| {
                let url = format!("{host}/{path}/{}", f.name);
                let mut e = if i.no_types {
                    json!({"url": url})
                } else {
                    json!({"type": f.resource_type, "url": url})
                };
                if let Some(n) = i.announced_count {
                    e["count"] = json!(n);
                } else if i.wrong_counts {
                    e["count"] = json!(999);
                } else if i.true_counts {
                    e["count"] = json!(f.bytes.iter().filter(|b| **b == b'\n').count());
                }
                e
            };
            let special =
                |f: &&FakeFile| i.error_files.contains(&f.name) || i.deleted_files.contains(&f.name);
            // Instants in one form (UTC, Z) in these tests, so they compare as text.
            let changed = |f: &&FakeFile| match (&i.since, &f.changed_at) {
                (Some(since), Some(at)) => at > since,
                _ => true,
            };
            let mut output: Vec<Value> =
                i.files.iter().filter(changed).filter(|f| !special(f)).map(entry).collect();
            let deleted: Vec<Value> = i
                .files
                .iter()
                .filter(changed)
                .filter(|f| i.deleted_files.contains(&f.name))
                .map(entry)
                .collect();
            for (t, u) in &i.extra_manifest_urls {
                output.push(json!({"type": t, "url": u}));
            }
            let error: Vec<Value> =
                i.files.iter().filter(|f| i.error_files.contains(&f.name)).map(entry).collect();
            let mut link = Vec::new();
            if let Some(n) = i.page_size {
                let total = output.len();
                output = output.into_iter().skip(page * n).take(n).collect();
                let next_page = match (page + 1) * n < total {
                    true => Some(page + 1),
                    false if i.pages_loop => Some(1),
                    false => None,
                };
                if let Some(next_page) = next_page {
                    let next = match i.layout {
                        Layout::Plain => format!("{origin}/fhir/manifest-page/{next_page}"),
                        Layout::Reference => format!("{origin}/fhir/bulkstatus/1?page={next_page}"),
                    };
                    link.push(json!({"relation": "next", "url": next}));
                }
            }
            json!({
                "transactionTime": i.transaction_time.as_deref().unwrap_or("2026-01-01T00:00:00Z"),
                "request": format!("{origin}/fhir/$export"),
                "requiresAccessToken": i.requires_access_token,
                "output": output,
                "error": if page == 0 { error } else { vec![] },
                "deleted": if page == 0 { deleted } else { vec![] },
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

/// RFC 9728 protected-resource metadata naming our authorization server (Bulk Submit's
/// `oauthMetadataUrl` may point here).
async fn protected_resource(State(f): State<FakeProvider>) -> Response {
    Json(json!({"resource": f.base(), "authorization_servers": [format!("{}/auth", f.origin())]}))
        .into_response()
}

/// RFC 8414 metadata of that authorization server.
async fn authorization_server(State(f): State<FakeProvider>) -> Response {
    let origin = f.origin();
    let endpoint = f.with(|i| i.token_endpoint_override.clone()).unwrap_or(format!("{origin}/auth/token"));
    Json(json!({"issuer": format!("{origin}/auth"), "token_endpoint": endpoint,
        "grant_types_supported": ["client_credentials"]}))
    .into_response()
}

async fn smart_configuration(State(f): State<FakeProvider>) -> Response {
    if !f.with(|i| i.auth) || f.with(|i| i.hide_discovery) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let endpoint =
        f.with(|i| i.token_endpoint_override.clone()).unwrap_or(format!("{}/auth/token", f.origin()));
    Json(json!({
        "token_endpoint": endpoint,
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
        // Down for a while: a 503, which a client may retry (unlike an OAuth refusal).
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error":"temporarily_unavailable"})))
            .into_response();
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if let Some((status, error)) = f.with(|i| i.token_error) {
        let body = json!({"error": error, "error_description": "scripted token failure"});
        return (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    if f.with(|i| i.refuse_scope_containing.clone()).is_some_and(|bad| scope.contains(&bad)) {
        let body = json!({"error": "invalid_scope", "error_description": format!("Invalid scope: {scope}")});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
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

/// The `_since` of a kick-off: a query parameter (GET) or a Parameters body (POST).
fn since_of(uri: &Uri, body: &[u8]) -> Option<String> {
    let query = uri.query().unwrap_or("");
    let from_query = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "_since")
        .map(|(_, v)| v.into_owned());
    from_query.or_else(|| {
        let params: Value = serde_json::from_slice(body).ok()?;
        let p = params["parameter"].as_array()?.iter().find(|p| p["name"] == "_since")?;
        p["valueInstant"].as_str().map(str::to_string)
    })
}

async fn kickoff(
    State(f): State<FakeProvider>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::POST && f.with(|i| i.refuse_post_kickoff) {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if let Some(res) = f.limited("kickoff") {
        return res;
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
    if let Some(ms) = f.with(|i| i.kickoff_delay) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let since = since_of(&uri, &body);
    f.with(|i| i.since = since);
    let mut res = StatusCode::ACCEPTED.into_response();
    let status = match f.with(|i| i.layout) {
        Layout::Plain => format!("{}/fhir/status/1", f.origin()),
        Layout::Reference => format!("{}/fhir/bulkstatus/1", f.origin()),
    };
    res.headers_mut().insert("content-location", status.parse().unwrap());
    res
}

async fn status(
    State(f): State<FakeProvider>,
    Path(_n): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(res) = f.limited("status") {
        return res;
    }
    if !f.authorized(&headers) {
        return unauthorized();
    }
    // Reference layout: later manifest pages are the status URL with `?page=N`.
    let page = uri.query().and_then(|q| q.strip_prefix("page=")).and_then(|n| n.parse().ok());
    if let Some(page) = page {
        return Json(f.manifest_page(page)).into_response();
    }
    let step = f.with(|i| i.status_script.pop_front());
    match step {
        None => Json(f.manifest()).into_response(),
        Some(StatusStep::TooManyUntil(ahead, millis)) => {
            let at = (SystemTime::now() + std::time::Duration::from_secs(ahead))
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap();
            let value = if millis { at.as_millis().to_string() } else { at.as_secs().to_string() };
            let mut res = (StatusCode::TOO_MANY_REQUESTS, Json(oo("Too many requests"))).into_response();
            res.headers_mut().insert("retry-after", value.parse().unwrap());
            res
        }
        Some(StatusStep::PendingUntilDate(ahead)) => {
            let mut res = StatusCode::ACCEPTED.into_response();
            let date = httpdate::fmt_http_date(SystemTime::now() + std::time::Duration::from_secs(ahead));
            res.headers_mut().insert("retry-after", date.parse().unwrap());
            res
        }
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
        Some(StatusStep::TransientError) => {
            let body = json!({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"try again"}]});
            (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
        }
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
    if !f.with(|i| i.open_manifests) && !f.authorized(&headers) {
        return unauthorized();
    }
    if let Some(ms) = f.with(|i| i.drip_manifest) {
        return Response::new(drip(Bytes::from(f.manifest().to_string()), ms));
    }
    f.manifest_response(f.manifest())
}

async fn manifest_page(State(f): State<FakeProvider>, Path(n): Path<usize>, headers: HeaderMap) -> Response {
    if !f.with(|i| i.open_manifests) && !f.authorized(&headers) {
        return unauthorized();
    }
    f.manifest_response(f.manifest_page(n))
}

async fn sim_file(
    State(f): State<FakeProvider>,
    Path((_sim, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    file(State(f), Path(name), headers).await
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
    if file.expired {
        return (StatusCode::GONE, Json(oo("File expired"))).into_response();
    }
    if file.html_404 {
        let page = format!(
            "<!DOCTYPE html>\n<html><head><title>404 Not Found</title><style>body{{margin:0}}</style></head>\n<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p>{}</body></html>",
            "<div class=\"pad\"></div>".repeat(200)
        );
        return (StatusCode::NOT_FOUND, [("content-type", "text/html")], page).into_response();
    }
    // Encrypted first (JWE), then the content coding over what is sent.
    let bytes = match f.sealed(&file.bytes) {
        Some(jwe) => match file.tampered {
            Some(tamper) => tamper.apply(&jwe, &file.bytes),
            None => jwe,
        },
        None => file.bytes.clone(),
    };
    let bytes = if file.gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        Bytes::from(enc.finish().unwrap())
    } else {
        bytes
    };
    let (ranges, answer) = f.with(|i| {
        i.file_answers += 1;
        (i.ranges, i.file_answers)
    });
    let Some(ranges) = ranges else { return file_body(&f, &name, &file, bytes, chunk) };
    let validator = match ranges {
        Ranges::ETag | Ranges::ShortRange => ("etag", format!("\"v1-{}\"", bytes.len())),
        Ranges::LastModified => ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT".to_string()),
        Ranges::WeakETag => ("etag", format!("W/\"v1-{}\"", bytes.len())),
        Ranges::ChangingETag => ("etag", format!("\"v{answer}\"")),
    };
    let asked = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok());
    let matches = headers.get("if-range").and_then(|v| v.to_str().ok()) == Some(validator.1.as_str())
        && ranges != Ranges::WeakETag;
    let (status, body) = match asked {
        Some(from) if matches && from < bytes.len() && ranges == Ranges::ShortRange => {
            (StatusCode::PARTIAL_CONTENT, bytes.slice(from..(from + 10).min(bytes.len())))
        }
        Some(from) if matches && from < bytes.len() => (StatusCode::PARTIAL_CONTENT, bytes.slice(from..)),
        _ => (StatusCode::OK, bytes.clone()),
    };
    let mut res = file_body(&f, &name, &file, body.clone(), chunk);
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert("accept-ranges", "bytes".parse().unwrap());
    h.insert(validator.0, validator.1.parse().unwrap());
    h.insert("date", "Tue, 01 Dec 2026 11:00:00 GMT".parse().unwrap());
    if status == StatusCode::PARTIAL_CONTENT {
        let from = asked.unwrap_or_default();
        let range = format!("bytes {from}-{}/{}", from + body.len() - 1, bytes.len());
        h.insert("content-range", range.parse().unwrap());
    }
    res
}

/// A file's body (`bytes`, all of it or the asked range), with this request's fault if one is
/// queued; a gzip file says so whatever its fault.
fn file_body(f: &FakeProvider, name: &str, file: &FakeFile, bytes: Bytes, chunk: usize) -> Response {
    let mut res = faulty_body(f, name, bytes, chunk);
    if file.gzip || file.corrupt_gzip {
        res.headers_mut().insert("content-encoding", "gzip".parse().unwrap());
    }
    res
}

fn faulty_body(f: &FakeProvider, name: &str, bytes: Bytes, chunk: usize) -> Response {
    let fault = f.with(|i| i.file_faults.get_mut(name).and_then(|q| q.pop_front()));
    if let Some(FileFault::Drip(ms)) = fault {
        return Response::new(drip(bytes, ms));
    }
    if let Some(FileFault::Endless) = fault {
        let repeats = ENDLESS_BYTES / bytes.len().max(1);
        let stream = futures::stream::iter((0..repeats).map(move |_| Ok::<_, std::io::Error>(bytes.clone())));
        return Response::new(Body::from_stream(stream));
    }
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
                    // After a pause, so the head is on the wire first (a break inside the body).
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
