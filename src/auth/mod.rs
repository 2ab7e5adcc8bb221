//! SMART Backend Services in both directions (SMART App Launch 2.2 "Backend Services", RFC 7523):
//! our key pair and JWKS, the token endpoint providers use to ping us, the access tokens we issue,
//! and the tokens we obtain from providers to pull their exports.
pub mod access_token;
pub mod algorithms;
pub mod bearer;
pub mod client_assertion;
pub mod error;
pub mod failure_limit;
pub mod jwks_cache;
pub mod keys;
pub mod provider_base;
pub mod provider_token;
pub mod scope;

pub use error::AuthError;
