//! Sync states in PostgreSQL: the SQLite store's statements (`store::sync_states`), their
//! placeholders renumbered.
use async_trait::async_trait;

use super::{pg, PgStore};
use crate::{
    domain::SyncState,
    store::{
        job_store::SyncStore,
        sync_states::{bind_sync_state, sql, SyncRow},
        StoreError,
    },
};

#[async_trait]
impl SyncStore for PgStore {
    async fn record_sync(&self, s: &SyncState) -> Result<(), StoreError> {
        bind_sync_state!(sqlx::query(&pg(sql::RECORD)), s).execute(self.pool()).await?;
        Ok(())
    }

    async fn sync_states(&self) -> Result<Vec<SyncState>, StoreError> {
        let rows: Vec<SyncRow> = sqlx::query_as(&pg(sql::ALL)).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(SyncState::from).collect())
    }

    async fn sync_state(&self, client_id: &str, source: &str) -> Result<Option<SyncState>, StoreError> {
        let row: Option<SyncRow> =
            sqlx::query_as(&pg(sql::ONE)).bind(client_id).bind(source).fetch_optional(self.pool()).await?;
        Ok(row.map(SyncState::from))
    }
}
