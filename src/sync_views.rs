//! Sync states as the dashboard and the command line's `sources` show them: per provider and
//! export, where its next incremental pull would start and how its last job ended.
use serde_json::{json, Value};

use crate::{
    domain::SyncState,
    store::{job_store::SyncStore, StoreError},
    time_util::instant,
};

/// Every source of every provider.
pub async fn list(sync: &dyn SyncStore) -> Result<Vec<Value>, StoreError> {
    Ok(sync.sync_states().await?.iter().map(describe).collect())
}

fn describe(s: &SyncState) -> Value {
    json!({
        "client_id": s.client_id,
        "export_url": s.export_url,
        "types": s.types,
        "type_filters": s.type_filters,
        "since": s.since,
        "last_success_at": s.last_success_at.map(instant),
        "last_job_id": s.last_job_id,
        "last_result": s.last_result,
        "last_at": instant(s.last_at),
        "files": s.files,
        "failed_files": s.failed_files,
        "resources": s.resources,
    })
}
