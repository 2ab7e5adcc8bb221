//! Who downloads a file: a lease on its row, like a job's (`leases`), so the files of one job can
//! be spread over several processes. The job's owner claims each file it starts and renews them
//! all with its job heartbeat; another process with a free download slot may take a file nobody
//! holds yet of a job a live process runs (`claim_next_file`), and renews that one itself. A
//! file's end and its checkpoints are fenced by its token; reclaims after a lapse are counted.
use std::time::Duration;

use super::{jobs::FileRow, leases::Claim, Store, StoreError};
use crate::domain::JobFile;

/// A claim counts as a takeover when the lease it replaces was another's (and so had lapsed).
const TAKEOVER: &str =
    "takeovers = takeovers + CASE WHEN lease_owner IS NOT NULL AND lease_owner <> ?1 THEN 1 ELSE 0 END";

/// Files listed this recently are their job owner's to start: only what it has no slot for
/// after that is spread.
pub(super) const HELP_AFTER_SECS: i64 = 2;

impl Store {
    /// Claim a pending file for `owner`: `None` while another process holds it.
    pub async fn claim_file(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let sql = format!(
            "UPDATE job_files SET {TAKEOVER}, lease_owner = ?1, lease_token = lease_token + 1,
                    lease_expires_at = unixepoch() + ?2
             WHERE job_id = ?3 AND idx = ?4 AND state = 'pending'
               AND (lease_owner IS NULL OR lease_owner = ?1 OR lease_expires_at < unixepoch())
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

    /// Claim the first pending file nobody holds of an importing job that another live process
    /// runs (and nobody asked to stop), listed a while ago (its owner had no slot for it).
    pub async fn claim_next_file(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<(JobFile, Claim)>, StoreError> {
        let sql = format!(
            "UPDATE job_files SET {TAKEOVER}, lease_owner = ?1, lease_token = lease_token + 1,
                    lease_expires_at = unixepoch() + ?2
             WHERE (job_id, idx) = (
                 SELECT f.job_id, f.idx FROM job_files f JOIN jobs j ON j.id = f.job_id
                   JOIN job_manifests m ON m.job_id = f.job_id AND m.idx = f.manifest_idx
                 WHERE f.state = 'pending' AND (f.lease_owner IS NULL OR f.lease_expires_at < unixepoch())
                   AND j.state = 'importing' AND j.cancel_requested_at IS NULL
                   AND j.lease_owner <> ?1 AND j.lease_expires_at >= unixepoch()
                   AND m.added_at < unixepoch() - {HELP_AFTER_SECS}
                 ORDER BY j.created_at, f.idx LIMIT 1)
             RETURNING job_id, idx, lease_token, takeovers"
        );
        let row: Option<(String, i64, i64, i64)> =
            sqlx::query_as(&sql).bind(owner).bind(lease.as_secs() as i64).fetch_optional(self.pool()).await?;
        let Some((job_id, idx, token, takeovers)) = row else { return Ok(None) };
        let file: FileRow = sqlx::query_as("SELECT * FROM job_files WHERE job_id = ? AND idx = ?")
            .bind(&job_id)
            .bind(idx)
            .fetch_one(self.pool())
            .await?;
        Ok(Some((JobFile::from(file), Claim { token, takeovers })))
    }

    /// Extend every pending file of a job that `owner` holds (the job owner's heartbeat).
    pub async fn renew_file_leases(
        &self,
        job_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE job_files SET lease_expires_at = unixepoch() + ?
             WHERE job_id = ? AND lease_owner = ? AND state = 'pending'",
        )
        .bind(lease.as_secs() as i64)
        .bind(job_id)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Extend one held file lease; false when it was lost, the file ended, or its job is no
    /// longer importing or was asked to stop: the download stops.
    pub async fn renew_file_lease(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        token: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE job_files SET lease_expires_at = unixepoch() + ?1
             WHERE job_id = ?2 AND idx = ?3 AND lease_owner = ?4 AND lease_token = ?5 AND state = 'pending'
               AND EXISTS (SELECT 1 FROM jobs WHERE id = ?2 AND state = 'importing' AND cancel_requested_at IS NULL)",
        )
        .bind(lease.as_secs() as i64)
        .bind(job_id)
        .bind(idx)
        .bind(owner)
        .bind(token)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Give a file lease up, so another may claim the file at once.
    pub async fn release_file_lease(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        token: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE job_files SET lease_owner = NULL, lease_expires_at = NULL
             WHERE job_id = ? AND idx = ? AND lease_owner = ? AND lease_token = ?",
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
