//! The admin credential guarding registration and its management: `Authorization: Bearer <ADMIN_TOKEN>`.
use axum::{extract::FromRequestParts, http::request::Parts};
use secrecy::ExposeSecret;

use crate::{
    auth::{bearer::bearer_token, AuthError},
    state::AppState,
};

/// Proof that the request carries the admin token.
pub struct Admin;

/// Whether `presented` is the admin token (compared in constant time).
pub fn is_admin_token(app: &AppState, presented: &str) -> bool {
    same(presented.as_bytes(), app.keys.admin_token().expose_secret().as_bytes())
}

/// Compare without an early exit, so timing does not reveal how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, AuthError> {
        let address = crate::http_server::peer_key(&parts.extensions);
        let failures = &app.auth_failures.admin_address;
        failures.check(&address).map_err(|wait| AuthError::TooManyFailures(wait.as_secs()))?;
        let presented = bearer_token(&parts.headers).map_err(|_| {
            AuthError::InvalidToken(
                "this endpoint needs the admin credential: 'Authorization: Bearer <ADMIN_TOKEN>' (see DATA_DIR/admin-token)".into(),
            )
        })?;
        if is_admin_token(app, presented) {
            Ok(Admin)
        } else {
            failures.failed(&address, "wrong admin token");
            Err(AuthError::InvalidToken("the admin credential is not valid".into()))
        }
    }
}
