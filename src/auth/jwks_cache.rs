//! Fetching registered JWKS URLs (SMART Backend Services "JWKS URL"): `Accept: application/json`,
//! a timeout and a size limit, and a cache that honours the response's `Cache-Control` (never
//! longer than it says, never longer than our cap, bounded in entries).
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use josekit::jwk::Jwk;
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use serde_json::Value;
use tokio::sync::Mutex;

use super::AuthError;
use crate::{
    address_guard::{check_url, Allowed},
    config::MAX_JWKS_BYTES,
    http_client::read_limited,
};

/// Longest we keep a JWKS, whatever its `max-age` says.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Most JWKS URLs cached at once; the oldest entry goes first.
const MAX_ENTRIES: usize = 1000;

struct Entry {
    /// The keys, or why the URL could not be used (a negative result is kept too).
    result: Result<Vec<Jwk>, String>,
    fetched: Instant,
    /// The last fetch made past the cache for an unknown `kid`.
    forced: Option<Instant>,
    /// Until when `Cache-Control` lets us reuse the keys.
    expires: Instant,
}

/// One URL's cache slot; its lock is held across a fetch, so concurrent assertions for one URL
/// wait for one answer while other URLs go on.
type Slot = Arc<Mutex<Option<Entry>>>;

/// Fetches of one URL are spaced by `min_refetch` whatever its cache headers (`no-store`, none)
/// or the assertions say (unknown kids, failures): within it the last answer, keys or error, is
/// used again, and at most one extra fetch for an unknown `kid` is made. So a flood of forged
/// assertions for one client makes at most two fetches per interval.
pub struct JwksCache {
    slots: std::sync::Mutex<HashMap<String, Slot>>,
    timeout: Duration,
    min_refetch: Duration,
}

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
    pub fn new(timeout: Duration, min_refetch: Duration) -> Self {
        Self { slots: std::sync::Mutex::default(), timeout, min_refetch }
    }

    fn slot(&self, uri: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slots.len() >= MAX_ENTRIES && !slots.contains_key(uri) {
            // Forget the oldest entry nobody is fetching.
            let oldest = slots
                .iter()
                .filter_map(|(k, slot)| Some((k, slot.try_lock().ok()?.as_ref().map(|e| e.fetched))))
                .min_by_key(|(_, fetched)| *fetched)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                slots.remove(&k);
            }
        }
        slots.entry(uri.to_string()).or_default().clone()
    }

    /// The keys at `uri`; `fresh` skips the cache (an unknown `kid` may mean the client rotated).
    pub async fn keys(&self, http: &reqwest::Client, uri: &str, fresh: bool) -> Result<Vec<Jwk>, AuthError> {
        let slot = self.slot(uri);
        let mut entry = slot.lock().await;
        let mut forced = None;
        if let Some(e) = entry.as_ref() {
            let recent = |t: Instant| t.elapsed() < self.min_refetch;
            let reuse = if fresh {
                e.forced.is_some_and(recent)
            } else {
                (e.result.is_ok() && e.expires > Instant::now()) || recent(e.fetched)
            };
            if reuse {
                return e.result.clone().map_err(AuthError::InvalidClient);
            }
            forced = e.forced;
        }
        let (result, ttl) = self.fetch(http, uri).await;
        if let Err(reason) = &result {
            tracing::warn!(%reason, "a registered JWKS URL could not be used");
        }
        let now = Instant::now();
        *entry = Some(Entry {
            result: result.clone(),
            fetched: now,
            forced: if fresh { Some(now) } else { forced },
            expires: now + ttl.unwrap_or_default(),
        });
        result.map_err(AuthError::InvalidClient)
    }

    /// One GET of a JWKS URL: its keys (or what went wrong, for the client) and its cache lifetime.
    async fn fetch(&self, http: &reqwest::Client, uri: &str) -> (Result<Vec<Jwk>, String>, Option<Duration>) {
        // Names are checked by the client's resolver; an IP literal never reaches it.
        let checked = url::Url::parse(uri)
            .map_err(|_| "the registered JWKS URL is not a URL".to_string())
            .and_then(|u| {
                check_url(&u, Allowed::ALL_INTERNAL)
                    .map_err(|e| format!("the registered JWKS URL is refused: {e}"))
            });
        if let Err(reason) = checked {
            return (Err(reason), None);
        }
        let sent = http.get(uri).header(ACCEPT, "application/json").timeout(self.timeout).send().await;
        let resp = match sent {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => return (Err(format!("the registered JWKS URL answered {}", r.status())), None),
            Err(_) => return (Err("the registered JWKS URL could not be fetched".into()), None),
        };
        let ttl = cache_ttl(resp.headers().get(CACHE_CONTROL).and_then(|v| v.to_str().ok()));
        let body = match read_limited(resp, MAX_JWKS_BYTES).await {
            Ok(b) => b,
            Err(e) => return (Err(format!("the registered JWKS could not be read: {e}")), None),
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(set) => (Ok(public_keys(&set)), ttl),
            Err(_) => (Err("the registered JWKS is not JSON".into()), None),
        }
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
