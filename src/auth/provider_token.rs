//! Us as a SMART Backend Services client of a provider: discover its token endpoint
//! (`.well-known/smart-configuration`, then the CapabilityStatement `oauth-uris` extension), sign a
//! client assertion with our key, and cache the access token per provider and scope, refreshing
//! ahead of expiry. A provider that advertises no token endpoint is treated as open (no auth).
//! A registration may pin the endpoint instead. A discovered endpoint off the provider's trusted
//! origins must be https and passes the SSRF guard: our signed assertion goes nowhere else.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use josekit::jwt::JwtPayload;
use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use super::{keys::Keys, provider_base::ProviderBase};
use crate::{
    address_guard::Refused,
    http_client::{read_limited, GuardedClient},
};

/// Why we have no token from a provider (outbound; the OAuth server's own errors are `AuthError`).
#[derive(Debug, thiserror::Error)]
pub enum ProviderTokenError {
    /// The token endpoint could not be used just now (unreachable, 5xx, 429): it may pass.
    #[error("{0}")]
    Unavailable(String),
    /// The token endpoint refused us, or may not be contacted: retrying cannot help.
    #[error("{0}")]
    Refused(String),
    /// Our client assertion could not be signed.
    #[error("our client assertion could not be signed")]
    Signing(#[from] josekit::JoseError),
}

impl ProviderTokenError {
    /// Whether asking again cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, ProviderTokenError::Unavailable(_))
    }
}

/// The SSRF guard's refusal inside a connection error, if that is what it was.
pub fn refusal_in(e: &reqwest::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return Some(r);
        }
        source = s.source();
    }
    None
}

/// How long a discovered token endpoint is trusted before we look again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Lifetime of the assertions we sign (SMART: at most five minutes).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(240);
/// Refresh a token this long before the provider says it expires.
const REFRESH_AHEAD: Duration = Duration::from_secs(60);
/// Assumed lifetime when a provider omits `expires_in` (SMART recommends 300 s).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// Longest provider token lifetime we believe.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const AUTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_AUTH_BODY_BYTES: usize = 1024 * 1024;
const OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// A discovered token endpoint: where to POST, and the `aud` exactly as the provider spells it
/// (the SMART reference server compares strings: `127.0.0.1` is not `localhost`, `:443` matters).
#[derive(Debug, Clone)]
struct Endpoint {
    url: Url,
    aud: String,
    /// Pinned by the operator on the registration (trusted as it is).
    pinned: bool,
}

/// Who we are at a provider.
pub struct ProviderIdentity<'a> {
    pub base: &'a ProviderBase,
    /// Our client id at the provider.
    pub client_id: &'a str,
    pub scope: &'a str,
    /// The registration's pinned token endpoint, if any.
    pub pinned_endpoint: Option<&'a str>,
    /// OAuth metadata a Bulk Submit request named (SMART configuration, RFC 9728 or RFC 8414):
    /// the token endpoint comes from there, before the pin and discovery.
    pub metadata_urls: &'a [String],
    /// For a discovered endpoint off the provider's trusted origins.
    pub guarded: &'a GuardedClient,
}

type Slot = Arc<Mutex<Option<Cached>>>;

pub struct ProviderTokens {
    http: reqwest::Client,
    keys: Arc<Keys>,
    /// One slot per provider, client id and scope; the outer lock is held only to find the slot.
    tokens: Mutex<HashMap<String, Slot>>,
    endpoints: Mutex<HashMap<String, (Option<Endpoint>, Instant)>>,
}

impl ProviderTokens {
    pub fn new(http: reqwest::Client, keys: Arc<Keys>) -> Self {
        Self { http, keys, tokens: Mutex::default(), endpoints: Mutex::default() }
    }

    /// A token for this provider, or `None` when the provider needs none. `refresh` skips the cache
    /// (after a 401), and also looks for a token endpoint again if none was found before.
    pub async fn token(
        &self,
        who: &ProviderIdentity<'_>,
        refresh: bool,
    ) -> Result<Option<SecretString>, ProviderTokenError> {
        // The operator's pin wins over what a submission's metadata names.
        let endpoint = match (who.pinned_endpoint, who.metadata_urls) {
            (Some(raw), _) => Some(Self::pinned(raw)?),
            (None, []) => self.token_endpoint(who.base, refresh).await?,
            (None, urls) => Some(self.endpoint_from_metadata(who, urls, refresh).await?),
        };
        let Some(endpoint) = endpoint else { return Ok(None) };
        // Trust is judged for this registration on every call: the discovery cache is shared by
        // registrations of one base URL, whose `token_origins` may differ.
        let trusted = endpoint.pinned || who.base.is_trusted(&endpoint.url);
        if !trusted && endpoint.url.scheme() != "https" {
            return Err(ProviderTokenError::Refused(format!(
                "the provider's discovery names the token endpoint {}, on another origin than {} and not https; our assertion is not sent there (pin token_endpoint on the registration if it is right)",
                super::provider_base::redact(&endpoint.url),
                who.base.origin()
            )));
        }
        let key = format!("{}|{}|{}|{}", who.base.url(), who.client_id, who.scope, endpoint.url);
        let slot = self.tokens.lock().await.entry(key).or_default().clone();
        // Held across the request: concurrent jobs for one provider share one token request,
        // while other providers are not held up.
        let mut cached = slot.lock().await;
        if !refresh {
            if let Some(c) = cached.as_ref().filter(|c| c.refresh_at > Instant::now()) {
                return Ok(Some(c.token.clone()));
            }
        }
        let (token, lifetime) = self.request_token(&endpoint, trusted, who).await?;
        let ahead = REFRESH_AHEAD.min(lifetime / 2);
        *cached = Some(Cached { token: token.clone(), refresh_at: Instant::now() + (lifetime - ahead) });
        Ok(Some(token))
    }

    async fn request_token(
        &self,
        endpoint: &Endpoint,
        trusted: bool,
        who: &ProviderIdentity<'_>,
    ) -> Result<(SecretString, Duration), ProviderTokenError> {
        let now = SystemTime::now();
        let mut claims = JwtPayload::new();
        claims.set_issuer(who.client_id);
        claims.set_subject(who.client_id);
        claims.set_audience(vec![endpoint.aud.as_str()]);
        crate::time_util::set_times(&mut claims, now, now + ASSERTION_LIFETIME)?;
        claims.set_jwt_id(uuid::Uuid::new_v4().to_string());
        let assertion = self.keys.sign(&claims)?;
        let http = if trusted {
            &self.http
        } else {
            who.guarded.check(&endpoint.url).map_err(|e| {
                ProviderTokenError::Refused(format!("the provider's token endpoint was not contacted: {e}"))
            })?;
            &who.guarded.client
        };
        let resp = http
            .post(endpoint.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("scope", who.scope),
                ("grant_type", "client_credentials"),
                ("client_assertion_type", super::client_assertion::ASSERTION_TYPE),
                ("client_assertion", assertion.as_str()),
            ])
            .timeout(AUTH_REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| match refusal_in(&e) {
                // The SSRF guard said no: asking again cannot change that.
                Some(r) => ProviderTokenError::Refused(format!(
                    "the provider's token endpoint was not contacted: {r}"
                )),
                None => ProviderTokenError::Unavailable(format!(
                    "the provider's token endpoint could not be reached: {}",
                    crate::error_text::chain(&e.without_url())
                )),
            })?;
        let status = resp.status();
        let body = read_limited(resp, MAX_AUTH_BODY_BYTES).await.map_err(|e| {
            ProviderTokenError::Unavailable(format!("the provider's token response could not be read: {e}"))
        })?;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let error = json.get("error").and_then(Value::as_str).unwrap_or("no error code");
            let description = json.get("error_description").and_then(Value::as_str).unwrap_or("");
            let message = format!(
                "the provider's token endpoint {} refused us with {status} ({error}: {description}); check our registration there (client id, JWKS URL, scope '{}')",
                endpoint.aud, who.scope
            );
            // RFC 6749 §5.2 errors (400/401) do not heal by retrying; 429 and 5xx may.
            return Err(if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
                ProviderTokenError::Refused(message)
            } else {
                ProviderTokenError::Unavailable(message)
            });
        }
        let token =
            json.get("access_token").and_then(Value::as_str).filter(|t| !t.is_empty()).ok_or_else(|| {
                ProviderTokenError::Unavailable("the provider's token response has no access_token".into())
            })?;
        // A provider's number must not overflow our clock: clamp to a day.
        let lifetime = json
            .get("expires_in")
            .and_then(Value::as_u64)
            .map(|s| Duration::from_secs(s.min(MAX_TOKEN_LIFETIME.as_secs())))
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Ok((SecretString::from(token.to_string()), lifetime))
    }

    async fn token_endpoint(
        &self,
        base: &ProviderBase,
        rediscover: bool,
    ) -> Result<Option<Endpoint>, ProviderTokenError> {
        let key = base.url().to_string();
        if let Some((found, at)) = self.endpoints.lock().await.get(&key) {
            // A provider that looked open and now answers 401 may have turned auth on: look again.
            let stale = at.elapsed() >= DISCOVERY_TTL || (rediscover && found.is_none());
            if !stale {
                return Ok(found.clone());
            }
        }
        let found = match self.via_smart_configuration(base).await? {
            Some(u) => Some(u),
            None => self.via_capability_statement(base).await?,
        };
        if found.is_none() {
            tracing::info!(provider = %base.url(), "provider advertises no token endpoint; pulling without authorization");
        }
        self.endpoints.lock().await.insert(key, (found.clone(), Instant::now()));
        Ok(found)
    }

    /// The token endpoint named by the first of `urls` that names one: the document's own
    /// `token_endpoint` (SMART configuration, RFC 8414), else that of its first
    /// `authorization_servers` entry (RFC 9728 protected-resource metadata).
    async fn endpoint_from_metadata(
        &self,
        who: &ProviderIdentity<'_>,
        urls: &[String],
        refresh: bool,
    ) -> Result<Endpoint, ProviderTokenError> {
        let key = format!("metadata|{}", urls.join(" "));
        if let Some((Some(found), at)) = self.endpoints.lock().await.get(&key) {
            if !refresh && at.elapsed() < DISCOVERY_TTL {
                return Ok(found.clone());
            }
        }
        for raw in urls {
            let Ok(url) = Url::parse(raw) else { continue };
            let Some(doc) = self.get_json_via(self.client_for(who, &url)?, url.clone()).await? else {
                continue;
            };
            let endpoint = match doc.get("token_endpoint").and_then(Value::as_str) {
                Some(t) => Self::endpoint_at(&url, t),
                None => match Self::authorization_server_metadata(&doc) {
                    Some(at) => {
                        let found = self.get_json_via(self.client_for(who, &at)?, at.clone()).await?;
                        found.and_then(|d| Self::endpoint_at(&at, d.get("token_endpoint")?.as_str()?))
                    }
                    None => None,
                },
            };
            if let Some(found) = endpoint {
                self.endpoints.lock().await.insert(key, (Some(found.clone()), Instant::now()));
                return Ok(found);
            }
        }
        Err(ProviderTokenError::Refused(format!(
            "no token endpoint was found in the OAuth metadata the submission named ({}); no token was asked for",
            urls.iter()
                .map(|u| Url::parse(u).map(|u| super::provider_base::redact(&u)).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// RFC 8414 §3: the authorization server's metadata, `/.well-known/oauth-authorization-server`
    /// put before the issuer's path.
    fn authorization_server_metadata(doc: &Value) -> Option<Url> {
        let issuer = doc.get("authorization_servers")?.as_array()?.first()?.as_str()?;
        let mut url = Url::parse(issuer).ok()?;
        let path = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
        url.set_query(None);
        Some(url)
    }

    /// A token endpoint named in a document at `doc` (relative ones resolve against it), with
    /// the `aud` exactly as named when absolute.
    fn endpoint_at(doc: &Url, raw: &str) -> Option<Endpoint> {
        let url = doc.join(raw).ok()?;
        let aud = if Url::parse(raw).is_ok() { raw.to_string() } else { url.to_string() };
        Some(Endpoint { url, aud, pinned: false })
    }

    /// The trusted client for the provider's origins; anything else must be https and passes
    /// the SSRF guard.
    fn client_for<'c>(
        &'c self,
        who: &'c ProviderIdentity<'_>,
        url: &Url,
    ) -> Result<&'c reqwest::Client, ProviderTokenError> {
        if who.base.is_trusted(url) {
            return Ok(&self.http);
        }
        if url.scheme() != "https" {
            return Err(ProviderTokenError::Refused(format!(
                "the OAuth metadata at {} is not on {} and not https; it was not fetched",
                super::provider_base::redact(url),
                who.base.origin()
            )));
        }
        who.guarded
            .check(url)
            .map_err(|e| ProviderTokenError::Refused(format!("the OAuth metadata was not fetched: {e}")))?;
        Ok(&who.guarded.client)
    }

    async fn get_json(&self, url: Url) -> Result<Option<Value>, ProviderTokenError> {
        self.get_json_via(&self.http, url).await
    }

    /// `Ok(None)` only when the document is absent (404/410) or names no endpoint; any other
    /// failure is an error, so a passing outage never turns into "this provider needs no auth".
    async fn get_json_via(
        &self,
        http: &reqwest::Client,
        url: Url,
    ) -> Result<Option<Value>, ProviderTokenError> {
        let resp = http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(AUTH_REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                ProviderTokenError::Unavailable(format!(
                    "cannot reach the provider for discovery: {}",
                    crate::error_text::chain(&e.without_url())
                ))
            })?;
        let status = resp.status();
        if matches!(status, reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE) {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(ProviderTokenError::Unavailable(format!(
                "the provider answered {status} at {}",
                super::provider_base::redact(&url)
            )));
        }
        let body = read_limited(resp, MAX_AUTH_BODY_BYTES).await.map_err(|e| {
            ProviderTokenError::Unavailable(format!(
                "the provider's discovery document at {} could not be read: {e}",
                super::provider_base::redact(&url)
            ))
        })?;
        Ok(serde_json::from_slice(&body).ok())
    }

    fn pinned(raw: &str) -> Result<Endpoint, ProviderTokenError> {
        let url = Url::parse(raw).map_err(|_| {
            ProviderTokenError::Refused(format!("the pinned token endpoint '{raw}' is not a URL"))
        })?;
        Ok(Endpoint { url, aud: raw.to_string(), pinned: true })
    }

    /// A discovered endpoint; whether it may get our assertion is judged per registration.
    fn endpoint(base: &ProviderBase, raw: &str) -> Result<Option<Endpoint>, ProviderTokenError> {
        Ok(Self::endpoint_at(base.url(), raw))
    }

    /// The endpoint discovery last found for this provider, for the registration view.
    pub async fn discovered_endpoint(&self, base: &ProviderBase) -> Option<String> {
        let endpoints = self.endpoints.lock().await;
        endpoints.get(&base.url().to_string()).and_then(|(e, _)| e.as_ref()).map(|e| e.aud.clone())
    }

    async fn via_smart_configuration(
        &self,
        base: &ProviderBase,
    ) -> Result<Option<Endpoint>, ProviderTokenError> {
        let url = base.url().join(".well-known/smart-configuration").expect("a constant relative path joins");
        let Some(json) = self.get_json(url).await? else { return Ok(None) };
        match json.get("token_endpoint").and_then(Value::as_str) {
            Some(t) => Self::endpoint(base, t),
            None => Ok(None),
        }
    }

    async fn via_capability_statement(
        &self,
        base: &ProviderBase,
    ) -> Result<Option<Endpoint>, ProviderTokenError> {
        let url = base.url().join("metadata").expect("a constant relative path joins");
        let Some(json) = self.get_json(url).await? else { return Ok(None) };
        let rests = json.get("rest").and_then(Value::as_array).cloned().unwrap_or_default();
        let token = rests
            .iter()
            .filter(|r| r.get("mode").and_then(Value::as_str) == Some("server"))
            .filter_map(|r| r.pointer("/security/extension").and_then(Value::as_array))
            .flatten()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(OAUTH_URIS))
            .filter_map(|e| e.get("extension").and_then(Value::as_array))
            .flatten()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some("token"))
            .find_map(|e| ["valueUri", "valueUrl", "valueString"].iter().find_map(|k| e.get(*k)?.as_str()))
            .map(str::to_string);
        match token {
            Some(t) => Self::endpoint(base, &t),
            None => Ok(None),
        }
    }
}
