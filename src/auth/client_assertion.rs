//! Our token endpoint's check of a provider's client assertion (SMART Backend Services
//! "authenticating to the token endpoint"; RFC 7523 §3): alg allow-list, key selection by `kid`,
//! `jku` binding, `iss == sub == client_id`, `aud`, `exp` ≤ 5 minutes ahead, `jti` not replayed.
use std::time::Duration;

use base64::Engine;
use josekit::{jwk::Jwk, jwt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    access_token, algorithms,
    jwks_cache::{self, JwksCache},
    keys::Keys,
    AuthError,
};
use crate::store::job_store::{RegistrationStore, ReplayCache};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The longest assertion lifetime SMART allows ("no more than five minutes in the future").
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);
/// Clock skew tolerated on `exp`/`nbf`/`iat`, in one place.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    pub grant_type: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    jku: Option<String>,
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: Option<&str>) -> Result<T, AuthError> {
    let bad = || AuthError::InvalidClient("client_assertion is not a well-formed JWT".into());
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part.ok_or_else(bad)?).map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

/// What our token endpoint needs: registrations and the replay cache, providers' JWKS, our keys.
pub struct TokenEndpoint<'a> {
    pub registrations: &'a dyn RegistrationStore,
    /// Shared by every replica on the database.
    pub replay: &'a dyn ReplayCache,
    pub jwks: &'a JwksCache,
    /// For registered JWKS URLs.
    pub http: &'a reqwest::Client,
    pub keys: &'a Keys,
    /// `ACCESS_TOKEN_EXPIRE_IN`.
    pub lifetime: Duration,
}

/// Check a token request and, if every rule holds, issue an access token.
pub async fn exchange(app: &TokenEndpoint<'_>, token_url: &str, form: TokenForm) -> Result<Value, AuthError> {
    let grant_type =
        form.grant_type.ok_or_else(|| AuthError::InvalidRequest("grant_type is required".into()))?;
    if grant_type != "client_credentials" {
        return Err(AuthError::UnsupportedGrantType(format!(
            "grant_type must be 'client_credentials' (received '{grant_type}')"
        )));
    }
    match form.client_assertion_type.as_deref() {
        None => return Err(AuthError::InvalidRequest("client_assertion_type is required".into())),
        Some(ASSERTION_TYPE) => {}
        Some(_) => {
            return Err(AuthError::InvalidRequest(format!(
                "client_assertion_type must be '{ASSERTION_TYPE}'"
            )))
        }
    }
    let assertion = form
        .client_assertion
        .filter(|a| !a.is_empty())
        .ok_or_else(|| AuthError::InvalidRequest("client_assertion is required".into()))?;
    let scope =
        super::scope::grant(form.scope.as_deref()).map_err(|e| AuthError::InvalidScope(e.to_string()))?;

    let mut parts = assertion.split('.');
    let header: Header = decode_part(parts.next())?;
    let claims: Value = decode_part(parts.next())?;
    let alg = header.alg.unwrap_or_default();
    if !algorithms::ASSERTION_ALGORITHMS.contains(&alg.as_str()) {
        return Err(AuthError::InvalidClient(format!(
            "alg '{alg}' is not accepted; use one of {}",
            algorithms::ASSERTION_ALGORITHMS.join(", ")
        )));
    }
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or_default();
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    if iss.is_empty() || iss != sub {
        return Err(AuthError::InvalidClient(
            "the 'iss' and 'sub' claims must both equal the client_id".into(),
        ));
    }
    let provider = app.registrations.provider(iss).await?.ok_or_else(|| {
        AuthError::InvalidClient("unknown or revoked client_id; register at /auth/register".into())
    })?;
    if let Some(jku) = &header.jku {
        if provider.jwks_uri.as_deref() != Some(jku.as_str()) {
            return Err(AuthError::InvalidClient(
                "the 'jku' header does not match the registered JWKS URL".into(),
            ));
        }
    }

    let kty = algorithms::key_type_for(&alg).unwrap_or_default();
    let pick = |keys: &[Jwk]| -> Result<Jwk, AuthError> {
        let candidates: Vec<&Jwk> = keys
            .iter()
            .filter(|k| k.key_type() == kty)
            .filter(|k| header.kid.as_deref().is_none_or(|kid| k.key_id() == Some(kid)))
            .collect();
        match candidates.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(AuthError::InvalidClient(
                "no registered key matches the assertion's 'kid' and 'alg'".into(),
            )),
            _ => Err(AuthError::InvalidClient("several registered keys match; send a 'kid' header".into())),
        }
    };
    let key = match (&provider.jwks_uri, provider.jwks_value()) {
        (_, Some(set)) => pick(&jwks_cache::public_keys(&set))?,
        (Some(uri), None) => {
            let cached = app.jwks.keys(app.http, uri, false).await?;
            match pick(&cached) {
                Ok(k) => k,
                // An unknown kid may be a key the client just rotated in: fetch once more.
                Err(_) => pick(&app.jwks.keys(app.http, uri, true).await?)?,
            }
        }
        (None, None) => return Err(AuthError::InvalidClient("the registration has no keys".into())),
    };
    // We matched `kid` ourselves; a kid on the verifier would make josekit demand one in the header.
    let mut members = key.as_ref().clone();
    members.remove("kid");
    let key = Jwk::from_map(members)?;
    let verifier = algorithms::verifier(&alg, &key)
        .map_err(|_| AuthError::InvalidClient("the registered key cannot verify this algorithm".into()))?;
    let (payload, _) = jwt::decode_with_verifier(&assertion, &*verifier)
        .map_err(|_| AuthError::InvalidClient("the client_assertion signature is not valid".into()))?;

    let now = crate::time_util::now_unix();
    let audiences = payload.audience().unwrap_or_default();
    if !audiences.contains(&token_url) {
        return Err(AuthError::InvalidClient(format!(
            "the 'aud' claim must be this token endpoint: {token_url}"
        )));
    }
    // Times are read as bounded numbers ourselves: a value like 1e300 must be a refusal, not a panic.
    let time = |name: &str| -> Result<Option<i64>, AuthError> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|t| t.is_finite() && (0.0..1.0e11).contains(t))
                .map(|t| Some(t as i64))
                .ok_or_else(|| {
                    AuthError::InvalidClient(format!("the '{name}' claim is not a valid NumericDate"))
                }),
        }
    };
    let skew = CLOCK_SKEW.as_secs() as i64;
    let exp = time("exp")?.ok_or_else(|| AuthError::InvalidClient("the 'exp' claim is required".into()))?;
    if exp + skew < now {
        return Err(AuthError::InvalidClient("the client_assertion has expired".into()));
    }
    if exp > now + MAX_ASSERTION_LIFETIME.as_secs() as i64 + skew {
        return Err(AuthError::InvalidClient(
            "the 'exp' claim must be at most 5 minutes in the future".into(),
        ));
    }
    if time("nbf")?.is_some_and(|nbf| nbf > now + skew) {
        return Err(AuthError::InvalidClient("the client_assertion is not valid yet ('nbf')".into()));
    }
    if time("iat")?.is_some_and(|iat| iat > now + skew) {
        return Err(AuthError::InvalidClient("the 'iat' claim is in the future".into()));
    }
    let jti = payload
        .jwt_id()
        .filter(|j| !j.is_empty())
        .ok_or_else(|| AuthError::InvalidClient("the 'jti' claim is required".into()))?;
    let fresh = app.replay.remember_jti(iss, jti, exp + skew, now).await?;
    if !fresh {
        return Err(AuthError::InvalidClient("this client_assertion was already used ('jti' replay)".into()));
    }

    let lifetime = app.lifetime;
    let token = access_token::issue(app.keys, &provider.client_id, &scope, lifetime)?;
    Ok(json!({
        "token_type": "bearer",
        "access_token": token,
        "expires_in": lifetime.as_secs(),
        "scope": scope,
        "client_id": provider.client_id,
    }))
}
