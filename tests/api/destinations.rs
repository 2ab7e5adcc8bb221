//! Destination conformance: open → write → finish lands the exact bytes; abort leaves nothing;
//! a reopened file replaces an earlier partial one; one file or the whole job can be removed.
use std::time::Duration;

use bulk_import::destination::{dev_null::DevNull, s3::S3, tmp_fs::TmpFs, Destination, FileTarget};
use bytes::Bytes;
use serde_json::Value;

use super::{
    fake_provider::FakeFile,
    helpers::{observations, spawn_app_with},
    s3_server::S3Server,
};

fn target<'a>(job: &'a str, name: &'a str) -> FileTarget<'a> {
    FileTarget { job, name, resource_type: "Observation" }
}

/// What a backend keeps: dev-null keeps nothing and names nothing; the others must store the
/// exact bytes under a safe name.
#[derive(Clone, Copy, PartialEq)]
enum Keeps {
    Nothing,
    Bytes,
}

/// Runs the conformance steps; `read` returns a stored file's bytes (None when absent).
async fn assert_destination_round_trip(
    dest: &dyn Destination,
    keeps: Keeps,
    read: impl Fn(&str, &str) -> Option<Vec<u8>>,
) {
    assert_round_trip_of(dest, keeps, &read, observations(50)).await;
}

async fn assert_round_trip_of(
    dest: &dyn Destination,
    keeps: Keeps,
    read: &impl Fn(&str, &str) -> Option<Vec<u8>>,
    body: String,
) {
    let (head, tail) = body.as_bytes().split_at(body.len() / 3);

    // A partial write that is aborted leaves nothing.
    let mut w = dest.open(target("job1", "a.ndjson")).await.unwrap();
    w.write(Bytes::copy_from_slice(head)).await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(read("job1", "a.ndjson"), None);

    // A full write lands byte for byte, whatever the chunking.
    let mut w = dest.open(target("job1", "a.ndjson")).await.unwrap();
    w.write(Bytes::copy_from_slice(head)).await.unwrap();
    for c in tail.chunks(5) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    let receipt = w.finish(50).await.unwrap();
    assert_eq!(receipt.bytes, body.len() as u64);
    let stored = read("job1", "a.ndjson");
    match keeps {
        Keeps::Bytes => assert_eq!(stored.as_deref(), Some(body.as_bytes()), "the stored bytes differ"),
        Keeps::Nothing => assert_eq!(stored, None),
    }

    // Names that could escape are refused by every backend that names files.
    if keeps == Keeps::Bytes {
        for bad in ["../x", ".hidden", "a/b", ""] {
            assert!(dest.open(target("job1", bad)).await.is_err(), "{bad}");
        }
    }

    // One file removed (its manifest withdrawn), its sibling kept; removing it again is fine.
    let mut w = dest.open(target("job1", "b.ndjson")).await.unwrap();
    w.write(Bytes::copy_from_slice(head)).await.unwrap();
    w.finish(1).await.unwrap();
    dest.delete_file(target("job1", "a.ndjson")).await.unwrap();
    assert_eq!(read("job1", "a.ndjson"), None);
    if keeps == Keeps::Bytes {
        assert_eq!(read("job1", "b.ndjson").as_deref(), Some(head), "only the named file goes");
        assert!(dest.delete_file(target("job1", "../b.ndjson")).await.is_err(), "no escape by name");
    }
    dest.delete_file(target("job1", "a.ndjson")).await.unwrap();

    dest.delete_job("job1").await.unwrap();
    assert_eq!(read("job1", "b.ndjson"), None);
    // Deleting what is not there is fine.
    dest.delete_job("job1").await.unwrap();
}

#[tokio::test]
async fn tmp_fs_passes_the_destination_conformance_suite() {
    let dir = tempfile::TempDir::new().unwrap();
    let root = dir.path().to_path_buf();
    let dest = TmpFs::new(root.clone());
    let read = |job: &str, name: &str| std::fs::read(root.join(job).join(name)).ok();
    assert_destination_round_trip(&dest, Keeps::Bytes, read).await;
    // Several write buffers' worth: the aborted head and the kept file both pass through the
    // buffer drains and their write-back, not only the final flush.
    let body = observations(20_000);
    assert!(body.len() > 3 * 1024 * 1024, "{} bytes", body.len());
    assert_round_trip_of(&dest, Keeps::Bytes, &read, body).await;
    // Nothing but the (removed) job directory was ever created.
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

#[tokio::test]
async fn dev_null_passes_the_destination_conformance_suite() {
    assert_destination_round_trip(&DevNull, Keeps::Nothing, |_, _| None).await;
}

#[tokio::test]
async fn tmp_fs_refuses_unsafe_names_outright() {
    let dir = tempfile::TempDir::new().unwrap();
    let dest = TmpFs::new(dir.path().to_path_buf());
    for bad in ["../x", ".hidden", "a/b", ""] {
        assert!(dest.open(target("job1", bad)).await.is_err(), "{bad}");
    }
    assert!(dest.open(target("../job", "a.ndjson")).await.is_err());
}

#[tokio::test]
async fn a_tmp_fs_file_that_cannot_be_put_in_place_leaves_no_partial_file() {
    let dir = tempfile::TempDir::new().unwrap();
    let dest = TmpFs::new(dir.path().to_path_buf());
    let mut w = dest.open(target("job1", "a.ndjson")).await.unwrap();
    w.write(Bytes::from(observations(3))).await.unwrap();
    // A non-empty directory where the file should land makes the closing rename fail.
    std::fs::create_dir_all(dir.path().join("job1/a.ndjson/in-the-way")).unwrap();
    assert!(w.finish(3).await.is_err());
    let left: Vec<_> =
        std::fs::read_dir(dir.path().join("job1")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("a.ndjson")], "only the obstacle remains");
}

#[tokio::test]
async fn s3_passes_the_destination_conformance_suite_with_single_puts_and_multipart_uploads() {
    let server = S3Server::start().await;
    let part = 5 * 1024 * 1024;
    let dest = S3::connect(&server.config(part)).await.expect("the bucket is reachable");
    let read = |job: &str, name: &str| server.object(&format!("bulk/{job}/{name}"));
    assert_destination_round_trip(&dest, Keeps::Bytes, read).await;
    // More than two parts, and an aborted multipart upload leaves nothing open.
    let big = observations(70_000);
    assert!(big.len() > 2 * part + 1, "{} bytes", big.len());
    assert_round_trip_of(&dest, Keeps::Bytes, &read, big).await;
    assert_eq!(server.open_uploads(), Vec::<String>::new());
    let all = server.all_files();
    assert!(all.iter().all(|f| !f.starts_with("imports/bulk/job1/")), "{all:?}");
}

#[tokio::test]
async fn s3_refuses_to_start_when_the_bucket_is_unreachable() {
    let server = S3Server::start().await;
    let mut config = server.config(5 * 1024 * 1024);
    config.bucket = "no-such-bucket".into();
    let err = S3::connect(&config).await.err().expect("a missing bucket is an error");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
    config.endpoint_url = Some("http://127.0.0.1:9".into());
    assert!(S3::connect(&config).await.is_err());
}

#[tokio::test]
async fn a_static_import_to_s3_lands_byte_identical_objects_and_a_failed_file_leaves_nothing() {
    let server = S3Server::start().await;
    let config = server.config(5 * 1024 * 1024);
    let app = spawn_app_with(|c| {
        c.destination = bulk_import::destination::DestinationKind::S3(config);
        c.limits.max_retries = 1;
    })
    .await;
    let good = observations(40_000);
    let mut bad = observations(40_000);
    bad.push_str("{\"resourceType\":\"Observation\",\"id\":\"x\"\n");
    app.provider.set_chunk_size(64 * 1024);
    app.provider.push_file(FakeFile::new("good.ndjson", "Observation", good.clone()));
    app.provider.push_file(FakeFile::new("bad.ndjson", "Observation", bad));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let res = app.wait_for_job(&id).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["extension"]["failedFiles"], 1);
    assert_eq!(server.object(&format!("bulk/{id}/Observation.1.ndjson")).as_deref(), Some(good.as_bytes()));
    assert_eq!(
        server.object(&format!("bulk/{id}/Observation.2.ndjson")),
        None,
        "the failed file left an object"
    );
    assert_eq!(server.open_uploads(), Vec::<String>::new(), "the failed file left a multipart upload open");
    let outcomes = app.get_outcomes(&id).await;
    let text = outcomes[0]["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(text.contains(&format!("s3://imports/bulk/{id}/Observation.1.ndjson")), "{text}");
    let head = server
        .client()
        .await
        .head_object()
        .bucket("imports")
        .key(format!("bulk/{id}/Observation.1.ndjson"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/fhir+ndjson"));
    let meta = head.metadata().unwrap();
    assert_eq!(meta.get("job-id"), Some(&id));
    assert_eq!(meta.get("resource-type").map(String::as_str), Some("Observation"));
    assert_eq!(meta.get("resources").map(String::as_str), Some("40000"));

    // DELETE removes the job's objects.
    assert_eq!(app.delete_job(&id).await.status(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.object(&format!("bulk/{id}/Observation.1.ndjson")).is_some() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_s3_failure_mid_upload_fails_the_file_and_leaves_no_object_or_open_upload() {
    let server = S3Server::start_failing_parts().await;
    let dest = S3::connect(&server.config(5 * 1024 * 1024)).await.unwrap();
    let body = observations(50_000);
    let mut w = dest.open(target("job9", "big.ndjson")).await.unwrap();
    let mut failed = None;
    for chunk in body.as_bytes().chunks(256 * 1024) {
        if let Err(e) = w.write(Bytes::copy_from_slice(chunk)).await {
            failed = Some(e);
            break;
        }
    }
    let err = match failed {
        // As the downloader does: a writer that failed in write() is aborted.
        Some(e) => {
            w.abort().await.unwrap();
            e
        }
        // finish() cleans up after itself.
        None => w.finish(50_000).await.expect_err("the upload cannot complete"),
    };
    assert!(err.to_string().contains("UploadPart"), "{err}");
    // One readable line, not the SDK's Debug dump of the raw response.
    assert!(!err.to_string().contains("SdkBody") && err.to_string().len() < 400, "{err}");
    assert_eq!(server.open_uploads(), Vec::<String>::new());
    assert_eq!(server.object("bulk/job9/big.ndjson"), None);
}

#[tokio::test]
async fn a_completed_upload_whose_answer_cannot_be_read_is_checked_and_kept_not_aborted() {
    let server = S3Server::start_with_unreadable_completions().await;
    let dest = S3::connect(&server.config(5 * 1024 * 1024)).await.unwrap();
    let body = observations(120_000);
    assert!(body.len() > 6 * 1024 * 1024, "two parts at least: {}", body.len());
    let mut w = dest.open(target("job10", "big.ndjson")).await.unwrap();
    for chunk in body.as_bytes().chunks(256 * 1024) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let receipt = w.finish(50_000).await.expect("the stored object is checked, not called failed");
    assert_eq!(receipt.bytes, body.len() as u64);
    assert_eq!(server.object("bulk/job10/big.ndjson").as_deref(), Some(body.as_bytes()));
    assert_eq!(server.open_uploads(), Vec::<String>::new());
}

#[tokio::test]
async fn a_job_failed_by_its_s3_destination_leaves_no_object_behind() {
    let server = S3Server::start_failing_parts().await;
    let config = server.config(5 * 1024 * 1024);
    let app = spawn_app_with(|c| {
        c.destination = bulk_import::destination::DestinationKind::S3(config);
        c.limits.parallel_downloads = 1;
    })
    .await;
    app.provider.set_chunk_size(64 * 1024);
    // A small file (one PutObject, stored), then a large one whose second part fails.
    app.provider.push_file(FakeFile::new("small.ndjson", "Observation", observations(100)));
    app.provider.push_file(FakeFile::new("big.ndjson", "Observation", observations(120_000)));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let text = app.failed(&id).await;
    assert!(text.contains("the S3 destination failed") && text.contains("were removed"), "{text}");
    assert!(!text.contains("SdkBody"), "{text}");
    let objects: Vec<String> =
        server.all_files().into_iter().filter(|f| f.contains(&id) && !f.contains(".upload")).collect();
    assert_eq!(objects, Vec::<String>::new(), "a failed job's objects stayed in the bucket");
    assert_eq!(server.open_uploads(), Vec::<String>::new());
}

#[tokio::test]
async fn s3_parts_end_at_line_ends_so_each_committed_part_is_whole_lines() {
    let server = S3Server::start().await;
    let part = 5 * 1024 * 1024;
    let dest = S3::connect(&server.config(part)).await.expect("the bucket is reachable");
    let data = observations(70_000);
    let mut w = dest.open(target("job7", "o.ndjson")).await.unwrap();
    // Network-sized chunks that end anywhere, as downloads deliver them.
    for chunk in data.as_bytes().chunks(64 * 1024 + 7) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    // The writer keeps one part in flight: wait until two are stored.
    let mut parts = Vec::new();
    for _ in 0..100 {
        parts = server.uploaded_parts();
        if parts.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(parts.len() >= 2, "two parts went up: {}", parts.len());
    let mut end = 0;
    for p in &parts {
        assert!(p.len() >= part, "every part but the last is at least the smallest S3 takes: {}", p.len());
        assert_eq!(p.last(), Some(&b'\n'), "the part ending at byte {} cuts a line", end + p.len());
        assert_eq!(p[..], data.as_bytes()[end..end + p.len()], "parts are the file's bytes in order");
        end += p.len();
    }
    w.finish(70_000).await.unwrap();
    assert_eq!(server.object("bulk/job7/o.ndjson").unwrap(), data.as_bytes(), "the object is the file");
}
