//! OperationOutcome (FHIR R4 §OperationOutcome): every error body and every per-file outcome line.
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// The `issue.code` values we use (FHIR value set `issue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Security,
    Login,
    Forbidden,
    NotFound,
    NotSupported,
    TooLong,
    TooCostly,
    Throttled,
    Processing,
    Exception,
    Timeout,
    Transient,
    Informational,
    Incomplete,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcome {
    pub resource_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub issue: Vec<Issue>,
}

impl OperationOutcome {
    /// One issue with a human-readable diagnostic.
    pub fn single(severity: Severity, code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self {
            resource_type: "OperationOutcome".into(),
            id: None,
            issue: vec![Issue {
                severity,
                code,
                diagnostics: Some(diagnostics.into()),
                expression: None,
                extension: None,
            }],
        }
    }

    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self::single(Severity::Error, code, diagnostics)
    }

    pub fn information(diagnostics: impl Into<String>) -> Self {
        Self::single(Severity::Information, IssueCode::Informational, diagnostics)
    }

    /// The first diagnostic of a provider's OperationOutcome JSON, if the body is one.
    pub fn summarize(body: &[u8]) -> Option<String> {
        let oo: OperationOutcome = serde_json::from_slice(body).ok()?;
        if oo.resource_type != "OperationOutcome" {
            return None;
        }
        let texts: Vec<String> = oo
            .issue
            .iter()
            .map(|i| i.diagnostics.clone().unwrap_or_else(|| format!("{:?}", i.code).to_lowercase()))
            .collect();
        (!texts.is_empty()).then(|| texts.join("; "))
    }

    /// True when every issue is `transient`: the provider says "try again later".
    pub fn is_transient(body: &[u8]) -> bool {
        serde_json::from_slice::<OperationOutcome>(body)
            .map(|oo| !oo.issue.is_empty() && oo.issue.iter().all(|i| i.code == IssueCode::Transient))
            .unwrap_or(false)
    }
}
