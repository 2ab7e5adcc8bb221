//! The store conformance suite: what the engine relies on of any `JobStore`, `RegistrationStore`,
//! `AuditLog` and `ReplayCache`, run whole against every backend: SQLite here, PostgreSQL in
//! `tests/api/postgres.rs` (on a throw-away cluster, never skipped).
use std::time::Duration;

use bulk_import::{
    domain::{
        Admission, Appended, AuditClass, AuditEvent, FileState, FinishedFile, Job, JobCaps, JobFile,
        JobState, Provider, RequestState, Requested, SourceAccess, Submission, SyncState,
    },
    fhir::{
        bulk_submit::{RequestHeader, SubmissionStatus},
        manifest::FileKind,
        parameters::ExportType,
    },
    store::{
        job_store::{AuditLog, JobStore, RegistrationStore, ReplayCache, SubmissionStore, SyncStore},
        leases::Renewal,
        Store,
    },
};

fn provider(client_id: &str) -> Provider {
    Provider {
        client_id: client_id.into(),
        consumer_client_id: "us".into(),
        aud: "https://ehr.example/fhir".into(),
        jwks: None,
        jwks_uri: Some("https://ehr.example/jwks.json".into()),
        scope: None,
        created_at: 1_000,
        revoked_at: None,
        token_origins: "[]".into(),
        file_origins: None,
        token_endpoint: None,
        name: Some(format!("EHR {client_id}")),
        submitter_system: Some("https://ehr.example/ids".into()),
        submitter_value: Some(format!("submitter-{client_id}")),
        sync_plan: None,
        sync_next_at: None,
    }
}

fn job(id: &str, client_id: &str, created_at: i64) -> Job {
    Job {
        id: id.into(),
        client_id: client_id.into(),
        export_type: ExportType::Dynamic,
        export_url: "https://ehr.example/fhir/$export".into(),
        kickoff: vec![],
        state: JobState::Queued,
        status_url: None,
        progress: None,
        failure: None,
        created_at,
        completed_at: None,
        plan_open: true,
    }
}

fn file(job_id: &str, idx: i64, resource_type: &str) -> JobFile {
    JobFile {
        job_id: job_id.into(),
        idx,
        manifest_idx: 0,
        kind: FileKind::Output,
        resource_type: resource_type.into(),
        url: format!("https://ehr.example/files/{idx}.ndjson"),
        requires_token: true,
        name: format!("{resource_type}.{idx}.ndjson"),
        state: FileState::Pending,
        resources: 0,
        bytes: 0,
        outcome: None,
        provider_errors: 0,
        type_counts: None,
        // Only some manifests give a count.
        expected_resources: (idx % 2 == 1).then_some(idx * 10),
    }
}

fn done(resources: i64, outcome: &str) -> FinishedFile<'_> {
    FinishedFile {
        state: FileState::Done,
        resources,
        bytes: resources * 10,
        outcome,
        provider_errors: 0,
        type_counts: None,
    }
}

pub async fn registrations_are_kept_listed_and_revoked(store: &dyn RegistrationStore) {
    store.insert_provider(&provider("p1")).await.unwrap();
    store.insert_provider(&provider("p2")).await.unwrap();
    let p1 = store.provider("p1").await.unwrap().unwrap();
    assert_eq!((p1.aud.as_str(), p1.name.as_deref()), ("https://ehr.example/fhir", Some("EHR p1")));
    assert!(p1.speaks_for(Some("https://ehr.example/ids"), "submitter-p1"), "the submitter is kept");
    assert!(!p1.speaks_for(None, "submitter-p1") && !p1.speaks_for(Some("https://ehr.example/ids"), "other"));
    assert_eq!(store.providers().await.unwrap().len(), 2);
    assert!(store.revoke_provider("p2", 2_000).await.unwrap());
    assert!(!store.revoke_provider("nobody", 2_000).await.unwrap());
    assert!(store.provider("p2").await.unwrap().is_none(), "a revoked registration is not usable");
    assert_eq!(store.provider_any("p2").await.unwrap().unwrap().revoked_at, Some(2_000));
}

async fn admission_holds_both_caps(store: &dyn JobStore) {
    let caps = JobCaps { all: 3, per_provider: 2 };
    let a = [job("aa01", "p1", 10), job("aa02", "p1", 11), job("aa03", "p1", 12)];
    assert_eq!(store.insert_job_if_room(&a[0], caps).await.unwrap(), Admission::Admitted);
    assert_eq!(store.insert_job_if_room(&a[1], caps).await.unwrap(), Admission::Admitted);
    assert_eq!(store.insert_job_if_room(&a[2], caps).await.unwrap(), Admission::ProviderFull);
    assert_eq!(store.insert_job_if_room(&job("aa04", "p3", 13), caps).await.unwrap(), Admission::Admitted);
    assert_eq!(store.insert_job_if_room(&job("aa05", "p4", 14), caps).await.unwrap(), Admission::Full);
    // A finished job frees its slot; it completes only once its plan is closed.
    assert!(!store.complete_job("aa01", 20, None).await.unwrap(), "an open plan may still grow");
    assert!(store.close_plan("aa01").await.unwrap());
    assert!(store.complete_job("aa01", 20, None).await.unwrap());
    assert_eq!(store.insert_job_if_room(&job("aa05", "p4", 14), caps).await.unwrap(), Admission::Admitted);
    for id in ["aa02", "aa04", "aa05"] {
        store.close_plan(id).await.unwrap();
        assert!(store.complete_job(id, 20, None).await.unwrap());
    }
}

async fn a_plan_records_files_outcomes_and_totals(store: &dyn JobStore) {
    let caps = JobCaps { all: 100, per_provider: 100 };
    store.insert_job_if_room(&job("bb01", "p1", 100), caps).await.unwrap();
    store.mark_kickoff_started("bb01", 101).await.unwrap();
    assert_eq!(store.kickoff_started("bb01").await.unwrap(), Some(101));
    store.set_status_url("bb01", "https://ehr.example/status/1").await.unwrap();
    let j = store.job("bb01").await.unwrap().unwrap();
    assert_eq!(j.status_url.as_deref(), Some("https://ehr.example/status/1"));
    assert_eq!(j.state, JobState::Exporting);
    store.set_progress("bb01", "50%").await.unwrap();
    assert_eq!(store.job("bb01").await.unwrap().unwrap().progress.as_deref(), Some("50%"));

    let plan = [file("bb01", 0, "Patient"), file("bb01", 1, "Observation"), file("bb01", 2, "Observation")];
    let url = "https://ehr.example/status/1";
    assert_eq!(store.append_manifest("bb01", url, &plan, true, 102).await.unwrap(), Appended::Added(0));
    assert_eq!(store.job("bb01").await.unwrap().unwrap().state, JobState::Importing);
    assert!(!store.complete_job("bb01", 103, None).await.unwrap(), "files are pending");
    let files = store.files("bb01").await.unwrap();
    assert_eq!(files.iter().map(|f| f.idx).collect::<Vec<_>>(), vec![0, 1, 2], "in plan order");
    assert_eq!(
        files.iter().map(|f| f.expected_resources).collect::<Vec<_>>(),
        vec![None, Some(10), None],
        "a manifest's count is kept, and its absence too"
    );
    assert!(store.finish_file("bb01", 1, &done(7, "{\"o\":1}"), None).await.unwrap());
    assert!(store.finish_file("bb01", 0, &done(3, "{\"o\":0}"), None).await.unwrap());
    assert!(
        !store.finish_file("bb01", 0, &done(3, "{\"o\":0}"), None).await.unwrap(),
        "only a pending file finishes"
    );
    let counts = store.file_counts("bb01").await.unwrap();
    assert_eq!((counts.total, counts.finished), (3, 2));
    store.fail_pending_files("bb01", &[(0, "{\"x\":0}".into()), (2, "{\"o\":2}".into())]).await.unwrap();
    let files = store.files("bb01").await.unwrap();
    assert_eq!(files[0].state, FileState::Done, "a finished file keeps its result");
    assert_eq!(files[2].state, FileState::Failed);
    let totals = store.file_totals("bb01").await.unwrap();
    assert_eq!((totals.files, totals.failed, totals.resources, totals.outcomes), (3, 1, 10, 3));
    assert_eq!(store.file_outcomes("bb01").await.unwrap(), vec!["{\"o\":0}", "{\"o\":1}", "{\"o\":2}"]);
    let by_type = store.type_counts("bb01").await.unwrap();
    assert_eq!(by_type.get("Observation"), Some(&7));
    assert_eq!(by_type.get("Patient"), Some(&3));
}

async fn a_finished_job_stays_as_it_finished(store: &dyn JobStore) {
    let caps = JobCaps { all: 100, per_provider: 100 };
    store.insert_job_if_room(&job("cc01", "p1", 200), caps).await.unwrap();
    store.close_plan("cc01").await.unwrap();
    assert!(store.complete_job("cc01", 210, None).await.unwrap());
    assert!(!store.fail_job("cc01", "too late", 220, None).await.unwrap(), "a finished job is not failed");
    let j = store.job("cc01").await.unwrap().unwrap();
    assert_eq!((j.state, j.failure, j.completed_at), (JobState::Completed, None, Some(210)));
    store.insert_job_if_room(&job("cc03", "p1", 200), caps).await.unwrap();
    assert!(store.cancel_job("cc03", 215).await.unwrap());
    assert!(!store.cancel_job("cc03", 216).await.unwrap(), "once");
    assert!(!store.cancel_job("cc01", 216).await.unwrap(), "a completed job is not cancelled");
    let c = store.job("cc03").await.unwrap().unwrap();
    assert_eq!((c.state, c.completed_at), (JobState::Cancelled, Some(215)));
    assert!(!store.unfinished_jobs().await.unwrap().iter().any(|j| j.id == "cc03"));
    store.insert_job_if_room(&job("cc02", "p1", 200), caps).await.unwrap();
    assert!(store.fail_job("cc02", "the provider said no", 230, None).await.unwrap());
    assert_eq!(store.job("cc02").await.unwrap().unwrap().state, JobState::Failed);
}

async fn unfinished_expired_and_deleted_jobs(store: &dyn JobStore) {
    let caps = JobCaps { all: 100, per_provider: 100 };
    store.insert_job_if_room(&job("dd01", "p1", 300), caps).await.unwrap();
    store.insert_job_if_room(&job("dd02", "p1", 300), caps).await.unwrap();
    store.touch("dd02", 5_000).await.unwrap();
    let unfinished: Vec<String> = store.unfinished_jobs().await.unwrap().into_iter().map(|j| j.id).collect();
    assert!(unfinished.contains(&"dd01".to_string()) && !unfinished.contains(&"cc01".to_string()));
    // Finished before 215: cc01 (210). Silent since before 1,000: dd01 (300), not dd02 (touched).
    let expired = store.expired_jobs(215, 1_000).await.unwrap();
    assert!(expired.contains(&"cc01".to_string()) && expired.contains(&"dd01".to_string()), "{expired:?}");
    assert!(!expired.contains(&"dd02".to_string()) && !expired.contains(&"cc02".to_string()), "{expired:?}");
    assert!(store.delete_job("bb01").await.unwrap());
    assert!(store.job("bb01").await.unwrap().is_none());
    assert!(store.files("bb01").await.unwrap().is_empty(), "a deleted job's files go with it");
    assert!(!store.delete_job("bb01").await.unwrap());
}

async fn a_plan_grows_and_manifests_are_withdrawn(store: &dyn JobStore) {
    let caps = JobCaps { all: 100, per_provider: 100 };
    store.insert_job_if_room(&job("ee01", "p1", 400), caps).await.unwrap();
    let (m1, m2) = ("https://ehr.example/m/1.json", "https://ehr.example/m/2.json");
    let first = [file("ee01", 0, "Patient"), file("ee01", 1, "Patient")];
    assert_eq!(store.append_manifest("ee01", m1, &first, false, 401).await.unwrap(), Appended::Added(0));
    assert_eq!(store.append_manifest("ee01", m1, &[], false, 402).await.unwrap(), Appended::Duplicate);
    // Numbered from an old reading of the plan: refused, nothing stored.
    let stale = [file("ee01", 1, "Observation")];
    assert_eq!(store.append_manifest("ee01", m2, &stale, false, 403).await.unwrap(), Appended::Stale);
    let second = [file("ee01", 2, "Observation")];
    assert_eq!(store.append_manifest("ee01", m2, &second, false, 404).await.unwrap(), Appended::Added(1));
    let files = store.files("ee01").await.unwrap();
    assert_eq!(
        files.iter().map(|f| (f.idx, f.manifest_idx)).collect::<Vec<_>>(),
        vec![(0, 0), (1, 0), (2, 1)]
    );
    assert!(store.finish_file("ee01", 0, &done(4, "{\"o\":0}"), None).await.unwrap());

    let withdrawn = store.withdraw_manifest("ee01", m1).await.unwrap().expect("the manifest is there");
    assert_eq!(
        withdrawn.iter().map(|f| (f.idx, f.state)).collect::<Vec<_>>(),
        vec![(0, FileState::Done), (1, FileState::Pending)]
    );
    assert!(store.withdraw_manifest("ee01", m1).await.unwrap().is_none(), "once only");
    assert!(
        !store.finish_file("ee01", 1, &done(1, "{\"o\":1}"), None).await.unwrap(),
        "a withdrawn file is not recorded"
    );
    let counts = store.file_counts("ee01").await.unwrap();
    assert_eq!((counts.total, counts.finished), (1, 0), "withdrawn files are not part of the import");
    assert!(store.file_outcomes("ee01").await.unwrap().is_empty());
    assert_eq!(store.type_counts("ee01").await.unwrap().get("Patient"), None);
    let manifests = store.manifests("ee01").await.unwrap();
    assert_eq!(
        manifests.iter().map(|m| (m.idx, m.withdrawn)).collect::<Vec<_>>(),
        vec![(0, true), (1, false)]
    );
    // A withdrawn manifest's URL may come again (a replacement under the same URL).
    let again = [file("ee01", 3, "Patient")];
    assert_eq!(store.append_manifest("ee01", m1, &again, false, 405).await.unwrap(), Appended::Added(2));

    assert!(store.finish_file("ee01", 2, &done(2, "{\"o\":2}"), None).await.unwrap());
    assert!(store.finish_file("ee01", 3, &done(5, "{\"o\":3}"), None).await.unwrap());
    assert!(!store.complete_job("ee01", 406, None).await.unwrap(), "the plan is open");
    assert!(store.close_plan("ee01").await.unwrap());
    assert!(!store.close_plan("ee01").await.unwrap());
    assert_eq!(
        store.append_manifest("ee01", "https://ehr.example/m/3.json", &[], false, 407).await.unwrap(),
        Appended::Closed
    );
    assert!(store.complete_job("ee01", 408, None).await.unwrap());
    let totals = store.file_totals("ee01").await.unwrap();
    assert_eq!((totals.files, totals.resources), (2, 7));
    let summary = store.job_summary("ee01").await.unwrap().expect("a summary of the job");
    assert_eq!((summary.files_total, summary.files_finished, summary.resources), (2, 2, 7));
    assert_eq!(summary.provider_aud.as_deref(), Some("https://ehr.example/fhir"));
    let listed = store.job_summaries().await.unwrap();
    assert!(listed.iter().any(|j| j.id == "ee01"), "the listing holds the job");
    assert!(listed.windows(2).all(|w| w[0].created_at >= w[1].created_at), "newest first");
    assert!(store.job_summary("none").await.unwrap().is_none());

    // The job page's reads, counted in the database: a page of files, totals per type and per
    // manifest (withdrawn files apart).
    let page = store.files_page("ee01", 1, 2).await.unwrap();
    assert_eq!(page.iter().map(|f| f.idx).collect::<Vec<_>>(), vec![1, 2]);
    assert!(store.files_page("ee01", 10, 2).await.unwrap().is_empty());
    let (types, untyped) = store.type_totals("ee01").await.unwrap();
    let of = |t: &str| types.iter().find(|x| x.resource_type == t).cloned().expect("a type's totals");
    assert_eq!(
        (of("Observation").files, of("Observation").files_done, of("Observation").resources),
        (1, 1, 2)
    );
    assert_eq!((of("Patient").files, of("Patient").resources), (1, 5), "the withdrawn ones apart");
    assert!(untyped.is_empty());
    let by_manifest = store.manifest_files("ee01").await.unwrap();
    let counted: Vec<(i64, i64, i64, i64)> =
        by_manifest.iter().map(|m| (m.manifest_idx, m.files, m.done, m.withdrawn)).collect();
    assert_eq!(counted, vec![(0, 2, 0, 2), (1, 1, 1, 0), (2, 1, 1, 0)]);

    // Live progress: written, read back by any process, replaced, cleared.
    use bulk_import::store::live_progress::LiveCounters;
    let live = LiveCounters { bytes: 10, resources: 2, files: "[]".into(), at_ms: 1 };
    store.publish_live("ee01", &live).await.unwrap();
    store.publish_live("ee01", &LiveCounters { bytes: 20, ..live.clone() }).await.unwrap();
    assert_eq!(store.live("ee01").await.unwrap().map(|l| l.bytes), Some(20));
    let summary = store.job_summary("ee01").await.unwrap().unwrap();
    assert_eq!((summary.live_bytes, summary.live_resources), (Some(20), Some(2)));
    store.clear_live("ee01").await.unwrap();
    assert_eq!(store.live("ee01").await.unwrap(), None);
}

async fn leases_are_claimed_fenced_and_cancelled(store: &dyn JobStore) {
    let caps = JobCaps { all: 100, per_provider: 100 };
    let lease = Duration::from_secs(60);
    store.insert_job_if_room(&job("ff01", "p1", 500), caps).await.unwrap();
    let first = store.claim_job("ff01", "replica-a", lease).await.unwrap().expect("a free job is claimed");
    assert_eq!(first.takeovers, 0, "a first claim takes nothing over");
    let a = first.token;
    assert_eq!(store.lease_holder("ff01").await.unwrap().as_deref(), Some("replica-a"));
    assert_eq!(store.claim_job("ff01", "replica-b", lease).await.unwrap(), None, "held by another");
    assert_eq!(store.renew_lease("ff01", "replica-a", a, lease).await.unwrap(), Renewal::Held);
    // The holder may claim again (a restart of the same instance); the token moves on.
    let a2 = store.claim_job("ff01", "replica-a", lease).await.unwrap().unwrap().token;
    assert!(a2 > a);
    assert_eq!(
        store.renew_lease("ff01", "replica-a", a, lease).await.unwrap(),
        Renewal::Lost,
        "fenced by the old token"
    );
    assert!(!store.release_lease("ff01", "replica-a", a).await.unwrap());
    assert!(store.release_lease("ff01", "replica-a", a2).await.unwrap());
    assert_eq!(store.lease_holder("ff01").await.unwrap(), None, "released");
    let b = store.claim_job("ff01", "replica-b", lease).await.unwrap().expect("a released lease is free");
    assert_eq!(b.takeovers, 0, "a released lease is not a takeover");
    let b = b.token;
    assert_eq!(store.renew_lease("ff01", "replica-a", a2, lease).await.unwrap(), Renewal::Lost);
    // A lease that ran out is free for anyone.
    store.release_lease("ff01", "replica-b", b).await.unwrap();
    let short = store.claim_job("ff01", "replica-b", Duration::ZERO).await.unwrap().unwrap().token;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.lease_holder("ff01").await.unwrap(), None, "a lapsed lease has no holder");
    let taken =
        store.claim_job("ff01", "replica-c", lease).await.unwrap().expect("an expired lease is taken over");
    assert_eq!(taken.takeovers, 1, "counted, and kept across claims");
    let c = taken.token;
    assert!(c > short);
    assert_eq!(store.renew_lease("ff01", "replica-b", short, lease).await.unwrap(), Renewal::Lost);

    assert!(store.request_cancel("ff01").await.unwrap());
    assert_eq!(store.renew_lease("ff01", "replica-c", c, lease).await.unwrap(), Renewal::CancelRequested);
    assert!(!store.request_cancel("nope").await.unwrap());

    // The next free job, oldest first; a job asked to stop and a held one are skipped.
    store.insert_job_if_room(&job("ff02", "p1", 1), caps).await.unwrap();
    store.insert_job_if_room(&job("ff03", "p1", 2), caps).await.unwrap();
    store.claim_job("ff03", "replica-b", lease).await.unwrap().unwrap();
    // A job a process touched a moment ago is that process's to claim.
    store.insert_job_if_room(&job("ff04", "p1", 3), caps).await.unwrap();
    store.touch("ff04", bulk_import::time_util::now_unix()).await.unwrap();
    // Silent only a while (touched at 10): free for a takeover.
    store.insert_job_if_room(&job("ff05", "p1", 10), caps).await.unwrap();
    let mut claimed = Vec::new();
    // A job silent since before `silent_since` is the reaper's (ff02 was last touched at 1).
    let mut recent = Vec::new();
    while let Some((j, _)) = store.claim_next("replica-e", lease, 2).await.unwrap() {
        recent.push(j.id);
        assert!(recent.len() < 20, "claim_next takes each free job once: {recent:?}");
    }
    assert!(!recent.iter().any(|id| id == "ff02"), "{recent:?}");
    assert!(
        recent.iter().any(|id| id == "ff05"),
        "a job silent since after `silent_since` is claimed: {recent:?}"
    );
    while let Some((j, _)) = store.claim_next("replica-d", lease, 0).await.unwrap() {
        claimed.push(j.id);
        assert!(claimed.len() < 20, "claim_next takes each free job once: {claimed:?}");
    }
    assert_eq!(claimed.first().map(String::as_str), Some("ff02"));
    let held_or_starting = |id: &String| id == "ff01" || id == "ff03" || id == "ff04";
    assert!(!recent.iter().chain(&claimed).any(held_or_starting), "{recent:?} {claimed:?}");
    store.close_plan("ff01").await.unwrap();
    // Only the holder of the current token may end the job: a process taken over may not.
    assert!(!store.fail_job("ff01", "stale", 600, Some(short)).await.unwrap(), "fenced out");
    assert!(!store.complete_job("ff01", 600, Some(short)).await.unwrap(), "fenced out");
    assert!(store.complete_job("ff01", 600, Some(c)).await.unwrap(), "the holder's token ends it");
    assert_eq!(
        store.claim_job("ff01", "replica-c", lease).await.unwrap(),
        None,
        "a finished job is not claimed"
    );
}

async fn a_files_checkpoint_is_fenced_and_goes_when_the_file_ends(store: &dyn JobStore) {
    let caps = JobCaps { all: 100, per_provider: 100 };
    let lease = Duration::from_secs(60);
    store.insert_job_if_room(&job("gg01", "p1", 700), caps).await.unwrap();
    let files = [file("gg01", 0, "Patient"), file("gg01", 1, "Observation")];
    store.append_manifest("gg01", "https://ehr.example/m", &files, true, 701).await.unwrap();
    let old = store.claim_file("gg01", 0, "replica-a", lease).await.unwrap().unwrap().token;
    assert_eq!(store.file_checkpoint("gg01", 0).await.unwrap(), None, "none to begin with");
    assert!(store.save_checkpoint("gg01", 0, Some("{\"at\":1}"), Some(old)).await.unwrap());
    assert!(store.save_checkpoint("gg01", 0, Some("{\"at\":2}"), Some(old)).await.unwrap(), "moved on");
    assert_eq!(store.file_checkpoint("gg01", 0).await.unwrap().as_deref(), Some("{\"at\":2}"));
    assert_eq!(store.file_checkpoint("gg01", 1).await.unwrap(), None, "kept per file");
    // Taken over: the old token moves nothing, nor ends the file.
    assert_eq!(store.claim_file("gg01", 0, "replica-b", lease).await.unwrap(), None, "held");
    assert!(store.release_file_lease("gg01", 0, "replica-a", old).await.unwrap());
    let new = store.claim_file("gg01", 0, "replica-b", lease).await.unwrap().unwrap();
    assert_eq!(new.takeovers, 0, "a released lease is not a takeover");
    let new = new.token;
    assert!(new > old);
    assert!(!store.save_checkpoint("gg01", 0, Some("{\"at\":9}"), Some(old)).await.unwrap(), "fenced");
    assert!(!store.finish_file("gg01", 0, &done(1, "{}"), Some(old)).await.unwrap(), "fenced");
    assert_eq!(store.file_checkpoint("gg01", 0).await.unwrap().as_deref(), Some("{\"at\":2}"));
    // The holder goes on from it; the file's end takes it away.
    assert!(store.save_checkpoint("gg01", 0, Some("{\"at\":3}"), Some(new)).await.unwrap());
    assert!(store.finish_file("gg01", 0, &done(1, "{}"), Some(new)).await.unwrap());
    assert_eq!(store.file_checkpoint("gg01", 0).await.unwrap(), None, "an ended file has none");
    assert!(!store.save_checkpoint("gg01", 0, Some("{}"), Some(new)).await.unwrap(), "nor gets one");
    assert_eq!(store.claim_file("gg01", 0, "replica-b", lease).await.unwrap(), None, "nor a lease");
    // Forgotten on request (what it pointed to is gone).
    assert!(store.save_checkpoint("gg01", 1, Some("{}"), None).await.unwrap());
    assert!(store.save_checkpoint("gg01", 1, None, None).await.unwrap());
    assert_eq!(store.file_checkpoint("gg01", 1).await.unwrap(), None);
}

async fn files_are_leased_spread_over_processes_and_taken_over(store: &dyn JobStore) {
    let caps = JobCaps { all: 100, per_provider: 100 };
    let lease = Duration::from_secs(60);
    store.insert_job_if_room(&job("hh01", "p1", 800), caps).await.unwrap();
    let files: Vec<JobFile> = (0..4).map(|i| file("hh01", i, "Observation")).collect();
    store.append_manifest("hh01", "https://ehr.example/h", &files, true, 801).await.unwrap();
    // Nothing to help with until the job is importing under a live owner.
    assert!(store.claim_next_file("helper", lease).await.unwrap().is_none(), "queued: not yet");
    store.set_state("hh01", JobState::Importing).await.unwrap();
    assert!(store.claim_next_file("helper", lease).await.unwrap().is_none(), "nobody runs it");
    let owner = store.claim_job("hh01", "owner", lease).await.unwrap().unwrap().token;
    assert!(store.claim_next_file("owner", lease).await.unwrap().is_none(), "not the owner's own job");
    let mine = store.claim_file("hh01", 0, "owner", lease).await.unwrap().unwrap();
    // A helper takes the first file nobody holds, each once; the owner cannot claim those.
    let (f1, c1) = store.claim_next_file("helper", lease).await.unwrap().expect("a free file");
    assert_eq!((f1.job_id.as_str(), f1.idx, f1.url.as_str()), ("hh01", 1, files[1].url.as_str()));
    assert_eq!(c1.takeovers, 0);
    let (f2, c2) = store.claim_next_file("helper-2", lease).await.unwrap().unwrap();
    assert_eq!(f2.idx, 2, "racing helpers get different files");
    assert_eq!(store.claim_file("hh01", 1, "owner", lease).await.unwrap(), None, "held by the helper");
    assert!(store.held_by_others("hh01", "owner").await.unwrap(), "helpers hold files");
    assert!(store.renew_file_lease("hh01", 1, "helper", c1.token, lease).await.unwrap());
    assert!(!store.renew_file_lease("hh01", 1, "helper", c1.token - 1, lease).await.unwrap(), "fenced");
    store.renew_file_leases("hh01", "owner", lease).await.unwrap();
    // The helper's lease lapses (it died): the owner claims the file again, counted.
    let short = store.claim_file("hh01", 3, "helper-3", Duration::ZERO).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = store.claim_file("hh01", 3, "owner", lease).await.unwrap().expect("a lapsed file lease");
    assert_eq!(again.takeovers, 1, "a takeover of the file");
    assert!(!store.renew_file_lease("hh01", 3, "helper-3", short.token, lease).await.unwrap());
    assert!(!store.finish_file("hh01", 3, &done(1, "{}"), Some(short.token)).await.unwrap(), "fenced");
    // A stop request ends the helpers' renewals.
    assert!(store.finish_file("hh01", 0, &done(1, "{}"), Some(mine.token)).await.unwrap());
    assert!(store.request_cancel("hh01").await.unwrap());
    assert!(!store.renew_file_lease("hh01", 1, "helper", c1.token, lease).await.unwrap(), "stopping");
    assert!(store.release_file_lease("hh01", 1, "helper", c1.token).await.unwrap());
    assert!(store.release_file_lease("hh01", 2, "helper-2", c2.token).await.unwrap());
    store.release_lease("hh01", "owner", owner).await.unwrap();
    assert!(!store.held_by_others("hh01", "owner").await.unwrap(), "only the owner's own file lease is left");
}

async fn submissions_are_kept_closed_once_and_name_each_manifest_once(
    jobs: &dyn JobStore,
    store: &dyn SubmissionStore,
) {
    let caps = JobCaps { all: 100, per_provider: 100 };
    for (id, at) in [("ss01", 900), ("ss02", 901)] {
        jobs.insert_job_if_room(&job(id, "p1", at), caps).await.unwrap();
    }
    let submission = |job_id: &str, submission_id: &str, at: i64| Submission {
        client_id: "p1".into(),
        submission_id: submission_id.into(),
        job_id: job_id.into(),
        submitter_system: Some("https://ehr.example/ids".into()),
        submitter_value: "ehr-1".into(),
        status: SubmissionStatus::InProgress,
        fhir_base_url: Some("https://ehr.example/fhir".into()),
        created_at: at,
        updated_at: at,
    };
    let first = submission("ss01", "sub-a", 900);
    assert!(store.insert_submission(&first).await.unwrap());
    assert!(
        !store.insert_submission(&submission("ss02", "sub-a", 901)).await.unwrap(),
        "one per id and client"
    );
    assert!(store.insert_submission(&submission("ss02", "sub-b", 901)).await.unwrap());
    assert_eq!(store.submission("p1", "sub-a").await.unwrap(), Some(first.clone()));
    assert_eq!(store.submission("p2", "sub-a").await.unwrap(), None, "another client's ids are its own");
    assert_eq!(store.submission_of_job("ss01").await.unwrap(), Some(first.clone()));
    let listed: Vec<String> =
        store.submissions("p1").await.unwrap().into_iter().map(|s| s.submission_id).collect();
    assert_eq!(listed, vec!["sub-b", "sub-a"], "newest first");
    let recent = store.recent_submissions(10).await.unwrap();
    assert_eq!(recent.len(), 2, "every submission, newest first");
    assert_eq!(store.recent_submissions(1).await.unwrap().len(), 1, "at most the limit");

    // Requests are numbered in order; a manifest is named once; a withdrawal names none.
    let m = |n: u8| format!("https://ehr.example/m/{n}");
    let plain = SourceAccess::default();
    // How a manifest is reached is kept with its request, header values and all.
    let access = SourceAccess {
        headers: vec![RequestHeader { name: "X-Api-Key".into(), value: "k-1".into() }],
        oauth_metadata_urls: vec!["https://ehr.example/.well-known/smart-configuration".into()],
        encryption_key: Some("AAECAwQFBgcICQoLDA0ODw".into()),
    };
    assert_eq!(
        store.request_manifest("ss01", Some(&m(1)), None, &plain, 902).await.unwrap(),
        Requested::Added(0)
    );
    assert_eq!(
        store.request_manifest("ss01", Some(&m(1)), None, &plain, 903).await.unwrap(),
        Requested::Duplicate
    );
    assert_eq!(
        store.request_manifest("ss01", Some(&m(2)), Some(&m(1)), &access, 904).await.unwrap(),
        Requested::Added(1)
    );
    assert_eq!(
        store.request_manifest("ss01", None, Some(&m(2)), &plain, 905).await.unwrap(),
        Requested::Added(2)
    );
    assert_eq!(
        store.request_manifest("ss02", Some(&m(1)), None, &plain, 906).await.unwrap(),
        Requested::Added(0)
    );
    let requests = store.manifest_requests("ss01").await.unwrap();
    assert_eq!(requests.len(), 3);
    assert_eq!(
        (requests[1].manifest_url.as_deref(), requests[1].replaces_url.as_deref()),
        (Some(&*m(2)), Some(&*m(1)))
    );
    assert!(requests.iter().all(|r| r.state == RequestState::Pending));
    assert_eq!((&requests[0].access, &requests[1].access), (&plain, &access));
    assert!(store.finish_manifest_request("ss01", 0, RequestState::Done, None).await.unwrap());
    assert!(
        !store.finish_manifest_request("ss01", 0, RequestState::Failed, Some("{}")).await.unwrap(),
        "once"
    );
    assert!(store.finish_manifest_request("ss01", 1, RequestState::Failed, Some("{\"o\":1}")).await.unwrap());
    let requests = store.manifest_requests("ss01").await.unwrap();
    assert_eq!(requests[1].state, RequestState::Failed);
    assert_eq!(requests[1].outcome.as_deref(), Some("{\"o\":1}"));

    // Closed once; nothing more is asked of a closed submission.
    assert!(store.close_submission("ss01", SubmissionStatus::Completed, 910).await.unwrap());
    assert!(!store.close_submission("ss01", SubmissionStatus::Stopped, 911).await.unwrap(), "closed already");
    let closed = store.submission("p1", "sub-a").await.unwrap().unwrap();
    assert_eq!((closed.status, closed.updated_at), (SubmissionStatus::Completed, 910));
    assert_eq!(
        store.request_manifest("ss01", Some(&m(3)), None, &plain, 912).await.unwrap(),
        Requested::Closed
    );
    // Removing the job removes its submission.
    assert!(jobs.delete_job("ss02").await.unwrap());
    assert_eq!(store.submission("p1", "sub-b").await.unwrap(), None);
    assert!(store.manifest_requests("ss02").await.unwrap().is_empty());
}

/// Each assertion id is taken once (per client), until it expires.
pub async fn the_replay_cache_takes_each_id_once(cache: &dyn ReplayCache) {
    assert!(cache.remember_jti("p1", "jti-1", 2_000, 1_000).await.unwrap(), "a new id");
    assert!(!cache.remember_jti("p1", "jti-1", 2_000, 1_500).await.unwrap(), "a replay");
    assert!(cache.remember_jti("p2", "jti-1", 2_000, 1_500).await.unwrap(), "another client's id");
    // Once expired it is forgotten (the assertion itself would be refused as expired anyway).
    assert!(cache.remember_jti("p1", "jti-1", 4_000, 2_001).await.unwrap());
}

pub async fn the_audit_trail_keeps_the_newest_events(log: &dyn AuditLog) {
    for n in 0..5 {
        let event = AuditEvent {
            at: 700 + n,
            action: format!("action {n}"),
            actor: "admin from 127.0.0.1".into(),
            subject: Some("s".into()),
            detail: None,
        };
        log.record_audit(&event, 3).await.unwrap();
    }
    let events = log.audit_events(10).await.unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["action 4", "action 3", "action 2"], "newest first, only `keep` kept");
    assert_eq!(log.audit_events(1).await.unwrap().len(), 1);

    // A flood of refused pings rotates only the refusals.
    for n in 0..10 {
        let refused = AuditEvent {
            at: 800 + n,
            action: bulk_import::domain::PING_REFUSED.into(),
            actor: "unauthenticated caller from 192.0.2.1".into(),
            subject: None,
            detail: Some(format!("bad token {n}")),
        };
        log.record_audit(&refused, 3).await.unwrap();
    }
    let events = log.audit_events(10).await.unwrap();
    let shown: Vec<String> =
        events.iter().map(|e| e.detail.clone().unwrap_or_else(|| e.action.clone())).collect();
    assert_eq!(
        shown,
        ["bad token 9", "bad token 8", "bad token 7", "action 4", "action 3", "action 2"],
        "the other events outlive the flood"
    );
    let only = |class| async move {
        let events = log.audit_events_of(class, 10).await.unwrap();
        events.iter().map(|e| e.action.clone()).collect::<Vec<_>>()
    };
    assert_eq!(only(AuditClass::RefusedPings).await, vec![bulk_import::domain::PING_REFUSED; 3]);
    assert_eq!(only(AuditClass::AllButRefusedPings).await, ["action 4", "action 3", "action 2"]);
}

/// The whole suite, in order (later steps use earlier ones' rows).
pub async fn assert_store_conformance(
    jobs: &dyn JobStore,
    registrations: &dyn RegistrationStore,
    audit: &dyn AuditLog,
    replay: &dyn ReplayCache,
    submissions: &dyn SubmissionStore,
    sync: &dyn SyncStore,
) {
    jobs.ping().await.unwrap();
    registrations_are_kept_listed_and_revoked(registrations).await;
    admission_holds_both_caps(jobs).await;
    a_plan_records_files_outcomes_and_totals(jobs).await;
    a_finished_job_stays_as_it_finished(jobs).await;
    unfinished_expired_and_deleted_jobs(jobs).await;
    a_plan_grows_and_manifests_are_withdrawn(jobs).await;
    leases_are_claimed_fenced_and_cancelled(jobs).await;
    a_files_checkpoint_is_fenced_and_goes_when_the_file_ends(jobs).await;
    files_are_leased_spread_over_processes_and_taken_over(jobs).await;
    submissions_are_kept_closed_once_and_name_each_manifest_once(jobs, submissions).await;
    the_audit_trail_keeps_the_newest_events(audit).await;
    the_replay_cache_takes_each_id_once(replay).await;
    a_sources_sync_state_keeps_the_latest_ending_and_moves_since_only_on_a_whole_import(sync).await;
    a_jobs_transaction_time_and_notice_are_kept(jobs).await;
}

async fn a_jobs_transaction_time_and_notice_are_kept(jobs: &dyn JobStore) {
    let caps = JobCaps { all: 1000, per_provider: 1000 };
    jobs.insert_job_if_room(&job("tt01", "p1", 990), caps).await.unwrap();
    assert_eq!(jobs.transaction_time("tt01").await.unwrap(), None);
    jobs.set_transaction_time("tt01", "2026-11-30T10:00:00.123+01:00").await.unwrap();
    assert_eq!(
        jobs.transaction_time("tt01").await.unwrap().as_deref(),
        Some("2026-11-30T10:00:00.123+01:00")
    );
    assert_eq!(jobs.transaction_time("nope").await.unwrap(), None);
    assert_eq!(jobs.notice("tt01").await.unwrap(), None);
    jobs.set_notice("tt01", "delivered").await.unwrap();
    assert_eq!(jobs.notice("tt01").await.unwrap().as_deref(), Some("delivered"));
}

async fn a_sources_sync_state_keeps_the_latest_ending_and_moves_since_only_on_a_whole_import(
    sync: &dyn SyncStore,
) {
    let state = |job: &str, result: &str, at: i64, since: Option<&str>| SyncState {
        client_id: "p1".into(),
        source: "https://ehr.example/fhir/$export _type=Patient _typeFilter=".into(),
        export_url: "https://ehr.example/fhir/$export".into(),
        types: Some("Patient".into()),
        type_filters: None,
        since: since.map(str::to_string),
        last_success_at: since.map(|_| at),
        last_job_id: job.into(),
        last_result: result.into(),
        last_at: at,
        files: 2,
        failed_files: i64::from(result != "completed"),
        resources: 10,
    };
    let source = "https://ehr.example/fhir/$export _type=Patient _typeFilter=";
    sync.record_sync(&state("j1", "completed", 100, Some("2026-01-01T00:00:00Z"))).await.unwrap();
    sync.record_sync(&state("j2", "completed-with-errors", 200, None)).await.unwrap();
    let kept = sync.sync_state("p1", source).await.unwrap().unwrap();
    assert_eq!((kept.last_job_id.as_str(), kept.last_result.as_str()), ("j2", "completed-with-errors"));
    assert_eq!(kept.since.as_deref(), Some("2026-01-01T00:00:00Z"), "a partial import does not move it");
    assert_eq!((kept.last_success_at, kept.failed_files), (Some(100), 1));
    // An earlier ending recorded late does not undo a later one.
    sync.record_sync(&state("j0", "completed", 50, Some("2025-01-01T00:00:00Z"))).await.unwrap();
    assert_eq!(sync.sync_state("p1", source).await.unwrap().unwrap().last_job_id, "j2");
    sync.record_sync(&state("j3", "completed", 300, Some("2026-02-01T00:00:00Z"))).await.unwrap();
    let kept = sync.sync_state("p1", source).await.unwrap().unwrap();
    assert_eq!((kept.since.as_deref(), kept.last_success_at), (Some("2026-02-01T00:00:00Z"), Some(300)));
    // Another source of the same provider is its own.
    let other = SyncState {
        source: "https://ehr.example/fhir/$export _type= _typeFilter=".into(),
        types: None,
        ..state("j4", "failed", 400, None)
    };
    sync.record_sync(&other).await.unwrap();
    assert_eq!(sync.sync_states().await.unwrap().len(), 2);
    assert_eq!(sync.sync_state("p2", source).await.unwrap(), None);
}

#[tokio::test]
async fn sqlite_passes_the_store_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.sqlite")).await.unwrap();
    assert_store_conformance(&store, &store, &store, &store, &store, &store).await;
}
