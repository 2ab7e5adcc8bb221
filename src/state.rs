//! Shared application state, built once in `App::build` from cheap clones.
use std::sync::Arc;

use crate::{
    auth::{failure_limit::AuthFailures, jwks_cache::JwksCache, keys::Keys, provider_token::ProviderTokens},
    config::Config,
    destination::Destination,
    http_client::Outbound,
    jobs::{context::JobContext, request_budget::RequestBudget, runner::Runner},
    store::Store,
};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    /// For URLs the operator chose (registered JWKS URLs, provider origins).
    pub http: reqwest::Client,
    /// Clients per SSRF-guard setting, for URLs providers hand us.
    pub outbound: Arc<Outbound>,
    /// Kick-off and status requests per provider origin, shared by every job.
    pub request_budget: Arc<RequestBudget>,
    pub keys: Arc<Keys>,
    pub provider_tokens: Arc<ProviderTokens>,
    /// Cache of registered providers' JWKS URLs.
    pub jwks: Arc<JwksCache>,
    /// Failed client assertions and admin tokens, per client and address.
    pub auth_failures: Arc<AuthFailures>,
    pub destination: Arc<dyn Destination>,
    pub jobs: Arc<Runner>,
    /// The same services as jobs see them.
    pub job_context: JobContext,
}
