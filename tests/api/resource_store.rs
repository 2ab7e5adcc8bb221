//! The resource store conformance suite: what every store backend must do with the files it is
//! given (newest version wins, deleted[] Bundles delete, batches are durable points, removal by
//! reason), run whole against SQLite here and PostgreSQL in `tests/api/postgres.rs`.
use std::sync::Arc;

use bulk_import::destination::{
    resource_store::{self, ResourceStore, StoreUrl, Tables, TypeCount, BATCH_ROWS},
    Destination, FileKind, FileTarget, FileWriter, Removal,
};
use bytes::Bytes;

const EHR: &str = "ehr-1";

fn target<'a>(job: &'a str, name: &'a str, kind: FileKind) -> FileTarget<'a> {
    FileTarget { job, name, resource_type: "", provider: EHR, kind }
}

/// An Observation line; `at` is its meta.lastUpdated (none when empty).
pub fn obs(id: &str, at: &str, value: i64) -> String {
    let meta = if at.is_empty() { String::new() } else { format!(r#""meta":{{"lastUpdated":"{at}"}},"#) };
    format!(r#"{{"resourceType":"Observation","id":"{id}",{meta}"valueInteger":{value}}}"#) + "\n"
}

/// A deleted[] Bundle line naming `Type/id`s, with `response.lastModified` when `at` is given.
pub fn deletion(refs: &[(&str, Option<&str>)]) -> String {
    let entries: Vec<serde_json::Value> = refs
        .iter()
        .map(|(r, at)| match at {
            Some(at) => serde_json::json!({"request": {"method": "DELETE", "url": r}, "response": {"lastModified": at}}),
            None => serde_json::json!({"request": {"method": "DELETE", "url": r}}),
        })
        .collect();
    serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string() + "\n"
}

/// Write `body` in pieces of `piece` bytes, telling the writer of each line end as the download
/// does; the durable points it reported.
async fn feed(w: &mut Box<dyn FileWriter>, body: &[u8], from: usize, piece: usize) -> Vec<u64> {
    let mut sent = from;
    let mut saved = Vec::new();
    for c in body[from..].chunks(piece) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
        sent += c.len();
        if let Some(nl) = body[..sent].iter().rposition(|b| *b == b'\n') {
            if let Some(s) = w.line_end(nl as u64 + 1).await.unwrap().saved {
                saved.push(s.bytes);
            }
        }
    }
    saved
}

async fn store_file(d: &dyn Destination, t: FileTarget<'_>, body: &str) {
    let mut w = d.open(t).await.unwrap();
    feed(&mut w, body.as_bytes(), 0, 7).await;
    w.finish(0).await.unwrap();
}

async fn value(tables: &dyn Tables, provider: &str, id: &str) -> Option<i64> {
    let stored = tables.get(provider, "Observation", id).await.unwrap()?;
    stored.resource["valueInteger"].as_i64()
}

fn count(counts: &[TypeCount], provider: &str, resource_type: &str) -> i64 {
    counts.iter().find(|c| c.provider == provider && c.resource_type == resource_type).map_or(0, |c| c.count)
}

pub async fn assert_resource_store_conformance(tables: Arc<dyn Tables>) {
    let store = ResourceStore::new(tables.clone());
    let d: &dyn Destination = &store;
    let t = &*tables;

    // A first file: each resource stored with its meta; within the file, of two lines with the
    // same id the newer wins whatever their order; a last line without a newline counts too.
    // (An organizeOutputBy file's Parameters header line is not a resource: passed over.)
    let first = r#"{"resourceType":"Parameters","parameter":[{"name":"header"}]}"#.to_string()
        + "\n"
        + &obs("o1", "2024-01-01T00:00:00Z", 1)
        + &obs("o2", "2024-01-05T00:00:00+01:00", 2)
        + &obs("o3", "2024-01-01T00:00:00Z", 3)
        + &obs("o3", "2023-06-01T00:00:00Z", 30)
        + "\n"
        + r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"7","lastUpdated":"2024-01-01T00:00:00Z"}}"#;
    store_file(d, target("job-1", "All.1.ndjson", FileKind::Output), &first).await;
    let o2 = t.get(EHR, "Observation", "o2").await.unwrap().expect("o2 stored");
    assert_eq!(o2.last_updated.as_deref(), Some("2024-01-04T23:00:00.000000Z"), "kept in UTC");
    assert_eq!((o2.job.as_str(), o2.file.as_str()), ("job-1", "All.1.ndjson"));
    assert_eq!(value(t, EHR, "o3").await, Some(3), "the newer line of a file wins");
    // Whichever comes first: here the older line, then the newer (another provider's rows).
    let later = FileTarget { provider: "ehr-3", ..target("job-8", "Observation.1.ndjson", FileKind::Output) };
    store_file(d, later, &(obs("z1", "2023-01-01T00:00:00Z", 1) + &obs("z1", "2024-01-01T00:00:00Z", 2)))
        .await;
    assert_eq!(value(t, "ehr-3", "z1").await, Some(2), "the newer line wins in either order");
    let p1 = t.get(EHR, "Patient", "p1").await.unwrap().expect("p1 stored");
    assert_eq!(p1.version_id.as_deref(), Some("7"));

    // A later file: older versions do not replace newer ones; newer and equal ones do.
    let second = obs("o1", "2023-12-31T00:00:00Z", 10)
        + &obs("o2", "2024-02-01T00:00:00Z", 20)
        + &obs("o3", "2024-01-01T00:00:00Z", 33)
        + &obs("o4", "", 4);
    store_file(d, target("job-2", "Observation.1.ndjson", FileKind::Output), &second).await;
    assert_eq!(value(t, EHR, "o1").await, Some(1), "an older version is not stored");
    assert_eq!(value(t, EHR, "o2").await, Some(20), "a newer one is");
    assert_eq!(value(t, EHR, "o3").await, Some(33), "an equal one too (a replay changes nothing)");
    assert_eq!(value(t, EHR, "o4").await, Some(4));
    // A version without lastUpdated counts as oldest: it replaces only another without.
    let undated = obs("o2", "", 200) + &obs("o4", "", 40);
    store_file(d, target("job-2", "Observation.2.ndjson", FileKind::Output), &undated).await;
    assert_eq!((value(t, EHR, "o2").await, value(t, EHR, "o4").await), (Some(20), Some(40)));
    // Another provider's resources are its own rows.
    let other = FileTarget { provider: "ehr-2", ..target("job-9", "Observation.1.ndjson", FileKind::Output) };
    store_file(d, other, &obs("o1", "2020-01-01T00:00:00Z", 99)).await;
    assert_eq!((value(t, EHR, "o1").await, value(t, "ehr-2", "o1").await), (Some(1), Some(99)));

    // deleted[]: a deletion without a time removes a row an earlier job brought, not one this
    // job brought (made again since); with a time, not a row changed after it.
    let gone = deletion(&[("Observation/o1", None), ("Observation/o2", Some("2024-01-15T00:00:00Z"))])
        + &deletion(&[
            ("https://ehr.example/fhir/Observation/o4/_history/2", None),
            ("Patient/p1", Some("2024-03-01T00:00:00Z")),
        ]);
    store_file(d, target("job-2", "Bundle.1.ndjson", FileKind::Deleted), &gone).await;
    assert_eq!(value(t, EHR, "o1").await, None, "deleted");
    assert_eq!(value(t, EHR, "o2").await, Some(20), "changed after its deletion: kept");
    assert_eq!(value(t, EHR, "o4").await, Some(40), "brought by the deleting job itself: kept");
    assert!(t.get(EHR, "Patient", "p1").await.unwrap().is_none(), "deleted after its last change");
    let counts = t.counts().await.unwrap();
    assert_eq!(count(&counts, EHR, "Observation"), 3, "{counts:?}");
    assert_eq!((count(&counts, EHR, "Patient"), count(&counts, "ehr-2", "Observation")), (0, 1));

    // A long file is stored batch by batch; each batch is a durable point. Broken off after
    // one, what committed stays and the rest does not; reopened there, it goes on.
    let lines = 2 * BATCH_ROWS + 5;
    let long: String = (0..lines).map(|n| obs(&format!("b{n}"), "2024-01-01T00:00:00Z", n as i64)).collect();
    let body = long.as_bytes();
    let t3 = target("job-3", "Observation.2.ndjson", FileKind::Output);
    let mut w = d.open(t3).await.unwrap();
    let half = body.len() * 3 / 4;
    let saved = feed(&mut w, &body[..half], 0, 4096).await;
    assert!(!saved.is_empty(), "a batch became a durable point");
    let at = *saved.last().unwrap();
    assert_eq!(body[at as usize - 1], b'\n', "at a line end");
    w.abort().await.unwrap();
    let stored_then = count(&t.counts().await.unwrap(), EHR, "Observation") - 3;
    let whole_lines = body[..at as usize].iter().filter(|b| **b == b'\n').count() as i64;
    assert_eq!(stored_then, whole_lines, "exactly the committed batches' lines");
    // A checkpoint another destination left (DESTINATION_TYPE changed) is not the store's.
    let foreign = bulk_import::destination::Saved { bytes: at, state: String::new() };
    assert!(d.reopen(t3, &foreign).await.unwrap().is_none(), "the file starts over");
    let point = bulk_import::destination::Saved { bytes: at, state: "resource-store/1".into() };
    let mut w = d.reopen(t3, &point).await.unwrap().expect("goes on from a durable point");
    feed(&mut w, body, at as usize, 4096).await;
    let receipt = w.finish(0).await.unwrap();
    assert_eq!(receipt.bytes, body.len() as u64);
    assert_eq!(count(&t.counts().await.unwrap(), EHR, "Observation"), 3 + lines as i64);
    assert_eq!(value(t, EHR, &format!("b{}", lines - 1)).await, Some(lines as i64 - 1));

    // Removal: a withdrawn file's rows go; an expired or failed job keeps its rows (they outlive
    // its files); a withdrawn (stopped) job's rows go.
    d.delete_file("job-3", "Observation.2.ndjson").await.unwrap();
    assert_eq!(count(&t.counts().await.unwrap(), EHR, "Observation"), 3);
    d.delete_job("job-2", Removal::Expired).await.unwrap();
    d.delete_job("job-2", Removal::Failed).await.unwrap();
    assert_eq!(value(t, EHR, "o2").await, Some(20));
    d.delete_job("job-2", Removal::Withdrawn).await.unwrap();
    assert_eq!((value(t, EHR, "o2").await, value(t, EHR, "o3").await), (None, None));
    assert_eq!(count(&t.counts().await.unwrap(), EHR, "Observation"), 0);
    assert_eq!(value(t, "ehr-2", "o1").await, Some(99), "another job's rows stay");
}

#[tokio::test]
async fn sqlite_passes_the_resource_store_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resources.sqlite");
    let tables = resource_store::open(&StoreUrl::Sqlite(path.clone())).await.expect("opens");
    assert_resource_store_conformance(tables).await;
    // Health data: the file is the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    resource_store::open(&StoreUrl::Sqlite(path)).await.expect("opens again over its table");
}

/// The job of a registration's latest pull, once it has one other than `not`.
async fn latest_pull(app: &super::helpers::TestApp, client_id: &str, not: Option<&str>) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let sources = app.admin_get("/admin/sync").await;
        let job = sources["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["client_id"] == client_id)
            .and_then(|s| s["last_job_id"].as_str().map(str::to_string));
        if let Some(job) = job.filter(|j| Some(j.as_str()) != not) {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "no pull finished: {sources}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// What an analyst runs (docs/resource-store.md): the current Observations of one provider.
async fn current_observations(path: &std::path::Path, provider: &str) -> Vec<(String, i64)> {
    use sqlx::Connection;
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query_as(
        "SELECT id, json_extract(resource, '$.valueInteger') FROM fhir_resources
         WHERE provider = ? AND resource_type = 'Observation' ORDER BY id",
    )
    .bind(provider)
    .fetch_all(&mut db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_provider_synced_on_a_schedule_then_on_request_keeps_its_current_resources_in_the_store() {
    use bulk_import::destination::DestinationKind;
    let app = super::helpers::spawn_app_with(|c| {
        c.sync_check_interval = std::time::Duration::from_millis(50);
        let store = StoreUrl::Sqlite(c.data_dir.join("resources.sqlite"));
        c.destination =
            DestinationKind::Several(vec![DestinationKind::TmpFs, DestinationKind::ResourceStore(store)]);
    })
    .await;
    let db = app.dir.join("data/resources.sqlite");
    // What the provider holds at its first export (transactionTime 2026-01-01): o3 twice, the
    // older version in the later file.
    let older = "2025-12-20T00:00:00Z";
    app.provider.add_changes(
        "obs-a.ndjson",
        "Observation",
        obs("o1", "2025-12-01T00:00:00Z", 1) + &obs("o2", "2025-12-01T00:00:00Z", 2) + &obs("o3", older, 3),
        older,
    );
    app.provider.add_changes(
        "obs-b.ndjson",
        "Observation",
        obs("o3", "2025-12-10T00:00:00Z", 30) + &obs("o4", "2025-12-01T00:00:00Z", 4),
        older,
    );
    let res = app
        .register(&serde_json::json!({"jwks": app.public_jwks(), "consumer_client_id": "consumer-at-fake",
            "aud": app.provider.base(), "sync": {"export_url": app.provider.export_url(), "every_seconds": 3600}}))
        .await;
    assert_eq!(res.status(), 200);
    let client_id = res.json::<serde_json::Value>().await.unwrap()["client_id"].as_str().unwrap().to_string();

    // The scheduled first pull: everything, the newer o3 kept.
    let first = latest_pull(&app, &client_id, None).await;
    app.completed(&first).await;
    let expected = |v: &[(&str, i64)]| v.iter().map(|(id, n)| (id.to_string(), *n)).collect::<Vec<_>>();
    assert_eq!(
        current_observations(&db, &client_id).await,
        expected(&[("o1", 1), ("o2", 2), ("o3", 3), ("o4", 4)])
    );

    // Since then: o1 changed, o5 is new, o2 was deleted.
    app.provider.set_transaction_time("2026-02-01T00:00:00Z");
    app.provider.add_changes(
        "obs-c.ndjson",
        "Observation",
        obs("o1", "2026-01-10T00:00:00Z", 10) + &obs("o5", "2026-01-10T00:00:00Z", 5),
        "2026-01-10T00:00:00Z",
    );
    app.provider.add_changes(
        "gone.ndjson",
        "Bundle",
        deletion(&[("Observation/o2", None)]),
        "2026-01-12T00:00:00Z",
    );
    let res = app.sync_now(&client_id).await;
    assert_eq!(res.status(), 202);
    let second = res.json::<serde_json::Value>().await.unwrap()["job_id"].as_str().unwrap().to_string();
    app.completed(&second).await;
    // Only the changes were pulled: the first files were fetched once each.
    let kickoffs = app.provider.requests_to("/fhir/$export");
    assert_eq!(kickoffs.len(), 2);
    assert!(kickoffs[1].body.contains("2026-01-01T00:00:00Z"), "_since: {}", kickoffs[1].body);
    assert_eq!(app.provider.requests_to("/fhir/files/obs-a.ndjson").len(), 1);
    assert_eq!(app.provider.requests_to("/fhir/files/obs-c.ndjson").len(), 1);
    assert_eq!(
        current_observations(&db, &client_id).await,
        expected(&[("o1", 10), ("o3", 3), ("o4", 4), ("o5", 5)])
    );
    // Each file also went to the other destination.
    assert_eq!(
        app.read(&second, "Observation.1.ndjson"),
        obs("o1", "2026-01-10T00:00:00Z", 10) + &obs("o5", "2026-01-10T00:00:00Z", 5)
    );
    // Counts per type per provider, for operators.
    let counts = app.admin_get("/admin/resources").await;
    let listed = counts["resources"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{counts}");
    assert_eq!(
        (listed[0]["provider"].as_str(), listed[0]["resourceType"].as_str()),
        (Some(client_id.as_str()), Some("Observation"))
    );
    assert_eq!(listed[0]["count"], 4);
    assert!(counts["store"].as_str().unwrap().starts_with("SQLite"), "{counts}");
    // And in /metrics: rows written (3 + 2, then 2) and deleted (1), batches timed.
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"bulk_import_resource_store_rows_total{kind="written"} 7"#), "{metrics}");
    assert!(metrics.contains(r#"bulk_import_resource_store_rows_total{kind="deleted"} 1"#), "{metrics}");
    assert!(metrics.contains("bulk_import_resource_store_batch_seconds_count 4"), "{metrics}");
}

#[tokio::test]
async fn without_a_resource_store_its_counts_are_not_found() {
    let app = super::helpers::spawn_app().await;
    let res = app
        .http
        .get(format!("{}/admin/resources", app.base))
        .bearer_auth(super::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.text().await.unwrap().contains("DESTINATION_TYPE"));
}

#[tokio::test]
async fn with_several_destinations_a_failing_one_is_named_and_what_the_others_committed_is_told() {
    use bulk_import::destination::DestinationKind;
    let s3 = super::s3_server::S3Server::start_failing_parts().await;
    let config = s3.config(5 * 1024 * 1024);
    let app = super::helpers::spawn_app_with(|c| {
        let store = StoreUrl::Sqlite(c.data_dir.join("resources.sqlite"));
        c.destination = DestinationKind::Several(vec![
            DestinationKind::ResourceStore(store),
            DestinationKind::S3(config),
        ]);
        c.limits.parallel_downloads = 1;
    })
    .await;
    app.provider.set_chunk_size(64 * 1024);
    // A small file (stored in both), then a large one whose second S3 part fails.
    app.provider.add_file("small.ndjson", "Observation", super::helpers::observations(100));
    app.provider.add_file("big.ndjson", "Observation", super::helpers::observations(60_000));
    let job = app.start_import(&app.provider.manifest_url(), "static").await;
    let failure = app.failed(&job).await;
    assert!(failure.contains("s3: the S3 destination failed"), "the failing destination is named: {failure}");
    let objects: Vec<String> =
        s3.all_files().into_iter().filter(|f| f.contains(&job) && !f.contains(".upload")).collect();
    assert_eq!(objects, Vec::<String>::new(), "the failed job's objects went");
    assert_eq!(s3.open_uploads(), Vec::<String>::new(), "and its upload was aborted");
    // The store keeps what it committed: each row is the provider's own version.
    let counts = app.admin_get("/admin/resources").await;
    assert!(counts["resources"][0]["count"].as_i64().unwrap() >= 100, "{counts}");
}

#[tokio::test]
async fn a_file_the_store_cannot_keep_fails_alone_and_the_job_goes_on() {
    use bulk_import::destination::DestinationKind;
    let app = super::helpers::spawn_app_with(|c| {
        c.destination = DestinationKind::ResourceStore(StoreUrl::Sqlite(c.data_dir.join("resources.sqlite")));
    })
    .await;
    app.provider.add_file("good.ndjson", "Observation", obs("o1", "", 1) + &obs("o2", "", 2));
    // Valid JSON with an id, but not a FHIR id: nothing to key a row by.
    app.provider.add_file("odd.ndjson", "Observation", obs("o3", "", 3) + &obs("has space", "", 4));
    let job = app.start_import(&app.provider.manifest_url(), "static").await;
    let done = app.completed(&job).await;
    assert_eq!(done["extension"]["result"], "completed-with-errors", "{done}");
    let outcomes = app.get_outcomes(&job).await;
    let text = serde_json::to_string(&outcomes).unwrap();
    assert!(text.contains("not a FHIR id"), "the file's outcome says why: {text}");
    let counts = app.admin_get("/admin/resources").await;
    assert!(counts["resources"][0]["count"].as_i64().unwrap() >= 2, "{counts}");
}

#[tokio::test]
async fn an_organize_output_by_file_stores_its_resources_of_every_type_and_not_its_header_lines() {
    use bulk_import::destination::DestinationKind;
    let app = super::helpers::spawn_app_with(|c| {
        c.destination = DestinationKind::ResourceStore(StoreUrl::Sqlite(c.data_dir.join("resources.sqlite")));
    })
    .await;
    // As the reference provider writes it (v3): entries without a type, each stratum opened by a
    // Parameters header line, then resources of any type.
    app.provider.untyped_entries();
    let header = |p: &str| {
        format!(
            r#"{{"resourceType":"Parameters","parameter":[{{"name":"header","valueReference":{{"reference":"Patient/{p}"}}}}]}}"#
        ) + "\n"
    };
    let patient = |p: &str| format!(r#"{{"resourceType":"Patient","id":"{p}"}}"#) + "\n";
    let body =
        header("a") + &patient("a") + &obs("oa", "", 1) + &header("b") + &patient("b") + &obs("ob", "", 2);
    app.provider.add_file("stratified.ndjson", "", body);
    let job = app.start_import(&app.provider.manifest_url(), "static").await;
    let done = app.completed(&job).await;
    assert_eq!(done["extension"]["result"], "completed", "{done}");
    let counts = app.admin_get("/admin/resources").await;
    let listed: Vec<(String, i64)> = counts["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["resourceType"].as_str().unwrap().to_string(), c["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(listed, vec![("Observation".to_string(), 2), ("Patient".to_string(), 2)], "{counts}");
}
