//! Destination conformance: open → write → finish lands the exact bytes; abort leaves nothing;
//! a reopened file replaces an earlier partial one; one file or the whole job can be removed.
use std::time::Duration;

use bulk_import::destination::{
    dev_null::DevNull, s3::S3, tmp_fs::TmpFs, Destination, DestinationError, FileKind, FileTarget,
    FileWriter, Removal, Saved,
};
use bytes::Bytes;
use serde_json::Value;

use super::{
    fake_provider::FakeFile,
    helpers::{observations, spawn_app_with},
    s3_server::S3Server,
};

fn target<'a>(job: &'a str, name: &'a str) -> FileTarget<'a> {
    FileTarget { job, name, resource_type: "Observation", provider: "ehr", kind: FileKind::Output }
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
    dest.delete_file("job1", "a.ndjson").await.unwrap();
    assert_eq!(read("job1", "a.ndjson"), None);
    if keeps == Keeps::Bytes {
        assert_eq!(read("job1", "b.ndjson").as_deref(), Some(head), "only the named file goes");
        assert!(dest.delete_file("job1", "../b.ndjson").await.is_err(), "no escape by name");
    }
    dest.delete_file("job1", "a.ndjson").await.unwrap();

    dest.delete_job("job1", Removal::Expired).await.unwrap();
    assert_eq!(read("job1", "b.ndjson"), None);
    // Deleting what is not there is fine.
    dest.delete_job("job1", Removal::Expired).await.unwrap();
}

/// Write `data` as a download does: in chunks that end anywhere, telling the writer after each
/// where its last complete line ends. The last durable point reached, if any.
async fn write_like_a_download(
    w: &mut dyn FileWriter,
    data: &[u8],
    chunk: usize,
) -> Result<Option<Saved>, DestinationError> {
    let (mut sent, mut last) = (0u64, None::<Saved>);
    for piece in data.chunks(chunk) {
        w.write(Bytes::copy_from_slice(piece)).await?;
        sent += piece.len() as u64;
        let open_line = piece.iter().rev().take_while(|b| **b != b'\n').count() as u64;
        if open_line < piece.len() as u64 {
            let end = w.line_end(sent - open_line).await?;
            if let Some(saved) = end.saved {
                assert!(last.as_ref().is_none_or(|l| l.bytes < saved.bytes), "durable points move on");
                last = Some(saved);
            }
        }
    }
    Ok(last)
}

/// Write `body` as a download does (telling the writer each chunk's last line end), stop
/// without a word after half of it (a killed process), and go on from the last durable point
/// in a new writer: the stored file is `body`, byte for byte.
async fn assert_resumes(
    dest: &dyn Destination,
    keeps: Keeps,
    read: &impl Fn(&str, &str) -> Option<Vec<u8>>,
    body: String,
) {
    let bytes = body.as_bytes();
    let (first, _) = bytes.split_at(bytes.len() / 2);
    let mut w = dest.open(target("job2", "r.ndjson")).await.unwrap();
    let last = write_like_a_download(&mut *w, first, 64 * 1024 + 3).await.unwrap();
    let saved = last.expect("half the body made a durable point");
    assert!(saved.bytes > 0 && bytes[saved.bytes as usize - 1] == b'\n', "a durable point is a line end");
    // A killed process says nothing: the writer is dropped, not aborted.
    drop(w);
    assert_eq!(read("job2", "r.ndjson"), None, "nothing is visible before the commit");
    let mut w: Box<dyn FileWriter> =
        dest.reopen(target("job2", "r.ndjson"), &saved).await.unwrap().expect("the durable point is there");
    for chunk in bytes[saved.bytes as usize..].chunks(100_000) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let receipt = w.finish(1).await.unwrap();
    assert_eq!(receipt.bytes, bytes.len() as u64);
    if keeps == Keeps::Bytes {
        assert!(read("job2", "r.ndjson").as_deref() == Some(bytes), "the continued file differs");
        // A point past what is stored, or in an upload that is gone, cannot be continued.
        let beyond = Saved { bytes: bytes.len() as u64 * 2, state: saved.state.clone() };
        assert!(dest.reopen(target("job2", "gone.ndjson"), &beyond).await.unwrap().is_none());
    }
    dest.delete_job("job2", Removal::Expired).await.unwrap();
}

#[tokio::test]
async fn tmp_fs_passes_the_destination_conformance_suite() {
    let dir = tempfile::TempDir::new().unwrap();
    let root = dir.path().to_path_buf();
    let dest = TmpFs::new(root.clone(), 1024 * 1024);
    let read = |job: &str, name: &str| std::fs::read(root.join(job).join(name)).ok();
    assert_destination_round_trip(&dest, Keeps::Bytes, read).await;
    // Several write buffers' worth: the aborted head and the kept file both pass through the
    // buffer drains and their write-back, not only the final flush.
    let body = observations(20_000);
    assert!(body.len() > 3 * 1024 * 1024, "{} bytes", body.len());
    assert_round_trip_of(&dest, Keeps::Bytes, &read, body).await;
    // Direct writes continued from a point inside a block.
    assert_resumes(&dest, Keeps::Bytes, &read, observations(20_000)).await;
    // Nothing but the (removed) job directory was ever created.
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

#[tokio::test]
async fn dev_null_passes_the_destination_conformance_suite() {
    let dest = DevNull { save_every: 1024 * 1024 };
    assert_destination_round_trip(&dest, Keeps::Nothing, |_, _| None).await;
    assert_resumes(&dest, Keeps::Nothing, &|_, _| None, observations(20_000)).await;
}

#[tokio::test]
async fn tmp_fs_refuses_unsafe_names_outright() {
    let dir = tempfile::TempDir::new().unwrap();
    let dest = TmpFs::new(dir.path().to_path_buf(), 1024 * 1024);
    for bad in ["../x", ".hidden", "a/b", ""] {
        assert!(dest.open(target("job1", bad)).await.is_err(), "{bad}");
    }
    assert!(dest.open(target("../job", "a.ndjson")).await.is_err());
}

#[tokio::test]
async fn a_tmp_fs_file_that_cannot_be_put_in_place_leaves_no_partial_file() {
    let dir = tempfile::TempDir::new().unwrap();
    let dest = TmpFs::new(dir.path().to_path_buf(), 1024 * 1024);
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
    assert_round_trip_of(&dest, Keeps::Bytes, &read, big.clone()).await;
    assert_eq!(server.open_uploads(), Vec::<String>::new());
    // Continued from its uploaded parts; four parts' worth, so two are cut in the first half.
    let body = observations(150_000);
    assert!(body.len() > 4 * part, "{} bytes", body.len());
    assert_resumes(&dest, Keeps::Bytes, &read, body).await;
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
    let failed = write_like_a_download(&mut *w, body.as_bytes(), 256 * 1024).await.err();
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
    write_like_a_download(&mut *w, data.as_bytes(), 64 * 1024 + 7).await.unwrap();
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

#[tokio::test]
async fn an_s3_commit_finding_the_file_stored_already_keeps_it_and_replaces_an_older_one() {
    let server = S3Server::start().await;
    let dest = S3::connect(&server.config(5 * 1024 * 1024)).await.unwrap();
    let store = async |body: &str| {
        let mut w = dest.open(target("job11", "a.ndjson")).await.unwrap();
        for chunk in body.as_bytes().chunks(1024 * 1024) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        w.finish(1).await
    };
    for body in [observations(10), observations(80_000)] {
        // The first commit, then the same again (a process that stopped before recording it):
        // refused by If-None-Match, found to be this file, kept.
        store(&body).await.unwrap();
        store(&body).await.expect("the stored file is recognised");
        assert!(server.object("bulk/job11/a.ndjson").as_deref() == Some(body.as_bytes()));
    }
    // A different file under the same name (the provider's changed) replaces it.
    let other = observations(12);
    store(&other).await.unwrap();
    assert!(server.object("bulk/job11/a.ndjson").as_deref() == Some(other.as_bytes()));
    assert_eq!(server.open_uploads(), Vec::<String>::new());
}
