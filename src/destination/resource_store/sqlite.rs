//! The resource store on SQLite: a file of its own (owner-only), one transaction per batch.
use std::{path::Path, time::Duration};

use async_trait::async_trait;
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    SqlitePool,
};

use super::{
    rows::{Gone, Row},
    Origin, Stored, Tables, TablesError, TypeCount,
};

/// Longest a statement waits for the file's lock (another process reading it, a backup).
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);
/// One for the writer, one for counts and reads meanwhile.
const MAX_CONNECTIONS: u32 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fhir_resources (
    provider      TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    last_updated  TEXT,
    version_id    TEXT,
    resource      TEXT NOT NULL,
    job           TEXT NOT NULL,
    file          TEXT NOT NULL,
    stored_at     TEXT NOT NULL,
    PRIMARY KEY (provider, resource_type, id)
);
CREATE INDEX IF NOT EXISTS fhir_resources_by_job ON fhir_resources (job, file);
";

/// Rows per INSERT statement (9 parameters each, well under SQLite's 32,766).
const ROWS_PER_STATEMENT: usize = 200;

const INSERT: &str =
    "INSERT INTO fhir_resources (provider, resource_type, id, last_updated, version_id, resource, job, file, stored_at) VALUES ";

const ON_CONFLICT: &str = "
ON CONFLICT (provider, resource_type, id) DO UPDATE SET
    last_updated = excluded.last_updated, version_id = excluded.version_id, resource = excluded.resource,
    job = excluded.job, file = excluded.file, stored_at = excluded.stored_at
-- None counts as oldest (the writer's order too).
WHERE fhir_resources.last_updated IS NULL OR excluded.last_updated >= fhir_resources.last_updated";

const DELETE: &str = "
DELETE FROM fhir_resources WHERE provider = ?1 AND resource_type = ?2 AND id = ?3
    AND CASE WHEN ?4 IS NULL THEN job <> ?5 ELSE (last_updated IS NULL OR last_updated <= ?4) END";

/// One statement storing `rows` rows (a multi-row INSERT costs one call instead of `rows`).
fn upsert_statement(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!("{INSERT}{values}{ON_CONFLICT}")
}

pub struct SqliteTables {
    pool: SqlitePool,
    path: std::path::PathBuf,
    /// The statement for a whole `ROWS_PER_STATEMENT` rows, built once.
    full: String,
    /// One write transaction at a time, queued here: a writer waiting inside SQLite holds a read
    /// snapshot, and with writers always waiting no checkpoint can reset the WAL, which then
    /// grows without bound (8 GB seen importing 1 GiB).
    writing: tokio::sync::Mutex<()>,
}

fn sql(what: &'static str) -> impl FnOnce(sqlx::Error) -> TablesError {
    move |source| TablesError::Sql { what, source }
}

impl SqliteTables {
    pub async fn open(path: &Path) -> Result<Self, TablesError> {
        // Health data: owner-only whatever the umask (its -wal and -shm files get its mode).
        crate::owner_only::file(path).map_err(TablesError::File)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(sql("cannot open the SQLite resource store"))?;
        sqlx::raw_sql(SCHEMA)
            .execute(&pool)
            .await
            .map_err(sql("cannot create the resource store's table"))?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
            full: upsert_statement(ROWS_PER_STATEMENT),
            writing: tokio::sync::Mutex::new(()),
        })
    }
}

fn now() -> String {
    super::rows::instant(&crate::time_util::instant(crate::time_util::now_unix())).unwrap_or_default()
}

#[async_trait]
impl Tables for SqliteTables {
    async fn upsert(&self, from: &Origin, rows: &[Row]) -> Result<(), TablesError> {
        let what = "storing a batch of resources failed";
        let stored_at = now();
        let _one = self.writing.lock().await;
        let mut tx = self.pool.begin().await.map_err(sql(what))?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let partial;
            let statement = if chunk.len() == ROWS_PER_STATEMENT {
                &self.full
            } else {
                partial = upsert_statement(chunk.len());
                &partial
            };
            let mut query = sqlx::query(statement);
            for r in chunk {
                query = query
                    .bind(&from.provider)
                    .bind(&r.resource_type)
                    .bind(&r.id)
                    .bind(&r.last_updated)
                    .bind(&r.version_id)
                    .bind(&r.json)
                    .bind(&from.job)
                    .bind(&from.file)
                    .bind(&stored_at);
            }
            query.execute(&mut *tx).await.map_err(sql(what))?;
        }
        tx.commit().await.map_err(sql(what))
    }

    async fn delete(&self, from: &Origin, gone: &[Gone]) -> Result<u64, TablesError> {
        let what = "deleting a batch of resources failed";
        let _one = self.writing.lock().await;
        let mut tx = self.pool.begin().await.map_err(sql(what))?;
        let mut deleted = 0;
        for g in gone {
            let r = sqlx::query(DELETE)
                .bind(&from.provider)
                .bind(&g.resource_type)
                .bind(&g.id)
                .bind(&g.at)
                .bind(&from.job)
                .execute(&mut *tx)
                .await
                .map_err(sql(what))?;
            deleted += r.rows_affected();
        }
        tx.commit().await.map_err(sql(what))?;
        Ok(deleted)
    }

    async fn remove(&self, job: &str, file: Option<&str>) -> Result<u64, TablesError> {
        let _one = self.writing.lock().await;
        let r = sqlx::query("DELETE FROM fhir_resources WHERE job = ?1 AND (?2 IS NULL OR file = ?2)")
            .bind(job)
            .bind(file)
            .execute(&self.pool)
            .await
            .map_err(sql("removing a job's resources failed"))?;
        Ok(r.rows_affected())
    }

    async fn counts(&self) -> Result<Vec<TypeCount>, TablesError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(super::COUNTS)
            .fetch_all(&self.pool)
            .await
            .map_err(sql("counting stored resources failed"))?;
        Ok(rows.into_iter().map(TypeCount::from_columns).collect())
    }

    async fn get(
        &self,
        provider: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Stored>, TablesError> {
        let row = sqlx::query_as(
            "SELECT last_updated, version_id, resource, job, file FROM fhir_resources WHERE provider = ?1 AND resource_type = ?2 AND id = ?3",
        )
        .bind(provider)
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql("reading a stored resource failed"))?;
        row.map(Stored::from_columns).transpose()
    }

    fn describe(&self) -> String {
        format!("SQLite {}", self.path.display())
    }
    fn shared(&self) -> bool {
        false
    }
}
