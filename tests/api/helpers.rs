//! `spawn_app()` and `TestApp`: one method per endpoint, a registered fake provider, and
//! `wait_for_job` that polls with a deadline.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use bulk_import::{config::Config, destination::DestinationKind, jobs::context::JobContext, App};
use josekit::{
    jwk::Jwk,
    jws::{JwsHeader, ES384},
    jwt::{self, JwtPayload},
};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};

use super::fake_provider::FakeProvider;

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub provider: FakeProvider,
    /// The provider's key for authenticating to us, and its registration.
    pub provider_key: Jwk,
    pub client_id: String,
    pub dir: PathBuf,
    /// The app's job services, to drive the engine directly.
    pub ctx: JobContext,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    _tmp: Option<TempDir>,
}

/// The admin credential every test app is configured with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";

pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::defaults();
    c.admin_token = Some(ADMIN_TOKEN.to_string().into());
    c.port = 0;
    c.set_data_dir(dir.join("data"));
    c.jobs_path = dir.join("jobs");
    c.destination = DestinationKind::TmpFs;
    c.limits.poll_interval = Duration::from_millis(20);
    c.limits.max_poll_interval = Duration::from_millis(200);
    // 10 ms apart: tests that measure the budget set their own.
    c.limits.provider_requests_per_minute = 6000;
    c.limits.max_retry_after = Duration::from_secs(2);
    c.limits.max_retries = 3;
    c.limits.status_error_budget = Duration::ZERO;
    // The disk-room bounds depend on the machine's disk; their own tests set them.
    c.limits.job_disk_share = 0;
    c.limits.disk_reserve_bytes = 0;
    c.reaper_interval = Duration::from_secs(3600);
    // Tests find files by type and number; the default (the provider's own names) has its own.
    c.download_file_name = "{resourceType}.{fileNumber}.ndjson".into();
    c
}

pub fn init_logs() {
    if std::env::var("TEST_LOG").is_ok() {
        bulk_import::telemetry::init_tracing();
    }
}

/// A fresh app and a fresh fake provider, registered with each other.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let tmp = TempDir::new().unwrap();
    let provider = FakeProvider::start().await;
    let mut config = test_config(tmp.path());
    tweak(&mut config);
    let mut app = start(config, provider, tmp.path().to_path_buf()).await;
    app._tmp = Some(tmp);
    app.register_provider().await;
    app
}

/// Start an app on an existing directory (used to restart).
pub async fn start(config: Config, provider: FakeProvider, dir: PathBuf) -> TestApp {
    init_logs();
    let app = App::build(config).await.expect("app builds");
    let base = format!("http://{}", app.local_addr());
    let ctx = app.job_context();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run(async move {
            let _ = stopped.await;
        })
        .await
        .expect("app runs");
    });
    provider.set_consumer_jwks_url(format!("{base}/jwks"));
    TestApp {
        base,
        http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        provider,
        provider_key: ES384.generate_key_pair().unwrap().to_jwk_key_pair(),
        client_id: String::new(),
        dir,
        ctx,
        stop: Some(stop),
        handle: Some(handle),
        _tmp: None,
    }
}

impl TestApp {
    /// Stop gracefully and return what a restart needs.
    pub async fn stop(mut self) -> (FakeProvider, PathBuf, Jwk, String, Option<TempDir>) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap();
        (
            self.provider.clone(),
            self.dir.clone(),
            self.provider_key.clone(),
            self.client_id.clone(),
            self._tmp.take(),
        )
    }

    pub fn jobs_dir(&self, job_id: &str) -> PathBuf {
        self.dir.join("jobs").join(job_id)
    }

    pub async fn register(&self, body: &Value) -> Response {
        self.http
            .post(format!("{}/auth/register", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub fn public_jwks(&self) -> Value {
        let mut public = self.provider_key.to_public_key().unwrap();
        public.set_key_id("provider-key-1");
        public.set_algorithm("ES384");
        json!({"keys": [public.as_ref()]})
    }

    async fn register_provider(&mut self) {
        self.provider_key.set_key_id("provider-key-1");
        self.provider_key.set_algorithm("ES384");
        let res = self
            .register(&json!({"jwks": self.public_jwks(), "consumer_client_id": "consumer-at-fake", "aud": self.provider.base()}))
            .await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        self.client_id = body["client_id"].as_str().unwrap().to_string();
    }

    /// Register the provider again with `fields` over the defaults (e.g. another `aud`, or
    /// `token_origins`), and use that registration from now on.
    pub async fn reregister(&mut self, fields: Value) {
        let mut body = json!({"jwks": self.public_jwks(), "consumer_client_id": "consumer-at-fake", "aud": self.provider.base()});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let res = self.register(&body).await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        self.client_id = res.json::<Value>().await.unwrap()["client_id"].as_str().unwrap().to_string();
    }

    /// A client assertion as the provider would sign it; `tweak` edits claims before signing.
    pub fn assertion(&self, tweak: impl FnOnce(&mut JwtPayload, &mut JwsHeader)) -> String {
        sign_assertion(&self.provider_key, &self.client_id, &format!("{}/auth/token", self.base), tweak)
    }

    pub async fn post_token(&self, form: &[(&str, &str)]) -> Response {
        self.http.post(format!("{}/auth/token", self.base)).form(form).send().await.unwrap()
    }

    pub fn token_form(assertion: &str) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", "client_credentials".into()),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()),
            ("client_assertion", assertion.into()),
            ("scope", "system/*.*".into()),
        ]
    }

    /// An access token for the registered provider.
    pub async fn token(&self) -> String {
        self.token_for(&self.client_id).await
    }

    /// An access token for another registration made with the same provider key.
    pub async fn token_for(&self, client_id: &str) -> String {
        let assertion =
            sign_assertion(&self.provider_key, client_id, &format!("{}/auth/token", self.base), |_, _| {});
        let form = Self::token_form(&assertion);
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = self.post_token(&form).await;
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
    }

    pub async fn post_import_raw(&self, token: Option<&str>, content_type: &str, body: String) -> Response {
        let mut req =
            self.http.post(format!("{}/$import", self.base)).header("content-type", content_type).body(body);
        if let Some(t) = token {
            req = req.header("authorization", format!("bearer {t}"));
        }
        req.send().await.unwrap()
    }

    pub async fn post_import(&self, body: &Value) -> Response {
        let token = self.token().await;
        self.post_import_raw(Some(&token), "application/fhir+json", body.to_string()).await
    }

    /// Ping with an export URL and type; returns the job id.
    pub async fn start_import(&self, export_url: &str, export_type: &str) -> String {
        let res = self.post_import(&ping(export_url, export_type)).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "{}", res.text().await.unwrap());
        let location = res.headers()["content-location"].to_str().unwrap().to_string();
        assert!(location.starts_with(&format!("{}/job/", self.base)), "{location}");
        location.rsplit('/').next().unwrap().to_string()
    }

    pub async fn get_job(&self, id: &str) -> Response {
        self.http.get(format!("{}/job/{id}", self.base)).send().await.unwrap()
    }

    pub async fn delete_job(&self, id: &str) -> Response {
        self.http.delete(format!("{}/job/{id}", self.base)).send().await.unwrap()
    }

    pub async fn get_outcomes(&self, id: &str) -> Vec<Value> {
        let res =
            self.http.get(format!("{}/job/{id}/import-outcome.ndjson", self.base)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/fhir+ndjson");
        res.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Poll until the job leaves 202, with a deadline; returns the final response.
    pub async fn wait_for_job(&self, id: &str) -> Response {
        self.wait_for_job_within(id, Duration::from_secs(30)).await
    }

    /// Wait for the job to complete (200); returns the status body.
    pub async fn completed(&self, id: &str) -> Value {
        let res = self.wait_for_job(id).await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        res.json().await.unwrap()
    }

    /// Wait for the job to fail; returns its OperationOutcome's first diagnostics.
    pub async fn failed(&self, id: &str) -> String {
        let res = self.wait_for_job(id).await;
        assert_eq!(res.status(), 500);
        res.json::<Value>().await.unwrap()["issue"][0]["diagnostics"].as_str().unwrap().to_string()
    }

    /// A file the tmp-fs destination wrote for the job.
    pub fn read(&self, id: &str, name: &str) -> String {
        std::fs::read_to_string(self.jobs_dir(id).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Ask for a registration's next sync pull now (`POST /admin/sync/{client_id}`).
    pub async fn sync_now(&self, client_id: &str) -> Response {
        let url = format!("{}/admin/sync/{client_id}", self.base);
        self.http.post(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap()
    }

    /// GET an admin endpoint with the admin credential; returns its JSON.
    pub async fn admin_get(&self, path: &str) -> Value {
        let res =
            self.http.get(format!("{}{path}", self.base)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        res.json().await.unwrap()
    }

    pub async fn wait_for_job_within(&self, id: &str, limit: Duration) -> Response {
        let deadline = Instant::now() + limit;
        loop {
            let res = self.get_job(id).await;
            if res.status() != StatusCode::ACCEPTED {
                return res;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish in time");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub fn ping(export_url: &str, export_type: &str) -> Value {
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "exportUrl", "valueUrl": export_url},
        {"name": "exportType", "valueCode": export_type}
    ]})
}

/// Observation NDJSON with multi-byte UTF-8 and decimals such as `12.0`.
pub fn observations(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"resourceType\":\"Observation\",\"id\":\"obs-{i}\",\"status\":\"final\",\"code\":{{\"text\":\"Température 🌡️ 日本語 {i}\"}},\"valueQuantity\":{{\"value\":12.0,\"unit\":\"°C\"}}}}\n"
            )
        })
        .collect()
}

pub fn patients(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\",\"name\":[{{\"family\":\"Müller\"}}]}}\n")
        })
        .collect()
}

/// Sign a SMART client assertion with `key` (ES384, kid `provider-key-1`).
pub fn sign_assertion(
    key: &Jwk,
    client_id: &str,
    token_url: &str,
    tweak: impl FnOnce(&mut JwtPayload, &mut JwsHeader),
) -> String {
    let now = SystemTime::now();
    let mut claims = JwtPayload::new();
    claims.set_issuer(client_id);
    claims.set_subject(client_id);
    claims.set_audience(vec![token_url]);
    claims.set_expires_at(&(now + Duration::from_secs(120)));
    claims.set_issued_at(&now);
    claims.set_jwt_id(uuid::Uuid::new_v4().to_string());
    let mut header = JwsHeader::new();
    header.set_token_type("JWT");
    header.set_key_id("provider-key-1");
    tweak(&mut claims, &mut header);
    let mut signer = ES384.signer_from_jwk(key).unwrap();
    // The header is the test's to shape: josekit would otherwise copy the key's kid into it.
    signer.remove_key_id();
    jwt::encode_with_signer(&claims, &header, &signer).unwrap()
}

/// Poll `check` until it holds; fail after 20 s instead of hanging.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
