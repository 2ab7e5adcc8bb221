//! What running jobs use, assembled once in `App::build`: the store, the destination, outbound
//! clients and budgets, the runner. Jobs take this, not the HTTP side's `AppState`.
use std::sync::Arc;

use crate::jobs::request_budget::Budgets;
use crate::jobs::runner::Runner;
use crate::{
    auth::provider_token::ProviderTokens,
    config::Config,
    destination::Destination,
    http_client::Outbound,
    metrics::Metrics,
    store::job_store::{Exclusive, JobStore, RegistrationStore, SubmissionStore, SyncStore},
};

#[derive(Clone)]
pub struct JobContext {
    pub config: Arc<Config>,
    pub store: Arc<dyn JobStore>,
    pub providers: Arc<dyn RegistrationStore>,
    /// Bulk Submit submissions (a submission's job reads its manifest requests here).
    pub submissions: Arc<dyn SubmissionStore>,
    /// What each export of each provider came to last (incremental sync).
    pub sync: Arc<dyn SyncStore>,
    /// Work one process at a time does across every replica (the reaper).
    pub exclusive: Arc<dyn Exclusive>,
    /// For the provider's trusted origins.
    pub http: reqwest::Client,
    /// Clients per SSRF-guard setting, for URLs providers hand us.
    pub outbound: Arc<Outbound>,
    /// Requests per provider origin, shared by every job: polls, and pushed submissions' manifests.
    pub request_budget: Budgets,
    pub provider_tokens: Arc<ProviderTokens>,
    pub destination: Arc<dyn Destination>,
    pub jobs: Arc<Runner>,
    /// What `/metrics` reports; jobs count files, bytes, resources and provider requests.
    pub metrics: Arc<Metrics>,
    /// Held while a sync pull is looked for and started, so two starts here cannot both see none.
    pub sync_starts: Arc<tokio::sync::Mutex<()>>,
    /// Where a notice goes when a job ends (`NOTIFY_URL`), if anywhere.
    pub notifier: Option<Arc<crate::notify::Notifier>>,
}
