//! `/auth/register`, `/auth/token`, `/jwks`, `/generator`, `/info`.
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::helpers::{ping, sign_assertion, spawn_app, test_config, TestApp, ADMIN_TOKEN};

type Form = Vec<(&'static str, String)>;

/// An assertion for `app`'s client signed with any algorithm and key, kid `provider-key-1`.
fn sign_with(app: &TestApp, alg: &str, key: &josekit::jwk::Jwk) -> String {
    let now = SystemTime::now();
    let mut claims = josekit::jwt::JwtPayload::new();
    claims.set_issuer(&app.client_id);
    claims.set_subject(&app.client_id);
    claims.set_audience(vec![format!("{}/auth/token", app.base)]);
    claims.set_expires_at(&(now + Duration::from_secs(60)));
    claims.set_jwt_id(uuid::Uuid::new_v4().to_string());
    let mut header = josekit::jws::JwsHeader::new();
    header.set_key_id("provider-key-1");
    match bulk_import::auth::algorithms::signer(alg, key) {
        Ok(signer) => josekit::jwt::encode_with_signer(&claims, &header, &*signer).unwrap(),
        // josekit refuses a curve that does not fit the alg: forge the header by hand instead.
        Err(_) => {
            use base64::Engine;
            let b64 = |v: &serde_json::Value| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
            };
            let h = json!({"alg": alg, "kid": "provider-key-1", "typ": "JWT"});
            let body = serde_json::to_value(claims.claims_set()).unwrap();
            format!("{}.{}.{}", b64(&h), b64(&body), "c2lnbmF0dXJl")
        }
    }
}
type Tweak = Box<dyn Fn(&mut bulk_import::config::Config)>;

async fn token_error(app: &TestApp, form: Vec<(&'static str, String)>) -> (u16, String) {
    token_error_named(app, form, "").await
}

async fn token_error_named(app: &TestApp, form: Vec<(&'static str, String)>, name: &str) -> (u16, String) {
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = app.post_token(&form).await;
    let status = res.status().as_u16();
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert!(body["error_description"].is_string(), "{name}: {body}");
    (status, body["error"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_valid_assertion_gets_a_bearer_token_with_the_granted_scope() {
    let app = spawn_app().await;
    let form = TestApp::token_form(&app.assertion(|_, _| {}));
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = app.post_token(&form).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["scope"], "system/*.*");
    assert_eq!(body["expires_in"], 300);
}

#[tokio::test]
async fn token_requests_that_break_a_rule_are_refused_with_the_oauth_error() {
    let app = spawn_app().await;
    let good = |app: &TestApp| TestApp::token_form(&app.assertion(|_, _| {}));
    let set = |mut form: Vec<(&'static str, String)>, key: &str, value: Option<&str>| {
        form.retain(|(k, _)| *k != key);
        if let Some(v) = value {
            form.push((Box::leak(key.to_string().into_boxed_str()), v.to_string()));
        }
        form
    };
    let cases: Vec<(&str, Form, u16, &str)> = vec![
        ("no grant_type", set(good(&app), "grant_type", None), 400, "invalid_request"),
        ("wrong grant_type", set(good(&app), "grant_type", Some("password")), 400, "unsupported_grant_type"),
        (
            "wrong assertion type",
            set(good(&app), "client_assertion_type", Some("jwt")),
            400,
            "invalid_request",
        ),
        ("no assertion", set(good(&app), "client_assertion", None), 400, "invalid_request"),
        ("no scope", set(good(&app), "scope", None), 400, "invalid_scope"),
        ("user scope", set(good(&app), "scope", Some("user/*.read")), 400, "invalid_scope"),
        ("garbage assertion", set(good(&app), "client_assertion", Some("a.b.c")), 401, "invalid_client"),
        (
            "wrong aud",
            TestApp::token_form(&app.assertion(|c, _| c.set_audience(vec!["https://elsewhere/auth/token"]))),
            401,
            "invalid_client",
        ),
        (
            "aud with another scheme",
            TestApp::token_form(&app.assertion(|c, _| {
                c.set_audience(vec![app.base.replace("http://", "https://") + "/auth/token"])
            })),
            401,
            "invalid_client",
        ),
        (
            "iss differs from sub",
            TestApp::token_form(&app.assertion(|c, _| c.set_subject("someone-else"))),
            401,
            "invalid_client",
        ),
        (
            "unknown client",
            TestApp::token_form(&app.assertion(|c, _| {
                c.set_issuer("nobody");
                c.set_subject("nobody")
            })),
            401,
            "invalid_client",
        ),
        (
            "exp too far ahead",
            TestApp::token_form(&app.assertion(|c, _| {
                c.set_expires_at(&(std::time::SystemTime::now() + std::time::Duration::from_secs(3600)))
            })),
            401,
            "invalid_client",
        ),
        (
            "expired",
            TestApp::token_form(&app.assertion(|c, _| {
                c.set_expires_at(&(std::time::SystemTime::now() - std::time::Duration::from_secs(600)))
            })),
            401,
            "invalid_client",
        ),
        (
            "no jti",
            TestApp::token_form(&app.assertion(|c, _| {
                c.set_claim("jti", None).unwrap();
            })),
            401,
            "invalid_client",
        ),
        (
            "unknown kid",
            TestApp::token_form(&app.assertion(|_, h| h.set_key_id("other"))),
            401,
            "invalid_client",
        ),
        (
            "jku not registered",
            TestApp::token_form(&app.assertion(|_, h| h.set_jwk_set_url("https://evil.example/jwks"))),
            401,
            "invalid_client",
        ),
        (
            "no exp",
            TestApp::token_form(&app.assertion(|c, _| {
                c.set_claim("exp", None).unwrap();
            })),
            401,
            "invalid_client",
        ),
        (
            "exp beyond any clock",
            TestApp::token_form(&app.assertion(|c, _| {
                c.set_claim("exp", Some(json!(1e300))).unwrap();
            })),
            401,
            "invalid_client",
        ),
        (
            "nbf in the future",
            TestApp::token_form(
                &app.assertion(|c, _| c.set_not_before(&(SystemTime::now() + Duration::from_secs(600)))),
            ),
            401,
            "invalid_client",
        ),
        (
            "iat in the future",
            TestApp::token_form(
                &app.assertion(|c, _| c.set_issued_at(&(SystemTime::now() + Duration::from_secs(600)))),
            ),
            401,
            "invalid_client",
        ),
        (
            "aud with another port",
            TestApp::token_form(&app.assertion(|c, _| c.set_audience(vec!["http://127.0.0.1:1/auth/token"]))),
            401,
            "invalid_client",
        ),
        (
            "aud with another path",
            TestApp::token_form(
                &app.assertion(|c, _| c.set_audience(vec![format!("{}/auth/token2", app.base)])),
            ),
            401,
            "invalid_client",
        ),
        (
            "alg ES256 while the key is P-384",
            {
                let mut k = app.provider_key.clone();
                k.set_algorithm("ES256");
                TestApp::token_form(&sign_with(&app, "ES256", &k))
            },
            401,
            "invalid_client",
        ),
        (
            "RS384 by a key that is not registered",
            TestApp::token_form(&sign_with(
                &app,
                "RS384",
                &bulk_import::auth::keys::generate("RS384").unwrap(),
            )),
            401,
            "invalid_client",
        ),
    ];
    for (name, form, status, error) in cases {
        assert_eq!(token_error_named(&app, form, name).await, (status, error.to_string()), "case: {name}");
    }
}

#[tokio::test]
async fn alg_none_and_hs256_signed_with_the_public_key_are_refused() {
    let app = spawn_app().await;
    // alg none
    let mut claims = josekit::jwt::JwtPayload::new();
    claims.set_issuer(&app.client_id);
    claims.set_subject(&app.client_id);
    claims.set_audience(vec![format!("{}/auth/token", app.base)]);
    claims.set_expires_at(&(std::time::SystemTime::now() + std::time::Duration::from_secs(60)));
    claims.set_jwt_id("n1");
    let none = josekit::jwt::encode_unsecured(&claims, &josekit::jws::JwsHeader::new()).unwrap();
    assert_eq!(token_error(&app, TestApp::token_form(&none)).await, (401, "invalid_client".into()));
    // HS256 keyed with the registered public JWK's text: the classic algorithm confusion.
    let secret = app.public_jwks()["keys"][0].to_string();
    let signer = josekit::jws::HS256.signer_from_bytes(secret.as_bytes()).unwrap();
    let hs = josekit::jwt::encode_with_signer(&claims, &josekit::jws::JwsHeader::new(), &signer).unwrap();
    assert_eq!(token_error(&app, TestApp::token_form(&hs)).await, (401, "invalid_client".into()));
}

#[tokio::test]
async fn a_replayed_assertion_is_refused() {
    let app = spawn_app().await;
    let assertion = app.assertion(|_, _| {});
    let form = TestApp::token_form(&assertion);
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(app.post_token(&pairs).await.status(), 200);
    assert_eq!(token_error(&app, form).await, (401, "invalid_client".into()));
}

#[tokio::test]
async fn an_assertion_without_kid_is_accepted_when_exactly_one_key_fits() {
    let app = spawn_app().await;
    let assertion = app.assertion(|_, h| {
        h.set_claim("kid", None).unwrap();
    });
    let form = TestApp::token_form(&assertion);
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = app.post_token(&pairs).await;
    let st = res.status();
    assert_eq!(st, 200, "{}", res.text().await.unwrap());
}

#[tokio::test]
async fn registration_validates_its_input() {
    let app = spawn_app().await;
    let base = app.provider.base();
    let private = app.provider_key.as_ref().clone();
    let public = app.public_jwks()["keys"][0].clone();
    let mut no_kid = public.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let cases = vec![
        json!({"consumer_client_id": "c", "aud": base}),
        json!({"jwks": app.public_jwks(), "aud": base}),
        json!({"jwks": app.public_jwks(), "consumer_client_id": "c"}),
        json!({"jwks": app.public_jwks(), "consumer_client_id": "c", "aud": "not a url"}),
        json!({"jwks": {"keys": [private]}, "consumer_client_id": "c", "aud": base}),
        json!({"jwks": {"keys": [{"kty": "oct", "k": "abc"}]}, "consumer_client_id": "c", "aud": base}),
        json!({"jwks_uri": "ftp://x/jwks", "consumer_client_id": "c", "aud": base}),
        json!({"jwks": {"keys": [no_kid]}, "consumer_client_id": "c", "aud": base}),
        json!({"jwks": {"keys": [public.clone(), public.clone()]}, "consumer_client_id": "c", "aud": base}),
    ];
    for body in cases {
        let res = app.register(&body).await;
        assert_eq!(res.status(), 400, "{body}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"], "invalid_request", "{body}");
    }
    let res = app
        .http
        .post(format!("{}/auth/register", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn registration_answers_the_reference_contract() {
    let app = spawn_app().await;
    let res = app
        .register(&json!({"jwks_uri": "https://ehr.example/jwks", "consumer_client_id": "c", "aud": "https://ehr.example/fhir"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert!(body["client_id"].as_str().unwrap().len() >= 32);
    assert!(body["client_id_issued_at"].is_i64());
    assert_eq!(body["token_endpoint"], format!("{}/auth/token", app.base));
    assert_eq!(body["warnings"], json!([]), "a first registration of that URL warns of nothing");
}

#[tokio::test]
async fn a_registration_has_a_display_name_and_one_repeating_a_url_and_key_is_warned_about() {
    let app = spawn_app().await;
    let body = json!({"jwks": app.public_jwks(), "consumer_client_id": "c2", "aud": app.provider.base(), "name": "  St. Mary's Epic "});
    let res = app.register(&body).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["name"], "St. Mary's Epic");
    let warnings = answer["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "the test app registered this key already: {answer}");
    let text = warnings[0].as_str().unwrap();
    assert!(text.contains(&app.client_id) && text.contains("provider-key-1"), "{text}");
    let listed = app.admin_get("/auth/registrations").await;
    let mine = listed["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["client_id"] == answer["client_id"])
        .cloned();
    assert_eq!(mine.unwrap()["name"], "St. Mary's Epic", "{listed}");
    let res = app.register(&json!({"jwks_uri": "https://x.example/jwks", "consumer_client_id": "c", "aud": "https://x.example/fhir", "name": "x".repeat(101)})).await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("name"));
}

#[tokio::test]
async fn jwks_publishes_only_the_public_key_and_generator_never_puts_private_parts_in_jwks() {
    let app = spawn_app().await;
    let jwks: Value = app.http.get(format!("{}/jwks", app.base)).send().await.unwrap().json().await.unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["alg"], "ES384");
    assert!(key["kid"].is_string());
    assert!(key.get("d").is_none());
    for alg in ["ES384", "RS384", "ES512", "RS256"] {
        let res = app.http.get(format!("{}/generator?alg={alg}", app.base)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let g: Value = res.json().await.unwrap();
        assert!(g["jwks"]["keys"][0].get("d").is_none(), "{alg}");
        assert!(g["privateAsJWK"]["d"].is_string(), "{alg}");
        assert_eq!(g["publicAsJWK"]["alg"], alg);
        assert!(g["publicAsPEM"].as_str().unwrap().contains("PUBLIC KEY"));
        assert!(g["privateAsPEM"].as_str().unwrap().contains("PRIVATE KEY"));
    }
    let res = app.http.get(format!("{}/generator?alg=HS256", app.base)).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn generator_makes_one_pair_at_a_time_and_an_address_past_its_budget_is_told_to_wait() {
    let app = super::helpers::spawn_app_with(|c| c.limits.generator_per_minute = 4).await;
    // Four asked at once: all made (one after another), the fifth refused with when to come back.
    let asks = (0..4).map(|_| app.http.get(format!("{}/generator?alg=ES256", app.base)).send());
    for res in futures::future::join_all(asks).await {
        assert_eq!(res.unwrap().status(), 200);
    }
    let res = app.http.get(format!("{}/generator?alg=RS512", app.base)).send().await.unwrap();
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let body: Value = res.json().await.unwrap();
    assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("GENERATOR_PER_MINUTE"), "{body}");
    // An unknown alg costs nothing and says what is accepted.
    let res = app.http.get(format!("{}/generator?alg=HS256", app.base)).send().await.unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn info_lists_the_endpoints() {
    let app = spawn_app().await;
    let info: Value = app.http.get(format!("{}/info", app.base)).send().await.unwrap().json().await.unwrap();
    let labels: Vec<&str> = info.as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap()).collect();
    assert!(labels.contains(&"Token Endpoint"));
    assert!(labels.contains(&"Import Kick-off URL"));
    let health = app.http.get(format!("{}/health", app.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn registration_and_its_management_need_the_admin_credential() {
    let app = spawn_app().await;
    let body = json!({"jwks_uri": "https://ehr.example/jwks", "consumer_client_id": "c", "aud": "https://ehr.example/fhir"});
    let url = format!("{}/auth/register", app.base);
    for auth in [None, Some("wrong-token"), Some(&ADMIN_TOKEN[1..])] {
        let mut req = app.http.post(&url).json(&body);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_token");
    }
    for path in ["/auth/registrations", &format!("/auth/registrations/{}", app.client_id)] {
        let res = app.http.get(format!("{}{path}", app.base)).send().await.unwrap();
        assert_eq!(res.status(), 401, "{path}");
    }
    let res =
        app.http.delete(format!("{}/auth/registrations/{}", app.base, app.client_id)).send().await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn registrations_can_be_listed_shown_and_revoked_and_revocation_is_immediate() {
    let app = spawn_app().await;
    let token = app.token().await;
    let admin = |req: reqwest::RequestBuilder| req.bearer_auth(ADMIN_TOKEN).send();
    let list: Value =
        admin(app.http.get(format!("{}/auth/registrations", app.base))).await.unwrap().json().await.unwrap();
    let regs = list["registrations"].as_array().unwrap();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0]["client_id"], app.client_id.as_str());
    assert_eq!(regs[0]["aud"], app.provider.base());
    let one = format!("{}/auth/registrations/{}", app.base, app.client_id);
    let shown: Value = admin(app.http.get(&one)).await.unwrap().json().await.unwrap();
    assert_eq!(shown["consumer_client_id"], "consumer-at-fake");
    assert!(shown["revoked_at"].is_null());

    let res = admin(app.http.delete(&one)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.json::<Value>().await.unwrap()["revoked_at"].is_i64());
    // The token issued before revocation no longer opens $import...
    let res = app
        .post_import_raw(
            Some(&token),
            "application/fhir+json",
            ping(&app.provider.export_url(), "dynamic").to_string(),
        )
        .await;
    assert_eq!(res.status(), 401);
    // ...and no new token is issued.
    let (status, error) = token_error(&app, TestApp::token_form(&app.assertion(|_, _| {}))).await;
    assert_eq!((status, error.as_str()), (401, "invalid_client"));
    let res = admin(app.http.get(format!("{}/auth/registrations/nope", app.base))).await.unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn scopes_are_mediated_and_import_needs_a_create_scope() {
    let app = spawn_app().await;
    let mut form = TestApp::token_form(&app.assertion(|_, _| {}));
    form.retain(|(k, _)| *k != "scope");
    form.push(("scope", "system/*.rs system/*.cud".into()));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body: Value = app.post_token(&pairs).await.json().await.unwrap();
    assert_eq!(body["scope"], "system/*.cud", "only the import scope is granted");

    let mut form = TestApp::token_form(&app.assertion(|_, _| {}));
    form.retain(|(k, _)| *k != "scope");
    form.push(("scope", "system/*.read".into()));
    assert_eq!(token_error(&app, form).await, (400, "invalid_scope".into()));

    // A token whose scope cannot import (minted with the server's own secret) is refused with 403.
    let config = test_config(&app.dir);
    let vault = bulk_import::auth::keys::KeyVault::Files(&config.data_dir);
    let keys = bulk_import::auth::keys::Keys::load(&config, vault).await.unwrap();
    let read_only = bulk_import::auth::access_token::issue(
        &keys,
        &app.client_id,
        "system/*.read",
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let res = app
        .post_import_raw(
            Some(&read_only),
            "application/fhir+json",
            ping(&app.provider.export_url(), "dynamic").to_string(),
        )
        .await;
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn after_a_key_rotation_jwks_publishes_the_current_and_previous_keys_and_pulls_use_the_new_one() {
    let old = bulk_import::auth::keys::generate("ES384").unwrap();
    let new = bulk_import::auth::keys::generate("RS384").unwrap();
    let old_public = bulk_import::auth::keys::public_of(&old).unwrap();
    let (new_json, old_json) = (new.to_string(), json!([old_public.as_ref()]).to_string());
    let app = super::helpers::spawn_app_with(|c| {
        c.private_key = Some(new_json.into());
        c.previous_public_keys = Some(old_json);
    })
    .await;
    let res = app.http.get(format!("{}/jwks", app.base)).send().await.unwrap();
    assert!(res.headers()["cache-control"].to_str().unwrap().contains("max-age="));
    let jwks: Value = res.json().await.unwrap();
    let kids: Vec<&str> =
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, vec![new.key_id().unwrap(), old.key_id().unwrap()]);
    assert!(jwks["keys"].as_array().unwrap().iter().all(|k| k.get("d").is_none()));
    // The fake provider verifies our assertion (signed with the new RS384 key) against /jwks.
    app.provider.add_file("p.ndjson", "Patient", super::helpers::patients(1));
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    assert_eq!(app.wait_for_job(&id).await.status(), 200);
}

#[tokio::test]
async fn bad_key_configuration_stops_the_server_at_start_with_a_clear_error() {
    let dir = tempfile::TempDir::new().unwrap();
    let private = bulk_import::auth::keys::generate("ES384").unwrap();
    let cases: Vec<(Tweak, &str)> = vec![
        (Box::new(|c| c.private_key = Some("{\"kty\":\"EC\"}".to_string().into())), "PRIVATE_KEY"),
        (
            Box::new(move |c| c.previous_public_keys = Some(json!([private.as_ref()]).to_string())),
            "private key",
        ),
        (Box::new(|c| c.previous_public_keys = Some("nope".into())), "PREVIOUS_PUBLIC_KEYS"),
    ];
    for (tweak, expected) in cases {
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let err = match bulk_import::App::build(config).await {
            Ok(_) => panic!("built with bad keys ({expected})"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(expected), "{err}");
    }
}

#[tokio::test]
async fn an_assertion_without_kid_is_refused_when_several_keys_fit() {
    let mut app = spawn_app().await;
    let mut first = app.public_jwks()["keys"][0].clone();
    first["kid"] = json!("a");
    let other = bulk_import::auth::keys::generate("ES384").unwrap();
    let mut second =
        serde_json::to_value(bulk_import::auth::keys::public_of(&other).unwrap().as_ref()).unwrap();
    second["kid"] = json!("b");
    let res = app
        .register(&json!({"jwks": {"keys": [first, second]}, "consumer_client_id": "c", "aud": app.provider.base()}))
        .await;
    app.client_id = res.json::<Value>().await.unwrap()["client_id"].as_str().unwrap().to_string();
    let no_kid = app.assertion(|_, h| {
        h.set_claim("kid", None).unwrap();
    });
    assert_eq!(token_error(&app, TestApp::token_form(&no_kid)).await, (401, "invalid_client".into()));
    let with_kid = app.assertion(|_, h| h.set_key_id("a"));
    let form = TestApp::token_form(&with_kid);
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(app.post_token(&pairs).await.status(), 200);
}

#[tokio::test]
async fn oversized_auth_bodies_are_refused_with_oauth_json() {
    let app = super::helpers::spawn_app_with(|c| c.limits.max_body_bytes = 4096).await;
    let big = json!({"jwks_uri": format!("https://ehr.example/{}", "x".repeat(10_000)), "consumer_client_id": "c", "aud": "https://ehr.example/fhir"});
    let res = app.register(&big).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_request");
    let res = app.post_token(&[("grant_type", &"x".repeat(10_000))]).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_request");
}

#[tokio::test]
async fn wrong_admin_tokens_are_throttled_per_address() {
    let app = super::helpers::spawn_app_with(|c| c.limits.max_auth_failures = 5).await;
    let list = |token: &'static str| {
        let http = app.http.clone();
        let url = format!("{}/auth/registrations", app.base);
        async move { http.get(url).bearer_auth(token).send().await.unwrap() }
    };
    let mut statuses = Vec::new();
    for _ in 0..50 {
        statuses.push(list("wrong-token-wrong-token-wrong-token-0000").await.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 45);
    let res = list(ADMIN_TOKEN).await;
    assert_eq!(res.status(), 429, "the address is refused unchecked until its minute ends");
    assert!(res.headers().contains_key("retry-after"));
    // Another address is not.
    let mut other =
        super::listener::connect_from(super::listener::ATTACKER, app.base[7..].parse().unwrap()).await;
    let req = format!(
        "GET /auth/registrations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        ADMIN_TOKEN
    );
    other.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    other.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_registration_names_its_bulk_submit_submitter_and_gets_the_bulk_submit_scope_alone() {
    let app = spawn_app().await;
    let body = json!({"jwks": app.public_jwks(), "consumer_client_id": "c3", "aud": app.provider.base(),
        "submitter": {"system": "https://ehr.example/ids", "value": " ehr-7 "}});
    let res = app.register(&body).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(
        answer["submitter"],
        json!({"system": "https://ehr.example/ids", "value": "ehr-7"}),
        "{answer}"
    );
    let client_id = answer["client_id"].as_str().unwrap();
    let shown = app.admin_get(&format!("/auth/registrations/{client_id}")).await;
    assert_eq!(shown["submitter"]["value"], "ehr-7", "{shown}");
    let res = app
        .register(&json!({"jwks_uri": "https://x.example/jwks", "consumer_client_id": "c", "aud": "https://x.example/fhir", "submitter": {"value": "  "}}))
        .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("submitter.value"));

    // The Bulk Submit scope is granted as asked, and it is not an import scope.
    let assertion =
        sign_assertion(&app.provider_key, client_id, &format!("{}/auth/token", app.base), |_, _| {});
    let mut form = TestApp::token_form(&assertion);
    form[3].1 = "system/bulk-submit".into();
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = app.post_token(&form).await;
    assert_eq!(res.status(), 200);
    let token: Value = res.json().await.unwrap();
    assert_eq!(token["scope"], "system/bulk-submit", "{token}");
    let ping = json!({"resourceType": "Parameters", "parameter": [{"name": "exportUrl", "valueUrl": app.provider.manifest_url()}, {"name": "exportType", "valueString": "static"}]});
    let res =
        app.post_import_raw(token["access_token"].as_str(), "application/fhir+json", ping.to_string()).await;
    assert_eq!(res.status(), 403, "a submit token cannot ping");
}
