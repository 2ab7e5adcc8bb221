//! `POST /$import`: every refusal is a 4xx OperationOutcome naming the problem.
use serde_json::{json, Value};

use super::helpers::{ping, spawn_app, spawn_app_with};

async fn outcome(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    assert_eq!(res.headers()["content-type"], "application/fhir+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    (status, body["issue"][0]["diagnostics"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_ping_without_a_valid_token_is_refused() {
    let app = spawn_app().await;
    let body = ping(&app.provider.export_url(), "dynamic").to_string();
    let res = app.post_import_raw(None, "application/fhir+json", body.clone()).await;
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let (status, text) = outcome(res).await;
    assert_eq!(status, 401);
    assert!(text.contains("authorization is required"), "{text}");
    let (status, _) =
        outcome(app.post_import_raw(Some("not-a-token"), "application/fhir+json", body.clone()).await).await;
    assert_eq!(status, 401);
    let res = app
        .http
        .post(format!("{}/$import", app.base))
        .header("authorization", "Basic abc")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(outcome(res).await.0, 401);
}

#[tokio::test]
async fn bad_ping_bodies_get_a_400_that_names_the_problem() {
    let app = spawn_app().await;
    let token = app.token().await;
    let url = app.provider.export_url();
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "not valid JSON"),
        (json!({"resourceType": "Patient"}).to_string(), "Parameters"),
        (json!({"resourceType": "Parameters", "parameter": []}).to_string(), "exportUrl parameter is required"),
        (
            json!({"resourceType":"Parameters","parameter":[{"name":"exportUrl","valueUrl":"not a url"}]}).to_string(),
            "absolute http(s) URL",
        ),
        (
            json!({"resourceType":"Parameters","parameter":[{"name":"exportUrl","valueUrl":url},{"name":"exportType","valueCode":"push"}]})
                .to_string(),
            "invalid exportType",
        ),
        (
            json!({"resourceType":"Parameters","parameter":[{"name":"exportUrl","valueUrl":url},{"name":"_sort","valueString":"x"}]})
                .to_string(),
            "'_sort' is not supported",
        ),
        (ping("https://evil.example/fhir/$export", "dynamic").to_string(), "not under the registered provider's base URL"),
        (
            ping(&format!("{}/fhirX/$export", app.provider.origin()), "dynamic").to_string(),
            "not under the registered provider's base URL",
        ),
    ];
    for (body, expected) in cases {
        let (status, text) =
            outcome(app.post_import_raw(Some(&token), "application/fhir+json", body.clone()).await).await;
        assert_eq!(status, 400, "{body}");
        assert!(text.contains(expected), "{body}: {text}");
    }
    // Nothing was contacted for refused pings.
    assert!(app.provider.requests_to("/fhir/$export").is_empty());
}

#[tokio::test]
async fn unsupported_headers_and_media_types_are_refused() {
    let app = spawn_app().await;
    let token = app.token().await;
    let body = ping(&app.provider.export_url(), "dynamic").to_string();
    let send = |accept: Option<&str>, prefer: Option<&str>, ct: &str| {
        let mut req = app
            .http
            .post(format!("{}/$import", app.base))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", ct)
            .body(body.clone());
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        if let Some(p) = prefer {
            req = req.header("prefer", p);
        }
        req.send()
    };
    let (status, text) = outcome(send(Some("text/html"), None, "application/fhir+json").await.unwrap()).await;
    assert_eq!(status, 406, "{text}");
    let (status, text) =
        outcome(send(None, Some("respond-sync"), "application/fhir+json").await.unwrap()).await;
    assert_eq!((status, text.contains("respond-async")), (400, true));
    let (status, _) = outcome(send(None, None, "text/plain").await.unwrap()).await;
    assert_eq!(status, 415);
    // The defaults and the accepted forms pass.
    let res = send(Some("application/fhir+json"), Some("respond-async"), "application/json; charset=utf-8")
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let app = spawn_app_with(|c| c.limits.max_body_bytes = 4096).await;
    let token = app.token().await;
    let big = json!({"resourceType":"Parameters","parameter":[{"name":"exportUrl","valueUrl": "x".repeat(10_000)}]});
    let (status, text) =
        outcome(app.post_import_raw(Some(&token), "application/fhir+json", big.to_string()).await).await;
    assert_eq!(status, 413, "{text}");
}

#[tokio::test]
async fn a_provider_at_its_job_cap_gets_429_while_another_provider_is_still_admitted() {
    let app = spawn_app_with(|c| c.limits.max_jobs_per_provider = 2).await;
    app.provider.script_status(vec![super::fake_provider::StatusStep::Pending(Some(1)); 100]);
    for _ in 0..2 {
        app.start_import(&app.provider.export_url(), "dynamic").await;
    }
    let res = app.post_import(&ping(&app.provider.export_url(), "dynamic")).await;
    assert!(res.headers().contains_key("retry-after"));
    let (status, text) = outcome(res).await;
    assert_eq!(status, 429);
    assert!(text.contains("MAX_JOBS_PER_PROVIDER"), "{text}");

    let other = super::fake_provider::FakeProvider::start().await;
    other.set_consumer_jwks_url(format!("{}/jwks", app.base));
    other.add_file("p.ndjson", "Patient", super::helpers::patients(3));
    let client_id = super::load::register(&app, &other).await;
    let token = app.token_for(&client_id).await;
    let res = app
        .post_import_raw(
            Some(&token),
            "application/fhir+json",
            ping(&other.manifest_url(), "static").to_string(),
        )
        .await;
    assert_eq!(res.status(), 202, "another provider is not held up by the first one's jobs");
    let id = res.headers()["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    assert_eq!(app.completed(&id).await["extension"]["resources"], 3);
}

#[tokio::test]
async fn pings_beyond_the_concurrent_job_limit_get_429_with_retry_after() {
    let app = spawn_app_with(|c| c.limits.max_concurrent_jobs = 1).await;
    app.provider.script_status(vec![super::fake_provider::StatusStep::Pending(Some(1)); 100]);
    app.start_import(&app.provider.export_url(), "dynamic").await;
    let res = app.post_import(&ping(&app.provider.export_url(), "dynamic")).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(outcome(res).await.0, 429);
}
