//! Fetching registered JWKS URLs (SMART Backend Services "JWKS URL"): `Accept: application/json`,
//! a timeout and a size limit, and a cache that honours the response's `Cache-Control` (never
//! longer than it says, never longer than our cap, bounded in entries).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use josekit::jwk::Jwk;
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use serde_json::Value;
use tokio::sync::Mutex;

use super::AuthError;
use crate::{config::MAX_JWKS_BYTES, http_client::read_limited};

/// Longest we keep a JWKS, whatever its `max-age` says.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Most JWKS URLs cached at once; the oldest entry goes first.
const MAX_ENTRIES: usize = 1000;

struct Entry {
    keys: Vec<Jwk>,
    expires: Instant,
}

pub struct JwksCache {
    entries: Mutex<HashMap<String, Entry>>,
    /// When each URL was last fetched past its cache: unknown kids cannot make us hammer it.
    forced: Mutex<HashMap<String, Instant>>,
    timeout: Duration,
}

/// Least time between two cache-skipping fetches of one JWKS URL.
pub const MIN_FORCED_REFETCH: Duration = Duration::from_secs(5);

/// Public keys only: a JWK with private members is ignored, as is anything that is not a JWK.
pub fn public_keys(set: &Value) -> Vec<Jwk> {
    let keys = set.get("keys").and_then(Value::as_array).cloned().unwrap_or_default();
    keys.into_iter()
        .filter_map(|k| k.as_object().cloned())
        .filter_map(|m| Jwk::from_map(m).ok())
        .filter(|k| k.parameter("d").is_none())
        .collect()
}

/// `max-age` from a Cache-Control value; `None` when the response must not be cached.
fn cache_ttl(cache_control: Option<&str>) -> Option<Duration> {
    let value = cache_control?.to_ascii_lowercase();
    if value.split(',').any(|d| matches!(d.trim(), "no-store" | "no-cache" | "private")) {
        return None;
    }
    let max_age =
        value.split(',').find_map(|d| d.trim().strip_prefix("max-age=")?.trim().parse::<u64>().ok())?;
    Some(Duration::from_secs(max_age).min(MAX_CACHE_TTL))
}

impl JwksCache {
    pub fn new(timeout: Duration) -> Self {
        Self { entries: Mutex::default(), forced: Mutex::default(), timeout }
    }

    /// The keys at `uri`; `fresh` skips the cache (an unknown `kid` may mean the client rotated).
    pub async fn keys(
        &self,
        http: &reqwest::Client,
        uri: &str,
        mut fresh: bool,
    ) -> Result<Vec<Jwk>, AuthError> {
        if fresh {
            let mut forced = self.forced.lock().await;
            if forced.len() >= MAX_ENTRIES {
                forced.retain(|_, at| at.elapsed() < MIN_FORCED_REFETCH);
            }
            match forced.get(uri) {
                Some(at) if at.elapsed() < MIN_FORCED_REFETCH => fresh = false,
                _ => {
                    forced.insert(uri.to_string(), Instant::now());
                }
            }
        }
        if !fresh {
            if let Some(e) = self.entries.lock().await.get(uri).filter(|e| e.expires > Instant::now()) {
                return Ok(e.keys.clone());
            }
        }
        let resp =
            http.get(uri).header(ACCEPT, "application/json").timeout(self.timeout).send().await.map_err(
                |_| AuthError::InvalidClient("the registered JWKS URL could not be fetched".into()),
            )?;
        if !resp.status().is_success() {
            return Err(AuthError::InvalidClient(format!(
                "the registered JWKS URL answered {}",
                resp.status()
            )));
        }
        let ttl = cache_ttl(resp.headers().get(CACHE_CONTROL).and_then(|v| v.to_str().ok()));
        let body = read_limited(resp, MAX_JWKS_BYTES)
            .await
            .map_err(|e| AuthError::InvalidClient(format!("the registered JWKS could not be read: {e}")))?;
        let set: Value = serde_json::from_slice(&body)
            .map_err(|_| AuthError::InvalidClient("the registered JWKS is not JSON".into()))?;
        let keys = public_keys(&set);
        let mut entries = self.entries.lock().await;
        match ttl {
            Some(ttl) if !ttl.is_zero() => {
                if entries.len() >= MAX_ENTRIES && !entries.contains_key(uri) {
                    let oldest = entries.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        entries.remove(&k);
                    }
                }
                entries.insert(uri.to_string(), Entry { keys: keys.clone(), expires: Instant::now() + ttl });
            }
            _ => {
                entries.remove(uri);
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_decides_the_lifetime() {
        assert_eq!(cache_ttl(Some("public, max-age=60")), Some(Duration::from_secs(60)));
        assert_eq!(cache_ttl(Some("max-age=999999")), Some(MAX_CACHE_TTL));
        assert_eq!(cache_ttl(Some("no-store")), None);
        assert_eq!(cache_ttl(Some("max-age=60, no-cache")), None);
        assert_eq!(cache_ttl(None), None);
    }
}
