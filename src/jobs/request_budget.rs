//! A shared budget of kick-off and status requests per provider origin, across all jobs: requests
//! to one origin are spaced `60 s / PROVIDER_REQUESTS_PER_MINUTE` apart. Providers limit clients by
//! source address (the SMART reference server: 60 a minute per route, then 5 minutes of 429), so
//! two jobs polling one provider must share one allowance, not have one each. Manifests of Bulk
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
    pub fn new(polls_per_minute: u32, pushed_per_minute: u32) -> Self {
        Self {
            polls: Arc::new(RequestBudget::new(polls_per_minute)),
            pushed: Arc::new(RequestBudget::new(pushed_per_minute)),
        }
    }
}

pub struct RequestBudget {
    spacing: Duration,
    next_free: Mutex<HashMap<String, Instant>>,
}

impl RequestBudget {
    pub fn new(per_minute: u32) -> Self {
        Self { spacing: Duration::from_secs(60) / per_minute.max(1), next_free: Mutex::default() }
    }

    /// Reserve the next free slot for `origin`; how long until it comes (the caller waits it out).
    pub fn reserve(&self, origin: &str) -> Duration {
        let now = Instant::now();
        let mut slots = self.next_free.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.len() >= MAX_TRACKED_ORIGINS {
            slots.retain(|_, at| *at > now);
        }
        let slot = slots.get(origin).copied().filter(|at| *at > now).unwrap_or(now);
        slots.insert(origin.to_string(), slot + self.spacing);
        slot - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_to_one_origin_are_spaced_and_other_origins_are_not_held_up() {
        let budget = RequestBudget::new(30);
        assert_eq!(budget.reserve("http://a"), Duration::ZERO);
        assert_eq!(budget.reserve("http://a"), Duration::from_secs(2));
        assert_eq!(budget.reserve("http://a"), Duration::from_secs(4));
        assert_eq!(budget.reserve("http://b"), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(budget.reserve("http://a"), Duration::ZERO);
    }
}
