//! What a provider wrote about its own export: the OperationOutcome lines of the files a manifest
//! lists in `error[]` (v1–v3) or `outcome[]` (STU4). They are not data: each issue is kept with the
//! provider's severity and text for our outcome, and error and fatal issues are counted as errors
//! of the import (the SMART reference server moves failed files there: "Failed to export …").
use serde::Deserialize;

use crate::fhir::operation_outcome::{Issue, IssueCode, Severity};

/// Issues we keep word for word from one file; the rest are counted.
pub const MAX_KEPT_ISSUES: usize = 100;
/// Longest provider text we keep for one issue.
const MAX_ISSUE_CHARS: usize = 500;

#[derive(Debug, Default)]
pub struct ProviderReport {
    pub kept: Vec<Issue>,
    /// Error and fatal issues.
    pub errors: i64,
    pub warnings: i64,
    pub others: i64,
}

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    issue: Vec<RawIssue>,
}

#[derive(Deserialize)]
struct RawIssue {
    severity: Option<String>,
    code: Option<String>,
    diagnostics: Option<String>,
    details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    text: Option<String>,
}

impl ProviderReport {
    /// Add one validated OperationOutcome line.
    pub fn add(&mut self, line: &[u8]) {
        let Ok(parsed) = serde_json::from_slice::<Line>(line) else {
            // Validation already vouched for the JSON; a shape we cannot read still counts.
            self.push(Severity::Error, "an OperationOutcome we could not read".into());
            return;
        };
        if parsed.issue.is_empty() {
            self.push(Severity::Warning, "an OperationOutcome without issues".into());
        }
        for i in parsed.issue {
            let severity = match i.severity.as_deref() {
                Some("fatal") => Severity::Fatal,
                Some("error") => Severity::Error,
                Some("warning") => Severity::Warning,
                _ => Severity::Information,
            };
            let text = i
                .diagnostics
                .or_else(|| i.details.and_then(|d| d.text))
                .or(i.code)
                .unwrap_or_else(|| "no details".into());
            self.push(severity, text.chars().take(MAX_ISSUE_CHARS).collect());
        }
    }

    fn push(&mut self, severity: Severity, text: String) {
        match severity {
            Severity::Fatal | Severity::Error => self.errors += 1,
            Severity::Warning => self.warnings += 1,
            Severity::Information => self.others += 1,
        }
        if self.kept.len() < MAX_KEPT_ISSUES {
            let diagnostics = Some(format!("the provider reported: {text}"));
            self.kept.push(Issue { severity, code: IssueCode::Processing, diagnostics });
        }
    }

    pub fn total(&self) -> i64 {
        self.errors + self.warnings + self.others
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_issue_keeps_the_providers_severity_and_text() {
        let mut r = ProviderReport::default();
        r.add(br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","details":{"text":"Failed to export 2.CarePlan.ndjson"}}]}"#);
        r.add(br#"{"resourceType":"OperationOutcome","issue":[{"severity":"warning","code":"processing","diagnostics":"3 resources skipped"},{"severity":"fatal","code":"exception"}]}"#);
        assert_eq!((r.errors, r.warnings, r.total()), (2, 1, 3));
        let texts: Vec<&str> = r.kept.iter().map(|i| i.diagnostics.as_deref().unwrap()).collect();
        assert_eq!(
            texts,
            [
                "the provider reported: Failed to export 2.CarePlan.ndjson",
                "the provider reported: 3 resources skipped",
                "the provider reported: exception"
            ]
        );
        assert_eq!(r.kept[1].severity, Severity::Warning);
    }
}
