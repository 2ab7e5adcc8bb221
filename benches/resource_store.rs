//! Resource store benchmark (issue 17). Run with `cargo bench --bench resource_store`.
//!
//! Loads BENCH_RESOURCES (default 1,000,000) generated Observations through the resource-store
//! destination's real writer (64 KiB chunks, a line end after each, as the download feeds it) into
//! SQLite (a file in a temporary directory) and into a throw-away PostgreSQL cluster
//! (`tests/support/pg_cluster.rs`), then, in the same run, inserts BENCH_NAIVE (default 20,000)
//! of them the naive way (one autocommitted INSERT … ON CONFLICT per resource) for comparison.
//! Prints resources/s and the database's size for each, and this process's peak RSS. BENCH_STORES
//! picks (sqlite,postgres). The PostgreSQL cluster is the tests' (fsync and synchronous_commit off).
use std::{path::Path, sync::Arc, time::Instant};

use bulk_import::destination::{
    resource_store::{self, ResourceStore, StoreUrl, Tables},
    Destination, FileKind, FileTarget,
};
use bytes::Bytes;

#[path = "../tests/support/pg_cluster.rs"]
mod pg_cluster;

const CHUNK: usize = 64 * 1024;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// One Observation line like a lab result from an EHR (about 420 bytes).
fn observation(n: usize) -> String {
    format!(
        concat!(
            r#"{{"resourceType":"Observation","id":"obs-{n}","meta":{{"versionId":"1","lastUpdated":"2026-0{m}-1{d}T08:{mm:02}:00.000Z"}},"#,
            r#""status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}}]}}],"#,
            r#""code":{{"coding":[{{"system":"http://loinc.org","code":"2345-7","display":"Glucose"}}]}},"subject":{{"reference":"Patient/p{p}"}},"#,
            r#""effectiveDateTime":"2026-01-0{d}T07:30:00Z","valueQuantity":{{"value":{v}.{f},"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}}}}"#,
            "\n"
        ),
        n = n,
        m = 1 + n % 9,
        d = n % 10,
        mm = n % 60,
        p = n % 50_000,
        v = 70 + n % 90,
        f = n % 10
    )
}

/// Feed `count` Observations to the store's writer as a download would; resources/s.
async fn load(tables: Arc<dyn Tables>, count: usize) -> f64 {
    let store = ResourceStore::new(tables);
    let target = FileTarget {
        job: "bench-job",
        name: "Observation.1.ndjson",
        resource_type: "Observation",
        provider: "bench-ehr",
        kind: FileKind::Output,
    };
    let started = Instant::now();
    let mut w = store.open(target).await.expect("opens");
    let (mut buf, mut sent) = (String::with_capacity(CHUNK + 1024), 0u64);
    for n in 0..count {
        buf.push_str(&observation(n));
        if buf.len() >= CHUNK || n + 1 == count {
            sent += buf.len() as u64;
            w.write(Bytes::from(std::mem::take(&mut buf))).await.expect("writes");
            w.line_end(sent).await.expect("commits a batch");
        }
    }
    w.finish(count as u64).await.expect("finishes");
    count as f64 / started.elapsed().as_secs_f64()
}

/// The naive way, for comparison: one autocommitted statement per resource.
async fn naive_sqlite(path: &Path, count: usize) -> f64 {
    use sqlx::Connection;
    let mut db =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
    sqlx::raw_sql(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE naive (provider TEXT, resource_type TEXT, id TEXT, last_updated TEXT, resource TEXT,
         PRIMARY KEY (provider, resource_type, id))",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let started = Instant::now();
    for n in 0..count {
        let line = observation(n);
        sqlx::query("INSERT INTO naive VALUES ('bench-ehr', 'Observation', ?, ?, ?) ON CONFLICT DO UPDATE SET resource = excluded.resource")
            .bind(format!("obs-{n}"))
            .bind("2026-01-01T00:00:00Z")
            .bind(line.trim_end())
            .execute(&mut db)
            .await
            .unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

async fn naive_postgres(url: &str, count: usize) -> f64 {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE naive (provider text, resource_type text, id text, last_updated timestamptz, resource jsonb,
         PRIMARY KEY (provider, resource_type, id))",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let started = Instant::now();
    for n in 0..count {
        let line = observation(n);
        sqlx::query("INSERT INTO naive VALUES ('bench-ehr', 'Observation', $1, $2::timestamptz, $3::jsonb) ON CONFLICT (provider, resource_type, id) DO UPDATE SET resource = excluded.resource")
            .bind(format!("obs-{n}"))
            .bind("2026-01-01T00:00:00Z")
            .bind(line.trim_end())
            .execute(&mut db)
            .await
            .unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn size_of_files(dir: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn main() {
    let count = env_num("BENCH_RESOURCES", 1_000_000);
    let naive = env_num("BENCH_NAIVE", 20_000);
    let stores = std::env::var("BENCH_STORES").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!(
        "resource store: {count} Observations ({} bytes each on average) through the writer; naive: {naive}",
        observation(count / 2).len()
    );
    if stores.contains("sqlite") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resources.sqlite");
        rt.block_on(async {
            let tables = resource_store::open(&StoreUrl::Sqlite(path.clone())).await.unwrap();
            let rate = load(tables.clone(), count).await;
            let counted: i64 = tables.counts().await.unwrap().iter().map(|c| c.count).sum();
            assert_eq!(counted, count as i64, "every resource stored");
            println!(
                "sqlite    batched: {rate:>9.0} resources/s, database {}",
                mib(size_of_files(dir.path(), "resources.sqlite"))
            );
            let naive_rate = naive_sqlite(&dir.path().join("naive.sqlite"), naive).await;
            println!("sqlite    naive:   {naive_rate:>9.0} resources/s ({:.1}x slower)", rate / naive_rate);
        });
    }
    if stores.contains("postgres") {
        let pg = pg_cluster::PgCluster::start();
        let url = pg.url();
        rt.block_on(async {
            let tables = resource_store::open(&StoreUrl::Postgres(url.clone().into())).await.unwrap();
            let rate = load(tables.clone(), count).await;
            let counted: i64 = tables.counts().await.unwrap().iter().map(|c| c.count).sum();
            assert_eq!(counted, count as i64, "every resource stored");
            use sqlx::Connection;
            let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
            let (size,): (i64,) = sqlx::query_as("SELECT pg_total_relation_size('fhir_resources')")
                .fetch_one(&mut db)
                .await
                .unwrap();
            println!("postgres  batched: {rate:>9.0} resources/s, table with indexes {}", mib(size as u64));
            let naive_rate = naive_postgres(&url, naive).await;
            println!("postgres  naive:   {naive_rate:>9.0} resources/s ({:.1}x slower)", rate / naive_rate);
        });
    }
    // The writer holds one batch at a time: memory stays flat in the file's size.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: unknown");
    println!("peak RSS of this process: {}", peak.trim_start_matches("VmHWM:").trim());
}
