//! SMART system scopes (App Launch 2.2 "Scopes and Launch Context"): v1 `system/T.read|write|*`
//! and v2 `system/T.cruds` (any in-order subset). `$import` writes data of every type into this
//! server, so it needs *create on all types*: `system/*.write`, `system/*.*`, or a v2 form with `c`
//! (`system/*.c`, `system/*.cud`, `system/*.cruds`). Bulk Submit has a scope of its own,
//! `system/bulk-submit`, for `$bulk-submit`, its status and outcome files.

/// The scope a Bulk Submit provider uses (Bulk Data IG, Bulk Submit, "Privacy").
pub const BULK_SUBMIT: &str = "system/bulk-submit";

/// What one scope grants, in v2 terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemScope {
    pub resource_type: String,
    /// Letters of `cruds` granted.
    pub permissions: String,
}

impl SystemScope {
    pub fn parse(raw: &str) -> Option<Self> {
        let rest = raw.strip_prefix("system/")?;
        let (resource_type, perm) = rest.split_once('.')?;
        let valid_type = resource_type == "*"
            || (resource_type.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && resource_type.chars().all(|c| c.is_ascii_alphanumeric()));
        if !valid_type {
            return None;
        }
        // v2 permissions may carry a query (`system/Observation.rs?category=...`); import ignores it.
        let perm = perm.split('?').next().unwrap_or_default();
        let permissions = match perm {
            "read" => "rs".to_string(),
            "write" => "cud".to_string(),
            "*" => "cruds".to_string(),
            p if !p.is_empty() && is_ordered_subset(p, "cruds") => p.to_string(),
            _ => return None,
        };
        Some(Self { resource_type: resource_type.to_string(), permissions })
    }

    /// True when this scope lets a client import data of every type.
    pub fn allows_import(&self) -> bool {
        self.resource_type == "*" && self.permissions.contains('c')
    }
}

fn is_ordered_subset(p: &str, of: &str) -> bool {
    let mut rest = of.chars();
    p.chars().all(|c| rest.by_ref().any(|o| o == c))
}

/// Why a scope request cannot be granted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope is required; ask for 'system/*.write' (or v2 'system/*.cud'), or 'system/bulk-submit'")]
    Missing,
    #[error("'{0}' is not a SMART system scope (system/<type>.<permissions>)")]
    Malformed(String),
    #[error(
        "none of the requested scopes allows importing; ask for 'system/*.write' (or v2 'system/*.cud'), or 'system/bulk-submit'"
    )]
    NothingGrantable,
}

/// The scopes we grant: the requested ones that allow import, and `system/bulk-submit`. Others
/// are dropped (RFC 6749 §3.3 lets a server grant less than asked); if none is left the request
/// fails.
pub fn grant(requested: Option<&str>) -> Result<String, ScopeError> {
    let requested: Vec<&str> = requested.unwrap_or_default().split_whitespace().collect();
    if requested.is_empty() {
        return Err(ScopeError::Missing);
    }
    let mut granted = Vec::new();
    for raw in requested {
        if raw == BULK_SUBMIT {
            if !granted.contains(&raw) {
                granted.push(raw);
            }
            continue;
        }
        let scope = SystemScope::parse(raw).ok_or_else(|| ScopeError::Malformed(raw.to_string()))?;
        if scope.allows_import() && !granted.contains(&raw) {
            granted.push(raw);
        }
    }
    if granted.is_empty() {
        return Err(ScopeError::NothingGrantable);
    }
    Ok(granted.join(" "))
}

/// True when a granted scope string allows Bulk Submit.
pub fn allows_submit(granted: &str) -> bool {
    granted.split_whitespace().any(|s| s == BULK_SUBMIT)
}

/// True when a granted scope string allows `$import`.
pub fn allows_import(granted: &str) -> bool {
    granted.split_whitespace().filter_map(SystemScope::parse).any(|s| s.allows_import())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_forms_parse_and_only_create_on_all_types_allows_import() {
        for ok in ["system/*.write", "system/*.*", "system/*.c", "system/*.cud", "system/*.cruds"] {
            assert!(SystemScope::parse(ok).unwrap().allows_import(), "{ok}");
        }
        for no in ["system/*.read", "system/*.rs", "system/Patient.write", "system/Observation.cruds"] {
            assert!(!SystemScope::parse(no).unwrap().allows_import(), "{no}");
        }
        for bad in ["user/*.read", "system/*.sr", "system/*.x", "system/patient.read", "system", "launch"] {
            assert_eq!(SystemScope::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn grant_keeps_the_import_scopes_and_drops_the_rest() {
        assert_eq!(grant(Some("system/*.rs system/*.cud")), Ok("system/*.cud".into()));
        assert_eq!(grant(Some("system/*.*")), Ok("system/*.*".into()));
        assert_eq!(grant(Some("system/*.read")), Err(ScopeError::NothingGrantable));
        assert_eq!(grant(Some("openid system/*.write")), Err(ScopeError::Malformed("openid".into())));
        assert_eq!(grant(None), Err(ScopeError::Missing));
        assert!(allows_import("system/*.write"));
        assert!(!allows_import("system/*.read"));
        // Bulk Submit's own scope, alone or with an import scope; neither grants the other.
        assert_eq!(grant(Some("system/bulk-submit")), Ok("system/bulk-submit".into()));
        assert_eq!(
            grant(Some("system/*.rs system/bulk-submit system/*.cud")),
            Ok("system/bulk-submit system/*.cud".into())
        );
        assert!(allows_submit("system/bulk-submit") && !allows_import("system/bulk-submit"));
        assert!(!allows_submit("system/*.write"));
    }
}
