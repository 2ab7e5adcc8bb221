//! Jobs as the dashboard (and a command line's `jobs`) lists them: every job with its provider and
//! file totals, and one job with its files. JSON, as both front ends show or print it.
use std::time::Duration;

use serde_json::{json, Value};

use std::collections::{BTreeMap, HashMap};

use crate::{
    domain::{is_job_id, FileCounts, FileState, JobFile},
    jobs::{
        file_bounds::InFlight,
        progress::{Sample, Snapshot},
    },
    store::{
        dashboard::JobSummary,
        job_pages::{TypeTotals, MAX_FILES_PAGE},
        job_store::JobStore,
        live_progress::LiveCounters,
        StoreError,
    },
    time_util::instant,
};

/// The newest jobs first (up to `DASHBOARD_MAX_JOBS`); `retention` is `JOBS_MAX_AGE`.
pub async fn list(store: &dyn JobStore, retention: Duration) -> Result<Vec<Value>, StoreError> {
    Ok(store.job_summaries().await?.iter().map(|j| describe_job(j, retention)).collect())
}

/// What the job page shows of a job running here beside its stored record.
pub struct Running {
    pub snapshot: Snapshot,
    pub throughput: Vec<Sample>,
}

/// Which of a job's files a page shows.
#[derive(Debug, Clone, Copy)]
pub struct FilesPage {
    pub offset: i64,
    pub limit: i64,
}

impl Default for FilesPage {
    fn default() -> Self {
        Self { offset: 0, limit: DEFAULT_FILES_PAGE }
    }
}

/// Files a job page lists at once unless asked for another page size.
pub const DEFAULT_FILES_PAGE: i64 = 100;

/// One job with a page of its files, per-type totals and throughput chart; `None` if there is no
/// such job. `running`: what this process knows live of it (files downloading now, rates, ETA).
/// What it reads is bounded by the page and the number of types, not by the job's files.
pub async fn show(
    store: &dyn JobStore,
    id: &str,
    retention: Duration,
    running: Option<Running>,
    page: FilesPage,
) -> Result<Option<Value>, StoreError> {
    if !is_job_id(id) {
        return Ok(None);
    }
    let Some(job) = store.job_summary(id).await? else { return Ok(None) };
    let files = store.files_page(&job.id, page.offset, page.limit).await?;
    let (totals, untyped) = store.type_totals(&job.id).await?;
    let received = running.as_ref().and_then(|r| r.snapshot.received.as_ref());
    // Not running here but importing elsewhere: what its owner last wrote of it.
    let stored_live = match (received, job.state.as_str()) {
        (None, "importing") => store.live(&job.id).await?,
        _ => None,
    };
    let in_flight: HashMap<i64, InFlight> = match (received, &stored_live) {
        (Some(r), _) => r.in_flight.iter().map(|f| (f.idx, f.clone())).collect(),
        (None, Some(l)) => files_of(l).into_iter().map(|f| (f.idx, f)).collect(),
        _ => HashMap::new(),
    };
    let mut body = describe_job(&job, retention);
    body["files"] = files.iter().map(|f| describe_file(f, in_flight.get(&f.idx))).collect();
    body["files_page"] = json!({
        "offset": page.offset.max(0),
        "limit": page.limit.clamp(0, MAX_FILES_PAGE),
        "total": job.files_total,
    });
    body["types"] = per_type(&totals, &untyped, &in_flight);
    let announced = totals.iter().all(|t| t.announced);
    body["expected_resources"] =
        json!(announced.then(|| totals.iter().map(|t| t.expected.max(0)).sum::<i64>()));
    let throughput = match &running {
        Some(r) => r.throughput.clone(),
        None => stored_throughput(store, &job.id).await?,
    };
    body["throughput"] = json!(throughput);
    if let Some(r) = &running {
        if let Some(received) = &r.snapshot.received {
            body["live"] = live(&r.snapshot, received);
            body["progress_percent"] = json!(r.snapshot.percent());
        }
    } else if let Some(l) = &stored_live {
        // Rates and time left are the owner's to measure; the counts are the same.
        body["live"] = json!({
            "bytes": l.bytes,
            "resources": l.resources,
            "bytes_per_sec": null,
            "resources_per_sec": null,
            "eta_secs": null,
            "downloading": in_flight.len(),
            "as_of": instant(l.at_ms / 1000),
        });
    }
    Ok(Some(body))
}

/// The files downloading when the owner last wrote a job's progress.
pub fn files_of(live: &LiveCounters) -> Vec<InFlight> {
    let listed: Vec<Value> = serde_json::from_str(&live.files).unwrap_or_default();
    listed
        .iter()
        .filter_map(|f| {
            Some(InFlight {
                idx: f["index"].as_i64()?,
                resource_type: f["type"].as_str().map(str::to_string),
                bytes: f["bytes"].as_u64().unwrap_or(0),
                resources: f["resources"].as_u64().unwrap_or(0),
                finished: false,
            })
        })
        .collect()
}

/// A finished job's chart; an unreadable one is left out rather than failing the page.
async fn stored_throughput(store: &dyn JobStore, id: &str) -> Result<Vec<Sample>, StoreError> {
    Ok(store.throughput(id).await?.and_then(|json| serde_json::from_str(&json).ok()).unwrap_or_default())
}

/// What a running job has received so far, files still downloading included, and how long the
/// rest should take at this rate.
fn live(s: &Snapshot, r: &crate::jobs::progress::Received) -> Value {
    json!({
        "bytes": r.bytes,
        "resources": r.resources,
        "bytes_per_sec": r.bytes_per_sec.round(),
        "resources_per_sec": (r.resources_per_sec * 10.0).round() / 10.0,
        "eta_secs": s.eta_secs().map(f64::ceil),
        "downloading": r.in_flight.len(),
    })
}

/// Data files and resources per resource type: done files as stored, files downloading now as far
/// as they got, and what the manifests announced. Untyped (`organizeOutputBy`) files count once
/// done, under the types they held.
fn per_type(
    totals: &[TypeTotals],
    untyped: &BTreeMap<String, i64>,
    in_flight: &HashMap<i64, InFlight>,
) -> Value {
    #[derive(Default)]
    struct Totals {
        files: i64,
        done: i64,
        resources: u64,
        expected: Option<u64>,
        announced: bool,
    }
    let mut by_type: BTreeMap<String, Totals> = BTreeMap::new();
    fn entry<'m>(by_type: &'m mut BTreeMap<String, Totals>, ty: &str) -> &'m mut Totals {
        let name = if ty.is_empty() { "(mixed)".to_string() } else { ty.to_string() };
        by_type.entry(name).or_insert(Totals { announced: true, ..Default::default() })
    }
    for t in totals {
        let e = entry(&mut by_type, &t.resource_type);
        e.files += t.files;
        e.done += t.files_done;
        e.resources += t.resources.max(0) as u64;
        e.announced &= t.announced;
        e.expected = Some(e.expected.unwrap_or(0).saturating_add(t.expected.max(0) as u64));
    }
    for (ty, n) in untyped {
        entry(&mut by_type, ty).resources += (*n).max(0) as u64;
    }
    // A file whose result is stored already counts above.
    for live in in_flight.values().filter(|f| !f.finished) {
        if let Some(ty) = &live.resource_type {
            entry(&mut by_type, ty).resources += live.resources;
        }
    }
    by_type
        .into_iter()
        .map(|(ty, t)| {
            json!({
                "resource_type": ty,
                "files": t.files,
                "files_done": t.done,
                "resources": t.resources,
                "expected_resources": if t.announced && t.files > 0 { t.expected } else { None },
            })
        })
        .collect()
}

/// Percent done, as `GET /job/{id}` reports it: finished files over listed files while importing;
/// of a job that stopped (failed, cancelled), the files it imported before it stopped, not 0 %
/// beside the bytes it moved nor 100 % for files failed by the stop.
fn percent(state: &str, finished: i64, failed: i64, total: i64) -> f64 {
    match state {
        "completed" => 100.0,
        "importing" => FileCounts { total, finished }.percent(),
        "failed" | "cancelled" if total > 0 => FileCounts { total, finished: finished - failed }.percent(),
        _ => 0.0,
    }
}

fn describe_job(j: &JobSummary, retention: Duration) -> Value {
    // While it imports, what its owner last wrote of it (files in progress included), alike on
    // every replica; after, its files' results.
    let importing = j.state == "importing";
    let bytes = if importing { j.bytes.max(j.live_bytes.unwrap_or(0)) } else { j.bytes };
    let resources = if importing { j.resources.max(j.live_resources.unwrap_or(0)) } else { j.resources };
    let expected = (j.unannounced == 0).then_some(j.expected_resources.max(0) as u64);
    let files = FileCounts { total: j.files_total, finished: j.files_finished };
    let progress_percent = match importing {
        true => {
            crate::jobs::progress::percent_done(expected, j.live_resources.map(|r| r.max(0) as u64), files)
        }
        false => percent(&j.state, j.files_finished, j.files_failed, j.files_total),
    };
    // A partial import must not look like a clean one: its own state, not a green "completed".
    let partial = j.state == "completed" && (j.files_failed > 0 || j.provider_errors > 0);
    let state = if partial { "completed-with-errors" } else { j.state.as_str() };
    json!({
        "id": j.id,
        "client_id": j.client_id,
        "provider_aud": j.provider_aud,
        "provider_name": j.provider_name,
        "export_type": j.export_type,
        "export_url": j.export_url,
        "state": state,
        // The provider's word on its export, while it exports: once files come, it is stale.
        "status_text": if matches!(j.state.as_str(), "queued" | "exporting") { j.progress.clone() } else { None },
        "provider_errors": j.provider_errors,
        "progress_percent": progress_percent,
        "files_finished": j.files_finished,
        "files_total": j.files_total,
        "files_failed": j.files_failed,
        "bytes": bytes,
        "resources": resources,
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

fn describe_file(f: &JobFile, downloading: Option<&InFlight>) -> Value {
    // A file downloading now shows how far its current attempt got.
    let (state, resources, bytes) = match downloading {
        Some(live) if f.state == FileState::Pending => {
            ("downloading", live.resources as i64, live.bytes as i64)
        }
        _ => (f.state.as_str(), f.resources, f.bytes),
    };
    json!({
        "index": f.idx,
        "kind": f.kind.as_str(),
        "resource_type": f.resource_type,
        "url": f.url,
        "name": f.name,
        "state": state,
        "resources": resources,
        "bytes": bytes,
        "expected_resources": f.expected_resources,
        "diagnostics": diagnostics(f.outcome.as_deref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_follows_the_status_endpoint() {
        assert_eq!(percent("completed", 0, 0, 0), 100.0);
        assert_eq!(percent("importing", 1, 0, 3), 33.3);
        assert_eq!(percent("importing", 0, 0, 0), 100.0);
        assert_eq!(percent("failed", 1, 0, 2), 50.0);
        assert_eq!(percent("cancelled", 4, 3, 4), 25.0, "three failed by the cancel");
        assert_eq!(percent("exporting", 0, 0, 0), 0.0);
        assert_eq!(percent("queued", 0, 0, 0), 0.0);
    }

    #[test]
    fn diagnostics_joins_every_issue_and_skips_pending_files() {
        let oo = r#"{"resourceType":"OperationOutcome","issue":[{"diagnostics":"a"},{"code":"x"},{"diagnostics":"b"}]}"#;
        assert_eq!(diagnostics(Some(oo)).as_deref(), Some("a; b"));
        assert_eq!(diagnostics(None), None);
        assert_eq!(diagnostics(Some("not json")), None);
    }
}
