//! A done file's outcome once what it stored was removed (the job cancelled or failed): its own
//! lines stay (what was imported, and where), and one more says it was then removed, so no
//! screen reads "stored as …" of data that is gone.
use serde_json::{json, Value};

use crate::{
    domain::{FileState, JobFile},
    fhir::manifest::FileKind,
};

/// The restated outcomes of `files` that were done with data: `why` added, e.g. "the import was
/// cancelled: the files it stored under JOBS_PATH are removed".
pub fn restated(files: &[JobFile], why: &str) -> Vec<(i64, String)> {
    files
        .iter()
        .filter(|f| f.state == FileState::Done && f.kind != FileKind::Error && f.bytes > 0)
        .filter_map(|f| {
            let mut oo: Value = serde_json::from_str(f.outcome.as_deref()?).ok()?;
            let issues = oo.get_mut("issue")?.as_array_mut()?;
            issues.push(json!({"severity": "information", "code": "informational", "diagnostics": format!("then {why}")}));
            Some((f.idx, oo.to_string()))
        })
        .collect()
}
