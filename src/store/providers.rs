//! Provider registrations (`POST /auth/register`).
use super::{Store, StoreError};
use crate::domain::Provider;

impl Store {
    pub async fn insert_provider(&self, p: &Provider) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO providers (client_id, consumer_client_id, aud, jwks, jwks_uri, scope, created_at, revoked_at,
                                    token_origins, file_origins, token_endpoint, name, submitter_system, submitter_value,
                                    sync_plan, sync_next_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&p.client_id)
        .bind(&p.consumer_client_id)
        .bind(&p.aud)
        .bind(&p.jwks)
        .bind(&p.jwks_uri)
        .bind(&p.scope)
        .bind(p.created_at)
        .bind(p.revoked_at)
        .bind(&p.token_origins)
        .bind(&p.file_origins)
        .bind(&p.token_endpoint)
        .bind(&p.name)
        .bind(&p.submitter_system)
        .bind(&p.submitter_value)
        .bind(&p.sync_plan)
        .bind(p.sync_next_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every registration, newest first, revoked ones included.
    pub async fn providers(&self) -> Result<Vec<Provider>, StoreError> {
        Ok(sqlx::query_as::<_, Provider>("SELECT * FROM providers ORDER BY created_at DESC, client_id")
            .fetch_all(self.pool())
            .await?)
    }

    /// A registration whether or not it was revoked.
    pub async fn provider_any(&self, client_id: &str) -> Result<Option<Provider>, StoreError> {
        Ok(sqlx::query_as::<_, Provider>("SELECT * FROM providers WHERE client_id = ?")
            .bind(client_id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Revoke a registration; false when it does not exist. Revoking twice keeps the first time.
    pub async fn revoke_provider(&self, client_id: &str, now: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE providers SET revoked_at = COALESCE(revoked_at, ?) WHERE client_id = ?")
            .bind(now)
            .bind(client_id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// An active (not revoked) registration.
    pub async fn provider(&self, client_id: &str) -> Result<Option<Provider>, StoreError> {
        Ok(sqlx::query_as::<_, Provider>(
            "SELECT * FROM providers WHERE client_id = ? AND revoked_at IS NULL",
        )
        .bind(client_id)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn due_syncs(&self, now: i64) -> Result<Vec<Provider>, StoreError> {
        Ok(sqlx::query_as::<_, Provider>(
            "SELECT * FROM providers WHERE revoked_at IS NULL AND sync_next_at IS NOT NULL AND sync_next_at <= ?
             ORDER BY sync_next_at, client_id",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn claim_sync(&self, client_id: &str, was: i64, next: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE providers SET sync_next_at = ? WHERE client_id = ? AND sync_next_at = ?")
            .bind(next)
            .bind(client_id)
            .bind(was)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
