//! `/metrics`, read back with a Prometheus text parser after a real import: files by outcome and
//! issue code, resources, jobs by state and result, provider requests and status-poll latency.
use prometheus_parse::{Scrape, Value as Metric};

use super::helpers::{observations, patients, spawn_app, wait_until};

/// The value of the sample `name` whose labels include every `(key, value)` of `labels`.
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
    Some(match &s.value {
        Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
        Metric::Histogram(buckets) => buckets.last().map(|b| b.count).unwrap_or(0.0),
        Metric::Summary(_) => f64::NAN,
    })
}

#[tokio::test]
async fn metrics_count_what_an_import_did_in_the_prometheus_format() {
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(4));
    // An Observation file listed as Patient: every line has the wrong type, so it fails `invalid`.
    app.provider.add_file("wrong.ndjson", "Patient", observations(2));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&id).await;

    let scrape_text = async || {
        let res = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"].to_str().unwrap().contains("openmetrics-text"));
        res.text().await.unwrap()
    };
    // The job's last counts land just after its status reads completed (it still releases the
    // provider's export): scrape until it has let go of its slot.
    let mut text = String::new();
    wait_until("the job to let go of its slot", async || {
        text = scrape_text().await;
        text.contains("bulk_import_jobs_running 0") && text.contains("completed-with-errors")
    })
    .await;
    assert!(!text.contains(&id), "no job id in the metrics");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the Prometheus text format");

    let files =
        |outcome, code| sample(&scrape, "bulk_import_files_total", &[("outcome", outcome), ("code", code)]);
    assert_eq!(files("done", "informational"), Some(1.0), "{text}");
    assert_eq!(files("failed", "invalid"), Some(1.0), "{text}");
    assert_eq!(sample(&scrape, "bulk_import_resources_total", &[]), Some(4.0));
    assert!(sample(&scrape, "bulk_import_stored_bytes_total", &[]).unwrap() > 0.0);
    assert_eq!(sample(&scrape, "bulk_import_jobs", &[("state", "completed")]), Some(1.0));
    assert_eq!(sample(&scrape, "bulk_import_jobs", &[("state", "failed")]), Some(0.0));
    let finished = sample(&scrape, "bulk_import_jobs_finished_total", &[("state", "completed-with-errors")]);
    assert_eq!(finished, Some(1.0), "{text}");
    assert_eq!(sample(&scrape, "bulk_import_jobs_running", &[]), Some(0.0));
    // The manifest and both files at least, each answered 200.
    let ok = sample(&scrape, "bulk_import_provider_requests_total", &[("method", "GET"), ("status", "200")]);
    assert!(ok.unwrap_or(0.0) >= 3.0, "{text}");
    // The parser folds a histogram's lines into one sample of buckets (the last is +Inf: the count).
    let polls = sample(&scrape, "bulk_import_http_request_seconds", &[("route", "/job/:id")]);
    assert!(polls.unwrap_or(0.0) >= 1.0, "status polls are timed: {text}");
}
