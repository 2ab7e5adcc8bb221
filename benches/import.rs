//! End-to-end import benchmark (issue: performance targets). Run with `cargo bench --bench import`.
//!
//! It generates (or reuses) a `make_ndjson.py` Observation data set, serves it from an in-process
//! axum/tower-http static file server on loopback (on its own runtime), downloads it with
//! parallel `curl` to disk as the baseline (timed once written and again once fsynced), then runs the release `bulk-import` binary as a child process against the same
//! server (static export, one file per download slot) for each destination. It prints MB/s,
//! resources/s, the ratio to curl, the importer's peak RSS (VmHWM) and status-poll latency, and
//! checks that tmp-fs output is byte-identical to the source.
//!
//! Settings (environment): BENCH_SIZE (default 1GiB), BENCH_FILES (8), BENCH_DESTS
//! (tmp-fs,dev-null), BENCH_DIR (target/bench-data), BENCH_LOG (show the server's log),
//! BENCH_GENERATOR (the shared tools' make_ndjson.py beside this repository).
use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use axum::{routing::get, Json, Router};
use josekit::{
    jws::{JwsHeader, ES384},
    jwt::{self, JwtPayload},
};
use serde_json::{json, Value};
use tower_http::services::ServeDir;

/// Often enough for a p99 from a few hundred samples, and to see the end within 10 ms.
const POLL_EVERY: Duration = Duration::from_millis(10);
const ADMIN: &str = "bench-admin-token-0123456789abcdef0123456789";

fn env(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn data_set(dir: &Path, size: &str, files: usize) -> Vec<(String, u64)> {
    let set = dir.join(format!("{size}-{files}"));
    if !set.join("dataset.json").exists() {
        let default = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/tools/make_ndjson.py");
        let script = PathBuf::from(env("BENCH_GENERATOR", default));
        assert!(script.exists(), "{}: no data generator; set BENCH_GENERATOR", script.display());
        eprintln!("generating {size} in {files} files with {} ...", script.display());
        let status = Command::new("python3")
            .arg(&script)
            .args(["--out", set.to_str().unwrap(), "--url-prefix", "http://127.0.0.1:1/x"])
            .args(["--size", size, "--files", &files.to_string(), "--jobs", "2"])
            .status()
            .expect("python3 runs the generator");
        assert!(status.success(), "the data generator failed");
    }
    let mut out: Vec<(String, u64)> = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ndjson"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    out.sort();
    out
}

/// Static file server: `/fhir/data/*` from disk and a manifest naming every file.
async fn serve(set: PathBuf, names: Vec<String>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let o = origin.clone();
    let manifest = move || {
        let output: Vec<Value> = names
            .iter()
            .map(|n| json!({"type": "Observation", "url": format!("{o}/fhir/data/{n}")}))
            .collect();
        async move {
            Json(
                json!({"transactionTime": "2026-01-01T00:00:00Z", "requiresAccessToken": false, "output": output, "error": []}),
            )
        }
    };
    let app = Router::new()
        .route("/fhir/manifest.json", get(manifest))
        .nest_service("/fhir/data", ServeDir::new(set));
    let listener = listener.into_std().unwrap();
    // The provider gets its own runtime, as it would its own machine: its busy file-serving tasks
    // must not queue in front of the status polls this process times.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap()
        })
    });
    origin
}

/// Parallel curl to disk: the time until every file is written, and until every file is also
/// fsynced (what tmp-fs does before it calls a file done).
fn curl_baseline(origin: &str, names: &[String], out: &Path) -> (Duration, Duration) {
    std::fs::create_dir_all(out).unwrap();
    let started = Instant::now();
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            Command::new("curl")
                .args(["-sS", "-o", out.join(n).to_str().unwrap(), &format!("{origin}/fhir/data/{n}")])
                .spawn()
                .expect("curl is installed")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let written = started.elapsed();
    for n in names {
        std::fs::File::open(out.join(n)).unwrap().sync_all().unwrap();
    }
    let durable = started.elapsed();
    remove_and_settle(out);
    (written, durable)
}

/// Remove a run's output and let the disk finish with it (ext4 here discards freed blocks), so the
/// next run does not pay for this one.
fn remove_and_settle(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let _ = Command::new("sync").status();
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

struct Run {
    seconds: f64,
    resources: i64,
    peak_rss_mib: f64,
    polls: Vec<Duration>,
    identical: Option<bool>,
}

async fn import(origin: &str, dest: &str, files: usize, set: &Path, work: &Path) -> Run {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulk-import"))
        .current_dir(work)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("RUST_LOG", std::env::var("BENCH_LOG").unwrap_or_else(|_| "bulk_import=info".into()))
        .env("NO_COLOR", "1")
        .env("ADMIN_TOKEN", ADMIN)
        .env("DESTINATION_TYPE", dest)
        .env("PARALLEL_DOWNLOADS", files.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the release binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // The server's log is shown with BENCH_LOG set (e.g. BENCH_LOG=bulk_import=debug).
    let show = std::env::var_os("BENCH_LOG").is_some();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if show {
                eprintln!("{line}");
            }
        }
    });
    let base = format!("http://{address}");
    let http = reqwest::Client::new();

    let mut key = ES384.generate_key_pair().unwrap().to_jwk_key_pair();
    key.set_key_id("bench");
    let mut public = key.to_public_key().unwrap();
    public.set_key_id("bench");
    let reg: Value = http
        .post(format!("{base}/auth/register"))
        .bearer_auth(ADMIN)
        .json(&json!({"jwks": {"keys": [public.as_ref()]}, "consumer_client_id": "bench", "aud": format!("{origin}/fhir")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = reg["client_id"].as_str().unwrap();
    let now = SystemTime::now();
    let mut claims = JwtPayload::new();
    claims.set_issuer(client_id);
    claims.set_subject(client_id);
    claims.set_audience(vec![format!("{base}/auth/token")]);
    claims.set_expires_at(&(now + Duration::from_secs(60)));
    claims.set_jwt_id("bench-1");
    let assertion =
        jwt::encode_with_signer(&claims, &JwsHeader::new(), &ES384.signer_from_jwk(&key).unwrap()).unwrap();
    let token: Value = http
        .post(format!("{base}/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", &assertion),
            ("scope", "system/*.write"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ping = json!({"resourceType": "Parameters", "parameter": [
        {"name": "exportUrl", "valueUrl": format!("{origin}/fhir/manifest.json")},
        {"name": "exportType", "valueCode": "static"}]});
    let started = Instant::now();
    let res = http
        .post(format!("{base}/$import"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .header("content-type", "application/fhir+json")
        .body(ping.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let status_url = res.headers()["content-location"].to_str().unwrap().to_string();
    let mut polls = Vec::new();
    let body: Value = loop {
        let t = Instant::now();
        let res = http.get(&status_url).send().await.unwrap();
        polls.push(t.elapsed());
        match res.status().as_u16() {
            202 => tokio::time::sleep(POLL_EVERY).await,
            200 => break res.json().await.unwrap(),
            other => panic!("import failed with {other}: {}", res.text().await.unwrap()),
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_mib = peak_rss_kib(child.id()) as f64 / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(body["extension"]["failedFiles"], 0, "{body}");
    let id = status_url.rsplit('/').next().unwrap();
    let identical = (dest == "tmp-fs").then(|| {
        let mut out: Vec<PathBuf> =
            std::fs::read_dir(work.join("jobs").join(id)).unwrap().flatten().map(|e| e.path()).collect();
        out.sort();
        let mut src: Vec<PathBuf> = std::fs::read_dir(set)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
            .collect();
        src.sort();
        out.len() == src.len() && out.iter().zip(&src).all(|(a, b)| same_bytes(a, b))
    });
    remove_and_settle(&work.join("jobs"));
    Run {
        seconds,
        resources: body["extension"]["resources"].as_i64().unwrap_or(0),
        peak_rss_mib,
        polls,
        identical,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let size = env("BENCH_SIZE", "1GiB");
    let files: usize = env("BENCH_FILES", "8").parse().unwrap();
    let dests = env("BENCH_DESTS", "tmp-fs,dev-null");
    let root = PathBuf::from(env("BENCH_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-data")));
    let data = data_set(&root, &size, files);
    let set = root.join(format!("{size}-{files}"));
    let names: Vec<String> = data.iter().map(|(n, _)| n.clone()).collect();
    let total: u64 = data.iter().map(|(_, s)| s).sum();
    let mb = total as f64 / 1e6;
    let origin = serve(set.clone(), names.clone()).await;

    // Warm the page cache so every run reads the source from memory.
    for n in &names {
        let _ = std::fs::read(set.join(n)).map(|v| v.len());
    }
    let (curl, curl_fsync) = curl_baseline(&origin, &names, &root.join("curl-out"));
    let curl_mbs = mb / curl.as_secs_f64();
    let fsync_mbs = mb / curl_fsync.as_secs_f64();
    println!(
        "\ndata set: {size} in {files} files ({mb:.0} MB), machine: {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("| run | seconds | MB/s | resources/s | vs curl | vs curl + fsync | peak RSS MiB | poll p50 ms | poll p99 ms | byte-identical |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!("| parallel curl → disk | {:.2} | {curl_mbs:.0} | | 100 % | | | | | |", curl.as_secs_f64());
    println!(
        "| parallel curl → disk, then fsync | {:.2} | {fsync_mbs:.0} | | {:.0} % | 100 % | | | | |",
        curl_fsync.as_secs_f64(),
        100.0 * fsync_mbs / curl_mbs
    );
    for dest in dests.split(',') {
        let run = import(&origin, dest, files, &set, &root.join("work")).await;
        let mut polls = run.polls.clone();
        polls.sort();
        let mbs = mb / run.seconds;
        println!(
            "| bulk-import → {dest} | {:.2} | {mbs:.0} | {:.0} | {:.0} % | {:.0} % | {:.1} | {:.2} | {:.2} | {} |",
            run.seconds,
            run.resources as f64 / run.seconds,
            100.0 * mbs / curl_mbs,
            100.0 * mbs / fsync_mbs,
            run.peak_rss_mib,
            percentile(&polls, 0.5),
            percentile(&polls, 0.99),
            run.identical.map(|b| if b { "yes" } else { "NO" }).unwrap_or("n/a"),
        );
        assert_ne!(run.identical, Some(false), "the {dest} output differs from the source");
    }
}
