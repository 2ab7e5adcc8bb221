//! The `$import` ping body (Ping and Pull import proposal, "Ping request"): a FHIR Parameters resource
//! with `exportUrl`, `exportType` and export kick-off parameters to pass through.
use serde::Deserialize;
use serde_json::{Map, Value};

/// Kick-off parameters of Bulk Data Export (v2/v3/STU4) that a ping may carry and we forward.
pub const KICKOFF_PARAMETERS: &[&str] = &[
    "_outputFormat",
    "_since",
    "_until",
    "_type",
    "_elements",
    "_typeFilter",
    "patient",
    "includeAssociatedData",
    "allowPartialManifests",
    "organizeOutputBy",
];

/// `_outputFormat` values that mean NDJSON (Bulk Data: the full type and its abbreviations); any
/// other format (the reference server writes CSV for `text/csv`) could only fail after the export.
pub const NDJSON_OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportType {
    Static,
    Dynamic,
    /// Not a ping's: a Bulk Submit submission, whose manifests arrive while it imports.
    Submit,
}

impl ExportType {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportType::Static => "static",
            ExportType::Dynamic => "dynamic",
            ExportType::Submit => "submit",
        }
    }

    /// As stored; anything unknown is the oldest kind, dynamic.
    pub fn parse(stored: &str) -> Self {
        match stored {
            "static" => ExportType::Static,
            "submit" => ExportType::Submit,
            _ => ExportType::Dynamic,
        }
    }
}

/// One forwarded kick-off parameter, value kept as its `value[x]` string form.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct KickoffParam {
    pub name: String,
    pub value: String,
}

/// A validated ping (URL binding to the provider happens later, against the registration).
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub export_url: String,
    pub export_type: ExportType,
    pub kickoff: Vec<KickoffParam>,
}

/// Why a ping body is refused; the message tells the sender what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParametersError {
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the body must be a FHIR Parameters resource (resourceType \"Parameters\" with a \"parameter\" array)")]
    NotParameters,
    #[error("exportUrl parameter is required and must have a \"valueUrl\", \"valueUri\" or \"valueString\" property")]
    MissingExportUrl,
    #[error("exportUrl must appear only once")]
    RepeatedExportUrl,
    #[error("the exportUrl parameter value must be an absolute http(s) URL (received: {0})")]
    BadExportUrl(String),
    #[error("invalid exportType parameter '{0}'; must be 'static' or 'dynamic'")]
    BadExportType(String),
    #[error(
        "parameter '{0}' has no usable value (expected a primitive value[x] or, for patient, valueReference)"
    )]
    BadValue(String),
    #[error("parameter '{0}' is not supported; supported: exportUrl, exportType, {list}", list = KICKOFF_PARAMETERS.join(", "))]
    Unsupported(String),
    #[error("_outputFormat '{0}' cannot be imported; supported values: {list}", list = NDJSON_OUTPUT_FORMATS.join(", "))]
    OutputFormat(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    resource_type: Option<String>,
    parameter: Option<Vec<Map<String, Value>>>,
}

/// The primitive value of a parameter: the first `value*` member that is a string, number or boolean.
fn primitive(p: &Map<String, Value>) -> Option<String> {
    p.iter().filter(|(k, _)| k.starts_with("value")).find_map(|(_, v)| match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

impl ImportRequest {
    /// Parse and validate a ping body.
    pub fn parse(body: &[u8]) -> Result<Self, ParametersError> {
        let raw: Raw = serde_json::from_slice(body).map_err(|e| ParametersError::Json(e.to_string()))?;
        let (Some("Parameters"), Some(params)) = (raw.resource_type.as_deref(), raw.parameter) else {
            return Err(ParametersError::NotParameters);
        };
        let mut export_url = None;
        let mut export_type = None;
        let mut kickoff = Vec::new();
        for p in &params {
            let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
            match name {
                "exportUrl" => {
                    let v = ["valueUrl", "valueUri", "valueString"]
                        .iter()
                        .find_map(|k| p.get(*k))
                        .ok_or(ParametersError::MissingExportUrl)?;
                    let s = v.as_str().ok_or(ParametersError::MissingExportUrl)?;
                    if export_url.replace(s.to_string()).is_some() {
                        return Err(ParametersError::RepeatedExportUrl);
                    }
                }
                "exportType" => {
                    let v = primitive(p).ok_or_else(|| ParametersError::BadValue(name.into()))?;
                    export_type = Some(match v.as_str() {
                        "static" => ExportType::Static,
                        "dynamic" => ExportType::Dynamic,
                        _ => return Err(ParametersError::BadExportType(v)),
                    });
                }
                "patient" => {
                    // The sample pinger sends valueReference; others send a plain id or "Patient/id".
                    let reference = p
                        .get("valueReference")
                        .and_then(|r| r.get("reference"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| primitive(p))
                        .ok_or_else(|| ParametersError::BadValue(name.into()))?;
                    let value =
                        if reference.contains('/') { reference } else { format!("Patient/{reference}") };
                    kickoff.push(KickoffParam { name: name.into(), value });
                }
                "_outputFormat" => {
                    let value = primitive(p).ok_or_else(|| ParametersError::BadValue(name.into()))?;
                    let media = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
                    if !NDJSON_OUTPUT_FORMATS.contains(&media.as_str()) {
                        return Err(ParametersError::OutputFormat(value));
                    }
                    kickoff.push(KickoffParam { name: name.into(), value });
                }
                n if KICKOFF_PARAMETERS.contains(&n) => {
                    let value = primitive(p).ok_or_else(|| ParametersError::BadValue(n.into()))?;
                    kickoff.push(KickoffParam { name: n.into(), value });
                }
                other => return Err(ParametersError::Unsupported(other.into())),
            }
        }
        let export_url = export_url.ok_or(ParametersError::MissingExportUrl)?;
        match url::Url::parse(&export_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => return Err(ParametersError::BadExportUrl(export_url)),
        }
        Ok(Self { export_url, export_type: export_type.unwrap_or(ExportType::Dynamic), kickoff })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ImportRequest, ParametersError> {
        ImportRequest::parse(v.to_string().as_bytes())
    }

    #[test]
    fn export_type_defaults_to_dynamic_and_patient_reference_is_forwarded() {
        let r = parse(json!({"resourceType":"Parameters","parameter":[
            {"name":"exportUrl","valueUrl":"https://p.example/fhir/$export"},
            {"name":"_type","valueString":"Patient,Observation"},
            {"name":"patient","valueReference":{"reference":"Patient/1"}},
            {"name":"patient","valueString":"2"}]}))
        .unwrap();
        assert_eq!(r.export_type, ExportType::Dynamic);
        assert_eq!(r.kickoff.len(), 3);
        assert_eq!(r.kickoff[1].value, "Patient/1");
        assert_eq!(r.kickoff[2].value, "Patient/2");
    }

    #[test]
    fn bad_pings_name_their_problem() {
        assert_eq!(parse(json!({"resourceType":"Patient"})).unwrap_err(), ParametersError::NotParameters);
        assert_eq!(
            parse(json!({"resourceType":"Parameters","parameter":[]})).unwrap_err(),
            ParametersError::MissingExportUrl
        );
        assert!(matches!(
            parse(
                json!({"resourceType":"Parameters","parameter":[{"name":"exportUrl","valueUrl":"ftp://x/y"}]})
            ),
            Err(ParametersError::BadExportUrl(_))
        ));
        assert!(matches!(
            parse(json!({"resourceType":"Parameters","parameter":[
                {"name":"exportUrl","valueUrl":"http://x/y"},{"name":"exportType","valueCode":"push"}]})),
            Err(ParametersError::BadExportType(_))
        ));
        assert!(matches!(
            parse(json!({"resourceType":"Parameters","parameter":[
                {"name":"exportUrl","valueUrl":"http://x/y"},{"name":"_sort","valueString":"id"}]})),
            Err(ParametersError::Unsupported(_))
        ));
        assert!(matches!(ImportRequest::parse(b"{not json"), Err(ParametersError::Json(_))));
    }

    #[test]
    fn only_ndjson_output_formats_are_accepted() {
        let with = |format: &str| {
            parse(json!({"resourceType":"Parameters","parameter":[
                {"name":"exportUrl","valueUrl":"http://x/y"},{"name":"_outputFormat","valueString":format}]}))
        };
        for ok in ["application/fhir+ndjson", "application/ndjson", "ndjson", "Application/FHIR+NDJSON"] {
            assert!(with(ok).is_ok(), "{ok}");
        }
        let err = with("text/csv").unwrap_err();
        assert_eq!(err, ParametersError::OutputFormat("text/csv".into()));
        assert!(err.to_string().contains("supported values: application/fhir+ndjson"), "{err}");
    }
}
