//! `GET /admin/jobs` and `GET /admin/jobs/{id}`: the admin credential, and what a person sees of
//! a finished static import (totals, provider, per-file outcomes) and of a running one.
use reqwest::Response;
use serde_json::Value;

use super::{
    fake_provider::{FakeFile, StatusStep},
    helpers::{observations, patients, spawn_app, TestApp, ADMIN_TOKEN},
};

async fn admin_get(app: &TestApp, path: &str, token: Option<&str>) -> Response {
    let mut req = app.http.get(format!("{}{path}", app.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn admin_json(app: &TestApp, path: &str) -> Value {
    let res = admin_get(app, path, Some(ADMIN_TOKEN)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    res.json().await.unwrap()
}

#[tokio::test]
async fn the_dashboard_endpoints_refuse_requests_without_the_admin_credential() {
    // Arrange
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let paths = ["/admin/jobs".to_string(), format!("/admin/jobs/{id}")];
    for path in &paths {
        for token in [None, Some("not-the-admin-token")] {
            // Act
            let res = admin_get(&app, path, token).await;
            // Assert
            assert_eq!(res.status(), 401, "{path} with {token:?}");
            assert_eq!(res.headers()["www-authenticate"], "Bearer");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"], "invalid_token");
            assert!(body["error_description"].as_str().unwrap().contains("admin credential"));
        }
    }
}

#[tokio::test]
async fn the_dashboard_shows_a_finished_static_import_with_totals_and_per_file_outcomes() {
    // Arrange
    let app = spawn_app().await;
    let obs = observations(5);
    let pats = patients(3);
    app.provider.add_file("o.ndjson", "Observation", obs.clone());
    app.provider.add_file("p.ndjson", "Patient", pats.clone());
    app.provider.push_file(FakeFile { missing: true, ..FakeFile::new("gone.ndjson", "Patient", "") });
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    assert_eq!(app.wait_for_job(&id).await.status(), 200);

    // Act
    let list = admin_json(&app, "/admin/jobs").await;
    let detail = admin_json(&app, &format!("/admin/jobs/{id}")).await;

    // Assert: the listing and the job page agree on the job's summary.
    let jobs = list["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    for (key, value) in job.as_object().unwrap() {
        assert_eq!(&detail[key], value, "{key}");
    }
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["client_id"], app.client_id.as_str());
    assert_eq!(job["provider_aud"], app.provider.base());
    assert_eq!(job["export_type"], "static");
    assert_eq!(job["export_url"], app.provider.manifest_url());
    // One file failed: the import is partial and must not look like a clean one.
    assert_eq!(job["state"], "completed-with-errors");
    assert_eq!(job["provider_errors"], 0);
    assert_eq!(job["progress_percent"], 100.0);
    assert_eq!(job["files_finished"], 3);
    assert_eq!(job["files_total"], 3);
    assert_eq!(job["files_failed"], 1);
    assert_eq!(job["resources"], 8);
    assert_eq!(job["bytes"], (obs.len() + pats.len()) as u64);
    assert_eq!(job["failure"], Value::Null);
    for key in ["created_at", "finished_at"] {
        let t = job[key].as_str().unwrap();
        assert!(t.ends_with('Z') && t.contains('T'), "{key}: {t}");
    }

    let files = detail["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    let by_url = |name: &str| {
        let url = format!("{}/files/{name}", app.provider.base());
        files.iter().find(|f| f["url"] == url.as_str()).unwrap_or_else(|| panic!("{name} listed")).clone()
    };
    let o = by_url("o.ndjson");
    assert_eq!((o["resource_type"].as_str(), o["state"].as_str()), (Some("Observation"), Some("done")));
    assert_eq!((o["resources"].as_i64(), o["bytes"].as_u64()), (Some(5), Some(obs.len() as u64)));
    assert!(o["name"].as_str().unwrap().ends_with(".ndjson"));
    assert!(o["diagnostics"].as_str().unwrap().contains("5 resources"), "{}", o["diagnostics"]);
    let gone = by_url("gone.ndjson");
    assert_eq!((gone["state"].as_str(), gone["resources"].as_i64()), (Some("failed"), Some(0)));
    assert!(gone["diagnostics"].as_str().unwrap().contains("404"), "{}", gone["diagnostics"]);
}

#[tokio::test]
async fn a_running_import_shows_its_state_and_the_providers_progress() {
    // Arrange
    let app = spawn_app().await;
    app.provider.script_status(vec![StatusStep::Pending(Some(1)); 50]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);

    // Act: poll until the provider's progress text arrives.
    let job = loop {
        let job = admin_json(&app, &format!("/admin/jobs/{id}")).await;
        if job["status_text"].as_str().is_some_and(|t| t.contains("50% done")) {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "no provider progress: {job}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };

    // Assert
    assert_eq!(job["state"], "exporting");
    assert_eq!(job["export_type"], "dynamic");
    assert_eq!(job["progress_percent"], 0.0);
    assert_eq!(job["finished_at"], Value::Null);
    assert_eq!(job["files"], Value::Array(vec![]));
}

#[tokio::test]
async fn an_unknown_or_malformed_job_id_is_a_404() {
    let app = spawn_app().await;
    let too_long = "a".repeat(129);
    for id in ["0123456789abcdef0123456789abcdef", "not-hex", too_long.as_str()] {
        let res = admin_get(&app, &format!("/admin/jobs/{id}"), Some(ADMIN_TOKEN)).await;
        assert_eq!(res.status(), 404, "{id}");
        assert_eq!(res.json::<Value>().await.unwrap()["error"], "not_found");
    }
}

#[tokio::test]
async fn a_job_page_brings_one_page_of_files_with_totals_over_all_of_them() {
    // Arrange: 250 files of two types, one of them failing.
    let app = spawn_app().await;
    app.provider.set_chunk_size(64 * 1024);
    for n in 0..200 {
        app.provider.add_file(&format!("o{n}.ndjson"), "Observation", observations(2));
    }
    for n in 0..49 {
        app.provider.add_file(&format!("p{n}.ndjson"), "Patient", patients(1));
    }
    app.provider.push_file(FakeFile { missing: true, ..FakeFile::new("gone.ndjson", "Patient", "") });
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&id).await;

    // Act
    let first = admin_json(&app, &format!("/admin/jobs/{id}")).await;
    let last = admin_json(&app, &format!("/admin/jobs/{id}?offset=200&limit=100")).await;

    // Assert: a page of 100 by default, the rest on the next pages; totals over all 250.
    assert_eq!(first["files"].as_array().unwrap().len(), 100);
    assert_eq!(first["files"][0]["index"], 0);
    assert_eq!(first["files_page"], serde_json::json!({"offset": 0, "limit": 100, "total": 250}));
    let tail = last["files"].as_array().unwrap();
    assert_eq!((tail.len(), tail[0]["index"].as_i64()), (50, Some(200)));
    assert_eq!(tail[49]["state"], "failed");
    let types = first["types"].as_array().unwrap();
    let of = |t: &str| types.iter().find(|x| x["resource_type"] == t).unwrap().clone();
    assert_eq!(
        (of("Observation")["files"].as_i64(), of("Observation")["resources"].as_i64()),
        (Some(200), Some(400))
    );
    assert_eq!((of("Patient")["files"].as_i64(), of("Patient")["files_done"].as_i64()), (Some(50), Some(49)));
    assert_eq!(first["files_total"], 250);
    // A page past the end is empty, not an error; a page is at most 1,000 files.
    let beyond = admin_json(&app, &format!("/admin/jobs/{id}?offset=5000")).await;
    assert_eq!(beyond["files"], Value::Array(vec![]));
    let big = admin_json(&app, &format!("/admin/jobs/{id}?limit=100000")).await;
    assert_eq!(big["files_page"]["limit"], 1000);
}
