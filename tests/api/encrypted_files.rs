//! Encrypted Bulk Submit files (`fileEncryptionKey`) whose authentication tag does not verify:
//! nothing of them reaches any destination, count or status, whichever way they were spoiled.
use base64::Engine;
use bulk_import::destination::{resource_store::StoreUrl, DestinationKind};
use serde_json::{json, Value};

use super::bulk_submit::{encryption_key, param, status, Submitter};
use super::fake_provider::{FakeFile, Tamper};
use super::helpers::{patients, spawn_app_with};
use super::s3_server::S3Server;

/// Rows of each spoiled file: past the resource store's 2,000-row batch, so a file streamed
/// before its tag was checked would have committed rows.
const SPOILED_ROWS: usize = 5_000;
const GOOD_ROWS: usize = 10;

/// Rows of the resource store holding `needle` in their resource, and all its rows.
async fn store_rows(path: &std::path::Path, needle: &str) -> (i64, i64) {
    use sqlx::Connection;
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let like = format!("%{needle}%");
    let matching: i64 = sqlx::query_scalar("SELECT count(*) FROM fhir_resources WHERE resource LIKE ?")
        .bind(like)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let all: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fhir_resources").fetch_one(&mut db).await.unwrap();
    (matching, all)
}

#[tokio::test]
async fn an_encrypted_file_whose_tag_fails_leaves_nothing_in_any_destination() {
    let s3 = S3Server::start().await;
    let store_at = |dir: &std::path::Path| StoreUrl::Sqlite(dir.join("resources.sqlite"));
    type Pick = Box<dyn Fn(&std::path::Path) -> DestinationKind>;
    let destinations: Vec<(&str, Pick)> = vec![
        ("dev-null", Box::new(|_| DestinationKind::DevNull)),
        ("tmp-fs", Box::new(|_| DestinationKind::TmpFs)),
        ("resource-store", Box::new(move |d| DestinationKind::ResourceStore(store_at(d)))),
        ("s3", {
            let config = s3.config(5 * 1024 * 1024);
            Box::new(move |_| DestinationKind::S3(config.clone()))
        }),
        (
            "tmp-fs,resource-store",
            Box::new(move |d| {
                DestinationKind::Several(vec![
                    DestinationKind::TmpFs,
                    DestinationKind::ResourceStore(store_at(d)),
                ])
            }),
        ),
    ];
    for (n, (name, pick)) in destinations.into_iter().enumerate() {
        let app = spawn_app_with(|c| c.destination = pick(&c.data_dir)).await;
        app.provider.serve_openly();
        app.provider.set_chunk_size(16 * 1024);
        let key = [7u8; 32];
        app.provider.encrypt_with(&key);
        app.provider.add_file("good.ndjson", "Patient", patients(GOOD_ROWS));
        for (i, tamper) in Tamper::ALL.into_iter().enumerate() {
            app.provider.push_file(FakeFile {
                tampered: Some(tamper),
                ..FakeFile::new(&format!("spoiled-{i}.ndjson"), "Patient", patients(SPOILED_ROWS))
            });
        }
        let ehr = Submitter::register(&app, &format!("ehr-tamper-{n}")).await;
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
        let res = ehr
            .submit(vec![
                param("submissionId", "valueString", "s-tamper"),
                param("manifestUrl", "valueUrl", &app.provider.manifest_url()),
                encryption_key(&k),
                status(bulk_import::fhir::bulk_submit::EVENT_STATUS, "completed"),
            ])
            .await;
        assert_eq!(res.status(), 200, "{name}: {}", res.text().await.unwrap());
        let url = ehr.status_url("s-tamper").await;
        let done = ehr.poll_until_done(&url).await;
        let job = url.rsplit('/').next().unwrap();

        // Each spoiled file failed and says why; the good one is imported.
        let mut lines = String::new();
        for o in done["outcome"].as_array().unwrap() {
            lines += &ehr.get(o["url"].as_str().unwrap()).await.text().await.unwrap();
        }
        for i in 0..Tamper::ALL.len() {
            let line = lines.lines().find(|l| l.contains(&format!("spoiled-{i}.ndjson")));
            let line = line.unwrap_or_else(|| panic!("{name}: no outcome for spoiled-{i}: {lines}"));
            assert!(line.contains("\"error\"") && line.contains("decrypted"), "{name}: {line}");
        }
        // Only the good file is counted, on the job page as in the status manifest.
        let severities = &done["outcome"][0]["countSeverity"];
        assert_eq!(
            severities,
            &json!([{"code": "error", "count": 5}, {"code": "information", "count": 1}]),
            "{name}"
        );
        let shown: Value = app.admin_get(&format!("/admin/jobs/{job}")).await;
        assert_eq!(shown["resources"], json!(GOOD_ROWS), "{name}: only the good file is counted: {shown}");
        assert_eq!(shown["files_failed"], json!(Tamper::ALL.len()), "{name}: {shown}");

        // Nothing of a spoiled file is in any destination.
        if name.contains("tmp-fs") {
            let kept: Vec<String> = std::fs::read_dir(app.jobs_dir(job))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(kept, vec!["Patient.1.ndjson".to_string()], "{name}");
        }
        if name.contains("resource-store") {
            let (evil, all) = store_rows(&app.dir.join("data").join("resources.sqlite"), "EVIL").await;
            assert_eq!((evil, all), (0, GOOD_ROWS as i64), "{name}: only the good file's rows are stored");
            let counted = app.admin_get("/admin/resources").await;
            assert_eq!(counted["resources"][0]["count"], json!(GOOD_ROWS), "{name}: {counted}");
        }
        if name == "s3" {
            let objects: Vec<String> =
                s3.all_files().into_iter().filter(|f| f.contains(job) && !f.ends_with(".json")).collect();
            assert_eq!(objects.len(), 1, "{name}: one object, the good file: {objects:?}");
            assert_eq!(s3.open_uploads(), Vec::<String>::new(), "{name}: no upload left open");
        }
        // The spool keeps nothing either: its files have no name, and none is left.
        let spool = app.dir.join("data").join("spool");
        let left = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "{name}: the spool directory is empty");
    }
}
