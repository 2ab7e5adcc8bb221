//! The `Authorization: Bearer <token>` header (RFC 6750 §2.1), read one way by every guard.

use axum::http::{header::AUTHORIZATION, HeaderMap};

/// Why no bearer token could be read; each guard words its own answer.
pub enum BearerProblem {
    Missing,
    NotText,
    NotBearer,
}

/// The token of a Bearer header. The scheme is case-insensitive (RFC 7235 §2.1): the sample
/// pinger sends lowercase "bearer".
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, BearerProblem> {
    let value = headers.get(AUTHORIZATION).ok_or(BearerProblem::Missing)?;
    let value = value.to_str().map_err(|_| BearerProblem::NotText)?;
    value
        .trim()
        .split_once(char::is_whitespace)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or(BearerProblem::NotBearer)
}
