//! Jobs and their per-file results.
use crate::fhir::{manifest::FileKind, parameters::KickoffParam};

use super::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Accepted, not yet talking to the provider.
    Queued,
    /// Dynamic export kicked off (or about to be); polling the provider.
    Exporting,
    /// Manifest stored; files are being imported.
    Importing,
    Completed,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Exporting => "exporting",
            JobState::Importing => "importing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "exporting" => JobState::Exporting,
            "importing" => JobState::Importing,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            _ => JobState::Queued,
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct JobRow {
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
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub client_id: String,
    pub export_type: crate::fhir::parameters::ExportType,
    pub export_url: String,
    pub kickoff: Vec<KickoffParam>,
    pub state: JobState,
    pub status_url: Option<String>,
    /// The provider's last `X-Progress`, for people.
    pub progress: Option<String>,
    /// Why the job failed, for people.
    pub failure: Option<String>,
    pub created_at: i64,
    pub completed_at: Option<i64>,
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;
    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        use crate::fhir::parameters::ExportType;
        Ok(Job {
            export_type: if r.export_type == "static" { ExportType::Static } else { ExportType::Dynamic },
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
        })
    }
}

/// Whether `id` can be a job id (hex, as `$import` makes them with `random_hex`), checked before any query.
pub fn is_job_id(id: &str) -> bool {
    id.len() <= 128 && id.chars().all(|c| c.is_ascii_hexdigit())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Pending,
    Done,
    Failed,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Pending => "pending",
            FileState::Done => "done",
            FileState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct FileRow {
    job_id: String,
    idx: i64,
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
}

#[derive(Debug, Clone)]
pub struct JobFile {
    pub job_id: String,
    pub idx: i64,
    pub kind: FileKind,
    pub resource_type: String,
    pub url: String,
    /// Whether the manifest page listing this file said `requiresAccessToken: true`.
    pub requires_token: bool,
    /// Name at the destination.
    pub name: String,
    pub state: FileState,
    pub resources: i64,
    pub bytes: i64,
    /// The OperationOutcome line for this file, once it is done or failed.
    pub outcome: Option<String>,
    /// Error issues the provider reported in this file (an `error[]` file).
    pub provider_errors: i64,
    /// JSON object of resources per type, for an untyped (`organizeOutputBy`) file.
    pub type_counts: Option<String>,
}

impl From<FileRow> for JobFile {
    fn from(r: FileRow) -> Self {
        JobFile {
            job_id: r.job_id,
            idx: r.idx,
            kind: FileKind::parse(&r.kind),
            resource_type: r.resource_type,
            url: r.url,
            requires_token: r.requires_token,
            name: r.name,
            state: match r.state.as_str() {
                "done" => FileState::Done,
                "failed" => FileState::Failed,
                _ => FileState::Pending,
            },
            resources: r.resources,
            bytes: r.bytes,
            outcome: r.outcome,
            provider_errors: r.provider_errors,
            type_counts: r.type_counts,
        }
    }
}

/// Counts for the status endpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileCounts {
    pub total: i64,
    pub finished: i64,
}

impl FileCounts {
    /// Percent of listed files finished, to one decimal; a job with no files left to list is
    /// only finishing up (100).
    pub fn percent(&self) -> f64 {
        if self.total > 0 {
            (self.finished * 1000 / self.total) as f64 / 10.0
        } else {
            100.0
        }
    }
}

/// What is recorded when a file finishes.
#[derive(Debug)]
pub struct FinishedFile<'a> {
    pub state: FileState,
    pub resources: i64,
    pub bytes: i64,
    pub outcome: &'a str,
    pub provider_errors: i64,
    pub type_counts: Option<&'a str>,
}

/// Totals over a job's files.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct FileTotals {
    pub files: i64,
    pub failed: i64,
    pub resources: i64,
    /// Files with an outcome line (finished or failed).
    pub outcomes: i64,
    /// Error issues providers reported in `error[]` files.
    pub provider_errors: i64,
}

impl FileTotals {
    /// Failed files or provider-reported errors: the import is partial.
    pub fn has_errors(&self) -> bool {
        self.failed > 0 || self.provider_errors > 0
    }
}

/// Caps on unfinished jobs (`MAX_CONCURRENT_JOBS`, `MAX_JOBS_PER_PROVIDER`).
#[derive(Debug, Clone, Copy)]
pub struct JobCaps {
    pub all: i64,
    pub per_provider: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Every slot is taken.
    Full,
    /// The provider has its share; others may still start jobs.
    ProviderFull,
}

impl Store {
    /// Insert a job unless `max_unfinished` jobs are already unfinished; false when there is no room.
    /// One statement, so a burst of pings cannot overshoot the limit.
    /// Insert a job unless `caps` are reached: unfinished jobs in all, and of the job's provider.
    pub async fn insert_job_if_room(&self, job: &Job, caps: JobCaps) -> Result<Admission, StoreError> {
        let r = sqlx::query(
            "INSERT INTO jobs (id, client_id, export_type, export_url, kickoff, state, created_at, touched_at)
             SELECT ?, ?, ?, ?, ?, ?, ?, ?
             WHERE (SELECT COUNT(*) FROM jobs WHERE state NOT IN ('completed', 'failed')) < ?
               AND (SELECT COUNT(*) FROM jobs WHERE client_id = ? AND state NOT IN ('completed', 'failed')) < ?",
        )
        .bind(&job.id)
        .bind(&job.client_id)
        .bind(job.export_type.as_str())
        .bind(&job.export_url)
        .bind(serde_json::to_string(&job.kickoff)?)
        .bind(job.state.as_str())
        .bind(job.created_at)
        .bind(job.created_at)
        .bind(caps.all)
        .bind(&job.client_id)
        .bind(caps.per_provider)
        .execute(self.pool())
        .await?;
        if r.rows_affected() == 1 {
            return Ok(Admission::Admitted);
        }
        let theirs: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE client_id = ? AND state NOT IN ('completed', 'failed')",
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
            "SELECT * FROM jobs WHERE state NOT IN ('completed', 'failed') ORDER BY created_at",
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
             FROM job_files WHERE job_id = ?",
        )
        .bind(job_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Outcome lines of finished files, in manifest order.
    pub async fn file_outcomes(&self, job_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT outcome FROM job_files WHERE job_id = ? AND outcome IS NOT NULL ORDER BY idx",
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

    /// Store the planned files and move to `importing`, atomically, so a restart never sees half a plan.
    pub async fn save_plan(&self, id: &str, files: &[JobFile]) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM job_files WHERE job_id = ?").bind(id).execute(&mut *tx).await?;
        for f in files {
            sqlx::query(
                "INSERT INTO job_files (job_id, idx, kind, resource_type, url, requires_token, name, state)
                 VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
            )
            .bind(id)
            .bind(f.idx)
            .bind(f.kind.as_str())
            .bind(&f.resource_type)
            .bind(&f.url)
            .bind(f.requires_token)
            .bind(&f.name)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE jobs SET state = 'importing' WHERE id = ?").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
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

    pub async fn file_counts(&self, job_id: &str) -> Result<FileCounts, StoreError> {
        let (total, finished): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(state != 'pending'), 0) FROM job_files WHERE job_id = ?",
        )
        .bind(job_id)
        .fetch_one(self.pool())
        .await?;
        Ok(FileCounts { total, finished })
    }

    pub async fn finish_file(
        &self,
        job_id: &str,
        idx: i64,
        done: &FinishedFile<'_>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE job_files SET state = ?, resources = ?, bytes = ?, outcome = ?, provider_errors = ?, type_counts = ?
             WHERE job_id = ? AND idx = ?",
        )
        .bind(done.state.as_str())
        .bind(done.resources)
        .bind(done.bytes)
        .bind(done.outcome)
        .bind(done.provider_errors)
        .bind(done.type_counts)
        .bind(job_id)
        .bind(idx)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn complete_job(&self, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET state = 'completed', completed_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
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

    /// Fail an unfinished job; false when it had finished already (and so stays as it was).
    pub async fn fail_job(&self, id: &str, reason: &str, now: i64) -> Result<bool, StoreError> {
        // A finished job stays as it finished (a late failure must not undo a completion).
        let r = sqlx::query(
            "UPDATE jobs SET state = 'failed', failure = ?, completed_at = ? WHERE id = ? AND state NOT IN ('completed', 'failed')",
        )
            .bind(reason)
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
