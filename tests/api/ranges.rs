//! A broken download continues where its bytes stopped when the provider can send the rest of the
//! same file (`Range: bytes=N-` with `If-Range`), and starts over when it cannot (no ranges, a weak
//! or changed validator, a gzip answer): byte-identical, every line counted once, either way.
use bytes::Bytes;

use super::{
    fake_provider::{FakeFile, FileFault, Ranges, Recorded},
    helpers::{observations, spawn_app},
};

struct Broken {
    /// The requests for the file: those that broke, and the last.
    requests: Vec<Recorded>,
    len: usize,
}

/// Import one 400-line file whose first downloads break halfway; check the result is whole.
async fn broken(ranges: Option<Ranges>, gzip: bool, breaks: usize) -> Broken {
    let app = spawn_app().await;
    let obs = observations(400);
    let mut file = FakeFile::new("o.ndjson", "Observation", Bytes::from(obs.clone()));
    file.gzip = gzip;
    app.provider.push_file(file);
    app.provider.fault_file("o.ndjson", vec![FileFault::BreakHalfway; breaks]);
    if let Some(r) = ranges {
        app.provider.ranges(r);
    }
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 0, "{body} {:?}", app.get_outcomes(&id).await);
    // The stored size is the file's, not the sum of the attempts.
    let outcome = app.get_outcomes(&id).await[0]["issue"][0]["diagnostics"].as_str().unwrap().to_string();
    assert!(outcome.contains(&format!("{} bytes", obs.len())), "{outcome}");
    assert_eq!(body["extension"]["resources"], 400, "every line counted once: {body}");
    assert_eq!(app.read(&id, "Observation.1.ndjson"), obs, "no duplicate or missing byte");
    let requests = app.provider.requests_to("/fhir/files/o.ndjson");
    // A refused continuation costs one request more.
    let extra = usize::from(ranges == Some(Ranges::ShortRange));
    assert_eq!(requests.len(), breaks + 1 + extra, "each break, then one more request");
    Broken { requests, len: obs.len() }
}

fn continued_from(r: &Recorded, len: usize) -> usize {
    let from: usize = r
        .range
        .as_deref()
        .and_then(|v| v.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("no Range on the second request: {r:?}"));
    assert!(from > 0 && from < len, "a continuation starts inside the file: {from} of {len}");
    assert_eq!(r.accept_encoding.as_deref(), Some("identity"), "the rest is asked for unencoded");
    from
}

#[tokio::test]
async fn with_a_strong_etag_the_download_continues_where_it_broke_off() {
    let b = broken(Some(Ranges::ETag), false, 2).await;
    assert_eq!(b.requests[0].range, None, "the first request asks for the whole file");
    let first = continued_from(&b.requests[1], b.len);
    // The continuation broke too: the next goes on from further in.
    assert!(continued_from(&b.requests[2], b.len) > first);
    assert_eq!(b.requests[1].if_range.as_deref(), Some(format!("\"v1-{}\"", b.len).as_str()));
}

#[tokio::test]
async fn with_only_a_last_modified_date_before_the_date_header_the_download_continues() {
    let b = broken(Some(Ranges::LastModified), false, 1).await;
    continued_from(&b.requests[1], b.len);
    assert_eq!(b.requests[1].if_range.as_deref(), Some("Tue, 01 Dec 2026 10:00:00 GMT"));
}

#[tokio::test]
async fn a_file_rewritten_since_the_break_comes_whole_and_replaces_the_partial_one() {
    // The continuation names the first answer's ETag; the provider's is new, so it sends 200.
    let b = broken(Some(Ranges::ChangingETag), false, 1).await;
    continued_from(&b.requests[1], b.len);
    assert_eq!(b.requests[1].if_range.as_deref(), Some("\"v1\""));
}

#[tokio::test]
async fn without_ranges_a_weak_etag_or_a_gzip_answer_the_download_starts_over() {
    for (ranges, gzip, what) in [
        (None, false, "a provider that says nothing of ranges"),
        (Some(Ranges::WeakETag), false, "a weak ETag"),
        (Some(Ranges::ETag), true, "a gzip-encoded answer"),
    ] {
        let b = broken(ranges, gzip, 1).await;
        assert_eq!(b.requests[1].range, None, "{what}: the file is fetched whole again");
        assert_eq!(b.requests[1].if_range, None, "{what}");
    }
}

#[tokio::test]
async fn a_continuation_that_stops_short_of_the_end_is_not_taken_for_the_rest() {
    // Break, a 206 of ten bytes only (refused: the file would end short), then the whole file.
    let b = broken(Some(Ranges::ShortRange), false, 1).await;
    continued_from(&b.requests[1], b.len);
    assert_eq!(b.requests[2].range, None, "after a bad continuation the file starts over");
}
