//! The `$bulk-submit` request (HL7 Bulk Data IG, STU4 ballot, "Bulk Submit"): a FHIR Parameters
//! resource naming the submitter, the submission, its status and a manifest to import. Read as
//! providers send it, not only as the ballot spells it: both status code sets (the ballot's
//! `event-status` and the earlier `submission-status`), values as `valueUrl`, `valueUri` or
//! `valueString`, the base URL parameter in any case, `fileRequestHeaders` for
//! `fileRequestHeader`, and a parameter present with no value read as absent.
use serde_json::{Map, Value};

use super::parameters::NDJSON_OUTPUT_FORMATS;

/// The ballot's status codes.
pub const EVENT_STATUS: &str = "http://hl7.org/fhir/event-status";
/// The earlier drafts' status codes (still sent by the SMART reference provider).
pub const SUBMISSION_STATUS: &str = "http://hl7.org/fhir/uv/bulkdata/ValueSet/submission-status";

/// Longest `submissionId` kept.
const MAX_SUBMISSION_ID: usize = 256;
/// Most `fileRequestHeader`s one request may carry, and the longest name and value.
const MAX_HEADERS: usize = 32;
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Headers a request header from a provider may not set: the transfer is ours to shape.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "range",
    "if-range",
    "accept-encoding",
    "proxy-authorization",
    // Hop-by-hop (RFC 9110 §7.6.1) and the like: they belong to one connection, not to the file.
    "keep-alive",
    "trailer",
    "proxy-connection",
    "expect",
];

/// Where a submission is, as stored (one code set, the ballot's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmissionStatus {
    InProgress,
    /// Closed by the provider: it finishes once every manifest is done.
    Completed,
    /// Stopped by the provider: all work stops and what was stored goes.
    Stopped,
}

impl SubmissionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubmissionStatus::InProgress => "in-progress",
            SubmissionStatus::Completed => "completed",
            SubmissionStatus::Stopped => "stopped",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "in-progress" => Some(SubmissionStatus::InProgress),
            "completed" => Some(SubmissionStatus::Completed),
            "stopped" => Some(SubmissionStatus::Stopped),
            _ => None,
        }
    }

    /// A code of either code set; with no system, a code of either. (The stored form is the
    /// ballot's.)
    fn of(system: Option<&str>, code: &str) -> Option<Self> {
        let ballot = Self::parse(code);
        let earlier = match code {
            "in-progress" => Some(SubmissionStatus::InProgress),
            "complete" => Some(SubmissionStatus::Completed),
            "aborted" => Some(SubmissionStatus::Stopped),
            _ => None,
        };
        match system {
            Some(EVENT_STATUS) => ballot,
            Some(SUBMISSION_STATUS) => earlier,
            None => ballot.or(earlier),
            Some(_) => None,
        }
    }
}

/// Who submits: an Identifier agreed out of band, checked against the registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitter {
    pub system: Option<String>,
    pub value: String,
}

/// A header to send on the submission's manifest and file requests. Its value is a secret (often
/// a credential): never logged, and `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestHeader {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for RequestHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: <hidden>", self.name)
    }
}

/// A validated `$bulk-submit` request (URL binding and the submitter check come later, against
/// the registration).
#[derive(Clone, PartialEq, Eq)]
pub struct SubmitRequest {
    pub submitter: Submitter,
    pub submission_id: String,
    /// `None`: not given (a request adding a manifest to a submission in progress).
    pub status: Option<SubmissionStatus>,
    pub manifest_url: Option<String>,
    pub replaces_manifest_url: Option<String>,
    pub fhir_base_url: Option<String>,
    pub headers: Vec<RequestHeader>,
    pub oauth_metadata_urls: Vec<String>,
    /// The `fileEncryptionKey` parameter as sent (a JWK, secret).
    /// `fileEncryptionKey`'s `value` (a JWK or key bytes; checked by the service), its `coding`
    /// being `jwe`.
    pub encryption_key: Option<String>,
}

impl std::fmt::Debug for SubmitRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitRequest")
            .field("submitter", &self.submitter)
            .field("submission_id", &self.submission_id)
            .field("status", &self.status)
            .field("manifest_url", &self.manifest_url)
            .field("replaces_manifest_url", &self.replaces_manifest_url)
            .field("fhir_base_url", &self.fhir_base_url)
            .field("headers", &self.headers)
            .field("oauth_metadata_urls", &self.oauth_metadata_urls)
            .field("encryption_key", &self.encryption_key.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Why a `$bulk-submit` body is refused; the message tells the sender what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the body must be a FHIR Parameters resource (resourceType \"Parameters\" with a \"parameter\" array)")]
    NotParameters,
    #[error("the {0} parameter is required")]
    Missing(&'static str),
    #[error("the {0} parameter may appear only once")]
    Repeated(String),
    #[error("the submitter parameter must be a valueIdentifier with a value (and usually a system)")]
    BadSubmitter,
    #[error("submissionId must be a string of 1 to {MAX_SUBMISSION_ID} characters, without control characters or bidirectional overrides")]
    BadSubmissionId,
    #[error("submissionStatus '{0}' is not a code of {EVENT_STATUS} (in-progress, completed, stopped) or {SUBMISSION_STATUS} (in-progress, complete, aborted)")]
    BadStatus(String),
    #[error("a request must carry a submissionStatus, a manifestUrl, or both")]
    Empty,
    #[error("the {name} parameter must be an absolute http(s) URL (received: {value})")]
    BadUrl { name: String, value: String },
    #[error("replacesManifestUrl needs the manifestUrl that replaces it, or none to withdraw it")]
    ReplacesItself,
    #[error("outputFormat '{0}' cannot be imported; supported values: {list}", list = NDJSON_OUTPUT_FORMATS.join(", "))]
    OutputFormat(String),
    #[error("fileRequestHeader: {0}")]
    BadHeader(String),
    #[error("fileEncryptionKey: {0}")]
    BadEncryptionKey(String),
    #[error("parameter '{0}' is not a $bulk-submit parameter (submitter, submissionId, submissionStatus, manifestUrl, replacesManifestUrl, outputFormat, fhirBaseUrl, fileRequestHeader, oauthMetadataUrl, fileEncryptionKey, metadata, import)")]
    Unknown(String),
}

/// A parameter's value: `valueUrl`, `valueUri` or `valueString` (then any other primitive
/// `value[x]`); `None` when it has none (a parameter with no value reads as absent).
fn text(p: &Map<String, Value>) -> Option<String> {
    let preferred = ["valueUrl", "valueUri", "valueString"].iter().find_map(|k| p.get(*k));
    let any = || p.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v);
    match preferred.or_else(any)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

/// Whether a parameter carries anything: a value, or parts.
fn has_value(p: &Map<String, Value>) -> bool {
    p.iter().any(|(k, v)| (k.starts_with("value") && !v.is_null()) || (k == "part" && v.is_array()))
}

fn part<'a>(p: &'a Map<String, Value>, name: &str) -> Option<&'a Map<String, Value>> {
    p.get("part")?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .find(|q| q.get("name").and_then(Value::as_str) == Some(name))
}

fn absolute_url(name: &str, value: String) -> Result<String, SubmitError> {
    match url::Url::parse(&value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(value),
        _ => Err(SubmitError::BadUrl { name: name.to_string(), value }),
    }
}

/// `fileEncryptionKey`: parts `coding` (only `jwe`, the default) and `value`.
fn encryption_key(p: &Map<String, Value>) -> Result<String, SubmitError> {
    let coding = part(p, "coding");
    let code = coding.and_then(|c| c.get("valueCoding")?.get("code")?.as_str().map(str::to_string));
    let code = code.or_else(|| coding.and_then(text)).unwrap_or_else(|| "jwe".into());
    if !code.eq_ignore_ascii_case("jwe") {
        return Err(SubmitError::BadEncryptionKey(format!("coding '{code}' is not supported (only jwe is)")));
    }
    part(p, "value")
        .and_then(text)
        .ok_or_else(|| SubmitError::BadEncryptionKey("a value part is required".into()))
}

fn header(p: &Map<String, Value>) -> Result<RequestHeader, SubmitError> {
    let field = |n| part(p, n).and_then(text);
    let name =
        field("headerName").ok_or_else(|| SubmitError::BadHeader("a headerName part is required".into()))?;
    let value =
        field("headerValue").ok_or_else(|| SubmitError::BadHeader(format!("{name} has no headerValue")))?;
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.len() > MAX_HEADER_BYTES || !name.chars().all(token) {
        return Err(SubmitError::BadHeader(format!("'{name}' is not a header name")));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(SubmitError::BadHeader(format!("{name} is set by this server and cannot be sent")));
    }
    if value.len() > MAX_HEADER_BYTES || value.chars().any(|c| !(c == '\t' || (' '..='~').contains(&c))) {
        return Err(SubmitError::BadHeader(format!(
            "the value of {name} is too long or holds characters other than printable ASCII"
        )));
    }
    Ok(RequestHeader { name, value })
}

impl SubmitRequest {
    /// Parse and validate a `$bulk-submit` body.
    pub fn parse(body: &[u8]) -> Result<Self, SubmitError> {
        let raw: Value = serde_json::from_slice(body).map_err(|e| SubmitError::Json(e.to_string()))?;
        let params = match (raw.get("resourceType").and_then(Value::as_str), raw.get("parameter")) {
            (Some("Parameters"), Some(Value::Array(params))) => params,
            _ => return Err(SubmitError::NotParameters),
        };
        let mut once: std::collections::HashMap<String, &Map<String, Value>> = Default::default();
        let mut headers = Vec::new();
        let mut oauth_metadata_urls = Vec::new();
        for p in params.iter().filter_map(Value::as_object) {
            let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
            let key = name.to_ascii_lowercase();
            if !has_value(p) {
                continue;
            }
            match key.as_str() {
                "filerequestheader" | "filerequestheaders" => {
                    if headers.len() == MAX_HEADERS {
                        return Err(SubmitError::BadHeader(format!("at most {MAX_HEADERS} headers")));
                    }
                    headers.push(header(p)?);
                }
                "oauthmetadataurl" => {
                    if let Some(u) = text(p) {
                        oauth_metadata_urls.push(absolute_url("oauthMetadataUrl", u)?);
                    }
                }
                // IG-defined extras; nothing here acts on them yet.
                "metadata" | "import" => {}
                "submitter"
                | "submissionid"
                | "submissionstatus"
                | "manifesturl"
                | "replacesmanifesturl"
                | "outputformat"
                | "fhirbaseurl"
                | "fileencryptionkey" => {
                    if once.insert(key, p).is_some() {
                        return Err(SubmitError::Repeated(name.to_string()));
                    }
                }
                _ => return Err(SubmitError::Unknown(name.to_string())),
            }
        }
        let get = |k: &str| once.get(k).copied();
        let submitter = get("submitter").ok_or(SubmitError::Missing("submitter"))?;
        let identifier =
            submitter.get("valueIdentifier").and_then(Value::as_object).ok_or(SubmitError::BadSubmitter)?;
        let field = |k| identifier.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
        let submitter = Submitter {
            system: field("system").map(str::to_string),
            value: field("value").ok_or(SubmitError::BadSubmitter)?.to_string(),
        };
        let submission_id = get("submissionid").and_then(text).ok_or(SubmitError::Missing("submissionId"))?;
        if submission_id.chars().count() > MAX_SUBMISSION_ID
            || !crate::plain_text::is_plain_text(&submission_id)
        {
            return Err(SubmitError::BadSubmissionId);
        }
        let status = match get("submissionstatus") {
            None => None,
            Some(p) => {
                let coding = p.get("valueCoding").and_then(Value::as_object);
                let code = coding.and_then(|c| c.get("code")).and_then(Value::as_str).map(str::to_string);
                let code = code.or_else(|| text(p)).unwrap_or_default();
                let system = coding.and_then(|c| c.get("system")).and_then(Value::as_str);
                Some(SubmissionStatus::of(system, &code).ok_or(SubmitError::BadStatus(code))?)
            }
        };
        let url_of = |k: &str, shown: &str| get(k).and_then(text).map(|u| absolute_url(shown, u)).transpose();
        let manifest_url = url_of("manifesturl", "manifestUrl")?;
        let replaces_manifest_url = url_of("replacesmanifesturl", "replacesManifestUrl")?;
        let fhir_base_url = url_of("fhirbaseurl", "fhirBaseUrl")?;
        if status.is_none() && manifest_url.is_none() && replaces_manifest_url.is_none() {
            return Err(SubmitError::Empty);
        }
        if replaces_manifest_url.is_some() && replaces_manifest_url == manifest_url {
            return Err(SubmitError::ReplacesItself);
        }
        if let Some(format) = get("outputformat").and_then(text) {
            let base = format.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            if !NDJSON_OUTPUT_FORMATS.contains(&base.as_str()) {
                return Err(SubmitError::OutputFormat(format));
            }
        }
        let encryption_key =
            get("fileencryptionkey").filter(|p| has_value(p)).map(encryption_key).transpose()?;
        Ok(Self {
            submitter,
            submission_id,
            status,
            manifest_url,
            replaces_manifest_url,
            fhir_base_url,
            headers,
            oauth_metadata_urls,
            encryption_key,
        })
    }
}

/// A `$bulk-submit-status` request: whose submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRequest {
    pub submitter: Submitter,
    pub submission_id: String,
}

impl StatusRequest {
    pub fn parse(body: &[u8]) -> Result<Self, SubmitError> {
        let raw: Value = serde_json::from_slice(body).map_err(|e| SubmitError::Json(e.to_string()))?;
        let params = match (raw.get("resourceType").and_then(Value::as_str), raw.get("parameter")) {
            (Some("Parameters"), Some(Value::Array(params))) => params,
            _ => return Err(SubmitError::NotParameters),
        };
        let named = |n: &str| {
            params
                .iter()
                .filter_map(Value::as_object)
                .find(|p| p.get("name").and_then(Value::as_str).is_some_and(|k| k.eq_ignore_ascii_case(n)))
        };
        let identifier = named("submitter")
            .ok_or(SubmitError::Missing("submitter"))?
            .get("valueIdentifier")
            .and_then(Value::as_object)
            .ok_or(SubmitError::BadSubmitter)?;
        let field = |k| identifier.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
        let submitter = Submitter {
            system: field("system").map(str::to_string),
            value: field("value").ok_or(SubmitError::BadSubmitter)?.to_string(),
        };
        let submission_id =
            named("submissionId").and_then(text).ok_or(SubmitError::Missing("submissionId"))?;
        Ok(Self { submitter, submission_id })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(params: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"resourceType": "Parameters", "parameter": params})).unwrap()
    }

    fn submitter() -> Value {
        json!({"name": "submitter", "valueIdentifier": {"system": "https://ehr.example/ids", "value": "ehr-1"}})
    }

    #[test]
    fn the_ballots_form_and_the_smart_providers_form_read_the_same() {
        let ballot = body(json!([
            submitter(),
            {"name": "submissionId", "valueString": "s-1"},
            {"name": "submissionStatus", "valueCoding": {"system": EVENT_STATUS, "code": "completed"}},
            {"name": "manifestUrl", "valueUrl": "https://ehr.example/m/1"},
            {"name": "fhirBaseUrl", "valueUrl": "https://ehr.example/fhir"},
        ]));
        let smart = body(json!([
            submitter(),
            {"name": "submissionId", "valueString": "s-1"},
            {"name": "submissionStatus", "valueCoding": {"system": SUBMISSION_STATUS, "code": "complete"}},
            {"name": "manifestUrl", "valueString": "https://ehr.example/m/1"},
            {"name": "FHIRBaseUrl", "valueString": "https://ehr.example/fhir"},
        ]));
        let (a, b) = (SubmitRequest::parse(&ballot).unwrap(), SubmitRequest::parse(&smart).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.status, Some(SubmissionStatus::Completed));
        assert_eq!(a.submitter.value, "ehr-1");
        assert_eq!(a.fhir_base_url.as_deref(), Some("https://ehr.example/fhir"));
        let aborted = body(json!([
            submitter(),
            {"name": "submissionId", "valueString": "s-1"},
            {"name": "submissionStatus", "valueCoding": {"system": SUBMISSION_STATUS, "code": "aborted"}},
        ]));
        assert_eq!(SubmitRequest::parse(&aborted).unwrap().status, Some(SubmissionStatus::Stopped));
    }

    #[test]
    fn a_parameter_with_no_value_reads_as_absent_so_a_replace_without_a_manifest_withdraws() {
        let withdraw = body(json!([
            submitter(),
            {"name": "submissionId", "valueString": "s-1"},
            {"name": "manifestUrl"},
            {"name": "FHIRBaseUrl"},
            {"name": "replacesManifestUrl", "valueString": "https://ehr.example/m/1"},
        ]));
        let r = SubmitRequest::parse(&withdraw).unwrap();
        assert_eq!((r.manifest_url, r.fhir_base_url), (None, None));
        assert_eq!(r.replaces_manifest_url.as_deref(), Some("https://ehr.example/m/1"));
    }

    #[test]
    fn request_headers_are_kept_hidden_from_debug_and_reserved_ones_refused() {
        let with_headers = body(json!([
            submitter(),
            {"name": "submissionId", "valueString": "s-1"},
            {"name": "manifestUrl", "valueUrl": "https://ehr.example/m/1"},
            {"name": "fileRequestHeader", "part": [
                {"name": "headerName", "valueString": "X-Api-Key"},
                {"name": "headerValue", "valueString": "sekrit"}]},
            {"name": "fileRequestHeaders", "part": [
                {"name": "headerName", "valueString": "Authorization"},
                {"name": "headerValue", "valueString": "Bearer abc"}]},
        ]));
        let r = SubmitRequest::parse(&with_headers).unwrap();
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.headers[0].value, "sekrit");
        let shown = format!("{r:?}");
        assert!(!shown.contains("sekrit") && !shown.contains("abc"), "{shown}");
        let host = body(json!([
            submitter(),
            {"name": "submissionId", "valueString": "s-1"},
            {"name": "manifestUrl", "valueUrl": "https://ehr.example/m/1"},
            {"name": "fileRequestHeader", "part": [
                {"name": "headerName", "valueString": "Host"},
                {"name": "headerValue", "valueString": "elsewhere"}]},
        ]));
        assert!(matches!(SubmitRequest::parse(&host), Err(SubmitError::BadHeader(_))));
    }

    #[test]
    fn bad_requests_name_their_problem() {
        let cases: Vec<(Value, SubmitError)> = vec![
            (
                json!([{"name": "submissionId", "valueString": "s"}, {"name": "manifestUrl", "valueUrl": "https://e/m"}]),
                SubmitError::Missing("submitter"),
            ),
            (
                json!([submitter(), {"name": "manifestUrl", "valueUrl": "https://e/m"}]),
                SubmitError::Missing("submissionId"),
            ),
            (json!([submitter(), {"name": "submissionId", "valueString": "s"}]), SubmitError::Empty),
            (
                json!([submitter(), {"name": "submissionId", "valueString": "s"}, {"name": "submissionStatus", "valueCoding": {"system": EVENT_STATUS, "code": "complete"}}]),
                SubmitError::BadStatus("complete".into()),
            ),
            (
                json!([submitter(), {"name": "submissionId", "valueString": "s"}, {"name": "manifestUrl", "valueUrl": "ftp://e/m"}]),
                SubmitError::BadUrl { name: "manifestUrl".into(), value: "ftp://e/m".into() },
            ),
            (
                json!([submitter(), {"name": "submissionId", "valueString": "s"}, {"name": "manifestUrl", "valueUrl": "https://e/m"}, {"name": "outputFormat", "valueString": "text/csv"}]),
                SubmitError::OutputFormat("text/csv".into()),
            ),
            (
                json!([submitter(), {"name": "submissionId", "valueString": "s"}, {"name": "manifestUrl", "valueUrl": "https://e/m"}, {"name": "exportUrl", "valueUrl": "https://e/x"}]),
                SubmitError::Unknown("exportUrl".into()),
            ),
            (
                json!([submitter(), submitter(), {"name": "submissionId", "valueString": "s"}, {"name": "manifestUrl", "valueUrl": "https://e/m"}]),
                SubmitError::Repeated("submitter".into()),
            ),
        ];
        for (params, want) in cases {
            assert_eq!(SubmitRequest::parse(&body(params.clone())), Err(want), "{params}");
        }
        assert_eq!(SubmitRequest::parse(b"{}"), Err(SubmitError::NotParameters));
        let ndjson_with_version = body(json!([
            submitter(),
            {"name": "submissionId", "valueString": "s"},
            {"name": "manifestUrl", "valueUrl": "https://e/m"},
            {"name": "outputFormat", "valueString": "application/fhir+ndjson;fhirVersion=4.0"},
        ]));
        assert!(SubmitRequest::parse(&ndjson_with_version).is_ok());
    }
}
