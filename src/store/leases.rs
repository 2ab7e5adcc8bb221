//! Who runs a job: a lease claimed with one conditional statement on the database's clock, renewed
//! by the holder's heartbeat, and fenced by a token every claim increments (a renewal or release
//! names the token it holds, so a holder whose lease was taken over finds out and stops).
use std::time::Duration;

use super::{jobs::JobRow, Store, StoreError};
use crate::domain::Job;

/// What a heartbeat's renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Held,
    /// Still ours, and someone asked for the job to stop (a DELETE on any process).
    CancelRequested,
    /// Taken over (or the job is gone): stop writing at once.
    Lost,
}

/// A claimed lease: its fencing token, and how often the job was taken over from a process whose
/// lease had lapsed (a crash, a stall), this claim included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub token: i64,
    pub takeovers: i64,
}

/// A claim counts as a takeover when the lease it replaces was another's (and so had lapsed).
const TAKEOVER: &str =
    "takeovers = takeovers + CASE WHEN lease_owner IS NOT NULL AND lease_owner <> ?1 THEN 1 ELSE 0 END";

/// A job touched this recently is being started by the process that touched it.
pub(super) const JUST_STARTED_SECS: i64 = 2;

/// A free lease: nobody's, ours already, or expired.
const FREE: &str = "(lease_owner IS NULL OR lease_owner = ?1 OR lease_expires_at < unixepoch())";

impl Store {
    /// Claim an unfinished job for `owner`, or `None` if another holds it.
    pub async fn claim_job(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let sql = format!(
            "UPDATE jobs SET {TAKEOVER}, lease_owner = ?1, lease_token = lease_token + 1,
                    lease_expires_at = unixepoch() + ?2, touched_at = unixepoch()
             WHERE id = ?3 AND state NOT IN ('completed', 'failed', 'cancelled') AND {FREE}
             RETURNING lease_token, takeovers"
        );
        let row: Option<(i64, i64)> = sqlx::query_as(&sql)
            .bind(owner)
            .bind(lease.as_secs() as i64)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|(token, takeovers)| Claim { token, takeovers }))
    }

    /// Claim the oldest unfinished job that nobody holds (or whose lease ran out), nobody asked
    /// to stop, and no process started in the last moments (it is about to claim it itself). A job
    /// silent since before `silent_since` is left to the reaper. Jobs `owner` holds already are not claimed again, so calling this until it
    /// returns `None` takes each free job once.
    pub async fn claim_next(
        &self,
        owner: &str,
        lease: Duration,
        silent_since: i64,
    ) -> Result<Option<(Job, Claim)>, StoreError> {
        let sql = format!(
            "UPDATE jobs SET {TAKEOVER}, lease_owner = ?1, lease_token = lease_token + 1,
                    lease_expires_at = unixepoch() + ?2, touched_at = unixepoch()
             WHERE id = (SELECT id FROM jobs
                         WHERE state NOT IN ('completed', 'failed', 'cancelled') AND cancel_requested_at IS NULL
                           AND (lease_owner IS NULL OR lease_expires_at < unixepoch())
                           AND touched_at < unixepoch() - {JUST_STARTED_SECS} AND touched_at >= ?3
                         ORDER BY created_at LIMIT 1)
             RETURNING *"
        );
        let row: Option<JobRow> = sqlx::query_as(&sql)
            .bind(owner)
            .bind(lease.as_secs() as i64)
            .bind(silent_since)
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(row) => {
                let claim = Claim { token: row.lease_token, takeovers: row.takeovers };
                Ok(Some((Job::try_from(row)?, claim)))
            }
            None => Ok(None),
        }
    }

    /// Extend a held lease (and record a sign of life).
    pub async fn renew_lease(
        &self,
        id: &str,
        owner: &str,
        token: i64,
        lease: Duration,
    ) -> Result<Renewal, StoreError> {
        let found: Option<Option<i64>> = sqlx::query_scalar(
            "UPDATE jobs SET lease_expires_at = unixepoch() + ?, touched_at = unixepoch()
             WHERE id = ? AND lease_owner = ? AND lease_token = ?
             RETURNING cancel_requested_at",
        )
        .bind(lease.as_secs() as i64)
        .bind(id)
        .bind(owner)
        .bind(token)
        .fetch_optional(self.pool())
        .await?;
        Ok(match found {
            None => Renewal::Lost,
            Some(Some(_)) => Renewal::CancelRequested,
            Some(None) => Renewal::Held,
        })
    }

    /// Give a lease up (the job ended here, or this process stops), so another may claim it at once.
    pub async fn release_lease(&self, id: &str, owner: &str, token: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL
             WHERE id = ? AND lease_owner = ? AND lease_token = ?",
        )
        .bind(id)
        .bind(owner)
        .bind(token)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Whether a process other than `me` holds a live lease on the job or one of its pending
    /// files (it may still write them).
    pub async fn held_by_others(&self, id: &str, me: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1 AND lease_owner <> ?2 AND lease_expires_at >= unixepoch())
                 OR EXISTS (SELECT 1 FROM job_files WHERE job_id = ?1 AND state = 'pending'
                            AND lease_owner <> ?2 AND lease_expires_at >= unixepoch())",
        )
        .bind(id)
        .bind(me)
        .fetch_one(self.pool())
        .await?
            != 0)
    }

    /// Who holds a live lease on the job, if anyone.
    pub async fn lease_holder(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar::<_, Option<String>>(
            "SELECT lease_owner FROM jobs WHERE id = ? AND lease_expires_at >= unixepoch()",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .flatten())
    }

    /// Ask whoever runs an unfinished job to stop it; false if it had finished (or is gone).
    pub async fn request_cancel(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE jobs SET cancel_requested_at = unixepoch()
             WHERE id = ? AND state NOT IN ('completed', 'failed', 'cancelled') AND cancel_requested_at IS NULL",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
