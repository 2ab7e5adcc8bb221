//! Registrations of providers, for every front end (HTTP now, a command line next): validate and
//! create, list, show, revoke. Nothing here knows HTTP.
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    auth::{
        provider_base::{parse_origin, ProviderBase},
        provider_token::ProviderTokens,
    },
    domain::{Provider, SyncPlan},
    plain_text::{is_oauth_client_id, is_oauth_scope, is_plain_text},
    store::{job_store::RegistrationStore, StoreError},
    time_util::now_unix,
};

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The request names something we cannot accept; the text says what.
    #[error("{0}")]
    Invalid(String),
    #[error("no registration with client_id '{0}'")]
    NotFound(String),
    #[error("storage failed")]
    Store(#[from] StoreError),
}

/// Largest inline JWKS a registration may carry.
const MAX_REGISTERED_KEYS: usize = 10;
/// Most origins one list of a registration may hold.
const MAX_ORIGINS: usize = 20;

/// What an operator asks to register.
#[derive(Debug, Default, Deserialize)]
pub struct RegistrationRequest {
    pub jwks: Option<Value>,
    pub jwks_uri: Option<String>,
    pub consumer_client_id: Option<String>,
    pub aud: Option<String>,
    pub scope: Option<String>,
    /// Extra origins that may receive our provider token (e.g. a separate file host).
    pub token_origins: Option<Vec<String>>,
    /// A strict allow-list of origins files may come from.
    pub file_origins: Option<Vec<String>>,
    /// The provider's token endpoint, pinned instead of discovered.
    pub token_endpoint: Option<String>,
    /// A display name for people.
    pub name: Option<String>,
    /// The Bulk Submit submitter (an Identifier) this provider's submissions name.
    pub submitter: Option<SubmitterId>,
    /// Pulls this server starts itself (incremental, on a schedule or when asked).
    pub sync: Option<SyncRequest>,
}

/// A sync plan as a registration asks for it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// The provider's export kick-off URL (`[base]/$export`, `/Patient/$export`, a Group's).
    pub export_url: String,
    /// `_type`: resource types, comma-separated.
    #[serde(rename = "type")]
    pub types: Option<String>,
    /// `_typeFilter`: a FHIR search the export is narrowed by.
    pub type_filter: Option<String>,
    /// How often to pull; without it pulls run only when asked.
    pub every_seconds: Option<i64>,
}

/// Longest sync interval (a year) and `_typeFilter`.
const MAX_SYNC_EVERY_SECS: i64 = 365 * 24 * 3600;
const MAX_TYPE_FILTER_CHARS: usize = 2048;

/// A Bulk Submit submitter as a registration names it.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
pub struct SubmitterId {
    pub system: Option<String>,
    pub value: String,
}

/// Longest submitter system or value, in characters.
const MAX_SUBMITTER_CHARS: usize = 256;

/// Longest display name, in characters.
const MAX_NAME_CHARS: usize = 100;
/// Longest `consumer_client_id` (our client id at the provider) and `scope`.
const MAX_CLIENT_ID_CHARS: usize = 255;
const MAX_SCOPE_CHARS: usize = 1024;

/// The answer to a registration, as the HTTP API and the offline command line give it.
pub fn created_answer(p: &Provider, token_endpoint: String, warnings: &[String]) -> Value {
    json!({
        "client_id": p.client_id,
        "client_id_issued_at": p.created_at,
        "token_endpoint": token_endpoint,
        "name": p.name,
        "submitter": submitter_json(p),
        "warnings": warnings,
    })
}

/// The Bulk Submit submitter a registration names, as the API shows it.
fn submitter_json(p: &Provider) -> Value {
    match &p.submitter_value {
        Some(value) => json!({"system": p.submitter_system, "value": value}),
        None => Value::Null,
    }
}

/// A new registration, and what an operator should know about it.
#[derive(Debug)]
pub struct Registered {
    pub provider: Provider,
    /// Things that are allowed but likely a mistake (a second registration of the same keys).
    pub warnings: Vec<String>,
}

fn invalid(m: impl Into<String>) -> RegistrationError {
    RegistrationError::Invalid(m.into())
}

fn origin_list(name: &str, raw: Vec<String>) -> Result<Vec<String>, RegistrationError> {
    if raw.len() > MAX_ORIGINS {
        return Err(invalid(format!("{name}: at most {MAX_ORIGINS} origins")));
    }
    raw.iter().map(|o| parse_origin(o).map_err(|e| invalid(format!("{name}: {e}")))).collect()
}

/// Public JWKS only: each key RSA or EC with its public members and no private ones.
fn validate_jwks(jwks: &Value) -> Result<String, RegistrationError> {
    let bad = |m: String| invalid(format!("jwks: {m}"));
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

/// Check a request and turn it into a new registration (with a fresh client id).
pub fn validate(r: RegistrationRequest) -> Result<Provider, RegistrationError> {
    let consumer_client_id = r
        .consumer_client_id
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| invalid("'consumer_client_id' parameter is required"))?;
    if !is_oauth_client_id(&consumer_client_id, MAX_CLIENT_ID_CHARS) {
        return Err(invalid(format!(
            "consumer_client_id: 1 to {MAX_CLIENT_ID_CHARS} visible ASCII characters (an OAuth client_id, RFC 6749)"
        )));
    }
    let scope = r.scope.filter(|s| !s.trim().is_empty());
    if scope.as_deref().is_some_and(|s| !is_oauth_scope(s, MAX_SCOPE_CHARS)) {
        return Err(invalid(format!(
            "scope: OAuth scope tokens (visible ASCII but '\"' and '\\') separated by single spaces, at most {MAX_SCOPE_CHARS} characters"
        )));
    }
    let aud = r
        .aud
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| invalid("the base URL of the data provider ('aud' parameter) is required"))?;
    let base = ProviderBase::parse(aud.trim()).map_err(|e| invalid(format!("aud: {e}")))?;
    let (jwks, jwks_uri) = match (r.jwks, r.jwks_uri) {
        (Some(jwks), _) => (Some(validate_jwks(&jwks)?), None),
        (None, Some(uri)) => match url::Url::parse(&uri) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => (None, Some(uri)),
            _ => return Err(invalid("jwks_uri must be an absolute http(s) URL")),
        },
        (None, None) => return Err(invalid("either 'jwks' or 'jwks_uri' parameter is required")),
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
            _ => return Err(invalid(format!("token_endpoint: '{raw}' must be an absolute http(s) URL"))),
        },
    };
    let name = match r.name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty()) {
        Some(n) if n.chars().count() > MAX_NAME_CHARS => {
            return Err(invalid(format!("name: at most {MAX_NAME_CHARS} characters")))
        }
        Some(n) if !is_plain_text(&n) => {
            return Err(invalid("name: no control characters or bidirectional overrides"))
        }
        other => other,
    };
    let (submitter_system, submitter_value) = match r.submitter {
        None => (None, None),
        Some(SubmitterId { system, value }) => {
            let clean = |s: &str, what: &str| {
                let s = s.trim();
                if s.is_empty() || s.chars().count() > MAX_SUBMITTER_CHARS || !is_plain_text(s) {
                    return Err(invalid(format!(
                        "submitter.{what}: 1 to {MAX_SUBMITTER_CHARS} characters, no control characters or bidirectional overrides"
                    )));
                }
                Ok(s.to_string())
            };
            let system = system.filter(|s| !s.trim().is_empty()).map(|s| clean(&s, "system")).transpose()?;
            (system, Some(clean(&value, "value")?))
        }
    };
    let sync = r.sync.map(|plan| sync_plan(&base, plan)).transpose()?;
    let created_at = now_unix();
    Ok(Provider {
        sync_next_at: sync.as_ref().and_then(|p| p.every_secs).map(|_| created_at),
        sync_plan: sync.map(|p| serde_json::to_string(&p).unwrap_or_default()),
        name,
        submitter_system,
        submitter_value,
        token_origins: serde_json::to_string(&token_origins).unwrap_or_else(|_| "[]".into()),
        file_origins: file_origins.map(|l| serde_json::to_string(&l).unwrap_or_else(|_| "[]".into())),
        token_endpoint,
        client_id: uuid::Uuid::new_v4().to_string(),
        consumer_client_id,
        aud: base.url().as_str().trim_end_matches('/').to_string(),
        jwks,
        jwks_uri,
        scope,
        created_at,
        revoked_at: None,
    })
}

/// A sync plan checked: its export under the provider's base, sensible types, filter and interval.
fn sync_plan(base: &ProviderBase, r: SyncRequest) -> Result<SyncPlan, RegistrationError> {
    let url = base.under(r.export_url.trim()).map_err(|e| invalid(format!("sync.export_url: {e}")))?;
    let types = match r.types.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        Some(t)
            if t.split(',')
                .all(|n| !n.trim().is_empty() && n.trim().chars().all(|c| c.is_ascii_alphabetic())) =>
        {
            Some(t.split(',').map(str::trim).collect::<Vec<_>>().join(","))
        }
        Some(t) => {
            return Err(invalid(format!("sync.type: '{t}' is not a comma-separated list of resource types")))
        }
        None => None,
    };
    let type_filters = match r.type_filter.map(|f| f.trim().to_string()).filter(|f| !f.is_empty()) {
        Some(f) if f.chars().count() > MAX_TYPE_FILTER_CHARS || f.chars().any(char::is_control) => {
            return Err(invalid(format!(
                "sync.type_filter: at most {MAX_TYPE_FILTER_CHARS} characters, no control characters"
            )))
        }
        other => other,
    };
    let every_secs = match r.every_seconds {
        Some(n) if !(1..=MAX_SYNC_EVERY_SECS).contains(&n) => {
            return Err(invalid(format!("sync.every_seconds: 1 to {MAX_SYNC_EVERY_SECS}")))
        }
        other => other,
    };
    Ok(SyncPlan { export_url: url.to_string(), types, type_filters, every_secs })
}

/// Validate and store a new registration (the server's endpoint and the offline command line alike).
pub async fn create(
    store: &dyn RegistrationStore,
    request: RegistrationRequest,
) -> Result<Registered, RegistrationError> {
    let provider = validate(request)?;
    let warnings = repeats(&provider, &store.providers().await?);
    store.insert_provider(&provider).await?;
    tracing::info!(client_id = %provider.client_id, aud = %provider.aud, warnings = warnings.len(), "provider registered");
    Ok(Registered { provider, warnings })
}

/// The registrations service: a store and what `describe` needs to show the token endpoint.
pub struct Registrations<'a> {
    pub store: &'a dyn RegistrationStore,
    pub provider_tokens: &'a ProviderTokens,
}

impl Registrations<'_> {
    pub async fn create(&self, request: RegistrationRequest) -> Result<Registered, RegistrationError> {
        create(self.store, request).await
    }

    /// Every registration, revoked ones included, as management shows them.
    pub async fn list(&self) -> Result<Vec<Value>, RegistrationError> {
        let mut all = Vec::new();
        for p in self.store.providers().await? {
            all.push(self.describe(&p).await);
        }
        Ok(all)
    }

    pub async fn show(&self, client_id: &str) -> Result<Value, RegistrationError> {
        let p = self
            .store
            .provider_any(client_id)
            .await?
            .ok_or_else(|| RegistrationError::NotFound(client_id.to_string()))?;
        Ok(self.describe(&p).await)
    }

    /// Revoke a registration (its tokens stop working on the next request); shows it after.
    pub async fn revoke(&self, client_id: &str) -> Result<Value, RegistrationError> {
        if !self.store.revoke_provider(client_id, now_unix()).await? {
            return Err(RegistrationError::NotFound(client_id.to_string()));
        }
        tracing::info!(%client_id, "registration revoked");
        self.show(client_id).await
    }

    /// A registration as management shows it (keys included: they are public), with the provider
    /// token endpoint in use (pinned, or as last discovered).
    async fn describe(&self, p: &Provider) -> Value {
        let in_use = match &p.token_endpoint {
            Some(pinned) => Some(pinned.clone()),
            None => match ProviderBase::parse(&p.aud) {
                Ok(base) => self.provider_tokens.discovered_endpoint(&base).await,
                Err(_) => None,
            },
        };
        json!({
            "name": p.name,
            "submitter": submitter_json(p),
            "sync": p.sync(),
            "sync_next_at": p.sync_next_at,
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
}

/// Active registrations that share the new one's provider URL and a key (the same `kid`, or the
/// same JWKS URL): the provider's tokens would then authenticate as either, which is rarely meant
/// (usually a registration made twice; revoke the old one).
fn repeats(new: &Provider, existing: &[Provider]) -> Vec<String> {
    let kids = new.key_ids();
    existing
        .iter()
        .filter(|p| p.revoked_at.is_none() && p.aud == new.aud)
        .filter_map(|p| {
            let shared = if new.jwks_uri.is_some() && p.jwks_uri == new.jwks_uri {
                format!("the JWKS URL {}", new.jwks_uri.as_deref().unwrap_or_default())
            } else {
                let same: Vec<String> = p.key_ids().into_iter().filter(|k| kids.contains(k)).collect();
                if same.is_empty() {
                    return None;
                }
                format!("key id {}", same.join(", "))
            };
            Some(format!(
                "registration {} already has provider URL {} and {shared}: tokens signed with that key can act as either registration; revoke the one not meant",
                p.client_id, p.aud
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RegistrationRequest {
        RegistrationRequest {
            jwks_uri: Some("https://ehr.example/jwks.json".into()),
            consumer_client_id: Some("us-at-the-ehr".into()),
            aud: Some("https://ehr.example/fhir/".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_request_becomes_a_registration_without_http() {
        let p = validate(request()).unwrap();
        assert_eq!(p.aud, "https://ehr.example/fhir");
        assert_eq!(p.token_origins, "[]");
        assert!(!p.client_id.is_empty() && p.revoked_at.is_none());
    }

    #[test]
    fn a_second_registration_of_the_same_url_and_key_is_warned_about() {
        let inline = |kid: &str| RegistrationRequest {
            jwks_uri: None,
            jwks: Some(json!({"keys": [{"kty": "EC", "crv": "P-384", "x": "x", "y": "y", "kid": kid}]})),
            ..request()
        };
        let first = validate(inline("k1")).unwrap();
        let by_url = validate(request()).unwrap();
        let existing = [first.clone(), by_url.clone()];
        let again = repeats(&validate(inline("k1")).unwrap(), &existing);
        assert_eq!(again.len(), 1, "{again:?}");
        assert!(again[0].contains(&first.client_id) && again[0].contains("key id k1"), "{}", again[0]);
        let same_uri = repeats(&validate(request()).unwrap(), &existing);
        assert!(same_uri.len() == 1 && same_uri[0].contains("JWKS URL"), "{same_uri:?}");
        assert!(repeats(&validate(inline("k2")).unwrap(), &existing).is_empty(), "another key");
        let elsewhere =
            RegistrationRequest { aud: Some("https://other.example/fhir".into()), ..inline("k1") };
        assert!(repeats(&validate(elsewhere).unwrap(), &existing).is_empty(), "another provider");
        let revoked = Provider { revoked_at: Some(1), ..first };
        assert!(repeats(&validate(inline("k1")).unwrap(), &[revoked]).is_empty(), "a revoked one");
    }

    #[test]
    fn a_display_name_is_trimmed_and_bounded() {
        let named = |n: &str| validate(RegistrationRequest { name: Some(n.into()), ..request() });
        assert_eq!(named("  St. Mary's  ").unwrap().name.as_deref(), Some("St. Mary's"));
        assert_eq!(named("   ").unwrap().name, None);
        assert!(named(&"x".repeat(101)).unwrap_err().to_string().contains("name"));
        assert!(named("a\nb").unwrap_err().to_string().contains("control"));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(RegistrationRequest, &str)> = vec![
            (RegistrationRequest { consumer_client_id: None, ..request() }, "consumer_client_id"),
            (RegistrationRequest { aud: Some(" ".into()), ..request() }, "aud"),
            (RegistrationRequest { jwks_uri: Some("ftp://x/jwks".into()), ..request() }, "jwks_uri"),
            (RegistrationRequest { jwks: Some(json!({"keys": []})), ..request() }, "jwks"),
            (
                RegistrationRequest {
                    token_origins: Some(vec!["https://a.example/path".into()]),
                    ..request()
                },
                "token_origins",
            ),
            (RegistrationRequest { token_endpoint: Some("not a url".into()), ..request() }, "token_endpoint"),
        ];
        for (r, field) in cases {
            let e = validate(r).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
