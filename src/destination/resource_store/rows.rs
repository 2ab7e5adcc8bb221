//! What the resource store keeps of an NDJSON line: a resource's key and version (`meta`), or the
//! resources a `deleted[]` Bundle names (Bulk Data export, "deleted" output: transaction Bundles
//! whose entries have `request.method` DELETE and `request.url` `[type]/[id]`).
use std::borrow::Cow;

use serde::Deserialize;
use time::{format_description::well_known::Rfc3339, macros::format_description, OffsetDateTime, UtcOffset};

/// One resource to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub resource_type: String,
    pub id: String,
    /// `meta.lastUpdated` in UTC with microseconds (see `instant`), when given and valid.
    pub last_updated: Option<String>,
    pub version_id: Option<String>,
    /// The line as received.
    pub json: String,
}

/// One resource a deleted[] Bundle names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    pub resource_type: String,
    pub id: String,
    /// When it was deleted (`response.lastModified`), if the provider said.
    pub at: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("a line is not UTF-8 JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("a line has no id")]
    NoId,
    #[error("a line is not UTF-8")]
    NotUtf8(#[source] std::string::FromUtf8Error),
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    meta: Option<Meta<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(rename = "lastUpdated", borrow, default)]
    last_updated: Option<Cow<'a, str>>,
    #[serde(rename = "versionId", borrow, default)]
    version_id: Option<Cow<'a, str>>,
}

/// The row for one resource line (already validated by the download: JSON with a resourceType).
pub fn row(line: &[u8]) -> Result<Row, RowError> {
    let head: Head = serde_json::from_slice(line).map_err(RowError::NotJson)?;
    let id = head.id.filter(|id| !id.is_empty()).ok_or(RowError::NoId)?.into_owned();
    let (last_updated, version_id) = match head.meta {
        Some(m) => (m.last_updated.as_deref().and_then(instant), m.version_id.map(Cow::into_owned)),
        None => (None, None),
    };
    let resource_type = head.resource_type.into_owned();
    let json = String::from_utf8(line.to_vec()).map_err(RowError::NotUtf8)?;
    Ok(Row { resource_type, id, last_updated, version_id, json })
}

#[derive(Deserialize)]
struct Bundle {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    request: Option<Request>,
    #[serde(default)]
    response: Option<Response>,
}

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    method: String,
    #[serde(default)]
    url: String,
}

#[derive(Deserialize)]
struct Response {
    #[serde(rename = "lastModified", default)]
    last_modified: Option<String>,
}

/// The resources one deleted[] Bundle line names; entries that are not a DELETE of `[type]/[id]`
/// (relative or absolute, maybe with `_history/[vid]`) are passed over.
pub fn deleted(line: &[u8]) -> Result<Vec<Gone>, RowError> {
    let bundle: Bundle = serde_json::from_slice(line).map_err(RowError::NotJson)?;
    Ok(bundle
        .entry
        .into_iter()
        .filter_map(|e| {
            let request = e.request?;
            if !request.method.eq_ignore_ascii_case("DELETE") {
                return None;
            }
            let (resource_type, id) = type_and_id(&request.url)?;
            let at = e.response.and_then(|r| r.last_modified).as_deref().and_then(instant);
            Some(Gone { resource_type, id, at })
        })
        .collect())
}

fn type_and_id(url: &str) -> Option<(String, String)> {
    let path = url.split(['?', '#']).next()?;
    let mut parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(at) = parts.iter().rposition(|p| *p == "_history") {
        parts.truncate(at);
    }
    let [.., resource_type, id] = parts[..] else { return None };
    let is_type = resource_type.starts_with(|c: char| c.is_ascii_uppercase())
        && resource_type.chars().all(|c| c.is_ascii_alphanumeric());
    // FHIR ids: [A-Za-z0-9\-\.]{1,64}.
    let is_id = id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    (is_type && is_id).then(|| (resource_type.to_string(), id.to_string()))
}

/// A FHIR instant in one form that sorts as text and as time alike: UTC, microseconds.
pub fn instant(raw: &str) -> Option<String> {
    let t = OffsetDateTime::parse(raw, &Rfc3339).ok()?.to_offset(UtcOffset::UTC);
    t.format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_keeps_the_line_and_reads_its_meta_in_utc() {
        let line = br#"{"resourceType":"Observation","id":"o1","meta":{"versionId":"3","lastUpdated":"2024-05-01T12:00:00+02:00"},"status":"final"}"#;
        let r = row(line).unwrap();
        assert_eq!((r.resource_type.as_str(), r.id.as_str()), ("Observation", "o1"));
        assert_eq!(r.last_updated.as_deref(), Some("2024-05-01T10:00:00.000000Z"));
        assert_eq!(r.version_id.as_deref(), Some("3"));
        assert_eq!(r.json.as_bytes(), line);
    }

    #[test]
    fn a_row_without_meta_or_with_a_bad_instant_has_no_time() {
        assert_eq!(row(br#"{"resourceType":"Patient","id":"p"}"#).unwrap().last_updated, None);
        let bad = br#"{"resourceType":"Patient","id":"p","meta":{"lastUpdated":"yesterday"}}"#;
        assert_eq!(row(bad).unwrap().last_updated, None);
        assert!(matches!(row(br#"{"resourceType":"Patient"}"#), Err(RowError::NoId)));
    }

    #[test]
    fn instants_sort_as_text_in_time_order() {
        let a = instant("2024-05-01T10:00:00.5Z").unwrap();
        let b = instant("2024-05-01T11:59:59+02:00").unwrap();
        let c = instant("2024-05-01T10:00:00.123456789Z").unwrap();
        assert!(c < a && a > b, "{a} {b} {c}");
    }

    #[test]
    fn a_deleted_bundle_names_each_deleted_resource() {
        let line = br#"{"resourceType":"Bundle","type":"transaction","entry":[
            {"request":{"method":"DELETE","url":"Patient/p1"}},
            {"request":{"method":"DELETE","url":"https://ehr.example/fhir/Observation/o2/_history/4"},"response":{"lastModified":"2024-01-01T00:00:00Z"}},
            {"request":{"method":"PUT","url":"Patient/p3"}},
            {"request":{"method":"DELETE","url":"not a reference"}}]}"#;
        let gone = deleted(line).unwrap();
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert_eq!(
            (gone[0].resource_type.as_str(), gone[0].id.as_str(), gone[0].at.as_deref()),
            ("Patient", "p1", None)
        );
        assert_eq!(gone[1].id, "o2");
        assert_eq!(gone[1].at.as_deref(), Some("2024-01-01T00:00:00.000000Z"));
    }
}
