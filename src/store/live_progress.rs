//! A running job's live counters as the process running it last wrote them (`job_live`): what
//! every other replica, the jobs list and the CLI read while the job imports. Each statement once
//! for both databases (sqlx binds `$N` on SQLite as on PostgreSQL).
use super::{postgres::PgStore, Store, StoreError};

/// What a running job had received when its owner last wrote it down.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LiveCounters {
    /// Decoded bytes received, files in progress included.
    pub bytes: i64,
    pub resources: i64,
    /// The files downloading then: a JSON array of `{index, type, bytes, resources}`.
    pub files: String,
    /// When it was written (Unix ms).
    pub at_ms: i64,
}

const UPSERT: &str =
    "INSERT INTO job_live (job_id, bytes, resources, files, at_ms) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (job_id) DO UPDATE SET bytes = excluded.bytes, resources = excluded.resources,
        files = excluded.files, at_ms = excluded.at_ms";
const SELECT: &str = "SELECT bytes, resources, files, at_ms FROM job_live WHERE job_id = $1";
const CLEAR: &str = "DELETE FROM job_live WHERE job_id = $1";

macro_rules! live_progress_for {
    ($store:ty) => {
        impl $store {
            /// Write a running job's counters (its owner, every couple of seconds).
            pub async fn publish_live(&self, job_id: &str, live: &LiveCounters) -> Result<(), StoreError> {
                sqlx::query(UPSERT)
                    .bind(job_id)
                    .bind(live.bytes)
                    .bind(live.resources)
                    .bind(&live.files)
                    .bind(live.at_ms)
                    .execute(self.pool())
                    .await?;
                Ok(())
            }

            /// A job's counters as last written, if it imports somewhere.
            pub async fn live(&self, job_id: &str) -> Result<Option<LiveCounters>, StoreError> {
                Ok(sqlx::query_as(SELECT).bind(job_id).fetch_optional(self.pool()).await?)
            }

            /// The job no longer imports: its numbers are in its files' results.
            pub async fn clear_live(&self, job_id: &str) -> Result<(), StoreError> {
                sqlx::query(CLEAR).bind(job_id).execute(self.pool()).await?;
                Ok(())
            }
        }
    };
}

live_progress_for!(Store);
live_progress_for!(PgStore);
