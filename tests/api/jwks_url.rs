//! Registrations by JWKS URL: the test serves the JWKS, with Cache-Control, key rotation and a stall.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{extract::State, http::HeaderValue, response::IntoResponse, routing::get, Json, Router};
use josekit::jws::{ES384, RS384};
use serde_json::{json, Value};

use super::helpers::{spawn_app, spawn_app_with, TestApp};

#[derive(Clone, Default)]
struct JwksServer {
    jwks: Arc<Mutex<Value>>,
    cache_control: Arc<Mutex<Option<&'static str>>>,
    stall: Arc<Mutex<bool>>,
    hits: Arc<Mutex<usize>>,
}

async fn serve(State(s): State<JwksServer>) -> axum::response::Response {
    *s.hits.lock().unwrap() += 1;
    if *s.stall.lock().unwrap() {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let mut res = Json(s.jwks.lock().unwrap().clone()).into_response();
    if let Some(cc) = *s.cache_control.lock().unwrap() {
        res.headers_mut().insert("cache-control", HeaderValue::from_static(cc));
    }
    res
}

impl JwksServer {
    async fn start(jwks: Value) -> (Self, String) {
        let s = JwksServer { jwks: Arc::new(Mutex::new(jwks)), ..Default::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let router = Router::new().route("/jwks.json", get(serve)).with_state(s.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (s, url)
    }
    fn hits(&self) -> usize {
        *self.hits.lock().unwrap()
    }
}

/// Re-register the app's provider key by URL and return the app pointed at that registration.
async fn register_by_url(app: &mut TestApp, jwks_url: &str) {
    let res = app
        .register(&json!({"jwks_uri": jwks_url, "consumer_client_id": "consumer-at-fake", "aud": app.provider.base()}))
        .await;
    assert_eq!(res.status(), 200);
    app.client_id = res.json::<Value>().await.unwrap()["client_id"].as_str().unwrap().to_string();
}

async fn token_status(app: &TestApp) -> u16 {
    let form = TestApp::token_form(&app.assertion(|_, _| {}));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    app.post_token(&pairs).await.status().as_u16()
}

#[tokio::test]
async fn a_jwks_url_is_cached_as_long_as_its_cache_control_allows() {
    let mut app = spawn_app().await;
    let (server, url) = JwksServer::start(app.public_jwks()).await;
    register_by_url(&mut app, &url).await;
    *server.cache_control.lock().unwrap() = Some("max-age=60");
    assert_eq!(token_status(&app).await, 200);
    assert_eq!(token_status(&app).await, 200);
    assert_eq!(server.hits(), 1, "max-age=60 lets the second request use the cache");

    let mut app2 = spawn_app_with(|c| c.limits.jwks_min_refetch = Duration::from_millis(300)).await;
    let (server2, url2) = JwksServer::start(app2.public_jwks()).await;
    *server2.cache_control.lock().unwrap() = Some("no-store");
    register_by_url(&mut app2, &url2).await;
    assert_eq!(token_status(&app2).await, 200);
    assert_eq!(token_status(&app2).await, 200);
    assert_eq!(server2.hits(), 1, "no-store, but fetches are spaced by JWKS_MIN_REFETCH");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(token_status(&app2).await, 200);
    assert_eq!(server2.hits(), 2, "no-store: fetched again once the spacing has passed");
}

#[tokio::test]
async fn a_flood_of_forged_assertions_makes_few_jwks_fetches_and_is_then_refused_unchecked() {
    let mut app = spawn_app_with(|c| c.limits.max_auth_failures = 20).await;
    // No Cache-Control at all: what let 200 forged assertions make 200 fetches.
    let (server, url) = JwksServer::start(app.public_jwks()).await;
    register_by_url(&mut app, &url).await;
    let forged = {
        let good = app.assertion(|_, h| h.set_key_id("unknown-kid"));
        let (head, _) = good.rsplit_once('.').unwrap();
        format!("{head}.c2lnbmF0dXJl")
    };
    let form = TestApp::token_form(&forged);
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut statuses = Vec::new();
    for _ in 0..200 {
        let res = app.post_token(&pairs).await;
        let status = res.status().as_u16();
        if status == 429 {
            assert!(res.headers().contains_key("retry-after"));
            assert_eq!(res.json::<Value>().await.unwrap()["error"], "temporarily_unavailable");
        }
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 20, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 180);
    assert!(server.hits() <= 2, "{} JWKS fetches for 200 forged assertions", server.hits());
    // That address stays refused, even with a valid assertion, until its minute ends.
    assert_eq!(token_status(&app).await, 429);
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_once_so_a_rotated_key_works() {
    let mut app = spawn_app().await;
    let (server, url) = JwksServer::start(app.public_jwks()).await;
    *server.cache_control.lock().unwrap() = Some("max-age=3600");
    register_by_url(&mut app, &url).await;
    assert_eq!(token_status(&app).await, 200);
    // The provider rotates: new key, new kid, published at the same URL.
    let mut new_key = ES384.generate_key_pair().unwrap().to_jwk_key_pair();
    new_key.set_key_id("provider-key-1");
    new_key.set_algorithm("ES384");
    app.provider_key = new_key;
    let mut public = app.provider_key.to_public_key().unwrap();
    public.set_key_id("provider-key-2");
    public.set_algorithm("ES384");
    *server.jwks.lock().unwrap() = json!({"keys": [public.as_ref()]});
    let form = TestApp::token_form(&app.assertion(|_, h| h.set_key_id("provider-key-2")));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(app.post_token(&pairs).await.status(), 200);
    assert_eq!(server.hits(), 2);
    // Right after, a kid that is nowhere fails without another fetch: unknown kids cannot make
    // us hammer a provider's JWKS URL.
    let form = TestApp::token_form(&app.assertion(|_, h| h.set_key_id("nope")));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(app.post_token(&pairs).await.status(), 401);
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn a_stalled_jwks_url_fails_the_token_request_within_the_timeout() {
    let mut app = spawn_app_with(|c| c.limits.jwks_fetch_timeout = Duration::from_millis(500)).await;
    let (server, url) = JwksServer::start(app.public_jwks()).await;
    *server.stall.lock().unwrap() = true;
    register_by_url(&mut app, &url).await;
    let started = std::time::Instant::now();
    let form = TestApp::token_form(&app.assertion(|_, _| {}));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = app.post_token(&pairs).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_client");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_jku_header_must_name_the_registered_jwks_url() {
    let mut app = spawn_app().await;
    let (_server, url) = JwksServer::start(app.public_jwks()).await;
    register_by_url(&mut app, &url).await;
    let with_jku = |jku: &str| TestApp::token_form(&app.assertion(|_, h| h.set_jwk_set_url(jku)));
    let ok = with_jku(&url);
    let pairs: Vec<(&str, &str)> = ok.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(app.post_token(&pairs).await.status(), 200);
    let bad = with_jku(&format!("{url}?other"));
    let pairs: Vec<(&str, &str)> = bad.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(app.post_token(&pairs).await.status(), 401);
}

#[tokio::test]
async fn a_registered_jwks_url_with_no_keys_for_the_alg_refuses_the_assertion() {
    let mut app = spawn_app().await;
    let (_server, url) = JwksServer::start(json!({"keys": []})).await;
    register_by_url(&mut app, &url).await;
    assert_eq!(token_status(&app).await, 401);

    // The right kid, but an RSA key: our ES384 assertion must not verify against it.
    let mut app = spawn_app().await;
    let mut rsa = RS384.generate_key_pair(2048).unwrap().to_jwk_public_key();
    rsa.set_key_id("provider-key-1");
    let (server, url) = JwksServer::start(json!({"keys": [rsa.as_ref()]})).await;
    register_by_url(&mut app, &url).await;
    assert_eq!(token_status(&app).await, 401);
    assert!(server.hits() >= 1, "the JWKS was consulted");
}

#[tokio::test]
async fn a_jwks_url_on_a_cloud_metadata_address_is_never_fetched() {
    let mut app = spawn_app().await;
    for url in
        ["http://169.254.169.254/latest/meta-data/jwks.json", "http://[::ffff:169.254.169.254]/jwks.json"]
    {
        register_by_url(&mut app, url).await;
        let form = TestApp::token_form(&app.assertion(|_, _| {}));
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let started = std::time::Instant::now();
        let res = app.post_token(&pairs).await;
        assert_eq!(res.status(), 401);
        let text = res.json::<Value>().await.unwrap()["error_description"].as_str().unwrap().to_string();
        assert!(text.contains("refused") && text.contains("metadata"), "{url}: {text}");
        assert!(started.elapsed() < Duration::from_secs(1), "no connection was tried");
    }
}
