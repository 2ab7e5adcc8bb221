//! Job notices (`NOTIFY_URL`) against a receiver in the test: one signed notice per job, retried
//! with backoff when the receiver fails, never holding the job up, and kept as its outcome.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, http::HeaderMap, http::StatusCode, routing::post, Router};
use bulk_import::notify::{signature, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use serde_json::Value;

use super::helpers::{patients, spawn_app_with, TestApp};

const SECRET: &str = "notice-secret-0123456789abcdef0123456789";

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    /// Answers 500 to this many requests first.
    fail_first: Arc<Mutex<usize>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    r.got.lock().unwrap().push((headers, body));
    let mut fail = r.fail_first.lock().unwrap();
    if *fail > 0 {
        *fail -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/bulk", listener.local_addr().unwrap());
    let app = Router::new().route("/hooks/bulk", post(receive)).with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url)
}

/// The notices received so far for job `id` (answered or not).
fn notices_of(r: &Receiver, id: &str) -> Vec<(HeaderMap, Value)> {
    let got = r.got.lock().unwrap().clone();
    got.into_iter()
        .map(|(h, b)| (h, serde_json::from_str::<Value>(&b).unwrap()))
        .filter(|(_, v)| v["job_id"] == id)
        .collect()
}

async fn outcome_with_notice(app: &TestApp, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("{}/job/{id}/import-outcome.ndjson", app.base);
        let text = app.http.get(url).send().await.unwrap().text().await.unwrap();
        if text.contains("job notice") {
            return text;
        }
        assert!(Instant::now() < deadline, "the notice never reached the outcome: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_job_sends_one_signed_notice_retried_when_the_receiver_fails_and_kept_as_its_outcome() {
    let (receiver, url) = start_receiver().await;
    let app = spawn_app_with(|c| {
        c.notify_url = Some(url.parse().unwrap());
        c.notify_secret = Some(SECRET.to_string().into());
    })
    .await;
    app.provider.add_file("p.ndjson", "Patient", patients(4));
    let first = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&first).await;
    let outcome = outcome_with_notice(&app, &first).await;
    assert!(outcome.contains("job notice delivered") && outcome.contains("attempt 1"), "{outcome}");
    let got = notices_of(&receiver, &first);
    assert_eq!(got.len(), 1, "one notice per job");
    let (headers, notice) = &got[0];
    let body = receiver.got.lock().unwrap()[0].1.clone();
    let timestamp: i64 = headers[TIMESTAMP_HEADER].to_str().unwrap().parse().unwrap();
    let signed = headers[SIGNATURE_HEADER].to_str().unwrap();
    assert_eq!(signed, signature(SECRET, timestamp, body.as_bytes()).unwrap(), "the receiver can verify it");
    assert_ne!(
        signed,
        signature("another-secret-0123456789abcdef012345", timestamp, body.as_bytes()).unwrap()
    );
    assert_eq!(notice["result"], "completed", "{notice}");
    assert_eq!(notice["client_id"], app.client_id.as_str());
    assert_eq!(notice["resources_by_type"]["Patient"], 4);
    assert_eq!(notice["outcome_url"], format!("/job/{first}/import-outcome.ndjson"));

    // A receiver that fails once gets the notice again a second later; the job did not wait.
    *receiver.fail_first.lock().unwrap() = 1;
    let second = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&second).await;
    assert!(notices_of(&receiver, &second).len() <= 1, "the retry waits, the job does not");
    let outcome = outcome_with_notice(&app, &second).await;
    assert!(outcome.contains("attempt 2, answer 204"), "{outcome}");
    assert_eq!(notices_of(&receiver, &second).len(), 2);
}

#[tokio::test]
async fn a_receiver_that_never_takes_the_notice_is_tried_five_times_and_the_outcome_says_so() {
    let (receiver, url) = start_receiver().await;
    *receiver.fail_first.lock().unwrap() = 100;
    let app = spawn_app_with(|c| {
        c.notify_url = Some(url.parse().unwrap());
        c.notify_secret = Some(SECRET.to_string().into());
        c.notify_first_retry = Duration::from_millis(20);
    })
    .await;
    app.provider.add_file("p.ndjson", "Patient", patients(2));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&id).await;
    let outcome = outcome_with_notice(&app, &id).await;
    let expected = format!(
        "not delivered to {url} after {} attempt(s): the receiver answered 500",
        bulk_import::notify::MAX_ATTEMPTS
    );
    assert!(outcome.contains(&expected), "{outcome}");
    assert!(outcome.contains("\"severity\":\"warning\""), "{outcome}");
    assert_eq!(notices_of(&receiver, &id).len(), bulk_import::notify::MAX_ATTEMPTS as usize);
    // The job's own result is untouched.
    assert_eq!(app.get_job(&id).await.status(), 200);
}
