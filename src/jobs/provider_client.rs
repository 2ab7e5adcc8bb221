//! Requests to one provider on behalf of one job: the Bearer token only to the provider's trusted
//! origins (refreshed once on a 401), redirects followed by hand without the token, every URL off
//! those origins through the SSRF guard, kick-off and status requests paced by the shared
//! per-origin budget, and bounded retries of transient failures honouring `Retry-After`.
use std::{sync::Arc, time::Duration};

use reqwest::{
    header::{HeaderValue, AUTHORIZATION},
    Method, RequestBuilder, Response, StatusCode,
};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::jobs::context::JobContext;
use crate::jobs::error::JobError;
use crate::jobs::jwe::ContentKey;
use crate::jobs::request_budget::{Budgets, RequestBudget};
use crate::jobs::retry::{self, Attempt, Policy, Try};
use crate::{
    address_guard::classes_of,
    auth::{
        provider_base::{redact, ProviderBase},
        provider_token::{refusal_in, ProviderIdentity, ProviderTokens},
    },
    config::Limits,
    domain::{Provider, SourceAccess},
    error_text::chain,
    http_client::GuardedClient,
    metrics::Metrics,
};

/// Redirect hops we follow for one request.
const MAX_REDIRECTS: usize = 5;

/// What a job needs to reach its provider, built once per job (and per submitted manifest that
/// says how it is reached).
#[derive(Clone)]
pub struct ProviderClient {
    /// For the provider's trusted origins (chosen by the operator).
    trusted: reqwest::Client,
    /// For everything else the provider points us at.
    guarded: GuardedClient,
    pub base: ProviderBase,
    pub limits: Limits,
    tokens: Arc<ProviderTokens>,
    /// The budget this client's paced requests take from (polls, or a pushed submission's).
    budget: Arc<RequestBudget>,
    budgets: Budgets,
    who: Who,
    metrics: Arc<Metrics>,
    /// How a submitted manifest and its files are reached, if its request said.
    source: Option<Arc<SourceAccess>>,
    /// Its `fileEncryptionKey`, parsed once.
    key: Option<ContentKey>,
    /// Where an encrypted file's plaintext waits for its tag (`jobs::spool`).
    spool_dir: Arc<std::path::Path>,
}

/// Who we are at the provider: our client id, the scope we ask for, a pinned token endpoint.
#[derive(Clone)]
pub struct Who {
    /// The registration at our server (the provider's client_id here), whose data this is.
    pub registration: String,
    pub client_id: String,
    pub scope: String,
    pub token_endpoint: Option<String>,
}

/// Whether a request carries our token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    WithToken,
    /// Capability URLs (`requiresAccessToken: false`): the spec forbids sending the token.
    Without,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Token(JobError),
    #[error("request failed")]
    Http(#[from] reqwest::Error),
    /// A redirect or address we do not follow; retrying cannot help.
    #[error("{0}")]
    Refused(String),
}

impl SendError {
    /// A description without URLs (capability URLs and presigned queries are credentials).
    pub fn describe(self) -> String {
        match self {
            SendError::Token(e) => chain(&e),
            SendError::Http(e) => chain(&e.without_url()),
            SendError::Refused(m) => m,
        }
    }

    /// Whether sending again may help.
    pub fn is_permanent(&self) -> bool {
        match self {
            SendError::Token(e) => e.is_permanent(),
            SendError::Http(_) => false,
            SendError::Refused(_) => true,
        }
    }

    /// A connection the SSRF guard's resolver refused reads as that refusal, not a network error.
    fn from_http(e: reqwest::Error, url: &Url) -> Self {
        match refusal_in(&e) {
            Some(r) => SendError::Refused(format!("{} was not fetched: {r}", redact(url))),
            None => SendError::Http(e),
        }
    }
}

impl ProviderClient {
    pub fn new(
        (trusted, guarded): (reqwest::Client, GuardedClient),
        tokens: Arc<ProviderTokens>,
        budgets: Budgets,
        base: ProviderBase,
        who: Who,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let spool_dir = Arc::from(std::env::temp_dir());
        let budget = budgets.polls.clone();
        let (source, key) = (None, None);
        Self { trusted, guarded, base, limits, tokens, budget, budgets, who, metrics, source, key, spool_dir }
    }

    /// Encrypted files wait for their tag in `dir` (owner-only), not the system's temporary one.
    pub fn spooling_in(self, dir: &std::path::Path) -> Self {
        Self { spool_dir: Arc::from(dir), ..self }
    }

    /// Where an encrypted file's plaintext waits for its tag.
    pub fn spool_dir(&self) -> &std::path::Path {
        &self.spool_dir
    }

    /// This client for a submitted manifest reached as `access` says: its headers on every GET
    /// to the manifest's and files' origins, our token from its OAuth metadata.
    pub fn reaching(&self, access: &SourceAccess) -> Self {
        let source = (!access.is_plain()).then(|| Arc::new(access.clone()));
        // Checked when the request was taken.
        let key = access.encryption_key.as_deref().and_then(|raw| ContentKey::parse(raw).ok());
        // A submission's manifests were pushed to us: they are not polls.
        let budget = self.budgets.pushed.clone();
        Self { source, key, budget, ..self.clone() }
    }

    /// The registration the data comes from (its client_id at our server).
    pub fn provider(&self) -> &str {
        &self.who.registration
    }

    /// The key a submitted manifest and its files are JWE-encrypted with, if its request gave one.
    pub fn content_key(&self) -> Option<&ContentKey> {
        self.key.as_ref()
    }

    /// Whether a submitted manifest gets our token: only when its request named where to get one.
    pub fn manifest_auth(&self) -> Auth {
        match &self.source {
            Some(s) if !s.oauth_metadata_urls.is_empty() => Auth::WithToken,
            _ => Auth::Without,
        }
    }

    async fn token(&self, refresh: bool) -> Result<Option<SecretString>, JobError> {
        let metadata = self.source.as_ref().map(|s| s.oauth_metadata_urls.as_slice()).unwrap_or_default();
        let who = ProviderIdentity {
            base: &self.base,
            client_id: &self.who.client_id,
            scope: &self.who.scope,
            pinned_endpoint: self.who.token_endpoint.as_deref(),
            metadata_urls: metadata,
            guarded: &self.guarded,
        };
        Ok(self.tokens.token(&who, refresh).await?)
    }

    fn source_authorizes(&self) -> bool {
        let headers = self.source.iter().flat_map(|s| &s.headers);
        headers.into_iter().any(|h| h.name.eq_ignore_ascii_case(AUTHORIZATION.as_str()))
    }

    /// The submitted manifest's headers, on a request to the origin the GET was first sent to (a
    /// redirect elsewhere does not get them, as it does not get our token). Marked sensitive, so
    /// no debug output of the request shows them.
    fn source_headers(&self, req: RequestBuilder, to: &Url, first: &Url) -> RequestBuilder {
        let Some(source) = self.source.as_ref().filter(|_| to.origin() == first.origin()) else {
            return req;
        };
        source.headers.iter().fold(req, |req, h| match HeaderValue::from_str(&h.value) {
            Ok(mut value) => {
                value.set_sensitive(true);
                req.header(h.name.as_str(), value)
            }
            // Checked when the request was taken; a value that is no header value is not sent.
            Err(_) => req,
        })
    }

    fn attach(req: RequestBuilder, token: &Option<SecretString>) -> RequestBuilder {
        match token {
            Some(t) => req.header(AUTHORIZATION, format!("Bearer {}", t.expose_secret())),
            None => req,
        }
    }

    /// The client for `url`: trusted origins as registered, anything else through the guard.
    fn client_for(&self, url: &Url) -> Result<&reqwest::Client, SendError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SendError::Refused(format!("{} is not an http(s) URL; not fetched", redact(url))));
        }
        if self.base.is_trusted(url) {
            return Ok(&self.trusted);
        }
        self.guarded
            .check(url)
            .map_err(|r| SendError::Refused(format!("{} was not fetched: {r}", redact(url))))?;
        Ok(&self.guarded.client)
    }

    /// Send `req`, built by `http` (the client `client_for` chose for `url`).
    async fn execute(
        &self,
        http: &reqwest::Client,
        req: RequestBuilder,
        url: &Url,
    ) -> Result<Response, SendError> {
        let req = req.build()?;
        let method = req.method().clone();
        self.timed(http.execute(req), method, url).await
    }

    /// A request's answer (or failure), counted in `/metrics` by method and status.
    async fn timed(
        &self,
        sent: impl std::future::Future<Output = reqwest::Result<Response>>,
        method: Method,
        url: &Url,
    ) -> Result<Response, SendError> {
        let started = std::time::Instant::now();
        let result = sent.await;
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        self.metrics.provider_request(method.as_str(), status, started.elapsed().as_secs_f64());
        result.map_err(|e| SendError::from_http(e, url))
    }

    /// How long until the shared budget lets us send a kick-off or status request to `url`'s
    /// origin; the slot is ours once this returns, so the caller must wait it out.
    pub fn reserve_slot(&self, url: &Url) -> Duration {
        self.budget.reserve(&url.origin().ascii_serialization())
    }

    /// Wait for a budget slot, telling `on_wait` when the wait is long enough to show.
    pub async fn pace<F, Fut>(
        &self,
        url: &Url,
        cancel: &CancellationToken,
        on_wait: F,
    ) -> Result<(), JobError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let wait = self.reserve_slot(url);
        if wait >= Duration::from_secs(2) {
            let setting = match Arc::ptr_eq(&self.budget, &self.budgets.pushed) {
                true => "SUBMIT_MANIFESTS_PER_MINUTE",
                false => "PROVIDER_REQUESTS_PER_MINUTE",
            };
            on_wait(format!(
                "waiting {} s to stay within our request budget for {} ({setting})",
                wait.as_secs(),
                url.origin().ascii_serialization()
            ))
            .await;
        }
        retry::sleep(wait, cancel).await
    }

    /// Send once (plus one retry with a fresh token after a 401), following GET redirects without
    /// the token. The token only ever goes to a trusted origin; every other hop passes the guard
    /// (and the registration's `file_origins`, for requests without the token).
    pub async fn send_once(
        &self,
        auth: Auth,
        make: &impl Fn(&reqwest::Client, Url) -> RequestBuilder,
        url: &Url,
    ) -> Result<Response, SendError> {
        let http = self.client_for(url)?;
        let token = match auth {
            Auth::WithToken if !self.base.is_trusted(url) => {
                return Err(SendError::Refused(format!(
                    "{} needs our access token, but it is not on {}; the token was not sent",
                    redact(url),
                    self.base.trusted_list()
                )))
            }
            // A submission that sends its own Authorization gets it sent instead of our token.
            Auth::WithToken if self.source_authorizes() => None,
            Auth::WithToken => self.token(false).await.map_err(SendError::Token)?,
            Auth::Without => {
                self.base.file_host_allowed(url).map_err(|e| SendError::Refused(e.to_string()))?;
                None
            }
        };
        let build = |http: &reqwest::Client, to: &Url| self.source_headers(make(http, to.clone()), to, url);
        let first = Self::attach(build(http, url), &token).build()?;
        let method = first.method().clone();
        let mut resp = self.timed(http.execute(first), method.clone(), url).await?;
        if resp.status() == StatusCode::UNAUTHORIZED && auth == Auth::WithToken && !self.source_authorizes() {
            // A fresh token, or (for a provider that looked open) a fresh look for its token endpoint.
            let fresh = self.token(true).await.map_err(SendError::Token)?;
            if fresh.is_some() {
                resp = self.execute(http, Self::attach(build(http, url), &fresh), url).await?;
            }
        }
        let mut current = url.clone();
        for _ in 0..MAX_REDIRECTS {
            if !resp.status().is_redirection() || method != Method::GET {
                return Ok(resp);
            }
            let Some(location) = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok())
            else {
                return Ok(resp);
            };
            let next = current
                .join(location)
                .map_err(|_| SendError::Refused("the provider redirected to an invalid URL".into()))?;
            let hop = |e: SendError| match e {
                SendError::Refused(m) => SendError::Refused(format!("a redirect was not followed: {m}")),
                other => other,
            };
            let http = self.client_for(&next).map_err(hop)?;
            // The pin holds on every hop, whatever the first request carried.
            self.base.file_host_allowed(&next).map_err(|e| hop(SendError::Refused(e.to_string())))?;
            // Redirects never carry our token (Bulk Data: output URLs may redirect to storage).
            resp = self.execute(http, build(http, &next), &next).await.map_err(hop)?;
            current = next;
        }
        if resp.status().is_redirection() {
            return Err(SendError::Refused(format!("more than {MAX_REDIRECTS} redirects")));
        }
        Ok(resp)
    }

    /// Send under the retry policy (transient statuses and network failures). Returns the last
    /// response, which may still be an error status for the caller to report.
    pub async fn send(
        &self,
        auth: Auth,
        cancel: &CancellationToken,
        url: &Url,
        make: impl Fn(&reqwest::Client, Url) -> RequestBuilder,
    ) -> Result<Response, JobError> {
        let make = &make;
        retry::run(self.retry_policy(), cancel, "provider request", |t: Try| async move {
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Attempt::Done(Err(JobError::Cancelled)),
                r = self.send_once(auth, make, url) => r,
            };
            match result {
                Ok(resp) if !is_transient_status(resp.status()) || t.last => Attempt::Done(Ok(resp)),
                Ok(resp) => Attempt::Again {
                    after: self.retry_policy().retry_after(resp.headers()),
                    why: format!("the provider answered {}", resp.status()),
                },
                Err(SendError::Token(e)) if t.last || e.is_permanent() => Attempt::Done(Err(e)),
                Err(e @ SendError::Refused(_)) => Attempt::Done(Err(JobError::Refused(e.describe()))),
                Err(e) if t.last => Attempt::Done(Err(JobError::Provider(format!(
                    "the provider could not be reached after {} attempts: {}",
                    t.number + 1,
                    e.describe()
                )))),
                Err(e) => Attempt::Again { after: None, why: e.describe() },
            }
        })
        .await
    }

    /// The retry policy of this job's requests (`MAX_RETRIES`, `POLL_INTERVAL`, `MAX_RETRY_AFTER`).
    pub fn retry_policy(&self) -> Policy {
        Policy::from_limits(&self.limits)
    }

    /// The job's view of its provider: trusted origins from the registration, and the internal
    /// address classes the SSRF guard lets through for everything else.
    pub async fn for_provider(ctx: &JobContext, provider: &Provider) -> Result<Self, JobError> {
        let base = ProviderBase::parse(&provider.aud)?
            .with_origins(&provider.token_origin_list(), provider.file_origin_list());
        let policy = ctx.config.internal_addresses;
        let mut allowed = policy.always;
        if let (true, Some(host)) = (policy.same_as_provider, base.url().host()) {
            allowed = allowed.union(classes_of(&host.to_owned(), ctx.outbound.overrides()).await);
        }
        let guarded = ctx
            .outbound
            .guarded(allowed)
            .map_err(|e| JobError::Internal(format!("the HTTP client could not be built: {e}")))?;
        let who = Who {
            registration: provider.client_id.clone(),
            client_id: provider.consumer_client_id.clone(),
            scope: provider.scope.clone().unwrap_or_else(|| ctx.config.provider_scope.clone()),
            token_endpoint: provider.token_endpoint.clone(),
        };
        Ok(Self::new(
            (ctx.http.clone(), guarded),
            ctx.provider_tokens.clone(),
            ctx.request_budget.clone(),
            base,
            who,
            ctx.config.limits.clone(),
            ctx.metrics.clone(),
        )
        .spooling_in(&ctx.config.spool_dir()))
    }

    /// How long to wait after a transient response: its `Retry-After`, else backoff.
    pub fn wait_for(&self, resp: &Response, attempt: u32) -> Duration {
        let policy = self.retry_policy();
        policy.retry_after(resp.headers()).unwrap_or_else(|| policy.backoff(attempt))
    }
}

/// 429 and 5xx are worth another try (Bulk Data: 5xx on status/file requests are commonly transient).
pub fn is_transient_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}
