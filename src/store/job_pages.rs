//! A job's files as its page and its submission read them, and what a stop says of them again:
//! a page of files, totals per type and per manifest added up in the database (so a poll of a
//! 50,000-file job reads one page), and done files' outcomes restated once their data is
//! removed. Each statement once for both databases (sqlx binds `$N` on SQLite as on PostgreSQL),
//! and each method once, for both backends.
use std::collections::BTreeMap;

use super::{
    jobs::{sum_type_counts, FileRow},
    postgres::PgStore,
    Store, StoreError,
};
use crate::domain::JobFile;

/// Most files one page of a job's file list holds.
pub const MAX_FILES_PAGE: i64 = 1_000;

/// A job's data files of one resource type (`""`: untyped, `organizeOutputBy`), added up in the
/// database so the job page costs the same for 50,000 files as for 5.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TypeTotals {
    pub resource_type: String,
    pub files: i64,
    pub files_done: i64,
    /// Resources of its done files that counted them under this type (not untyped ones).
    pub resources: i64,
    /// What the manifests announced for its files.
    pub expected: i64,
    /// Whether every one of its files came with a count.
    pub announced: bool,
}

/// One page of a job's files, in plan order.
const FILES_PAGE: &str = "SELECT * FROM job_files WHERE job_id = $1 ORDER BY idx LIMIT $2 OFFSET $3";

const TYPE_TOTALS: &str = "
    SELECT resource_type,
           COUNT(*) AS files,
           COUNT(*) FILTER (WHERE state = 'done') AS files_done,
           CAST(COALESCE(SUM(CASE WHEN state = 'done' AND type_counts IS NULL THEN resources ELSE 0 END), 0) AS BIGINT) AS resources,
           CAST(COALESCE(SUM(expected_resources), 0) AS BIGINT) AS expected,
           COUNT(expected_resources) = COUNT(*) AS announced
    FROM job_files WHERE job_id = $1 AND kind = 'output' AND state <> 'withdrawn'
    GROUP BY resource_type ORDER BY resource_type";

/// A submitted manifest's files, counted by state.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct ManifestFiles {
    pub manifest_idx: i64,
    pub files: i64,
    pub done: i64,
    pub failed: i64,
    pub withdrawn: i64,
}

const MANIFEST_FILES: &str = "
    SELECT manifest_idx,
           COUNT(*) AS files,
           COUNT(*) FILTER (WHERE state = 'done') AS done,
           COUNT(*) FILTER (WHERE state = 'failed') AS failed,
           COUNT(*) FILTER (WHERE state = 'withdrawn') AS withdrawn
    FROM job_files WHERE job_id = $1 GROUP BY manifest_idx ORDER BY manifest_idx";

/// The per-type counts of done untyped files (only they carry them).
const UNTYPED_COUNTS: &str = "
    SELECT resource_type, resources, type_counts FROM job_files
    WHERE job_id = $1 AND kind = 'output' AND state = 'done' AND type_counts IS NOT NULL";

/// A done file's outcome, said again once what it stored was removed.
const RESTATE_DONE: &str =
    "UPDATE job_files SET outcome = $1 WHERE job_id = $2 AND idx = $3 AND state = 'done'";

macro_rules! job_pages_for {
    ($store:ty) => {
        impl $store {
            /// Files `offset..offset + limit` of a job (at most `MAX_FILES_PAGE`), in plan order.
            pub async fn files_page(
                &self,
                job_id: &str,
                offset: i64,
                limit: i64,
            ) -> Result<Vec<JobFile>, StoreError> {
                let rows = sqlx::query_as::<_, FileRow>(FILES_PAGE)
                    .bind(job_id)
                    .bind(limit.clamp(0, MAX_FILES_PAGE))
                    .bind(offset.max(0))
                    .fetch_all(self.pool())
                    .await?;
                Ok(rows.into_iter().map(JobFile::from).collect())
            }

            /// A job's data files per type, and the resources its done untyped files held per type.
            pub async fn type_totals(
                &self,
                job_id: &str,
            ) -> Result<(Vec<TypeTotals>, BTreeMap<String, i64>), StoreError> {
                let totals =
                    sqlx::query_as::<_, TypeTotals>(TYPE_TOTALS).bind(job_id).fetch_all(self.pool()).await?;
                let untyped = sqlx::query_as(UNTYPED_COUNTS).bind(job_id).fetch_all(self.pool()).await?;
                Ok((totals, sum_type_counts(untyped)?))
            }

            /// A job's files counted by state, per manifest of its plan.
            pub async fn manifest_files(&self, job_id: &str) -> Result<Vec<ManifestFiles>, StoreError> {
                Ok(sqlx::query_as(MANIFEST_FILES).bind(job_id).fetch_all(self.pool()).await?)
            }

            /// Say again what became of done files (their data removed by a cancel or a failure).
            pub async fn restate_done_files(
                &self,
                job_id: &str,
                outcomes: &[(i64, String)],
            ) -> Result<(), StoreError> {
                let mut tx = self.pool().begin().await?;
                for (idx, outcome) in outcomes {
                    sqlx::query(RESTATE_DONE).bind(outcome).bind(job_id).bind(idx).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

job_pages_for!(Store);
job_pages_for!(PgStore);
