//! Several replicas on one PostgreSQL and one S3 server (the scale-out issue): the real binary
//! three times. A ping through one, polls and deletes through the others; the owner SIGKILLed
//! mid-file, and another replica finishes its job byte for byte; a DELETE through a replica that
//! does not run the job stops it where it runs. Keys, secrets and the replay cache are shared.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use josekit::jws::ES384;
use serde_json::{json, Value};
use tempfile::TempDir;

use super::{
    binary::{finished, Server},
    fake_provider::{FakeProvider, FileFault, Ranges},
    helpers::{observations, ping, sign_assertion},
    postgres::PgCluster,
    s3_server::{S3Server, BUCKET, KEY, SECRET},
};

/// Short, so a takeover comes within seconds (a renewal every second).
const LEASE_SECONDS: &str = "3";

/// Replicas behind one public URL, as behind a load balancer (here: the first replica's address).
struct Fleet {
    ports: Vec<u16>,
    public_url: String,
}

impl Fleet {
    fn of(n: usize) -> Self {
        let ports: Vec<u16> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
            .collect();
        let public_url = format!("http://127.0.0.1:{}", ports[0]);
        Self { ports, public_url }
    }

    fn start(&self, pg: &PgCluster, s3: &S3Server, dirs: &[TempDir], extra: &[(&str, &str)]) -> Vec<Server> {
        let env = replica_env(pg, s3, &self.public_url);
        self.ports
            .iter()
            .zip(dirs)
            .map(|(port, dir)| {
                let port = port.to_string();
                let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                env.push(("PORT", &port));
                env.extend_from_slice(extra);
                Server::start(dir.path(), &env)
            })
            .collect()
    }
}

/// Replicas on one database and one S3 server, and the admin token they share (read from the
/// database, where the first to start kept it).
struct Cluster {
    fleet: Fleet,
    _dirs: Vec<TempDir>,
    replicas: Vec<Server>,
    bases: Vec<String>,
    pool: sqlx::PgPool,
    admin: String,
}

impl Cluster {
    async fn start(pg: &PgCluster, s3: &S3Server, n: usize) -> Self {
        Self::start_with(pg, s3, n, &[]).await
    }

    async fn start_with(pg: &PgCluster, s3: &S3Server, n: usize, extra: &[(&str, &str)]) -> Self {
        let fleet = Fleet::of(n);
        let dirs: Vec<TempDir> = (0..n).map(|_| TempDir::new().unwrap()).collect();
        let replicas = fleet.start(pg, s3, &dirs, extra);
        let bases = replicas.iter().map(Server::base).collect();
        let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
        let admin = sqlx::query_scalar("SELECT value FROM shared_secrets WHERE name = 'admin-token'")
            .fetch_one(&pool)
            .await
            .expect("the generated admin token is kept in the database");
        Self { fleet, _dirs: dirs, replicas, bases, pool, admin }
    }

    /// Register, get a token and ping, all through the first replica (the provider checks our
    /// assertions against the last one's JWKS: they are the same); the job's id.
    async fn ping_first(&self, provider: &FakeProvider) -> String {
        provider.set_consumer_jwks_url(format!("{}/jwks", self.bases[self.bases.len() - 1]));
        let (client_id, key) = register(&self.bases[0], &self.admin, provider).await;
        let token_url = format!("{}/auth/token", self.fleet.public_url);
        let assertion = sign_assertion(&key, &client_id, &token_url, |_, _| {});
        let token: Value = token_form(&self.bases[0], &assertion).await.json().await.unwrap();
        ping_through(&self.bases[0], token["access_token"].as_str().unwrap(), &provider.manifest_url()).await
    }
}

fn replica_env(pg: &PgCluster, s3: &S3Server, public_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PUBLIC_URL", public_url.into()),
        ("RUST_LOG", "bulk_import=info".into()),
        ("DATABASE_URL", pg.url()),
        ("LEASE_SECONDS", LEASE_SECONDS.into()),
        ("POLL_INTERVAL", "0.05".into()),
        ("DESTINATION_TYPE", "s3".into()),
        ("AWS_S3_BUCKET_NAME", BUCKET.into()),
        ("S3_ENDPOINT_URL", s3.endpoint.clone()),
        ("S3_FORCE_PATH_STYLE", "true".into()),
        ("S3_PREFIX", "bulk/".into()),
        ("AWS_ACCESS_KEY_ID", KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        // The smallest part S3 takes: a file continues from its last uploaded part.
        ("S3_PART_SIZE", (5 * 1024 * 1024).to_string()),
    ]
}

/// A provider key registered through `admin_base`; an assertion signer for it.
async fn register(admin_base: &str, admin: &str, provider: &FakeProvider) -> (String, josekit::jwk::Jwk) {
    let mut key = ES384.generate_key_pair().unwrap().to_jwk_key_pair();
    key.set_key_id("provider-key-1");
    let mut public = key.to_public_key().unwrap();
    public.set_key_id("provider-key-1");
    let res = reqwest::Client::new()
        .post(format!("{admin_base}/auth/register"))
        .bearer_auth(admin)
        .json(&json!({"jwks": {"keys": [public.as_ref()]}, "consumer_client_id": "consumer-at-fake", "aud": provider.base()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "a replica accepts the shared admin token");
    let reg: Value = res.json().await.unwrap();
    (reg["client_id"].as_str().unwrap().to_string(), key)
}

async fn token_form(base: &str, assertion: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion),
            ("scope", "system/*.write"),
        ])
        .send()
        .await
        .unwrap()
}

async fn ping_through(base: &str, token: &str, manifest_url: &str) -> String {
    let res = reqwest::Client::new()
        .post(format!("{base}/$import"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(ping(manifest_url, "static").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    let status_url = res.headers()["content-location"].to_str().unwrap().to_string();
    status_url.rsplit('/').next().unwrap().to_string()
}

async fn wait_for_request(provider: &FakeProvider, path: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while provider.requests_to(path).len() < n {
        assert!(Instant::now() < deadline, "{path} was not requested {n} times");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_object(s3: &S3Server, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s3.object(key).is_none() {
        assert!(Instant::now() < deadline, "{key} was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_the_work_and_a_killed_owners_job_is_finished_by_another() {
    let pg = PgCluster::start();
    let s3 = S3Server::start().await;
    let provider = FakeProvider::start().await;
    let obs = observations(3_000);
    // About 22 MiB: its first half cuts two parts, and the first is stored as a checkpoint.
    let big = observations(140_000);
    provider.ranges(Ranges::ETag);
    // Network-sized chunks: the fake's default of 7 bytes would make 22 MiB three million reads.
    provider.set_chunk_size(64 * 1024);
    provider.add_file("a.ndjson", "Observation", obs.clone());
    provider.add_file("b.ndjson", "Observation", big.clone());
    // The first download of b sends half, then stalls: its process is killed mid-file.
    provider.fault_file("b.ndjson", vec![FileFault::StallHalfway(120_000)]);
    let mut cluster = Cluster::start(&pg, &s3, 3).await;
    let bases = cluster.bases.clone();

    // One key pair and one admin token for all, generated by whichever started first.
    let mut jwks = Vec::new();
    for base in &bases {
        jwks.push(reqwest::get(format!("{base}/jwks")).await.unwrap().text().await.unwrap());
    }
    assert!(jwks.windows(2).all(|w| w[0] == w[1]), "every replica publishes the same key: {jwks:?}");
    let (pool, admin) = (&cluster.pool, &cluster.admin);
    provider.set_consumer_jwks_url(format!("{}/jwks", bases[2]));

    // Registered through one replica, a token from another, used on the third.
    let (client_id, key) = register(&bases[0], admin, &provider).await;
    let token_url = format!("{}/auth/token", cluster.fleet.public_url);
    let assertion = sign_assertion(&key, &client_id, &token_url, |_, _| {});
    let res = token_form(&bases[1], &assertion).await;
    assert_eq!(res.status(), 200);
    let token: Value = res.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    // The replay cache is shared: the same assertion at another replica is a replay.
    let replayed: Value = token_form(&bases[2], &assertion).await.json().await.unwrap();
    assert_eq!(replayed["error"], "invalid_client", "{replayed}");
    assert!(replayed["error_description"].as_str().unwrap().contains("already used"), "{replayed}");

    let id = ping_through(&bases[0], &token, &provider.manifest_url()).await;
    wait_for_request(&provider, "/fhir/files/b.ndjson", 1).await;
    wait_for_object(&s3, &format!("bulk/{id}/a.ndjson")).await;
    // Any replica answers for the job while its owner runs it.
    let res = reqwest::get(format!("{}/job/{id}", bases[1])).await.unwrap();
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    // The first file recorded done before the kill, so it must not be fetched again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM job_files WHERE job_id = $1 AND name = 'a.ndjson'")
                .bind(&id)
                .fetch_optional(pool)
                .await
                .unwrap();
        if state.as_deref() == Some("done") {
            break;
        }
        assert!(Instant::now() < deadline, "a.ndjson was never recorded: {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The owner stored how far b got: its first part, uploaded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let checkpoint: Value = loop {
        let stored: Option<Option<String>> =
            sqlx::query_scalar("SELECT checkpoint FROM job_files WHERE job_id = $1 AND name = 'b.ndjson'")
                .bind(&id)
                .fetch_optional(pool)
                .await
                .unwrap();
        if let Some(Some(json)) = stored {
            break serde_json::from_str(&json).unwrap();
        }
        assert!(Instant::now() < deadline, "b.ndjson's first part was never kept as a checkpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let from = checkpoint["saved"]["bytes"].as_u64().unwrap();
    assert!(from >= 5 * 1024 * 1024 && big.as_bytes()[from as usize - 1] == b'\n', "{checkpoint}");
    let killed_at = Instant::now();
    let owner = &mut cluster.replicas[0];
    assert!(Command::new("kill").args(["-KILL", &owner.child.id().to_string()]).status().unwrap().success());
    let _ = owner.child.wait();

    // Another replica takes the job over once the lease lapses, and finishes it.
    let res = finished(&format!("{}/job/{id}", bases[2]), "the job was not taken over").await;
    let taken_over_in = killed_at.elapsed();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["extension"]["result"], "completed", "{body}");
    assert_eq!(body["extension"]["resources"], 143_000, "{body}");
    assert!(taken_over_in < Duration::from_secs(20), "takeover took {taken_over_in:?}");
    let logs = format!("{}\n{}", cluster.replicas[1].log(), cluster.replicas[2].log());
    assert!(logs.contains("took over a job"), "{logs}");
    for (name, sent) in [("a.ndjson", &obs), ("b.ndjson", &big)] {
        let stored = s3.object(&format!("bulk/{id}/{name}")).unwrap_or_default();
        assert!(
            stored == sent.as_bytes(),
            "{name}: {} bytes, not the provider's {}",
            stored.len(),
            sent.len()
        );
    }
    let asked = provider.requests_to("/fhir/files/b.ndjson");
    assert_eq!(asked.len(), 2, "the broken file is asked for once more");
    assert_eq!(asked[1].range, Some(format!("bytes={from}-")), "only what the checkpoint lacks");
    assert!(logs.contains("the file goes on from what an earlier process stored of it"), "{logs}");
    assert_eq!(s3.open_uploads(), Vec::<String>::new(), "no upload is left open");
    assert_eq!(provider.requests_to("/fhir/files/a.ndjson").len(), 1, "a finished file is not fetched again");

    // Deleted through a replica that did not run it: gone everywhere.
    let res = reqwest::Client::new().delete(format!("{}/job/{id}", bases[1])).send().await.unwrap();
    assert_eq!(res.status(), 202);
    for base in &bases[1..] {
        assert_eq!(reqwest::get(format!("{base}/job/{id}")).await.unwrap().status(), 404);
    }
    assert_eq!(s3.object(&format!("bulk/{id}/a.ndjson")), None, "the job's files are removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_through_another_replica_stops_the_job_where_it_runs_before_its_files_go() {
    let pg = PgCluster::start();
    let s3 = S3Server::start().await;
    let provider = FakeProvider::start().await;
    provider.add_file("a.ndjson", "Observation", observations(100));
    provider.add_file("c.ndjson", "Observation", observations(100));
    provider.hold_file("c.ndjson");
    let cluster = Cluster::start(&pg, &s3, 2).await;
    let (replicas, bases) = (&cluster.replicas, &cluster.bases);
    let id = cluster.ping_first(&provider).await;
    wait_for_request(&provider, "/fhir/files/c.ndjson", 1).await;
    wait_for_object(&s3, &format!("bulk/{id}/a.ndjson")).await;

    let res = reqwest::Client::new().delete(format!("{}/job/{id}", bases[1])).send().await.unwrap();
    assert_eq!(res.status(), 202);
    // The owner logged its stop before it let the lease go (the log pipe may lag a moment).
    let deadline = Instant::now() + Duration::from_secs(2);
    while !replicas[0].log().contains("job stopped") {
        assert!(Instant::now() < deadline, "the owner did not stop:\n{}", replicas[0].log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    provider.release_files();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for base in bases {
        assert_eq!(reqwest::get(format!("{base}/job/{id}")).await.unwrap().status(), 404);
    }
    let left: Vec<String> = s3.all_files().into_iter().filter(|f| f.contains(&id)).collect();
    assert!(left.iter().all(|f| f.contains(".upload")), "no object of the deleted job is left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_frozen_mid_file_and_thawed_after_a_takeover_stops_and_spoils_nothing() {
    let pg = PgCluster::start();
    let s3 = S3Server::start().await;
    let provider = FakeProvider::start().await;
    let obs = observations(2_000);
    provider.add_file("a.ndjson", "Observation", obs.clone());
    provider.add_file("b.ndjson", "Observation", obs.clone());
    provider.fault_file("b.ndjson", vec![FileFault::StallHalfway(60_000)]);
    let cluster = Cluster::start(&pg, &s3, 2).await;
    let (replicas, bases) = (&cluster.replicas, &cluster.bases);
    let id = cluster.ping_first(&provider).await;
    wait_for_request(&provider, "/fhir/files/b.ndjson", 1).await;
    // Frozen, not killed: it holds its half-downloaded file and will wake up believing it owns the job.
    let owner = replicas[0].child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &owner]).status().unwrap().success());
    let res = finished(&format!("{}/job/{id}", bases[1]), "the frozen owner's job was not taken over").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert!(Command::new("kill").args(["-CONT", &owner]).status().unwrap().success());
    // It wakes, finds its lease gone at its next heartbeat, and stops.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !replicas[0].log().contains("another process took this job over") {
        assert!(Instant::now() < deadline, "the thawed owner did not stop:\n{}", replicas[0].log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body: Value = reqwest::get(format!("{}/job/{id}", bases[1])).await.unwrap().json().await.unwrap();
    assert_eq!(body["extension"]["result"], "completed", "the old owner changed nothing: {body}");
    assert_eq!(body["extension"]["resources"], 4_000, "{body}");
    for name in ["a.ndjson", "b.ndjson"] {
        let stored = s3.object(&format!("bulk/{id}/{name}")).unwrap_or_default();
        assert!(stored == obs.as_bytes(), "{name}: {} bytes, not the provider's {}", stored.len(), obs.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_jobs_files_are_spread_over_replicas_and_a_killed_helpers_file_is_finished_by_the_owner() {
    let pg = PgCluster::start();
    let s3 = S3Server::start().await;
    let provider = FakeProvider::start().await;
    let bodies: Vec<String> = (0..4).map(|i| observations(500 + i)).collect();
    for (i, body) in bodies.iter().enumerate() {
        provider.add_file(&format!("f{i}.ndjson"), "Observation", body.clone());
    }
    // The owner downloads one file at a time and f0 keeps it a while; f1 stalls wherever it is
    // first asked for: the helper, which is killed there.
    provider.fault_file("f0.ndjson", vec![FileFault::StallHalfway(8_000)]);
    provider.fault_file("f1.ndjson", vec![FileFault::StallHalfway(120_000)]);
    let mut cluster = Cluster::start_with(&pg, &s3, 2, &[("PARALLEL_DOWNLOADS", "1")]).await;
    let id = cluster.ping_first(&provider).await;
    wait_for_request(&provider, "/fhir/files/f1.ndjson", 1).await;
    let pool = &cluster.pool;
    let state_of = async |name: &str| -> Option<String> {
        sqlx::query_scalar("SELECT state FROM job_files WHERE job_id = $1 AND name = $2")
            .bind(&id)
            .bind(name)
            .fetch_optional(pool)
            .await
            .unwrap()
    };
    // The helper did the small ones while the owner was on f0.
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_of("f2.ndjson").await.as_deref() != Some("done")
        || state_of("f3.ndjson").await.as_deref() != Some("done")
    {
        assert!(Instant::now() < deadline, "the helper did not finish f2 and f3");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let helper_log = cluster.replicas[1].log();
    assert!(helper_log.contains("downloading a file of a job another server runs"), "{helper_log}");
    assert_eq!(state_of("f0.ndjson").await.as_deref(), Some("pending"), "the owner is still on f0");
    let helper = &mut cluster.replicas[1];
    assert!(Command::new("kill").args(["-KILL", &helper.child.id().to_string()]).status().unwrap().success());
    let _ = helper.child.wait();

    // The helper's lease on f1 lapses; the owner claims it and finishes the job.
    let res = finished(&format!("{}/job/{id}", cluster.bases[0]), "the job did not finish").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["extension"]["result"], "completed", "{body}");
    let total: usize = (0..4).map(|i| 500 + i).sum();
    assert_eq!(body["extension"]["resources"], total, "{body}");
    for (i, sent) in bodies.iter().enumerate() {
        let stored = s3.object(&format!("bulk/{id}/f{i}.ndjson")).unwrap_or_default();
        assert!(stored == sent.as_bytes(), "f{i}: {} bytes, not the provider's {}", stored.len(), sent.len());
        let asked = provider.requests_to(&format!("/fhir/files/f{i}.ndjson")).len();
        assert_eq!(asked, if i == 1 { 2 } else { 1 }, "f{i} asked for {asked} times");
    }
    let takeovers: i64 =
        sqlx::query_scalar("SELECT takeovers FROM job_files WHERE job_id = $1 AND name = 'f1.ndjson'")
            .bind(&id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(takeovers, 1, "f1 was taken over once");
    assert_eq!(s3.open_uploads(), Vec::<String>::new(), "no upload is left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_due_sync_pull_runs_once_across_replicas() {
    let pg = PgCluster::start();
    let s3 = S3Server::start().await;
    let provider = FakeProvider::start().await;
    provider.add_file("a.ndjson", "Observation", observations(10));
    let cluster = Cluster::start_with(&pg, &s3, 2, &[("SYNC_CHECK_INTERVAL", "0.05")]).await;
    provider.set_consumer_jwks_url(format!("{}/jwks", cluster.bases[1]));
    let mut key = ES384.generate_key_pair().unwrap().to_jwk_key_pair();
    key.set_key_id("provider-key-1");
    let mut public = key.to_public_key().unwrap();
    public.set_key_id("provider-key-1");
    let res = reqwest::Client::new()
        .post(format!("{}/auth/register", cluster.bases[0]))
        .bearer_auth(&cluster.admin)
        .json(&json!({"jwks": {"keys": [public.as_ref()]}, "consumer_client_id": "consumer-at-fake", "aud": provider.base(),
            "sync": {"export_url": provider.export_url(), "every_seconds": 3600}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    wait_for_request(&provider, "/fhir/$export", 1).await;
    // Both replicas look every 50 ms; give them forty looks between them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(provider.requests_to("/fhir/$export").len(), 1, "one kick-off, by one replica");
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs").fetch_one(&cluster.pool).await.unwrap();
    assert_eq!(jobs, 1);
    let started: usize = cluster.replicas.iter().map(|r| r.log().matches("sync pull started").count()).sum();
    assert_eq!(started, 1, "logged by the replica that took it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_and_the_jobs_list_see_a_long_file_move_before_it_ends() {
    let pg = PgCluster::start();
    let s3 = S3Server::start().await;
    let provider = FakeProvider::start().await;
    // One file, counted in the manifest, half of it sent and then held for 5 s.
    provider.true_counts();
    provider.set_chunk_size(64 * 1024);
    provider.add_file("long.ndjson", "Observation", observations(20_000));
    provider.fault_file("long.ndjson", vec![FileFault::StallHalfway(5_000)]);
    let cluster = Cluster::start(&pg, &s3, 2).await;
    let bases = &cluster.bases;
    let id = cluster.ping_first(&provider).await;
    wait_for_request(&provider, "/fhir/files/long.ndjson", 1).await;

    // While the file is held half-way, every replica's status and jobs list tell how far it got.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut seen = vec![false; bases.len()];
    while seen.iter().any(|s| !s) {
        assert!(Instant::now() < deadline, "progress not seen on every replica: {seen:?}");
        for (i, base) in bases.iter().enumerate() {
            let res = reqwest::get(format!("{base}/job/{id}")).await.unwrap();
            if res.status() != 202 {
                continue;
            }
            let progress: f64 = res.headers()["x-progress"].to_str().unwrap().parse().unwrap();
            let status = res.headers()["x-status"].to_str().unwrap().to_string();
            let listed: Value = reqwest::Client::new()
                .get(format!("{base}/admin/jobs"))
                .bearer_auth(&cluster.admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let row = listed["jobs"].as_array().unwrap().iter().find(|j| j["id"] == id.as_str()).cloned();
            let row_bytes = row.as_ref().and_then(|r| r["bytes"].as_i64()).unwrap_or(0);
            if progress > 0.0 && progress < 100.0 && status.contains("resources received") && row_bytes > 0 {
                seen[i] = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = finished(&format!("{}/job/{id}", bases[1]), "the job never finished").await;
    assert_eq!(done.status(), 200);
}
