//! The one retry policy: how many attempts, how long to keep trying, what to wait between them
//! (`Retry-After`: seconds or HTTP-date, RFC 9110 §10.2.3, or the absolute Unix time in seconds or
//! milliseconds that the SMART reference server sends on 429, capped by configuration; else
//! exponential backoff), every wait cancellable. Every retrying call goes through [`run`], and no
//! call inside an attempt retries on its own, so retries never nest.
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use tokio_util::sync::CancellationToken;

use crate::jobs::error::JobError;

/// How often and how long a call is tried.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Attempts after the first.
    pub retries: u32,
    /// The first backoff wait (doubled per retry up to `cap`), and the floor for `Retry-After`.
    pub base: Duration,
    pub cap: Duration,
    /// When set, how long a call may keep failing (a status URL's error budget): it is tried
    /// until then, however many attempts that takes, and not past it; `retries` no longer counts.
    pub budget: Option<Duration>,
}

impl Policy {
    /// `MAX_RETRIES` attempts after the first, backing off from `POLL_INTERVAL` to `MAX_RETRY_AFTER`.
    pub fn from_limits(limits: &crate::config::Limits) -> Self {
        Self {
            retries: limits.max_retries,
            base: limits.poll_interval,
            cap: limits.max_retry_after,
            budget: None,
        }
    }

    /// The same, tried for at most `span` of failures (a status URL's error budget); a zero span
    /// leaves the count of retries in charge.
    pub fn lasting(self, span: Duration) -> Self {
        Self { budget: (!span.is_zero()).then_some(span), ..self }
    }

    /// The wait before retry `attempt` (0 for the first retry).
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.base, attempt, self.cap)
    }

    /// The provider's `Retry-After` within this policy's bounds.
    pub fn retry_after(&self, headers: &HeaderMap) -> Option<Duration> {
        retry_after(headers, self.base, self.cap)
    }
}

/// Which attempt this is.
#[derive(Debug, Clone, Copy)]
pub struct Try {
    /// Attempts made before this one.
    pub number: u32,
    /// No attempt follows this one: a transient failure now is final.
    pub last: bool,
}

/// What one attempt came to.
pub enum Attempt<T> {
    /// Final: a success, or a failure no retry can mend.
    Done(Result<T, JobError>),
    /// Transient: try again after `after` (the provider's `Retry-After`), else after backoff.
    /// Returned on the last attempt, it fails with `why`.
    Again { after: Option<Duration>, why: String },
}

/// Run `attempt` under `policy`. Attempts watch `cancel` themselves (one is never dropped half-way,
/// so a writer is always aborted cleanly); the waits between them end at once on cancellation.
pub async fn run<T, Fut>(
    policy: Policy,
    cancel: &CancellationToken,
    what: &str,
    mut attempt: impl FnMut(Try) -> Fut,
) -> Result<T, JobError>
where
    Fut: std::future::Future<Output = Attempt<T>>,
{
    let started = Instant::now();
    // Bounded: `retries` attempts, or with a budget until it is spent (every wait ends within it).
    let mut number = 0u32;
    loop {
        let last = match policy.budget {
            Some(budget) => started.elapsed() >= budget,
            None => number >= policy.retries,
        };
        match attempt(Try { number, last }).await {
            Attempt::Done(result) => return result,
            Attempt::Again { why, .. } if last => {
                return Err(JobError::Provider(format!("{why} (gave up after {} attempts)", number + 1)))
            }
            Attempt::Again { after, why } => {
                let mut wait = after.unwrap_or_else(|| policy.backoff(number));
                if let Some(budget) = policy.budget {
                    wait = wait.min(budget.saturating_sub(started.elapsed()));
                }
                tracing::warn!(what, attempt = number + 1, wait_ms = wait.as_millis() as u64, %why, "transient failure; trying again");
                sleep(wait, cancel).await?;
            }
        }
        number = number.saturating_add(1);
    }
}

/// The provider's `Retry-After`, if it sent a usable one, kept within `floor..=cap` (a zero or
/// past date must not make us poll in a tight loop).
pub fn retry_after(headers: &HeaderMap, floor: Duration, cap: Duration) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(n) = raw.parse::<u64>() {
        match n {
            // No delay is 30 years long: a number this large is a point in time.
            n if n >= UNIX_MILLIS_FROM => until(SystemTime::UNIX_EPOCH + Duration::from_millis(n)),
            n if n >= UNIX_SECONDS_FROM => until(SystemTime::UNIX_EPOCH + Duration::from_secs(n)),
            n => Duration::from_secs(n),
        }
    } else {
        until(httpdate::parse_http_date(raw).ok()?)
    };
    Some(wait.max(floor).min(cap))
}

/// Numbers from here on read as Unix seconds (2001-09-09) ...
const UNIX_SECONDS_FROM: u64 = 1_000_000_000;
/// ... and from here on as Unix milliseconds (the same instant in ms).
const UNIX_MILLIS_FROM: u64 = 1_000_000_000_000;

fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
}

/// The wait before the next status poll of an export still running (Bulk Data: "exponential
/// backoff"): the provider's `Retry-After` (else `start`) doubled per poll up to `cap`, but never
/// shorter than what the provider asked for.
pub fn poll_wait(asked: Option<Duration>, start: Duration, polls: u32, cap: Duration) -> Duration {
    let grown = backoff(asked.unwrap_or(start).max(start), polls, cap);
    asked.map_or(grown, |a| grown.max(a))
}

/// Exponential backoff: `base * 2^attempt`, capped.
pub fn backoff(base: Duration, attempt: u32, cap: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16)).min(cap)
}

/// `work`, unless the job is cancelled first: for reads of a provider's bodies, which a hostile
/// provider can trickle for as long as it likes.
pub async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Result<T, JobError> {
    cancel.run_until_cancelled(work).await.ok_or(JobError::Cancelled)
}

/// Sleep unless cancelled first.
pub async fn sleep(wait: Duration, cancel: &CancellationToken) -> Result<(), JobError> {
    tokio::select! {
        biased;
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
    fn retry_after_as_an_absolute_unix_time_is_a_point_in_time() {
        let cap = Duration::from_secs(600);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let mut h = HeaderMap::new();
        let secs = (now + Duration::from_secs(253)).as_secs();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&secs.to_string()).unwrap());
        let w = retry_after(&h, Duration::ZERO, cap).unwrap();
        assert!(w > Duration::from_secs(250) && w <= Duration::from_secs(253), "{w:?}");
        let millis = (now + Duration::from_secs(40)).as_millis();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&millis.to_string()).unwrap());
        let w = retry_after(&h, Duration::ZERO, cap).unwrap();
        assert!(w > Duration::from_secs(38) && w <= Duration::from_secs(40), "{w:?}");
        let past = (now - Duration::from_secs(5)).as_secs();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&past.to_string()).unwrap());
        assert_eq!(retry_after(&h, Duration::from_secs(1), cap), Some(Duration::from_secs(1)));
    }

    #[test]
    fn polls_back_off_from_the_providers_retry_after_to_the_cap() {
        let (start, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        let one = Some(Duration::from_secs(1));
        let waits: Vec<u64> = (0..8).map(|n| poll_wait(one, start, n, cap).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(poll_wait(None, start, 2, cap), Duration::from_secs(4));
        // A provider asking for more than our cap gets what it asked for.
        assert_eq!(poll_wait(Some(Duration::from_secs(90)), start, 0, cap), Duration::from_secs(90));
    }

    fn quick(retries: u32, budget: Duration) -> Policy {
        Policy { retries, base: Duration::from_millis(1), cap: Duration::from_millis(4), budget: None }
            .lasting(budget)
    }

    #[tokio::test]
    async fn run_tries_as_the_policy_says_and_tells_the_last_attempt() {
        let cancel = CancellationToken::new();
        let seen = std::sync::Mutex::new(Vec::new());
        let out: Result<(), JobError> = run(quick(2, Duration::ZERO), &cancel, "test", |t| {
            seen.lock().unwrap().push((t.number, t.last));
            async { Attempt::Again { after: None, why: "flaky".into() } }
        })
        .await;
        assert_eq!(*seen.lock().unwrap(), [(0, false), (1, false), (2, true)]);
        assert!(
            matches!(out, Err(JobError::Provider(ref m)) if m == "flaky (gave up after 3 attempts)"),
            "{out:?}"
        );
        // A final answer ends it at once.
        let n = std::sync::atomic::AtomicU32::new(0);
        let out = run(quick(5, Duration::ZERO), &cancel, "test", |_| {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Attempt::Done(Ok(7)) }
        })
        .await;
        assert_eq!((out.unwrap(), n.into_inner()), (7, 1));
    }

    #[tokio::test]
    async fn with_a_budget_run_keeps_trying_until_it_is_spent_and_no_longer() {
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let n = std::sync::atomic::AtomicU32::new(0);
        let out: Result<(), JobError> = run(quick(1, Duration::from_millis(60)), &cancel, "test", |_| {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Attempt::Again { after: None, why: "down".into() } }
        })
        .await;
        assert!(out.is_err());
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert!(n.into_inner() > 2, "more attempts than `retries` while the budget lasts");
        // A provider asking for a long wait does not stretch the budget: it is a maximum.
        let started = Instant::now();
        let out: Result<(), JobError> =
            run(quick(5, Duration::from_millis(80)), &cancel, "test", |_| async {
                Attempt::Again { after: Some(Duration::from_secs(30)), why: "later".into() }
            })
            .await;
        assert!(out.is_err());
        assert!(started.elapsed() < Duration::from_secs(2), "gave up after {:?}", started.elapsed());
        // A cancelled wait ends the run as cancelled, however many attempts were left.
        let waiting = run(quick(100, Duration::ZERO), &cancel, "test", |_| async {
            Attempt::<()>::Again { after: Some(Duration::from_secs(60)), why: "later".into() }
        });
        cancel.cancel();
        assert!(matches!(waiting.await, Err(JobError::Cancelled)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Duration::from_secs(1);
        assert_eq!(backoff(b, 0, Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(backoff(b, 3, Duration::from_secs(60)), Duration::from_secs(8));
        assert_eq!(backoff(b, 30, Duration::from_secs(60)), Duration::from_secs(60));
    }
}
