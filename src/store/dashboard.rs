//! Read-only views for the admin dashboard: every job with its provider and file totals in one
//! query, so the browser UI can poll the list without one round trip per job.
use super::{Store, StoreError};

/// Most jobs one dashboard listing returns, newest first; the reaper keeps the table small anyway.
pub const DASHBOARD_MAX_JOBS: i64 = 500;

/// A job as the dashboard shows it: its row, its provider's base URL and totals over its files.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobSummary {
    pub id: String,
    pub client_id: String,
    /// The registration's `aud`; `None` when the registration row is gone.
    pub provider_aud: Option<String>,
    /// The registration's display name, if it has one.
    pub provider_name: Option<String>,
    pub export_type: String,
    pub export_url: String,
    pub state: String,
    /// The provider's last `X-Progress` text.
    pub progress: Option<String>,
    pub failure: Option<String>,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub files_total: i64,
    /// Files finished either way (done or failed).
    pub files_finished: i64,
    pub files_failed: i64,
    pub bytes: i64,
    pub resources: i64,
    /// Error issues providers reported in the job's `error[]` files.
    pub provider_errors: i64,
    /// Resources the manifests announced for its data files; whole when `unannounced` is 0.
    pub expected_resources: i64,
    /// Data files whose manifest entry gave no count.
    pub unannounced: i64,
    /// What it had received when its owner last wrote its progress (`job_live`), files in
    /// progress included; `None` unless it imports.
    pub live_bytes: Option<i64>,
    pub live_resources: Option<i64>,
}

const SUMMARY_SELECT: &str = "
    SELECT j.id, j.client_id, p.aud AS provider_aud, p.name AS provider_name, j.export_type, j.export_url, j.state,
           j.progress, j.failure, j.created_at, j.completed_at,
           COUNT(f.idx) AS files_total,
           COALESCE(SUM(f.state != 'pending'), 0) AS files_finished,
           COALESCE(SUM(f.state = 'failed'), 0) AS files_failed,
           COALESCE(SUM(f.bytes), 0) AS bytes,
           COALESCE(SUM(f.resources), 0) AS resources,
           COALESCE(SUM(f.provider_errors), 0) AS provider_errors,
           CAST(COALESCE(SUM(CASE WHEN f.kind = 'output' THEN f.expected_resources END), 0) AS BIGINT) AS expected_resources,
           COUNT(CASE WHEN f.kind = 'output' AND f.expected_resources IS NULL THEN 1 END) AS unannounced,
           (SELECT l.bytes FROM job_live l WHERE l.job_id = j.id) AS live_bytes,
           (SELECT l.resources FROM job_live l WHERE l.job_id = j.id) AS live_resources
    FROM jobs j
    LEFT JOIN providers p ON p.client_id = j.client_id
    LEFT JOIN job_files f ON f.job_id = j.id AND f.state != 'withdrawn'";

impl Store {
    /// Up to [`DASHBOARD_MAX_JOBS`] jobs, newest first.
    pub async fn job_summaries(&self) -> Result<Vec<JobSummary>, StoreError> {
        let sql = format!("{SUMMARY_SELECT} GROUP BY j.id ORDER BY j.created_at DESC, j.id LIMIT ?");
        Ok(sqlx::query_as::<_, JobSummary>(&sql).bind(DASHBOARD_MAX_JOBS).fetch_all(self.pool()).await?)
    }

    /// How many jobs are in each state (states with none are left out).
    pub async fn job_state_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")
            .fetch_all(self.pool())
            .await?)
    }

    /// One job's summary, or `None` when it does not exist.
    pub async fn job_summary(&self, id: &str) -> Result<Option<JobSummary>, StoreError> {
        let sql = format!("{SUMMARY_SELECT} WHERE j.id = ? GROUP BY j.id");
        Ok(sqlx::query_as::<_, JobSummary>(&sql).bind(id).fetch_optional(self.pool()).await?)
    }
}
