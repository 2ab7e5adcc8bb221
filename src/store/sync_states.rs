//! Sync states in SQLite; `postgres::sync_states` runs the same statements (written here once,
//! with `?N` placeholders) on PostgreSQL.
use super::{Store, StoreError};
use crate::domain::SyncState;

/// The statements, shared by both stores.
pub(super) mod sql {
    /// A later ending wins; `since` and `last_success_at` move only with a job that imported
    /// every file (given as NULL otherwise, so the earlier ones stay).
    pub const RECORD: &str = "INSERT INTO sync_states (client_id, source, export_url, types, type_filters,
            since, last_success_at, last_job_id, last_result, last_at, files, failed_files, resources)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (client_id, source) DO UPDATE SET
            since = COALESCE(excluded.since, sync_states.since),
            last_success_at = COALESCE(excluded.last_success_at, sync_states.last_success_at),
            last_job_id = excluded.last_job_id,
            last_result = excluded.last_result,
            last_at = excluded.last_at,
            files = excluded.files,
            failed_files = excluded.failed_files,
            resources = excluded.resources
         WHERE excluded.last_at >= sync_states.last_at";
    pub const ALL: &str = "SELECT * FROM sync_states ORDER BY client_id, export_url, source";
    pub const ONE: &str = "SELECT * FROM sync_states WHERE client_id = ?1 AND source = ?2";
}

#[derive(sqlx::FromRow)]
pub(super) struct SyncRow {
    client_id: String,
    source: String,
    export_url: String,
    types: Option<String>,
    type_filters: Option<String>,
    since: Option<String>,
    last_success_at: Option<i64>,
    last_job_id: String,
    last_result: String,
    last_at: i64,
    files: i64,
    failed_files: i64,
    resources: i64,
}

impl From<SyncRow> for SyncState {
    fn from(r: SyncRow) -> Self {
        SyncState {
            client_id: r.client_id,
            source: r.source,
            export_url: r.export_url,
            types: r.types,
            type_filters: r.type_filters,
            since: r.since,
            last_success_at: r.last_success_at,
            last_job_id: r.last_job_id,
            last_result: r.last_result,
            last_at: r.last_at,
            files: r.files,
            failed_files: r.failed_files,
            resources: r.resources,
        }
    }
}

/// `RECORD` with its parameters bound, for either database.
macro_rules! bind_sync_state {
    ($query:expr, $s:expr) => {
        $query
            .bind(&$s.client_id)
            .bind(&$s.source)
            .bind(&$s.export_url)
            .bind(&$s.types)
            .bind(&$s.type_filters)
            .bind(&$s.since)
            .bind($s.last_success_at)
            .bind(&$s.last_job_id)
            .bind(&$s.last_result)
            .bind($s.last_at)
            .bind($s.files)
            .bind($s.failed_files)
            .bind($s.resources)
    };
}

pub(super) use bind_sync_state;

impl Store {
    pub async fn record_sync(&self, s: &SyncState) -> Result<(), StoreError> {
        bind_sync_state!(sqlx::query(sql::RECORD), s).execute(self.pool()).await?;
        Ok(())
    }

    pub async fn sync_states(&self) -> Result<Vec<SyncState>, StoreError> {
        let rows: Vec<SyncRow> = sqlx::query_as(sql::ALL).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(SyncState::from).collect())
    }

    pub async fn sync_state(&self, client_id: &str, source: &str) -> Result<Option<SyncState>, StoreError> {
        let row: Option<SyncRow> =
            sqlx::query_as(sql::ONE).bind(client_id).bind(source).fetch_optional(self.pool()).await?;
        Ok(row.map(SyncState::from))
    }
}
