//! A shared budget of kick-off and status requests per provider origin, across all jobs, as a
//! token bucket (GCRA, the cell-rate form that can book a later slot): on average
//! `PROVIDER_REQUESTS_PER_MINUTE`, and a burst of up to `PROVIDER_REQUEST_BURST` (by default half
//! of that) goes out at once; only past the burst are requests spaced
//! `60 s / PROVIDER_REQUESTS_PER_MINUTE` apart. Providers count
//! requests per window, not their spacing (the SMART reference server: 60 a minute per route, then
//! 5 minutes of 429); half a minute's worth as the burst keeps any 60 s under 1.5 times the
//! average. Providers limit clients by source address, so two jobs polling one provider share one
//! allowance, not one each. Manifests of Bulk
//! Submit submissions, which the provider pushed to us, are not polls: they have their own budget
//! (`SUBMIT_MANIFESTS_PER_MINUTE`), so a submission of thousands of manifests neither waits behind
//! the polls' spacing nor delays other jobs' status polls on that origin.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// Origins we keep a slot for; beyond this, slots long in the past are dropped.
const MAX_TRACKED_ORIGINS: usize = 10_000;

/// The budgets a job's requests to its provider are paced by.
#[derive(Clone)]
pub struct Budgets {
    /// Kick-off, status and manifest requests of exports we pull.
    pub polls: Arc<RequestBudget>,
    /// Manifest (and link page) requests of submissions the provider pushed to us.
    pub pushed: Arc<RequestBudget>,
}

impl Budgets {
    /// Polls: `per_minute` on average, `burst` at once (0: half of `per_minute`); pushed
    /// manifests: `pushed_per_minute`, half of it at once.
    pub fn new((per_minute, burst): (u32, u32), pushed_per_minute: u32) -> Self {
        Self {
            polls: Arc::new(RequestBudget::with_burst(per_minute, burst)),
            pushed: Arc::new(RequestBudget::new(pushed_per_minute)),
        }
    }
}

pub struct RequestBudget {
    /// The average time between requests.
    spacing: Duration,
    /// How far ahead of the average a burst may run (`(burst - 1) × spacing`).
    tolerance: Duration,
    /// Per origin, when the next request would be due at the average rate (GCRA's "theoretical
    /// arrival time"); an origin whose time has passed has its whole burst back.
    due: Mutex<HashMap<String, Instant>>,
}

impl RequestBudget {
    /// `per_minute` on average, half of it at once.
    pub fn new(per_minute: u32) -> Self {
        Self::with_burst(per_minute, 0)
    }

    /// `per_minute` on average, `burst` at once (0: half of `per_minute`; at least 1).
    pub fn with_burst(per_minute: u32, burst: u32) -> Self {
        let per_minute = per_minute.max(1);
        let burst = if burst == 0 { per_minute / 2 } else { burst }.clamp(1, per_minute);
        let spacing = Duration::from_secs(60) / per_minute;
        Self { spacing, tolerance: spacing * (burst - 1), due: Mutex::default() }
    }

    /// Book the next request to `origin`; how long until it may go (the caller waits it out).
    pub fn reserve(&self, origin: &str) -> Duration {
        let now = Instant::now();
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        if due.len() >= MAX_TRACKED_ORIGINS {
            due.retain(|_, at| *at > now);
        }
        let at = due.get(origin).copied().filter(|at| *at > now).unwrap_or(now);
        let wait = at.saturating_duration_since(now + self.tolerance);
        due.insert(origin.to_string(), at + self.spacing);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_then_requests_are_spaced_and_other_origins_are_not_held_up() {
        // 30 a minute: 15 at once, then one every 2 s.
        let budget = RequestBudget::new(30);
        for _ in 0..15 {
            assert_eq!(budget.reserve("http://a"), Duration::ZERO);
        }
        assert_eq!(budget.reserve("http://a"), Duration::from_secs(2));
        assert_eq!(budget.reserve("http://a"), Duration::from_secs(4));
        assert_eq!(budget.reserve("http://b"), Duration::ZERO);
        // Time refills the bucket at the average rate: 10 s later, 5 are back (2 owed before).
        tokio::time::advance(Duration::from_secs(10)).await;
        let waits: Vec<Duration> = (0..4).map(|_| budget.reserve("http://a")).collect();
        assert_eq!(waits, [Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::from_secs(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn over_any_minute_the_average_holds_within_half_again() {
        let budget = RequestBudget::new(60);
        let mut sent = Vec::new();
        let start = Instant::now();
        for _ in 0..200 {
            let wait = budget.reserve("http://a");
            sent.push(start.elapsed() + wait);
        }
        // Any 60 s window holds at most 60 + 30 requests.
        for (i, at) in sent.iter().enumerate() {
            let within = sent[i..].iter().take_while(|t| **t < *at + Duration::from_secs(60)).count();
            assert!(within <= 90, "{within} requests in the minute from {at:?}");
        }
    }
}
