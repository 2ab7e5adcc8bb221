//! Our own keys: the private JWK we sign provider client assertions with (public half at `/jwks`)
//! and the HMAC secret for the access tokens we issue. Missing ones are generated on first start and
//! kept: in 0600 files under the data directory, or in a shared database for every replica alike.
use std::path::{Path, PathBuf};

use josekit::{
    jwk::{alg::ec::EcCurve, alg::ec::EcKeyPair, alg::rsa::RsaKeyPair, Jwk, KeyPair},
    jws::JwsHeader,
    jwt::{self, JwtPayload},
};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::algorithms;
use crate::{
    config::{Config, MIN_SECRET_CHARS},
    store::job_store::SharedSecrets,
};

/// Algorithm of a generated key: ES384 is one of the two SMART requires and is fast.
pub const GENERATED_KEY_ALG: &str = "ES384";
const PRIVATE_KEY_FILE: &str = "private-key.jwk.json";
const JWT_SECRET_FILE: &str = "jwt-secret";
const ADMIN_TOKEN_FILE: &str = "admin-token";
const NOTIFY_SECRET_FILE: &str = "notify-secret";

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read or write {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("PRIVATE_KEY (or {PRIVATE_KEY_FILE}) is not a usable private JWK: {0}")]
    BadPrivateKey(String),
    #[error("PUBLIC_KEY does not match the public half of PRIVATE_KEY")]
    PublicKeyMismatch,
    #[error("PREVIOUS_PUBLIC_KEYS: {0}")]
    BadPreviousKeys(String),
    #[error("key operation failed")]
    Jose(#[from] josekit::JoseError),
    #[error("{place} ({what}) cannot be used: {problem}. If an earlier start was interrupted before it finished writing it, delete it and a new one is generated; otherwise restore it from a backup (a new key must then be registered with every provider)")]
    Unusable { place: String, what: String, problem: String },
    #[error("cannot read or keep a secret in the database")]
    Store(#[from] crate::store::StoreError),
}

pub struct Keys {
    private: Jwk,
    alg: String,
    kid: String,
    public: Jwk,
    /// Public keys of earlier rotations, still published so providers' caches stay valid.
    previous: Vec<Jwk>,
    hmac_secret: SecretString,
    admin_token: SecretString,
    /// The key job notices are signed with, when they are sent (`NOTIFY_URL`).
    notify_secret: Option<SecretString>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("alg", &self.alg).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Keys {
    /// Load from config, else from the vault, else generate and keep in the vault.
    pub async fn load(config: &Config, vault: KeyVault<'_>) -> Result<Self, KeysError> {
        let private = match &config.private_key {
            Some(raw) => parse_private(raw.expose_secret())?,
            None => {
                let what = "our signing key pair (PRIVATE_KEY was not set)";
                let kept = vault
                    .kept(PRIVATE_KEY_FILE, what, || Ok(generate(GENERATED_KEY_ALG)?.to_string()))
                    .await?;
                if kept.value.trim().is_empty() {
                    return Err(kept.unusable("our signing key", "it is empty"));
                }
                parse_private(&kept.value).map_err(|e| match e {
                    KeysError::BadPrivateKey(why) => kept.unusable("our signing key", &why),
                    other => other,
                })?
            }
        };
        let hmac_secret = secret(config.jwt_secret.as_ref(), &vault, JWT_SECRET_FILE, "JWT_SECRET").await?;
        let admin_token =
            secret(config.admin_token.as_ref(), &vault, ADMIN_TOKEN_FILE, "ADMIN_TOKEN").await?;
        let notify_secret = match &config.notify_url {
            Some(_) => Some(
                secret(config.notify_secret.as_ref(), &vault, NOTIFY_SECRET_FILE, "NOTIFY_SECRET").await?,
            ),
            None => None,
        };
        let alg = private.algorithm().unwrap_or_default().to_string();
        let kid = private.key_id().unwrap_or_default().to_string();
        let public = public_of(&private)?;
        if let Some(raw) = &config.public_key {
            let given =
                Jwk::from_bytes(raw.as_bytes()).map_err(|e| KeysError::BadPrivateKey(e.to_string()))?;
            let same = ["n", "e", "x", "y", "crv"].iter().all(|m| given.parameter(m) == public.parameter(m));
            if !same {
                return Err(KeysError::PublicKeyMismatch);
            }
        }
        // Prove the key signs before we accept traffic.
        algorithms::signer(&alg, &private)?;
        let previous = parse_previous(config.previous_public_keys.as_deref(), &kid)?;
        Ok(Self { private, alg, kid, public, previous, hmac_secret, admin_token, notify_secret })
    }

    /// `{"keys": [current, previous...]}`, public members only.
    pub fn jwks(&self) -> Value {
        let keys: Vec<&serde_json::Map<String, Value>> =
            std::iter::once(&self.public).chain(&self.previous).map(|k| k.as_ref()).collect();
        json!({ "keys": keys })
    }

    /// Sign a JWT with our private key (`alg` from the key, `kid`, `typ: JWT`).
    pub fn sign(&self, payload: &JwtPayload) -> Result<String, josekit::JoseError> {
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        header.set_key_id(self.kid.clone());
        let signer = algorithms::signer(&self.alg, &self.private)?;
        jwt::encode_with_signer(payload, &header, &*signer)
    }

    pub fn hmac_secret(&self) -> &SecretString {
        &self.hmac_secret
    }

    /// The key job notices are signed with (`NOTIFY_SECRET`), when `NOTIFY_URL` is set.
    pub fn notify_secret(&self) -> Option<&SecretString> {
        self.notify_secret.as_ref()
    }

    /// The credential for registration management (`Authorization: Bearer <ADMIN_TOKEN>`).
    pub fn admin_token(&self) -> &SecretString {
        &self.admin_token
    }
}

/// Where keys and secrets no configuration gave are kept.
pub enum KeyVault<'a> {
    /// Files under `DATA_DIR`, 0600 (one machine).
    Files(&'a Path),
    /// The shared database: the first replica to start stores them, every other reads the same.
    /// A server moving from one machine to several keeps its own: what `seed` (its `DATA_DIR`)
    /// holds is stored, not a new key that every provider would have to register again.
    Database { shared: &'a dyn SharedSecrets, seed: &'a Path },
}

/// A value the vault holds, and where, for messages.
struct Kept {
    value: String,
    place: String,
}

impl Kept {
    fn unusable(&self, what: &str, problem: &str) -> KeysError {
        KeysError::Unusable {
            place: self.place.clone(),
            what: what.to_string(),
            problem: problem.to_string(),
        }
    }
}

impl KeyVault<'_> {
    /// The value kept as `name`, else `make()`'s, kept first. The log names where, never the value.
    async fn kept(
        &self,
        name: &str,
        what: &str,
        make: impl FnOnce() -> Result<String, KeysError>,
    ) -> Result<Kept, KeysError> {
        match self {
            Self::Files(dir) => {
                let path = dir.join(name);
                let place = path.display().to_string();
                match std::fs::read_to_string(&path) {
                    Ok(value) => Ok(Kept { value, place }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let value = make()?;
                        write_secret_file(&path, value.as_bytes())?;
                        tracing::info!(path = %place, "generated {what}; kept in that file");
                        Ok(Kept { value, place })
                    }
                    Err(source) => Err(KeysError::Io { path, source }),
                }
            }
            Self::Database { shared, seed } => {
                let place = format!("the database (shared_secrets '{name}')");
                let from_file =
                    std::fs::read_to_string(seed.join(name)).ok().filter(|v| !v.trim().is_empty());
                let seeded = from_file.is_some();
                let candidate = match from_file {
                    Some(v) => v,
                    None => make()?,
                };
                let (value, inserted) =
                    shared.secret_or_insert(name, &candidate, crate::time_util::now_unix()).await?;
                match (inserted, seeded) {
                    (true, true) => {
                        tracing::info!(path = %seed.join(name).display(), "kept {name} from this file in {place} for every replica")
                    }
                    (true, false) => tracing::info!("generated {what}; kept in {place} for every replica"),
                    (false, true) if value != candidate => {
                        tracing::warn!(path = %seed.join(name).display(), "{place} holds another {name} than this file; the database's is used")
                    }
                    _ => {}
                }
                Ok(Kept { value, place })
            }
        }
    }
}

/// A secret from configuration, else from the vault, else generated into it.
async fn secret(
    configured: Option<&SecretString>,
    vault: &KeyVault<'_>,
    name: &str,
    variable: &str,
) -> Result<SecretString, KeysError> {
    if let Some(s) = configured {
        return Ok(s.clone());
    }
    // The generated ones are 96 hex characters.
    let what = format!("{variable} (it was not set)");
    let kept = vault.kept(name, &what, || Ok(random_hex(48))).await?;
    if kept.value.trim().len() < MIN_SECRET_CHARS {
        return Err(kept.unusable(variable, &format!("it holds fewer than {MIN_SECRET_CHARS} characters")));
    }
    Ok(SecretString::from(kept.value.trim().to_string()))
}

/// Earlier public keys: each public-only, with a `kid` unlike the current one and each other.
fn parse_previous(raw: Option<&str>, current_kid: &str) -> Result<Vec<Jwk>, KeysError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let bad = |m: &str| KeysError::BadPreviousKeys(m.to_string());
    let value: Value = serde_json::from_str(raw).map_err(|_| bad("not JSON"))?;
    let list = match &value {
        Value::Array(a) => a.clone(),
        Value::Object(o) => o
            .get("keys")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| bad("expected a JWKS or an array of JWKs"))?,
        _ => return Err(bad("expected a JWKS or an array of JWKs")),
    };
    let mut kids = vec![current_kid.to_string()];
    let mut keys = Vec::new();
    for item in list {
        let map = item.as_object().cloned().ok_or_else(|| bad("every key must be a JSON object"))?;
        let jwk = Jwk::from_map(map).map_err(|e| KeysError::BadPreviousKeys(e.to_string()))?;
        if jwk.parameter("d").is_some() {
            return Err(bad("contains a private key; publish public keys only"));
        }
        let kid = jwk.key_id().ok_or_else(|| bad("every key needs a 'kid'"))?.to_string();
        if kids.contains(&kid) {
            return Err(KeysError::BadPreviousKeys(format!(
                "kid '{kid}' appears twice (or equals the current key's)"
            )));
        }
        kids.push(kid);
        keys.push(public_of(&jwk)?);
    }
    Ok(keys)
}

fn parse_private(raw: &str) -> Result<Jwk, KeysError> {
    let mut jwk =
        Jwk::from_bytes(raw.trim().as_bytes()).map_err(|e| KeysError::BadPrivateKey(e.to_string()))?;
    let private_member = match jwk.key_type() {
        "RSA" | "EC" => jwk.parameter("d").is_some(),
        other => return Err(KeysError::BadPrivateKey(format!("key type '{other}' is not RSA or EC"))),
    };
    if !private_member {
        return Err(KeysError::BadPrivateKey("the JWK has no private member 'd'".into()));
    }
    let alg = jwk.algorithm().map(str::to_string).unwrap_or_default();
    if algorithms::key_type_for(&alg) != Some(jwk.key_type()) {
        return Err(KeysError::BadPrivateKey(format!(
            "'alg' must be one of {} matching the key type",
            algorithms::ASSERTION_ALGORITHMS.join(", ")
        )));
    }
    if jwk.key_id().is_none() {
        // Stable across restarts, so providers holding our JWKS keep recognising the key.
        jwk.set_key_id(thumbprint(&jwk)?);
    }
    Ok(jwk)
}

/// The RFC 7638 JWK thumbprint (SHA-256 of the required public members in lexical order).
pub fn thumbprint(jwk: &Jwk) -> Result<String, KeysError> {
    use base64::Engine;
    use sha2::Digest;
    let members: &[&str] = match jwk.key_type() {
        "RSA" => &["e", "kty", "n"],
        _ => &["crv", "kty", "x", "y"],
    };
    let mut canonical = serde_json::Map::new();
    for m in members {
        let v = jwk
            .parameter(m)
            .cloned()
            .ok_or_else(|| KeysError::BadPrivateKey(format!("missing member '{m}'")))?;
        canonical.insert((*m).to_string(), v);
    }
    // serde_json's Map keeps keys sorted, which is the order RFC 7638 asks for.
    let digest = sha2::Sha256::digest(Value::Object(canonical).to_string().as_bytes());
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest))
}

/// The public half of a private JWK, keeping `alg` and `kid`.
pub fn public_of(private: &Jwk) -> Result<Jwk, josekit::JoseError> {
    let mut public = private.to_public_key()?;
    if let Some(alg) = private.algorithm() {
        public.set_algorithm(alg);
    }
    if let Some(kid) = private.key_id() {
        public.set_key_id(kid);
    }
    Ok(public)
}

/// A fresh private JWK for one of RS256/384/512 (RSA-2048) or ES256/384/512 (P-256/384/521).
pub fn generate(alg: &str) -> Result<Jwk, josekit::JoseError> {
    let mut jwk = match alg {
        "RS256" | "RS384" | "RS512" => Jwk::generate_rsa_key(2048)?,
        "ES256" => Jwk::generate_ec_key(EcCurve::P256)?,
        "ES512" => Jwk::generate_ec_key(EcCurve::P521)?,
        _ => Jwk::generate_ec_key(EcCurve::P384)?,
    };
    jwk.set_algorithm(alg);
    jwk.set_key_id(random_hex(8));
    Ok(jwk)
}

/// PEM forms (public, private) of a private JWK.
pub fn pem_pair(private: &Jwk) -> Result<(String, String), josekit::JoseError> {
    let (public, private) = match private.key_type() {
        "RSA" => {
            let kp = RsaKeyPair::from_jwk(private)?;
            (kp.to_pem_public_key(), kp.to_pem_private_key())
        }
        _ => {
            let kp = EcKeyPair::from_jwk(private)?;
            (kp.to_pem_public_key(), kp.to_pem_private_key())
        }
    };
    Ok((String::from_utf8_lossy(&public).into_owned(), String::from_utf8_lossy(&private).into_owned()))
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Write a generated secret whole or not at all (`owner_only::write_whole`).
fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), KeysError> {
    crate::owner_only::write_whole(path, contents)
        .map_err(|source| KeysError::Io { path: path.to_path_buf(), source })
}
