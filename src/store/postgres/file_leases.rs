//! File leases in PostgreSQL: the same contract as SQLite's (`store::file_leases`); the next free
//! file is claimed with `FOR UPDATE SKIP LOCKED`, on the database's clock.
use std::time::Duration;

use super::{PgStore, NOW};
use crate::{
    domain::JobFile,
    store::{file_leases::HELP_AFTER_SECS, jobs::FileRow, leases::Claim, StoreError},
};

const TAKEOVER: &str =
    "takeovers = takeovers + CASE WHEN lease_owner IS NOT NULL AND lease_owner <> $1 THEN 1 ELSE 0 END";

impl PgStore {
    pub(super) async fn claim_file(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let sql = format!(
            "UPDATE job_files SET {TAKEOVER}, lease_owner = $1, lease_token = lease_token + 1,
                    lease_expires_at = {NOW} + $2
             WHERE job_id = $3 AND idx = $4 AND state = 'pending'
               AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at < {NOW})
             RETURNING lease_token, takeovers"
        );
        let row: Option<(i64, i64)> = sqlx::query_as(&sql)
            .bind(owner)
            .bind(lease.as_secs() as i64)
            .bind(job_id)
            .bind(idx)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|(token, takeovers)| Claim { token, takeovers }))
    }

    pub(super) async fn claim_next_file(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<(JobFile, Claim)>, StoreError> {
        let sql = format!(
            "UPDATE job_files SET {TAKEOVER}, lease_owner = $1, lease_token = lease_token + 1,
                    lease_expires_at = {NOW} + $2
             WHERE (job_id, idx) = (
                 SELECT f.job_id, f.idx FROM job_files f JOIN jobs j ON j.id = f.job_id
                   JOIN job_manifests m ON m.job_id = f.job_id AND m.idx = f.manifest_idx
                 WHERE f.state = 'pending' AND (f.lease_owner IS NULL OR f.lease_expires_at < {NOW})
                   AND j.state = 'importing' AND j.cancel_requested_at IS NULL
                   AND j.lease_owner <> $1 AND j.lease_expires_at >= {NOW}
                   AND m.added_at < {NOW} - {HELP_AFTER_SECS}
                 ORDER BY j.created_at, f.idx LIMIT 1
                 FOR UPDATE OF f SKIP LOCKED)
             RETURNING *"
        );
        let row: Option<FileRow> =
            sqlx::query_as(&sql).bind(owner).bind(lease.as_secs() as i64).fetch_optional(self.pool()).await?;
        Ok(row.map(|row| {
            let claim = Claim { token: row.lease_token, takeovers: row.takeovers };
            (JobFile::from(row), claim)
        }))
    }

    pub(super) async fn renew_file_leases(
        &self,
        job_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE job_files SET lease_expires_at = {NOW} + $1
             WHERE job_id = $2 AND lease_owner = $3 AND state = 'pending'"
        ))
        .bind(lease.as_secs() as i64)
        .bind(job_id)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub(super) async fn renew_file_lease(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        token: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "UPDATE job_files SET lease_expires_at = {NOW} + $1
             WHERE job_id = $2 AND idx = $3 AND lease_owner = $4 AND lease_token = $5 AND state = 'pending'
               AND EXISTS (SELECT 1 FROM jobs WHERE id = $2 AND state = 'importing' AND cancel_requested_at IS NULL)"
        ))
        .bind(lease.as_secs() as i64)
        .bind(job_id)
        .bind(idx)
        .bind(owner)
        .bind(token)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub(super) async fn release_file_lease(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        token: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE job_files SET lease_owner = NULL, lease_expires_at = NULL
             WHERE job_id = $1 AND idx = $2 AND lease_owner = $3 AND lease_token = $4",
        )
        .bind(job_id)
        .bind(idx)
        .bind(owner)
        .bind(token)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
