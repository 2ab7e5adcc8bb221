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
use serde_json::json;

use super::{admin::Admin, media_type, no_store};
use crate::{
    auth::{
        client_assertion::{self, TokenForm},
        AuthError,
    },
    registrations::{RegistrationError, RegistrationRequest, Registrations},
    state::AppState,
};

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

async fn register(
    State(app): State<AppState>,
    _admin: Admin,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AuthError> {
    if media_type(&headers) != "application/json" {
        return Err(AuthError::InvalidRequest("the content type must be application/json".into()));
    }
    let body = body_or_error(body)?;
    let request: RegistrationRequest = serde_json::from_slice(&body)
        .map_err(|e| AuthError::InvalidRequest(format!("the body is not the expected JSON: {e}")))?;
    let crate::registrations::Registered { provider, warnings } = registrations(&app).create(request).await?;
    let from = crate::http_server::peer_key(&extensions);
    let actor = crate::audit::Actor::Admin(&from);
    crate::audit::record(
        &*app.audit,
        actor,
        "registration created",
        Some(&provider.client_id),
        Some(&provider.aud),
    )
    .await;
    let token_endpoint = format!("{}/auth/token", crate::routes::base_url(&app, &headers));
    Ok(no_store(
        Json(crate::registrations::created_answer(&provider, token_endpoint, &warnings)).into_response(),
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
    let token_url = format!("{}/auth/token", crate::routes::base_url(&app, &headers));
    let endpoint = client_assertion::TokenEndpoint {
        registrations: &*app.registrations,
        replay: &*app.replay,
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

fn registrations(app: &AppState) -> Registrations<'_> {
    Registrations { store: &*app.registrations, provider_tokens: &app.job_context.provider_tokens }
}

impl From<RegistrationError> for AuthError {
    fn from(e: RegistrationError) -> Self {
        match e {
            RegistrationError::Invalid(m) => AuthError::InvalidRequest(m),
            e @ RegistrationError::NotFound(_) => AuthError::NotFound(e.to_string()),
            RegistrationError::Store(e) => AuthError::Store(e),
        }
    }
}

async fn list(State(app): State<AppState>, _admin: Admin) -> Result<Response, AuthError> {
    let all = registrations(&app).list().await?;
    Ok(no_store(Json(json!({ "registrations": all })).into_response()))
}

async fn show(
    State(app): State<AppState>,
    _admin: Admin,
    Path(client_id): Path<String>,
) -> Result<Response, AuthError> {
    Ok(no_store(Json(registrations(&app).show(&client_id).await?).into_response()))
}

async fn revoke(
    State(app): State<AppState>,
    _admin: Admin,
    extensions: axum::http::Extensions,
    Path(client_id): Path<String>,
) -> Result<Response, AuthError> {
    let revoked = registrations(&app).revoke(&client_id).await?;
    let from = crate::http_server::peer_key(&extensions);
    crate::audit::record(
        &*app.audit,
        crate::audit::Actor::Admin(&from),
        "registration revoked",
        Some(&client_id),
        None,
    )
    .await;
    Ok(no_store(Json(revoked).into_response()))
}
