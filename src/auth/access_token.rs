//! Access tokens we issue at `/auth/token` (HS256 JWTs, short-lived, bound to a registration).
use std::time::{Duration, SystemTime};

use josekit::{
    jws::{JwsHeader, HS256},
    jwt::{self, JwtPayload},
};
use secrecy::ExposeSecret;

use super::keys::{random_hex, Keys};

/// Claims of a verified access token.
#[derive(Debug, Clone)]
pub struct AccessClaims {
    pub client_id: String,
    pub scope: String,
}

pub fn issue(
    keys: &Keys,
    client_id: &str,
    scope: &str,
    lifetime: Duration,
) -> Result<String, josekit::JoseError> {
    let now = SystemTime::now();
    let mut payload = JwtPayload::new();
    payload.set_subject(client_id);
    crate::time_util::set_times(&mut payload, now, now + lifetime)?;
    payload.set_jwt_id(random_hex(16));
    payload.set_claim("scope", Some(scope.into()))?;
    let mut header = JwsHeader::new();
    header.set_token_type("JWT");
    let signer = HS256.signer_from_bytes(keys.hmac_secret().expose_secret().as_bytes())?;
    jwt::encode_with_signer(&payload, &header, &signer)
}

/// Verify signature and expiry; the registration check happens in the extractor.
pub fn verify(keys: &Keys, token: &str) -> Result<AccessClaims, String> {
    let verifier = HS256
        .verifier_from_bytes(keys.hmac_secret().expose_secret().as_bytes())
        .map_err(|_| "the token cannot be verified".to_string())?;
    let (payload, _) = jwt::decode_with_verifier(token, &verifier)
        .map_err(|_| "the access token is not valid".to_string())?;
    let exp = payload.expires_at().ok_or("the access token has no expiry")?;
    if exp <= SystemTime::now() {
        return Err("the access token has expired; request a new one at /auth/token".into());
    }
    let client_id = payload.subject().ok_or("the access token has no subject")?.to_string();
    let scope = payload.claim("scope").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    Ok(AccessClaims { client_id, scope })
}
