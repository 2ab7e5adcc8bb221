//! One test per row of `shared/docs/real-providers.md`: the fake provider behaves like the SMART
//! reference server, object-store file hosts, CDNs and hostile providers, and we import from it.
use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::http::Method;
use serde_json::{json, Value};

use super::{
    fake_provider::{FakeFile, RateLimit, StatusStep, FILE_SIM},
    helpers::{observations, patients, ping, spawn_app, spawn_app_with, TestApp},
};

/// The diagnostics of each file's outcome, in manifest order.
async fn outcome_texts(app: &TestApp, id: &str) -> Vec<String> {
    app.get_outcomes(id)
        .await
        .iter()
        .map(|o| o["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn lines_of(resource_type: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"resourceType\":\"{resource_type}\",\"id\":\"{resource_type}-{i}\"}}\n"))
        .collect()
}

/// An app whose SSRF guard allows no internal address off the provider's own origins, and
/// knows `files.example.test` (a public-looking name) as 127.0.0.1.
async fn strict_app() -> TestApp {
    spawn_app_with(|c| {
        c.internal_addresses.same_as_provider = false;
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        c.dns_overrides = Arc::new([("files.example.test".to_string(), vec![loopback])].into());
    })
    .await
}

#[tokio::test]
async fn an_authenticated_dynamic_import_from_the_reference_layout_gives_exact_counts_per_type() {
    // Arrange: base ROOT/<sim>/fhir, status ROOT/fhir/bulkstatus/1, files ROOT/<file-sim>/fhir/bulkfiles,
    // token endpoint ROOT/auth/token (discovered under the sim base), paged manifest, wrong counts.
    let mut app = spawn_app().await;
    app.provider.reference_layout();
    app.reregister(json!({"aud": app.provider.sim_base()})).await;
    let types = [("Patient", 3), ("Condition", 5), ("Observation", 7), ("CarePlan", 2), ("Encounter", 4)];
    for (t, n) in types {
        app.provider.add_file(&format!("1.{t}.ndjson"), t, lines_of(t, n));
    }
    app.provider.wrong_counts();
    app.provider.page_size(2);
    app.provider.script_status(vec![StatusStep::Pending(Some(0)); 2]);

    // Act
    let id = app.start_import(&format!("{}/$export", app.provider.sim_base()), "dynamic").await;
    let body = app.completed(&id).await;

    // Assert: every type, counted by us (the manifest said 999 each), byte for byte.
    let want: Value =
        types.iter().map(|(t, n)| (t.to_string(), json!(n))).collect::<serde_json::Map<_, _>>().into();
    assert_eq!(body["extension"]["resourcesByType"], want);
    assert_eq!(body["extension"]["resources"], 21);
    assert_eq!(body["extension"]["result"], "completed");
    assert_eq!(app.read(&id, "Condition.1.ndjson"), lines_of("Condition", 5));
    let files = app.provider.requests_to(&format!("/{FILE_SIM}/fhir/bulkfiles/"));
    assert_eq!(files.len(), 5);
    assert!(files.iter().all(|r| r.authorization.as_deref().is_some_and(|a| a.starts_with("Bearer "))));
    let status = app.provider.requests_to("/fhir/bulkstatus/");
    assert!(status.iter().all(|r| r.authorization.is_some()));
    assert_eq!(
        status.iter().filter(|r| r.query.as_deref().is_some_and(|q| q.starts_with("page="))).count(),
        2
    );
    assert_eq!(app.provider.requests_to("/auth/token").len(), 1);
    assert_eq!(
        app.provider.requests_to(&format!("/{}/fhir/.well-known/", super::fake_provider::BASE_SIM)).len(),
        1
    );
}

#[tokio::test]
async fn files_on_another_host_without_requires_access_token_come_without_our_token() {
    let app = spawn_app().await;
    app.provider.files_on_alt_origin();
    app.provider.requires_access_token(false);
    app.provider.add_file("p.ndjson", "Patient", patients(3));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&id).await;
    assert_eq!(app.read(&id, "Patient.1.ndjson"), patients(3));
    let files = app.provider.requests_to("/fhir/files/");
    assert_eq!(files.len(), 1);
    assert!(files[0].authorization.is_none(), "our token went to a file host");
}

#[tokio::test]
async fn a_file_needing_our_token_on_another_origin_fails_saying_why_until_the_origin_is_listed() {
    // Arrange: the manifest says requiresAccessToken, the files are on another origin.
    let mut app = spawn_app().await;
    app.provider.files_on_alt_origin();
    app.provider.add_file("p.ndjson", "Patient", patients(2));

    // Act / Assert: refused without contacting that origin at all.
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 1);
    assert_eq!(body["extension"]["result"], "completed-with-errors");
    let text = &outcome_texts(&app, &id).await[0];
    assert!(text.contains("requires our access token") && text.contains("token_origins"), "{text}");
    assert!(text.contains(&app.provider.alt_origin()), "{text}");
    assert!(app.provider.requests_to("/fhir/files/").is_empty());

    // Listed as a token origin, it gets the token and the file imports.
    app.reregister(json!({"token_origins": [app.provider.alt_origin()]})).await;
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 0);
    assert!(app.provider.requests_to("/fhir/files/")[0].authorization.is_some());
}

#[tokio::test]
async fn pinned_file_origins_refuse_other_hosts_and_redirect_hops_to_them() {
    let mut app = spawn_app().await;
    app.reregister(json!({"file_origins": ["https://cdn.example"]})).await;
    app.provider.requires_access_token(false);
    app.provider.add_file("here.ndjson", "Patient", patients(1));
    app.provider.add_file("hop.ndjson", "Patient", "");
    let alt = app.provider.alt_origin();
    app.provider.redirect_file("hop.ndjson", &format!("{alt}/fhir/files/here.ndjson"));
    app.provider.add_manifest_url("Patient", &format!("{alt}/fhir/files/here.ndjson"));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    // The provider's own origin is always allowed; the other origin never, even by redirect.
    assert_eq!(body["extension"]["failedFiles"], 2);
    let texts = outcome_texts(&app, &id).await;
    assert!(texts[0].contains("imported"), "{}", texts[0]);
    for t in &texts[1..] {
        assert!(t.contains("not among the registration's file_origins (https://cdn.example)"), "{t}");
    }
    assert_eq!(app.provider.requests_to("/fhir/files/here.ndjson").len(), 1);
}

#[tokio::test]
async fn a_public_looking_name_that_resolves_to_loopback_is_refused_by_the_guard() {
    // Arrange: files.example.test resolves to 127.0.0.1, and no internal address is allowed.
    let app = strict_app().await;
    app.provider.requires_access_token(false);
    let port = app.provider.alt_addr.port();
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    app.provider
        .add_manifest_url("Patient", &format!("http://files.example.test:{port}/fhir/files/p.ndjson"));
    app.provider
        .add_manifest_url("Patient", &format!("http://[::ffff:127.0.0.1]:{port}/fhir/files/p.ndjson"));
    app.provider.add_file("hop.ndjson", "Patient", "");
    app.provider
        .redirect_file("hop.ndjson", &format!("http://files.example.test:{port}/fhir/files/p.ndjson"));
    app.provider.add_file("meta.ndjson", "Patient", "");
    app.provider.redirect_file("meta.ndjson", "http://169.254.169.254/latest/meta-data/");

    // Act
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;

    // Assert: the provider's own file imports; the name, the mapped literal, the redirect to
    // the name and the metadata address are refused, and nothing reached the other listener.
    assert_eq!(body["extension"]["failedFiles"], 4, "{body}");
    let texts = outcome_texts(&app, &id).await;
    assert!(texts[0].contains("imported"), "{}", texts[0]);
    assert!(
        texts[1].contains("redirect") && texts[1].contains("resolves to 127.0.0.1, a loopback address"),
        "{}",
        texts[1]
    );
    assert!(texts[2].contains("cloud metadata"), "{}", texts[2]);
    assert!(
        texts[3].contains("files.example.test resolves to 127.0.0.1, a loopback address"),
        "{}",
        texts[3]
    );
    assert!(texts[4].contains("::ffff:127.0.0.1 is a loopback address"), "{}", texts[4]);
    for t in &texts[1..] {
        assert!(!t.contains("attempts"), "a refusal is not retried: {t}");
    }
    let codes: Vec<Value> =
        app.get_outcomes(&id).await.iter().map(|o| o["issue"][0]["code"].clone()).collect();
    assert!(codes[1..].iter().all(|c| c == "security"), "a refusal is no transient failure: {codes:?}");
    assert_eq!(app.provider.requests_to("/fhir/files/p.ndjson").len(), 1);
}

#[tokio::test]
async fn a_provider_on_one_internal_class_cannot_redirect_us_into_another() {
    // The default policy: the provider is on loopback, so loopback is allowed, but not the private
    // network a name of its choosing points at (the connection is never tried).
    let app = spawn_app_with(|c| {
        let private: IpAddr = "10.0.0.5".parse().unwrap();
        c.dns_overrides = Arc::new([("intranet.example.test".to_string(), vec![private])].into());
    })
    .await;
    app.provider.requires_access_token(false);
    app.provider.add_file("hop.ndjson", "Patient", "");
    app.provider.redirect_file("hop.ndjson", "http://intranet.example.test/secret.ndjson");
    app.provider.add_file("lit.ndjson", "Patient", "");
    app.provider.redirect_file("lit.ndjson", "http://[::ffff:10.0.0.5]/secret.ndjson");
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 2, "{body}");
    let texts = outcome_texts(&app, &id).await;
    assert!(texts[0].contains("10.0.0.5, a private address"), "{}", texts[0]);
    assert!(texts[1].contains("::ffff:10.0.0.5 is a private address"), "{}", texts[1]);
}

#[tokio::test]
async fn an_intranet_provider_may_serve_files_from_its_own_class_of_address() {
    // The default policy: the provider is on loopback, so a loopback file host is allowed.
    let app = spawn_app_with(|c| {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        c.dns_overrides = Arc::new([("files.example.test".to_string(), vec![loopback])].into());
    })
    .await;
    app.provider.requires_access_token(false);
    let port = app.provider.alt_addr.port();
    app.provider
        .add_manifest_url("Patient", &format!("http://files.example.test:{port}/fhir/files/p.ndjson"));
    app.provider.add_file("p.ndjson", "Patient", patients(2));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 0, "{body}");
    assert_eq!(app.provider.requests_to("/fhir/files/p.ndjson").len(), 2);
}

#[tokio::test]
async fn a_discovered_token_endpoint_on_another_origin_over_http_gets_no_assertion() {
    let app = spawn_app().await;
    app.provider.advertise_token_endpoint(&format!("{}/auth/token", app.provider.alt_origin()));
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let text = app.failed(&id).await;
    assert!(text.contains("not https") && text.contains("pin token_endpoint"), "{text}");
    assert!(app.provider.requests_to("/auth/token").is_empty(), "our assertion was sent");
}

#[tokio::test]
async fn an_https_token_endpoint_on_another_origin_passes_the_guard_and_a_refusal_is_final() {
    // Cerner-style: the authorization host is elsewhere. Here its name resolves to loopback,
    // which the strict guard refuses: one refusal, no retries, no assertion sent.
    let app = spawn_app_with(|c| {
        c.internal_addresses.same_as_provider = false;
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        c.dns_overrides = Arc::new([("auth.example.test".to_string(), vec![loopback])].into());
    })
    .await;
    let port = app.provider.alt_addr.port();
    app.provider.advertise_token_endpoint(&format!("https://auth.example.test:{port}/auth/token"));
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let text = app.failed(&id).await;
    assert!(text.contains("auth.example.test resolves to 127.0.0.1, a loopback address"), "{text}");
    assert_eq!(app.provider.requests_to("/fhir/.well-known/").len(), 1, "discovery ran once: not retried");
    assert!(app.provider.requests_to("/auth/token").is_empty());
}

#[tokio::test]
async fn a_pinned_token_endpoint_serves_a_provider_without_discovery_and_is_shown() {
    // Arrange: no discovery document at all; the operator pins the endpoint.
    let mut app = spawn_app().await;
    app.provider.hide_discovery();
    let endpoint = format!("{}/auth/token", app.provider.origin());
    app.reregister(json!({"token_endpoint": endpoint})).await;
    app.provider.add_file("p.ndjson", "Patient", patients(2));

    // Act
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;

    // Assert
    assert_eq!(app.provider.requests_to("/auth/token").len(), 1);
    assert!(app.provider.requests_to("/fhir/$export")[0].authorization.is_some());
    let shown = app.admin_get(&format!("/auth/registrations/{}", app.client_id)).await;
    assert_eq!(shown["token_endpoint"], endpoint);
    assert_eq!(shown["token_endpoint_in_use"], endpoint);
}

#[tokio::test]
async fn the_discovered_token_endpoint_is_shown_on_the_registration() {
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;
    let shown = app.admin_get(&format!("/auth/registrations/{}", app.client_id)).await;
    assert_eq!(shown["token_endpoint"], Value::Null);
    assert_eq!(shown["token_endpoint_in_use"], format!("{}/auth/token", app.provider.origin()));
}

#[tokio::test]
async fn registration_origins_must_be_origins() {
    let app = spawn_app().await;
    for (field, value) in [
        ("token_origins", json!(["https://auth.example/path"])),
        ("file_origins", json!(["ftp://files.example"])),
        ("token_endpoint", json!("not a url")),
    ] {
        let mut body =
            json!({"jwks": app.public_jwks(), "consumer_client_id": "c", "aud": app.provider.base()});
        body[field] = value;
        let res = app.register(&body).await;
        assert_eq!(res.status(), 400, "{field}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"], "invalid_request");
        assert!(err["error_description"].as_str().unwrap().starts_with(field), "{err}");
    }
}

#[tokio::test]
async fn provider_reported_errors_are_errors_of_the_import_and_never_data() {
    // Arrange: the reference server moves failed files into error[] with an OperationOutcome.
    let app = spawn_app().await;
    app.provider.add_file("1.Patient.ndjson", "Patient", patients(2));
    let failure = "{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\",\"code\":\"processing\",\"details\":{\"text\":\"Failed to export 2.CarePlan.ndjson\"}}]}\n";
    app.provider.add_error_file("err.ndjson", failure);

    // Act
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let res = app.wait_for_job(&id).await;

    // Assert: partial everywhere a person looks.
    assert_eq!(res.status(), 200);
    let x_status = res.headers()["x-status"].to_str().unwrap().to_string();
    assert_eq!(x_status, "completed with errors: the provider reported 1 error(s)");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["extension"]["result"], "completed-with-errors");
    assert_eq!(body["extension"]["providerErrors"], 1);
    assert_eq!(body["extension"]["resources"], 2, "the outcome is not counted as data");
    let outcomes = app.get_outcomes(&id).await;
    let report = &outcomes[1]["issue"];
    assert_eq!(report[0]["severity"], "error");
    assert_eq!(report[1]["severity"], "error");
    assert_eq!(report[1]["diagnostics"], "the provider reported: Failed to export 2.CarePlan.ndjson");
    let names: Vec<String> = std::fs::read_dir(app.jobs_dir(&id))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["Patient.1.ndjson"]);
    let jobs = app.admin_get(&format!("/admin/jobs/{id}")).await;
    assert_eq!(jobs["state"], "completed-with-errors", "{jobs}");
}

#[tokio::test]
async fn deleted_files_are_imported_as_bundles() {
    let app = spawn_app().await;
    let bundle = "{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[{\"request\":{\"method\":\"DELETE\",\"url\":\"Patient/1\"}}]}\n";
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    app.provider.add_deleted_file("del.ndjson", bundle);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 0);
    assert_eq!(app.read(&id, "deleted-Bundle.1.ndjson"), bundle);
}

#[tokio::test]
async fn an_absolute_unix_time_retry_after_is_a_point_in_time_not_57_years() {
    // The reference server's 429: Unix milliseconds first, seconds after; others send dates.
    let app = spawn_app_with(|c| c.limits.max_retry_after = Duration::from_secs(600)).await;
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    app.provider.script_status(vec![
        StatusStep::TooManyUntil(2, true),
        StatusStep::TooManyUntil(2, false),
        StatusStep::PendingUntilDate(2),
    ]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let res = app.wait_for_job_within(&id, Duration::from_secs(20)).await;
    assert_eq!(res.status(), 200);
    // Each wait was honoured on its own: about 2 s after the millisecond time, 1-2 s after the
    // ones in whole seconds (they round down), none taken literally (57 years) or ignored.
    let polls: Vec<Instant> = app
        .provider
        .requests_to("/fhir/status/")
        .into_iter()
        .filter(|r| r.method == Method::GET)
        .map(|r| r.at)
        .collect();
    assert_eq!(polls.len(), 4, "three answers to wait after, then the manifest");
    let waits: Vec<Duration> = polls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(waits[0] >= Duration::from_millis(1800) && waits[0] < Duration::from_secs(4), "{waits:?}");
    for w in &waits[1..] {
        assert!(*w >= Duration::from_millis(900) && *w < Duration::from_secs(4), "{waits:?}");
    }
}

#[tokio::test]
async fn polls_of_a_running_export_back_off_from_its_retry_after() {
    let app = spawn_app_with(|c| c.limits.max_poll_interval = Duration::from_secs(60)).await;
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    // Retry-After: 0 on every 202 (the reference server says 1): we still double the wait.
    app.provider.script_status(vec![StatusStep::Pending(Some(0)); 5]);
    let started = Instant::now();
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;
    // 20 ms doubling five times: 20 + 40 + 80 + 160 + 320 ms, where a literal reading waits ~0.
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
    let polls: Vec<_> =
        app.provider.requests_to("/fhir/status/").into_iter().filter(|r| r.method == Method::GET).collect();
    assert_eq!(polls.len(), 6);
}

/// Two dynamic jobs of one provider polling a limiter of `max` requests a second at once.
async fn two_jobs_under_a_limiter(per_minute: u32, burst: u32) -> TestApp {
    let app = spawn_app_with(|c| {
        c.limits.provider_requests_per_minute = per_minute;
        c.limits.provider_request_burst = burst;
    })
    .await;
    app.provider.rate_limit(RateLimit {
        max: 6,
        window: Duration::from_secs(1),
        block: Duration::from_secs(2),
    });
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    app.provider.script_status(vec![StatusStep::Pending(Some(0)); 10]);
    let token = app.token().await;
    let body = ping(&app.provider.export_url(), "dynamic").to_string();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let res = app.post_import_raw(Some(&token), "application/fhir+json", body.clone()).await;
        assert_eq!(res.status(), 202);
        ids.push(res.headers()["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_string());
    }
    for id in &ids {
        let res = app.wait_for_job_within(id, Duration::from_secs(30)).await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }
    app
}

#[tokio::test]
async fn two_concurrent_long_exports_from_one_provider_never_draw_a_429() {
    // Our budget: 4 a second per origin and 2 at once, shared by both jobs: at most 6 in any
    // second, which the limiter allows.
    let app = two_jobs_under_a_limiter(240, 2).await;
    assert_eq!(app.provider.rate_limited(), 0);
    // Without a shared budget the same two jobs trip it (so the assertion above can fail).
    let app = two_jobs_under_a_limiter(60_000, 0).await;
    assert!(app.provider.rate_limited() > 0);
}

#[tokio::test]
async fn an_organized_by_patient_export_imports_mixed_files_with_counts_per_type() {
    let app = spawn_app().await;
    app.provider.untyped_entries();
    let header = "{\"resourceType\":\"Parameters\",\"parameter\":[{\"name\":\"header\",\"valueReference\":{\"reference\":\"Patient/1\"}}]}\n";
    let stratum = format!(
        "{header}{}{}{}",
        lines_of("Patient", 1),
        lines_of("Condition", 3),
        lines_of("Observation", 2)
    );
    app.provider.add_file("1.ndjson", "", stratum.clone());
    app.provider.add_file("2.ndjson", "", format!("{header}{}", lines_of("Patient", 1)));
    let res = app
        .post_import(&json!({"resourceType":"Parameters","parameter":[
            {"name":"exportUrl","valueUrl": app.provider.export_url()},
            {"name":"organizeOutputBy","valueString":"Patient"}]}))
        .await;
    assert_eq!(res.status(), 202);
    let id = res.headers()["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["resourcesByType"], json!({"Condition": 3, "Observation": 2, "Patient": 2}));
    assert_eq!(body["extension"]["resources"], 7, "headers are not resources");
    assert_eq!(app.read(&id, "Mixed.1.ndjson"), stratum);
    let kickoff: Value = serde_json::from_str(&app.provider.requests_to("/fhir/$export")[0].body).unwrap();
    assert!(kickoff["parameter"].as_array().unwrap().iter().any(|p| p["name"] == "organizeOutputBy"));
}

#[tokio::test]
async fn an_output_format_we_cannot_import_is_refused_at_the_ping() {
    let app = spawn_app().await;
    let res = app
        .post_import(&json!({"resourceType":"Parameters","parameter":[
            {"name":"exportUrl","valueUrl": app.provider.export_url()},
            {"name":"_outputFormat","valueString":"text/csv"}]}))
        .await;
    assert_eq!(res.status(), 400);
    let oo: Value = res.json().await.unwrap();
    let text = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(text.contains("text/csv") && text.contains("application/fhir+ndjson"), "{text}");
    assert!(app.provider.requests_to("/fhir/$export").is_empty());
}

#[tokio::test]
async fn a_refused_scope_fails_at_once_and_read_scopes_are_asked_for_by_default() {
    let mut app = spawn_app().await;
    app.provider.refuse_scope_containing("*.*");
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    // Our default (system/*.read) is granted.
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;
    assert!(app.provider.requests_to("/auth/token")[0].body.contains("scope=system%2F*.read"));
    // A registration asking for system/*.* is refused, once, with the provider's words.
    app.reregister(json!({"scope": "system/*.*"})).await;
    let before = app.provider.requests_to("/auth/token").len();
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let text = app.failed(&id).await;
    assert!(text.contains("invalid_scope") && text.contains("system/*.*"), "{text}");
    assert_eq!(app.provider.requests_to("/auth/token").len(), before + 1);
}

#[tokio::test]
async fn a_token_every_request_refuses_fails_after_one_fresh_token() {
    let app = spawn_app().await;
    app.provider.reject_all_tokens();
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    let text = app.failed(&id).await;
    assert!(text.contains("401"), "{text}");
    // The kick-off, then once more with a fresh token; then it stops.
    assert_eq!(app.provider.requests_to("/auth/token").len(), 2);
    assert_eq!(app.provider.requests_to("/fhir/$export").len(), 2);
}

#[tokio::test]
async fn a_transient_first_status_failure_is_retried() {
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", patients(1));
    app.provider.script_status(vec![StatusStep::TransientError]);
    let id = app.start_import(&app.provider.export_url(), "dynamic").await;
    app.completed(&id).await;
    assert_eq!(
        app.provider.requests_to("/fhir/status/").iter().filter(|r| r.method == Method::GET).count(),
        2
    );
}

#[tokio::test]
async fn an_expired_file_and_an_html_error_page_fail_alone_with_short_messages() {
    let app = spawn_app().await;
    app.provider.add_file("ok.ndjson", "Observation", observations(3));
    app.provider.push_file(FakeFile { expired: true, ..FakeFile::new("old.ndjson", "Observation", "") });
    app.provider.push_file(FakeFile { html_404: true, ..FakeFile::new("html.ndjson", "Observation", "") });
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    let body = app.completed(&id).await;
    assert_eq!(body["extension"]["failedFiles"], 2);
    let texts = outcome_texts(&app, &id).await;
    assert!(texts[1].contains("410 Gone: File expired"), "{}", texts[1]);
    assert!(texts[2].ends_with("the provider answered 404 Not Found"), "{}", texts[2]);
    assert!(!texts[2].contains('<') && texts[2].len() < 300, "{}", texts[2]);
}
