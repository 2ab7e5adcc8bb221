//! OperationOutcome (FHIR R4 §OperationOutcome): every error body and every per-file outcome line.
use serde::{Deserialize, Serialize};

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

impl IssueCode {
    /// The code as FHIR spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Security => "security",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::NotFound => "not-found",
            IssueCode::NotSupported => "not-supported",
            IssueCode::TooLong => "too-long",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Throttled => "throttled",
            IssueCode::Processing => "processing",
            IssueCode::Exception => "exception",
            IssueCode::Timeout => "timeout",
            IssueCode::Transient => "transient",
            IssueCode::Informational => "informational",
            IssueCode::Incomplete => "incomplete",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
}

/// A provider's OperationOutcome as sent: any issue code FHIR defines, not only the ones we emit.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Received {
    resource_type: String,
    #[serde(default)]
    issue: Vec<ReceivedIssue>,
}

#[derive(Deserialize)]
struct ReceivedIssue {
    code: String,
    diagnostics: Option<String>,
}

impl Received {
    fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(body).ok().filter(|oo| oo.resource_type == "OperationOutcome")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcome {
    pub resource_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `operationoutcome-sourceResource`, when the outcome is about one known resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<serde_json::Value>,
    pub issue: Vec<Issue>,
}

/// The extension naming the resource an outcome is about (Bulk Submit asks for it on
/// per-resource issues).
pub const SOURCE_RESOURCE: &str = "http://hl7.org/fhir/StructureDefinition/operationoutcome-sourceResource";

impl OperationOutcome {
    /// One issue with a human-readable diagnostic.
    pub fn single(severity: Severity, code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self {
            resource_type: "OperationOutcome".into(),
            id: None,
            extension: vec![],
            issue: vec![Issue { severity, code, diagnostics: Some(diagnostics.into()) }],
        }
    }

    /// The same, about the resource `reference` (`Type/id`, or absolute).
    pub fn about(mut self, reference: String) -> Self {
        self.extension
            .push(serde_json::json!({"url": SOURCE_RESOURCE, "valueReference": {"reference": reference}}));
        self
    }

    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self::single(Severity::Error, code, diagnostics)
    }

    pub fn information(diagnostics: impl Into<String>) -> Self {
        Self::single(Severity::Information, IssueCode::Informational, diagnostics)
    }

    /// The first diagnostic of a provider's OperationOutcome JSON, if the body is one.
    pub fn summarize(body: &[u8]) -> Option<String> {
        let texts: Vec<String> =
            Received::parse(body)?.issue.into_iter().map(|i| i.diagnostics.unwrap_or(i.code)).collect();
        (!texts.is_empty()).then(|| texts.join("; "))
    }

    /// True when every issue is `transient`: the provider says "try again later".
    pub fn is_transient(body: &[u8]) -> bool {
        Received::parse(body)
            .is_some_and(|oo| !oo.issue.is_empty() && oo.issue.iter().all(|i| i.code == "transient"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_codes_are_named_as_fhir_spells_them() {
        use IssueCode::*;
        let all = [
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
        ];
        for code in all {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn a_providers_outcome_is_read_whatever_its_issue_codes() {
        let body = br#"{"resourceType":"OperationOutcome","issue":[
            {"severity":"error","code":"business-rule","diagnostics":"export window closed"},
            {"severity":"fatal","code":"not-found"}]}"#;
        assert_eq!(OperationOutcome::summarize(body).as_deref(), Some("export window closed; not-found"));
        assert!(!OperationOutcome::is_transient(body));
        let later =
            br#"{"resourceType":"OperationOutcome","issue":[{"severity":"warning","code":"transient"}]}"#;
        assert!(OperationOutcome::is_transient(later));
        assert_eq!(OperationOutcome::summarize(br#"{"resourceType":"Patient"}"#), None);
        assert!(!OperationOutcome::is_transient(br#"{"resourceType":"OperationOutcome","issue":[]}"#));
    }
}
