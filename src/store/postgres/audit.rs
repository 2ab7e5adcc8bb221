//! The audit trail in PostgreSQL, the newest events of each class kept.
use async_trait::async_trait;

use super::PgStore;
use crate::{
    domain::{AuditClass, AuditEvent},
    store::{job_store::AuditLog, StoreError},
};

/// at, action, actor, subject, detail.
type AuditRow = (i64, String, String, Option<String>, Option<String>);

#[async_trait]
impl AuditLog for PgStore {
    async fn record_audit(&self, e: &AuditEvent, keep: i64) -> Result<(), StoreError> {
        let refusal = e.is_refusal();
        let mut tx = self.pool().begin().await?;
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
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at, action, actor, subject, detail)| AuditEvent { at, action, actor, subject, detail })
            .collect())
    }
}
