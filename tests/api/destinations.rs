//! Destination conformance: open → write → finish lands the exact bytes; abort leaves nothing;
//! a reopened file replaces an earlier partial one; delete removes the job.
use bulk_import::destination::{dev_null::DevNull, tmp_fs::TmpFs, Destination};
use bytes::Bytes;

use super::helpers::observations;

/// Runs the conformance steps; `read` returns a stored file's bytes (None when absent).
async fn assert_destination_round_trip(dest: &dyn Destination, read: impl Fn(&str, &str) -> Option<Vec<u8>>) {
    let body = observations(50);
    let (head, tail) = body.as_bytes().split_at(body.len() / 3);

    // A partial write that is aborted leaves nothing.
    let mut w = dest.open("job1", "a.ndjson").await.unwrap();
    w.write(Bytes::copy_from_slice(head)).await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(read("job1", "a.ndjson"), None);

    // A full write lands byte for byte, whatever the chunking.
    let mut w = dest.open("job1", "a.ndjson").await.unwrap();
    w.write(Bytes::copy_from_slice(head)).await.unwrap();
    for c in tail.chunks(5) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    let receipt = w.finish().await.unwrap();
    assert_eq!(receipt.bytes, body.len() as u64);
    if let Some(stored) = read("job1", "a.ndjson") {
        assert_eq!(stored, body.as_bytes());
    }

    // Names that could escape are refused.
    for bad in ["../x", ".hidden", "a/b", ""] {
        assert!(dest.open("job1", bad).await.is_err() || read("job1", bad).is_none(), "{bad}");
    }

    dest.delete_job("job1").await.unwrap();
    assert_eq!(read("job1", "a.ndjson"), None);
    // Deleting what is not there is fine.
    dest.delete_job("job1").await.unwrap();
}

#[tokio::test]
async fn tmp_fs_passes_the_destination_conformance_suite() {
    let dir = tempfile::TempDir::new().unwrap();
    let root = dir.path().to_path_buf();
    let dest = TmpFs::new(root.clone());
    assert_destination_round_trip(&dest, |job, name| std::fs::read(root.join(job).join(name)).ok()).await;
    // Nothing but the (removed) job directory was ever created.
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

#[tokio::test]
async fn dev_null_passes_the_destination_conformance_suite() {
    assert_destination_round_trip(&DevNull, |_, _| None).await;
}

#[tokio::test]
async fn tmp_fs_refuses_unsafe_names_outright() {
    let dir = tempfile::TempDir::new().unwrap();
    let dest = TmpFs::new(dir.path().to_path_buf());
    for bad in ["../x", ".hidden", "a/b", ""] {
        assert!(dest.open("job1", bad).await.is_err(), "{bad}");
    }
    assert!(dest.open("../job", "a.ndjson").await.is_err());
}
