//! The PostgreSQL backend against a throw-away cluster (`tests/support/pg_cluster.rs`): the whole
//! store conformance suite, claims racing across replicas, shared secrets and the reaper's lock.
use std::time::Duration;

use bulk_import::store::{job_store::JobStore, postgres::PgStore};

pub use super::pg_cluster::PgCluster;

#[tokio::test]
async fn postgres_passes_the_whole_store_conformance_suite() {
    let pg = PgCluster::start();
    let store = PgStore::open(&pg.url()).await.expect("opens and migrates");
    super::store_conformance::assert_store_conformance(&store, &store, &store, &store, &store, &store).await;
    // Opening again finds the schema in place.
    PgStore::open(&pg.url()).await.expect("migrations run once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_claiming_at_once_each_get_a_different_job() {
    let pg = PgCluster::start();
    let store = PgStore::open(&pg.url()).await.unwrap();
    let caps = bulk_import::domain::JobCaps { all: 100, per_provider: 100 };
    const JOBS: usize = 12;
    for n in 0..JOBS {
        let job = bulk_import::domain::Job {
            id: format!("job-{n:02}"),
            client_id: "p1".into(),
            export_type: bulk_import::fhir::parameters::ExportType::Dynamic,
            export_url: "https://ehr.example/fhir/$export".into(),
            kickoff: vec![],
            state: bulk_import::domain::JobState::Queued,
            status_url: None,
            progress: None,
            failure: None,
            created_at: 100 + n as i64,
            completed_at: None,
            plan_open: true,
        };
        store.insert_job_if_room(&job, caps).await.unwrap();
    }
    // Four replicas, each claiming until nothing is left, all at once.
    let claimers = (0..4).map(|r| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some((job, claim)) =
                store.claim_next(&format!("replica-{r}"), Duration::from_secs(60), 0).await.unwrap()
            {
                assert_eq!(claim.takeovers, 0);
                got.push(job.id);
                assert!(got.len() <= JOBS, "a claimer never gets more jobs than there are");
            }
            got
        })
    });
    let mut all: Vec<String> = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    all.sort();
    let expected: Vec<String> = (0..JOBS).map(|n| format!("job-{n:02}")).collect();
    assert_eq!(all, expected, "every job claimed exactly once");
}

#[tokio::test]
async fn secrets_are_written_once_and_the_reaper_lock_is_held_by_one() {
    use bulk_import::store::job_store::{Exclusive, SharedSecrets};
    let pg = PgCluster::start();
    let a = PgStore::open(&pg.url()).await.unwrap();
    let b = PgStore::open(&pg.url()).await.unwrap();
    let (first, inserted) = a.secret_or_insert("jwt-secret", "from-replica-a", 1).await.unwrap();
    assert_eq!((first.as_str(), inserted), ("from-replica-a", true));
    let (second, inserted) = b.secret_or_insert("jwt-secret", "from-replica-b", 2).await.unwrap();
    assert_eq!((second.as_str(), inserted), ("from-replica-a", false), "the first writer wins");

    let held = a.try_exclusive("reaper").await.unwrap().expect("a free lock is taken");
    assert!(b.try_exclusive("reaper").await.unwrap().is_none(), "held by the other replica");
    assert!(b.try_exclusive("other work").await.unwrap().is_some(), "locks are by name");
    drop(held);
    // The connection closes in the background; the lock goes with it.
    let mut free = None;
    for _ in 0..50 {
        free = b.try_exclusive("reaper").await.unwrap();
        if free.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(free.is_some(), "a dropped guard lets the lock go");
}

#[tokio::test]
async fn a_throw_away_cluster_starts_on_loopback_answers_and_has_skip_locked() {
    let pg = PgCluster::start();
    let pool = tokio::time::timeout(Duration::from_secs(20), sqlx::PgPool::connect(&pg.url()))
        .await
        .expect("connects in time")
        .expect("connects");
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(version >= 120000, "leases need PostgreSQL 12 or newer: {version}");
    // The claim statement the scale-out issue builds on: one row, locked, the others skipped.
    sqlx::query("CREATE TABLE work (id int PRIMARY KEY, owner text)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO work SELECT g, NULL FROM generate_series(1, 3) g").execute(&pool).await.unwrap();
    let mut first = pool.begin().await.unwrap();
    let a: i32 = sqlx::query_scalar("SELECT id FROM work ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
        .fetch_one(&mut *first)
        .await
        .unwrap();
    let b: i32 = sqlx::query_scalar("SELECT id FROM work ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((a, b), (1, 2), "a second claimer skips the row the first holds");
    first.rollback().await.unwrap();
    pool.close().await;
}

#[tokio::test]
async fn postgres_passes_the_resource_store_conformance_suite() {
    use bulk_import::destination::resource_store::{self, StoreUrl};
    let pg = PgCluster::start();
    let url = StoreUrl::Postgres(pg.url().into());
    let tables = resource_store::open(&url).await.expect("opens and creates its table");
    super::resource_store::assert_resource_store_conformance(tables.clone()).await;
    resource_store::open(&url).await.expect("opens again over its table");
    // What jsonb cannot hold fails the file (its data is at fault), not the job.
    use bulk_import::destination::{resource_store::ResourceStore, Destination, FileKind, FileTarget};
    let store = ResourceStore::new(tables);
    let target = FileTarget {
        job: "j",
        name: "o.ndjson",
        resource_type: "Observation",
        provider: "p",
        kind: FileKind::Output,
    };
    let mut w = store.open(target).await.unwrap();
    w.write(r#"{"resourceType":"Observation","id":"o1","note":"a\u0000b"}"#.into()).await.unwrap();
    let e = w.finish(1).await.expect_err("jsonb refuses \\u0000");
    assert!(e.refuses_the_file(), "{e:?}");
}
