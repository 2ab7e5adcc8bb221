//! Persistent state: registrations, jobs, per-file results and seen assertion ids, in SQLite (this
//! module) or PostgreSQL (`postgres`), behind the traits of `job_store`. Nothing a job needs lives
//! only in process memory, so a restart (or another replica) resumes.
pub mod audit;
pub mod backend;
pub mod dashboard;
pub mod file_leases;
pub mod job_pages;
pub mod job_store;
pub mod jobs;
pub mod leases;
pub mod live_progress;
pub mod postgres;
pub mod providers;
pub mod submissions;
pub mod sync_states;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database query failed")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored JSON is corrupt")]
    Json(#[from] serde_json::Error),
    #[error("cannot create the database file {path}")]
    File { path: PathBuf, source: std::io::Error },
}

/// How long a writer waits for SQLite's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: u32 = 8;

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Open (creating if needed) the database file and run migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS).connect_with(options).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// One round trip to the database, for `/health`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Record an assertion id; false when it was already used and has not expired (a replay).
    pub async fn remember_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        sqlx::query("DELETE FROM used_jti WHERE expires_at < ?").bind(now).execute(&self.pool).await?;
        let r = sqlx::query("INSERT OR IGNORE INTO used_jti (client_id, jti, expires_at) VALUES (?, ?, ?)")
            .bind(client_id)
            .bind(jti)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
