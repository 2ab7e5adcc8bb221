//! Bulk Submit against the real server: a fake Bulk Submit provider (a client that signs, submits
//! and polls, as `smart-on-fhir/bulk-submit-provider` does) drives submissions whose manifests
//! the fake provider serves.
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::fake_provider::FakeProvider;
use super::helpers::{
    observations, patients, sign_assertion, spawn_app, spawn_app_with, start, test_config, TestApp,
};

pub(super) const SYSTEM: &str = "https://ehr.example/ids";

/// A registered submitter and its `system/bulk-submit` token.
pub(super) struct Submitter<'a> {
    pub app: &'a TestApp,
    pub value: String,
    pub token: String,
}

impl<'a> Submitter<'a> {
    pub(super) async fn register(app: &'a TestApp, value: &str) -> Self {
        Self::register_at(app, value, &app.provider.base()).await
    }

    /// Registered for the provider at `aud`.
    pub(super) async fn register_at(app: &'a TestApp, value: &str, aud: &str) -> Self {
        let body = json!({"jwks": app.public_jwks(), "consumer_client_id": "consumer-at-fake", "aud": aud,
            "submitter": {"system": SYSTEM, "value": value}});
        let res = app.register(&body).await;
        assert_eq!(res.status(), 200);
        let client_id = res.json::<Value>().await.unwrap()["client_id"].as_str().unwrap().to_string();
        Self::with_token(app, value, &client_id).await
    }

    /// The submitter registered (by the test) with submitter `value`.
    async fn token_of(app: &'a TestApp, value: &str) -> Self {
        let listed = app.admin_get("/auth/registrations").await;
        let all = listed["registrations"].as_array().unwrap();
        let mine = all.iter().find(|r| r["submitter"]["value"] == value).expect("registered");
        Self::with_token(app, value, mine["client_id"].as_str().unwrap()).await
    }

    async fn with_token(app: &'a TestApp, value: &str, client_id: &str) -> Self {
        let client_id = client_id.to_string();
        let token_url = format!("{}/auth/token", app.base);
        let assertion = sign_assertion(&app.provider_key, &client_id, &token_url, |_, _| {});
        let mut form = TestApp::token_form(&assertion);
        form[3].1 = "system/bulk-submit".into();
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = app.post_token(&form).await;
        assert_eq!(res.status(), 200);
        let token = res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
        Self { app, value: value.into(), token }
    }

    fn identifier(&self) -> Value {
        json!({"name": "submitter", "valueIdentifier": {"system": SYSTEM, "value": self.value}})
    }

    /// `$bulk-submit` with these parameters (after the submitter), as plain JSON.
    pub(super) async fn submit(&self, params: Vec<Value>) -> reqwest::Response {
        let mut all = vec![self.identifier()];
        all.extend(params);
        let body = json!({"resourceType": "Parameters", "parameter": all});
        self.app
            .http
            .post(format!("{}/$bulk-submit", self.app.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// `$bulk-submit-status`: the status URL.
    pub(super) async fn status_url(&self, submission: &str) -> String {
        let body = json!({"resourceType": "Parameters", "parameter": [self.identifier(), {"name": "submissionId", "valueString": submission}]});
        let res = self
            .app
            .http
            .post(format!("{}/$bulk-submit-status", self.app.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        res.headers()["content-location"].to_str().unwrap().to_string()
    }

    pub(super) async fn get(&self, url: &str) -> reqwest::Response {
        self.app.http.get(url).bearer_auth(&self.token).send().await.unwrap()
    }

    /// Poll as the SMART provider does (stopping on anything but 200/202); the final manifest.
    pub(super) async fn poll_until_done(&self, url: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let res = self.get(url).await;
            match res.status().as_u16() {
                200 => return res.json().await.unwrap(),
                202 => {
                    let progress = res.headers()["x-progress"].to_str().unwrap().to_string();
                    let percent = progress.split('%').next().unwrap();
                    assert!(percent.parse::<u32>().is_ok(), "X-Progress has (\\d+)%: {progress}");
                }
                other => panic!("status answered {other}: {}", res.text().await.unwrap()),
            }
            assert!(Instant::now() < deadline, "the submission never finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(super) fn param(name: &str, kind: &str, value: &str) -> Value {
    json!({"name": name, kind: value})
}

pub(super) fn status(system: &str, code: &str) -> Value {
    json!({"name": "submissionStatus", "valueCoding": {"system": system, "code": code}})
}

#[tokio::test]
async fn a_manifest_then_completed_is_imported_and_its_status_manifest_lists_the_outcome() {
    let app = spawn_app().await;
    app.provider.serve_openly();
    app.provider.add_file("o.ndjson", "Observation", observations(40));
    let ehr = Submitter::register(&app, "ehr-1").await;
    let manifest = app.provider.manifest_url();
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-1"),
            param("manifestUrl", "valueString", &manifest),
            param("FHIRBaseUrl", "valueString", &app.provider.base()),
        ])
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    // The same manifest again is refused; so is a submitter this client does not speak for.
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-1"),
            param("manifestUrl", "valueUrl", &manifest),
        ])
        .await;
    assert_eq!(res.status(), 409, "{}", res.text().await.unwrap());
    let stranger = Submitter { app: &app, value: "someone-else".into(), token: ehr.token.clone() };
    let res = stranger
        .submit(vec![
            param("submissionId", "valueString", "s-1"),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 403);
    let url = ehr.status_url("s-1").await;
    // A header that would reshape our transfer is refused, naming the parameter.
    let header = json!({"name": "fileRequestHeader", "part": [
        {"name": "headerName", "valueString": "Range"}, {"name": "headerValue", "valueString": "bytes=0-"}]});
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-1"),
            param("manifestUrl", "valueUrl", &format!("{manifest}?h")),
            header,
        ])
        .await;
    assert_eq!(res.status(), 400);
    let refusal = res.text().await.unwrap();
    assert!(refusal.contains("fileRequestHeader") && refusal.contains("Range"), "{refusal}");

    // Closed with the earlier drafts' code, as the SMART provider sends it.
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-1"),
            status(bulk_import::fhir::bulk_submit::SUBMISSION_STATUS, "complete"),
        ])
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let done = ehr.poll_until_done(&url).await;
    assert_eq!(done["submissionId"], "s-1", "{done}");
    assert_eq!(done["extension"]["submissionId"], "s-1");
    assert_eq!(done["outcome"][0]["manifestUrl"], manifest.as_str(), "{done}");
    assert_eq!(done["error"], done["outcome"], "the earlier drafts' error[] is a copy");
    let job = url.rsplit('/').next().unwrap();
    assert_eq!(app.read(job, "Observation.1.ndjson"), observations(40));
    let outcome_url = done["outcome"][0]["url"].as_str().unwrap();
    let lines = ehr.get(outcome_url).await.text().await.unwrap();
    assert!(lines.contains("imported: 40 resources"), "{lines}");
    // Nothing more is taken once completed; another client sees nothing of it.
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-1"),
            param("manifestUrl", "valueUrl", &format!("{manifest}?again")),
        ])
        .await;
    assert_eq!(res.status(), 409);
    let other = Submitter::register(&app, "ehr-2").await;
    assert_eq!(other.get(&url).await.status(), 404, "a client sees only its own submissions");
    // Nor by the job's own link: without a token, or with another client's, there is no such job.
    let link = format!("{}/job/{job}", app.base);
    let outcome_link = format!("{link}/import-outcome.ndjson");
    for (token, seen) in [(None, 404), (Some(other.token.as_str()), 404), (Some(ehr.token.as_str()), 200)] {
        for (method, url) in [
            (reqwest::Method::GET, &link),
            (reqwest::Method::GET, &outcome_link),
            (reqwest::Method::DELETE, &link),
        ] {
            if method == reqwest::Method::DELETE && seen == 200 {
                continue;
            }
            let mut req = app.http.request(method.clone(), url.as_str());
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), seen, "{method} {url} with {token:?}: {}", res.text().await.unwrap());
        }
    }
    let admin = app.http.get(&outcome_link).bearer_auth(super::helpers::ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(admin.status(), 200, "the operator reads it (the job page)");
    assert!(admin.text().await.unwrap().contains("imported: 40 resources"));
    assert_eq!(ehr.get(&url).await.status(), 200, "the refused DELETEs removed nothing");
    // DELETE removes it.
    let res = app.http.delete(&url).bearer_auth(&ehr.token).send().await.unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(ehr.get(&url).await.status(), 404);
}

#[tokio::test]
async fn a_stopped_submission_stops_and_its_data_is_deleted_and_a_token_without_the_scope_is_refused() {
    // Files on disk and resources in the store: both go when the provider stops the submission.
    let app = super::helpers::spawn_app_with(|c| {
        use bulk_import::destination::{resource_store::StoreUrl, DestinationKind};
        let store = StoreUrl::Sqlite(c.data_dir.join("resources.sqlite"));
        c.destination =
            DestinationKind::Several(vec![DestinationKind::ResourceStore(store), DestinationKind::TmpFs]);
    })
    .await;
    app.provider.serve_openly();
    app.provider.add_file("o.ndjson", "Observation", observations(10));
    let ehr = Submitter::register(&app, "ehr-3").await;
    let manifest = app.provider.manifest_url();
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-2"),
            param("manifestUrl", "valueUrl", &manifest),
        ])
        .await;
    assert_eq!(res.status(), 200);
    let url = ehr.status_url("s-2").await;
    let job = url.rsplit('/').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app.jobs_dir(&job).join("Observation.1.ndjson").exists() {
        assert!(Instant::now() < deadline, "the file was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = app.admin_get("/admin/resources").await;
    assert_eq!(before["resources"][0]["count"], 10, "stored in both (the store first): {before}");
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-2"),
            status(bulk_import::fhir::bulk_submit::SUBMISSION_STATUS, "aborted"),
        ])
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let done = ehr.poll_until_done(&url).await;
    assert_eq!(done["submissionStatus"], "stopped", "{done}");
    assert!(!app.jobs_dir(&job).exists(), "what was stored is deleted");
    let after = app.admin_get("/admin/resources").await;
    assert_eq!(after["resources"], json!([]), "and its resources: {after}");
    // The import scope is not the Bulk Submit scope.
    let import_token = app.token().await;
    let res = app
        .http
        .post(format!("{}/$bulk-submit", app.base))
        .bearer_auth(import_token)
        .header("content-type", "application/json")
        .body(json!({"resourceType": "Parameters", "parameter": []}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn a_missing_file_is_an_error_outcome_and_a_replaced_manifests_data_is_gone() {
    let app = spawn_app().await;
    app.provider.serve_openly();
    app.provider.add_file("o.ndjson", "Observation", observations(7));
    let mut gone = super::fake_provider::FakeFile::new("gone.ndjson", "Patient", "");
    gone.missing = true;
    app.provider.push_file(gone);
    let ehr = Submitter::register(&app, "ehr-4").await;
    let first = app.provider.manifest_url();
    let res = ehr
        .submit(vec![param("submissionId", "valueString", "s-3"), param("manifestUrl", "valueUrl", &first)])
        .await;
    assert_eq!(res.status(), 200);
    let url = ehr.status_url("s-3").await;
    let job = url.rsplit('/').next().unwrap().to_string();
    let stored = app.jobs_dir(&job).join("Observation.1.ndjson");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stored.exists() {
        assert!(Instant::now() < deadline, "the first manifest's file was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Replaced (the same files listed under another URL): the first copy goes, the new one lands.
    let second = format!("{first}?v=2");
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-3"),
            param("manifestUrl", "valueUrl", &second),
            param("replacesManifestUrl", "valueUrl", &first),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let done = ehr.poll_until_done(&url).await;
    assert!(!stored.exists(), "the replaced manifest's data is removed");
    assert_eq!(app.read(&job, "Observation.2.ndjson"), observations(7), "the new manifest's file");
    let outcomes = done["outcome"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{done}");
    let second_outcome = outcomes.iter().find(|o| o["manifestUrl"] == second.as_str()).unwrap();
    let errors = second_outcome["countSeverity"].as_array().unwrap().iter().find(|c| c["code"] == "error");
    assert_eq!(errors.map(|c| c["count"].clone()), Some(json!(1)), "the missing file: {second_outcome}");
    let lines = ehr.get(second_outcome["url"].as_str().unwrap()).await.text().await.unwrap();
    assert!(lines.contains("gone.ndjson") && lines.contains("imported: 7 resources"), "{lines}");
}

#[tokio::test]
async fn two_manifests_survive_a_restart_mid_submission_and_the_submission_completes_after_it() {
    let app = spawn_app().await;
    app.provider.serve_openly();
    app.provider.add_file("o.ndjson", "Observation", observations(5));
    app.provider.hold_file("o.ndjson");
    let ehr = Submitter::register(&app, "ehr-5").await;
    let first = app.provider.manifest_url();
    let second = format!("{first}?part=2");
    for m in [&first, &second] {
        let res = ehr
            .submit(vec![param("submissionId", "valueString", "s-4"), param("manifestUrl", "valueUrl", m)])
            .await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }
    let url = ehr.status_url("s-4").await;
    let job = url.rsplit('/').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.provider.requests_to("/fhir/files/o.ndjson").len() < 2 {
        assert!(Instant::now() < deadline, "both manifests' files were never asked for");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (value, token) = (ehr.value.clone(), ehr.token.clone());
    let (provider, dir, key, client_id, tmp) = app.stop().await;
    provider.release_files();

    let mut app = start(test_config(&dir), provider, dir.clone()).await;
    app.provider_key = key;
    app.client_id = client_id;
    let _tmp = tmp;
    // The same token still holds (the secret is kept), and the submission goes on.
    let ehr = Submitter { app: &app, value, token };
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-4"),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    // This server listens elsewhere: the status is asked for again.
    let url = ehr.status_url("s-4").await;
    assert!(url.ends_with(&job), "the same submission: {url}");
    let done = ehr.poll_until_done(&url).await;
    assert_eq!(done["outcome"].as_array().unwrap().len(), 2, "{done}");
    for name in ["Observation.1.ndjson", "Observation.2.ndjson"] {
        assert_eq!(app.read(&job, name), observations(5), "{name}");
    }
    assert_eq!(app.provider.requests_to("/fhir/manifest.json").len(), 2, "each manifest fetched once");
}

#[tokio::test]
async fn past_its_per_minute_budget_a_client_is_told_to_wait_and_its_polls_still_answer() {
    let app = spawn_app_with(|c| c.limits.submit_requests_per_minute = 2).await;
    app.provider.serve_openly();
    app.provider.add_file("o.ndjson", "Observation", observations(3));
    let ehr = Submitter::register(&app, "ehr-6").await;
    let manifest = app.provider.manifest_url();
    for n in 0..2 {
        let m = format!("{manifest}?n={n}");
        let res = ehr
            .submit(vec![param("submissionId", "valueString", "s-5"), param("manifestUrl", "valueUrl", &m)])
            .await;
        assert_eq!(res.status(), 200);
    }
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-5"),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(res.text().await.unwrap().contains("SUBMIT_REQUESTS_PER_MINUTE"));
    // Status requests and polls are not counted.
    let url = ehr.status_url("s-5").await;
    for _ in 0..3 {
        assert_eq!(ehr.get(&url).await.status(), 202);
    }
}

#[tokio::test]
async fn a_replace_sent_with_valueless_manifest_and_base_url_withdraws_as_the_smart_provider_means() {
    let app = spawn_app().await;
    app.provider.serve_openly();
    app.provider.add_file("o.ndjson", "Observation", observations(4));
    let ehr = Submitter::register(&app, "ehr-8").await;
    let manifest = app.provider.manifest_url();
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-6"),
            param("manifestUrl", "valueString", &manifest),
        ])
        .await;
    assert_eq!(res.status(), 200);
    let url = ehr.status_url("s-6").await;
    let job = url.rsplit('/').next().unwrap().to_string();
    let stored = app.jobs_dir(&job).join("Observation.1.ndjson");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stored.exists() {
        assert!(Instant::now() < deadline, "the manifest's file was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // As that provider sends a replace (its known bug): both parameters present, with no value.
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-6"),
            json!({"name": "manifestUrl"}),
            json!({"name": "FHIRBaseUrl"}),
            param("replacesManifestUrl", "valueString", &manifest),
            status(bulk_import::fhir::bulk_submit::SUBMISSION_STATUS, "complete"),
        ])
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let done = ehr.poll_until_done(&url).await;
    assert!(!stored.exists(), "the withdrawn manifest's data is removed");
    let left = std::fs::read_dir(app.jobs_dir(&job)).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "and nothing else was imported: {done}");
}

fn request_header(plural: bool, name: &str, value: &str) -> Value {
    let param = if plural { "fileRequestHeaders" } else { "fileRequestHeader" };
    json!({"name": param, "part": [
        {"name": "headerName", "valueString": name}, {"name": "headerValue", "valueString": value}]})
}

fn header_of<'a>(r: &'a super::fake_provider::Recorded, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn request_headers_go_on_every_manifest_page_and_file_get_but_not_to_a_redirect_elsewhere() {
    let app = spawn_app().await;
    app.provider.serve_openly();
    app.provider.page_size(1);
    app.provider.add_file("p.ndjson", "Patient", patients(3));
    app.provider.add_file("o.ndjson", "Observation", observations(4));
    app.provider.add_file("far.ndjson", "Observation", "");
    let other = FakeProvider::start().await;
    other.serve_openly();
    other.add_file("there.ndjson", "Observation", observations(2));
    app.provider.redirect_file("far.ndjson", &format!("{}/fhir/files/there.ndjson", other.origin()));
    let ehr = Submitter::register(&app, "ehr-9").await;
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-7"),
            param("manifestUrl", "valueUrl", &app.provider.manifest_url()),
            request_header(false, "X-Api-Key", "key-7f3a"),
            request_header(true, "X-Tenant", "t-1"),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let url = ehr.status_url("s-7").await;
    let done = ehr.poll_until_done(&url).await;
    let job = url.rsplit('/').next().unwrap();
    assert_eq!(app.read(job, "Patient.1.ndjson"), patients(3), "{done}");
    let mut observed = vec![app.read(job, "Observation.1.ndjson"), app.read(job, "Observation.2.ndjson")];
    observed.sort_by_key(|b| b.len());
    assert_eq!(observed, vec![observations(2), observations(4)], "both pages' files, the redirected one too");
    // Three manifest pages and three files, each with both headers.
    let pages: Vec<_> =
        app.provider.requests().into_iter().filter(|r| r.path.starts_with("/fhir/manifest")).collect();
    assert_eq!(pages.len(), 3, "the manifest's link pages were followed");
    let files = app.provider.requests_to("/fhir/files/");
    assert_eq!(files.len(), 3);
    for r in pages.iter().chain(&files) {
        assert_eq!(header_of(r, "x-api-key"), Some("key-7f3a"), "{}", r.path);
        assert_eq!(header_of(r, "x-tenant"), Some("t-1"), "{}", r.path);
    }
    // The redirect to another origin got neither (as it would not get a token).
    let there = other.requests_to("/fhir/files/there.ndjson");
    assert_eq!(there.len(), 1);
    assert!(header_of(&there[0], "x-api-key").is_none() && header_of(&there[0], "x-tenant").is_none());
}

#[tokio::test]
async fn with_oauth_metadata_the_manifest_and_its_files_are_fetched_with_a_token_got_from_there() {
    let app = spawn_app().await;
    // Manifest and files need a token; the provider's usual discovery finds no token endpoint.
    app.provider.hide_discovery();
    app.provider.add_file("o.ndjson", "Observation", observations(6));
    let ehr = Submitter::register(&app, "ehr-10").await;
    let manifest = app.provider.manifest_url();
    // Without the metadata the manifest is fetched without a token: refused, the request fails.
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-8"),
            param("manifestUrl", "valueUrl", &manifest),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200);
    let done = ehr.poll_until_done(&ehr.status_url("s-8").await).await;
    let lines = ehr.get(done["outcome"][0]["url"].as_str().unwrap()).await.text().await.unwrap();
    assert!(lines.contains("401"), "{lines}");
    assert!(app.provider.issued_tokens().is_empty());

    // RFC 9728 metadata naming the authorization server whose RFC 8414 metadata has the endpoint.
    let metadata = format!("{}/auth/protected-resource", app.provider.origin());
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-9"),
            param("manifestUrl", "valueUrl", &format!("{manifest}?with-token")),
            param("oauthMetadataUrl", "valueUrl", &metadata),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let url = ehr.status_url("s-9").await;
    let done = ehr.poll_until_done(&url).await;
    let job = url.rsplit('/').next().unwrap();
    let lines = ehr.get(done["outcome"][0]["url"].as_str().unwrap()).await.text().await.unwrap();
    assert!(app.jobs_dir(job).join("Observation.1.ndjson").exists(), "{lines}");
    assert_eq!(app.read(job, "Observation.1.ndjson"), observations(6));
    let tokens = app.provider.issued_tokens();
    let bearer = |r: &super::fake_provider::Recorded| {
        r.authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| tokens.iter().any(|k| k == t))
    };
    let fetched = app.provider.requests_to("/fhir/manifest.json");
    assert!(bearer(fetched.last().unwrap()), "the manifest got the token");
    assert!(app.provider.requests_to("/fhir/files/o.ndjson").iter().all(bearer), "and so did its file");

    // Metadata off the registration's origins is refused at once: our token goes nowhere else.
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-10"),
            param("manifestUrl", "valueUrl", &format!("{manifest}?elsewhere")),
            param(
                "oauthMetadataUrl",
                "valueUrl",
                &format!("{}/auth/protected-resource", app.provider.alt_origin()),
            ),
        ])
        .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("oauthMetadataUrl"));
}

#[tokio::test]
async fn the_operators_pinned_token_endpoint_wins_over_a_submissions_oauth_metadata() {
    let app = spawn_app().await;
    app.provider.add_file("o.ndjson", "Observation", observations(3));
    // The metadata names an endpoint the operator did not choose (here one that does not answer).
    app.provider.advertise_token_endpoint(&format!("{}/auth/elsewhere", app.provider.origin()));
    let body = json!({"jwks": app.public_jwks(), "consumer_client_id": "consumer-at-fake", "aud": app.provider.base(),
        "token_endpoint": format!("{}/auth/token", app.provider.origin()),
        "submitter": {"system": SYSTEM, "value": "ehr-12"}});
    assert_eq!(app.register(&body).await.status(), 200);
    let ehr = Submitter::token_of(&app, "ehr-12").await;
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-12"),
            param("manifestUrl", "valueUrl", &app.provider.manifest_url()),
            param(
                "oauthMetadataUrl",
                "valueUrl",
                &format!("{}/auth/protected-resource", app.provider.origin()),
            ),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let url = ehr.status_url("s-12").await;
    ehr.poll_until_done(&url).await;
    let job = url.rsplit('/').next().unwrap();
    assert_eq!(app.read(job, "Observation.1.ndjson"), observations(3));
    assert!(app.provider.requests_to("/auth/elsewhere").is_empty(), "the metadata's endpoint was not asked");
    assert!(!app.provider.issued_tokens().is_empty(), "the pinned one was");
}

#[tokio::test]
async fn a_submission_that_sends_its_own_authorization_gets_no_token_of_ours() {
    let app = spawn_app().await;
    app.provider.serve_openly();
    app.provider.add_file("o.ndjson", "Observation", observations(2));
    let ehr = Submitter::register(&app, "ehr-13").await;
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-13"),
            param("manifestUrl", "valueUrl", &app.provider.manifest_url()),
            // Where our token would come from, and the provider's own credential beside it.
            param(
                "oauthMetadataUrl",
                "valueUrl",
                &format!("{}/auth/protected-resource", app.provider.origin()),
            ),
            request_header(false, "Authorization", "Bearer the-providers-own"),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let url = ehr.status_url("s-13").await;
    ehr.poll_until_done(&url).await;
    let job = url.rsplit('/').next().unwrap();
    assert_eq!(app.read(job, "Observation.1.ndjson"), observations(2));
    assert!(app.provider.requests_to("/auth/token").is_empty(), "no token of ours was fetched");
    let sent: Vec<_> = app
        .provider
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/fhir/manifest") || r.path.starts_with("/fhir/files/"))
        .collect();
    assert!(sent.len() >= 2);
    for r in &sent {
        assert_eq!(r.authorization.as_deref(), Some("Bearer the-providers-own"), "{}", r.path);
    }
}

#[tokio::test]
async fn a_large_status_manifest_comes_in_pages_linked_by_next() {
    let app = spawn_app_with(|c| c.limits.submit_status_page_size = 2).await;
    app.provider.serve_openly();
    app.provider.add_file("o.ndjson", "Observation", observations(2));
    let ehr = Submitter::register(&app, "ehr-11").await;
    let manifests: Vec<String> = (0..5).map(|n| format!("{}?n={n}", app.provider.manifest_url())).collect();
    for m in &manifests {
        let res = ehr
            .submit(vec![param("submissionId", "valueString", "s-11"), param("manifestUrl", "valueUrl", m)])
            .await;
        assert_eq!(res.status(), 200);
    }
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-11"),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200);
    let url = ehr.status_url("s-11").await;
    let mut page = ehr.poll_until_done(&url).await;
    let mut seen = Vec::new();
    // Bounded: five manifests, two a page.
    for _ in 0..5 {
        assert_eq!(page["submissionId"], "s-11", "every page is a whole status manifest");
        seen.extend(
            page["outcome"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["manifestUrl"].as_str().unwrap().to_string()),
        );
        let Some(next) = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") else {
            break;
        };
        let res = ehr.get(next["url"].as_str().unwrap()).await;
        assert_eq!(res.status(), 200);
        page = res.json().await.unwrap();
    }
    assert_eq!(seen, manifests, "each manifest once, in order");
    assert_eq!(ehr.get(&format!("{url}?page=3")).await.status(), 404, "past the last page");
    let res = ehr.get(&format!("{url}?page=first")).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn a_resource_that_fails_its_file_is_named_by_the_source_resource_extension() {
    let app = spawn_app().await;
    app.provider.serve_openly();
    // Listed as Patient, its third line is an Observation.
    app.provider.add_file("mixed.ndjson", "Patient", format!("{}{}", patients(2), observations(1)));
    let ehr = Submitter::register(&app, "ehr-12").await;
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-12"),
            param("manifestUrl", "valueUrl", &app.provider.manifest_url()),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200);
    let done = ehr.poll_until_done(&ehr.status_url("s-12").await).await;
    let lines = ehr.get(done["outcome"][0]["url"].as_str().unwrap()).await.text().await.unwrap();
    let outcome: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(outcome["issue"][0]["severity"], "error", "{outcome}");
    assert_eq!(
        outcome["extension"][0],
        json!({"url": "http://hl7.org/fhir/StructureDefinition/operationoutcome-sourceResource",
            "valueReference": {"reference": "Observation/obs-0"}}),
        "{outcome}"
    );
}

pub(super) fn encryption_key(value: &str) -> Value {
    json!({"name": "fileEncryptionKey", "part": [
        {"name": "coding", "valueCoding": {"code": "jwe"}}, {"name": "value", "valueString": value}]})
}

#[tokio::test]
async fn a_jwe_encrypted_manifest_and_files_are_decrypted_as_they_stream_and_a_bad_tag_fails_its_file() {
    use base64::Engine;
    let app = spawn_app().await;
    app.provider.serve_openly();
    let key = [7u8; 32];
    app.provider.encrypt_with(&key);
    // Files come 7 bytes a chunk: every JWE segment is split across chunks.
    app.provider.add_file("o.ndjson", "Observation", observations(30));
    app.provider.push_file(super::fake_provider::FakeFile {
        gzip: true,
        ..super::fake_provider::FakeFile::new("p.ndjson", "Patient", patients(20))
    });
    app.provider.push_file(super::fake_provider::FakeFile {
        tampered: Some(super::fake_provider::Tamper::Tag),
        ..super::fake_provider::FakeFile::new("t.ndjson", "Patient", patients(3))
    });
    let ehr = Submitter::register(&app, "ehr-13").await;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    let jwk = json!({"kty": "oct", "k": k}).to_string();
    let manifest = app.provider.manifest_url();
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-13"),
            param("manifestUrl", "valueUrl", &manifest),
            encryption_key(&jwk),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let url = ehr.status_url("s-13").await;
    let done = ehr.poll_until_done(&url).await;
    let job = url.rsplit('/').next().unwrap();
    let lines = ehr.get(done["outcome"][0]["url"].as_str().unwrap()).await.text().await.unwrap();
    assert!(app.jobs_dir(job).join("Observation.1.ndjson").exists(), "{lines}");
    assert_eq!(app.read(job, "Observation.1.ndjson"), observations(30), "stored as the provider wrote it");
    assert_eq!(app.read(job, "Patient.1.ndjson"), patients(20), "gzip over the JWE too");
    assert!(lines.contains("authentication tag"), "the tampered file fails: {lines}");
    assert!(!app.jobs_dir(job).join("Patient.2.ndjson").exists(), "and nothing of it is kept");
    assert!(!app.provider.requests_to("/fhir/files/").iter().any(|r| r.range.is_some()));

    // Under another key the manifest does not decrypt: the request fails and says why.
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-14"),
            param("manifestUrl", "valueUrl", &manifest),
            encryption_key(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([8u8; 32])),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200);
    let done = ehr.poll_until_done(&ehr.status_url("s-14").await).await;
    let lines = ehr.get(done["outcome"][0]["url"].as_str().unwrap()).await.text().await.unwrap();
    assert!(lines.contains("could not be decrypted"), "{lines}");
    // Keys that are no AES key, and other codings, are refused at once.
    for (bad, why) in [
        (encryption_key("AAEC"), "bits"),
        (
            json!({"name": "fileEncryptionKey", "part": [
        {"name": "coding", "valueCoding": {"code": "pgp"}}, {"name": "value", "valueString": k}]}),
            "pgp",
        ),
    ] {
        let res = ehr
            .submit(vec![
                param("submissionId", "valueString", "s-15"),
                param("manifestUrl", "valueUrl", &manifest),
                bad,
            ])
            .await;
        assert_eq!(res.status(), 400);
        let text = res.text().await.unwrap();
        assert!(text.contains("fileEncryptionKey") && text.contains(why), "{text}");
    }
}

#[tokio::test]
async fn pushed_manifests_are_not_paced_as_polls() {
    // Polls 3 s apart per origin; a submission's five manifests are not polls.
    let app = spawn_app_with(|c| c.limits.provider_requests_per_minute = 20).await;
    app.provider.serve_openly();
    app.provider.add_file("o.ndjson", "Observation", observations(2));
    let ehr = Submitter::register(&app, "ehr-many").await;
    let manifest = app.provider.manifest_url();
    let started = Instant::now();
    for i in 0..5 {
        let res = ehr
            .submit(vec![
                param("submissionId", "valueString", "s-many"),
                param("manifestUrl", "valueUrl", &format!("{manifest}?m={i}")),
            ])
            .await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }
    let res = ehr
        .submit(vec![
            param("submissionId", "valueString", "s-many"),
            status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
        ])
        .await;
    assert_eq!(res.status(), 200);
    let done = ehr.poll_until_done(&ehr.status_url("s-many").await).await;
    assert_eq!(done["outcome"].as_array().unwrap().len(), 5, "{done}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "five manifests at the polls' pace take 12 s; took {took:?}");
}
