//! Status, outcome, DELETE, the reaper and restarts.
use std::time::Duration;

use serde_json::Value;

use super::{
    fake_provider::StatusStep,
    helpers::{observations, spawn_app, spawn_app_with, start, test_config, wait_until},
};

#[tokio::test]
async fn an_unknown_job_is_a_404_operation_outcome() {
    let app = spawn_app().await;
    for id in ["0123456789abcdef0123456789abcdef", "not-a-hex-id", "%2e%2e%2fetc"] {
        let res = app.get_job(id).await;
        assert_eq!(res.status(), 404);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome");
    }
    assert_eq!(app.delete_job("0123456789abcdef0123456789abcdef").await.status(), 404);
}

#[tokio::test]
async fn a_running_job_answers_202_with_progress_and_no_store() {
    let app = spawn_app().await;
    app.provider.script_status(vec![StatusStep::Pending(Some(1)); 50]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    assert_eq!(id.len(), 32, "128-bit ids");
    let res = app.get_job(&id).await;
    assert_eq!(res.status(), 202);
    assert!(res.headers()["x-progress"].to_str().unwrap().parse::<f64>().is_ok());
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(res.headers()["cache-control"], "no-store");
    // The provider's progress reaches the status.
    wait_until("provider progress", async || {
        app.get_job(&id)
            .await
            .headers()
            .get("x-status")
            .is_some_and(|v| v.to_str().unwrap().contains("50% done"))
    })
    .await;
}

#[tokio::test]
async fn a_running_import_counts_its_finished_files_while_others_still_download() {
    let app = spawn_app().await;
    app.provider.add_file("a.ndjson", "Observation", observations(3));
    app.provider.add_file("b.ndjson", "Observation", observations(3));
    app.provider.hold_file("b.ndjson");
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let status = async || {
        let res = app.get_job(&id).await;
        let text = res.headers().get("x-status").map(|v| v.to_str().unwrap().to_string());
        (res.status(), text, res.headers().get("x-progress").map(|v| v.to_str().unwrap().to_string()))
    };
    // The text goes on with what arrived so far ("; … received so far").
    wait_until("one of two files done", async || {
        status().await.1.is_some_and(|t| t.starts_with("importing: 1 of 2 files done; "))
    })
    .await;
    let (code, text, percent) = status().await;
    assert_eq!((code, percent), (reqwest::StatusCode::ACCEPTED, Some("50".into())));
    assert!(text.unwrap().contains("and 3 resources received so far"), "the finished file's resources");
    app.provider.release_files();
    let done = app.wait_for_job(&id).await;
    assert_eq!(done.status(), 200);
    assert_eq!(done.json::<Value>().await.unwrap()["extension"]["files"], 2);
}

#[tokio::test]
async fn a_finished_job_reports_completed_while_the_provider_is_slow_to_release_its_export() {
    let app = spawn_app().await;
    app.provider.add_file("a.ndjson", "Observation", observations(2));
    app.provider.hold_release();
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let release = |r: &super::fake_provider::Recorded| r.method == reqwest::Method::DELETE;
    wait_until("the release DELETE", async || app.provider.requests_to("/fhir/status/").iter().any(release))
        .await;
    // The job is done in the store; its in-memory progress must not say otherwise.
    let res = app.get_job(&id).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["extension"]["files"], 1);
    app.provider.release_files();
}

#[tokio::test]
async fn delete_cancels_a_running_job_and_later_polls_are_404() {
    let app = spawn_app().await;
    app.provider.script_status(vec![StatusStep::Pending(Some(1)); 50]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    wait_until("kick-off", async || !app.provider.requests_to("/fhir/status/").is_empty()).await;
    let res = app.delete_job(&id).await;
    assert_eq!(res.status(), 202);
    assert_eq!(res.json::<Value>().await.unwrap()["resourceType"], "OperationOutcome");
    assert_eq!(app.get_job(&id).await.status(), 404);
    // The job stopped polling, and released the export at the provider.
    let gets = || {
        app.provider.requests_to("/fhir/status/").iter().filter(|r| r.method == reqwest::Method::GET).count()
    };
    let polls = gets();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gets(), polls);
    let released =
        app.provider.requests_to("/fhir/status/").iter().any(|r| r.method == reqwest::Method::DELETE);
    assert!(released, "the cancelled export was released");
}

#[tokio::test]
async fn delete_removes_a_finished_job_and_its_files() {
    let app = spawn_app().await;
    app.provider.add_file("o.ndjson", "Observation", observations(5));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    assert_eq!(app.wait_for_job(&id).await.status(), 200);
    assert!(app.jobs_dir(&id).exists());
    assert_eq!(app.delete_job(&id).await.status(), 202);
    assert!(!app.jobs_dir(&id).exists());
    assert_eq!(app.get_job(&id).await.status(), 404);
}

#[tokio::test]
async fn the_reaper_removes_finished_jobs_after_jobs_max_age() {
    let app = spawn_app_with(|c| {
        c.jobs_max_age = Duration::from_secs(1);
        c.reaper_interval = Duration::from_millis(200);
    })
    .await;
    app.provider.add_file("o.ndjson", "Observation", observations(5));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    assert_eq!(app.wait_for_job(&id).await.status(), 200);
    wait_until("the reaper", async || app.get_job(&id).await.status() == 404).await;
    assert!(!app.jobs_dir(&id).exists());
}

#[tokio::test]
async fn a_restart_resumes_a_job_without_a_second_kickoff_and_delete_works_after_restart() {
    let app = spawn_app().await;
    app.provider.script_status(vec![StatusStep::Pending(Some(1)); 3]);
    let obs = observations(30);
    app.provider.add_file("o.ndjson", "Observation", obs.clone());
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    wait_until("kick-off", async || !app.provider.requests_to("/fhir/status/").is_empty()).await;
    let base_before = app.base.clone();
    let (provider, dir, key, client_id, tmp) = app.stop().await;

    let mut app = start(test_config(&dir), provider, dir.clone()).await;
    app.provider_key = key;
    app.client_id = client_id;
    let _tmp = tmp;
    assert_ne!(app.base, base_before);
    let res = app.wait_for_job(&id).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(app.provider.requests_to("/fhir/$export").len(), 1, "no second kick-off");
    assert_eq!(std::fs::read_to_string(app.jobs_dir(&id).join("Observation.1.ndjson")).unwrap(), obs);
    // Registrations survived too: the provider can still get a token.
    let _ = app.token().await;
    assert_eq!(app.delete_job(&id).await.status(), 202);
    assert_eq!(app.get_job(&id).await.status(), 404);
}

#[tokio::test]
async fn the_reaper_removes_a_job_with_no_sign_of_life_past_twice_the_max_age() {
    let app = spawn_app_with(|c| {
        c.jobs_max_age = Duration::from_secs(1);
        c.reaper_interval = Duration::from_millis(200);
    })
    .await;
    // A job row no task runs for (as after a crash that lost it): silent since long ago.
    let config = test_config(&app.dir);
    let store = bulk_import::store::backend::Stores::open(&config.database).await.unwrap().jobs;
    let id = "00ff".repeat(8);
    let long_ago = bulk_import::time_util::now_unix() - 3600;
    store
        .insert_job_if_room(
            &bulk_import::domain::Job {
                id: id.clone(),
                client_id: app.client_id.clone(),
                export_type: bulk_import::fhir::parameters::ExportType::Dynamic,
                export_url: app.provider.export_url(),
                kickoff: vec![],
                state: bulk_import::domain::JobState::Exporting,
                status_url: None,
                progress: None,
                failure: None,
                created_at: long_ago,
                completed_at: None,
                plan_open: true,
            },
            bulk_import::domain::JobCaps { all: 1000, per_provider: 1000 },
        )
        .await
        .unwrap();
    assert_eq!(app.get_job(&id).await.status(), 202);
    wait_until("the reaper", async || app.get_job(&id).await.status() == 404).await;
}

#[tokio::test]
async fn a_long_running_job_that_is_alive_is_not_reaped() {
    let app = spawn_app_with(|c| {
        c.jobs_max_age = Duration::from_secs(1);
        c.reaper_interval = Duration::from_millis(200);
    })
    .await;
    app.provider.script_status(vec![StatusStep::Pending(Some(1)); 4]);
    app.provider.add_file("o.ndjson", "Observation", observations(3));
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    // Four seconds at the provider: twice the max age twice over, yet the job finishes.
    assert_eq!(app.wait_for_job(&id).await.status(), 200);
}

#[tokio::test]
async fn after_a_restart_mid_import_finished_files_are_not_downloaded_again() {
    let app = spawn_app_with(|c| c.limits.parallel_downloads = 1).await;
    let obs = observations(20);
    app.provider.add_file("a.ndjson", "Observation", obs.clone());
    app.provider.add_file("b.ndjson", "Observation", obs.clone());
    app.provider.hold_file("b.ndjson");
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    wait_until("the second file", async || !app.provider.requests_to("/fhir/files/b").is_empty()).await;
    let (provider, dir, key, client_id, tmp) = app.stop().await;
    provider.release_files();

    let mut app = start(test_config(&dir), provider, dir.clone()).await;
    app.provider_key = key;
    app.client_id = client_id;
    let _tmp = tmp;
    assert_eq!(app.wait_for_job(&id).await.status(), 200);
    assert_eq!(app.provider.requests_to("/fhir/files/a").len(), 1, "finished file fetched once");
    assert_eq!(app.provider.requests_to("/fhir/files/b").len(), 2, "interrupted file fetched again");
    assert_eq!(app.provider.requests_to("/fhir/manifest.json").len(), 1, "plan kept across the restart");
    for name in ["Observation.1.ndjson", "Observation.2.ndjson"] {
        assert_eq!(std::fs::read_to_string(app.jobs_dir(&id).join(name)).unwrap(), obs);
    }
    assert!(!app.jobs_dir(&id).join("Observation.2.ndjson.part").exists());
}

#[tokio::test]
async fn a_finished_job_says_until_when_its_files_are_kept() {
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", super::helpers::patients(2));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    let parse = |v: &Value| {
        time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let completed = parse(&body["extension"]["completedAt"]);
    let kept = parse(&body["extension"]["filesKeptUntil"]);
    assert_eq!((kept - completed).whole_seconds(), 24 * 3600, "JOBS_MAX_AGE defaults to a day: {body}");
    let page = app.admin_get(&format!("/admin/jobs/{id}")).await;
    assert_eq!(page["kept_until"], body["extension"]["filesKeptUntil"], "{page}");
}

#[tokio::test]
async fn a_long_file_shows_what_arrived_before_it_ends() {
    let app = spawn_app().await;
    app.provider.add_file("big.ndjson", "Observation", observations(2000));
    app.provider.fault_file("big.ndjson", vec![super::fake_provider::FileFault::StallHalfway(3000)]);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let mut seen = String::new();
    wait_until("progress before the file ends", async || {
        let res = app.get_job(&id).await;
        seen = res.headers().get("x-status").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        seen.contains("received so far") && !seen.contains(" 0 resources")
    })
    .await;
    assert!(seen.contains("0 of 1 files done"), "mid-file: {seen}");
    let page = app.admin_get(&format!("/admin/jobs/{id}")).await;
    let live = page["live"]["resources"].as_u64().expect("the job page shows it too");
    assert!(live > 0 && live < 2000, "{page}");
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["resources"], 2000);
}

#[tokio::test]
async fn announced_counts_move_the_percentage_within_a_file_and_give_an_eta_types_and_a_chart() {
    let app = spawn_app().await;
    app.provider.true_counts();
    app.provider.add_file("big.ndjson", "Observation", observations(2000));
    app.provider.add_file("p.ndjson", "Patient", super::helpers::patients(3));
    app.provider.hold_file("p.ndjson");
    app.provider.fault_file("big.ndjson", vec![super::fake_provider::FileFault::StallHalfway(1500)]);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let (mut percent, mut status) = (0.0, String::new());
    wait_until("the percentage moving before any file ends", async || {
        let res = app.get_job(&id).await;
        let header =
            |n: &str| res.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        percent = header("x-progress").parse().unwrap_or(0.0);
        status = header("x-status");
        percent > 0.0
    })
    .await;
    assert!(percent < 100.0 && status.contains("0 of 2 files done"), "{percent} {status}");
    assert!(status.contains("of 2003 announced") && status.contains("left"), "{status}");
    let page = app.admin_get(&format!("/admin/jobs/{id}")).await;
    assert_eq!(page["expected_resources"], 2003, "{page}");
    assert!(page["live"]["eta_secs"].as_f64().is_some(), "{page}");
    let big = &page["files"][0];
    assert_eq!(
        (big["state"].as_str(), big["expected_resources"].as_i64()),
        (Some("downloading"), Some(2000))
    );
    let so_far = big["resources"].as_i64().unwrap();
    assert!(so_far > 0 && so_far < 2000, "the file shows how far it got: {big}");
    let types = page["types"].as_array().unwrap();
    let observation = types.iter().find(|t| t["resource_type"] == "Observation").expect("per type");
    assert_eq!(
        (observation["expected_resources"].as_i64(), observation["files_done"].as_i64()),
        (Some(2000), Some(0))
    );
    assert_eq!(observation["resources"], big["resources"], "{page}");
    assert!(!page["throughput"].as_array().unwrap().is_empty(), "the chart has its first point: {page}");

    app.provider.release_files();
    app.completed(&id).await;
    let page = app.admin_get(&format!("/admin/jobs/{id}")).await;
    let chart = page["throughput"].as_array().unwrap();
    assert!(chart.len() >= 2, "the finished job keeps its chart: {page}");
    let last = chart.last().unwrap();
    assert_eq!(
        (last["bytes"].as_i64(), last["resources"].as_i64()),
        (page["bytes"].as_i64(), Some(2003)),
        "{last}"
    );
    let types = page["types"].as_array().unwrap();
    assert_eq!(types.len(), 2, "{page}");
    assert!(
        types.iter().all(|t| t["resources"] == t["expected_resources"] && t["files_done"] == 1),
        "{page}"
    );
    assert!(page.get("live").is_none(), "{page}");
}

#[tokio::test]
async fn a_cancelled_job_stays_listed_as_cancelled_and_its_poller_learns_so() {
    let app = spawn_app().await;
    app.provider.add_file("a.ndjson", "Observation", observations(3));
    app.provider.add_file("b.ndjson", "Observation", observations(3));
    app.provider.hold_file("b.ndjson");
    // A pre-signed URL's query is a credential: no outcome may repeat it.
    let signed = format!("{}/files/b.ndjson?X-Amz-Signature=secret-sig", app.provider.base());
    app.provider.add_manifest_url("Observation", &signed);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    wait_until("one file stored", async || {
        app.jobs_dir(&id).read_dir().is_ok_and(|mut d| d.next().is_some())
    })
    .await;
    wait_until("one file recorded", async || {
        app.admin_get(&format!("/admin/jobs/{id}")).await["files_finished"] == 1
    })
    .await;
    let cancel = |id: String| app.http.post(format!("{}/job/{id}/cancel", app.base)).send();
    let res = cancel(id.clone()).await.unwrap();
    assert_eq!(res.status(), 200);
    let said: Value = res.json().await.unwrap();
    let said = said["issue"][0]["diagnostics"].as_str().unwrap().to_string();
    assert!(said.contains("the files it stored under JOBS_PATH are removed"), "says what it did: {said}");
    app.provider.release_files();

    let res = app.get_job(&id).await;
    assert_eq!(res.status(), 410, "gone on purpose, not a bare 404");
    let oo: Value = res.json().await.unwrap();
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("cancelled on request"), "{oo}");
    assert!(!app.jobs_dir(&id).exists(), "what it stored is removed");
    let outcomes = app.get_outcomes(&id).await;
    let text = serde_json::to_string(&outcomes).unwrap();
    assert!(
        text.contains("not imported: the import was cancelled") && text.contains("cancelled on request"),
        "{text}"
    );
    assert!(!text.contains("secret-sig"), "{text}");
    let page = app.admin_get(&format!("/admin/jobs/{id}")).await;
    assert_eq!(page["state"], "cancelled");
    assert!(page["kept_until"].is_string(), "{page}");
    // Where it got to, not 0 %: one of its three files was done when it was cancelled.
    assert_eq!(page["progress_percent"], 33.3, "{page}");
    assert_eq!(page["a_stop_does"], "the files it stored under JOBS_PATH are removed");
    // The file it had imported says where it went and that it went again: not "stored as" alone.
    let said = page["files"][0]["diagnostics"].as_str().unwrap();
    assert!(
        said.contains("stored as")
            && said
                .contains("then the import was cancelled: the files it stored under JOBS_PATH are removed"),
        "{said}"
    );

    let again = cancel(id.clone()).await.unwrap();
    assert_eq!(again.status(), 409, "only a running job can be cancelled");
    assert_eq!(app.delete_job(&id).await.status(), 202);
    assert_eq!(app.get_job(&id).await.status(), 404, "deleting removes it");
    assert_eq!(cancel("0123456789abcdef0123456789abcdef".into()).await.unwrap().status(), 404);
}

/// A job whose lease lapsed under another process, as that process left it.
async fn orphaned_job(app: &super::helpers::TestApp, id: &str, takeovers: i64) {
    let config = test_config(&app.dir);
    let bulk_import::config::DatabaseUrl::Sqlite(path) = &config.database else { unreachable!() };
    let store = bulk_import::store::backend::Stores::open(&config.database).await.unwrap().jobs;
    let now = bulk_import::time_util::now_unix();
    let job = bulk_import::domain::Job {
        id: id.into(),
        client_id: app.client_id.clone(),
        export_type: bulk_import::fhir::parameters::ExportType::Static,
        export_url: app.provider.manifest_url(),
        kickoff: vec![],
        state: bulk_import::domain::JobState::Queued,
        status_url: None,
        progress: None,
        failure: None,
        created_at: now - 60,
        completed_at: None,
        plan_open: true,
    };
    store
        .insert_job_if_room(&job, bulk_import::domain::JobCaps { all: 1000, per_provider: 1000 })
        .await
        .unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display())).await.unwrap();
    sqlx::query(
        "UPDATE jobs SET lease_owner = 'a-replica-that-died', lease_token = 7, lease_expires_at = ?,
                         touched_at = ?, takeovers = ? WHERE id = ?",
    )
    .bind(now - 20)
    .bind(now - 30)
    .bind(takeovers)
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_job_whose_lease_lapsed_under_another_process_is_taken_over_and_finished() {
    let app = spawn_app_with(|c| c.lease = Duration::from_secs(3)).await;
    app.provider.add_file("o.ndjson", "Observation", observations(5));
    let id = "0aa1".repeat(8);
    orphaned_job(&app, &id, 0).await;
    let res = app.wait_for_job(&id).await;
    assert_eq!(res.status(), 200, "taken over by the takeover pass and finished");
    assert_eq!(app.read(&id, "Observation.1.ndjson"), observations(5));
}

#[tokio::test]
async fn a_job_taken_over_too_often_fails_saying_so_instead_of_going_round_for_ever() {
    let app = spawn_app_with(|c| c.lease = Duration::from_secs(3)).await;
    app.provider.add_file("o.ndjson", "Observation", observations(5));
    let id = "0bb2".repeat(8);
    orphaned_job(&app, &id, bulk_import::jobs::pipeline::MAX_TAKEOVERS).await;
    let text = app.failed(&id).await;
    assert!(text.contains("taken over 4 times"), "{text}");
    assert!(app.provider.requests_to("/fhir/manifest.json").is_empty(), "nothing was fetched");
}

#[tokio::test]
async fn a_file_taken_over_too_often_fails_saying_so_and_the_job_goes_on() {
    let app = spawn_app_with(|c| c.lease = Duration::from_secs(3)).await;
    app.provider.add_file("o.ndjson", "Observation", observations(5));
    let id = "0cc3".repeat(8);
    orphaned_job(&app, &id, 0).await;
    // Importing, one file left, whose lease lapsed under a process that died with it as often as
    // is allowed.
    let config = test_config(&app.dir);
    let store = bulk_import::store::backend::Stores::open(&config.database).await.unwrap().jobs;
    let file = bulk_import::domain::JobFile {
        job_id: id.clone(),
        idx: 0,
        manifest_idx: 0,
        kind: bulk_import::fhir::manifest::FileKind::Output,
        resource_type: "Observation".into(),
        url: format!("{}/files/o.ndjson", app.provider.base()),
        requires_token: false,
        name: "Observation.1.ndjson".into(),
        state: bulk_import::domain::FileState::Pending,
        resources: 0,
        bytes: 0,
        outcome: None,
        provider_errors: 0,
        type_counts: None,
        expected_resources: None,
    };
    let now = bulk_import::time_util::now_unix();
    store.append_manifest(&id, &app.provider.manifest_url(), &[file], true, now - 60).await.unwrap();
    store.set_state(&id, bulk_import::domain::JobState::Importing).await.unwrap();
    let bulk_import::config::DatabaseUrl::Sqlite(path) = &config.database else { unreachable!() };
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display())).await.unwrap();
    sqlx::query(
        "UPDATE job_files SET lease_owner = 'a-replica-that-died', lease_token = 5, lease_expires_at = ?,
                              takeovers = ? WHERE job_id = ?",
    )
    .bind(now - 20)
    .bind(bulk_import::jobs::engine::MAX_FILE_TAKEOVERS)
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    let res = app.wait_for_job(&id).await;
    assert_eq!(res.status(), 200, "the job ends; the file fails");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["extension"]["failedFiles"], 1, "{body}");
    let outcomes = app.get_outcomes(&id).await;
    let text = outcomes.iter().map(|o| o.to_string()).collect::<Vec<_>>().join("\n");
    assert!(text.contains("taken over 4 times"), "{text}");
    assert!(app.provider.requests_to("/fhir/files/o.ndjson").is_empty(), "the file was not fetched again");
}
