//! The engine on a plan that grows, as Bulk Submit will drive it: manifests added to a running
//! job, one withdrawn, the plan closed; and a job whose lease is taken over stops. Against the
//! fake provider and tmp-fs, through the library's own services.
use std::time::Duration;

use bulk_import::{
    domain::{FileState, Job, JobCaps, JobState},
    fhir::{
        manifest::{FileKind, PlannedFile},
        parameters::ExportType,
    },
    jobs::{
        pipeline,
        plan::{self, PlanError},
    },
    time_util::now_unix,
};

use super::helpers::{observations, patients, spawn_app, spawn_app_with, wait_until, TestApp};

/// A job with an open plan and nothing to pull: its manifests come from outside.
async fn open_job(app: &TestApp, id: &str) {
    let job = Job {
        id: id.into(),
        client_id: app.client_id.clone(),
        export_type: ExportType::Static,
        export_url: app.provider.manifest_url(),
        kickoff: vec![],
        state: JobState::Importing,
        status_url: None,
        progress: None,
        failure: None,
        created_at: now_unix(),
        completed_at: None,
        plan_open: true,
    };
    app.ctx.store.insert_job_if_room(&job, JobCaps { all: 100, per_provider: 100 }).await.unwrap();
    pipeline::start(&app.ctx, id.into()).await;
}

fn planned(app: &TestApp, name: &str, resource_type: &str) -> PlannedFile {
    PlannedFile {
        kind: FileKind::Output,
        resource_type: resource_type.into(),
        url: format!("{}/files/{name}", app.provider.base()),
        requires_token: true,
        expected_resources: None,
    }
}

async fn done_files(app: &TestApp, id: &str) -> usize {
    let files = app.ctx.store.files(id).await.unwrap();
    files.iter().filter(|f| f.state == FileState::Done).count()
}

#[tokio::test]
async fn a_running_job_takes_added_manifests_drops_withdrawn_ones_and_completes_when_closed() {
    let app = spawn_app().await;
    app.provider.add_file("a.ndjson", "Patient", patients(3));
    app.provider.add_file("b.ndjson", "Observation", observations(5));
    app.provider.add_file("c.ndjson", "Patient", patients(2));
    let id = "ab".repeat(16);
    open_job(&app, &id).await;
    let (m1, m2) = ("https://ehr.example/submission/m1.json", "https://ehr.example/submission/m2.json");

    plan::append(&app.ctx, &id, m1, vec![planned(&app, "a.ndjson", "Patient")], false).await.unwrap();
    wait_until("the first manifest's file", async || done_files(&app, &id).await == 1).await;
    assert_eq!(app.get_job(&id).await.status(), 202, "an open plan keeps the job running");

    let second = vec![planned(&app, "b.ndjson", "Observation"), planned(&app, "c.ndjson", "Patient")];
    plan::append(&app.ctx, &id, m2, second, false).await.unwrap();
    let again = plan::append(&app.ctx, &id, m2, vec![], false).await;
    assert!(matches!(again, Err(PlanError::Duplicate(_))), "{again:?}");
    wait_until("the second manifest's files", async || done_files(&app, &id).await == 3).await;

    let files = app.ctx.store.files(&id).await.unwrap();
    let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    assert_eq!(names.iter().collect::<std::collections::HashSet<_>>().len(), 3, "{names:?}");
    assert!(app.jobs_dir(&id).join(&names[0]).exists());
    assert_eq!(plan::withdraw(&app.ctx, &id, m1).await.unwrap(), 1, "one stored file removed");
    assert!(!app.jobs_dir(&id).join(&names[0]).exists(), "a withdrawn manifest's data is gone");
    assert!(app.jobs_dir(&id).join(&names[1]).exists() && app.jobs_dir(&id).join(&names[2]).exists());
    assert!(matches!(plan::withdraw(&app.ctx, &id, m1).await, Err(PlanError::UnknownManifest(_))));
    assert_eq!(app.get_job(&id).await.status(), 202);

    assert!(plan::close(&app.ctx, &id).await.unwrap());
    let body = app.completed(&id).await;
    let ext = &body["extension"];
    assert_eq!(ext["files"], 2, "{body}");
    assert_eq!(ext["resourcesByType"]["Observation"], 5, "{body}");
    assert_eq!(
        ext["resourcesByType"]["Patient"], 2,
        "the withdrawn manifest's patients are not counted: {body}"
    );
    assert_eq!(app.get_outcomes(&id).await.len(), 2);
    let late = plan::append(&app.ctx, &id, "https://ehr.example/submission/m3.json", vec![], false).await;
    assert!(matches!(late, Err(PlanError::Closed)), "{late:?}");
}

#[tokio::test]
async fn a_job_whose_lease_is_taken_over_stops_here_without_failing() {
    let app = spawn_app_with(|c| c.jobs_max_age = Duration::from_secs(1)).await;
    app.provider.add_file("held.ndjson", "Patient", patients(2));
    app.provider.hold_file("held.ndjson");
    let id = "cd".repeat(16);
    open_job(&app, &id).await;
    plan::append(
        &app.ctx,
        &id,
        "https://ehr.example/m.json",
        vec![planned(&app, "held.ndjson", "Patient")],
        true,
    )
    .await
    .unwrap();
    wait_until("the job to run here", async || app.ctx.jobs.progress(&id).is_some()).await;
    // Another claim (as by a replica after a lapse) moves the fencing token on.
    let lease = Duration::from_secs(60);
    assert!(app.ctx.store.claim_job(&id, &app.ctx.jobs.owner, lease).await.unwrap().is_some());
    wait_until("the job to stop here", async || app.ctx.jobs.running_count() == 0).await;
    app.provider.release_files();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = app.ctx.store.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Importing, "not failed: it goes on where the lease is");
    assert_eq!(done_files(&app, &id).await, 0, "nothing recorded after the lease was lost");
    let leftovers: Vec<_> =
        std::fs::read_dir(app.jobs_dir(&id)).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "the aborted file left nothing: {leftovers:?}");
}

#[tokio::test]
async fn a_manifest_withdrawn_while_its_file_downloads_into_the_resource_store_leaves_no_rows() {
    use super::fake_provider::{FileFault, Ranges};
    use bulk_import::destination::{resource_store::StoreUrl, DestinationKind};
    let app = spawn_app_with(|c| {
        c.destination = DestinationKind::ResourceStore(StoreUrl::Sqlite(c.data_dir.join("resources.sqlite")));
        c.checkpoint_bytes = 1 << 20;
    })
    .await;
    // Batches commit (and each MiB is checkpointed) before the file stalls halfway.
    app.provider.ranges(Ranges::ETag);
    app.provider.set_chunk_size(64 * 1024);
    app.provider.add_file("big.ndjson", "Observation", observations(30_000));
    app.provider.fault_file("big.ndjson", vec![FileFault::StallHalfway(1_500)]);
    let id = "ef".repeat(16);
    open_job(&app, &id).await;
    let m = "https://ehr.example/submission/m.json";
    plan::append(&app.ctx, &id, m, vec![planned(&app, "big.ndjson", "Observation")], false).await.unwrap();
    let rows = async || {
        let counts = app.admin_get("/admin/resources").await;
        counts["resources"].as_array().and_then(|a| a.first()).and_then(|c| c["count"].as_i64()).unwrap_or(0)
    };
    wait_until("batches of the file stored", async || rows().await > 0).await;
    assert_eq!(plan::withdraw(&app.ctx, &id, m).await.unwrap(), 0, "nothing done yet to remove");
    // The download stops at its next durable point (not the job's any more), and what it stored goes.
    wait_until("the withdrawn file's rows removed", async || rows().await == 0).await;
    assert!(plan::close(&app.ctx, &id).await.unwrap());
    app.completed(&id).await;
    assert_eq!(rows().await, 0);
}
