//! Key pairs as every front end hands them out (the browser UI's generator now, `keygen` on the
//! command line next): a fresh pair in JWK and PEM forms, its public JWKS, and owner-only files.
//! Our own signing keys and their published JWKS are `auth::keys`.
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::auth::keys;

/// What a generated pair may be signed with.
pub const ALGORITHMS: &[&str] = &["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"];

#[derive(Debug, thiserror::Error)]
pub enum KeyPairError {
    #[error("alg must be one of {}", ALGORITHMS.join(", "))]
    UnknownAlgorithm,
    #[error("the key pair could not be made")]
    Jose(#[from] josekit::JoseError),
    #[error("cannot write {path}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A fresh key pair in every form people need.
pub struct KeyPair {
    pub alg: String,
    pub public_jwk: Value,
    pub private_jwk: Value,
    pub public_pem: String,
    pub private_pem: String,
}

/// The algorithm a pair is asked for (any case; ES384 when `None`), if one we make.
pub fn algorithm(alg: Option<&str>) -> Result<String, KeyPairError> {
    let alg = alg.unwrap_or(keys::GENERATED_KEY_ALG).to_ascii_uppercase();
    match ALGORITHMS.contains(&alg.as_str()) {
        true => Ok(alg),
        false => Err(KeyPairError::UnknownAlgorithm),
    }
}

/// Make a pair for `alg` (any case; ES384 when `None`). RSA takes a while: call it off the async
/// workers.
pub fn generate(alg: Option<&str>) -> Result<KeyPair, KeyPairError> {
    let alg = algorithm(alg)?;
    let private = keys::generate(&alg)?;
    let public = keys::public_of(&private)?;
    let (public_pem, private_pem) = keys::pem_pair(&private)?;
    Ok(KeyPair {
        alg,
        public_jwk: Value::Object(public.as_ref().clone()),
        private_jwk: Value::Object(private.as_ref().clone()),
        public_pem,
        private_pem,
    })
}

impl KeyPair {
    /// The JWKS to publish (public members only).
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk] })
    }

    /// Everything, as the generator endpoint answers.
    pub fn to_json(&self) -> Value {
        json!({
            "alg": self.alg,
            "jwks": self.jwks(),
            "publicAsJWK": self.public_jwk,
            "publicAsPEM": self.public_pem,
            "privateAsJWK": self.private_jwk,
            "privateAsPEM": self.private_pem,
        })
    }

    /// Write `<stem>.private.jwk.json`, `<stem>.private.pem` (owner-only, whole or not at all),
    /// `<stem>.jwks.json` and `<stem>.public.pem` into `dir`; returns the paths written.
    pub fn write_files(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>, KeyPairError> {
        let contents = [
            self.private_jwk.to_string(),
            self.private_pem.clone(),
            self.jwks().to_string(),
            self.public_pem.clone(),
        ];
        let mut written = Vec::new();
        for (name, contents) in file_names(stem).into_iter().zip(contents) {
            let path = dir.join(name);
            crate::owner_only::write_whole(&path, contents.as_bytes())
                .map_err(|source| KeyPairError::Io { path: path.clone(), source })?;
            written.push(path);
        }
        Ok(written)
    }
}

/// The files `write_files` writes for `stem`, in its order.
pub fn file_names(stem: &str) -> [String; 4] {
    [
        format!("{stem}.private.jwk.json"),
        format!("{stem}.private.pem"),
        format!("{stem}.jwks.json"),
        format!("{stem}.public.pem"),
    ]
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_pair_has_matching_forms_and_its_files_are_owner_only() {
        let pair = generate(Some("es256")).unwrap();
        assert_eq!(pair.alg, "ES256");
        assert!(pair.public_jwk.get("d").is_none(), "the public JWK holds no private member");
        assert!(pair.private_jwk.get("d").is_some());
        assert_eq!(pair.jwks()["keys"][0]["kid"], pair.private_jwk["kid"]);
        assert!(pair.private_pem.contains("PRIVATE KEY") && pair.public_pem.contains("PUBLIC KEY"));
        let dir = tempfile::TempDir::new().unwrap();
        let paths = pair.write_files(dir.path(), "provider").unwrap();
        assert_eq!(paths.len(), 4);
        for p in &paths {
            assert_eq!(std::fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600, "{}", p.display());
        }
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&paths[0]).unwrap()).unwrap();
        assert_eq!(back, pair.private_jwk);
        assert!(matches!(generate(Some("HS256")), Err(KeyPairError::UnknownAlgorithm)));
    }
}
