//! NDJSON line splitting with a max-line guard, and per-line validation (Bulk Data "Output File
//! Request": one resource per line). Pure: it sees bytes and never copies a line that sits whole
//! inside one network chunk; only a line split across chunks is carried.
use std::borrow::Cow;

use crate::jobs::json_scan::{scan_object, ScanFault, TopLevel};

/// Why a line (and so its file) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line {line} is longer than the {max}-byte limit (NDJSON_MAX_LINE_LENGTH)")]
    TooLong { line: u64, max: usize },
    #[error("line {line} is not valid UTF-8")]
    NotUtf8 { line: u64 },
    #[error("line {line} is not a JSON object: {reason}")]
    NotJson { line: u64, reason: String },
    /// Valid JSON, but `resourceType` or `id` is not a single string of Unicode text.
    #[error("line {line}: {reason}")]
    BadMember { line: u64, reason: String },
    #[error("line {line} has no resourceType")]
    NoResourceType { line: u64 },
    #[error("line {line} has resourceType '{found}' but the manifest lists this file as '{expected}'")]
    WrongType { line: u64, expected: String, found: String, id: Option<String> },
    #[error("line {line} ({resource_type}) has no id")]
    NoId { line: u64, resource_type: String },
    #[error(
        "line {line}: the file has more than {max} blank lines (MAX_BLANK_LINES); blank lines are not data"
    )]
    TooManyBlank { line: u64, max: u64 },
}

impl LineError {
    /// The resource the line is, when it names one (`Type/id`): an outcome can point at it.
    pub fn resource(&self) -> Option<String> {
        match self {
            LineError::WrongType { found, id: Some(id), .. } => Some(format!("{found}/{id}")),
            _ => None,
        }
    }
}

/// Carry capacity kept between lines; more is released after a long line.
const KEEP_CARRY_BYTES: usize = 64 * 1024;

/// Splits a byte stream into lines, enforcing the max-line guard on the line itself.
#[derive(Debug)]
pub struct LineSplitter {
    carry: Vec<u8>,
    max: usize,
    line: u64,
}

impl LineSplitter {
    pub fn new(max_line_bytes: usize) -> Self {
        Self::after(max_line_bytes, 0)
    }

    /// Go on after `lines` complete lines (a download continued at a line end).
    pub fn after(max_line_bytes: usize, lines: u64) -> Self {
        Self { carry: Vec::new(), max: max_line_bytes, line: lines }
    }

    /// Complete lines so far.
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// Bytes of a line begun and not ended yet: the input up to them ends at a line end.
    pub fn pending(&self) -> usize {
        self.carry.len()
    }

    /// Feed one chunk; `on_line(number, bytes)` runs for each complete line (without `\n`/`\r`).
    pub fn feed<F>(&mut self, chunk: &[u8], mut on_line: F) -> Result<(), LineError>
    where
        F: FnMut(u64, &[u8]) -> Result<(), LineError>,
    {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            self.line += 1;
            if self.carry.is_empty() {
                self.check_len(nl - start)?;
                on_line(self.line, trim_cr(&chunk[start..nl]))?;
            } else {
                self.check_len(self.carry.len() + nl - start)?;
                self.carry.extend_from_slice(&chunk[start..nl]);
                let result = on_line(self.line, trim_cr(&self.carry));
                self.carry.clear();
                // One huge line must not pin its buffer for the rest of the file.
                if self.carry.capacity() > KEEP_CARRY_BYTES {
                    self.carry.shrink_to(KEEP_CARRY_BYTES);
                }
                result?;
            }
            start = nl + 1;
        }
        let tail = &chunk[start..];
        if !tail.is_empty() {
            if self.carry.len() + tail.len() > self.max {
                return Err(LineError::TooLong { line: self.line + 1, max: self.max });
            }
            self.carry.extend_from_slice(tail);
        }
        Ok(())
    }

    /// End of input: a last line without a newline is still a line.
    pub fn finish<F>(&mut self, mut on_line: F) -> Result<(), LineError>
    where
        F: FnMut(u64, &[u8]) -> Result<(), LineError>,
    {
        if self.carry.is_empty() {
            return Ok(());
        }
        self.line += 1;
        let carried = std::mem::take(&mut self.carry);
        on_line(self.line, trim_cr(&carried))
    }

    fn check_len(&self, len: usize) -> Result<(), LineError> {
        if len > self.max {
            Err(LineError::TooLong { line: self.line, max: self.max })
        } else {
            Ok(())
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What a valid line held.
#[derive(Debug, PartialEq, Eq)]
pub enum LineKind {
    Blank,
    Resource,
}

/// What a valid line of a file whose manifest entry names no type held (`organizeOutputBy`).
#[derive(Debug, PartialEq, Eq)]
pub enum AnyLine<'a> {
    Blank,
    /// A `Parameters` line that opens a stratum (Bulk Data v3 `organizeOutputBy`), not data.
    Header,
    Resource(Cow<'a, str>),
}

/// The top level of a non-blank line, with scanner faults named for people.
fn scan(line_no: u64, line: &[u8]) -> Result<Option<TopLevel<'_>>, LineError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // The scanner checks UTF-8 as it goes; on a failure, bad UTF-8 anywhere is named first.
    scan_object(line).map(Some).map_err(|e| match e.fault {
        _ if std::str::from_utf8(line).is_err() => LineError::NotUtf8 { line: line_no },
        ScanFault::NotUtf8 => LineError::NotUtf8 { line: line_no },
        ScanFault::NotString(_) | ScanFault::Duplicate(_) => {
            LineError::BadMember { line: line_no, reason: e.to_string() }
        }
        ScanFault::Grammar(_) | ScanFault::TooDeep => {
            LineError::NotJson { line: line_no, reason: e.to_string() }
        }
    })
}

fn check_id(
    line_no: u64,
    top: &TopLevel<'_>,
    resource_type: &str,
    require_id: bool,
) -> Result<(), LineError> {
    if require_id && top.id.is_none_or(|id| id.is_empty()) {
        return Err(LineError::NoId { line: line_no, resource_type: resource_type.into() });
    }
    // An escape can spell a lone surrogate: valid JSON grammar, but no id.
    if top.id.is_some_and(|id| id.decode().is_none()) {
        return Err(LineError::BadMember { line: line_no, reason: "id is not valid Unicode".into() });
    }
    Ok(())
}

/// Validate one line: a JSON object whose `resourceType` is `expected` and, when `require_id`,
/// that has an `id` (provider OperationOutcomes and `deleted` Bundles often have none).
pub fn validate_line(
    line_no: u64,
    line: &[u8],
    expected: &str,
    require_id: bool,
) -> Result<LineKind, LineError> {
    let Some(top) = scan(line_no, line)? else { return Ok(LineKind::Blank) };
    let found = top.resource_type.ok_or(LineError::NoResourceType { line: line_no })?;
    if !found.equals(expected) {
        return Err(LineError::WrongType {
            line: line_no,
            expected: expected.into(),
            found: found.decode().map_or_else(|| "(not valid Unicode)".into(), |s| s.into_owned()),
            id: top.id.and_then(|id| id.decode()).map(|id| id.into_owned()).filter(|id| !id.is_empty()),
        });
    }
    check_id(line_no, &top, expected, require_id)?;
    Ok(LineKind::Resource)
}

/// Validate a line of any resource type, as `organizeOutputBy` files mix them.
pub fn validate_any_line(line_no: u64, line: &[u8], require_id: bool) -> Result<AnyLine<'_>, LineError> {
    let Some(top) = scan(line_no, line)? else { return Ok(AnyLine::Blank) };
    let found = top.resource_type.ok_or(LineError::NoResourceType { line: line_no })?;
    let name = found
        .decode()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| LineError::BadMember { line: line_no, reason: "resourceType is not a name".into() })?;
    if name == "Parameters" {
        return Ok(AnyLine::Header);
    }
    check_id(line_no, &top, &name, require_id)?;
    Ok(AnyLine::Resource(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]], max: usize) -> Result<Vec<(u64, Vec<u8>)>, LineError> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |n, l| {
                out.push((n, l.to_vec()));
                Ok(())
            })?;
        }
        s.finish(|n, l| {
            out.push((n, l.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn lines_split_across_chunks_are_joined_and_a_final_line_without_newline_counts() {
        let out = split_all(&[b"ab", b"c\nde", b"f\r\n", b"\ngh"], 100).unwrap();
        let lines: Vec<&[u8]> = out.iter().map(|(_, l)| l.as_slice()).collect();
        assert_eq!(lines, vec![&b"abc"[..], b"def", b"", b"gh"]);
        assert_eq!(out.last().unwrap().0, 4);
    }

    #[test]
    fn the_guard_measures_the_line_not_the_chunk() {
        // Many short lines in one big chunk pass a small limit.
        let chunk = b"aaaa\n".repeat(100);
        assert!(split_all(&[&chunk], 4).is_ok());
        // One line spread over small chunks fails once it passes the limit.
        let err = split_all(&[b"aaa", b"aaa", b"aaa\n"], 8).unwrap_err();
        assert_eq!(err, LineError::TooLong { line: 1, max: 8 });
    }

    #[test]
    fn validation_names_the_line_and_the_reason() {
        assert_eq!(
            validate_line(1, br#"{"resourceType":"Patient","id":"1"}"#, "Patient", true),
            Ok(LineKind::Resource)
        );
        assert_eq!(validate_line(2, b"   ", "Patient", true), Ok(LineKind::Blank));
        assert!(matches!(
            validate_line(3, b"{\"resourceType\":", "Patient", true),
            Err(LineError::NotJson { line: 3, .. })
        ));
        assert!(matches!(validate_line(4, b"[1,2]", "Patient", true), Err(LineError::NotJson { .. })));
        assert!(matches!(
            validate_line(4, br#"["Patient","1"]"#, "Patient", true),
            Err(LineError::NotJson { .. })
        ));
        assert_eq!(
            validate_line(4, br#"{"resourceType":"OperationOutcome"}"#, "OperationOutcome", false),
            Ok(LineKind::Resource)
        );
        assert_eq!(
            validate_line(5, br#"{"id":"1"}"#, "Patient", true),
            Err(LineError::NoResourceType { line: 5 })
        );
        let wrong = validate_line(6, br#"{"resourceType":"Observation","id":"1"}"#, "Patient", true);
        assert_eq!(wrong.as_ref().err().and_then(LineError::resource).as_deref(), Some("Observation/1"));
        assert!(matches!(wrong, Err(LineError::WrongType { line: 6, .. })));
        assert!(matches!(
            validate_line(7, br#"{"resourceType":"Patient"}"#, "Patient", true),
            Err(LineError::NoId { .. })
        ));
        assert_eq!(
            validate_line(8, br#"{"resourceType":"Bundle","type":"transaction"}"#, "Bundle", false),
            Ok(LineKind::Resource)
        );
        assert_eq!(
            validate_line(9, b"{\"resourceType\":\"Patient\",\"id\":\"\xff\"}", "Patient", true),
            Err(LineError::NotUtf8 { line: 9 })
        );
        // `null` is absent, as before; a repeated or non-string member is named as such.
        assert_eq!(
            validate_line(10, br#"{"resourceType":"OperationOutcome","id":null}"#, "OperationOutcome", false),
            Ok(LineKind::Resource)
        );
        assert_eq!(
            validate_line(11, br#"{"resourceType":null}"#, "Patient", true),
            Err(LineError::NoResourceType { line: 11 })
        );
        assert!(matches!(
            validate_line(12, br#"{"resourceType":"Patient","id":"1","id":"2"}"#, "Patient", true),
            Err(LineError::BadMember { line: 12, reason }) if reason.starts_with("id appears twice")
        ));
        assert!(matches!(
            validate_line(13, br#"{"resourceType":"Patient","id":7}"#, "Patient", true),
            Err(LineError::BadMember { line: 13, reason }) if reason.starts_with("id must be a string")
        ));
        assert_eq!(
            validate_line(14, br#"{"resourceType":"Patient","id":"\ud800"}"#, "Patient", true),
            Err(LineError::BadMember { line: 14, reason: "id is not valid Unicode".into() })
        );
    }

    #[test]
    fn untyped_files_take_any_resource_type_and_parameters_headers() {
        let header = br#"{"resourceType":"Parameters","parameter":[{"name":"header"}]}"#;
        assert_eq!(validate_any_line(1, header, true), Ok(AnyLine::Header));
        assert_eq!(
            validate_any_line(2, br#"{"resourceType":"Condition","id":"c"}"#, true),
            Ok(AnyLine::Resource("Condition".into()))
        );
        assert_eq!(validate_any_line(3, b" ", true), Ok(AnyLine::Blank));
        assert!(matches!(
            validate_any_line(4, br#"{"resourceType":"Patient"}"#, true),
            Err(LineError::NoId { line: 4, .. })
        ));
        assert!(matches!(
            validate_any_line(5, br#"{"id":"x"}"#, true),
            Err(LineError::NoResourceType { .. })
        ));
    }
}
