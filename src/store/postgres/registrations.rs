//! Provider registrations in PostgreSQL.
use async_trait::async_trait;

use super::PgStore;
use crate::{
    domain::Provider,
    store::{job_store::RegistrationStore, StoreError},
};

#[async_trait]
impl RegistrationStore for PgStore {
    async fn insert_provider(&self, p: &Provider) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO providers (client_id, consumer_client_id, aud, jwks, jwks_uri, scope, created_at, revoked_at,
                                    token_origins, file_origins, token_endpoint, name, submitter_system, submitter_value,
                                    sync_plan, sync_next_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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

    async fn providers(&self) -> Result<Vec<Provider>, StoreError> {
        Ok(sqlx::query_as::<_, Provider>("SELECT * FROM providers ORDER BY created_at DESC, client_id")
            .fetch_all(self.pool())
            .await?)
    }

    async fn provider_any(&self, client_id: &str) -> Result<Option<Provider>, StoreError> {
        Ok(sqlx::query_as::<_, Provider>("SELECT * FROM providers WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(self.pool())
            .await?)
    }

    async fn revoke_provider(&self, client_id: &str, now: i64) -> Result<bool, StoreError> {
        let r =
            sqlx::query("UPDATE providers SET revoked_at = COALESCE(revoked_at, $1) WHERE client_id = $2")
                .bind(now)
                .bind(client_id)
                .execute(self.pool())
                .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn provider(&self, client_id: &str) -> Result<Option<Provider>, StoreError> {
        Ok(sqlx::query_as::<_, Provider>(
            "SELECT * FROM providers WHERE client_id = $1 AND revoked_at IS NULL",
        )
        .bind(client_id)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn due_syncs(&self, now: i64) -> Result<Vec<Provider>, StoreError> {
        Ok(sqlx::query_as::<_, Provider>(
            "SELECT * FROM providers WHERE revoked_at IS NULL AND sync_next_at IS NOT NULL AND sync_next_at <= $1
             ORDER BY sync_next_at, client_id",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?)
    }

    async fn claim_sync(&self, client_id: &str, was: i64, next: i64) -> Result<bool, StoreError> {
        let r =
            sqlx::query("UPDATE providers SET sync_next_at = $1 WHERE client_id = $2 AND sync_next_at = $3")
                .bind(next)
                .bind(client_id)
                .bind(was)
                .execute(self.pool())
                .await?;
        Ok(r.rows_affected() == 1)
    }
}
