//! `POST /auth/register` (a provider registers its keys with us) and `POST /auth/token` (SMART
//! Backend Services token endpoint). Errors are RFC 6749 JSON.
use axum::{
    body::Bytes,
    extract::Path,
    extract::{rejection::BytesRejection, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{admin::Admin, media_type, no_store};
use crate::{
    auth::{
        client_assertion::{self, TokenForm},
        provider_base::{parse_origin, ProviderBase},
        AuthError,
    },
    state::AppState,
    store::providers::Provider,
    time_util::now_unix,
};

/// Largest inline JWKS a registration may carry.
const MAX_REGISTERED_KEYS: usize = 10;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/token", post(token))
        .route("/auth/registrations", get(list))
        .route("/auth/registrations/{client_id}", get(show).delete(revoke))
}

fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, AuthError> {
    body.map_err(|_| AuthError::InvalidRequest("the request body is too large or could not be read".into()))
}

#[derive(Deserialize)]
struct Registration {
    jwks: Option<Value>,
    jwks_uri: Option<String>,
    consumer_client_id: Option<String>,
    aud: Option<String>,
    scope: Option<String>,
    /// Extra origins that may receive our provider token (e.g. a separate file host).
    token_origins: Option<Vec<String>>,
    /// A strict allow-list of origins files may come from.
    file_origins: Option<Vec<String>>,
    /// The provider's token endpoint, pinned instead of discovered.
    token_endpoint: Option<String>,
}

/// Most origins one list of a registration may hold.
const MAX_ORIGINS: usize = 20;

fn origin_list(name: &str, raw: Vec<String>) -> Result<Vec<String>, AuthError> {
    if raw.len() > MAX_ORIGINS {
        return Err(AuthError::InvalidRequest(format!("{name}: at most {MAX_ORIGINS} origins")));
    }
    raw.iter()
        .map(|o| parse_origin(o).map_err(|e| AuthError::InvalidRequest(format!("{name}: {e}"))))
        .collect()
}

/// Public JWKS only: each key RSA or EC with its public members and no private ones.
fn validate_jwks(jwks: &Value) -> Result<String, AuthError> {
    let bad = |m: String| AuthError::InvalidRequest(format!("jwks: {m}"));
    let keys =
        jwks.get("keys").and_then(Value::as_array).ok_or_else(|| bad("must be {\"keys\": [...]}".into()))?;
    if keys.is_empty() || keys.len() > MAX_REGISTERED_KEYS {
        return Err(bad(format!("must hold 1 to {MAX_REGISTERED_KEYS} keys")));
    }
    let mut kids = std::collections::HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        let kty = k.get("kty").and_then(Value::as_str).unwrap_or_default();
        let members: &[&str] = match kty {
            "RSA" => &["n", "e"],
            "EC" => &["crv", "x", "y"],
            _ => return Err(bad(format!("key {i} has kty '{kty}'; only RSA and EC keys are accepted"))),
        };
        if let Some(m) = members.iter().find(|m| k.get(**m).and_then(Value::as_str).is_none()) {
            return Err(bad(format!("key {i} lacks its public member '{m}'")));
        }
        // SMART: "each JWK SHALL have kty and kid", and kids are unique within the set.
        let kid = k.get("kid").and_then(Value::as_str).filter(|s| !s.is_empty());
        let Some(kid) = kid else { return Err(bad(format!("key {i} has no 'kid'"))) };
        if !kids.insert(kid) {
            return Err(bad(format!("kid '{kid}' appears more than once")));
        }
        if ["d", "p", "q", "dp", "dq", "qi", "k"].iter().any(|m| k.get(*m).is_some()) {
            return Err(bad(format!("key {i} contains private members; register the public key only")));
        }
    }
    Ok(jwks.to_string())
}

async fn register(
    State(app): State<AppState>,
    _admin: Admin,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AuthError> {
    if media_type(&headers) != "application/json" {
        return Err(AuthError::InvalidRequest("the content type must be application/json".into()));
    }
    let body = body_or_error(body)?;
    let r: Registration = serde_json::from_slice(&body)
        .map_err(|e| AuthError::InvalidRequest(format!("the body is not the expected JSON: {e}")))?;
    let consumer_client_id = r
        .consumer_client_id
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| AuthError::InvalidRequest("'consumer_client_id' parameter is required".into()))?;
    let aud = r.aud.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        AuthError::InvalidRequest("the base URL of the data provider ('aud' parameter) is required".into())
    })?;
    let base = ProviderBase::parse(aud.trim()).map_err(|e| AuthError::InvalidRequest(format!("aud: {e}")))?;
    let (jwks, jwks_uri) = match (r.jwks, r.jwks_uri) {
        (Some(jwks), _) => (Some(validate_jwks(&jwks)?), None),
        (None, Some(uri)) => match url::Url::parse(&uri) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => (None, Some(uri)),
            _ => return Err(AuthError::InvalidRequest("jwks_uri must be an absolute http(s) URL".into())),
        },
        (None, None) => {
            return Err(AuthError::InvalidRequest("either 'jwks' or 'jwks_uri' parameter is required".into()))
        }
    };
    let token_origins = origin_list("token_origins", r.token_origins.unwrap_or_default())?;
    let file_origins = r.file_origins.map(|l| origin_list("file_origins", l)).transpose()?;
    let token_endpoint = match r.token_endpoint.filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(raw) => match url::Url::parse(raw.trim()) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.username().is_empty() =>
            {
                Some(raw.trim().to_string())
            }
            _ => {
                return Err(AuthError::InvalidRequest(format!(
                    "token_endpoint: '{raw}' must be an absolute http(s) URL"
                )))
            }
        },
    };
    let provider = Provider {
        token_origins: serde_json::to_string(&token_origins).unwrap_or_else(|_| "[]".into()),
        file_origins: file_origins.map(|l| serde_json::to_string(&l).unwrap_or_else(|_| "[]".into())),
        token_endpoint,
        client_id: uuid::Uuid::new_v4().to_string(),
        consumer_client_id,
        aud: base.url().as_str().trim_end_matches('/').to_string(),
        jwks,
        jwks_uri,
        scope: r.scope.filter(|s| !s.trim().is_empty()),
        created_at: now_unix(),
        revoked_at: None,
    };
    app.store.insert_provider(&provider).await?;
    tracing::info!(client_id = %provider.client_id, aud = %provider.aud, "provider registered");
    let token_endpoint = format!("{}/auth/token", crate::routes::base_url(&app, &headers));
    Ok(no_store(
        Json(json!({
            "client_id": provider.client_id,
            "client_id_issued_at": provider.created_at,
            "token_endpoint": token_endpoint,
        }))
        .into_response(),
    ))
}

async fn token(
    State(app): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AuthError> {
    // Refused before anything is parsed or fetched: a flood of bad assertions costs us nothing
    // and never reaches a provider's JWKS URL.
    let address = crate::http_server::peer_key(&extensions);
    let failures = &app.auth_failures;
    failures.token_address.check(&address).map_err(|wait| AuthError::TooManyFailures(wait.as_secs()))?;
    if media_type(&headers) != "application/x-www-form-urlencoded" {
        return Err(AuthError::InvalidRequest(
            "the content type must be application/x-www-form-urlencoded".into(),
        ));
    }
    let body = body_or_error(body)?;
    let form: TokenForm = serde_urlencoded_form(&body)?;
    // Per client id *and* address: an attacker who knows a client id cannot lock that provider
    // out from elsewhere (JWKS fetches are bounded separately, by JWKS_MIN_REFETCH).
    let claimed =
        form.client_assertion.as_deref().and_then(client_assertion::claimed_client).unwrap_or_default();
    let client = format!("{claimed}@{address}");
    failures.token_client.check(&client).map_err(|wait| AuthError::TooManyFailures(wait.as_secs()))?;
    let token_url = format!("{}/auth/token", crate::routes::base_url(&app, &headers));
    let endpoint = client_assertion::TokenEndpoint {
        store: &app.store,
        jwks: &app.jwks,
        http: &app.http,
        keys: &app.keys,
        lifetime: app.config.access_token_lifetime,
    };
    match client_assertion::exchange(&endpoint, &token_url, form).await {
        Ok(response) => Ok(no_store(Json(response).into_response())),
        Err(e @ AuthError::InvalidClient(_)) => {
            let reason = e.to_string();
            failures.token_address.failed(&address, &reason);
            failures.token_client.failed(&client, &reason);
            Err(e)
        }
        Err(e) => Err(e),
    }
}

fn serde_urlencoded_form(body: &[u8]) -> Result<TokenForm, AuthError> {
    let mut form =
        TokenForm { grant_type: None, client_assertion_type: None, client_assertion: None, scope: None };
    for (k, v) in url::form_urlencoded::parse(body) {
        let slot = match k.as_ref() {
            "grant_type" => &mut form.grant_type,
            "client_assertion_type" => &mut form.client_assertion_type,
            "client_assertion" => &mut form.client_assertion,
            "scope" => &mut form.scope,
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(AuthError::InvalidRequest(format!("parameter '{k}' must not be repeated")));
        }
    }
    Ok(form)
}

/// A registration as management shows it (keys included: they are public), with the provider
/// token endpoint in use (pinned, or as last discovered).
async fn describe(app: &AppState, p: &Provider) -> Value {
    let in_use = match &p.token_endpoint {
        Some(pinned) => Some(pinned.clone()),
        None => match ProviderBase::parse(&p.aud) {
            Ok(base) => app.provider_tokens.discovered_endpoint(&base).await,
            Err(_) => None,
        },
    };
    json!({
        "token_origins": p.token_origin_list(),
        "file_origins": p.file_origin_list(),
        "token_endpoint": p.token_endpoint,
        "token_endpoint_in_use": in_use,
        "client_id": p.client_id,
        "consumer_client_id": p.consumer_client_id,
        "aud": p.aud,
        "jwks": p.jwks_value(),
        "jwks_uri": p.jwks_uri,
        "scope": p.scope,
        "created_at": p.created_at,
        "revoked_at": p.revoked_at,
    })
}

async fn list(State(app): State<AppState>, _admin: Admin) -> Result<Response, AuthError> {
    let mut all = Vec::new();
    for p in app.store.providers().await? {
        all.push(describe(&app, &p).await);
    }
    Ok(no_store(Json(json!({ "registrations": all })).into_response()))
}

async fn show(
    State(app): State<AppState>,
    _admin: Admin,
    Path(client_id): Path<String>,
) -> Result<Response, AuthError> {
    let p = app
        .store
        .provider_any(&client_id)
        .await?
        .ok_or_else(|| AuthError::NotFound(format!("no registration with client_id '{client_id}'")))?;
    Ok(no_store(Json(describe(&app, &p).await).into_response()))
}

async fn revoke(
    State(app): State<AppState>,
    _admin: Admin,
    Path(client_id): Path<String>,
) -> Result<Response, AuthError> {
    if !app.store.revoke_provider(&client_id, now_unix()).await? {
        return Err(AuthError::NotFound(format!("no registration with client_id '{client_id}'")));
    }
    tracing::info!(%client_id, "registration revoked");
    let p =
        app.store.provider_any(&client_id).await?.ok_or_else(|| AuthError::NotFound(client_id.clone()))?;
    Ok(no_store(Json(describe(&app, &p).await).into_response()))
}
