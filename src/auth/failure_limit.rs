//! Failed credentials per key (a client id, a client address): past `max` failures in a window,
//! the key is refused without checking anything (no signature check, no JWKS fetch) until the
//! window ends. Each refusal and failure is logged, at most once per key per window, with counts.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Keys remembered at once; expired windows are dropped first when full.
const MAX_KEYS: usize = 10_000;

struct Window {
    started: Instant,
    failures: u32,
    logged: bool,
}

/// The limits on our own credentials, per client address: client assertions and the admin token.
/// Not per client id: whoever knows a provider's client id could then lock it out from anywhere
/// (the JWKS fetches forged assertions cause are bounded by `JWKS_MIN_REFETCH` instead).
pub struct AuthFailures {
    pub token_address: FailureLimit,
    pub admin_address: FailureLimit,
}

/// The window failures are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl AuthFailures {
    pub fn new(per_minute: u32) -> Self {
        Self {
            token_address: FailureLimit::new("client assertion (address)", per_minute, FAILURE_WINDOW),
            admin_address: FailureLimit::new("admin token (address)", per_minute, FAILURE_WINDOW),
        }
    }
}

pub struct FailureLimit {
    what: &'static str,
    max: u32,
    window: Duration,
    keys: Mutex<HashMap<String, Window>>,
}

impl FailureLimit {
    pub fn new(what: &'static str, max: u32, window: Duration) -> Self {
        Self { what, max, window, keys: Mutex::default() }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(wait)` while `key` is over the limit.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let keys = self.keys();
        let Some(w) = keys.get(key).filter(|w| w.failures >= self.max) else { return Ok(()) };
        match self.window.checked_sub(w.started.elapsed()) {
            Some(left) if !left.is_zero() => Err(left),
            _ => Ok(()),
        }
    }

    /// Count a failure of `key`; logs the first failure of a window and when the limit is reached.
    pub fn failed(&self, key: &str, reason: &str) {
        let mut keys = self.keys();
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            let window = self.window;
            keys.retain(|_, w| w.started.elapsed() < window);
            if keys.len() >= MAX_KEYS {
                // Everything is fresh: a flood of distinct keys. Forget the oldest one.
                if let Some(oldest) = keys.iter().min_by_key(|(_, w)| w.started).map(|(k, _)| k.clone()) {
                    keys.remove(&oldest);
                }
            }
        }
        let w = keys.entry(key.to_string()).or_insert(Window {
            started: Instant::now(),
            failures: 0,
            logged: false,
        });
        if w.started.elapsed() >= self.window {
            *w = Window { started: Instant::now(), failures: 0, logged: false };
        }
        w.failures += 1;
        if w.failures == 1 {
            tracing::warn!(what = self.what, key, reason, "credential refused");
        } else if w.failures >= self.max && !w.logged {
            w.logged = true;
            tracing::warn!(
                what = self.what,
                key,
                failures = w.failures,
                window_secs = self.window.as_secs(),
                "too many failed credentials; refusing this key until the window ends"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_refused_after_max_failures_until_its_window_ends() {
        let limit = FailureLimit::new("test", 3, Duration::from_millis(50));
        for _ in 0..3 {
            assert!(limit.check("a").is_ok());
            limit.failed("a", "bad");
        }
        assert!(limit.check("a").is_err());
        assert!(limit.check("b").is_ok(), "other keys are not affected");
        std::thread::sleep(Duration::from_millis(60));
        assert!(limit.check("a").is_ok());
    }

    #[test]
    fn a_window_that_ends_between_two_reads_of_the_clock_is_no_panic() {
        let limit = FailureLimit::new("test", 1, Duration::from_nanos(1));
        for _ in 0..1000 {
            limit.failed("a", "bad");
            let _ = limit.check("a");
        }
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_keys() {
        let limit = FailureLimit::new("test", 3, Duration::from_secs(60));
        for i in 0..MAX_KEYS + 10 {
            limit.failed(&i.to_string(), "bad");
        }
        assert!(limit.keys().len() <= MAX_KEYS);
    }
}
