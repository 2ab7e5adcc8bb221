//! Outbound HTTP clients, one per set of internal address classes the SSRF guard lets through,
//! and a bounded body reader: nothing from a peer is read unbounded.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::{
    address_guard::{self, Allowed, GuardedResolver, Overrides, Refused},
    config::Limits,
};

pub const USER_AGENT: &str = concat!("bulk-import/", env!("CARGO_PKG_VERSION"));

fn build(limits: &Limits, allowed: Allowed, overrides: Overrides) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(limits.connect_timeout)
        .read_timeout(limits.read_timeout)
        // Redirects are followed by `ProviderClient::send_once`, which drops our token on every hop
        // (reqwest would keep it on a same-host redirect) and checks each one.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve names itself, out of the guard's sight.
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allowed, overrides }))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
}

/// The clients, built on first use for each `Allowed` (there are at most 16) and shared after.
pub struct Outbound {
    limits: Limits,
    overrides: Overrides,
    clients: Mutex<HashMap<Allowed, reqwest::Client>>,
}

impl Outbound {
    pub fn new(limits: &Limits, overrides: Overrides) -> reqwest::Result<Self> {
        let out = Self { limits: limits.clone(), overrides, clients: Mutex::default() };
        out.client(Allowed::ALL_INTERNAL)?;
        Ok(out)
    }

    /// A client whose connections reach public addresses and the internal classes in `allowed`.
    pub fn client(&self, allowed: Allowed) -> reqwest::Result<reqwest::Client> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(&allowed) {
            return Ok(c.clone());
        }
        let c = build(&self.limits, allowed, self.overrides.clone())?;
        clients.insert(allowed, c.clone());
        Ok(c)
    }

    /// For the operator's own choices (registered origins, JWKS URLs): every internal class, never
    /// metadata or reserved addresses.
    pub fn trusted(&self) -> reqwest::Client {
        self.client(Allowed::ALL_INTERNAL).expect("built in Outbound::new")
    }

    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }

    pub fn guarded(&self, allowed: Allowed) -> reqwest::Result<GuardedClient> {
        Ok(GuardedClient { client: self.client(allowed)?, allowed })
    }
}

/// A client for URLs a provider handed us (file hosts, redirects, a discovered token endpoint):
/// its resolver checks names; `check` covers IP literals, which never reach a resolver.
#[derive(Clone)]
pub struct GuardedClient {
    pub client: reqwest::Client,
    pub allowed: Allowed,
}

impl GuardedClient {
    pub fn check(&self, url: &url::Url) -> Result<(), Refused> {
        address_guard::check_url(url, self.allowed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the response body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading the response body failed")]
    Http(#[from] reqwest::Error),
}

/// Read a whole body, failing as soon as it passes `max` bytes.
pub async fn read_limited(resp: reqwest::Response, max: usize) -> Result<Bytes, BodyError> {
    if resp.content_length().is_some_and(|n| n as usize > max) {
        return Err(BodyError::TooLarge(max));
    }
    let mut out = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
