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
    // That ping asked only for changes since 2025: it does not cover the source, so the next
    // pull of it still starts from the beginning.
    assert!(typed["since"].is_null(), "{typed}");
    // Deleting the jobs does not forget what their exports came to.
    for id in [&first, &second, &third] {
        assert_eq!(app.delete_job(id).await.status(), 202);
    }
    assert_eq!(app.admin_get("/admin/sync").await["sources"].as_array().unwrap().len(), 2);
}

/// The kick-offs the fake provider received, as their Parameters.
fn kickoffs(app: &TestApp) -> Vec<Value> {
    let sent = app.provider.requests_to("/fhir/$export");
    sent.iter().map(|r| serde_json::from_str(&r.body).unwrap_or(Value::Null)).collect()
}

fn param<'a>(kickoff: &'a Value, name: &str) -> Option<&'a str> {
    let params = kickoff["parameter"].as_array()?;
    params
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p.as_object()?.iter().find(|(k, _)| k.starts_with("value"))?.1.as_str())
}

#[tokio::test]
async fn a_sync_plan_pulls_at_once_then_on_request_from_where_the_last_whole_import_ended() {
    let app = super::helpers::spawn_app_with(|c| c.sync_check_interval = Duration::from_millis(50)).await;
    app.provider.add_file("p.ndjson", "Patient", patients(5));
    // Plans are checked: their export must be the provider's, their interval sensible.
    for (plan, why) in [
        (json!({"export_url": "https://elsewhere.example/fhir/$export"}), "sync.export_url"),
        (json!({"export_url": app.provider.export_url(), "every_seconds": 0}), "every_seconds"),
        (json!({"export_url": app.provider.export_url(), "type": "Patient;drop"}), "sync.type"),
        (json!({"export_url": app.provider.export_url(), "every": 5}), "every"),
    ] {
        let res = app
            .register(&json!({"jwks": app.public_jwks(), "consumer_client_id": "consumer-at-fake",
            "aud": app.provider.base(), "sync": plan}))
            .await;
        assert_eq!(res.status(), 400);
        let text = res.text().await.unwrap();
        assert!(text.contains(why), "{why}: {text}");
    }
    let res = app
        .register(&json!({"jwks": app.public_jwks(), "consumer_client_id": "consumer-at-fake", "aud": app.provider.base(),
            "sync": {"export_url": app.provider.export_url(), "type": "Patient", "every_seconds": 3600}}))
        .await;
    assert_eq!(res.status(), 200);
    let client_id = res.json::<Value>().await.unwrap()["client_id"].as_str().unwrap().to_string();

    // Due at once: the first pull asks for everything of its types.
    let deadline = Instant::now() + Duration::from_secs(20);
    while kickoffs(&app).is_empty() {
        assert!(Instant::now() < deadline, "the scheduled pull never kicked off");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = &kickoffs(&app)[0];
    assert_eq!((param(first, "_type"), param(first, "_since")), (Some("Patient"), None), "{first}");
    let sources = app.admin_get("/admin/sync").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sources = sources;
    while sources["sources"].as_array().unwrap().iter().all(|s| s["client_id"] != client_id.as_str()) {
        assert!(Instant::now() < deadline, "the scheduled pull never finished: {sources}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        sources = app.admin_get("/admin/sync").await;
    }

    // Asked for now: from where that one ended.
    let res = app.sync_now(&client_id).await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    let job = answer["job_id"].as_str().unwrap().to_string();
    assert_eq!(answer["status_url"], format!("{}/job/{job}", app.base));
    app.completed(&job).await;
    let all = kickoffs(&app);
    assert_eq!(all.len(), 2, "the schedule did not pull again within its interval: {all:?}");
    assert_eq!(param(&all[1], "_since"), Some("2026-01-01T00:00:00Z"), "{}", all[1]);
    assert_eq!(app.read(&job, "Patient.1.ndjson"), patients(5));

    // Without a plan, or for nobody, it says so.
    let res = app.sync_now(&app.client_id).await;
    assert_eq!(res.status(), 409);
    assert!(res.text().await.unwrap().contains("no sync plan"));
    let res = app.sync_now("nobody").await;
    assert_eq!(res.status(), 404);
    // The registration shows its plan and when its next pull is due (an hour on).
    let reg = app.admin_get(&format!("/auth/registrations/{client_id}")).await;
    assert_eq!(reg["sync"]["every_secs"], 3600, "{reg}");
    let next = reg["sync_next_at"].as_i64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now + 3500..=now + 3600).contains(&next), "{next} vs {now}");
}

#[tokio::test]
async fn a_scheduled_pull_that_finds_no_room_starts_once_there_is_some_not_an_interval_later() {
    let app = super::helpers::spawn_app_with(|c| {
        c.sync_check_interval = Duration::from_millis(50);
        c.limits.max_concurrent_jobs = 1;
    })
    .await;
    // A ping's job holds the only slot while its file is held.
    app.provider.add_file("p.ndjson", "Patient", patients(3));
    app.provider.hold_file("p.ndjson");
    let ping = app.start_import(&app.provider.manifest_url(), "static").await;
    let res = app
        .register(&json!({"jwks": app.public_jwks(), "consumer_client_id": "consumer-at-fake", "aud": app.provider.base(),
            "sync": {"export_url": app.provider.export_url(), "every_seconds": 3600}}))
        .await;
    assert_eq!(res.status(), 200);
    let client_id = res.json::<Value>().await.unwrap()["client_id"].as_str().unwrap().to_string();
    // Due at once, but no room: it is claimed (its next time moved on), finds no room, and is set
    // to be tried at the next look, not an hour on.
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let registered_due =
        app.admin_get(&format!("/auth/registrations/{client_id}")).await["sync_next_at"].as_i64();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reg = app.admin_get(&format!("/auth/registrations/{client_id}")).await;
        let next = reg["sync_next_at"].as_i64();
        if next > registered_due && next.is_some_and(|n| n <= now() + 5) {
            break;
        }
        assert!(Instant::now() < deadline, "the busy pull was not set to be tried again soon: {reg}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(kickoffs(&app).is_empty(), "no room: not started");
    app.provider.release_files();
    app.completed(&ping).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while kickoffs(&app).is_empty() {
        assert!(Instant::now() < deadline, "the pull never started once there was room");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reg = app.admin_get(&format!("/auth/registrations/{client_id}")).await;
    let next = reg["sync_next_at"].as_i64().unwrap();
    let now = now();
    assert!(
        (now + 3500..=now + 3600).contains(&next),
        "the next one an interval after it started: {next} vs {now}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_for_a_pull_at_once_start_one() {
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(3));
    app.provider.hold_file("p.ndjson");
    let res = app
        .register(&json!({"jwks": app.public_jwks(), "consumer_client_id": "consumer-at-fake", "aud": app.provider.base(),
            "sync": {"export_url": app.provider.export_url()}}))
        .await;
    let client_id = res.json::<Value>().await.unwrap()["client_id"].as_str().unwrap().to_string();
    let (a, b) = tokio::join!(app.sync_now(&client_id), app.sync_now(&client_id));
    let mut codes = [a.status().as_u16(), b.status().as_u16()];
    codes.sort();
    assert_eq!(codes, [202, 409], "one started, the other was told one runs");
    let started = if a.status() == 202 { a } else { b };
    let job = started.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().to_string();
    app.provider.release_files();
    app.completed(&job).await;
    assert_eq!(kickoffs(&app).len(), 1);
}
