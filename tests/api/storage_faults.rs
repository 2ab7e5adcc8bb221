//! The destination fails: a disk that fills mid-job (a tmpfs of a few MiB). The job says what
//! happened and what to do, every file gets an outcome line, and nothing it stored stays behind to
//! fail the next job.
use super::{
    helpers::{observations, patients, spawn_app_with},
    small_disk::SmallDisk,
};

#[tokio::test]
async fn a_disk_that_fills_mid_job_fails_it_by_name_and_leaves_room_for_the_next() {
    let Some(disk) = SmallDisk::mount(3 << 20, "a_disk_that_fills_mid_job") else { return };
    let jobs = disk.path().join("jobs");
    let app = spawn_app_with(|c| {
        c.jobs_path = jobs.clone();
        c.limits.parallel_downloads = 1;
    })
    .await;
    // About 1.2 MB each: the first two fit on the 3 MiB disk, the third does not.
    let obs = observations(1_200_000 / observations(1).len());
    app.provider.set_chunk_size(64 * 1024);
    for n in 0..4 {
        app.provider.add_file(&format!("o{n}.ndjson"), "Observation", obs.clone());
    }
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let text = app.failed(&id).await;
    assert!(text.contains("the destination is full") && text.contains("JOBS_PATH"), "{text}");
    assert!(text.contains("were removed"), "{text}");
    let outcomes = app.get_outcomes(&id).await;
    // One line per file, then the job's own.
    assert_eq!(outcomes.len(), 5, "every file has an outcome line: {outcomes:?}");
    let not_imported = outcomes
        .iter()
        .filter(|o| {
            o["issue"][0]["diagnostics"].as_str().unwrap().contains("not imported: the job failed first")
        })
        .count();
    assert!(not_imported >= 2, "{outcomes:?}");
    let left: Vec<_> = std::fs::read_dir(jobs.join(&id)).map(|d| d.collect()).unwrap_or_default();
    assert!(left.is_empty(), "a failed job's files stay behind: {left:?}");

    // The space it held is free again: the next import goes through.
    let next = super::fake_provider::FakeProvider::start().await;
    next.set_consumer_jwks_url(format!("{}/jwks", app.base));
    next.add_file("p.ndjson", "Patient", patients(3));
    let client_id = super::load::register(&app, &next).await;
    let token = app.token_for(&client_id).await;
    let res = app
        .post_import_raw(
            Some(&token),
            "application/fhir+json",
            super::helpers::ping(&next.manifest_url(), "static").to_string(),
        )
        .await;
    assert_eq!(res.status(), 202);
    let id = res.headers()["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    assert_eq!(app.completed(&id).await["extension"]["resources"], 3);
}

#[tokio::test]
async fn an_endless_body_stops_at_the_jobs_share_of_the_free_disk_and_says_which_bound() {
    let Some(disk) = SmallDisk::mount(32 << 20, "an_endless_body_stops_at_the_jobs_share") else { return };
    let jobs = disk.path().join("jobs");
    let app = spawn_app_with(|c| {
        c.jobs_path = jobs.clone();
        c.limits.job_disk_share = 25;
    })
    .await;
    app.provider.set_chunk_size(64 * 1024);
    app.provider.add_file("o.ndjson", "Observation", observations(1000));
    app.provider.fault_file("o.ndjson", vec![super::fake_provider::FileFault::Endless]);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let text = app.failed(&id).await;
    assert!(text.contains("JOB_DISK_SHARE") && text.contains("25 %"), "{text}");
    let left: Vec<_> = std::fs::read_dir(jobs.join(&id)).map(|d| d.collect()).unwrap_or_default();
    assert!(left.is_empty(), "what it wrote is removed: {left:?}");
}

#[tokio::test]
async fn a_job_stops_when_its_disk_is_down_to_the_reserve() {
    let Some(disk) = SmallDisk::mount(48 << 20, "a_job_stops_when_its_disk_is_down_to_the_reserve") else {
        return;
    };
    let jobs = disk.path().join("jobs");
    // 40 MiB kept free of 48: the job may write about 8 MiB before a look finds the disk too full.
    let app = spawn_app_with(|c| {
        c.jobs_path = jobs.clone();
        c.limits.disk_reserve_bytes = 40 << 20;
    })
    .await;
    app.provider.set_chunk_size(64 * 1024);
    app.provider.add_file("o.ndjson", "Observation", observations(1000));
    app.provider.fault_file("o.ndjson", vec![super::fake_provider::FileFault::Endless]);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let text = app.failed(&id).await;
    assert!(text.contains("DISK_RESERVE_BYTES"), "{text}");
    assert!(super::small_disk::free_bytes(&disk.path()) > 20 << 20, "the disk never filled");
}
