//! The real binary on a fresh directory: no `.env`, secrets generated with 0600 and logged by
//! path only, a full import with no secret or token in its debug log, and a graceful SIGTERM.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use josekit::jws::ES384;
use serde_json::{json, Value};

use super::{
    fake_provider::{FakeProvider, FileFault, Ranges},
    helpers::{patients, ping, sign_assertion},
    listener::{assert_health_is_fast, connect_from, ATTACKER},
};

pub(super) struct Server {
    pub(super) child: Child,
    pub(super) address: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub(super) fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_cmd(Command::new(env!("CARGO_BIN_EXE_bulk-import")), dir, env)
    }

    /// Started under `ulimit -n files` (soft and hard, so the server cannot raise it).
    fn start_with_open_file_limit(dir: &Path, env: &[(&str, &str)], files: u32) -> Self {
        Self::start_after(&format!("ulimit -n {files}"), dir, env)
    }

    /// Started by a shell that runs `setup` first (a ulimit, a umask).
    fn start_after(setup: &str, dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &format!("{setup} && exec \"$0\""), env!("CARGO_BIN_EXE_bulk-import")]);
        Self::start_cmd(cmd, dir, env)
    }

    fn start_cmd(mut cmd: Command, dir: &Path, env: &[(&str, &str)]) -> Self {
        cmd.current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", "0")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let line = line.unwrap_or_default();
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let address = loop {
            let line = rx.recv_timeout(Duration::from_secs(30)).expect("the server logs its address");
            if let Some(rest) = line.split("address=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
            // LOG_FORMAT=json
            if let Some(rest) = line.split("\"address\":\"").nth(1) {
                break rest.split('"').next().unwrap().to_string();
            }
        };
        Server { child, address, log }
    }

    pub(super) fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    pub(super) fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then wait for a clean exit.
    async fn stop(mut self) -> String {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let exit = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the server did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(exit.success(), "{exit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.log()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_server_starts_with_no_configuration_generates_its_secrets_and_stops_on_sigterm() {
    let dir = tempfile::TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[("RUST_LOG", "bulk_import=info")]);
    let jwks: Value = reqwest::get(format!("{}/jwks", server.base())).await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES384");
    let log = server.stop().await;
    assert!(log.contains("generated our signing key pair") && log.contains("private-key.jwk.json"), "{log}");
    assert!(log.contains("generated JWT_SECRET") && log.contains("jwt-secret"), "{log}");
    assert!(log.contains("generated ADMIN_TOKEN") && log.contains("admin-token"), "{log}");
    #[cfg(unix)]
    for file in ["private-key.jwk.json", "jwt-secret", "admin-token"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data").join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // A second start reuses what the first one generated.
    let again = Server::start(dir.path(), &[("RUST_LOG", "bulk_import=info")]);
    let jwks2: Value = reqwest::get(format!("{}/jwks", again.base())).await.unwrap().json().await.unwrap();
    let log2 = again.stop().await;
    assert_eq!(jwks, jwks2);
    assert!(!log2.contains("generated"), "{log2}");
}

#[tokio::test]
async fn no_secret_or_token_reaches_the_debug_log_during_a_full_import() {
    let dir = tempfile::TempDir::new().unwrap();
    let provider = FakeProvider::start().await;
    provider.add_file("p.ndjson", "Patient", patients(3));
    let server = Server::start(
        dir.path(),
        &[("RUST_LOG", "debug"), ("DESTINATION_TYPE", "tmp-fs"), ("POLL_INTERVAL", "0.05")],
    );
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    let Pinged { status_url, access_token: access, assertion, admin } =
        ping_static(&server.base(), dir.path(), &provider).await;
    assert_eq!(finished(&status_url, "the import did not finish").await.status(), 200);
    let log = server.stop().await;

    let ours: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("data/private-key.jwk.json")).unwrap())
            .unwrap();
    let jwt_secret = std::fs::read_to_string(dir.path().join("data/jwt-secret")).unwrap();
    let mut secrets = vec![
        ("admin token", admin),
        ("JWT secret", jwt_secret.trim().to_string()),
        ("our private key", ours["d"].as_str().unwrap().to_string()),
        ("access token we issued", access.clone()),
        ("client assertion", assertion.clone()),
    ];
    let provider_tokens = provider.issued_tokens();
    assert!(!provider_tokens.is_empty());
    for t in provider_tokens {
        secrets.push(("provider token", t));
    }
    assert!(log.lines().count() > 10, "debug logging was on: {log}");
    for (what, secret) in secrets {
        assert!(!log.contains(&secret), "the {what} reached the log");
        // Not even its signature part (a JWT split across fields).
        if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(!log.contains(sig), "part of the {what} reached the log");
        }
    }
}

#[tokio::test]
async fn a_submission_with_a_request_header_shows_in_the_cli_and_metrics_and_the_header_never_logs() {
    let dir = tempfile::TempDir::new().unwrap();
    let provider = FakeProvider::start().await;
    provider.serve_openly();
    provider.add_file("p.ndjson", "Patient", patients(3));
    let server = Server::start(
        dir.path(),
        &[("RUST_LOG", "debug"), ("DESTINATION_TYPE", "tmp-fs"), ("POLL_INTERVAL", "0.05")],
    );
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    let (base, http) = (server.base(), reqwest::Client::new());
    let submitter = json!({"system": "https://ehr.example/ids", "value": "ehr-log"});
    let issued = register_with_token(
        &base,
        dir.path(),
        &provider,
        json!({"submitter": submitter}),
        "system/bulk-submit",
    )
    .await;
    let token = issued.token.as_str();
    let secret = "hdr-secret-5d1c9e77";
    let who = json!({"name": "submitter", "valueIdentifier": submitter});
    let id = json!({"name": "submissionId", "valueString": "log-1"});
    let submit = json!({"resourceType": "Parameters", "parameter": [who, id,
        {"name": "manifestUrl", "valueUrl": provider.manifest_url()},
        {"name": "fileRequestHeader", "part": [
            {"name": "headerName", "valueString": "Authorization"}, {"name": "headerValue", "valueString": secret}]},
        {"name": "submissionStatus", "valueCoding": {"system": "http://hl7.org/fhir/event-status", "code": "completed"}}]});
    let res =
        http.post(format!("{base}/$bulk-submit")).bearer_auth(token).json(&submit).send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let ask = json!({"resourceType": "Parameters", "parameter": [who, id]});
    let res =
        http.post(format!("{base}/$bulk-submit-status")).bearer_auth(token).json(&ask).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let status_url = res.headers()["content-location"].to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(&status_url).bearer_auth(token).send().await.unwrap().status() == 202 {
        assert!(Instant::now() < deadline, "the submission never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The operator sees it, manifest by manifest, and /metrics counts it.
    let (code, out, err) = super::cli::run(dir.path(), &["submissions", "--server", &base]);
    assert_eq!(code, 0, "{err}");
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("log-1  from ehr-log  completed") && first.contains("1 of 1 files"), "{out}");
    assert!(
        out.contains(&format!("#0 done    {}: 1 files, 1 imported, 0 failed", provider.manifest_url())),
        "{out}"
    );
    let (code, out, _) = super::cli::run(dir.path(), &["submissions", "--server", &base, "--json"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["submissions"][0]["manifests"][0]["imported"], 1, "{listed}");
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for kind in ["opened", "manifest", "completed"] {
        let line = format!("bulk_import_submission_requests_total{{kind=\"{kind}\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    let log = server.stop().await;
    let sent = provider.requests_to("/fhir/files/p.ndjson");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].authorization.as_deref(), Some(secret), "the header reached the provider");
    assert!(log.lines().count() > 10, "debug logging was on: {log}");
    assert!(!log.contains(secret), "the header's value reached the log");
}

#[tokio::test]
async fn imported_data_and_the_database_are_owner_only_under_umask_022_and_info_logs_hide_job_ids() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::TempDir::new().unwrap();
    let provider = FakeProvider::start().await;
    provider.add_file("p.ndjson", "Patient", patients(3));
    let env = [("RUST_LOG", "bulk_import=info"), ("DESTINATION_TYPE", "tmp-fs"), ("POLL_INTERVAL", "0.05")];
    let server = Server::start_after("umask 022", dir.path(), &env);
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    let pinged = ping_static(&server.base(), dir.path(), &provider).await;
    assert_eq!(finished(&pinged.status_url, "the import did not finish").await.status(), 200);
    let id = pinged.status_url.rsplit('/').next().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let data = dir.path().join("data");
    let jobs = dir.path().join("jobs");
    let mut checked = vec![
        (data.clone(), 0o700),
        (data.join("bulk-import.sqlite"), 0o600),
        (jobs.clone(), 0o700),
        (jobs.join(id), 0o700),
        (jobs.join(id).join("p.ndjson"), 0o600),
    ];
    for extra in ["bulk-import.sqlite-wal", "bulk-import.sqlite-shm"] {
        if data.join(extra).exists() {
            checked.push((data.join(extra), 0o600));
        }
    }
    for (path, want) in checked {
        assert_eq!(mode(&path), want, "{}", path.display());
    }
    // The job id is a capability: INFO logs show a prefix only.
    let log = server.stop().await;
    assert!(!log.contains(id), "the full job id reached an INFO log:\n{log}");
    assert!(log.contains(&format!("job={}…", &id[..8])), "{log}");
}

#[tokio::test]
async fn after_kill_9_mid_import_a_restart_resumes_without_refetching_finished_files() {
    let dir = tempfile::TempDir::new().unwrap();
    let provider = FakeProvider::start().await;
    let obs = super::helpers::observations(2_000);
    provider.add_file("a.ndjson", "Observation", obs.clone());
    provider.add_file("b.ndjson", "Observation", obs.clone());
    provider.hold_file("b.ndjson");
    let env = [
        ("RUST_LOG", "bulk_import=info"),
        ("DESTINATION_TYPE", "tmp-fs"),
        ("POLL_INTERVAL", "0.05"),
        ("PARALLEL_DOWNLOADS", "1"),
    ];
    let mut server = Server::start(dir.path(), &env);
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    let pinged = ping_static(&server.base(), dir.path(), &provider).await;
    let id = pinged.status_url.rsplit('/').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while provider.requests_to("/fhir/files/b.ndjson").is_empty() {
        assert!(Instant::now() < deadline, "the second file was never requested");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: no shutdown path runs.
    assert!(Command::new("kill").args(["-KILL", &server.child.id().to_string()]).status().unwrap().success());
    let _ = server.child.wait();
    provider.release_files();

    let server = Server::start(dir.path(), &env);
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    let status_url = format!("{}/job/{id}", server.base());
    let res = finished(&status_url, "the job did not resume").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    drop(server);
    assert_eq!(provider.requests_to("/fhir/files/a.ndjson").len(), 1, "a finished file was fetched again");
    assert_eq!(provider.requests_to("/fhir/files/b.ndjson").len(), 2, "the interrupted file restarts");
    let out = dir.path().join("jobs").join(&id);
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["a.ndjson", "b.ndjson"],
        "no partial file is left, and files keep the provider's names"
    );
    for n in &names {
        assert_eq!(std::fs::read_to_string(out.join(n)).unwrap(), obs, "{n}: a missing or duplicated line");
    }
}

/// The checkpoint SQLite holds for a job's file, once one is stored.
async fn wait_for_checkpoint(data: &Path, id: &str, name: &str) -> Value {
    let url = format!("sqlite://{}?mode=ro", data.join("bulk-import.sqlite").display());
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: Option<Option<String>> =
            sqlx::query_scalar("SELECT checkpoint FROM job_files WHERE job_id = ? AND name = ?")
                .bind(id)
                .bind(name)
                .fetch_optional(&db)
                .await
                .unwrap();
        if let Some(Some(json)) = stored {
            db.close().await;
            return serde_json::from_str(&json).unwrap();
        }
        assert!(Instant::now() < deadline, "no checkpoint was stored for {name}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn after_kill_9_mid_file_a_restart_continues_the_file_from_its_checkpoint_with_a_range() {
    continues_mid_file_after("-KILL", "tmp-fs").await;
}

#[tokio::test]
async fn a_crash_mid_file_into_the_resource_store_goes_on_after_its_last_committed_batch() {
    continues_mid_file_after("-KILL", "resource-store").await;
}

#[tokio::test]
async fn a_graceful_stop_mid_file_keeps_its_partial_file_for_the_next_start_to_continue() {
    continues_mid_file_after("-TERM", "tmp-fs").await;
}

/// Rows in a resource store's SQLite file.
async fn stored_rows(db: &Path) -> i64 {
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM fhir_resources").fetch_one(&mut c).await.unwrap()
}

/// Stop the server with `signal` while a file is half downloaded (a checkpoint stored), start
/// it again: the file goes on from the checkpoint, and ends byte-identical (tmp-fs) or with
/// every resource stored once (resource-store, whose checkpoints are its committed batches).
async fn continues_mid_file_after(signal: &str, destination: &str) {
    let dir = tempfile::TempDir::new().unwrap();
    let provider = FakeProvider::start().await;
    provider.ranges(Ranges::ETag);
    provider.set_chunk_size(64 * 1024);
    // About 4 MiB: checkpoints every MiB, so the first half stores one at least.
    let obs = super::helpers::observations(25_000);
    provider.add_file("big.ndjson", "Observation", obs.clone());
    provider.fault_file("big.ndjson", vec![FileFault::StallHalfway(120_000)]);
    let env = [
        ("RUST_LOG", "bulk_import=info"),
        ("DESTINATION_TYPE", destination),
        ("POLL_INTERVAL", "0.05"),
        ("CHECKPOINT_BYTES", "1048576"),
    ];
    let store = destination == "resource-store";
    let mut server = Server::start(dir.path(), &env);
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    let pinged = ping_static(&server.base(), dir.path(), &provider).await;
    let id = pinged.status_url.rsplit('/').next().unwrap().to_string();
    let checkpoint = wait_for_checkpoint(&dir.path().join("data"), &id, "big.ndjson").await;
    let from = checkpoint["saved"]["bytes"].as_u64().unwrap();
    let least = if store { 1 } else { 1_048_576 };
    assert!(from >= least && obs.as_bytes()[from as usize - 1] == b'\n', "{checkpoint}");
    let lines_before = obs[..from as usize].lines().count() as u64;
    assert_eq!(checkpoint["lines"], lines_before, "{checkpoint}");
    assert_eq!(checkpoint["resources"], lines_before, "{checkpoint}");
    assert!(Command::new("kill").args([signal, &server.child.id().to_string()]).status().unwrap().success());
    let _ = server.child.wait();
    let part = dir.path().join("jobs").join(&id).join("big.ndjson.part");
    let db = dir.path().join("data/resources.sqlite");
    if store {
        assert_eq!(checkpoint["saved"]["state"], "resource-store/1", "{checkpoint}");
        assert!(stored_rows(&db).await >= lines_before as i64, "the committed batches are there");
    } else {
        assert!(std::fs::metadata(&part).unwrap().len() >= from, "the partial file is kept");
    }

    let server = Server::start(dir.path(), &env);
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    let res = finished(&format!("{}/job/{id}", server.base()), "the job did not resume").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let body: Value = res.json().await.unwrap();
    let log = server.stop().await;
    assert_eq!(body["extension"]["resources"], 25_000, "counts go on from the checkpoint: {body}");
    let asked = provider.requests_to("/fhir/files/big.ndjson");
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(
        asked[1].range.as_deref() == Some(format!("bytes={from}-").as_str()),
        "the rest from the checkpoint: {:?}",
        asked[1].range
    );
    assert!(asked[1].if_range.is_some(), "only the same file: {:?}", asked[1]);
    assert!(log.contains("the file goes on from what an earlier process stored of it"), "{log}");
    if store {
        assert_eq!(stored_rows(&db).await, 25_000, "every resource once");
        return;
    }
    let out = dir.path().join("jobs").join(&id);
    let stored = std::fs::read(out.join("big.ndjson")).unwrap();
    assert!(stored == obs.as_bytes(), "{} bytes stored, not the provider's {}", stored.len(), obs.len());
    assert!(!out.join("big.ndjson.part").exists(), "no partial file is left");
}

#[tokio::test]
async fn a_connection_flood_under_a_low_open_file_limit_stops_neither_health_nor_a_running_import() {
    let dir = tempfile::TempDir::new().unwrap();
    let provider = FakeProvider::start().await;
    let obs = super::helpers::observations(500);
    provider.add_file("a.ndjson", "Observation", obs.clone());
    provider.hold_file("a.ndjson");
    let env = [("RUST_LOG", "bulk_import=info"), ("DESTINATION_TYPE", "tmp-fs"), ("POLL_INTERVAL", "0.05")];
    // 400 descriptors: 256 are kept for jobs and draining refusals, so 144 connections in all and
    // 72 per address.
    let server = Server::start_with_open_file_limit(dir.path(), &env, 400);
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    let pinged = ping_static(&server.base(), dir.path(), &provider).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while provider.requests_to("/fhir/files/a.ndjson").is_empty() {
        assert!(Instant::now() < deadline, "the file was never requested");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 600 silent connections from one address, held open: more than the server has descriptors.
    let server_addr = server.address.parse().unwrap();
    let mut flood = Vec::new();
    for _ in 0..600 {
        flood.push(connect_from(ATTACKER, server_addr).await);
    }
    assert_health_is_fast(&server.base()).await;
    provider.release_files();
    let res = finished(&pinged.status_url, "the import did not finish under the flood").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_health_is_fast(&server.base()).await;
    drop(flood);
    let log = server.stop().await;
    assert_eq!(body["extension"]["result"], "completed", "{body}");
    assert_eq!(body["extension"]["resources"], 500, "{body}");
    let id = pinged.status_url.rsplit('/').next().unwrap();
    let stored = std::fs::read_to_string(dir.path().join("jobs").join(id).join("a.ndjson")).unwrap();
    assert_eq!(stored, obs);
    assert!(log.contains("connection refused: over a cap"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
}

#[tokio::test]
async fn sigterm_during_a_manifest_dripped_a_byte_at_a_time_exits_within_two_seconds() {
    let dir = tempfile::TempDir::new().unwrap();
    let provider = FakeProvider::start().await;
    provider.add_file("p.ndjson", "Patient", patients(3));
    provider.drip_manifest(100);
    let server = Server::start(dir.path(), &[("RUST_LOG", "bulk_import=info"), ("POLL_INTERVAL", "0.05")]);
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    ping_static(&server.base(), dir.path(), &provider).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while provider.requests_to("/fhir/manifest.json").is_empty() {
        assert!(Instant::now() < deadline, "the manifest was never requested");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let log = server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(2), "SIGTERM took {:?}:\n{log}", started.elapsed());
    assert!(!log.contains("did not stop in time"), "{log}");
}

#[tokio::test]
async fn kill_9_during_a_kick_off_is_noticed_on_restart_and_the_job_kicks_off_once_more() {
    let dir = tempfile::TempDir::new().unwrap();
    let provider = FakeProvider::start().await;
    provider.add_file("p.ndjson", "Patient", patients(3));
    provider.delay_kickoff(60_000);
    let env = [("RUST_LOG", "bulk_import=info"), ("POLL_INTERVAL", "0.05")];
    let mut server = Server::start(dir.path(), &env);
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    let pinged = ping_dynamic(&server.base(), dir.path(), &provider).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while provider.requests_to("/fhir/$export").is_empty() {
        assert!(Instant::now() < deadline, "the kick-off was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(Command::new("kill").args(["-KILL", &server.child.id().to_string()]).status().unwrap().success());
    let _ = server.child.wait();
    provider.delay_kickoff(0);

    let server = Server::start(dir.path(), &env);
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    let id = pinged.status_url.rsplit('/').next().unwrap();
    let status_url = format!("{}/job/{id}", server.base());
    let res = finished(&status_url, "the job did not finish after the restart").await;
    assert_eq!(res.status(), 200);
    let log = server.stop().await;
    assert!(log.contains("an earlier kick-off of this job was interrupted"), "{log}");
    assert_eq!(provider.requests_to("/fhir/$export").len(), 2);
}

/// Run the binary until it exits by itself (it is expected to refuse to start); its status and log.
fn run_to_exit(dir: &Path, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulk-import"));
    cmd.current_dir(dir).env_clear().env("PORT", "0").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started instead of refusing to");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status, log)
}

#[tokio::test]
async fn a_full_disk_at_first_start_leaves_no_broken_key_file_and_a_broken_one_is_named() {
    let Some(disk) = super::small_disk::SmallDisk::mount(8 << 20, "a_full_disk_at_first_start") else {
        return;
    };
    let data = disk.path().join("data");
    std::fs::create_dir(&data).unwrap();
    disk.fill();
    let work = tempfile::TempDir::new().unwrap();
    let env = [("DATA_DIR", data.to_str().unwrap()), ("RUST_LOG", "bulk_import=info")];
    let (status, log) = run_to_exit(work.path(), &env);
    assert!(!status.success());
    assert!(log.contains("private-key.jwk.json"), "{log}");
    let left: Vec<_> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "a failed first start left {left:?}");
    // With room again, the next start generates everything.
    disk.free();
    let server = Server::start(work.path(), &env);
    drop(server);
    assert!(std::fs::metadata(data.join("private-key.jwk.json")).unwrap().len() > 100);

    // A key file emptied some other way stops the start with a message that says what to do.
    std::fs::write(data.join("private-key.jwk.json"), "").unwrap();
    let (status, log) = run_to_exit(work.path(), &env);
    assert!(!status.success());
    assert!(
        log.contains("private-key.jwk.json") && log.contains("is empty") && log.contains("delete it"),
        "{log}"
    );
}

/// Poll a job's status URL until it stops answering 202 (30 s at most); its last answer.
pub(super) async fn finished(status_url: &str, what: &str) -> reqwest::Response {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = http.get(status_url).send().await.unwrap();
        if res.status() != 202 {
            return res;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a provider used to start an import: for checks that none of it leaks.
struct Pinged {
    status_url: String,
    access_token: String,
    assertion: String,
    admin: String,
}

/// Register a provider key, get a token and ping a static import.
async fn ping_static(base: &str, dir: &Path, provider: &FakeProvider) -> Pinged {
    ping_with(base, dir, provider, &provider.manifest_url(), "static").await
}

async fn ping_dynamic(base: &str, dir: &Path, provider: &FakeProvider) -> Pinged {
    ping_with(base, dir, provider, &provider.export_url(), "dynamic").await
}

/// A fresh provider key registered at `base` (with the admin credential the server in `dir`
/// generated, and `extra` registration fields), and a token for `scope`.
struct Issued {
    token: String,
    assertion: String,
    admin: String,
}

async fn register_with_token(
    base: &str,
    dir: &Path,
    provider: &FakeProvider,
    extra: Value,
    scope: &str,
) -> Issued {
    let http = reqwest::Client::new();
    let admin = std::fs::read_to_string(dir.join("data/admin-token")).unwrap().trim().to_string();
    let mut key = ES384.generate_key_pair().unwrap().to_jwk_key_pair();
    key.set_key_id("provider-key-1");
    let mut public = key.to_public_key().unwrap();
    public.set_key_id("provider-key-1");
    let mut body = json!({"jwks": {"keys": [public.as_ref()]}, "consumer_client_id": "consumer-at-fake", "aud": provider.base()});
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    let reg: Value = http
        .post(format!("{base}/auth/register"))
        .bearer_auth(&admin)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = reg["client_id"].as_str().unwrap_or_else(|| panic!("{reg}"));
    let assertion = sign_assertion(&key, client_id, &format!("{base}/auth/token"), |_, _| {});
    let token: Value = http
        .post(format!("{base}/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", &assertion),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap_or_else(|| panic!("{token}")).to_string();
    Issued { token, assertion, admin }
}

async fn ping_with(base: &str, dir: &Path, provider: &FakeProvider, url: &str, kind: &str) -> Pinged {
    let http = reqwest::Client::new();
    let Issued { token, assertion, admin } =
        register_with_token(base, dir, provider, json!({}), "system/*.write").await;
    let res = http
        .post(format!("{base}/$import"))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(ping(url, kind).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    Pinged {
        status_url: res.headers()["content-location"].to_str().unwrap().to_string(),
        access_token: token,
        assertion,
        admin,
    }
}

#[tokio::test]
async fn the_ui_is_served_from_the_binary_in_any_directory_and_ui_dir_overrides_it() {
    let dir = tempfile::TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let get = |path: &str| reqwest::get(format!("{}{path}", server.base()));
    let page = get("/").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("<html"), "the UI page, though the directory has no static/");
    let script = get("/js/app.js").await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"].to_str().unwrap().contains("javascript"));
    let missing = get("/no-such-page").await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("no API route or UI file"));
    server.stop().await;

    let ui = dir.path().join("my-ui");
    std::fs::create_dir_all(&ui).unwrap();
    std::fs::write(ui.join("index.html"), "<html>work in progress</html>").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside the UI directory").unwrap();
    let server = Server::start(dir.path(), &[("UI_DIR", ui.to_str().unwrap())]);
    let page = reqwest::get(format!("{}/", server.base())).await.unwrap().text().await.unwrap();
    assert_eq!(page, "<html>work in progress</html>");
    for escape in ["/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt"] {
        let res = reqwest::get(format!("{}{escape}", server.base())).await.unwrap();
        assert_eq!(res.status(), 404, "{escape}");
    }
    server.stop().await;
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_a_request_line_per_request() {
    let dir = tempfile::TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[("LOG_FORMAT", "json"), ("RUST_LOG", "bulk_import=info")]);
    let id = "0123456789abcdef".repeat(2);
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{}/jwks", server.base())).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{}/job/{id}", server.base())).send().await.unwrap().status(), 404);
    let version: Value =
        http.get(format!("{}/version", server.base())).send().await.unwrap().json().await.unwrap();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    let log = server.stop().await;
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let request = |route: &str| {
        lines.iter().find(|v| v["fields"]["message"] == "request" && v["fields"]["route"] == route).cloned()
    };
    let jwks = request("/jwks").expect("a request line for /jwks");
    assert_eq!(jwks["fields"]["status"], 200);
    assert_eq!(jwks["fields"]["method"], "GET");
    assert!(jwks["fields"]["latency_ms"].as_f64().is_some(), "{jwks}");
    let job = request("/job/{id}").expect("a request line for the job");
    assert_eq!(job["fields"]["status"], 404);
    assert_eq!(job["fields"]["job"], "01234567…");
    assert!(!log.contains(&id), "the full job id is not logged");
}

#[test]
fn text_logs_written_to_a_pipe_carry_no_colour_codes_and_a_bad_log_format_is_named() {
    let dir = tempfile::TempDir::new().unwrap();
    // Without NO_COLOR: only the pipe (not a terminal) keeps colours out. A bad PORT stops it at once.
    let out = Command::new(env!("CARGO_BIN_EXE_bulk-import"))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOG_FORMAT", "fancy")
        .env("PORT", "not-a-port")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("LOG_FORMAT must be text or json") && stdout.contains("fancy"), "{stdout}");
    assert!(stdout.contains("PORT"), "the failure is logged: {stdout}");
    assert!(!stdout.contains('\u{1b}'), "no escape codes in a pipe: {stdout:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT"), "and told on stderr");
}

// Multi-threaded: the CLI runs as blocking child processes while the fake provider serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_takes_a_new_user_from_keygen_to_a_finished_import_and_back() {
    let provider = FakeProvider::start().await;
    provider.add_file("p.ndjson", "Patient", patients(30));
    provider.add_file("o.ndjson", "Observation", super::helpers::observations(20));
    let dir = tempfile::TempDir::new().unwrap();
    // Files on disk and the current resources in SQL (its own SQLite file under DATA_DIR).
    let env = [("POLL_INTERVAL", "0.05"), ("DESTINATION_TYPE", "tmp-fs,resource-store")];
    let server = Server::start(dir.path(), &env);
    provider.set_consumer_jwks_url(format!("{}/jwks", server.base()));
    let base = server.base();
    let d = dir.path();
    let cli = super::cli::run;

    let (code, _, err) = cli(d, &["keygen", "--out", "keys", "--name", "ehr"]);
    assert_eq!(code, 0, "{err}");
    // The admin credential comes from the server's generated data/admin-token (same directory).
    let (code, out, err) = cli(
        d,
        &[
            "register",
            "--server",
            &base,
            "--aud",
            &provider.base(),
            "--consumer-client-id",
            "consumer-at-fake",
            "--jwks-file",
            "keys/ehr.jwks.json",
            "--submitter",
            "ehr-9",
            "--submitter-system",
            "https://ehr.example/ids",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{base}/$import")) && out.contains("system/*.write"),
        "the hand-off list: {out}"
    );
    let client_id = out.split("client_id ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let (code, out, _) = cli(d, &["registrations", "--server", &base, "--json"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    let mine =
        listed["registrations"].as_array().unwrap().iter().find(|r| r["client_id"] == client_id.as_str());
    assert_eq!(mine.unwrap()["submitter"]["value"], "ehr-9", "the submitter is registered: {listed}");

    let manifest = provider.manifest_url();
    let ping = ["ping", "--server", &base, "--client-id", &client_id, "--key", "keys/ehr.private.jwk.json"];
    let (code, out, err) = cli(
        d,
        &[&ping[..], &["--export-url", &manifest, "--export-type", "static", "--follow", "--json"]].concat(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let done: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(done["extension"]["result"], "completed");
    assert_eq!(done["extension"]["resources"], 50);
    let status_url = err.split("accepted: ").nth(1).unwrap().trim().to_string();

    let (code, out, _) = cli(d, &["status", &status_url]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("completed: 2 files (0 failed), 50 resources") && out.contains("kept until"),
        "{out}"
    );
    let (code, out, _) = cli(d, &["jobs", "--server", &base]);
    assert_eq!(code, 0);
    let id = status_url.rsplit('/').next().unwrap();
    assert!(out.contains("completed") && out.contains(id), "the whole id, to be used again: {out}");
    // The first 8 characters, as the audit trail and the logs show an id, are enough.
    let (code, out, err) = cli(d, &["status", "--server", &base, &id[..8]]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("completed: 2 files"), "{out}");
    let (code, _, err) = cli(d, &["status", "--server", &base, "ffff0000"]);
    assert_eq!(code, 1);
    assert!(err.contains("no job's id starts with 'ffff0000'"), "{err}");

    // What the resource store holds, per provider and type.
    let (code, out, _) = cli(d, &["resources", "--server", &base]);
    assert_eq!(code, 0);
    assert!(out.starts_with("SQLite ") && out.contains("resources.sqlite"), "{out}");
    let line = |t: &str| out.lines().find(|l| l.contains(&client_id) && l.contains(t)).map(str::to_string);
    assert!(line("Patient").is_some_and(|l| l.ends_with(" 30")), "{out}");
    assert!(line("Observation").is_some_and(|l| l.ends_with(" 20")), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let store = std::fs::metadata(d.join("data/resources.sqlite")).expect("the store's own file");
    assert_eq!(store.permissions().mode() & 0o777, 0o600);
    // What the export came to, and where its next incremental pull starts.
    let (code, out, _) = cli(d, &["sources", "--server", &base]);
    assert_eq!(code, 0);
    assert!(out.contains(&manifest) && out.contains("last completed"), "{out}");
    assert!(out.contains("2 files (0 failed), 50 resources; next pull from 2026-01-01T00:00:00Z"), "{out}");
    // A registration with a sync plan, pulled now from the command line (no schedule: only when asked).
    let (code, out, err) = cli(
        d,
        &[
            "register",
            "--server",
            &base,
            "--aud",
            &provider.base(),
            "--consumer-client-id",
            "consumer-at-fake",
            "--jwks-file",
            "keys/ehr.jwks.json",
            "--sync-url",
            &provider.export_url(),
            "--sync-type",
            "Patient",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let synced = out.split("client_id ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let (code, out, err) = cli(d, &["sync", "--server", &base, &synced]);
    assert_eq!(code, 0, "{err}");
    let pulled =
        out.trim().strip_prefix("sync pull started: ").unwrap_or_else(|| panic!("{out}")).to_string();
    let (code, out, _) = cli(d, &["status", &pulled, "--follow"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("completed: 2 files"), "{out}");
    let (code, _, err) = cli(d, &["sync", "--server", &base, &client_id]);
    assert_eq!(code, 1, "a registration without a plan");
    assert!(err.contains("no sync plan"), "{err}");
    let (code, out, _) = cli(d, &["audit", "--server", &base]);
    assert_eq!(code, 0);
    assert!(out.contains("registration created") && out.contains("ping accepted"), "{out}");
    assert!(out.contains("sync pull started"), "{out}");
    let (code, _, err) = cli(d, &["cancel", &status_url]);
    assert_eq!(code, 1, "a finished job cannot be cancelled");
    assert!(err.contains("409") && err.contains("only a running one"), "{err}");

    // A file that fails makes the import partial: exit 3.
    provider.add_file("bad.ndjson", "Patient", "{\"resourceType\":\"Patient\"\n");
    let (code, out, _) =
        cli(d, &[&ping[..], &["--export-url", &manifest, "--export-type", "static", "--follow"]].concat());
    assert_eq!(code, 3, "{out}");
    assert!(out.starts_with("completed-with-errors"), "{out}");
    // The summary names the failed file and why, and where the others landed.
    assert!(out.lines().any(|l| l.starts_with("failed: ") && l.contains("bad.ndjson")), "{out}");
    assert!(out.contains("stored as, for example: "), "{out}");

    let (code, out, err) = cli(d, &["delete", &status_url]);
    assert_eq!(code, 0, "{err}");
    // What the server did, per destination: files removed, resource store rows kept.
    assert!(out.contains("deleted") && out.contains("JOBS_PATH are removed"), "{out}");
    assert!(out.contains("resource store stay"), "{out}");
    let (code, _, err) = cli(d, &["status", &status_url]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    // Revoked from the command line: listed as revoked, and its tokens refused.
    let (code, out, err) = cli(d, &["revoke", "--server", &base, &synced]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("revoked {synced}")), "{out}");
    let (code, out, _) = cli(d, &["registrations", "--server", &base]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with(&synced) && l.ends_with("(revoked)")), "{out}");
    let (code, _, err) = cli(d, &["revoke", "--server", &base, "no-such-client"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    // Wrong credentials and an unreachable server are told plainly.
    let (code, _, err) = cli(d, &["jobs", "--server", &base, "--admin-token", "wrong"]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) =
        cli(d, &["status", "--server", "http://127.0.0.1:9", "0123456789abcdef0123456789abcdef"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the server"), "{err}");
    server.stop().await;
}
