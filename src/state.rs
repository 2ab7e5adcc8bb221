//! What the HTTP side holds, built once in `App::build` from cheap clones: the inbound OAuth
//! server's parts, and the job services as jobs see them (`JobContext`), not copies of them.
use std::sync::Arc;

use crate::{
    auth::{failure_limit::AuthFailures, jwks_cache::JwksCache, keys::Keys},
    config::Config,
    jobs::context::JobContext,
    store::job_store::{AuditLog, RegistrationStore, ReplayCache},
};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub registrations: Arc<dyn RegistrationStore>,
    pub audit: Arc<dyn AuditLog>,
    /// Client-assertion ids seen (shared by every replica on the database).
    pub replay: Arc<dyn ReplayCache>,
    /// For URLs the operator chose (registered JWKS URLs, provider origins).
    pub http: reqwest::Client,
    pub keys: Arc<Keys>,
    /// Cache of registered providers' JWKS URLs.
    pub jwks: Arc<JwksCache>,
    /// Failed client assertions and admin tokens, per client and address.
    pub auth_failures: Arc<AuthFailures>,
    /// `$bulk-submit` requests per client.
    pub submit_budget: Arc<crate::window_budget::WindowBudget>,
    /// `GET /generator`: one key pair at a time, a budget per address.
    pub key_generator: Arc<crate::key_generator::Generator>,
    /// The resource store's tables, when a destination writes to one (counts for operators).
    pub resources: Option<Arc<dyn crate::destination::resource_store::Tables>>,
    /// The store, destination, runner and provider clients jobs use.
    pub job_context: JobContext,
}
