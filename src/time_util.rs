//! Wall-clock helpers: the store keeps Unix seconds, the wire wants FHIR instants.
use std::time::{SystemTime, UNIX_EPOCH};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Unix time in milliseconds.
pub fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A FHIR `instant` (RFC 3339, UTC) for the given Unix seconds.
pub fn instant(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// Set `iat` and `exp` as whole seconds: josekit writes fractions, which some providers reject.
pub fn set_times(
    payload: &mut josekit::jwt::JwtPayload,
    issued: SystemTime,
    expires: SystemTime,
) -> Result<(), josekit::JoseError> {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    payload.set_claim("iat", Some(secs(issued).into()))?;
    payload.set_claim("exp", Some(secs(expires).into()))
}

/// When a job finished at `finished_at` is removed with its files, `retention` (`JOBS_MAX_AGE`)
/// later, as an instant.
pub fn kept_until(finished_at: i64, retention: std::time::Duration) -> String {
    instant(finished_at + retention.as_secs_f64().ceil() as i64)
}

/// A duration for people: "45 s", "3 min 20 s", "2 h 5 min".
pub fn duration_text(secs: f64) -> String {
    let s = secs.max(0.0).ceil() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_the_largest_useful_units() {
        assert_eq!(duration_text(0.2), "1 s");
        assert_eq!(duration_text(59.0), "59 s");
        assert_eq!(duration_text(200.0), "3 min 20 s");
        assert_eq!(duration_text(7500.0), "2 h 5 min");
        assert_eq!(duration_text(-3.0), "0 s");
    }
}
