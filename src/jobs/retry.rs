//! Waiting between attempts: `Retry-After` (seconds or HTTP-date, RFC 9110 §10.2.3) capped by
//! configuration, else exponential backoff; every wait is cancellable.
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use tokio_util::sync::CancellationToken;

use super::JobError;

/// The provider's `Retry-After`, if it sent a usable one, kept within `floor..=cap` (a zero or
/// past date must not make us poll in a tight loop).
pub fn retry_after(headers: &HeaderMap, floor: Duration, cap: Duration) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(secs) = raw.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(raw).ok()?;
        at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
    };
    Some(wait.max(floor).min(cap))
}

/// Exponential backoff: `base * 2^attempt`, capped.
pub fn backoff(base: Duration, attempt: u32, cap: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16)).min(cap)
}

/// Sleep unless cancelled first.
pub async fn sleep(wait: Duration, cancel: &CancellationToken) -> Result<(), JobError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(JobError::Cancelled),
        _ = tokio::time::sleep(wait) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_accepts_seconds_and_dates_and_is_capped() {
        let cap = Duration::from_secs(120);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, Duration::ZERO, cap), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&h, Duration::ZERO, cap), Some(cap));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let w = retry_after(&h, Duration::ZERO, cap).unwrap();
        assert!(w > Duration::from_secs(25) && w <= Duration::from_secs(30), "{w:?}");
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, Duration::ZERO, cap), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("0"));
        assert_eq!(retry_after(&h, Duration::from_secs(1), cap), Some(Duration::from_secs(1)));
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&past).unwrap());
        assert_eq!(retry_after(&h, Duration::from_secs(1), cap), Some(Duration::from_secs(1)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Duration::from_secs(1);
        assert_eq!(backoff(b, 0, Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(backoff(b, 3, Duration::from_secs(60)), Duration::from_secs(8));
        assert_eq!(backoff(b, 30, Duration::from_secs(60)), Duration::from_secs(60));
    }
}
