//! Leases in PostgreSQL: the same contract as SQLite's (`store::leases`), claimed with one
//! `UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING`, so replicas claiming
//! at once each get a different job, on the database's clock.
use std::time::Duration;

use super::{PgStore, NOW};
use crate::{
    domain::Job,
    store::{
        jobs::JobRow,
        leases::{Claim, Renewal, JUST_STARTED_SECS},
        StoreError,
    },
};

/// A claim counts as a takeover when the lease it replaces was another's (and so had lapsed).
const TAKEOVER: &str =
    "takeovers = takeovers + CASE WHEN lease_owner IS NOT NULL AND lease_owner <> $1 THEN 1 ELSE 0 END";

impl PgStore {
    /// A plain conditional UPDATE: a claim racing another waits for its row and sees the winner's
    /// lease (PostgreSQL checks the condition again), where SKIP LOCKED would give up.
    pub(super) async fn claim_job(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let sql = format!(
            "UPDATE jobs SET {TAKEOVER}, lease_owner = $1, lease_token = lease_token + 1,
                    lease_expires_at = {NOW} + $2, touched_at = {NOW}
             WHERE id = $3 AND state NOT IN ('completed', 'failed', 'cancelled')
               AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at < {NOW})
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

    pub(super) async fn claim_next(
        &self,
        owner: &str,
        lease: Duration,
        silent_since: i64,
    ) -> Result<Option<(Job, Claim)>, StoreError> {
        let sql = format!(
            "UPDATE jobs SET {TAKEOVER}, lease_owner = $1, lease_token = lease_token + 1,
                    lease_expires_at = {NOW} + $2, touched_at = {NOW}
             WHERE id = (SELECT id FROM jobs
                         WHERE state NOT IN ('completed', 'failed', 'cancelled') AND cancel_requested_at IS NULL
                           AND (lease_owner IS NULL OR lease_expires_at < {NOW})
                           AND touched_at < {NOW} - {JUST_STARTED_SECS} AND touched_at >= $3
                         ORDER BY created_at LIMIT 1
                         FOR UPDATE SKIP LOCKED)
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

    pub(super) async fn renew_lease(
        &self,
        id: &str,
        owner: &str,
        token: i64,
        lease: Duration,
    ) -> Result<Renewal, StoreError> {
        let found: Option<Option<i64>> = sqlx::query_scalar(&format!(
            "UPDATE jobs SET lease_expires_at = {NOW} + $1, touched_at = {NOW}
             WHERE id = $2 AND lease_owner = $3 AND lease_token = $4
             RETURNING cancel_requested_at"
        ))
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

    pub(super) async fn lease_holder(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar::<_, Option<String>>(&format!(
            "SELECT lease_owner FROM jobs WHERE id = $1 AND lease_expires_at >= {NOW}"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .flatten())
    }

    pub(super) async fn held_by_others(&self, id: &str, me: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar::<_, bool>(&format!(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND lease_owner <> $2 AND lease_expires_at >= {NOW})
                 OR EXISTS (SELECT 1 FROM job_files WHERE job_id = $1 AND state = 'pending'
                            AND lease_owner <> $2 AND lease_expires_at >= {NOW})"
        ))
        .bind(id)
        .bind(me)
        .fetch_one(self.pool())
        .await?)
    }

    pub(super) async fn release_lease(&self, id: &str, owner: &str, token: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1 AND lease_owner = $2 AND lease_token = $3",
        )
        .bind(id)
        .bind(owner)
        .bind(token)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
