//! Jobs, their plans (manifests and files) and per-file results in PostgreSQL; the same meanings
//! as SQLite's (`store::jobs`), in PostgreSQL's SQL.
use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;

use super::{PgStore, NOW};
use crate::{
    domain::{
        Admission, Appended, FileCounts, FileTotals, FinishedFile, Job, JobCaps, JobFile, JobState,
        PlanManifest,
    },
    store::{
        dashboard::{JobSummary, DASHBOARD_MAX_JOBS},
        job_pages::{ManifestFiles, TypeTotals},
        job_store::JobStore,
        jobs::{FileRow, JobRow},
        leases::{Claim, Renewal},
        live_progress::LiveCounters,
        StoreError,
    },
};

const UNFINISHED: &str = "state NOT IN ('completed', 'failed', 'cancelled')";

const SUMMARY_SELECT: &str = "
    SELECT j.id, j.client_id, p.aud AS provider_aud, p.name AS provider_name, j.export_type, j.export_url, j.state,
           j.progress, j.failure, j.created_at, j.completed_at,
           COUNT(f.idx) AS files_total,
           COUNT(f.idx) FILTER (WHERE f.state <> 'pending') AS files_finished,
           COUNT(f.idx) FILTER (WHERE f.state = 'failed') AS files_failed,
           COALESCE(SUM(f.bytes), 0)::BIGINT AS bytes,
           COALESCE(SUM(f.resources), 0)::BIGINT AS resources,
           COALESCE(SUM(f.provider_errors), 0)::BIGINT AS provider_errors,
           CAST(COALESCE(SUM(CASE WHEN f.kind = 'output' THEN f.expected_resources END), 0) AS BIGINT) AS expected_resources,
           COUNT(CASE WHEN f.kind = 'output' AND f.expected_resources IS NULL THEN 1 END) AS unannounced,
           (SELECT l.bytes FROM job_live l WHERE l.job_id = j.id) AS live_bytes,
           (SELECT l.resources FROM job_live l WHERE l.job_id = j.id) AS live_resources
    FROM jobs j
    LEFT JOIN providers p ON p.client_id = j.client_id
    LEFT JOIN job_files f ON f.job_id = j.id AND f.state <> 'withdrawn'";

#[async_trait]
impl JobStore for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    async fn insert_job_if_room(&self, job: &Job, caps: JobCaps) -> Result<Admission, StoreError> {
        let mut tx = self.pool().begin().await?;
        // One admission at a time, so a burst of pings on several replicas cannot overshoot.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('bulk-import admission'))")
            .execute(&mut *tx)
            .await?;
        let (all, theirs): (i64, i64) = sqlx::query_as(&format!(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE client_id = $1) FROM jobs WHERE {UNFINISHED}"
        ))
        .bind(&job.client_id)
        .fetch_one(&mut *tx)
        .await?;
        if theirs >= caps.per_provider {
            return Ok(Admission::ProviderFull);
        }
        if all >= caps.all {
            return Ok(Admission::Full);
        }
        sqlx::query(
            "INSERT INTO jobs (id, client_id, export_type, export_url, kickoff, state, created_at, touched_at, plan_open)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
        )
        .bind(&job.id)
        .bind(&job.client_id)
        .bind(job.export_type.as_str())
        .bind(&job.export_url)
        .bind(serde_json::to_string(&job.kickoff)?)
        .bind(job.state.as_str())
        .bind(job.created_at)
        .bind(job.plan_open)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Admission::Admitted)
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        sqlx::query_as::<_, JobRow>("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .map(Job::try_from)
            .transpose()
    }

    async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        sqlx::query_as::<_, JobRow>(&format!("SELECT * FROM jobs WHERE {UNFINISHED} ORDER BY created_at"))
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .map(Job::try_from)
            .collect()
    }

    async fn expired_jobs(&self, finished_before: i64, silent_since: i64) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs
             WHERE (completed_at IS NOT NULL AND completed_at < $1)
                OR (completed_at IS NULL AND GREATEST(created_at, touched_at) < $2)",
        )
        .bind(finished_before)
        .bind(silent_since)
        .fetch_all(self.pool())
        .await?)
    }

    /// The database's clock, as claims and renewals read it (replicas' clocks may differ).
    async fn touch(&self, id: &str, _now: i64) -> Result<(), StoreError> {
        sqlx::query(&format!("UPDATE jobs SET touched_at = {NOW} WHERE id = $1"))
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn file_totals(&self, job_id: &str) -> Result<FileTotals, StoreError> {
        Ok(sqlx::query_as(
            "SELECT COUNT(*) AS files, COUNT(*) FILTER (WHERE state = 'failed') AS failed,
                    COALESCE(SUM(resources), 0)::BIGINT AS resources, COUNT(outcome) AS outcomes,
                    COALESCE(SUM(provider_errors), 0)::BIGINT AS provider_errors
             FROM job_files WHERE job_id = $1 AND state <> 'withdrawn'",
        )
        .bind(job_id)
        .fetch_one(self.pool())
        .await?)
    }

    async fn file_outcomes(&self, job_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT outcome FROM job_files WHERE job_id = $1 AND outcome IS NOT NULL AND state <> 'withdrawn' ORDER BY idx",
        )
        .bind(job_id)
        .fetch_all(self.pool())
        .await?)
    }

    async fn set_status_url(&self, id: &str, url: &str) -> Result<(), StoreError> {
        self.set_column(id, "status_url = $1, state = 'exporting'", url).await
    }

    async fn mark_kickoff_started(&self, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET kickoff_started_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn set_transaction_time(&self, id: &str, at: &str) -> Result<(), StoreError> {
        self.set_column(id, "transaction_time = $1", at).await
    }

    async fn transaction_time(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT transaction_time FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .flatten())
    }

    async fn set_notice(&self, id: &str, text: &str) -> Result<(), StoreError> {
        self.set_column(id, "notice = $1", text).await
    }

    async fn notice(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT notice FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .flatten())
    }

    async fn kickoff_started(&self, id: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT kickoff_started_at FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .flatten())
    }

    async fn set_state(&self, id: &str, state: JobState) -> Result<(), StoreError> {
        self.set_column(id, "state = $1", state.as_str()).await
    }

    async fn set_progress(&self, id: &str, progress: &str) -> Result<(), StoreError> {
        self.set_column(id, "progress = $1", progress).await
    }

    async fn set_throughput(&self, id: &str, series: &str) -> Result<(), StoreError> {
        self.set_column(id, "throughput = $1", series).await
    }

    async fn throughput(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar::<_, Option<String>>("SELECT throughput FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .flatten())
    }

    async fn append_manifest(
        &self,
        job_id: &str,
        url: &str,
        files: &[JobFile],
        close: bool,
        now: i64,
    ) -> Result<Appended, StoreError> {
        let mut tx = self.pool().begin().await?;
        // The job's row locked first, so the checks below hold until the commit.
        let open: Option<bool> = sqlx::query_scalar(&format!(
            "SELECT plan_open FROM jobs WHERE id = $1 AND {UNFINISHED} FOR UPDATE"
        ))
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        if open != Some(true) {
            return Ok(Appended::Closed);
        }
        let duplicate: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM job_manifests WHERE job_id = $1 AND url = $2 AND NOT withdrawn)",
        )
        .bind(job_id)
        .bind(url)
        .fetch_one(&mut *tx)
        .await?;
        if duplicate {
            return Ok(Appended::Duplicate);
        }
        let (next_manifest, next_file): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(idx) + 1, 0) FROM job_manifests WHERE job_id = $1),
                    (SELECT COALESCE(MAX(idx) + 1, 0) FROM job_files WHERE job_id = $1)",
        )
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await?;
        if files.first().is_some_and(|f| f.idx != next_file) {
            return Ok(Appended::Stale);
        }
        sqlx::query("INSERT INTO job_manifests (job_id, idx, url, added_at) VALUES ($1, $2, $3, $4)")
            .bind(job_id)
            .bind(next_manifest)
            .bind(url)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for f in files {
            sqlx::query(
                "INSERT INTO job_files (job_id, idx, manifest_idx, kind, resource_type, url, requires_token, name, state,
                                        expected_resources)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9)",
            )
            .bind(job_id)
            .bind(f.idx)
            .bind(next_manifest)
            .bind(f.kind.as_str())
            .bind(&f.resource_type)
            .bind(&f.url)
            .bind(f.requires_token)
            .bind(&f.name)
            .bind(f.expected_resources)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE jobs SET state = 'importing', plan_open = $1 WHERE id = $2")
            .bind(!close)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Appended::Added(next_manifest))
    }

    async fn withdraw_manifest(&self, job_id: &str, url: &str) -> Result<Option<Vec<JobFile>>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let idx: Option<i64> = sqlx::query_scalar(
            "UPDATE job_manifests SET withdrawn = TRUE WHERE job_id = $1 AND url = $2 AND NOT withdrawn RETURNING idx",
        )
        .bind(job_id)
        .bind(url)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(idx) = idx else { return Ok(None) };
        let files: Vec<JobFile> = sqlx::query_as::<_, FileRow>(
            "SELECT * FROM job_files WHERE job_id = $1 AND manifest_idx = $2 ORDER BY idx",
        )
        .bind(job_id)
        .bind(idx)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(JobFile::from)
        .collect();
        sqlx::query("UPDATE job_files SET state = 'withdrawn' WHERE job_id = $1 AND manifest_idx = $2")
            .bind(job_id)
            .bind(idx)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(files))
    }

    async fn manifests(&self, job_id: &str) -> Result<Vec<PlanManifest>, StoreError> {
        let rows: Vec<(i64, String, bool, i64)> = sqlx::query_as(
            "SELECT idx, url, withdrawn, added_at FROM job_manifests WHERE job_id = $1 ORDER BY idx",
        )
        .bind(job_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(idx, url, withdrawn, added_at)| PlanManifest { idx, url, withdrawn, added_at })
            .collect())
    }

    async fn close_plan(&self, job_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE jobs SET plan_open = FALSE WHERE id = $1 AND plan_open")
            .bind(job_id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn files(&self, job_id: &str) -> Result<Vec<JobFile>, StoreError> {
        Ok(sqlx::query_as::<_, FileRow>("SELECT * FROM job_files WHERE job_id = $1 ORDER BY idx")
            .bind(job_id)
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .map(JobFile::from)
            .collect())
    }

    async fn type_counts(&self, job_id: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(
            "SELECT resource_type, resources, type_counts FROM job_files
             WHERE job_id = $1 AND kind = 'output' AND state = 'done'",
        )
        .bind(job_id)
        .fetch_all(self.pool())
        .await?;
        crate::store::jobs::sum_type_counts(rows)
    }

    async fn file_counts(&self, job_id: &str) -> Result<FileCounts, StoreError> {
        let (total, finished): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE state <> 'pending') FROM job_files
             WHERE job_id = $1 AND state <> 'withdrawn'",
        )
        .bind(job_id)
        .fetch_one(self.pool())
        .await?;
        Ok(FileCounts { total, finished })
    }

    async fn finish_file(
        &self,
        job_id: &str,
        idx: i64,
        done: &FinishedFile<'_>,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE job_files SET state = $1, resources = $2, bytes = $3, outcome = $4, provider_errors = $5,
                    type_counts = $6, checkpoint = NULL
             WHERE job_id = $7 AND idx = $8 AND state = 'pending'
               AND ($9::BIGINT IS NULL OR lease_token = $9)",
        )
        .bind(done.state.as_str())
        .bind(done.resources)
        .bind(done.bytes)
        .bind(done.outcome)
        .bind(done.provider_errors)
        .bind(done.type_counts)
        .bind(job_id)
        .bind(idx)
        .bind(fence)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn file_checkpoint(&self, job_id: &str, idx: i64) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT checkpoint FROM job_files WHERE job_id = $1 AND idx = $2 AND state = 'pending'",
        )
        .bind(job_id)
        .bind(idx)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.and_then(|(c,)| c))
    }

    async fn save_checkpoint(
        &self,
        job_id: &str,
        idx: i64,
        checkpoint: Option<&str>,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE job_files SET checkpoint = $1
             WHERE job_id = $2 AND idx = $3 AND state = 'pending'
               AND ($4::BIGINT IS NULL OR lease_token = $4)",
        )
        .bind(checkpoint)
        .bind(job_id)
        .bind(idx)
        .bind(fence)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn complete_job(&self, id: &str, now: i64, fence: Option<i64>) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "UPDATE jobs SET state = 'completed', completed_at = $1
             WHERE id = $2 AND NOT plan_open AND {UNFINISHED} AND ($3::BIGINT IS NULL OR lease_token = $3)
               AND NOT EXISTS (SELECT 1 FROM job_files WHERE job_id = jobs.id AND state = 'pending')"
        ))
        .bind(now)
        .bind(id)
        .bind(fence)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn restate_done_files(&self, job_id: &str, outcomes: &[(i64, String)]) -> Result<(), StoreError> {
        PgStore::restate_done_files(self, job_id, outcomes).await
    }

    async fn fail_pending_files(&self, job_id: &str, outcomes: &[(i64, String)]) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for (idx, outcome) in outcomes {
            sqlx::query(
                "UPDATE job_files SET state = 'failed', outcome = $1 WHERE job_id = $2 AND idx = $3 AND state = 'pending'",
            )
            .bind(outcome)
            .bind(job_id)
            .bind(idx)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn fail_job(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "UPDATE jobs SET state = 'failed', failure = $1, completed_at = $2
             WHERE id = $3 AND {UNFINISHED} AND ($4::BIGINT IS NULL OR lease_token = $4)"
        ))
        .bind(reason)
        .bind(now)
        .bind(id)
        .bind(fence)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_job(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM jobs WHERE id = $1").bind(id).execute(self.pool()).await?;
        Ok(r.rows_affected() == 1)
    }

    async fn cancel_job(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "UPDATE jobs SET state = 'cancelled', completed_at = $1 WHERE id = $2 AND {UNFINISHED}"
        ))
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn claim_job(&self, id: &str, owner: &str, lease: Duration) -> Result<Option<Claim>, StoreError> {
        PgStore::claim_job(self, id, owner, lease).await
    }

    async fn claim_next(
        &self,
        owner: &str,
        lease: Duration,
        silent_since: i64,
    ) -> Result<Option<(Job, Claim)>, StoreError> {
        PgStore::claim_next(self, owner, lease, silent_since).await
    }

    async fn renew_lease(
        &self,
        id: &str,
        owner: &str,
        token: i64,
        lease: Duration,
    ) -> Result<Renewal, StoreError> {
        PgStore::renew_lease(self, id, owner, token, lease).await
    }

    async fn release_lease(&self, id: &str, owner: &str, token: i64) -> Result<bool, StoreError> {
        PgStore::release_lease(self, id, owner, token).await
    }

    async fn lease_holder(&self, id: &str) -> Result<Option<String>, StoreError> {
        PgStore::lease_holder(self, id).await
    }
    async fn held_by_others(&self, id: &str, me: &str) -> Result<bool, StoreError> {
        PgStore::held_by_others(self, id, me).await
    }
    async fn claim_file(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        PgStore::claim_file(self, job_id, idx, owner, lease).await
    }
    async fn claim_next_file(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<(JobFile, Claim)>, StoreError> {
        PgStore::claim_next_file(self, owner, lease).await
    }
    async fn renew_file_leases(&self, job_id: &str, owner: &str, lease: Duration) -> Result<(), StoreError> {
        PgStore::renew_file_leases(self, job_id, owner, lease).await
    }
    async fn renew_file_lease(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        token: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        PgStore::renew_file_lease(self, job_id, idx, owner, token, lease).await
    }
    async fn release_file_lease(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        token: i64,
    ) -> Result<bool, StoreError> {
        PgStore::release_file_lease(self, job_id, idx, owner, token).await
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "UPDATE jobs SET cancel_requested_at = {NOW} WHERE id = $1 AND {UNFINISHED} AND cancel_requested_at IS NULL"
        ))
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn job_summaries(&self) -> Result<Vec<JobSummary>, StoreError> {
        let sql = format!(
            "{SUMMARY_SELECT} GROUP BY j.id, p.aud, p.name ORDER BY j.created_at DESC, j.id LIMIT $1"
        );
        Ok(sqlx::query_as::<_, JobSummary>(&sql).bind(DASHBOARD_MAX_JOBS).fetch_all(self.pool()).await?)
    }

    async fn job_state_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")
            .fetch_all(self.pool())
            .await?)
    }

    async fn job_summary(&self, id: &str) -> Result<Option<JobSummary>, StoreError> {
        let sql = format!("{SUMMARY_SELECT} WHERE j.id = $1 GROUP BY j.id, p.aud, p.name");
        Ok(sqlx::query_as::<_, JobSummary>(&sql).bind(id).fetch_optional(self.pool()).await?)
    }

    async fn files_page(&self, job_id: &str, offset: i64, limit: i64) -> Result<Vec<JobFile>, StoreError> {
        PgStore::files_page(self, job_id, offset, limit).await
    }

    async fn type_totals(
        &self,
        job_id: &str,
    ) -> Result<(Vec<TypeTotals>, BTreeMap<String, i64>), StoreError> {
        PgStore::type_totals(self, job_id).await
    }

    async fn manifest_files(&self, job_id: &str) -> Result<Vec<ManifestFiles>, StoreError> {
        PgStore::manifest_files(self, job_id).await
    }

    async fn publish_live(&self, job_id: &str, live: &LiveCounters) -> Result<(), StoreError> {
        PgStore::publish_live(self, job_id, live).await
    }

    async fn live(&self, job_id: &str) -> Result<Option<LiveCounters>, StoreError> {
        PgStore::live(self, job_id).await
    }

    async fn clear_live(&self, job_id: &str) -> Result<(), StoreError> {
        PgStore::clear_live(self, job_id).await
    }
}

impl PgStore {
    /// Set one column (or a few, from one value) of a job.
    async fn set_column(&self, id: &str, assignment: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(&format!("UPDATE jobs SET {assignment} WHERE id = $2"))
            .bind(value)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
