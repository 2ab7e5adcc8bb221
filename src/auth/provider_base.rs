//! Where our provider token may go: `exportUrl` must lie under the registered base URL (`aud`);
//! status, next-page and token-carrying file URLs need a *trusted origin* (scheme, host, port): the
//! provider's own or one its registration lists in `token_origins`. Binding by origin, not path,
//! because real providers put status and file URLs outside the base path (the SMART reference
//! server serves `ROOT/fhir/bulkstatus/…` and `ROOT/<sim>/fhir/bulkfiles/…` for base `ROOT/<sim>/fhir`).
//! Files fetched without a token may be anywhere, unless the registration pins `file_origins`.
use url::Url;

/// Why a URL is refused (a registration's, or one a provider hands us).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    #[error("'{0}' is not an absolute URL")]
    NotAbsolute(String),
    #[error("'{0}' must be an http(s) origin")]
    NotHttpOrigin(String),
    #[error("'{0}' must be an origin only (scheme, host and port; no path or query)")]
    NotOriginOnly(String),
    #[error("'{raw}' is not a URL: {reason}")]
    NotUrl { raw: String, reason: String },
    #[error("'{0}' must be an absolute http(s) URL")]
    NotHttp(String),
    #[error("'{0}' must not carry a query, fragment or credentials")]
    Decorated(String),
    #[error("{0} is not an http(s) URL without credentials")]
    NotPlainHttp(String),
    #[error("{origin} is not among the registration's file_origins ({pinned}); not fetched")]
    NotAFileOrigin { origin: String, pinned: String },
    #[error("'{raw}' is not under the registered provider's base URL {base}")]
    NotUnderBase { raw: String, base: String },
    #[error("'{0}' is not a URL")]
    Unresolvable(String),
    #[error("{url} is not on {trusted}; our token is not sent there")]
    Untrusted { url: String, trusted: String },
}

#[derive(Debug, Clone)]
pub struct ProviderBase {
    base: Url,
    /// ASCII-serialised origins that may receive our token: the base's first.
    trusted: Vec<String>,
    /// When set, the only origins (besides trusted ones) files may come from.
    file_origins: Option<Vec<String>>,
}

/// Parse an origin as an operator writes it (`https://host[:port]`, a trailing `/` allowed) into
/// its ASCII serialisation.
pub fn parse_origin(raw: &str) -> Result<String, UrlRefusal> {
    let u = Url::parse(raw.trim()).map_err(|_| UrlRefusal::NotAbsolute(raw.into()))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(UrlRefusal::NotHttpOrigin(raw.into()));
    }
    if u.path() != "/" || u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
        return Err(UrlRefusal::NotOriginOnly(raw.into()));
    }
    Ok(u.origin().ascii_serialization())
}

fn origin_of(u: &Url) -> Option<String> {
    (u.username().is_empty() && u.password().is_none() && matches!(u.scheme(), "http" | "https"))
        .then(|| u.origin().ascii_serialization())
}

impl ProviderBase {
    pub fn parse(aud: &str) -> Result<Self, UrlRefusal> {
        let mut base =
            Url::parse(aud).map_err(|e| UrlRefusal::NotUrl { raw: aud.into(), reason: e.to_string() })?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(UrlRefusal::NotHttp(aud.into()));
        }
        if base.query().is_some() || base.fragment().is_some() || !base.username().is_empty() {
            return Err(UrlRefusal::Decorated(aud.into()));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let trusted = vec![base.origin().ascii_serialization()];
        Ok(Self { base, trusted, file_origins: None })
    }

    /// Add the registration's extra token origins and its file-origin pin (both already parsed).
    pub fn with_origins(mut self, token_origins: &[String], file_origins: Option<Vec<String>>) -> Self {
        self.trusted.extend(token_origins.iter().cloned());
        self.file_origins = file_origins;
        self
    }

    /// The base with a trailing slash, for joining relative paths.
    pub fn url(&self) -> &Url {
        &self.base
    }

    /// The provider's own origin, for messages.
    pub fn origin(&self) -> &str {
        &self.trusted[0]
    }

    /// Whether `u` may receive our token.
    pub fn is_trusted(&self, u: &Url) -> bool {
        origin_of(u).is_some_and(|o| self.trusted.contains(&o))
    }

    /// Whether a file fetched without our token may come from `u` (every hop is asked).
    pub fn file_host_allowed(&self, u: &Url) -> Result<(), UrlRefusal> {
        let Some(origin) = origin_of(u) else {
            return Err(UrlRefusal::NotPlainHttp(redact(u)));
        };
        match &self.file_origins {
            Some(pinned) if !self.trusted.contains(&origin) && !pinned.contains(&origin) => {
                Err(UrlRefusal::NotAFileOrigin { origin, pinned: pinned.join(", ") })
            }
            _ => Ok(()),
        }
    }

    /// Parse `raw` and require it under the base path (segment-aligned, no `..` tricks: `Url` normalises them).
    pub fn under(&self, raw: &str) -> Result<Url, UrlRefusal> {
        let u = Url::parse(raw).map_err(|_| UrlRefusal::NotAbsolute(raw.into()))?;
        let base_path = self.base.path();
        let trimmed = base_path.trim_end_matches('/');
        let path_ok = u.path() == trimmed || u.path().starts_with(base_path);
        if origin_of(&u).as_deref() == Some(self.origin()) && path_ok {
            Ok(u)
        } else {
            Err(UrlRefusal::NotUnderBase { raw: raw.into(), base: self.base.to_string() })
        }
    }

    /// Resolve `raw` (possibly relative to `against`) and require a trusted origin.
    pub fn trusted_url(&self, raw: &str, against: &Url) -> Result<Url, UrlRefusal> {
        let u = against.join(raw).map_err(|_| UrlRefusal::Unresolvable(raw.into()))?;
        if self.is_trusted(&u) {
            Ok(u)
        } else {
            Err(UrlRefusal::Untrusted { url: redact(&u), trusted: self.trusted_list() })
        }
    }

    /// "the provider's origin X (or its token_origins Y, Z)", for messages.
    pub fn trusted_list(&self) -> String {
        match &self.trusted[1..] {
            [] => format!("the provider's origin {}", self.origin()),
            extra => {
                format!("the provider's origin {} or its token_origins {}", self.origin(), extra.join(", "))
            }
        }
    }
}

/// Origin and path only: queries of file URLs can be signatures (pre-signed object-store URLs).
pub fn redact(url: &Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_urls_under_the_base_pass() {
        let b = ProviderBase::parse("https://ehr.example/fhir").unwrap();
        assert!(b.under("https://ehr.example/fhir/$export").is_ok());
        assert!(b.under("https://ehr.example/fhir").is_ok());
        assert!(b.under("https://EHR.example:443/fhir/files/a.ndjson").is_ok());
        assert!(b.under("https://ehr.example/fhirX/$export").is_err());
        assert!(b.under("https://ehr.example/fhir/../admin").is_err());
        assert!(b.under("http://ehr.example/fhir/$export").is_err());
        assert!(b.under("https://ehr.example:8443/fhir/$export").is_err());
        assert!(b.under("https://evil.example/fhir/$export").is_err());
        assert!(b.under("https://user@ehr.example/fhir/$export").is_err());
    }

    #[test]
    fn the_token_goes_to_trusted_origins_whatever_the_path() {
        let b = ProviderBase::parse("http://127.0.0.1:9443/sim/fhir/")
            .unwrap()
            .with_origins(&["https://auth.ehr.example".into()], None);
        let kick = Url::parse("http://127.0.0.1:9443/sim/fhir/$export").unwrap();
        assert!(b.trusted_url("/fhir/bulkstatus/1", &kick).is_ok());
        assert!(b.trusted_url("/xyz/fhir/bulkfiles/1.Patient.ndjson", &kick).is_ok());
        assert!(b.trusted_url("https://auth.ehr.example:443/files/1", &kick).is_ok());
        let err = b.trusted_url("http://localhost:9443/x?sig=secret", &kick).unwrap_err().to_string();
        assert!(err.contains("http://localhost:9443/x") && !err.contains("secret"), "{err}");
        assert!(err.contains("token_origins https://auth.ehr.example"), "{err}");
        assert!(b.trusted_url("http://user:pw@127.0.0.1:9443/x", &kick).is_err());
    }

    #[test]
    fn pinned_file_origins_are_a_strict_allow_list() {
        let open = ProviderBase::parse("https://ehr.example/fhir").unwrap();
        let anywhere = Url::parse("https://bucket.s3.example/k?X-Amz-Signature=1").unwrap();
        assert!(open.file_host_allowed(&anywhere).is_ok());
        let pinned = open.clone().with_origins(&[], Some(vec!["https://cdn.example".into()]));
        assert!(pinned.file_host_allowed(&anywhere).unwrap_err().to_string().contains("file_origins"));
        assert!(pinned.file_host_allowed(&Url::parse("https://cdn.example/a").unwrap()).is_ok());
        assert!(pinned.file_host_allowed(&Url::parse("https://ehr.example/files/a").unwrap()).is_ok());
        assert!(open.file_host_allowed(&Url::parse("ftp://ehr.example/a").unwrap()).is_err());
    }

    #[test]
    fn origins_are_parsed_and_normalised() {
        assert_eq!(parse_origin("https://Auth.Example:443/").unwrap(), "https://auth.example");
        assert_eq!(parse_origin("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
        assert!(parse_origin("https://auth.example/path").is_err());
        assert!(parse_origin("ftp://auth.example").is_err());
        assert!(parse_origin("auth.example").is_err());
    }
}
