//! A provider that behaves on the wire as the SMART reference Bulk Submit provider
//! (`smart-on-fhir/bulk-submit-provider`) does, per `real-providers.md`: it serves its own
//! manifests (`/api/manifests/{name}`) and files (`/exports/{name}`) with
//! `requiresAccessToken: false`, sends every value as `valueString` in `application/json`, names
//! the base URL `FHIRBaseUrl`, uses the earlier code set (`complete` / `aborted`), asks for the
//! status right after its first accepted manifest, sends a replace with `manifestUrl` and
//! `FHIRBaseUrl` present but valueless, withdraws by replacing with an empty manifest, polls
//! ignoring `Retry-After`, stops on any status but 200 and 202, reads `X-Progress` with
//! `(\d+)%`, and reads only the final manifest's `error[]`. Each scenario of the issue runs
//! through it against the real server.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde_json::{json, Value};

use super::bulk_submit::{Submitter, SYSTEM};
use super::helpers::{observations, patients, spawn_app, TestApp};

const OLD_CODES: &str = "http://hl7.org/fhir/uv/bulkdata/ValueSet/submission-status";

#[derive(Default)]
struct Served {
    /// Manifest name → its files (resource type, file name).
    manifests: HashMap<String, Vec<(String, String)>>,
    files: HashMap<String, String>,
}

#[derive(Clone)]
struct SmartProvider {
    addr: SocketAddr,
    served: Arc<Mutex<Served>>,
}

impl SmartProvider {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let provider = SmartProvider { addr: listener.local_addr().unwrap(), served: Arc::default() };
        let router = Router::new()
            .route("/api/manifests/{name}", get(manifest))
            .route("/exports/{name}", get(file))
            .with_state(provider.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        provider.manifest("empty", &[]);
        provider
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn fhir_base(&self) -> String {
        format!("{}/fhir", self.origin())
    }

    /// Serve a manifest listing these files (type, name); its URL.
    fn manifest(&self, name: &str, files: &[(&str, &str)]) -> String {
        let files = files.iter().map(|(t, f)| (t.to_string(), f.to_string())).collect();
        self.served.lock().unwrap().manifests.insert(name.into(), files);
        format!("{}/api/manifests/{name}", self.origin())
    }

    fn file(&self, name: &str, body: String) {
        self.served.lock().unwrap().files.insert(name.into(), body);
    }
}

async fn manifest(State(p): State<SmartProvider>, Path(name): Path<String>) -> Response {
    let Some(files) = p.served.lock().unwrap().manifests.get(&name).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let output: Vec<Value> =
        files.iter().map(|(t, f)| json!({"type": t, "url": format!("{}/exports/{f}", p.origin())})).collect();
    let body = json!({"transactionTime": "2026-12-01T00:00:00Z", "requiresAccessToken": false,
        "output": output, "error": []});
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn file(State(p): State<SmartProvider>, Path(name): Path<String>) -> Response {
    match p.served.lock().unwrap().files.get(&name).cloned() {
        Some(body) => ([(header::CONTENT_TYPE, "application/fhir+ndjson")], body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// One submission, sent and polled as the SMART provider does.
struct Submission<'a> {
    who: &'a Submitter<'a>,
    id: String,
    fhir_base: String,
    status_url: Option<String>,
}

fn string(name: &str, value: &str) -> Value {
    json!({"name": name, "valueString": value})
}

impl<'a> Submission<'a> {
    fn new(who: &'a Submitter<'a>, id: &str, provider: &SmartProvider) -> Self {
        Self { who, id: id.into(), fhir_base: provider.fhir_base(), status_url: None }
    }

    fn app(&self) -> &TestApp {
        self.who.app
    }

    /// POST Parameters (the submitter and submission first) to `operation`, as plain JSON.
    async fn post(&self, operation: &str, mut params: Vec<Value>) -> reqwest::Response {
        let submitter =
            json!({"name": "submitter", "valueIdentifier": {"system": SYSTEM, "value": self.who.value}});
        params.insert(0, submitter);
        params.insert(1, string("submissionId", &self.id));
        let body = json!({"resourceType": "Parameters", "parameter": params});
        self.app()
            .http
            .post(format!("{}/{operation}", self.app().base))
            .bearer_auth(&self.who.token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn send(&self, params: Vec<Value>) {
        let res = self.post("$bulk-submit", params).await;
        let status = res.status();
        assert_eq!(status, 200, "{}: {}", self.id, res.text().await.unwrap());
    }

    /// A manifest; after the first one accepted, the status is asked for (202 + Content-Location).
    async fn manifest(&mut self, url: &str) {
        self.send(vec![string("manifestUrl", url), string("FHIRBaseUrl", &self.fhir_base)]).await;
        if self.status_url.is_some() {
            return;
        }
        let res = self.post("$bulk-submit-status", vec![]).await;
        assert_eq!(res.status(), 202, "{}", self.id);
        let location = res.headers().get("content-location").expect("Content-Location on 202");
        self.status_url = Some(location.to_str().unwrap().to_string());
    }

    /// A replacement: by `new`, or (its known bug) with `manifestUrl` and `FHIRBaseUrl` valueless.
    async fn replace(&self, old: &str, new: Option<&str>) {
        let mut params = vec![string("replacesManifestUrl", old)];
        match new {
            Some(url) => params.extend([string("manifestUrl", url), string("FHIRBaseUrl", &self.fhir_base)]),
            None => params.extend([json!({"name": "manifestUrl"}), json!({"name": "FHIRBaseUrl"})]),
        }
        self.send(params).await;
    }

    async fn finish(&self, code: &str) {
        self.send(vec![
            json!({"name": "submissionStatus", "valueCoding": {"system": OLD_CODES, "code": code}}),
        ])
        .await;
    }

    /// Poll until 200 (ignoring `Retry-After`), failing as the SMART provider would on any other
    /// status or a final manifest without `error[]`; the `error[]` entries.
    async fn outcome(&self) -> Vec<Value> {
        let url = self.status_url.as_deref().expect("the status was asked for");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let res = self.app().http.get(url).bearer_auth(&self.who.token).send().await.unwrap();
            match res.status().as_u16() {
                200 => {
                    let body: Value = res.json().await.unwrap();
                    let error = body.get("error").and_then(Value::as_array);
                    return error.unwrap_or_else(|| panic!("{}: no error[] in {body}", self.id)).clone();
                }
                202 => {
                    let progress = res.headers()["x-progress"].to_str().unwrap().to_string();
                    assert!(
                        percent(&progress).is_some(),
                        "{}: no (\\d+)% in X-Progress '{progress}'",
                        self.id
                    );
                }
                other => panic!("{}: the SMART provider stops polling on {other}", self.id),
            }
            assert!(Instant::now() < deadline, "{}: never finished", self.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The outcome lines of one `error[]` entry, as text.
    async fn lines(&self, entry: &Value) -> String {
        let url = entry["url"].as_str().expect("an outcome URL");
        let res = self.app().http.get(url).bearer_auth(&self.who.token).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    fn job(&self) -> String {
        self.status_url.as_deref().unwrap().rsplit('/').next().unwrap().to_string()
    }

    /// Wait until this file of the submission is stored.
    async fn stored(&self, name: &str) {
        let path = self.app().jobs_dir(&self.job()).join(name);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !path.exists() {
            assert!(Instant::now() < deadline, "{}: {name} was never stored", self.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stored_names(&self) -> Vec<String> {
        let dir = std::fs::read_dir(self.app().jobs_dir(&self.job()));
        let mut names: Vec<String> = dir
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// What `/(\d+)%/` finds.
fn percent(text: &str) -> Option<u32> {
    let at = text.find('%')?;
    let digits: String = text[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

fn errors_in(entry: &Value) -> i64 {
    let counts = entry["countSeverity"].as_array().cloned().unwrap_or_default();
    counts.iter().find(|c| c["code"] == "error").and_then(|c| c["count"].as_i64()).unwrap_or(0)
}

#[tokio::test]
async fn the_smart_reference_provider_completes_each_scenario() {
    let app = spawn_app().await;
    let smart = SmartProvider::start().await;
    smart.file("p1.ndjson", patients(5));
    smart.file("o1.ndjson", observations(8));
    let m1 = smart.manifest("1", &[("Patient", "p1.ndjson")]);
    let m2 = smart.manifest("2", &[("Observation", "o1.ndjson")]);
    let with_404 = smart.manifest("3", &[("Patient", "p1.ndjson"), ("Observation", "missing.ndjson")]);
    let who = Submitter::register_at(&app, "smart-ehr", &smart.fhir_base()).await;

    // One manifest, then complete.
    let mut one = Submission::new(&who, "one", &smart);
    one.manifest(&m1).await;
    one.finish("complete").await;
    let error = one.outcome().await;
    assert_eq!(error.len(), 1, "{error:?}");
    assert_eq!((error[0]["manifestUrl"].as_str(), errors_in(&error[0])), (Some(m1.as_str()), 0));
    assert_eq!(app.read(&one.job(), "Patient.1.ndjson"), patients(5));

    // Two manifests.
    let mut two = Submission::new(&who, "two", &smart);
    two.manifest(&m1).await;
    two.manifest(&m2).await;
    two.finish("complete").await;
    assert_eq!(two.outcome().await.len(), 2);
    assert_eq!(two.stored_names(), vec!["Observation.1.ndjson", "Patient.1.ndjson"]);

    // A manifest listing a file that answers 404: an error outcome, the rest imported.
    let mut missing = Submission::new(&who, "missing", &smart);
    missing.manifest(&with_404).await;
    missing.finish("complete").await;
    let error = missing.outcome().await;
    assert_eq!(errors_in(&error[0]), 1, "{error:?}");
    let lines = app.http.get(error[0]["url"].as_str().unwrap()).bearer_auth(&who.token).send().await.unwrap();
    assert!(lines.text().await.unwrap().contains("missing.ndjson"));
    assert_eq!(missing.stored_names(), vec!["Patient.1.ndjson"]);

    // A replace sent with valueless manifestUrl and FHIRBaseUrl: a withdrawal.
    let mut withdrawn = Submission::new(&who, "withdrawn", &smart);
    withdrawn.manifest(&m1).await;
    withdrawn.stored("Patient.1.ndjson").await;
    withdrawn.replace(&m1, None).await;
    withdrawn.finish("complete").await;
    let error = withdrawn.outcome().await;
    assert!(withdrawn.stored_names().is_empty(), "{:?}", withdrawn.stored_names());
    // Its outcome tells what became of the data: withdrawn and removed, never "imported".
    let said = withdrawn.lines(&error[0]).await;
    assert!(!said.contains("stored as") && said.contains("withdrawn by the provider"), "{said}");
    assert!(said.contains("the 5 resources") && said.contains("were removed"), "{said}");

    // A withdrawal sent as a replacement by the empty manifest; then another manifest.
    let mut emptied = Submission::new(&who, "emptied", &smart);
    emptied.manifest(&m1).await;
    emptied.stored("Patient.1.ndjson").await;
    emptied.replace(&m1, Some(&format!("{}/api/manifests/empty", smart.origin()))).await;
    emptied.manifest(&m2).await;
    emptied.finish("complete").await;
    let error = emptied.outcome().await;
    assert_eq!(error.len(), 3, "the first, the empty one and the second: {error:?}");
    assert_eq!(emptied.stored_names(), vec!["Observation.1.ndjson"]);
    let said = emptied.lines(&error[0]).await;
    assert!(!said.contains("stored as") && said.contains("replaced by") && said.contains("empty"), "{said}");

    // Aborted: everything stored for it is deleted, and the final manifest still reads.
    let mut aborted = Submission::new(&who, "aborted", &smart);
    aborted.manifest(&m2).await;
    aborted.stored("Observation.1.ndjson").await;
    aborted.finish("aborted").await;
    let error = aborted.outcome().await;
    assert!(!app.jobs_dir(&aborted.job()).exists(), "the aborted submission's data is deleted");
    // Stored before the abort (removed), or stopped on its way: never said to be kept.
    let said = aborted.lines(&error[0]).await;
    let removed = said.contains("stopped the submission")
        && said.contains("the 8 resources")
        && said.contains("were removed");
    assert!(!said.contains("stored as") && (removed || said.contains("not imported")), "{said}");
}
