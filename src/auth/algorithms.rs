//! The JWS algorithms we accept and the signer/verifier for each. `none` and HS* are never accepted
//! for client assertions: a symmetric algorithm with a public key as secret is the classic confusion.
use josekit::{
    jwk::Jwk,
    jws::{JwsSigner, JwsVerifier, ES256, ES384, ES512, PS256, PS384, PS512, RS256, RS384, RS512},
    JoseError,
};

/// Asymmetric algorithms allowed for client assertions (SMART requires RS384 and ES384).
pub const ASSERTION_ALGORITHMS: &[&str] =
    &["RS384", "ES384", "RS256", "RS512", "ES256", "ES512", "PS256", "PS384", "PS512"];

/// The JWK `kty` an algorithm needs.
pub fn key_type_for(alg: &str) -> Option<&'static str> {
    match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => Some("RSA"),
        "ES256" | "ES384" | "ES512" => Some("EC"),
        _ => None,
    }
}

pub fn verifier(alg: &str, jwk: &Jwk) -> Result<Box<dyn JwsVerifier>, JoseError> {
    Ok(match alg {
        "RS256" => Box::new(RS256.verifier_from_jwk(jwk)?),
        "RS384" => Box::new(RS384.verifier_from_jwk(jwk)?),
        "RS512" => Box::new(RS512.verifier_from_jwk(jwk)?),
        "PS256" => Box::new(PS256.verifier_from_jwk(jwk)?),
        "PS384" => Box::new(PS384.verifier_from_jwk(jwk)?),
        "PS512" => Box::new(PS512.verifier_from_jwk(jwk)?),
        "ES256" => Box::new(ES256.verifier_from_jwk(jwk)?),
        "ES384" => Box::new(ES384.verifier_from_jwk(jwk)?),
        "ES512" => Box::new(ES512.verifier_from_jwk(jwk)?),
        other => return Err(JoseError::UnsupportedSignatureAlgorithm(anyhow::anyhow!("{other}"))),
    })
}

pub fn signer(alg: &str, jwk: &Jwk) -> Result<Box<dyn JwsSigner>, JoseError> {
    Ok(match alg {
        "RS256" => Box::new(RS256.signer_from_jwk(jwk)?),
        "RS384" => Box::new(RS384.signer_from_jwk(jwk)?),
        "RS512" => Box::new(RS512.signer_from_jwk(jwk)?),
        "PS256" => Box::new(PS256.signer_from_jwk(jwk)?),
        "PS384" => Box::new(PS384.signer_from_jwk(jwk)?),
        "PS512" => Box::new(PS512.signer_from_jwk(jwk)?),
        "ES256" => Box::new(ES256.signer_from_jwk(jwk)?),
        "ES384" => Box::new(ES384.signer_from_jwk(jwk)?),
        "ES512" => Box::new(ES512.signer_from_jwk(jwk)?),
        other => return Err(JoseError::UnsupportedSignatureAlgorithm(anyhow::anyhow!("{other}"))),
    })
}
