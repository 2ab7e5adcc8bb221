//! One source of truth for a running job's progress: the process running it writes what has
//! arrived so far (bytes, resources, the files downloading and how far each got) to the store
//! every `LIVE_EVERY`, so another replica's status answer, the jobs list, the job page and the CLI
//! see a long file move, not 0 until it ends. Written on a timer beside the downloads, never per
//! line; only when something moved.
use std::{sync::Arc, time::Duration};

use serde_json::{json, Value};
use tokio_util::task::AbortOnDropHandle;

use crate::{
    jobs::file_bounds::JobBytes,
    store::{job_store::JobStore, live_progress::LiveCounters},
};

/// How often a running job's counters go to the store.
pub const LIVE_EVERY: Duration = Duration::from_secs(2);

/// Publish `counters` for job `id` until the handle is dropped (when the import ends).
pub fn spawn(store: Arc<dyn JobStore>, id: &str, counters: Arc<JobBytes>) -> AbortOnDropHandle<()> {
    let id = id.to_string();
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut last: Option<(i64, i64, String)> = None;
        // Bounded by the import: the handle is dropped (and this aborted) when it ends.
        loop {
            tokio::time::sleep(LIVE_EVERY).await;
            let live = snapshot(&counters);
            let now = (live.bytes, live.resources, live.files.clone());
            if last.as_ref() == Some(&now) {
                continue;
            }
            match store.publish_live(&id, &live).await {
                Ok(()) => last = Some(now),
                Err(e) => {
                    tracing::warn!(error = %crate::error_text::chain(&e), "could not write the job's progress")
                }
            }
        }
    }))
}

fn snapshot(counters: &JobBytes) -> LiveCounters {
    let files: Vec<Value> = counters
        .in_flight()
        .into_iter()
        .filter(|f| !f.finished)
        .map(|f| json!({"index": f.idx, "type": f.resource_type, "bytes": f.bytes, "resources": f.resources}))
        .collect();
    LiveCounters {
        bytes: counters.bytes() as i64,
        resources: counters.resources() as i64,
        files: Value::Array(files).to_string(),
        at_ms: crate::time_util::now_unix() * 1000,
    }
}
