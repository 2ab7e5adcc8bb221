//! Jobs as the dashboard (and a command line's `jobs`) lists them: every job with its provider and
//! file totals, and one job with its files. JSON, as both front ends show or print it.
use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    domain::{is_job_id, FileCounts, JobFile},
    store::{dashboard::JobSummary, job_store::JobStore, StoreError},
    time_util::instant,
};

/// The newest jobs first (up to `DASHBOARD_MAX_JOBS`); `retention` is `JOBS_MAX_AGE`.
pub async fn list(store: &dyn JobStore, retention: Duration) -> Result<Vec<Value>, StoreError> {
    Ok(store.job_summaries().await?.iter().map(|j| describe_job(j, retention)).collect())
}

/// One job with its files; `None` if there is no such job.
pub async fn show(store: &dyn JobStore, id: &str, retention: Duration) -> Result<Option<Value>, StoreError> {
    if !is_job_id(id) {
        return Ok(None);
    }
    let Some(job) = store.job_summary(id).await? else { return Ok(None) };
    let files: Vec<Value> = store.files(&job.id).await?.iter().map(describe_file).collect();
    let mut body = describe_job(&job, retention);
    body["files"] = Value::Array(files);
    Ok(Some(body))
}

/// What a running job has received so far (the job page shows it while files download).
pub fn live(r: &crate::jobs::progress::Received) -> Value {
    json!({ "bytes": r.bytes, "resources": r.resources, "bytes_per_sec": r.bytes_per_sec.round() })
}

/// Percent done, as `GET /job/{id}` reports it: finished files over listed files while importing.
fn percent(state: &str, finished: i64, total: i64) -> f64 {
    let counts = FileCounts { total, finished };
    match state {
        "completed" => 100.0,
        "importing" => counts.percent(),
        "failed" if total > 0 => counts.percent(),
        _ => 0.0,
    }
}

fn describe_job(j: &JobSummary, retention: Duration) -> Value {
    // A partial import must not look like a clean one: its own state, not a green "completed".
    let partial = j.state == "completed" && (j.files_failed > 0 || j.provider_errors > 0);
    let state = if partial { "completed-with-errors" } else { j.state.as_str() };
    json!({
        "id": j.id,
        "client_id": j.client_id,
        "provider_aud": j.provider_aud,
        "export_type": j.export_type,
        "export_url": j.export_url,
        "state": state,
        "status_text": j.progress,
        "provider_errors": j.provider_errors,
        "progress_percent": percent(&j.state, j.files_finished, j.files_total),
        "files_finished": j.files_finished,
        "files_total": j.files_total,
        "files_failed": j.files_failed,
        "bytes": j.bytes,
        "resources": j.resources,
        "failure": j.failure,
        "created_at": instant(j.created_at),
        "finished_at": j.completed_at.map(instant),
        "kept_until": j.completed_at.map(|at| crate::time_util::kept_until(at, retention)),
    })
}

/// The diagnostics of a stored OperationOutcome line, joined; `None` while the file is pending.
fn diagnostics(outcome: Option<&str>) -> Option<String> {
    let oo: Value = serde_json::from_str(outcome?).ok()?;
    let texts: Vec<&str> =
        oo["issue"].as_array()?.iter().filter_map(|i| i.get("diagnostics").and_then(Value::as_str)).collect();
    (!texts.is_empty()).then(|| texts.join("; "))
}

fn describe_file(f: &JobFile) -> Value {
    json!({
        "index": f.idx,
        "kind": f.kind.as_str(),
        "resource_type": f.resource_type,
        "url": f.url,
        "name": f.name,
        "state": f.state.as_str(),
        "resources": f.resources,
        "bytes": f.bytes,
        "diagnostics": diagnostics(f.outcome.as_deref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_follows_the_status_endpoint() {
        assert_eq!(percent("completed", 0, 0), 100.0);
        assert_eq!(percent("importing", 1, 3), 33.3);
        assert_eq!(percent("importing", 0, 0), 100.0);
        assert_eq!(percent("failed", 1, 2), 50.0);
        assert_eq!(percent("exporting", 0, 0), 0.0);
        assert_eq!(percent("queued", 0, 0), 0.0);
    }

    #[test]
    fn diagnostics_joins_every_issue_and_skips_pending_files() {
        let oo = r#"{"resourceType":"OperationOutcome","issue":[{"diagnostics":"a"},{"code":"x"},{"diagnostics":"b"}]}"#;
        assert_eq!(diagnostics(Some(oo)).as_deref(), Some("a; b"));
        assert_eq!(diagnostics(None), None);
        assert_eq!(diagnostics(Some("not json")), None);
    }
}
