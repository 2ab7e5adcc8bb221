//! End-to-end import benchmark (issue: performance targets). Run with `cargo bench --bench import`.
//!
//! It generates (or reuses) a `make_ndjson.py` Observation data set, serves it from an in-process
//! axum/tower-http static file server on loopback (on its own runtime), downloads it with
//! parallel `curl` to disk as the baseline (timed once written and again once fsynced), then runs the release `bulk-import` binary as a child process against the same
//! server (static export, one file per download slot) for each destination. It prints MB/s,
//! resources/s, the ratio to curl, the importer's peak RSS (VmHWM) and status-poll latency, and
//! checks that tmp-fs output is byte-identical to the source. In gzip mode the server sends each
//! file's pre-compressed `.gz` twin (as nginx `gzip_static` does), curl runs with `--compressed`, and
//! CPU seconds per decoded GB are shown for curl and the importer.
//!
//! BENCH_DATABASES=sqlite,postgres runs each destination on SQLite and on a throw-away PostgreSQL
//! cluster; BENCH_TAKEOVER=1 adds two replicas on that PostgreSQL, SIGKILLs the one running the
//! import and times the other's takeover (lease: BENCH_LEASE seconds, default 10).
//!
//! Settings (environment): BENCH_SIZE (default 1GiB), BENCH_FILES (8), BENCH_MODES (plain,gzip),
//! BENCH_DESTS (tmp-fs,dev-null), BENCH_DIR (target/bench-data), BENCH_LOG (show the server's log),
//! BENCH_GENERATOR (the shared tools' make_ndjson.py beside this repository), BENCH_BIN (another
//! build of the importer, to compare builds in one session), BENCH_GENERATOR_FLOOD=N (each import
//! again while N clients ask `GET /generator?alg=RS512` in a loop, beside the run without).
use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use axum::{extract::Request, middleware::Next, response::Response, routing::get, Json, Router};
use josekit::{
    jws::{JwsHeader, ES384},
    jwt::{self, JwtPayload},
};
use serde_json::{json, Value};
use tower_http::services::ServeDir;

#[path = "../tests/support/pg_cluster.rs"]
mod pg_cluster;

/// Often enough for a p99 from a few hundred samples, and to see the end within 10 ms.
const POLL_EVERY: Duration = Duration::from_millis(10);
const ADMIN: &str = "bench-admin-token-0123456789abcdef0123456789";
/// What nginx's `gzip_comp_level` and `gzip` default to.
const GZIP_LEVEL: u32 = 6;
/// Compressing 1 GiB takes a while; the machine has two cores.
const GZIP_JOBS: usize = 2;

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

/// Make each file's `.gz` twin once, with python3's gzip (the system zlib, whatever backend this
/// build decodes with) at level 6, as nginx and gzip default to; returns their total size.
fn gzip_twins(set: &Path, names: &[String]) -> u64 {
    // Renamed only when whole, so an interrupted run never leaves a short twin.
    const SCRIPT: &str = "import gzip, os, shutil, sys
src, level = sys.argv[1], int(sys.argv[2])
with open(src, 'rb') as i, gzip.open(src + '.gz.tmp', 'wb', level) as o:
    shutil.copyfileobj(i, o, 1 << 20)
os.rename(src + '.gz.tmp', src + '.gz')";
    let todo: Vec<&String> = names.iter().filter(|n| !set.join(format!("{n}.gz")).exists()).collect();
    if !todo.is_empty() {
        eprintln!("compressing {} files at level {GZIP_LEVEL} ...", todo.len());
    }
    for batch in todo.chunks(GZIP_JOBS) {
        let children: Vec<_> = batch
            .iter()
            .map(|n| {
                Command::new("python3")
                    .args(["-c", SCRIPT])
                    .arg(set.join(n))
                    .arg(GZIP_LEVEL.to_string())
                    .spawn()
                    .expect("python3 runs")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success(), "compressing a data file failed");
        }
    }
    names.iter().map(|n| std::fs::metadata(set.join(format!("{n}.gz"))).unwrap().len()).sum()
}

/// Static file server: `/fhir/data/*` from disk and a manifest naming every file. With `gzip` it
/// sends the `.gz` twin to clients that accept gzip and counts those responses in `gzipped`.
/// Every file request is noted in `requests` (when it came), for the takeover timing.
async fn serve(
    set: PathBuf,
    names: Vec<String>,
    gzip: bool,
    gzipped: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Instant>>>,
) -> String {
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
    let files = if gzip { ServeDir::new(set).precompressed_gzip() } else { ServeDir::new(set) };
    let count = move |req: Request, next: Next| {
        let gzipped = gzipped.clone();
        if req.uri().path().starts_with("/fhir/data/") {
            requests.lock().unwrap().push(Instant::now());
        }
        async move {
            let res: Response = next.run(req).await;
            if res.headers().get("content-encoding").is_some_and(|e| e == "gzip") {
                gzipped.fetch_add(1, Ordering::Relaxed);
            }
            res
        }
    };
    let app = Router::new()
        .route("/fhir/manifest.json", get(manifest))
        .nest_service("/fhir/data", files)
        .layer(axum::middleware::from_fn(count));
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

/// CPU seconds (user + sys) of `who`: RUSAGE_CHILDREN (waited-for children) or RUSAGE_THREAD.
fn rusage_cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU seconds (user + sys, all threads) a live process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised name; utime and stime are the 14th and 15th of the line.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum();
    // SAFETY: sysconf reads a constant.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

struct Baseline {
    written: Duration,
    durable: Duration,
    cpu_seconds: f64,
    /// The bench's own fsync calls, which tmp-fs pays for in its process.
    fsync_cpu_seconds: f64,
}

/// Parallel curl to disk: the time until every file is written, and until every file is also
/// fsynced (what tmp-fs does before it calls a file done), with the CPU time of each.
fn curl_baseline(origin: &str, names: &[String], out: &Path, gzip: bool) -> Baseline {
    std::fs::create_dir_all(out).unwrap();
    let cpu_before = rusage_cpu_seconds(libc::RUSAGE_CHILDREN);
    let started = Instant::now();
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            Command::new("curl")
                .args(["-sS", "-o", out.join(n).to_str().unwrap(), &format!("{origin}/fhir/data/{n}")])
                .args(gzip.then_some("--compressed"))
                .spawn()
                .expect("curl is installed")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let written = started.elapsed();
    let cpu_seconds = rusage_cpu_seconds(libc::RUSAGE_CHILDREN) - cpu_before;
    let fsync_before = rusage_cpu_seconds(libc::RUSAGE_THREAD);
    for n in names {
        std::fs::File::open(out.join(n)).unwrap().sync_all().unwrap();
    }
    let durable = started.elapsed();
    let fsync_cpu_seconds = rusage_cpu_seconds(libc::RUSAGE_THREAD) - fsync_before;
    remove_and_settle(out);
    Baseline { written, durable, cpu_seconds, fsync_cpu_seconds }
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
    cpu_seconds: f64,
    polls: Vec<Duration>,
    identical: Option<bool>,
}

/// The release binary serving from `work`, with `env` on top of the bench's settings; its base URL.
fn start_server(work: &Path, env: &[(&str, String)]) -> (std::process::Child, String) {
    std::fs::create_dir_all(work).unwrap();
    let bin = std::env::var("BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_bulk-import").into());
    let mut cmd = Command::new(bin);
    cmd.current_dir(work)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("RUST_LOG", std::env::var("BENCH_LOG").unwrap_or_else(|_| "bulk_import=info".into()))
        .env("NO_COLOR", "1")
        .env("ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the release binary starts");
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
    (child, format!("http://{address}"))
}

/// Register a provider key at `base`, get a token and ping a static import of `origin`'s
/// manifest; the status URL and when the ping was sent.
async fn ping_import(base: &str, origin: &str) -> (String, Instant) {
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
    claims.set_jwt_id(format!("bench-{}", now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()));
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
    (res.headers()["content-location"].to_str().unwrap().to_string(), started)
}

/// `clients` loops asking `base` for RS512 key pairs until `stop`; answers by status.
fn flood_generator(
    base: &str,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Arc<Mutex<Vec<u16>>> {
    let answers = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..clients {
        let (url, stop, answers) = (format!("{base}/generator?alg=RS512"), stop.clone(), answers.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            // Bounded by the import it runs beside (`stop`).
            while !stop.load(Ordering::Relaxed) {
                let status = http.get(&url).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                answers.lock().unwrap().push(status);
            }
        });
    }
    answers
}

async fn import(
    origin: &str,
    dest: &str,
    files: usize,
    set: &Path,
    work: &Path,
    db: &[(&str, String)],
    flood: usize,
) -> Run {
    let _ = std::fs::remove_dir_all(work);
    let mut env = vec![("DESTINATION_TYPE", dest.to_string()), ("PARALLEL_DOWNLOADS", files.to_string())];
    env.extend(db.iter().cloned());
    let (mut child, base) = start_server(work, &env);
    let http = reqwest::Client::new();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let generated = (flood > 0).then(|| flood_generator(&base, flood, stop.clone()));
    let (status_url, started) = ping_import(&base, origin).await;
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
    stop.store(true, Ordering::Relaxed);
    if let Some(answers) = generated {
        let answers = answers.lock().unwrap();
        let made = answers.iter().filter(|s| **s == 200).count();
        let refused = answers.iter().filter(|s| **s == 429).count();
        println!("  ({flood} clients asked /generator {} times meanwhile: {made} key pairs made, {refused} told to wait)", answers.len());
    }
    let peak_rss_mib = peak_rss_kib(child.id()) as f64 / 1024.0;
    let cpu_seconds = cpu_seconds(child.id());
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
        cpu_seconds,
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
    let modes = env("BENCH_MODES", "plain,gzip");
    let dests = env("BENCH_DESTS", "tmp-fs,dev-null");
    let root = PathBuf::from(env("BENCH_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-data")));
    // SQLite (the default) and, when asked, a throw-away PostgreSQL cluster on loopback.
    let wanted = env("BENCH_DATABASES", "sqlite");
    let pg = (wanted.contains("postgres") || std::env::var_os("BENCH_TAKEOVER").is_some())
        .then(pg_cluster::PgCluster::start);
    let mut databases: Vec<(&str, Vec<(&str, String)>)> = Vec::new();
    for db in wanted.split(',') {
        match (db, &pg) {
            ("sqlite", _) => databases.push(("", vec![])),
            ("postgres", Some(pg)) => databases.push((" (PostgreSQL)", vec![("DATABASE_URL", pg.url())])),
            (other, _) => panic!("BENCH_DATABASES: unknown database {other} (sqlite, postgres)"),
        }
    }
    let data = data_set(&root, &size, files);
    let set = root.join(format!("{size}-{files}"));
    let names: Vec<String> = data.iter().map(|(n, _)| n.clone()).collect();
    let total: u64 = data.iter().map(|(_, s)| s).sum();
    let mb = total as f64 / 1e6;
    let gb = total as f64 / 1e9;
    println!(
        "\ndata set: {size} in {files} files ({mb:.0} MB), machine: {} cores, load average: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    for mode in modes.split(',') {
        let gzip = match mode {
            "plain" => false,
            "gzip" => true,
            other => panic!("BENCH_MODES: unknown mode {other} (plain, gzip)"),
        };
        let wire = if gzip { gzip_twins(&set, &names) } else { total };
        let gzipped = Arc::new(AtomicUsize::new(0));
        let origin = serve(set.clone(), names.clone(), gzip, gzipped.clone(), Arc::default()).await;
        // Warm the page cache so every run reads the source from memory.
        for n in &names {
            let sent = if gzip { format!("{n}.gz") } else { n.clone() };
            let _ = std::fs::read(set.join(sent)).map(|v| v.len());
        }
        let curl = curl_baseline(&origin, &names, &root.join("curl-out"), gzip);
        assert_eq!(
            gzipped.load(Ordering::Relaxed),
            if gzip { files } else { 0 },
            "curl got the wrong encoding"
        );
        let curl_mbs = mb / curl.written.as_secs_f64();
        let fsync_mbs = mb / curl.durable.as_secs_f64();
        let (label, flag) = if gzip { ("gzip", " --compressed") } else { ("plain", "") };
        println!(
            "\n{label}: {:.0} MB on the wire ({:.1} : 1); MB/s and CPU-s/GB count decoded bytes",
            wire as f64 / 1e6,
            total as f64 / wire as f64
        );
        println!("| run | seconds | MB/s | resources/s | vs curl | vs curl + fsync | CPU-s/GB | peak RSS MiB | poll p50 ms | poll p99 ms | byte-identical |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| parallel curl{flag} → disk | {:.2} | {curl_mbs:.0} | | 100 % | | {:.2} | | | | |",
            curl.written.as_secs_f64(),
            curl.cpu_seconds / gb
        );
        println!(
            "| parallel curl{flag} → disk, then fsync | {:.2} | {fsync_mbs:.0} | | {:.0} % | 100 % | {:.2} | | | | |",
            curl.durable.as_secs_f64(),
            100.0 * fsync_mbs / curl_mbs,
            (curl.cpu_seconds + curl.fsync_cpu_seconds) / gb
        );
        let floods: Vec<usize> = match env("BENCH_GENERATOR_FLOOD", "0").parse().unwrap() {
            0 => vec![0],
            n => vec![0, n],
        };
        let runs = dests.split(',').flat_map(|d| databases.iter().map(move |db| (d, db)));
        for ((dest, (db_label, db)), flood) in runs.flat_map(|r| floods.iter().map(move |f| (r, *f))) {
            let before = gzipped.load(Ordering::Relaxed);
            let run = import(&origin, dest, files, &set, &root.join("work"), db, flood).await;
            let db_label = match flood {
                0 => db_label.to_string(),
                n => format!("{db_label}, {n} clients flooding /generator"),
            };
            assert_eq!(
                gzipped.load(Ordering::Relaxed) - before,
                if gzip { files } else { 0 },
                "the importer got the wrong encoding"
            );
            let mut polls = run.polls.clone();
            polls.sort();
            let mbs = mb / run.seconds;
            println!(
                "| bulk-import → {dest}{db_label} | {:.2} | {mbs:.0} | {:.0} | {:.0} % | {:.0} % | {:.2} | {:.1} | {:.2} | {:.2} | {} |",
                run.seconds,
                run.resources as f64 / run.seconds,
                100.0 * mbs / curl_mbs,
                100.0 * mbs / fsync_mbs,
                run.cpu_seconds / gb,
                run.peak_rss_mib,
                percentile(&polls, 0.5),
                percentile(&polls, 0.99),
                run.identical.map(|b| if b { "yes" } else { "NO" }).unwrap_or("n/a"),
            );
            assert_ne!(run.identical, Some(false), "the {dest} output differs from the source");
        }
    }
    if let Some(pg) = &pg {
        if std::env::var_os("BENCH_TAKEOVER").is_some() {
            takeover(&set, &names, files, &root.join("takeover"), pg).await;
        }
    }
}

/// Two replicas on one PostgreSQL: the one that took the ping is SIGKILLed mid-import, and the
/// other's takeover is timed (to its first file request, and to the job's end).
async fn takeover(set: &Path, names: &[String], files: usize, work: &Path, pg: &pg_cluster::PgCluster) {
    let lease = env("BENCH_LEASE", "10");
    let requests: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let origin = serve(set.to_path_buf(), names.to_vec(), false, Arc::default(), requests.clone()).await;
    let _ = std::fs::remove_dir_all(work);
    let env = [
        ("DATABASE_URL", pg.url()),
        ("LEASE_SECONDS", lease.clone()),
        ("DESTINATION_TYPE", "dev-null".to_string()),
        ("PARALLEL_DOWNLOADS", files.to_string()),
    ];
    let (mut owner, owner_base) = start_server(&work.join("a"), &env);
    let (mut other, other_base) = start_server(&work.join("b"), &env);
    let (status_url, _) = ping_import(&owner_base, &origin).await;
    let id = status_url.rsplit('/').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while requests.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the owner never asked for a file");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = owner.kill();
    let killed = Instant::now();
    let _ = owner.wait();
    let asked_before = requests.lock().unwrap().len();
    let http = reqwest::Client::new();
    let body: Value = loop {
        let res = http.get(format!("{other_base}/job/{id}")).send().await.unwrap();
        match res.status().as_u16() {
            202 => tokio::time::sleep(POLL_EVERY).await,
            200 => break res.json().await.unwrap(),
            other => panic!("the taken-over import failed with {other}: {}", res.text().await.unwrap()),
        }
        assert!(killed.elapsed() < Duration::from_secs(600), "no takeover within 10 minutes");
    };
    let done = killed.elapsed().as_secs_f64();
    let first = requests
        .lock()
        .unwrap()
        .iter()
        .skip(asked_before)
        .find(|t| **t > killed)
        .map(|t| t.duration_since(killed).as_secs_f64());
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(body["extension"]["failedFiles"], 0, "{body}");
    println!("\ntakeover (2 replicas, one PostgreSQL, dev-null, SIGKILL of the owner after its first file request):");
    println!("| LEASE_SECONDS | heartbeat | new owner's first file request after SIGKILL | job finished after SIGKILL | resources |");
    println!("|---|---|---|---|---|");
    println!(
        "| {lease} | every {:.1} s | {} | {done:.2} s | {} |",
        lease.parse::<f64>().unwrap_or(0.0) / 3.0,
        first.map_or("none seen".to_string(), |s| format!("{s:.2} s")),
        body["extension"]["resources"]
    );
}
