//! The command line, through the real binary: help and version create nothing, usage errors exit
//! 2, keygen writes owner-only key files that sign what our own checks verify, and never replaces
//! a key unless told to.
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use serde_json::Value;

/// Run the binary in `dir` with `args`; (exit code, stdout, stderr).
pub fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulk-import"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("the binary runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn help_and_version_answer_without_starting_a_server_or_creating_anything() {
    let dir = tempfile::TempDir::new().unwrap();
    let (code, out, _) = run(dir.path(), &["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("bulk-import {}", env!("CARGO_PKG_VERSION")));
    let (code, out, _) = run(dir.path(), &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("serve") && out.contains("keygen"), "{out}");
    let (code, out, _) = run(dir.path(), &["keygen", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--alg") && out.contains("--force"), "{out}");
    assert!(entries(dir.path()).is_empty(), "no data/ or jobs/ made: {:?}", entries(dir.path()));
}

#[test]
fn wrong_usage_exits_2_with_a_message() {
    let dir = tempfile::TempDir::new().unwrap();
    let (code, _, err) = run(dir.path(), &["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("frobnicate"), "{err}");
    let (code, _, err) = run(dir.path(), &["keygen", "--bogus"]);
    assert_eq!(code, 2, "{err}");
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn keygen_writes_an_owner_only_pair_that_signs_verifiably_and_never_overwrites() {
    let dir = tempfile::TempDir::new().unwrap();
    let out_dir = dir.path().join("keys");
    let out_arg = out_dir.to_str().unwrap();
    let (code, out, err) =
        run(dir.path(), &["keygen", "--alg", "es256", "--out", out_arg, "--name", "ehr", "--json"]);
    assert_eq!(code, 0, "{err}");
    let printed: Value = serde_json::from_str(out.trim()).expect("--json prints JSON");
    assert_eq!(printed["alg"], "ES256");
    assert_eq!(printed["files"].as_array().unwrap().len(), 4);
    assert_eq!(
        entries(&out_dir),
        ["ehr.jwks.json", "ehr.private.jwk.json", "ehr.private.pem", "ehr.public.pem"]
    );
    for name in entries(&out_dir) {
        let mode = std::fs::metadata(out_dir.join(&name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    // The private key signs; the published JWKS verifies it.
    let private =
        josekit::jwk::Jwk::from_bytes(std::fs::read(out_dir.join("ehr.private.jwk.json")).unwrap()).unwrap();
    let jwks: Value = serde_json::from_slice(&std::fs::read(out_dir.join("ehr.jwks.json")).unwrap()).unwrap();
    assert_eq!(jwks, printed["jwks"]);
    assert!(jwks["keys"][0].get("d").is_none(), "the JWKS holds no private member");
    let public = josekit::jwk::Jwk::from_map(jwks["keys"][0].as_object().unwrap().clone()).unwrap();
    let signer = josekit::jws::ES256.signer_from_jwk(&private).unwrap();
    let verifier = josekit::jws::ES256.verifier_from_jwk(&public).unwrap();
    let mut payload = josekit::jwt::JwtPayload::new();
    payload.set_subject("me");
    let token = josekit::jwt::encode_with_signer(&payload, &josekit::jws::JwsHeader::new(), &signer).unwrap();
    assert!(josekit::jwt::decode_with_verifier(&token, &verifier).is_ok());

    // Again: refused, the first pair kept; with --force, replaced.
    let before = std::fs::read(out_dir.join("ehr.private.jwk.json")).unwrap();
    let (code, _, err) = run(dir.path(), &["keygen", "--out", out_arg, "--name", "ehr"]);
    assert_eq!(code, 1);
    assert!(err.contains("exists already") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(out_dir.join("ehr.private.jwk.json")).unwrap(), before);
    let (code, out, _) = run(dir.path(), &["keygen", "--out", out_arg, "--name", "ehr", "--force"]);
    assert_eq!(code, 0);
    assert!(out.contains("keep it secret"), "{out}");
    assert_ne!(std::fs::read(out_dir.join("ehr.private.jwk.json")).unwrap(), before);

    let (code, _, err) = run(dir.path(), &["keygen", "--alg", "HS256", "--out", out_arg, "--name", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("alg must be one of"), "{err}");
    let (code, _, err) = run(dir.path(), &["keygen", "--out", out_arg, "--name", "../escape"]);
    assert_eq!(code, 1);
    assert!(err.contains("plain file name"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn register_offline_writes_into_the_database_before_any_server_ran_and_warns_of_a_repeat() {
    let dir = tempfile::TempDir::new().unwrap();
    let (code, _, err) = run(dir.path(), &["keygen", "--out", "keys", "--name", "ehr"]);
    assert_eq!(code, 0, "{err}");
    let register = [
        "register",
        "--offline",
        "--aud",
        "https://ehr.example/fhir",
        "--consumer-client-id",
        "us-at-ehr",
        "--jwks-file",
        "keys/ehr.jwks.json",
        "--name",
        "St. Mary's",
        "--json",
    ];
    let (code, out, err) = run(dir.path(), &register);
    assert_eq!(code, 0, "{err}");
    let first: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(first["warnings"], serde_json::json!([]));
    let db = dir.path().join("data").join("bulk-import.sqlite");
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600, "owner-only");

    // Again, for people: the hand-off list, and a warning naming the first registration.
    let (code, out, err) = run(dir.path(), &register[..register.len() - 1]);
    assert_eq!(code, 0, "{err}");
    let first_id = first["client_id"].as_str().unwrap();
    assert!(out.contains("warning: registration") && out.contains(first_id), "{out}");
    assert!(out.contains("http://127.0.0.1:3001/$import"), "{out}");

    let store = bulk_import::store::Store::open(&db).await.unwrap();
    let providers = store.providers().await.unwrap();
    assert_eq!(providers.len(), 2);
    assert!(providers
        .iter()
        .all(|p| p.name.as_deref() == Some("St. Mary's") && p.aud == "https://ehr.example/fhir"));
    let trail = store.audit_events(10).await.unwrap();
    assert!(
        trail.iter().all(|e| e.actor.contains("command line") && e.action == "registration created"),
        "{trail:?}"
    );

    let (code, _, err) = run(
        dir.path(),
        &[
            "register",
            "--offline",
            "--aud",
            "not a url",
            "--consumer-client-id",
            "x",
            "--jwks-file",
            "keys/ehr.jwks.json",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("aud"), "{err}");

    // `--data-dir` says where the database is.
    let mut elsewhere = register[..register.len() - 1].to_vec();
    elsewhere.extend(["--data-dir", "other"]);
    let (code, _, err) = run(dir.path(), &elsewhere);
    assert_eq!(code, 0, "{err}");
    assert!(dir.path().join("other").join("bulk-import.sqlite").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn provide_serves_a_directory_as_a_static_export_that_imports_byte_for_byte() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::TempDir::new().unwrap();
    let patients = super::helpers::patients(4);
    let observations = super::helpers::observations(6);
    std::fs::write(dir.path().join("patients.ndjson"), &patients).unwrap();
    std::fs::write(dir.path().join("obs #1.ndjson"), &observations).unwrap();
    std::fs::write(dir.path().join(".env"), "SECRET=1").unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulk-import"))
        .args(["provide", ".", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line());
    let manifest_url = read.await.expect("the manifest URL, printed first").unwrap().unwrap();
    let base = manifest_url.trim_end_matches("/manifest.json").to_string();
    let manifest: Value = reqwest::get(&manifest_url).await.unwrap().json().await.unwrap();
    assert_eq!(manifest["output"][0]["type"], "Observation", "{manifest}");
    assert_eq!(
        (manifest["output"][0]["count"].as_u64(), manifest["output"][1]["count"].as_u64()),
        (Some(6), Some(4))
    );
    let unlisted = reqwest::get(format!("{base}/files/.env")).await.unwrap();
    assert_eq!(unlisted.status(), 404, "only the listed files are served");

    let mut app = super::helpers::spawn_app().await;
    app.reregister(serde_json::json!({ "aud": base })).await;
    let id = app.start_import(&manifest_url, "static").await;
    let done = app.completed(&id).await;
    assert_eq!(done["extension"]["resources"], 10, "{done}");
    assert_eq!(app.read(&id, "Patient.1.ndjson"), patients);
    assert_eq!(app.read(&id, "Observation.1.ndjson"), observations);
    let _ = child.kill().await;
}
