//! The audit trail: who registered or revoked a provider, who cancelled or deleted a job, and
//! every refused ping with its reason. Each event goes to the log (target `audit`) and to the
//! store (`GET /admin/audit`, `bulk-import audit`). Recording never fails the action it records.
use serde_json::{json, Value};

use crate::{domain::AuditEvent, store::job_store::AuditLog, time_util::now_unix};

/// Who acted, as the trail names them (never a credential).
pub enum Actor<'a> {
    /// The admin credential's holder, from this address.
    Admin(&'a str),
    /// A registered provider (its client_id), from this address.
    Provider(&'a str, &'a str),
    /// Someone holding a job's URL (a capability), from this address.
    JobLink(&'a str),
    /// A caller not (yet) known, from this address.
    Unknown(&'a str),
    /// Someone at this machine's command line, writing to the database directly.
    LocalCli,
}

impl Actor<'_> {
    fn describe(&self) -> String {
        match self {
            Actor::Admin(from) => format!("admin from {from}"),
            Actor::Provider(client_id, from) => format!("provider {client_id} from {from}"),
            Actor::JobLink(from) => format!("job link holder from {from}"),
            Actor::Unknown(from) => format!("unauthenticated caller from {from}"),
            Actor::LocalCli => "command line on the server's machine (offline)".to_string(),
        }
    }
}

/// Record `action` on `subject` by `actor`. Job ids appear as their 8-character prefix only.
pub async fn record(
    log: &dyn AuditLog,
    actor: Actor<'_>,
    action: &str,
    subject: Option<&str>,
    detail: Option<&str>,
) {
    let event = AuditEvent {
        at: now_unix(),
        action: action.to_string(),
        actor: actor.describe(),
        subject: subject.map(str::to_string),
        detail: detail.map(|d| d.chars().take(MAX_DETAIL_CHARS).collect()),
    };
    tracing::info!(target: "audit", action = %event.action, actor = %event.actor, subject = event.subject.as_deref().unwrap_or("-"), detail = event.detail.as_deref().unwrap_or("-"), "audit");
    if let Err(e) = log.record_audit(&event, MAX_AUDIT_EVENTS).await {
        tracing::error!(error = %crate::error_text::chain(&e), "could not store an audit event");
    }
}

/// Events kept of each class (refused pings, and everything else); older ones go as new ones
/// come, so a flood of refusals only rotates the refusals.
pub const MAX_AUDIT_EVENTS: i64 = 10_000;

/// Longest detail kept (a refusal's reason).
const MAX_DETAIL_CHARS: usize = 500;

/// The newest events, as the admin API and the CLI show them.
pub async fn recent(
    log: &dyn AuditLog,
    class: crate::domain::AuditClass,
    limit: i64,
) -> Result<Vec<Value>, crate::store::StoreError> {
    Ok(log
        .audit_events_of(class, limit)
        .await?
        .into_iter()
        .map(|e| {
            json!({
                "at": crate::time_util::instant(e.at),
                "action": e.action,
                "actor": e.actor,
                "subject": e.subject,
                "detail": e.detail,
            })
        })
        .collect())
}
