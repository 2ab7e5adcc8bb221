//! Requests to one provider on behalf of one job: the Bearer token when needed (refreshed once on a
//! 401), redirects followed by hand without the token, and bounded retries of transient failures
//! (connection errors, 429, 5xx, token endpoint trouble), honouring `Retry-After`.
use std::{net::IpAddr, sync::Arc};

use reqwest::{header::AUTHORIZATION, Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{retry, JobError};
use crate::{
    auth::{
        provider_base::ProviderBase,
        provider_token::{ProviderIdentity, ProviderTokens},
    },
    config::Limits,
};

/// Redirect hops we follow for one request.
const MAX_REDIRECTS: usize = 5;

pub struct ProviderClient {
    /// Never follows redirects by itself: `send_once` does, so the token never crosses one.
    pub http: reqwest::Client,
    pub base: ProviderBase,
    pub limits: Limits,
    tokens: Arc<ProviderTokens>,
    client_id: String,
    scope: String,
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
    #[error("{0}")]
    Redirect(String),
}

impl SendError {
    /// A description without URLs (capability URLs and presigned queries are credentials).
    pub fn describe(self) -> String {
        match self {
            SendError::Token(e) => crate::routes::error::chain(&e),
            SendError::Http(e) => crate::routes::error::chain(&e.without_url()),
            SendError::Redirect(m) => m,
        }
    }
}

/// Loopback, private, link-local and unspecified addresses, and `localhost`.
fn is_internal(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => internal_ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => internal_ip(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost"),
        None => true,
    }
}

fn internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

impl ProviderClient {
    pub fn new(
        http: reqwest::Client,
        tokens: Arc<ProviderTokens>,
        base: ProviderBase,
        client_id: String,
        scope: String,
        limits: Limits,
    ) -> Self {
        Self { http, base, limits, tokens, client_id, scope }
    }

    async fn token(&self, refresh: bool) -> Result<Option<SecretString>, JobError> {
        let who = ProviderIdentity { base: &self.base, client_id: &self.client_id, scope: &self.scope };
        Ok(self.tokens.token(&who, refresh).await?)
    }

    fn attach(req: RequestBuilder, token: &Option<SecretString>) -> RequestBuilder {
        match token {
            Some(t) => req.header(AUTHORIZATION, format!("Bearer {}", t.expose_secret())),
            None => req,
        }
    }

    /// Send once (plus one retry with a fresh token after a 401), following GET redirects without
    /// the token, and never from a public provider into an internal address.
    pub async fn send_once(
        &self,
        auth: Auth,
        make: &impl Fn(&reqwest::Client, Url) -> RequestBuilder,
        url: &Url,
    ) -> Result<Response, SendError> {
        let token = match auth {
            Auth::WithToken => self.token(false).await.map_err(SendError::Token)?,
            Auth::Without => None,
        };
        let first = Self::attach(make(&self.http, url.clone()), &token).build()?;
        let method = first.method().clone();
        let mut resp = self.http.execute(first).await?;
        if resp.status() == StatusCode::UNAUTHORIZED && auth == Auth::WithToken {
            // A fresh token, or (for a provider that looked open) a fresh look for its token endpoint.
            let fresh = self.token(true).await.map_err(SendError::Token)?;
            if fresh.is_some() {
                resp = Self::attach(make(&self.http, url.clone()), &fresh).send().await?;
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
                .map_err(|_| SendError::Redirect("the provider redirected to an invalid URL".into()))?;
            if !matches!(next.scheme(), "http" | "https")
                || (is_internal(&next) && !is_internal(self.base.url()))
            {
                return Err(SendError::Redirect(format!(
                    "the provider redirected to {}, an internal or non-HTTP address; not followed",
                    next.host_str().unwrap_or("?")
                )));
            }
            // Redirects never carry our token (Bulk Data: output URLs may redirect to storage).
            resp = make(&self.http, next.clone()).send().await?;
            current = next;
        }
        if resp.status().is_redirection() {
            return Err(SendError::Redirect(format!("more than {MAX_REDIRECTS} redirects")));
        }
        Ok(resp)
    }

    /// Send, retrying transient failures up to `MAX_RETRIES` times. Returns the last response,
    /// which may still be an error status for the caller to report.
    pub async fn send(
        &self,
        auth: Auth,
        cancel: &CancellationToken,
        url: &Url,
        make: impl Fn(&reqwest::Client, Url) -> RequestBuilder,
    ) -> Result<Response, JobError> {
        let mut attempt = 0;
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return Err(JobError::Cancelled),
                r = self.send_once(auth, &make, url) => r,
            };
            let last = attempt >= self.limits.max_retries;
            let wait = match result {
                Ok(resp) if !is_transient_status(resp.status()) || last => return Ok(resp),
                Ok(resp) => self.wait_for(&resp, attempt),
                Err(SendError::Token(e)) if last => return Err(e),
                Err(e @ SendError::Redirect(_)) => return Err(JobError::Provider(e.describe())),
                Err(e) if last => {
                    return Err(JobError::Provider(format!(
                        "the provider could not be reached after {} attempts: {}",
                        attempt + 1,
                        e.describe()
                    )))
                }
                Err(_) => self.backoff(attempt),
            };
            attempt += 1;
            tracing::warn!(
                attempt,
                wait_ms = wait.as_millis() as u64,
                "transient provider failure; retrying"
            );
            retry::sleep(wait, cancel).await?;
        }
    }

    /// How long to wait after a transient response: its `Retry-After`, else backoff.
    pub fn wait_for(&self, resp: &Response, attempt: u32) -> std::time::Duration {
        retry::retry_after(resp.headers(), self.limits.poll_interval, self.limits.max_retry_after)
            .unwrap_or_else(|| self.backoff(attempt))
    }

    /// Capped exponential backoff from `POLL_INTERVAL` for the `attempt`-th retry.
    pub fn backoff(&self, attempt: u32) -> std::time::Duration {
        retry::backoff(self.limits.poll_interval, attempt, self.limits.max_retry_after)
    }
}

/// 429 and 5xx are worth another try (Bulk Data: 5xx on status/file requests are commonly transient).
pub fn is_transient_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for u in [
            "http://127.0.0.1/x",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest",
            "http://[::1]/",
            "http://localhost:8080/",
        ] {
            assert!(is_internal(&Url::parse(u).unwrap()), "{u}");
        }
        for u in ["https://s3.amazonaws.com/b/k", "http://93.184.216.34/"] {
            assert!(!is_internal(&Url::parse(u).unwrap()), "{u}");
        }
    }
}
