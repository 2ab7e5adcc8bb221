//! What a hostile or broken provider may cost: a gzip bomb by ratio, blank-line padding, a body
//! dripped at a few bytes a second, an endless file, an export larger than the job's budget, a
//! job kept alive forever, a manifest that never finishes (cancelled within a second or two).
use std::time::{Duration, Instant};

use super::{
    fake_provider::{FakeFile, FileFault, StatusStep},
    helpers::{observations, patients, spawn_app, spawn_app_with, TestApp},
    listener::assert_health_is_fast,
};

/// The first outcome's text of a completed job whose only file failed.
async fn only_failure(app: &TestApp, id: &str) -> String {
    let body = app.completed(id).await;
    assert_eq!(body["extension"]["failedFiles"], 1, "{body}");
    let outcomes = app.get_outcomes(id).await;
    let failed = outcomes.iter().find(|o| o["issue"][0]["severity"] == "error").expect("an error outcome");
    failed["issue"][0]["diagnostics"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_gzip_body_that_expands_past_the_ratio_fails_before_it_fills_the_disk() {
    let app = spawn_app_with(|c| c.limits.max_gzip_ratio = 20).await;
    // Valid lines, so only the ratio can stop it: 16 MiB of one line compresses ~100 : 1.
    let line = "{\"resourceType\":\"Patient\",\"id\":\"same\"}\n";
    let mut bomb = FakeFile::new("bomb.ndjson", "Patient", line.repeat((16 << 20) / line.len()));
    bomb.gzip = true;
    app.provider.set_chunk_size(64 * 1024);
    app.provider.push_file(bomb);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let text = only_failure(&app, &id).await;
    assert!(text.contains("MAX_GZIP_RATIO"), "{text}");
    assert_eq!(app.provider.requests_to("/fhir/files/bomb.ndjson").len(), 1, "a bomb is not retried");
    assert!(!app.jobs_dir(&id).join("Patient.1.ndjson").exists());
}

#[tokio::test]
async fn a_file_padded_with_blank_lines_fails_at_the_blank_line_limit() {
    let app = spawn_app_with(|c| c.limits.max_blank_lines = 100).await;
    app.provider.set_chunk_size(4096);
    let padded = format!("{}{}", patients(2), "\n".repeat(5_000));
    app.provider.add_file("p.ndjson", "Patient", padded);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let text = only_failure(&app, &id).await;
    assert!(text.contains("MAX_BLANK_LINES") && text.contains("line 103"), "{text}");
}

#[tokio::test]
async fn a_dripped_body_fails_at_the_minimum_rate_while_others_are_served() {
    let app = spawn_app_with(|c| {
        c.limits.min_transfer_rate = 1000;
        c.limits.min_transfer_rate_window = Duration::from_millis(300);
        c.limits.max_retries = 1;
    })
    .await;
    app.provider.add_file("o.ndjson", "Observation", observations(100));
    // 50 bytes a second, never silent for long: the read timeout alone would wait for ever.
    app.provider.fault_file("o.ndjson", vec![FileFault::Drip(20); 2]);
    let started = Instant::now();
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    assert_health_is_fast(&app.base).await;
    let text = only_failure(&app, &id).await;
    assert!(text.contains("MIN_TRANSFER_RATE") && text.contains("2 attempts"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_endless_file_stops_at_the_file_size_limit_and_leaves_nothing_behind() {
    let app = spawn_app_with(|c| c.limits.max_file_bytes = 4 << 20).await;
    app.provider.add_file("o.ndjson", "Observation", observations(1000));
    app.provider.fault_file("o.ndjson", vec![FileFault::Endless]);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let text = only_failure(&app, &id).await;
    assert!(text.contains("MAX_FILE_BYTES"), "{text}");
    let left: Vec<_> = std::fs::read_dir(app.jobs_dir(&id)).map(|d| d.collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn an_export_larger_than_the_job_budget_fails_the_job_by_name() {
    let obs = observations(1000);
    let budget = obs.len() as u64 * 2 + obs.len() as u64 / 2;
    let app = spawn_app_with(|c| {
        c.limits.max_job_bytes = budget;
        c.limits.parallel_downloads = 1;
    })
    .await;
    for n in 0..3 {
        app.provider.add_file(&format!("o{n}.ndjson"), "Observation", obs.clone());
    }
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let text = app.failed(&id).await;
    assert!(text.contains("MAX_JOB_BYTES"), "{text}");
}

#[tokio::test]
async fn a_job_kept_pending_forever_fails_at_the_job_duration_limit() {
    let app = spawn_app_with(|c| c.limits.max_job_duration = Duration::from_secs(1)).await;
    app.provider.script_status(vec![StatusStep::Pending(Some(1)); 1000]);
    let started = Instant::now();
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let text = app.failed(&id).await;
    assert!(text.contains("MAX_JOB_DURATION"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_manifest_sent_at_a_byte_a_tenth_of_a_second_is_cancelled_at_once() {
    let app = spawn_app_with(|_| {}).await;
    app.provider.add_file("p.ndjson", "Patient", patients(5));
    app.provider.drip_manifest(100);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    // Let the job get into the manifest body.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let res = app.delete_job(&id).await;
    assert!(res.status().is_success(), "{}", res.status());
    assert!(started.elapsed() < Duration::from_secs(2), "DELETE took {:?}", started.elapsed());
    assert_eq!(app.get_job(&id).await.status(), 404);
}

#[tokio::test]
async fn a_job_that_completed_is_not_failed_by_its_duration_limit_during_a_slow_release() {
    let app = spawn_app_with(|c| c.limits.max_job_duration = Duration::from_secs(2)).await;
    app.provider.add_file("p.ndjson", "Patient", patients(3));
    // The provider sits on the release DELETE past the job's time limit.
    app.provider.hold_release();
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    assert_eq!(app.completed(&id).await["extension"]["resources"], 3);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let res = app.get_job(&id).await;
    assert_eq!(res.status(), 200, "a completed job became {}", res.status());
    assert_eq!(app.read(&id, "Patient.1.ndjson"), patients(3), "its files are still there");
    app.provider.release_files();
}

#[tokio::test]
async fn a_large_gzip_file_at_a_real_exports_ratio_imports_under_the_default_limit() {
    // The reference provider sends Observation at about 17 : 1; past the ratio's 8 MiB floor, a
    // file like that must import whole with the default MAX_GZIP_RATIO.
    let app = spawn_app_with(|_| {}).await;
    let obs = observations(60_000);
    assert!(obs.len() > 9 << 20, "{} bytes: past the floor", obs.len());
    // The fake compresses as this does: the ratio must be a real export's, not a bomb's.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, obs.as_bytes()).unwrap();
    let ratio = obs.len() / enc.finish().unwrap().len();
    assert!((5..=50).contains(&ratio), "{ratio} : 1 is not a real export's ratio");
    let mut file = FakeFile::new("o.ndjson", "Observation", obs.clone());
    file.gzip = true;
    app.provider.set_chunk_size(64 * 1024);
    app.provider.push_file(file);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 0, "{body}");
    assert_eq!(app.read(&id, "Observation.1.ndjson"), obs);
}

#[tokio::test]
async fn one_providers_stalled_files_leave_another_provider_a_download_slot() {
    // Four slots in all, three for one provider; each job may download four files at once.
    let app = spawn_app_with(|c| {
        c.limits.max_total_downloads = 4;
        c.limits.max_downloads_per_provider = 3;
        c.limits.parallel_downloads = 4;
    })
    .await;
    // Two jobs of the first provider, each of the same eight files, every file stalled.
    for i in 0..8 {
        let name = format!("a{i}.ndjson");
        app.provider.add_file(&name, "Patient", patients(2));
        app.provider.hold_file(&name);
    }
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(app.start_import(&app.provider.manifest_url(), "static").await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.provider.requests_to("/fhir/files/").len() < 3 {
        assert!(Instant::now() < deadline, "the stalled files were never asked for");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another provider's job gets the slot the first may not take, and completes.
    let other = super::fake_provider::FakeProvider::start().await;
    other.set_consumer_jwks_url(format!("{}/jwks", app.base));
    other.add_file("b.ndjson", "Observation", observations(5));
    let client_id = super::load::register(&app, &other).await;
    let token = app.token_for(&client_id).await;
    let ping = super::helpers::ping(&other.manifest_url(), "static").to_string();
    let res = app.post_import_raw(Some(&token), "application/fhir+json", ping).await;
    assert_eq!(res.status(), 202);
    let id = res.headers()["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    let done = app.wait_for_job_within(&id, Duration::from_secs(10)).await;
    assert_eq!(done.status(), 200, "the second provider's job waited behind the first's stalled files");
    assert_eq!(
        app.provider.requests_to("/fhir/files/").len(),
        3,
        "the first provider never held more than its share"
    );

    // Once they move, the first provider's files all come in.
    app.provider.release_files();
    for id in stalled {
        assert_eq!(app.completed(&id).await["extension"]["resources"], 16);
    }
}

#[tokio::test]
async fn a_count_that_is_off_within_its_slack_still_imports_the_whole_file() {
    // real-providers.md: a manifest's count can be wrong; a file may hold twice it and 1,000 more.
    let app = spawn_app().await;
    app.provider.set_chunk_size(64 * 1024);
    app.provider.add_file("o.ndjson", "Observation", observations(3000));
    app.provider.announce_count(1000);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(
        (body["extension"]["failedFiles"].as_i64(), body["extension"]["resources"].as_i64()),
        (Some(0), Some(3000))
    );
}

#[tokio::test]
async fn an_endless_file_with_a_count_stops_soon_past_its_count() {
    let app = spawn_app().await;
    app.provider.set_chunk_size(64 * 1024);
    app.provider.add_file("o.ndjson", "Observation", observations(1000));
    app.provider.true_counts();
    app.provider.fault_file("o.ndjson", vec![FileFault::Endless]);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let text = only_failure(&app, &id).await;
    assert!(text.contains("count (1000)") && text.contains("3000 resources"), "{text}");
    // The endless body was cut off a few thousand lines in, not at a size bound.
    let received: usize = app.provider.requests_to("/fhir/files/").len();
    assert_eq!(received, 1, "one request, failed for good (no retries of a bad file)");
}

#[tokio::test]
async fn a_dripped_body_fails_after_two_slow_windows_in_a_row_not_after_every_retry() {
    let app = spawn_app_with(|c| {
        c.limits.min_transfer_rate = 1000;
        c.limits.min_transfer_rate_window = Duration::from_millis(300);
        c.limits.max_retries = 5;
    })
    .await;
    app.provider.add_file("o.ndjson", "Observation", observations(100));
    app.provider.fault_file("o.ndjson", vec![FileFault::Drip(20); 6]);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let text = only_failure(&app, &id).await;
    assert!(text.contains("MIN_TRANSFER_RATE") && text.contains("2 of them too slow in a row"), "{text}");
    assert_eq!(app.provider.requests_to("/fhir/files/").len(), 2, "two windows, not six");
}
