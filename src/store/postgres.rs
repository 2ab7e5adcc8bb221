//! The PostgreSQL backend (issue 15), for several replicas on one database. Built store by store
//! behind the same traits as SQLite and checked by the same conformance suite: registrations and
//! the audit trail so far; jobs, leases and the replay cache come next, and until then the server
//! runs on SQLite only.
use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::{
    job_store::{AuditLog, RegistrationStore},
    StoreError,
};
use crate::domain::{AuditClass, AuditEvent, Provider};

const MAX_CONNECTIONS: u32 = 8;

/// at, action, actor, subject, detail.
type AuditRow = (i64, String, String, Option<String>, Option<String>);

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connect to `url` (`postgres://…`) and bring the schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new().max_connections(MAX_CONNECTIONS).connect(url).await?;
        sqlx::migrate!("./migrations-postgres").run(&pool).await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl RegistrationStore for PgStore {
    async fn insert_provider(&self, p: &Provider) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO providers (client_id, consumer_client_id, aud, jwks, jwks_uri, scope, created_at, revoked_at,
                                    token_origins, file_origins, token_endpoint, name)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn providers(&self) -> Result<Vec<Provider>, StoreError> {
        Ok(sqlx::query_as::<_, Provider>("SELECT * FROM providers ORDER BY created_at DESC, client_id")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn provider_any(&self, client_id: &str) -> Result<Option<Provider>, StoreError> {
        Ok(sqlx::query_as::<_, Provider>("SELECT * FROM providers WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn revoke_provider(&self, client_id: &str, now: i64) -> Result<bool, StoreError> {
        let r =
            sqlx::query("UPDATE providers SET revoked_at = COALESCE(revoked_at, $1) WHERE client_id = $2")
                .bind(now)
                .bind(client_id)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn provider(&self, client_id: &str) -> Result<Option<Provider>, StoreError> {
        Ok(sqlx::query_as::<_, Provider>(
            "SELECT * FROM providers WHERE client_id = $1 AND revoked_at IS NULL",
        )
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?)
    }
}

#[async_trait]
impl AuditLog for PgStore {
    async fn record_audit(&self, e: &AuditEvent, keep: i64) -> Result<(), StoreError> {
        let refusal = e.is_refusal();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO audit_events (at, action, actor, subject, detail, refusal) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(e.at)
        .bind(&e.action)
        .bind(&e.actor)
        .bind(&e.subject)
        .bind(&e.detail)
        .bind(refusal)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM audit_events WHERE refusal = $1 AND id IN
               (SELECT id FROM audit_events WHERE refusal = $1 ORDER BY id DESC OFFSET $2)",
        )
        .bind(refusal)
        .bind(keep)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_events(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        self.audit_events_of(AuditClass::All, limit).await
    }

    async fn audit_events_of(&self, class: AuditClass, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT at, action, actor, subject, detail FROM audit_events
             WHERE $1::boolean IS NULL OR refusal = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(class.refusal())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at, action, actor, subject, detail)| AuditEvent { at, action, actor, subject, detail })
            .collect())
    }
}
