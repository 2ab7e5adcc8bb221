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

/// A line the store cannot keep: the file fails (the job goes on).
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("a line is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("a {0} has no id, or one that is not a FHIR id ([A-Za-z0-9-.]{{1,64}})")]
    BadId(String),
    #[error("a line's resourceType '{0}' is not a FHIR resource type")]
    BadType(String),
    #[error("a line is not UTF-8")]
    NotUtf8(#[source] std::string::FromUtf8Error),
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Cow<'a, str>,
    // Values, not strings: a number where a string belongs is the file's oddity, read leniently.
    #[serde(default)]
    id: serde_json::Value,
    #[serde(default)]
    meta: serde_json::Value,
}

/// The row for one resource line (already validated by the download: JSON with a resourceType);
/// `None` for an `organizeOutputBy` file's Parameters header line, which is not a resource.
pub fn row(line: &[u8]) -> Result<Option<Row>, RowError> {
    let head: Head = serde_json::from_slice(line).map_err(RowError::NotJson)?;
    if !is_type(&head.resource_type) {
        return Err(RowError::BadType(head.resource_type.chars().take(64).collect()));
    }
    let id = match head.id.as_str() {
        Some(id) if is_id(id) => id.to_string(),
        _ if head.resource_type == "Parameters" => return Ok(None),
        _ => return Err(RowError::BadId(head.resource_type.into_owned())),
    };
    let text = |k: &str| head.meta.get(k).and_then(serde_json::Value::as_str);
    let last_updated = text("lastUpdated").and_then(instant);
    let version_id = text("versionId").map(str::to_string);
    let resource_type = head.resource_type.into_owned();
    let json = String::from_utf8(line.to_vec()).map_err(RowError::NotUtf8)?;
    Ok(Some(Row { resource_type, id, last_updated, version_id, json }))
}

fn is_type(t: &str) -> bool {
    t.len() <= 64
        && t.starts_with(|c: char| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric())
}

/// FHIR ids: `[A-Za-z0-9\-\.]{1,64}`.
fn is_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

#[derive(Deserialize)]
struct Bundle {
    #[serde(default)]
    entry: serde_json::Value,
}

/// The resources one deleted[] Bundle line names; entries that are not a DELETE of `[type]/[id]`
/// (relative or absolute, maybe with `_history/[vid]`) are passed over, as is anything not shaped
/// as the spec says.
pub fn deleted(line: &[u8]) -> Result<Vec<Gone>, RowError> {
    let bundle: Bundle = serde_json::from_slice(line).map_err(RowError::NotJson)?;
    let entries = bundle.entry.as_array().map(Vec::as_slice).unwrap_or_default();
    Ok(entries
        .iter()
        .filter_map(|e| {
            let request = e.get("request")?;
            let method = request.get("method")?.as_str()?;
            if !method.eq_ignore_ascii_case("DELETE") {
                return None;
            }
            let (resource_type, id) = type_and_id(request.get("url")?.as_str()?)?;
            let modified = e.get("response").and_then(|r| r.get("lastModified")).and_then(|t| t.as_str());
            Some(Gone { resource_type, id, at: modified.and_then(instant) })
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
    (is_type(resource_type) && is_id(id)).then(|| (resource_type.to_string(), id.to_string()))
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
        let r = row(line).unwrap().unwrap();
        assert_eq!((r.resource_type.as_str(), r.id.as_str()), ("Observation", "o1"));
        assert_eq!(r.last_updated.as_deref(), Some("2024-05-01T10:00:00.000000Z"));
        assert_eq!(r.version_id.as_deref(), Some("3"));
        assert_eq!(r.json.as_bytes(), line);
    }

    #[test]
    fn a_row_without_meta_or_with_odd_meta_has_no_time_and_a_bad_id_is_refused() {
        let time = |line: &[u8]| row(line).unwrap().unwrap().last_updated;
        assert_eq!(time(br#"{"resourceType":"Patient","id":"p"}"#), None);
        assert_eq!(time(br#"{"resourceType":"Patient","id":"p","meta":{"lastUpdated":"yesterday"}}"#), None);
        let odd = br#"{"resourceType":"Patient","id":"p","meta":{"lastUpdated":5,"versionId":2}}"#;
        assert_eq!(row(odd).unwrap().unwrap().version_id, None);
        assert_eq!(time(br#"{"resourceType":"Patient","id":"p","meta":"x"}"#), None);
        for bad in [
            &br#"{"resourceType":"Patient"}"#[..],
            br#"{"resourceType":"Patient","id":7}"#,
            br#"{"resourceType":"Patient","id":"a b"}"#,
            br#"{"resourceType":"Patient","id":"a\u0000"}"#,
        ] {
            assert!(matches!(row(bad), Err(RowError::BadId(_))), "{}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(row(br#"{"resourceType":"x y","id":"p"}"#), Err(RowError::BadType(_))));
        // organizeOutputBy: a file's Parameters header line is not stored.
        assert!(row(br#"{"resourceType":"Parameters","parameter":[]}"#).unwrap().is_none());
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
            {"request":{"method":"DELETE","url":"not a reference"}},
            {"request":{"method":null,"url":"Patient/p4"}}, {"request":"odd"}, 5]}"#;
        let gone = deleted(line).unwrap();
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert_eq!(
            (gone[0].resource_type.as_str(), gone[0].id.as_str(), gone[0].at.as_deref()),
            ("Patient", "p1", None)
        );
        assert_eq!(gone[1].id, "o2");
        assert_eq!(gone[1].at.as_deref(), Some("2024-01-01T00:00:00.000000Z"));
        assert!(deleted(br#"{"resourceType":"Bundle","entry":null}"#).unwrap().is_empty());
    }
}
