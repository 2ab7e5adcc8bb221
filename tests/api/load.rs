//! Load: 200 pings in parallel from 20 registered providers (each its own fake provider), all on
//! loopback and bounded in time. Every job must complete; the status latency seen under this load
//! is printed for the record (speed targets are checked by the benchmark, not by tests).
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    fake_provider::FakeProvider,
    helpers::{patients, ping, sign_assertion, spawn_app_with, TestApp},
};

const PROVIDERS: usize = 20;
const PINGS_EACH: usize = 10;

pub async fn register(app: &TestApp, provider: &FakeProvider) -> String {
    let res = app
        .register(&json!({"jwks": app.public_jwks(), "consumer_client_id": "consumer-at-fake", "aud": provider.base()}))
        .await;
    res.json::<Value>().await.unwrap()["client_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pings_from_twenty_providers_all_complete() {
    let app = spawn_app_with(|c| {
        c.limits.max_concurrent_jobs = PROVIDERS * PINGS_EACH;
        c.limits.max_jobs_per_provider = PINGS_EACH;
        // Twenty providers, all on 127.0.0.1 here.
        c.server.max_connections_per_address = 0;
        c.destination = bulk_import::destination::DestinationKind::DevNull;
    })
    .await;
    let mut providers = Vec::new();
    for _ in 0..PROVIDERS {
        let p = FakeProvider::start().await;
        p.set_consumer_jwks_url(format!("{}/jwks", app.base));
        p.requires_access_token(false);
        p.add_file("p.ndjson", "Patient", patients(50));
        let client_id = register(&app, &p).await;
        providers.push((p, client_id));
    }
    let token_url = format!("{}/auth/token", app.base);
    let pings = providers.iter().flat_map(|(p, client_id)| (0..PINGS_EACH).map(move |_| (p, client_id))).map(
        |(p, client_id)| {
            let (app, token_url) = (&app, &token_url);
            async move {
                let assertion = sign_assertion(&app.provider_key, client_id, token_url, |_, _| {});
                let form = TestApp::token_form(&assertion);
                let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let token: Value = app.post_token(&pairs).await.json().await.unwrap();
                let res = app
                    .post_import_raw(
                        token["access_token"].as_str(),
                        "application/fhir+json",
                        ping(&p.manifest_url(), "static").to_string(),
                    )
                    .await;
                assert_eq!(res.status(), 202);
                res.headers()["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_string()
            }
        },
    );
    let started = Instant::now();
    let ids: Vec<String> = futures::future::join_all(pings).await;
    assert_eq!(ids.len(), PROVIDERS * PINGS_EACH);

    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending: Vec<&String> = ids.iter().collect();
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "{} jobs did not finish", pending.len());
        let mut still = Vec::new();
        for id in pending {
            let t = Instant::now();
            let res = app.get_job(id).await;
            latencies.push(t.elapsed());
            match res.status().as_u16() {
                202 => still.push(id),
                200 => {
                    let body: Value = res.json().await.unwrap();
                    assert_eq!(body["extension"]["failedFiles"], 0, "{body}");
                    assert_eq!(body["extension"]["resources"], 50);
                }
                other => panic!("job {id} ended with {other}: {}", res.text().await.unwrap()),
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();
    let p99 = latencies[(latencies.len() - 1) * 99 / 100];
    println!(
        "load: {} jobs from {PROVIDERS} providers done in {:?}; {} status polls, p50 {:?}, p99 {p99:?}",
        ids.len(),
        started.elapsed(),
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    for (p, _) in &providers {
        assert_eq!(p.requests_to("/fhir/files/").len(), PINGS_EACH);
    }
}
