//! Requests to one provider on behalf of one job: the Bearer token when needed (refreshed once on a
//! 401), and bounded retries of transient failures (connection errors, 429, 5xx, all-transient
//! OperationOutcomes), honouring `Retry-After`.
use std::sync::Arc;

use reqwest::{header::AUTHORIZATION, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use super::{retry, JobError};
use crate::{
    auth::{
        provider_base::ProviderBase,
        provider_token::{ProviderIdentity, ProviderTokens},
    },
    config::Limits,
};

pub struct ProviderClient {
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

    /// Send once (plus one retry with a fresh token after a 401).
    pub async fn send_once(
        &self,
        auth: Auth,
        make: &impl Fn() -> RequestBuilder,
    ) -> Result<Response, SendError> {
        let token = match auth {
            Auth::WithToken => self.token(false).await.map_err(SendError::Token)?,
            Auth::Without => None,
        };
        let resp = Self::attach(make(), &token).send().await?;
        if resp.status() == StatusCode::UNAUTHORIZED && token.is_some() {
            let fresh = self.token(true).await.map_err(SendError::Token)?;
            return Ok(Self::attach(make(), &fresh).send().await?);
        }
        Ok(resp)
    }

    /// Send, retrying transient failures up to `MAX_RETRIES` times. Returns the last response,
    /// which may still be an error status for the caller to report.
    pub async fn send(
        &self,
        auth: Auth,
        cancel: &CancellationToken,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response, JobError> {
        let mut attempt = 0;
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return Err(JobError::Cancelled),
                r = self.send_once(auth, &make) => r,
            };
            let wait = match result {
                Ok(resp) if !is_transient_status(resp.status()) => return Ok(resp),
                Ok(resp) if attempt >= self.limits.max_retries => return Ok(resp),
                Ok(resp) => {
                    retry::retry_after(resp.headers(), self.limits.max_retry_after).unwrap_or_else(|| {
                        retry::backoff(self.limits.poll_interval, attempt, self.limits.max_retry_after)
                    })
                }
                Err(SendError::Token(e)) => return Err(e),
                Err(SendError::Http(e)) if attempt >= self.limits.max_retries => {
                    return Err(JobError::Provider(format!(
                        "the provider could not be reached after {} attempts: {}",
                        attempt + 1,
                        crate::routes::error::chain(&e)
                    )))
                }
                Err(SendError::Http(_)) => {
                    retry::backoff(self.limits.poll_interval, attempt, self.limits.max_retry_after)
                }
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
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Token(JobError),
    #[error("request failed")]
    Http(#[from] reqwest::Error),
}

/// 429 and 5xx are worth another try (Bulk Data: 5xx on status/file requests are commonly transient).
pub fn is_transient_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}
