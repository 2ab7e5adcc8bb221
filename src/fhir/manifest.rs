//! The Bulk Data export manifest ("Complete Status" body, Bulk Data v2/v3 and STU4): we accept both
//! `error` (v1–v3) and `outcome` (STU4), `deleted`, `link` next pages, and output entries without
//! `type` (v3 `organizeOutputBy`: each file mixes resource types).
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct ManifestFile {
    #[serde(rename = "type")]
    pub resource_type: Option<String>,
    pub url: String,
    /// Resources in the file, where the provider says (`count` is optional in every version).
    #[serde(default, deserialize_with = "lenient_count")]
    pub count: Option<i64>,
}

/// Largest `count` believed: more resources than any export holds, small enough that any number of
/// them adds up without overflow.
const MAX_COUNT: i64 = 1_000_000_000_000;

/// A `count` that is not a non-negative integer (or is past belief) is ignored, not a reason to refuse the manifest:
/// it only feeds progress estimates.
fn lenient_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_i64().filter(|n| (0..=MAX_COUNT).contains(n)))
}

#[derive(Debug, Clone, Deserialize)]
pub struct ManifestLink {
    pub relation: String,
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// When the export's data was current (any JSON: read with `transaction_time`).
    #[serde(default)]
    transaction_time: Option<serde_json::Value>,
    #[serde(default)]
    pub requires_access_token: bool,
    pub output: Vec<ManifestFile>,
    #[serde(default)]
    pub error: Vec<ManifestFile>,
    #[serde(default)]
    pub outcome: Vec<ManifestFile>,
    #[serde(default)]
    pub deleted: Vec<ManifestFile>,
    #[serde(default)]
    pub link: Vec<ManifestLink>,
}

/// Which list of the manifest a file came from; decides the expected resource type and the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Output,
    Error,
    Deleted,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Output => "output",
            FileKind::Error => "error",
            FileKind::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "error" => FileKind::Error,
            "deleted" => FileKind::Deleted,
            _ => FileKind::Output,
        }
    }
}

/// One file to import, flattened from all lists and pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub kind: FileKind,
    /// The type every line must have; empty for an untyped (`organizeOutputBy`) entry.
    pub resource_type: String,
    pub url: String,
    /// `requiresAccessToken` of the page that listed the file.
    pub requires_token: bool,
    /// The manifest's `count` for the file, if given.
    pub expected_resources: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the export manifest is not valid JSON of the expected shape: {0}")]
    Shape(String),
}

impl Manifest {
    pub fn parse(body: &[u8]) -> Result<Self, ManifestError> {
        serde_json::from_slice(body).map_err(|e| ManifestError::Shape(e.to_string()))
    }

    /// The URL of the next page, if any.
    /// `transactionTime` as the provider wrote it, if it is a string.
    pub fn transaction_time(&self) -> Option<&str> {
        self.transaction_time.as_ref()?.as_str().map(str::trim).filter(|t| !t.is_empty() && t.len() <= 64)
    }

    pub fn next_page(&self) -> Option<&str> {
        self.link.iter().find(|l| l.relation == "next").map(|l| l.url.as_str())
    }

    /// Files of this page in manifest order: output, then error/outcome, then deleted.
    pub fn planned_files(&self) -> Result<Vec<PlannedFile>, ManifestError> {
        let mut files = Vec::new();
        for f in &self.output {
            // No type: an `organizeOutputBy` file, whose lines may be of any type ("").
            let resource_type = f.resource_type.clone().unwrap_or_default();
            files.push(PlannedFile {
                kind: FileKind::Output,
                resource_type,
                url: f.url.clone(),
                requires_token: self.requires_access_token,
                expected_resources: f.count,
            });
        }
        for f in self.error.iter().chain(&self.outcome) {
            files.push(PlannedFile {
                kind: FileKind::Error,
                resource_type: "OperationOutcome".into(),
                url: f.url.clone(),
                requires_token: self.requires_access_token,
                expected_resources: f.count,
            });
        }
        for f in &self.deleted {
            files.push(PlannedFile {
                kind: FileKind::Deleted,
                resource_type: "Bundle".into(),
                url: f.url.clone(),
                requires_token: self.requires_access_token,
                expected_resources: f.count,
            });
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_error_dialects_and_deleted_are_planned() {
        let m = Manifest::parse(
            br#"{"transactionTime":"2024-01-01T00:00:00Z","requiresAccessToken":true,
            "output":[{"type":"Patient","url":"http://p/1.ndjson","count":3}],
            "error":[{"type":"OperationOutcome","url":"http://p/e.ndjson"}],
            "outcome":[{"type":"OperationOutcome","url":"http://p/o.ndjson"}],
            "deleted":[{"type":"Bundle","url":"http://p/d.ndjson"}],
            "link":[{"relation":"next","url":"http://p/page2"}]}"#,
        )
        .unwrap();
        let files = m.planned_files().unwrap();
        assert_eq!(files.len(), 4);
        assert_eq!(files[1].kind, FileKind::Error);
        assert_eq!(files[2].kind, FileKind::Error);
        assert_eq!(files[3].kind, FileKind::Deleted);
        assert_eq!(files[3].resource_type, "Bundle");
        assert_eq!(m.next_page(), Some("http://p/page2"));
    }

    #[test]
    fn an_output_entry_without_type_takes_any_type() {
        let m = Manifest::parse(br#"{"output":[{"url":"http://p/1.ndjson"}]}"#).unwrap();
        assert_eq!(m.planned_files().unwrap()[0].resource_type, "");
    }
}
