//! Shared application state, built once in `App::build` from cheap clones.
use std::sync::Arc;

use crate::{
    auth::{jwks_cache::JwksCache, keys::Keys, provider_token::ProviderTokens},
    config::Config,
    destination::Destination,
    jobs::runner::Runner,
    store::Store,
};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub http: reqwest::Client,
    pub keys: Arc<Keys>,
    pub provider_tokens: Arc<ProviderTokens>,
    /// Cache of registered providers' JWKS URLs.
    pub jwks: Arc<JwksCache>,
    pub destination: Arc<dyn Destination>,
    pub jobs: Arc<Runner>,
}
