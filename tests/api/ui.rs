//! The browser UI end to end in real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which `scripts/setup.sh` installs): credential prompt, key generator, registration, a running
//! import whose progress moves before its first file ends (per file, per type, the ETA and the
//! throughput chart), a finished one, the job page and its delete, a cancelled and a failed job,
//! the audit trail, registrations and revoke, server info. A screenshot of each screen goes to `target/ui-screenshots/`. The test fails, never
//! skips, when the browser or its driver is missing, and fails on any browser console error.
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use axum::http::Method;
use fantoccini::{
    elements::Element, key::Key, wd::WebDriverCompatibleCommand, Client, ClientBuilder, Locator,
};
use josekit::jwk::Jwk;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::fake_provider::FileFault;
use super::helpers::{observations, patients, ping, sign_assertion, TestApp, ADMIN_TOKEN};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest wait for anything the page should show; polling refreshes every 1.5 s.
const WAIT: Duration = Duration::from_secs(20);
/// The whole browser session, so a wedged browser fails the test instead of hanging it.
const SESSION_LIMIT: Duration = Duration::from_secs(120);
const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);
/// Tallest full-page screenshot, in CSS pixels.
const MAX_SHOT_HEIGHT: u64 = 4000;

/// chromedriver on a free loopback port, killed when dropped.
async fn start_chromedriver() -> (Child, String) {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: run `bash scripts/setup.sh`, which installs Debian's chromium and chromium-driver"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = match reqwest::get(format!("{url}/status")).await {
            Ok(res) => res.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true),
            Err(_) => false,
        };
        if ready {
            return (child, url);
        }
        assert!(Instant::now() < deadline, "chromedriver did not become ready on port {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn open_browser(driver_url: &str, profile: &Path) -> Client {
    let args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--no-first-run".into(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
    ];
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    let Value::Object(caps) = caps else { unreachable!() };
    ClientBuilder::native().capabilities(caps).connect(driver_url).await.expect("a Chromium session starts")
}

/// chromedriver's console log (`POST /session/{id}/se/log`); reading it empties it.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// Console errors since the last call, except failed loads whose message contains `expected`
/// (the deliberate 401 and 400 the test provokes).
async fn console_errors(c: &Client, expected: &[&str]) -> Result<Vec<String>> {
    let entries = c.issue_cmd(BrowserLog).await.context("reading the browser log")?;
    let entries = entries.as_array().cloned().unwrap_or_default();
    Ok(entries
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .filter(|m| !expected.iter().any(|x| m.contains(x)))
        .collect())
}

struct Shots {
    dir: PathBuf,
}

impl Shots {
    fn new() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("ui-screenshots");
        // Only this run's shots: a renamed screen leaves no stale picture behind.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// The whole page: the window grows to the page's height for the shot, then shrinks back.
    async fn take(&self, c: &Client, name: &str) -> Result<()> {
        let (width, height) = c.get_window_size().await?;
        let sizes =
            c.execute("return [document.documentElement.scrollHeight, window.innerHeight]", vec![]).await?;
        let page = sizes[0].as_u64().unwrap_or(height);
        let chrome = height.saturating_sub(sizes[1].as_u64().unwrap_or(height));
        let full = (page + chrome).clamp(height, MAX_SHOT_HEIGHT);
        c.set_window_size(width as u32, full as u32).await?;
        let png = c.screenshot().await.with_context(|| format!("screenshot {name}"))?;
        c.set_window_size(width as u32, height as u32).await?;
        std::fs::write(self.dir.join(format!("{name}.png")), png)?;
        Ok(())
    }
}

async fn find(c: &Client, css: &str) -> Result<Element> {
    c.wait().at_most(WAIT).for_element(Locator::Css(css)).await.with_context(|| format!("no element {css}"))
}

/// Wait until the element's visible text contains `needle`; returns the text.
async fn wait_text(c: &Client, css: &str, needle: &str) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await {
            if let Ok(text) = el.text().await {
                if text.contains(needle) {
                    return Ok(text);
                }
                last = text;
            }
        }
        if Instant::now() > deadline {
            bail!("{css} never showed {needle:?}; last text: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_value(c: &Client, css: &str, needle: &str) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = find(c, css).await?.prop("value").await?.unwrap_or_default();
        if value.contains(needle) {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{css} never held {needle:?}; last value: {value:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_gone(c: &Client, css: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !c.find_all(Locator::Css(css)).await?.is_empty() {
        ensure!(Instant::now() < deadline, "{css} is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn type_into(c: &Client, css: &str, text: &str) -> Result<()> {
    let el = find(c, css).await?;
    el.clear().await?;
    el.send_keys(text).await?;
    Ok(())
}

async fn click(c: &Client, css: &str) -> Result<()> {
    find(c, css).await?.click().await.with_context(|| format!("click {css}"))
}

/// Open a screen from the main navigation and wait for it to show.
async fn nav(c: &Client, screen: &str, section: &str) -> Result<()> {
    click(c, &format!("a[data-nav={screen}]")).await?;
    find(c, &format!("#{section}:not([hidden])")).await?;
    Ok(())
}

/// Confirm (or, with `false`, cancel by pressing Escape) the open confirmation dialog.
async fn answer_dialog(c: &Client, confirm: bool) -> Result<()> {
    find(c, "dialog#confirm-dialog[open]").await?;
    if confirm {
        click(c, "#confirm-ok").await?;
    } else {
        c.active_element().await?.send_keys(&char::from(Key::Escape).to_string()).await?;
    }
    wait_gone(c, "dialog#confirm-dialog[open]").await
}

/// Get a token as the provider registered in the browser would, and ping a static import.
async fn import_as(app: &TestApp, private: &Jwk, client_id: &str) -> Result<String> {
    let kid = private.key_id().ok_or_else(|| anyhow!("the generated key has no kid"))?.to_string();
    let assertion =
        sign_assertion(private, client_id, &format!("{}/auth/token", app.base), |_, h| h.set_key_id(&kid));
    let form = TestApp::token_form(&assertion);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = app.post_token(&form).await;
    ensure!(res.status() == 200, "token with the browser-made key: {}", res.text().await?);
    let token = res.json::<Value>().await?["access_token"].as_str().unwrap_or_default().to_string();
    let body = ping(&app.provider.manifest_url(), "static").to_string();
    let res = app.post_import_raw(Some(&token), "application/fhir+json", body).await;
    ensure!(res.status() == 202, "ping: {}", res.text().await?);
    let location = res.headers()["content-location"].to_str()?.to_string();
    Ok(location.rsplit('/').next().unwrap_or_default().to_string())
}

async fn flow(c: &Client, app: &TestApp, shots: &Shots) -> Result<()> {
    // Credential prompt: a wrong credential is refused on the spot, the right one is kept.
    c.goto(&format!("{}/", app.base)).await?;
    find(c, "#screen-credential:not([hidden])").await?;
    shots.take(c, "01-credential").await?;
    let enter = char::from(Key::Enter);
    type_into(c, "#admin-token", &format!("not-the-admin-token{enter}")).await?;
    wait_text(c, "#admin-token-error", "refused").await?;
    let unexpected = console_errors(c, &["/auth/registrations - Failed to load resource"]).await?;
    ensure!(unexpected.is_empty(), "console errors: {unexpected:?}");
    type_into(c, "#admin-token", &format!("{ADMIN_TOKEN}{enter}")).await?;
    find(c, "#screen-jobs:not([hidden])").await?;
    wait_text(c, "#session-state", "Admin credential entered").await?;

    // Key generator: JWK and PEM views, then carry the public key to the registration form.
    nav(c, "keys", "screen-keys").await?;
    ensure!(find(c, "#key-alg").await?.text().await?.contains("ES384 — recommended"));
    click(c, "#key-generate").await?;
    let public = wait_value(c, "#key-public", "\"kty\"").await?;
    let private = find(c, "#key-private").await?.prop("value").await?.unwrap_or_default();
    let private: Jwk = Jwk::from_bytes(private.as_bytes()).context("the private JWK parses")?;
    ensure!(private.parameter("d").is_some() && !public.contains("\"d\""), "public view leaks d");
    click(c, "#key-format-pem").await?;
    wait_value(c, "#key-public", "BEGIN PUBLIC KEY").await?;
    wait_value(c, "#key-private", "PRIVATE KEY").await?;
    wait_text(c, "#screen-keys .alert.warning", "Store the private key safely").await?;
    shots.take(c, "02-key-generator").await?;
    click(c, "#key-format-jwk").await?;
    click(c, "#key-use").await?;
    find(c, "#screen-register:not([hidden])").await?;
    let kid = private.key_id().unwrap_or_default().to_string();
    let jwks_text = wait_value(c, "#reg-jwk", &kid).await?;

    // Registration: inline validation, then a server refusal shown next to the field.
    type_into(c, "#reg-aud", "ehr.example/fhir").await?;
    click(c, "#register-submit").await?;
    wait_text(c, "#reg-aud-error", "not a complete URL").await?;
    wait_text(c, "#reg-consumer-error", "client id").await?;
    ensure!(find(c, "#reg-aud").await?.attr("aria-invalid").await?.as_deref() == Some("true"));
    shots.take(c, "03-register-validation").await?;
    type_into(c, "#reg-aud", &app.provider.base()).await?;
    type_into(c, "#reg-consumer", "consumer-at-fake").await?;
    type_into(c, "#reg-name", "Test EHR").await?;
    let mut without_kid: Value = serde_json::from_str(&jwks_text)?;
    without_kid["keys"][0].as_object_mut().context("the form holds a JWKS")?.remove("kid");
    type_into(c, "#reg-jwk", &without_kid["keys"][0].to_string()).await?;
    click(c, "#register-submit").await?;
    wait_text(c, "#register-error", "has no 'kid'").await?;
    wait_text(c, "#reg-jwk-error", "has no 'kid'").await?;
    shots.take(c, "04-register-server-error").await?;
    let unexpected = console_errors(c, &["/auth/register - Failed to load resource"]).await?;
    ensure!(unexpected.is_empty(), "console errors: {unexpected:?}");
    type_into(c, "#reg-jwk", &jwks_text).await?;
    // The optional origins sit behind a disclosure; a bad one is named beside its field.
    click(c, "#register-form details summary").await?;
    type_into(c, "#reg-token-origins", "https://files.example/path").await?;
    click(c, "#register-submit").await?;
    wait_text(c, "#reg-token-origins-error", "origin only").await?;
    let unexpected = console_errors(c, &["/auth/register - Failed to load resource"]).await?;
    ensure!(unexpected.is_empty(), "console errors: {unexpected:?}");
    type_into(c, "#reg-token-origins", &app.provider.alt_origin()).await?;
    click(c, "#register-submit").await?;
    find(c, "#register-result:not([hidden])").await?;
    let client_id = find(c, "#result-client-id").await?.text().await?;
    ensure!(uuid::Uuid::parse_str(&client_id).is_ok(), "client_id {client_id:?}");
    wait_text(c, "#result-token-endpoint", &format!("{}/auth/token", app.base)).await?;
    // The hand-off list names the ping URL and our JWKS too.
    wait_text(c, "#result-import-url", &format!("{}/$import", app.base)).await?;
    wait_text(c, "#result-jwks-url", &format!("{}/jwks", app.base)).await?;
    click(c, "button[data-copy=result-client-id]").await?;
    wait_text(c, "button[data-copy=result-client-id]", "Cop").await?;
    // Only the copy handler sets data-label (it keeps the label to restore after "Copied ✓").
    let copy = find(c, "button[data-copy=result-client-id]").await?;
    ensure!(
        copy.attr("data-label").await?.as_deref() == Some("Copy client_id"),
        "the copy handler did not run"
    );
    shots.take(c, "05-registered").await?;

    // An import by the provider just registered. The manifest announces each file's count, the
    // first file stalls half-way and the second is held, so the job page shows progress moving
    // before any file has ended, then the dashboard shows the job as far as the job page does:
    // 20 of its 30 announced resources.
    app.provider.true_counts();
    app.provider.add_file("o.ndjson", "Observation", observations(20));
    app.provider.add_file("p.ndjson", "Patient", patients(10));
    app.provider.fault_file("o.ndjson", vec![FileFault::StallHalfway(10_000)]);
    app.provider.hold_file("p.ndjson");
    let job_id = import_as(app, &private, &client_id).await?;
    nav(c, "jobs", "screen-jobs").await?;
    let row = format!("#jobs-table tr[data-job-id='{job_id}']");
    wait_text(c, &row, "importing").await?;
    wait_text(c, &row, "Test EHR").await?;
    click(c, &format!("{row} a")).await?;
    find(c, "#job-files tr[data-index='0'][data-state=downloading]").await?;
    wait_text(c, "#job-summary", "Time left").await?;
    let label = wait_text(c, "#job-progress-label", "done").await?;
    ensure!(!label.starts_with("0 %"), "progress moves before the first file ends: {label}");
    wait_text(c, "#job-files tr[data-index='0']", "of 20").await?;
    wait_text(c, "#job-types tr[data-type=Observation]", "20").await?;
    find(c, "#job-chart svg.throughput").await?;
    shots.take(c, "06-job-live").await?;
    nav(c, "jobs", "screen-jobs").await?;
    wait_text(c, &row, "66.6 %").await?;
    shots.take(c, "07-jobs-importing").await?;
    app.provider.release_files();
    find(c, &format!("{row}[data-state=completed]")).await?;
    let text = wait_text(c, &row, "100 %").await?;
    for expected in ["static", "2 / 2", "30", &app.provider.base()] {
        ensure!(text.contains(expected), "dashboard row lacks {expected:?}: {text}");
    }
    shots.take(c, "08-jobs-completed").await?;
    c.set_window_size(PHONE.0, PHONE.1).await?;
    shots.take(c, "09-jobs-phone").await?;
    c.set_window_size(DESKTOP.0, DESKTOP.1).await?;

    // Job page: per-file outcomes, per-type totals, the chart kept; Escape keeps the job,
    // confirming deletes it.
    click(c, &format!("{row} a")).await?;
    find(c, "#screen-job:not([hidden])").await?;
    wait_text(c, "#job-files tr[data-index='0']", "20 of 20").await?;
    wait_text(c, "#job-files tr[data-index='1']", "10 of 10").await?;
    wait_text(c, "#job-types tr[data-type=Patient]", "1 / 1").await?;
    wait_text(c, "#job-summary", "completed").await?;
    // How long it took, and times with their zone.
    wait_text(c, "#job-summary", "took ").await?;
    wait_text(c, "#job-summary", "Kept until").await?;
    let chart = find(c, "#job-chart svg.throughput").await?;
    ensure!(
        chart.attr("aria-label").await?.unwrap_or_default().contains("peak"),
        "the chart says what it shows"
    );
    wait_text(c, "#job-chart-caption", "average").await?;
    shots.take(c, "10-job").await?;
    click(c, "#job-delete").await?;
    find(c, "dialog#confirm-dialog[open]").await?;
    shots.take(c, "11-job-delete-confirm").await?;
    answer_dialog(c, false).await?;
    ensure!(app.get_job(&job_id).await.status() == 200, "Escape must keep the job");
    click(c, "#job-delete").await?;
    answer_dialog(c, true).await?;
    find(c, "#screen-jobs:not([hidden])").await?;
    wait_text(c, "#flash", "deleted").await?;
    wait_gone(c, &row).await?;
    ensure!(app.get_job(&job_id).await.status() == 404, "the job is gone");

    // A cancelled job stays listed as cancelled, and its poller is told so.
    app.provider.hold_file("p.ndjson");
    let cancelled = import_as(app, &private, &client_id).await?;
    c.goto(&format!("{}/#/jobs/{cancelled}", app.base)).await?;
    find(c, "#job-cancel:not([hidden])").await?;
    click(c, "#job-cancel").await?;
    answer_dialog(c, true).await?;
    wait_text(c, "#job-summary", "cancelled").await?;
    find(c, "#job-cancel[hidden]").await?;
    shots.take(c, "12-job-cancelled").await?;
    ensure!(app.get_job(&cancelled).await.status() == 410, "the provider's poll learns it was cancelled");
    app.provider.release_files();

    // A failed job: its reason in words, in a row of normal height, and on its page.
    app.provider.reject_all_tokens();
    let failed = import_as(app, &private, &client_id).await?;
    nav(c, "jobs", "screen-jobs").await?;
    let failed_row = format!("#jobs-table tr[data-job-id='{failed}']");
    find(c, &format!("{failed_row}[data-state=failed]")).await?;
    wait_text(c, &failed_row, "401").await?;
    let (_, _, _, height) = find(c, &failed_row).await?.rectangle().await?;
    ensure!(height < 200.0, "a failure's text keeps the row short: {height} px");
    click(c, &format!("{failed_row} a")).await?;
    wait_text(c, "#job-summary", "Failure").await?;
    wait_text(c, "#job-summary", "401").await?;
    wait_text(c, "#job-files-empty", "failed before").await?;
    shots.take(c, "13-job-failed").await?;

    // A Bulk Submit submission: its job page shows the submission, manifest by manifest.
    app.provider.serve_openly();
    let ehr = super::bulk_submit::Submitter::register_at(app, "ui-ehr", &app.provider.base()).await;
    let res = ehr
        .submit(vec![
            json!({"name": "submissionId", "valueString": "ui-1"}),
            json!({"name": "manifestUrl", "valueUrl": app.provider.manifest_url()}),
            json!({"name": "submissionStatus", "valueCoding": {"system": "http://hl7.org/fhir/event-status", "code": "completed"}}),
        ])
        .await;
    ensure!(res.status() == 200, "submit: {}", res.text().await?);
    let status = ehr.status_url("ui-1").await;
    let submitted = status.rsplit('/').next().unwrap_or_default();
    c.goto(&format!("{}/#/jobs/{submitted}", app.base)).await?;
    wait_text(c, "#job-submission-summary", "ui-1").await?;
    wait_text(c, "#job-submission-summary", "ui-ehr").await?;
    wait_text(c, "#job-manifests", &app.provider.manifest_url()).await?;
    find(c, "#job-manifests tr[data-seq='0'][data-state=done]").await?;
    shots.take(c, "13b-submission").await?;

    // The audit trail names the registration, the cancel and the delete.
    nav(c, "audit", "screen-audit").await?;
    for action in ["registration created", "job cancelled", "job deleted", "ping accepted"] {
        wait_text(c, "#audit-table", action).await?;
    }
    // The refused pings alone, then back to everything.
    find(c, "#audit-kind").await?.select_by_value("refused").await?;
    find(c, "#audit-empty:not([hidden])").await?;
    find(c, "#audit-kind").await?.select_by_value("all").await?;
    wait_text(c, "#audit-table", "ping accepted").await?;
    shots.take(c, "14-audit").await?;

    // A registration with a sync plan (run only when asked) shows it, and pulls on a click.
    let res = app
        .register(&json!({"jwks": app.public_jwks(), "consumer_client_id": "consumer-at-fake", "aud": app.provider.base(),
            "name": "Synced EHR", "sync": {"export_url": app.provider.export_url(), "type": "Patient"}}))
        .await;
    ensure!(res.status() == 200, "register with a plan: {}", res.text().await?);
    let synced = res.json::<Value>().await?["client_id"].as_str().unwrap_or_default().to_string();
    nav(c, "registrations", "screen-registrations").await?;
    let synced_row = format!("#registrations-table tr[data-client-id='{synced}']");
    wait_text(c, &synced_row, "sync plan:").await?;
    wait_text(c, &synced_row, "(_type Patient), only when asked").await?;
    click(c, &format!("{synced_row} button[data-sync-now]")).await?;
    find(c, "#screen-job:not([hidden])").await?;
    wait_text(c, "#flash", "A sync pull started").await?;
    wait_text(c, "#job-summary", "dynamic").await?;

    // Registrations: the browser-made registration, then revoke it.
    nav(c, "registrations", "screen-registrations").await?;
    let reg_row = format!("#registrations-table tr[data-client-id='{client_id}']");
    wait_text(c, &reg_row, &kid).await?;
    wait_text(c, &reg_row, "1 inline key").await?;
    // Its export's sync state: the last job failed, the next pull starts from the last complete one.
    wait_text(c, &reg_row, "last failed").await?;
    wait_text(c, &reg_row, "next pull from 2026-01-01T00:00:00Z").await?;
    wait_text(c, &reg_row, &format!("token also to: {}", app.provider.alt_origin())).await?;
    // What the resource store holds of it (its first import's resources).
    wait_text(c, &format!("{reg_row} [data-stored]"), "in the resource store: ").await?;
    wait_text(c, &format!("{reg_row} [data-stored]"), " Patient").await?;
    shots.take(c, "15-registrations").await?;
    click(c, &format!("{reg_row} button[data-revoke]")).await?;
    answer_dialog(c, true).await?;
    wait_text(c, &reg_row, "revoked").await?;

    // Server info.
    nav(c, "info", "screen-info").await?;
    wait_text(c, "#info-list", "Token Endpoint").await?;
    wait_text(c, "#info-list", &format!("{}/auth/token", app.base)).await?;
    shots.take(c, "16-server-info").await?;

    let unexpected = console_errors(c, &[]).await?;
    ensure!(unexpected.is_empty(), "console errors: {unexpected:?}");
    Ok(())
}

#[tokio::test]
async fn a_person_registers_a_provider_and_follows_its_import_in_headless_chromium() {
    // Arrange: files on disk, and the current resources in the store (shown per registration).
    let app = super::helpers::spawn_app_with(|c| {
        use bulk_import::destination::{resource_store::StoreUrl, DestinationKind};
        let store = StoreUrl::Sqlite(c.data_dir.join("resources.sqlite"));
        c.destination =
            DestinationKind::Several(vec![DestinationKind::TmpFs, DestinationKind::ResourceStore(store)]);
    })
    .await;
    let (mut driver, driver_url) = start_chromedriver().await;
    let profile = TempDir::new().unwrap();
    let client = open_browser(&driver_url, profile.path()).await;
    let shots = Shots::new();

    // Act
    let outcome = tokio::time::timeout(SESSION_LIMIT, flow(&client, &app, &shots)).await;
    if !matches!(outcome, Ok(Ok(()))) {
        let _ = shots.take(&client, "failure").await;
    }
    let _ = client.close().await;
    let _ = driver.kill().await;

    // Assert
    match outcome {
        Ok(result) => result.unwrap(),
        Err(_) => panic!("the browser flow took longer than {SESSION_LIMIT:?}"),
    }
    // The registration made in the browser is stored as shown, and now revoked.
    let res = app
        .http
        .get(format!("{}/auth/registrations", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let all: Value = res.json().await.unwrap();
    let made = all["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["client_id"] != app.client_id.as_str() && r["submitter"].is_null() && r["sync"].is_null())
        .cloned()
        .expect("the browser registered a provider");
    assert_eq!(made["aud"], app.provider.base());
    assert_eq!(made["consumer_client_id"], "consumer-at-fake");
    assert!(made["revoked_at"].is_i64());
}

/// WCAG 2 relative luminance of `#rrggbb`.
fn luminance(hex: &str) -> f64 {
    let channel = |i: usize| {
        let c = u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap() as f64 / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(0) + 0.7152 * channel(1) + 0.0722 * channel(2)
}

#[test]
fn the_focus_ring_stands_out_at_3_to_1_against_every_background() {
    let css = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/static/app.css")).unwrap();
    let var = |name: &str| {
        let at = css.find(&format!("--{name}:")).unwrap_or_else(|| panic!("--{name} in app.css"));
        css[at..]
            .split(':')
            .nth(1)
            .unwrap()
            .trim()
            .trim_end_matches(';')
            .split(';')
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    let focus = luminance(&var("focus"));
    for background in ["bg", "surface", "info-bg", "ok-bg", "warn-bg", "error-bg"] {
        let b = luminance(&var(background));
        let ratio = (focus.max(b) + 0.05) / (focus.min(b) + 0.05);
        assert!(ratio >= 3.0, "focus on --{background}: {ratio:.2}:1 (WCAG 1.4.11 asks for 3:1)");
    }
}
