//! Provider registrations (`POST /auth/register`).
use serde_json::Value;

use super::{Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Provider {
    pub client_id: String,
    /// Our client id at the provider.
    pub consumer_client_id: String,
    /// The provider's FHIR base URL: every URL we fetch for it must lie under it.
    pub aud: String,
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    /// Scope we ask the provider for; `None` means the configured default.
    pub scope: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// JSON array of extra origins that may receive our token.
    pub token_origins: String,
    /// JSON array: when set, the only origins (besides trusted ones) files may come from.
    pub file_origins: Option<String>,
    /// A pinned token endpoint (instead of discovery), exactly as the provider spells it.
    pub token_endpoint: Option<String>,
}

impl Provider {
    pub fn jwks_value(&self) -> Option<Value> {
        self.jwks.as_deref().and_then(|s| serde_json::from_str(s).ok())
    }

    pub fn token_origin_list(&self) -> Vec<String> {
        serde_json::from_str(&self.token_origins).unwrap_or_default()
    }

    pub fn file_origin_list(&self) -> Option<Vec<String>> {
        self.file_origins.as_deref().and_then(|s| serde_json::from_str(s).ok())
    }
}

impl Store {
    pub async fn insert_provider(&self, p: &Provider) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO providers (client_id, consumer_client_id, aud, jwks, jwks_uri, scope, created_at, revoked_at,
                                    token_origins, file_origins, token_endpoint)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
}
