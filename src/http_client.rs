//! The one outbound HTTP client and a bounded body reader: nothing from a peer is read unbounded.
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::config::Limits;

pub const USER_AGENT: &str = concat!("bulk-import/", env!("CARGO_PKG_VERSION"));

pub fn build(limits: &Limits) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(limits.connect_timeout)
        .read_timeout(limits.read_timeout)
        // Redirects are followed by `ProviderClient::send_once`, which drops our token on every hop
        // (reqwest would keep it on a same-host redirect).
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
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
