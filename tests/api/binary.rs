//! The real binary on a fresh directory: no `.env`, secrets generated with 0600 and logged, and a
//! graceful exit on SIGTERM.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

#[tokio::test]
async fn the_server_starts_with_no_configuration_generates_its_secrets_and_stops_on_sigterm() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulk-import"))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("RUST_LOG", "bulk_import=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let mut log = Vec::new();
    let address = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the server logs its address");
        log.push(line.clone());
        if line.contains("bulk-import listening") {
            let addr = line.split("address=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
            break addr;
        }
    };
    let log = log.join("\n");
    assert!(log.contains("generated our signing key pair") && log.contains("private-key.jwk.json"), "{log}");
    assert!(log.contains("generated JWT_SECRET") && log.contains("jwt-secret"), "{log}");
    #[cfg(unix)]
    for file in ["private-key.jwk.json", "jwt-secret", "admin-token"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data").join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // The secret itself never reaches the log.
    assert!(log.contains("generated ADMIN_TOKEN") && log.contains("admin-token"), "{log}");
    for file in ["jwt-secret", "admin-token"] {
        let secret = std::fs::read_to_string(dir.path().join("data").join(file)).unwrap();
        assert!(!log.contains(secret.trim()), "{file} leaked into the log");
    }
    let jwks: serde_json::Value =
        reqwest::get(format!("http://{address}/jwks")).await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES384");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the server did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");

    // A second start reuses the persisted key.
    let mut again = Command::new(env!("CARGO_BIN_EXE_bulk-import"))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(again.stdout.take().unwrap());
    let mut second = String::new();
    for line in out.lines() {
        let line = line.unwrap();
        second.push_str(&line);
        if line.contains("bulk-import listening") {
            break;
        }
    }
    let _ = again.kill();
    let _ = again.wait();
    assert!(!second.contains("generated our signing key pair"), "{second}");
}
