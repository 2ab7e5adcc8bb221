//! Jobs, their plans (manifests and files), per-file results and leases, in SQLite.
use super::{Store, StoreError};
use crate::{
    domain::{
        Admission, Appended, FileCounts, FileState, FileTotals, FinishedFile, Job, JobCaps, JobFile,
        JobState, PlanManifest,
    },
    fhir::manifest::FileKind,
};

#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct JobRow {
    id: String,
    client_id: String,
    export_type: String,
    export_url: String,
    kickoff: String,
    state: String,
    status_url: Option<String>,
    progress: Option<String>,
    failure: Option<String>,
    created_at: i64,
    completed_at: Option<i64>,
    plan_open: bool,
    pub(super) lease_token: i64,
    pub(super) takeovers: i64,
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;
    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        use crate::fhir::parameters::ExportType;
        Ok(Job {
            export_type: ExportType::parse(&r.export_type),
            kickoff: serde_json::from_str(&r.kickoff)?,
            state: JobState::parse(&r.state),
            id: r.id,
            client_id: r.client_id,
            export_url: r.export_url,
            status_url: r.status_url,
            progress: r.progress,
            failure: r.failure,
            created_at: r.created_at,
            completed_at: r.completed_at,
            plan_open: r.plan_open,
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct FileRow {
    job_id: String,
    idx: i64,
    manifest_idx: i64,
    kind: String,
    resource_type: String,
    url: String,
    requires_token: bool,
    name: String,
    state: String,
    resources: i64,
    bytes: i64,
    outcome: Option<String>,
    provider_errors: i64,
    type_counts: Option<String>,
    expected_resources: Option<i64>,
    /// The file's lease (`file_leases`).
    pub(super) lease_token: i64,
    pub(super) takeovers: i64,
}

impl From<FileRow> for JobFile {
    fn from(r: FileRow) -> Self {
        JobFile {
            job_id: r.job_id,
            idx: r.idx,
            manifest_idx: r.manifest_idx,
            kind: FileKind::parse(&r.kind),
            resource_type: r.resource_type,
            url: r.url,
            requires_token: r.requires_token,
            name: r.name,
            state: FileState::parse(&r.state),
            resources: r.resources,
            bytes: r.bytes,
            outcome: r.outcome,
            provider_errors: r.provider_errors,
            type_counts: r.type_counts,
            expected_resources: r.expected_resources,
        }
    }
}

/// Resources per type over files given as (type, resources, per-type counts as JSON): a file
/// whose manifest entry named no type carries its own counts.
pub(super) fn sum_type_counts(
    rows: Vec<(String, i64, Option<String>)>,
) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
    let mut out = std::collections::BTreeMap::new();
    for (resource_type, resources, by_type) in rows {
        match by_type {
            Some(json) => {
                let counts: std::collections::BTreeMap<String, i64> = serde_json::from_str(&json)?;
                for (t, n) in counts {
                    *out.entry(t).or_default() += n;
                }
            }
            None => *out.entry(resource_type).or_default() += resources,
        }
    }
    Ok(out)
}

impl Store {
    /// Insert a job unless `caps` are reached: unfinished jobs in all, and of the job's provider.
    /// One statement, so a burst of pings cannot overshoot the limit.
    pub async fn insert_job_if_room(&self, job: &Job, caps: JobCaps) -> Result<Admission, StoreError> {
        let r = sqlx::query(
            "INSERT INTO jobs (id, client_id, export_type, export_url, kickoff, state, created_at, touched_at, plan_open)
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?
             WHERE (SELECT COUNT(*) FROM jobs WHERE state NOT IN ('completed', 'failed', 'cancelled')) < ?
               AND (SELECT COUNT(*) FROM jobs WHERE client_id = ? AND state NOT IN ('completed', 'failed', 'cancelled')) < ?",
        )
        .bind(&job.id)
        .bind(&job.client_id)
        .bind(job.export_type.as_str())
        .bind(&job.export_url)
        .bind(serde_json::to_string(&job.kickoff)?)
        .bind(job.state.as_str())
        .bind(job.created_at)
        .bind(job.created_at)
        .bind(job.plan_open)
        .bind(caps.all)
        .bind(&job.client_id)
        .bind(caps.per_provider)
        .execute(self.pool())
        .await?;
        if r.rows_affected() == 1 {
            return Ok(Admission::Admitted);
        }
        let theirs: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE client_id = ? AND state NOT IN ('completed', 'failed', 'cancelled')",
        )
        .bind(&job.client_id)
        .fetch_one(self.pool())
        .await?;
        Ok(if theirs >= caps.per_provider { Admission::ProviderFull } else { Admission::Full })
    }

    pub async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        sqlx::query_as::<_, JobRow>("SELECT * FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .map(Job::try_from)
            .transpose()
    }

    /// Jobs that were running when the process stopped.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        sqlx::query_as::<_, JobRow>(
            "SELECT * FROM jobs WHERE state NOT IN ('completed', 'failed', 'cancelled') ORDER BY created_at",
        )
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(Job::try_from)
        .collect()
    }

    /// Ids of jobs finished before `finished_before`, and of unfinished ones with no sign of life
    /// since `silent_since`.
    pub async fn expired_jobs(
        &self,
        finished_before: i64,
        silent_since: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs
             WHERE (completed_at IS NOT NULL AND completed_at < ?)
                OR (completed_at IS NULL AND MAX(created_at, touched_at) < ?)",
        )
        .bind(finished_before)
        .bind(silent_since)
        .fetch_all(self.pool())
        .await?)
    }

    /// Record a sign of life of a running job.
    pub async fn touch(&self, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET touched_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Totals over a job's files, in one query (status polls of a finished job use it).
    pub async fn file_totals(&self, job_id: &str) -> Result<FileTotals, StoreError> {
        Ok(sqlx::query_as(
            "SELECT COUNT(*) AS files, COALESCE(SUM(state = 'failed'), 0) AS failed,
                    COALESCE(SUM(resources), 0) AS resources, COUNT(outcome) AS outcomes,
                    COALESCE(SUM(provider_errors), 0) AS provider_errors
             FROM job_files WHERE job_id = ? AND state != 'withdrawn'",
        )
        .bind(job_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Outcome lines of finished files, in manifest order.
    pub async fn file_outcomes(&self, job_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT outcome FROM job_files WHERE job_id = ? AND outcome IS NOT NULL AND state != 'withdrawn' ORDER BY idx",
        )
        .bind(job_id)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn set_status_url(&self, id: &str, url: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET status_url = ?, state = 'exporting' WHERE id = ?")
            .bind(url)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Record that a kick-off is about to be sent.
    pub async fn mark_kickoff_started(&self, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET kickoff_started_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The `transactionTime` of the job's export, as its manifest gave it.
    pub async fn set_transaction_time(&self, id: &str, at: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET transaction_time = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn transaction_time(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT transaction_time FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .flatten())
    }

    /// What became of the job's notice (`NOTIFY_URL`).
    pub async fn set_notice(&self, id: &str, text: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET notice = ? WHERE id = ?")
            .bind(text)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn notice(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT notice FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .flatten())
    }

    /// When the job last started a kick-off, if ever.
    pub async fn kickoff_started(&self, id: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT kickoff_started_at FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .flatten())
    }

    pub async fn set_state(&self, id: &str, state: JobState) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET state = ? WHERE id = ?")
            .bind(state.as_str())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn set_progress(&self, id: &str, progress: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET progress = ? WHERE id = ?")
            .bind(progress)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn set_throughput(&self, id: &str, series: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET throughput = ? WHERE id = ?")
            .bind(series)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn throughput(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar::<_, Option<String>>("SELECT throughput FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .flatten())
    }

    /// Add a manifest and its files to a job's plan, atomically (a restart never sees half of
    /// one), and move the job to `importing`; `close` closes the plan with it. The files' `idx`
    /// must continue the plan (start at its file count), else the plan changed since it was read.
    pub async fn append_manifest(
        &self,
        job_id: &str,
        url: &str,
        files: &[JobFile],
        close: bool,
        now: i64,
    ) -> Result<Appended, StoreError> {
        let mut tx = self.pool().begin().await?;
        // Taking the write lock first, so the checks below hold until the commit.
        sqlx::query("UPDATE jobs SET touched_at = touched_at WHERE id = ?")
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        let open: Option<bool> = sqlx::query_scalar(
            "SELECT plan_open FROM jobs WHERE id = ? AND state NOT IN ('completed', 'failed', 'cancelled')",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        if open != Some(true) {
            return Ok(Appended::Closed);
        }
        let duplicate: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM job_manifests WHERE job_id = ? AND url = ? AND withdrawn = 0)",
        )
        .bind(job_id)
        .bind(url)
        .fetch_one(&mut *tx)
        .await?;
        if duplicate {
            return Ok(Appended::Duplicate);
        }
        let (next_manifest, next_file): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(idx) + 1, 0) FROM job_manifests WHERE job_id = ?1),
                    (SELECT COALESCE(MAX(idx) + 1, 0) FROM job_files WHERE job_id = ?1)",
        )
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await?;
        if files.first().is_some_and(|f| f.idx != next_file) {
            return Ok(Appended::Stale);
        }
        sqlx::query("INSERT INTO job_manifests (job_id, idx, url, added_at) VALUES (?, ?, ?, ?)")
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
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
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
        sqlx::query("UPDATE jobs SET state = 'importing', plan_open = ? WHERE id = ?")
            .bind(!close)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Appended::Added(next_manifest))
    }

    /// Withdraw a manifest of the plan: it and its files are marked withdrawn. Returns its files
    /// as they were (the done ones have data to remove), or `None` if the plan holds no such
    /// manifest (or it was withdrawn already).
    pub async fn withdraw_manifest(
        &self,
        job_id: &str,
        url: &str,
    ) -> Result<Option<Vec<JobFile>>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let idx: Option<i64> = sqlx::query_scalar(
            "UPDATE job_manifests SET withdrawn = 1 WHERE job_id = ? AND url = ? AND withdrawn = 0 RETURNING idx",
        )
        .bind(job_id)
        .bind(url)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(idx) = idx else { return Ok(None) };
        let files: Vec<JobFile> = sqlx::query_as::<_, FileRow>(
            "SELECT * FROM job_files WHERE job_id = ? AND manifest_idx = ? ORDER BY idx",
        )
        .bind(job_id)
        .bind(idx)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(JobFile::from)
        .collect();
        sqlx::query("UPDATE job_files SET state = 'withdrawn' WHERE job_id = ? AND manifest_idx = ?")
            .bind(job_id)
            .bind(idx)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(files))
    }

    /// The manifests of a job's plan, in the order they were added.
    pub async fn manifests(&self, job_id: &str) -> Result<Vec<PlanManifest>, StoreError> {
        let rows: Vec<(i64, String, bool, i64)> = sqlx::query_as(
            "SELECT idx, url, withdrawn, added_at FROM job_manifests WHERE job_id = ? ORDER BY idx",
        )
        .bind(job_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(idx, url, withdrawn, added_at)| PlanManifest { idx, url, withdrawn, added_at })
            .collect())
    }

    /// Close a job's plan: no manifest is added after this. False when it was closed already.
    pub async fn close_plan(&self, job_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE jobs SET plan_open = 0 WHERE id = ? AND plan_open = 1")
            .bind(job_id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn files(&self, job_id: &str) -> Result<Vec<JobFile>, StoreError> {
        Ok(sqlx::query_as::<_, FileRow>("SELECT * FROM job_files WHERE job_id = ? ORDER BY idx")
            .bind(job_id)
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .map(JobFile::from)
            .collect())
    }

    /// Resources per type over a job's finished data files (typed entries and untyped ones alike).
    pub async fn type_counts(
        &self,
        job_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(
            "SELECT resource_type, resources, type_counts FROM job_files
             WHERE job_id = ? AND kind = 'output' AND state = 'done'",
        )
        .bind(job_id)
        .fetch_all(self.pool())
        .await?;
        sum_type_counts(rows)
    }

    pub async fn file_counts(&self, job_id: &str) -> Result<FileCounts, StoreError> {
        let (total, finished): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(state != 'pending'), 0) FROM job_files WHERE job_id = ? AND state != 'withdrawn'",
        )
        .bind(job_id)
        .fetch_one(self.pool())
        .await?;
        Ok(FileCounts { total, finished })
    }

    /// Record a file's result; false when it is no longer pending (withdrawn meanwhile).
    /// Record a file's end (its durable point goes); false when it was not pending or `fence`
    /// is stale.
    pub async fn finish_file(
        &self,
        job_id: &str,
        idx: i64,
        done: &FinishedFile<'_>,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE job_files SET state = ?1, resources = ?2, bytes = ?3, outcome = ?4, provider_errors = ?5,
                    type_counts = ?6, checkpoint = NULL
             WHERE job_id = ?7 AND idx = ?8 AND state = 'pending'
               AND (?9 IS NULL OR lease_token = ?9)",
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

    /// The durable point a pending file's download reached, if one was kept.
    pub async fn file_checkpoint(&self, job_id: &str, idx: i64) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT checkpoint FROM job_files WHERE job_id = ? AND idx = ? AND state = 'pending'",
        )
        .bind(job_id)
        .bind(idx)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.and_then(|(c,)| c))
    }

    /// Keep (or with `None` forget) a pending file's durable point; false when the file is no
    /// longer pending or `fence` is stale.
    pub async fn save_checkpoint(
        &self,
        job_id: &str,
        idx: i64,
        checkpoint: Option<&str>,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE job_files SET checkpoint = ?1
             WHERE job_id = ?2 AND idx = ?3 AND state = 'pending'
               AND (?4 IS NULL OR lease_token = ?4)",
        )
        .bind(checkpoint)
        .bind(job_id)
        .bind(idx)
        .bind(fence)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Complete a job whose plan is closed and has no file pending; false otherwise (or when
    /// `fence` is not the job's lease token: another process took it over).
    pub async fn complete_job(&self, id: &str, now: i64, fence: Option<i64>) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'completed', completed_at = ?1
             WHERE id = ?2 AND plan_open = 0 AND state NOT IN ('completed', 'failed', 'cancelled')
               AND (?3 IS NULL OR lease_token = ?3)
               AND NOT EXISTS (SELECT 1 FROM job_files WHERE job_id = jobs.id AND state = 'pending')",
        )
        .bind(now)
        .bind(id)
        .bind(fence)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Give every file still pending an outcome (and the failed state), in one transaction.
    pub async fn fail_pending_files(
        &self,
        job_id: &str,
        outcomes: &[(i64, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for (idx, outcome) in outcomes {
            sqlx::query(
                "UPDATE job_files SET state = 'failed', outcome = ? WHERE job_id = ? AND idx = ? AND state = 'pending'",
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

    /// Fail an unfinished job; false when it had finished already (and so stays as it was), or
    /// when `fence` is not the job's lease token.
    pub async fn fail_job(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        // A finished job stays as it finished (a late failure must not undo a completion).
        let r = sqlx::query(
            "UPDATE jobs SET state = 'failed', failure = ?1, completed_at = ?2
             WHERE id = ?3 AND state NOT IN ('completed', 'failed', 'cancelled') AND (?4 IS NULL OR lease_token = ?4)",
        )
        .bind(reason)
        .bind(now)
        .bind(id)
        .bind(fence)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Mark an unfinished job cancelled; false when it had finished already.
    pub async fn cancel_job(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', completed_at = ?
             WHERE id = ? AND state NOT IN ('completed', 'failed', 'cancelled')",
        )
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn delete_job(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM jobs WHERE id = ?").bind(id).execute(self.pool()).await?;
        Ok(r.rows_affected() == 1)
    }
}
