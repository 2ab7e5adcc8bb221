//! The pull against the fake provider: static and dynamic exports, byte-identical files, per-file
//! failures, Retry-After/429/5xx, GET fallback, open providers and token rules.
use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::Value;

use super::{
    fake_provider::{FakeFile, FileFault, StatusStep},
    helpers::{observations, patients, spawn_app, spawn_app_with, wait_until, TestApp},
};

/// The release DELETE follows the job's end, so wait for it rather than race it; returns how many.
async fn wait_for_release(app: &TestApp) -> usize {
    let deletes =
        || app.provider.requests_to("/fhir/status/").iter().filter(|r| r.method == Method::DELETE).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while deletes() == 0 {
        assert!(Instant::now() < deadline, "the export was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deletes()
}

#[tokio::test]
async fn a_static_import_writes_byte_identical_files_and_reports_each_one() {
    let app = spawn_app().await;
    let obs = observations(200);
    let pts = patients(20);
    app.provider.add_file("obs.ndjson", "Observation", obs.clone());
    app.provider.add_file("pat.ndjson", "Patient", pts.clone());
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["requiresAccessToken"], false);
    assert!(body["transactionTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["outcome"][0]["url"], format!("{}/job/{id}/import-outcome.ndjson", app.base));
    assert_eq!(body["outcome"][0]["count"], 2);
    assert_eq!(app.read(&id, "Observation.1.ndjson"), obs);
    assert_eq!(app.read(&id, "Patient.1.ndjson"), pts);
    let outcomes = app.get_outcomes(&id).await;
    assert_eq!(outcomes.len(), 2);
    for o in &outcomes {
        assert_eq!(o["issue"][0]["severity"], "information", "{o}");
    }
    let text = outcomes[0]["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(text.contains("200 resources"), "{text}");
    // No partial files remain.
    let names: Vec<String> = std::fs::read_dir(app.jobs_dir(&id))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".part")), "{names:?}");
}

#[tokio::test]
async fn a_dynamic_import_kicks_off_polls_with_retry_after_and_imports() {
    let app = spawn_app().await;
    let obs = observations(50);
    app.provider.add_file("o1.ndjson", "Observation", obs.clone());
    app.provider.add_file("o2.ndjson", "Observation", obs.clone());
    app.provider.script_status(vec![
        StatusStep::Pending(Some(1)),
        StatusStep::TooMany(1),
        StatusStep::Unavailable,
        StatusStep::Pending(None),
    ]);
    let started = Instant::now();
    let res = app
        .post_import(&serde_json::json!({"resourceType":"Parameters","parameter":[
            {"name":"exportUrl","valueUrl": app.provider.export_url()},
            {"name":"_type","valueString":"Observation"},
            {"name":"_since","valueInstant":"2024-01-01T00:00:00Z"},
            {"name":"patient","valueReference":{"reference":"Patient/123"}}]}))
        .await;
    assert_eq!(res.status(), 202);
    let id = res.headers()["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    app.completed(&id).await;
    // Two Retry-After: 1 waits were honoured.
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(app.read(&id, "Observation.1.ndjson"), obs);
    assert_eq!(app.read(&id, "Observation.2.ndjson"), obs);
    let kickoffs = app.provider.requests_to("/fhir/$export");
    assert_eq!(kickoffs.len(), 1);
    assert_eq!(kickoffs[0].method, Method::POST);
    assert!(kickoffs[0].authorization.as_deref().unwrap().starts_with("Bearer "));
    let sent: Value = serde_json::from_str(&kickoffs[0].body).unwrap();
    let params = sent["parameter"].as_array().unwrap();
    assert!(params.iter().any(|p| p["name"] == "_type" && p["valueString"] == "Observation"));
    assert!(params.iter().any(|p| p["name"] == "_since" && p["valueInstant"] == "2024-01-01T00:00:00Z"));
    assert!(params
        .iter()
        .any(|p| p["name"] == "patient" && p["valueReference"]["reference"] == "Patient/123"));
    // Status polls: 4 scripted + the final 200; then a DELETE to release the export.
    let polls: Vec<_> =
        app.provider.requests_to("/fhir/status/").into_iter().filter(|r| r.method == Method::GET).collect();
    assert_eq!(polls.len(), 5);
    // The release follows the completion, so wait for it rather than race it.
    let deletes = wait_for_release(&app).await;
    assert_eq!(deletes, 1);
}

#[tokio::test]
async fn a_provider_that_refuses_post_kickoff_gets_a_get_with_query_parameters() {
    let app = spawn_app().await;
    app.provider.refuse_post_kickoff();
    app.provider.add_file("p.ndjson", "Patient", patients(3));
    let res = app
        .post_import(&serde_json::json!({"resourceType":"Parameters","parameter":[
            {"name":"exportUrl","valueUrl": app.provider.export_url()},
            {"name":"_type","valueString":"Patient"}]}))
        .await;
    let id = res.headers()["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    app.completed(&id).await;
    let kickoffs = app.provider.requests_to("/fhir/$export");
    assert_eq!(
        kickoffs.iter().map(|r| r.method.clone()).collect::<Vec<_>>(),
        vec![Method::POST, Method::GET]
    );
    assert_eq!(kickoffs[1].query.as_deref(), Some("_type=Patient"));
}

#[tokio::test]
async fn a_fatal_export_error_fails_the_job_with_the_providers_message() {
    let app = spawn_app().await;
    app.provider.script_status(vec![StatusStep::Fatal("the export ran out of disk")]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let res = app.wait_for_job(&id).await;
    assert_eq!(res.status(), 500);
    let body: Value = res.json().await.unwrap();
    let text = body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(text.contains("the export ran out of disk") && text.contains("400"), "{text}");
    let outcomes = app.get_outcomes(&id).await;
    assert!(outcomes[0]["issue"][0]["diagnostics"].as_str().unwrap().contains("ran out of disk"));
}

#[tokio::test]
async fn a_5xx_storm_on_the_status_url_fails_the_job_after_bounded_retries() {
    let app = spawn_app().await;
    app.provider.script_status(vec![StatusStep::Unavailable; 10]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let text = app.failed(&id).await;
    assert!(text.contains("503"), "{text}");
    // max_retries = 3 in tests: 4 attempts, no more; then (just after the failure is recorded)
    // we release the export at the provider.
    let deletes = wait_for_release(&app).await;
    let status = app.provider.requests_to("/fhir/status/");
    assert_eq!(status.iter().filter(|r| r.method == Method::GET).count(), 4);
    assert_eq!(deletes, 1);
}

#[tokio::test]
async fn status_errors_within_the_error_budget_are_ridden_out() {
    let app = spawn_app_with(|c| c.limits.status_error_budget = Duration::from_secs(30)).await;
    app.provider.add_file("p.ndjson", "Patient", patients(2));
    app.provider.script_status(vec![StatusStep::Unavailable; 6]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;
    assert_eq!(
        app.provider.requests_to("/fhir/status/").iter().filter(|r| r.method == Method::GET).count(),
        7
    );
}

#[tokio::test]
async fn a_status_url_failing_past_its_error_budget_fails_the_job_when_the_budget_is_spent() {
    // A budget of 1 s, and more retries than fit in it (backing off to MAX_RETRY_AFTER, 2 s):
    // the budget is the most the errors may last, not the least.
    let app = spawn_app_with(|c| {
        c.limits.status_error_budget = Duration::from_secs(1);
        c.limits.max_retries = 8;
    })
    .await;
    app.provider.script_status(vec![StatusStep::Unavailable; 100]);
    let started = std::time::Instant::now();
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let failure = app.failed(&id).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the 1 s budget bound the errors: gave up after {took:?}");
    assert!(failure.contains("status"), "{failure}");
}

#[tokio::test]
async fn a_manifest_whose_next_links_loop_fails_at_the_first_page_seen_again() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.provider.add_file(&format!("p{i}.ndjson"), "Patient", patients(1));
    }
    app.provider.page_size(1);
    app.provider.loop_manifest_pages();
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let failure = app.failed(&id).await;
    assert!(failure.contains("loop"), "{failure}");
    let pages = app.provider.requests_to("/fhir/manifest-page/");
    assert_eq!(pages.len(), 2, "pages 2 and 3 read once each, the loop back not fetched");
}

#[tokio::test]
async fn bad_files_fail_alone_with_file_line_and_reason_while_good_files_land() {
    let app = spawn_app_with(|c| c.limits.max_line_bytes = 1000).await;
    let good = observations(10);
    let broken = format!("{}{{\"resourceType\":\"Observation\",\"id\":\"x\"\n", observations(2));
    let wrong_type = format!("{}{}", observations(1), patients(1));
    let no_id = format!("{}{{\"resourceType\":\"Observation\"}}\n", observations(3));
    let too_long =
        format!("{}{{\"resourceType\":\"Observation\",\"id\":\"{}\"}}\n", observations(1), "x".repeat(5000));
    app.provider.add_file("good.ndjson", "Observation", good.clone());
    app.provider.add_file("broken.ndjson", "Observation", broken);
    app.provider.add_file("wrong.ndjson", "Observation", wrong_type);
    app.provider.add_file("noid.ndjson", "Observation", no_id);
    app.provider.add_file("long.ndjson", "Observation", too_long);
    app.provider.push_file(FakeFile { missing: true, ..FakeFile::new("gone.ndjson", "Observation", "") });
    app.provider.add_manifest_url("Observation", "http://127.0.0.1:9/elsewhere.ndjson");
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 6);
    assert_eq!(app.read(&id, "Observation.1.ndjson"), good);
    let outcomes = app.get_outcomes(&id).await;
    let text = |i: usize| outcomes[i]["issue"][0]["diagnostics"].as_str().unwrap().to_string();
    assert_eq!(outcomes[0]["issue"][0]["severity"], "information");
    let expectations = [
        (1, "broken.ndjson", "line 3 is not a JSON object"),
        (2, "wrong.ndjson", "line 2 has resourceType 'Patient'"),
        (3, "noid.ndjson", "line 4 (Observation) has no id"),
        (4, "long.ndjson", "line 2 is longer than the 1000-byte limit"),
        (5, "gone.ndjson", "404"),
        (
            6,
            "elsewhere.ndjson",
            "requires our access token, but http://127.0.0.1:9 is not the provider's origin",
        ),
    ];
    for (i, file, reason) in expectations {
        assert_eq!(outcomes[i]["issue"][0]["severity"], "error");
        assert!(text(i).contains(file) && text(i).contains(reason), "{i}: {}", text(i));
    }
    // Failed files leave nothing behind; the other host was never contacted with our token.
    let names: Vec<String> = std::fs::read_dir(app.jobs_dir(&id))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["Observation.1.ndjson".to_string()]);
}

#[tokio::test]
async fn gzip_files_are_decoded_and_stored_as_the_original_bytes() {
    let app = spawn_app().await;
    let obs = observations(100);
    app.provider.set_chunk_size(3);
    app.provider.push_file(FakeFile { gzip: true, ..FakeFile::new("o.ndjson", "Observation", obs.clone()) });
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&id).await;
    assert_eq!(app.read(&id, "Observation.1.ndjson"), obs);
    // Real providers compress only when asked (the reference server: 36 MB → 2.1 MB).
    let asked = app.provider.requests_to("/fhir/files/")[0].accept_encoding.clone();
    assert!(asked.is_some_and(|a| a.contains("gzip")), "file requests must ask for gzip");
}

#[tokio::test]
async fn the_token_goes_to_file_urls_only_when_the_manifest_requires_it() {
    for requires in [true, false] {
        let app = spawn_app().await;
        app.provider.requires_access_token(requires);
        app.provider.add_file("p.ndjson", "Patient", patients(2));
        let id = app.start_import(&app.provider.manifest_url(), "static").await;
        app.completed(&id).await;
        let files = app.provider.requests_to("/fhir/files/");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].authorization.is_some(), requires, "requiresAccessToken {requires}");
        // The manifest itself is always fetched with the token.
        assert!(app.provider.requests_to("/fhir/manifest.json")[0].authorization.is_some());
    }
}

#[tokio::test]
async fn a_provider_without_auth_is_pulled_without_a_token() {
    let app = spawn_app().await;
    app.provider.without_auth();
    app.provider.requires_access_token(false);
    app.provider.add_file("p.ndjson", "Patient", patients(2));
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;
    assert!(app.provider.requests_to("/auth/token").is_empty());
    assert!(app.provider.requests().iter().all(|r| r.authorization.is_none()));
}

#[tokio::test]
async fn a_provider_token_refusal_fails_the_job_at_once_with_a_fix() {
    let app = spawn_app().await;
    app.provider.token_error(401, "invalid_client");
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let text = app.failed(&id).await;
    assert!(text.contains("refused us") && text.contains("invalid_client"), "{text}");
    assert!(text.contains("check our registration"), "{text}");
    assert_eq!(text.matches("refused us").count(), 1, "the cause is said once: {text}");
    assert!(app.provider.requests_to("/fhir/$export").is_empty());
    // An OAuth refusal does not heal by asking again.
    assert_eq!(app.provider.requests_to("/auth/token").len(), 1);
}

#[tokio::test]
async fn one_provider_token_serves_the_whole_job() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.provider.add_file(&format!("p{i}.ndjson"), "Patient", patients(2));
    }
    app.provider.script_status(vec![StatusStep::Pending(None); 3]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;
    assert_eq!(app.provider.requests_to("/auth/token").len(), 1);
}

#[tokio::test]
async fn manifest_next_pages_and_error_files_are_all_imported() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.provider.add_file(&format!("p{i}.ndjson"), "Patient", patients(i + 1));
    }
    // Provider OperationOutcomes often have no id; a warning alone is no error of the import.
    let provider_errors = "{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"warning\",\"code\":\"processing\"}]}\n";
    app.provider.add_error_file("errors.ndjson", provider_errors);
    app.provider.page_size(2);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["files"], 6);
    assert_eq!(body["extension"]["failedFiles"], 0);
    assert_eq!(body["extension"]["providerErrors"], 0);
    assert_eq!(body["extension"]["result"], "completed");
    for i in 0..5 {
        assert_eq!(app.read(&id, &format!("Patient.{}.ndjson", i + 1)), patients(i + 1));
    }
    // The provider's own outcomes are reported, not stored as data.
    assert!(!app.jobs_dir(&id).join("error-OperationOutcome.1.ndjson").exists());
    let outcomes = app.get_outcomes(&id).await;
    let report = outcomes
        .iter()
        .map(|o| o["issue"].as_array().unwrap().clone())
        .find(|issues| issues.len() > 1)
        .expect("the error file's report");
    assert_eq!(report[1]["severity"], "warning");
    assert_eq!(report[1]["diagnostics"], "the provider reported: processing");
    assert_eq!(app.provider.requests_to("/fhir/manifest-page/").len(), 2);
}

#[tokio::test]
async fn a_redirect_to_another_host_never_carries_our_token() {
    let app = spawn_app().await;
    let other = super::fake_provider::FakeProvider::start().await;
    other.requires_access_token(false);
    other.add_file("there.ndjson", "Patient", patients(4));
    app.provider.add_file("here.ndjson", "Patient", "");
    app.provider.redirect_file("here.ndjson", &format!("{}/fhir/files/there.ndjson", other.origin()));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&id).await;
    assert_eq!(app.read(&id, "Patient.1.ndjson"), patients(4));
    assert!(app.provider.requests_to("/fhir/files/")[0].authorization.is_some());
    let there = other.requests_to("/fhir/files/");
    assert_eq!(there.len(), 1);
    assert!(there[0].authorization.is_none(), "the token crossed to another host");
}

#[tokio::test]
async fn provider_tokens_are_refreshed_before_expiry_and_once_after_a_401() {
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(2));
    // 1 s tokens: we refresh half-way, so a 3 s export needs several.
    app.provider.set_token_lifetime(1);
    app.provider.script_status(vec![StatusStep::Pending(Some(1)); 3]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;
    assert!(
        app.provider.requests_to("/auth/token").len() >= 3,
        "{}",
        app.provider.requests_to("/auth/token").len()
    );

    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(2));
    app.provider.script_status(vec![StatusStep::Pending(Some(1))]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    wait_until("the first poll", async || !app.provider.requests_to("/fhir/status/").is_empty()).await;
    app.provider.revoke_tokens();
    app.completed(&id).await;
    assert_eq!(app.provider.requests_to("/auth/token").len(), 2);
    // A 401 poll, the same poll again with the fresh token, then the 200.
    assert!(app.provider.requests_to("/fhir/status/").len() >= 3);
    let polls =
        app.provider.requests_to("/fhir/status/").into_iter().filter(|r| r.method == Method::GET).count();
    assert_eq!(polls, 3);
}

#[tokio::test]
async fn concurrent_jobs_for_one_provider_share_one_token_request() {
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(2));
    let token = app.token().await;
    let ping = super::helpers::ping(&app.provider.export_url(), "dynamic").to_string();
    let starts = (0..4).map(|_| app.post_import_raw(Some(&token), "application/fhir+json", ping.clone()));
    let ids: Vec<String> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|res| {
            assert_eq!(res.status(), 202);
            res.headers()["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_string()
        })
        .collect();
    for id in &ids {
        app.completed(id).await;
    }
    assert_eq!(app.provider.requests_to("/auth/token").len(), 1);
}

#[tokio::test]
async fn an_unreachable_file_fails_alone_and_the_job_completes() {
    let app = spawn_app().await;
    app.provider.add_file("good.ndjson", "Patient", patients(2));
    app.provider.add_file("dead.ndjson", "Patient", "");
    app.provider.redirect_file("dead.ndjson", "http://127.0.0.1:9/nothing-listens-here");
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 1);
    let outcomes = app.get_outcomes(&id).await;
    let dead = outcomes[1]["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(dead.contains("dead.ndjson") && dead.contains("could not be reached"), "{dead}");
    assert_eq!(app.read(&id, "Patient.1.ndjson"), patients(2));
}

#[tokio::test]
async fn a_same_host_redirect_does_not_carry_our_token_either() {
    let app = spawn_app().await;
    app.provider.add_file("start.ndjson", "Patient", "");
    app.provider.redirect_file("start.ndjson", &format!("{}/fhir/moved/start.ndjson", app.provider.origin()));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&id).await;
    let start = &app.provider.requests_to("/fhir/files/start.ndjson")[0];
    assert!(start.authorization.is_some());
    let hop = &app.provider.requests_to("/fhir/moved/")[0];
    assert!(hop.authorization.is_none(), "the token followed a redirect");
}

#[tokio::test]
async fn a_failed_kickoff_is_not_retried_but_a_busy_provider_is_waited_for() {
    let app = spawn_app().await;
    app.provider.script_kickoff(vec![500]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let res = app.wait_for_job(&id).await;
    assert_eq!(res.status(), 500);
    assert_eq!(app.provider.requests_to("/fhir/$export").len(), 1, "a 500 may have started an export");

    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    app.provider.script_kickoff(vec![429, 503]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;
    assert_eq!(app.provider.requests_to("/fhir/$export").len(), 3);
}

#[tokio::test]
async fn an_absurd_token_lifetime_from_a_provider_is_clamped_not_a_crash() {
    let app = spawn_app().await;
    app.provider.set_token_lifetime(u64::MAX);
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;
}

#[tokio::test]
async fn a_gzip_bomb_is_cut_off_at_the_decoded_size_limit() {
    let app = spawn_app_with(|c| c.limits.max_file_bytes = 64 * 1024).await;
    // 10,000 lines compress to a few KB but decode to well over the limit.
    let mut bomb = FakeFile::new("bomb.ndjson", "Observation", observations(10_000));
    bomb.gzip = true;
    app.provider.set_chunk_size(4096);
    app.provider.push_file(bomb);
    app.provider.add_file("ok.ndjson", "Patient", patients(2));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 1);
    let outcomes = app.get_outcomes(&id).await;
    let text = outcomes[0]["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(text.contains("MAX_FILE_BYTES"), "{text}");
    assert!(!app.jobs_dir(&id).join("Observation.1.ndjson").exists());
}

#[tokio::test]
async fn a_connection_broken_mid_file_and_a_stalled_body_are_retried_to_success() {
    let app = spawn_app_with(|c| c.limits.read_timeout = Duration::from_millis(500)).await;
    let obs = observations(300);
    app.provider.add_file("o.ndjson", "Observation", obs.clone());
    app.provider.fault_file("o.ndjson", vec![FileFault::BreakHalfway, FileFault::StallHalfway(3000)]);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 0);
    assert_eq!(app.provider.requests_to("/fhir/files/o.ndjson").len(), 3, "break, stall, success");
    assert_eq!(app.read(&id, "Observation.1.ndjson"), obs, "no duplicate or missing line");
}

#[tokio::test]
async fn a_file_that_keeps_breaking_fails_with_the_reason_after_bounded_attempts() {
    let app = spawn_app().await;
    app.provider.add_file("o.ndjson", "Observation", observations(100));
    app.provider.fault_file("o.ndjson", vec![FileFault::BreakHalfway; 10]);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 1);
    let text = app.get_outcomes(&id).await[0]["issue"][0]["diagnostics"].as_str().unwrap().to_string();
    // Depending on when the break lands, it surfaces while sending or while reading the body.
    assert!(text.contains("after 4 attempts"), "{text}");
    assert_eq!(app.provider.requests_to("/fhir/files/o.ndjson").len(), 4);
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_for_a_while_is_retried_to_success() {
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(2));
    app.provider.fail_token(2);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;
    assert_eq!(app.provider.requests_to("/auth/token").len(), 3);
}

#[tokio::test]
async fn a_status_url_that_vanishes_mid_export_fails_the_job_with_a_clear_reason() {
    let app = spawn_app().await;
    app.provider.script_status(vec![StatusStep::Pending(None), StatusStep::Status(404)]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let text = app.failed(&id).await;
    assert!(text.contains("status URL answered 404"), "{text}");
}

#[tokio::test]
async fn a_corrupt_gzip_file_fails_alone_and_duplicate_urls_are_both_imported() {
    let app = spawn_app().await;
    app.provider
        .push_file(FakeFile { corrupt_gzip: true, ..FakeFile::new("bad.ndjson", "Patient", patients(50)) });
    app.provider.add_file("p.ndjson", "Patient", patients(3));
    app.provider.add_manifest_url("Patient", &format!("{}/fhir/files/p.ndjson", app.provider.origin()));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 1);
    let bad = app.get_outcomes(&id).await[0]["issue"][0]["diagnostics"].as_str().unwrap().to_string();
    assert!(bad.contains("bad.ndjson") && bad.contains("decod"), "{bad}");
    assert_eq!(app.read(&id, "Patient.2.ndjson"), patients(3));
    assert_eq!(app.read(&id, "Patient.3.ndjson"), patients(3));
}

#[tokio::test]
async fn a_manifest_of_ten_thousand_files_is_imported_completely() {
    let app = spawn_app_with(|c| c.limits.parallel_downloads = 16).await;
    for i in 0..10_000 {
        app.provider.add_file(
            &format!("f{i}.ndjson"),
            "Patient",
            format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n"),
        );
    }
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let res = app.wait_for_job_within(&id, Duration::from_secs(120)).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["extension"]["files"], 10_000);
    assert_eq!(body["extension"]["failedFiles"], 0);
    assert_eq!(body["extension"]["resources"], 10_000);
}

#[tokio::test]
async fn downloads_across_jobs_share_the_global_limit() {
    let app = spawn_app_with(|c| c.limits.max_total_downloads = 1).await;
    app.provider.add_file("a.ndjson", "Patient", patients(1));
    app.provider.hold_file("a.ndjson");
    let first = app.start_import(&app.provider.manifest_url(), "static").await;
    wait_until("the first download", async || !app.provider.requests_to("/fhir/files/a.ndjson").is_empty())
        .await;
    let second = app.start_import(&app.provider.manifest_url(), "static").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.provider.requests_to("/fhir/files/a.ndjson").len(),
        1,
        "the second job waited for the slot"
    );
    app.provider.release_files();
    app.completed(&first).await;
    app.completed(&second).await;
    assert_eq!(app.provider.requests_to("/fhir/files/a.ndjson").len(), 2);
}

#[tokio::test]
async fn an_hour_long_retry_after_is_capped_and_the_status_says_we_are_waiting() {
    let app = spawn_app_with(|c| c.limits.max_retry_after = Duration::from_secs(2)).await;
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    app.provider.script_status(vec![StatusStep::TooMany(3600)]);
    let started = Instant::now();
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let mut saw_waiting = false;
    loop {
        let res = app.get_job(&id).await;
        if res.status() != 202 {
            assert_eq!(res.status(), 200);
            break;
        }
        let status =
            res.headers().get("x-status").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        saw_waiting |= status.contains("slow down; waiting 2 s");
        assert!(started.elapsed() < Duration::from_secs(20), "the Retry-After was not capped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_waiting, "the status never said the job was waiting");
}

#[tokio::test]
async fn an_oversized_manifest_fails_the_job_with_the_limit_named() {
    let app = spawn_app_with(|c| c.limits.max_manifest_bytes = 2048).await;
    for i in 0..100 {
        app.provider.add_file(&format!("file-with-a-long-name-{i}.ndjson"), "Patient", patients(1));
    }
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let text = app.failed(&id).await;
    assert!(text.contains("larger than 2048 bytes") && text.contains("MAX_MANIFEST_BYTES"), "{text}");
    assert!(app.provider.requests_to("/fhir/files/").is_empty());
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_fetched_again() {
    let app = spawn_app().await;
    let obs = observations(300);
    app.provider.add_file("o.ndjson", "Observation", obs.clone());
    app.provider.fault_file("o.ndjson", vec![FileFault::Truncated]);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 0);
    assert_eq!(app.provider.requests_to("/fhir/files/o.ndjson").len(), 2);
    assert_eq!(app.read(&id, "Observation.1.ndjson"), obs);
}

#[tokio::test]
async fn a_token_endpoint_that_keeps_failing_during_downloads_is_retried_once_per_file_not_squared() {
    let app = spawn_app_with(|c| {
        c.limits.max_retries = 2;
        c.limits.parallel_downloads = 1;
    })
    .await;
    app.provider.add_file("a.ndjson", "Patient", patients(1));
    app.provider.add_file("b.ndjson", "Patient", patients(1));
    app.provider.hold_file("a.ndjson");
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    wait_until("the first file", async || !app.provider.requests_to("/fhir/files/a.ndjson").is_empty()).await;
    // From now on our token is refused and the token endpoint answers 503.
    app.provider.revoke_tokens();
    app.provider.fail_token(1000);
    let before = app.provider.requests_to("/auth/token").len();
    app.provider.release_files();
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 1, "{body}");
    let token_requests = app.provider.requests_to("/auth/token").len() - before;
    assert_eq!(token_requests, 3, "MAX_RETRIES + 1 token requests for the file, not (MAX_RETRIES + 1)²");
}

#[tokio::test]
async fn a_second_job_within_the_providers_budget_reads_its_manifest_without_waiting() {
    // 30 a minute (one every 2 s on average): a second ping a second after the first is within
    // the budget's burst, so its manifest is read at once.
    let app = spawn_app_with(|c| c.limits.provider_requests_per_minute = 30).await;
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    let first = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&first).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pinged = Instant::now();
    let second = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&second).await;
    let manifests = app.provider.requests_to("/fhir/manifest");
    assert_eq!(manifests.len(), 2);
    let waited = manifests[1].at.saturating_duration_since(pinged);
    assert!(waited < Duration::from_millis(700), "the second manifest waited {waited:?}");
}

#[tokio::test]
async fn a_manifest_pinged_as_a_dynamic_export_fails_with_a_hint_to_ping_it_as_static() {
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    let id = app.start_import(&app.provider.manifest_url(), "dynamic").await;
    let failure = app.failed(&id).await;
    assert!(failure.contains("no Content-Location") && failure.contains("--export-type static"), "{failure}");
}
