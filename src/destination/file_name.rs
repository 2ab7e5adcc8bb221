//! The `DOWNLOAD_FILE_NAME` template: `{jobId}`, `{resourceType}`, `{fileNumber}`, `{originalName}`.
//! The result is always one safe path component: anything outside `[A-Za-z0-9._-]` becomes `_`.

const VARIABLES: &[&str] = &["jobId", "resourceType", "fileNumber", "originalName"];

#[derive(Debug, Clone)]
pub struct FileNameTemplate(String);

/// Values for one file.
pub struct FileNameVars<'a> {
    pub job_id: &'a str,
    pub resource_type: &'a str,
    pub file_number: usize,
    pub url: &'a str,
}

impl FileNameTemplate {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.trim().is_empty() {
            return Err("the template is empty".into());
        }
        let mut rest = raw;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').ok_or("a '{' is never closed")? + open;
            let var = &rest[open + 1..close];
            if !VARIABLES.contains(&var) {
                return Err(format!("unknown variable '{{{var}}}'; known: {{{}}}", VARIABLES.join("}, {")));
            }
            rest = &rest[close + 1..];
        }
        Ok(Self(raw.to_string()))
    }

    /// Whether names keep the provider's own (`{originalName}`), which already tell its error
    /// and deleted files apart.
    pub fn keeps_original_names(&self) -> bool {
        self.0.contains("{originalName}")
    }

    pub fn render(&self, v: &FileNameVars<'_>) -> String {
        // A URL with no last segment has no name to keep: type and number stand in.
        let original =
            original_name(v.url).unwrap_or_else(|| format!("{}.{}.ndjson", v.resource_type, v.file_number));
        let raw = self
            .0
            .replace("{jobId}", v.job_id)
            .replace("{resourceType}", v.resource_type)
            .replace("{fileNumber}", &v.file_number.to_string())
            .replace("{originalName}", &original);
        sanitize(&raw)
    }
}

/// The last path segment of a URL, without query or fragment.
fn original_name(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let last = u.path_segments()?.next_back()?;
    (!last.is_empty()).then(|| last.to_string())
}

fn sanitize(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    if s.starts_with('.') || s.is_empty() {
        s.insert(0, '_');
    }
    s.truncate(200);
    s
}

/// True for one normal path component that cannot escape its directory.
pub fn is_safe_component(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_escape_the_job_directory() {
        let t = FileNameTemplate::parse("{originalName}").unwrap();
        let name = t.render(&FileNameVars {
            job_id: "j",
            resource_type: "Patient",
            file_number: 1,
            url: "http://p/x/..%2F..%2Fetc%2Fpasswd?sig=1",
        });
        assert!(is_safe_component(&name), "{name}");
        let t = FileNameTemplate::parse("../{resourceType}/{fileNumber}").unwrap();
        let name = t.render(&FileNameVars {
            job_id: "j",
            resource_type: "Patient",
            file_number: 2,
            url: "http://p/a",
        });
        assert_eq!(name, "_.._Patient_2");
        assert!(is_safe_component(&name));
    }

    #[test]
    fn the_default_keeps_the_providers_names() {
        let t = FileNameTemplate::parse(crate::config::DEFAULT_DOWNLOAD_FILE_NAME).unwrap();
        let vars = |url| FileNameVars { job_id: "j", resource_type: "Patient", file_number: 3, url };
        assert_eq!(
            t.render(&vars("https://ehr.example/bulkfiles/1.Patient.ndjson?sig=x")),
            "1.Patient.ndjson"
        );
        assert_eq!(t.render(&vars("https://ehr.example/files/")), "Patient.3.ndjson", "no name to keep");
        assert!(t.keeps_original_names());
        assert!(!FileNameTemplate::parse("{resourceType}.ndjson").unwrap().keeps_original_names());
    }

    #[test]
    fn unknown_variables_are_refused() {
        assert!(FileNameTemplate::parse("{nope}.ndjson").is_err());
        assert!(FileNameTemplate::parse("{jobId").is_err());
    }
}
