//! Incremental sync's memory against the real server: each export of each provider keeps how its
//! last job ended and where its next pull may start (`transactionTime` of its last whole import).
use serde_json::{json, Value};

use std::time::{Duration, Instant};

use super::helpers::{observations, patients, spawn_app, TestApp};

/// The sync states once job `id`'s ending is among them (it is kept just after the job ends).
async fn synced(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sources = app.admin_get("/admin/sync").await;
        let all = sources["sources"].as_array().cloned().unwrap_or_default();
        if all.iter().any(|s| s["last_job_id"] == id) {
            return sources;
        }
        assert!(Instant::now() < deadline, "job {id} never reached its sync state: {sources}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn source<'a>(sources: &'a Value, types: Option<&str>) -> &'a Value {
    let all = sources["sources"].as_array().unwrap();
    all.iter()
        .find(|s| s["types"].as_str() == types)
        .unwrap_or_else(|| panic!("no source {types:?}: {sources}"))
}

#[tokio::test]
async fn each_export_keeps_its_last_result_and_moves_its_next_pull_only_on_a_whole_import() {
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(4));
    let manifest = app.provider.manifest_url();
    let first = app.start_import(&manifest, "static").await;
    app.completed(&first).await;
    let sources = synced(&app, &first).await;
    let s = source(&sources, None);
    assert_eq!(s["export_url"], manifest.as_str());
    assert_eq!(
        (s["last_result"].as_str(), s["last_job_id"].as_str()),
        (Some("completed"), Some(first.as_str()))
    );
    assert_eq!(s["since"], "2026-01-01T00:00:00Z", "the manifest's transactionTime: {s}");
    assert_eq!((s["files"].as_i64(), s["resources"].as_i64()), (Some(1), Some(4)));

    // A partial import (a file fails) is its last result, but the next pull still starts where the
    // last whole one ended: the failed file's data would be skipped otherwise.
    app.provider.add_file("bad.ndjson", "Patient", "{\"resourceType\":\"Patient\"\n");
    let second = app.start_import(&manifest, "static").await;
    app.completed(&second).await;
    let sources = synced(&app, &second).await;
    let s = source(&sources, None);
    assert_eq!(s["last_result"], "completed-with-errors", "{s}");
    assert_eq!((s["failed_files"].as_i64(), s["last_job_id"].as_str()), (Some(1), Some(second.as_str())));
    assert_eq!(s["since"], "2026-01-01T00:00:00Z");
    assert!(s["last_success_at"].is_string());

    // Another _type of the same export is another source; a ping's own _since is not part of it.
    app.provider.add_file("o.ndjson", "Observation", observations(3));
    let res = app
        .post_import(&json!({"resourceType": "Parameters", "parameter": [
            {"name": "exportUrl", "valueUrl": app.provider.export_url()},
            {"name": "_type", "valueString": "Patient,Observation"},
            {"name": "_since", "valueInstant": "2025-01-01T00:00:00Z"}]}))
        .await;
    assert_eq!(res.status(), 202);
    let third = res.headers()["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    app.completed(&third).await;
    let sources = synced(&app, &third).await;
    assert_eq!(sources["sources"].as_array().unwrap().len(), 2, "{sources}");
    let typed = source(&sources, Some("Observation,Patient"));
    assert_eq!(typed["export_url"], app.provider.export_url().as_str());
    assert_eq!(typed["last_job_id"], third.as_str());
    // Deleting the jobs does not forget what their exports came to.
    for id in [&first, &second, &third] {
        assert_eq!(app.delete_job(id).await.status(), 202);
    }
    assert_eq!(app.admin_get("/admin/sync").await["sources"].as_array().unwrap().len(), 2);
}
