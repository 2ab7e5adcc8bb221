//! How often leases are renewed, and how long each renewal lasts: one rule for a job's lease, the
//! file leases renewed with it, and a helper's file lease.
use std::time::Duration;

use crate::jobs::context::JobContext;

/// How often a job's lease is renewed, and how long each renewal lasts.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    pub every: Duration,
    pub lease: Duration,
}

impl LeaseTiming {
    pub fn of(ctx: &JobContext) -> Self {
        // A third of the lease, so two renewals may fail before another process may take the job
        // over; more often when jobs expire sooner (the reaper reads the same sign of life).
        let lease = ctx.config.lease;
        let every = (lease / 3).min(ctx.config.jobs_max_age / 4).max(Duration::from_millis(200));
        Self { every, lease }
    }
}
