//! Binding of every outbound URL to the registered provider (no SSRF, no token leaks): export and
//! file URLs must lie under the provider's base URL (`aud`); a status URL may only share its origin,
//! because the SMART reference server drops the base path from status URLs.
use url::Url;

#[derive(Debug, Clone)]
pub struct ProviderBase {
    base: Url,
}

impl ProviderBase {
    pub fn parse(aud: &str) -> Result<Self, String> {
        let mut base = Url::parse(aud).map_err(|e| format!("'{aud}' is not a URL: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(format!("'{aud}' must be an absolute http(s) URL"));
        }
        if base.query().is_some() || base.fragment().is_some() || !base.username().is_empty() {
            return Err(format!("'{aud}' must not carry a query, fragment or credentials"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self { base })
    }

    /// The base with a trailing slash, for joining relative paths.
    pub fn url(&self) -> &Url {
        &self.base
    }

    fn same_origin(&self, u: &Url) -> bool {
        u.scheme() == self.base.scheme()
            && u.host_str().map(str::to_ascii_lowercase) == self.base.host_str().map(str::to_ascii_lowercase)
            && u.port_or_known_default() == self.base.port_or_known_default()
            && u.username().is_empty()
            && u.password().is_none()
    }

    /// Parse `raw` and require it under the base path (segment-aligned, no `..` tricks: `Url` normalises them).
    pub fn under(&self, raw: &str) -> Result<Url, String> {
        let u = Url::parse(raw).map_err(|_| format!("'{raw}' is not an absolute URL"))?;
        let base_path = self.base.path();
        let trimmed = base_path.trim_end_matches('/');
        let path_ok = u.path() == trimmed || u.path().starts_with(base_path);
        if self.same_origin(&u) && path_ok {
            Ok(u)
        } else {
            Err(format!("'{raw}' is not under the registered provider's base URL {}", self.base))
        }
    }

    /// Resolve `raw` (possibly relative to `against`) and require the provider's origin.
    pub fn same_origin_url(&self, raw: &str, against: &Url) -> Result<Url, String> {
        let u = against.join(raw).map_err(|_| format!("'{raw}' is not a URL"))?;
        if self.same_origin(&u) {
            Ok(u)
        } else {
            Err(format!(
                "'{raw}' is not on the registered provider's host {}",
                self.base.origin().ascii_serialization()
            ))
        }
    }
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
    fn status_urls_may_leave_the_base_path_but_not_the_host() {
        let b = ProviderBase::parse("http://127.0.0.1:9443/sim/fhir/").unwrap();
        let kick = Url::parse("http://127.0.0.1:9443/sim/fhir/$export").unwrap();
        assert!(b.same_origin_url("/fhir/bulkstatus/1", &kick).is_ok());
        assert!(b.same_origin_url("http://localhost:9443/x", &kick).is_err());
    }
}
