//! What text from outside may hold where people read it back (tables, logs, terminals) or where
//! it goes into an HTTP header: RFC 6749's client id and scope grammars, and plain text without
//! control characters or the invisible bidirectional overrides that make one name read as another.
/// Whether `s` is text to show people as it is: no control characters, and none of the
/// invisible bidirectional marks and overrides (U+202E and kin) that make a name read as
/// another in a table, a log or a terminal.
pub fn is_plain_text(s: &str) -> bool {
    !s.chars().any(|c| {
        c.is_control() || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    })
}

/// Whether `s` is an OAuth client id as RFC 6749 (Appendix A.1) spells one: visible ASCII
/// and spaces (`VSCHAR`), 1 to `max` of them.
pub fn is_oauth_client_id(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Whether `s` is an OAuth scope (RFC 6749 §3.3): tokens of `NQCHAR` (visible ASCII but `"` and
/// `\`) separated by single spaces, at most `max` bytes.
pub fn is_oauth_scope(s: &str, max: usize) -> bool {
    let nqchar = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
    (1..=max).contains(&s.len()) && s.split(' ').all(|t| !t.is_empty() && t.bytes().all(nqchar))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_client_ids_and_scopes_refuse_what_would_mislead_or_break_a_header() {
        assert!(is_plain_text("Müller Clinic 日本"));
        for bad in ["a\0b", "evil\u{202E}gnp.exe", "a\r\nb", "x\u{2066}y"] {
            assert!(!is_plain_text(bad), "{bad:?}");
        }
        assert!(is_oauth_client_id("us-at-the-ehr", 255));
        assert!(!is_oauth_client_id("a\0b", 255) && !is_oauth_client_id("ü", 255));
        assert!(!is_oauth_client_id(&"x".repeat(256), 255) && !is_oauth_client_id("", 255));
        assert!(is_oauth_scope("system/*.read system/Patient.rs", 1024));
        assert!(!is_oauth_scope("system/*.read\r\nX-Evil: 1", 1024));
        assert!(!is_oauth_scope("a  b", 1024) && !is_oauth_scope("a\"b", 1024));
    }
}
