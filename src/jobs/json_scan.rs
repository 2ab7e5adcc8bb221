//! A strict JSON validator for one NDJSON line (RFC 8259 grammar) that also reports the top-level
//! `resourceType` and `id` members. It builds nothing and allocates nothing: the line is checked
//! in one pass and the two members come back as slices of it. It replaced serde_json with
//! `IgnoredAny`, which spent most of its time per string and per ignored value (see
//! docs/benchmark.md). Non-ASCII bytes are checked as UTF-8 where they stand, so no separate
//! pass is needed.
use std::borrow::Cow;

/// Nesting bound. FHIR resources nest a few dozen levels at most; the bound keeps the depth stack
/// a fixed 64-byte bitset.
pub const MAX_DEPTH: usize = 512;

/// A string member as written, between its quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawStr<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> RawStr<'a> {
    /// True when the written string is empty (escapes always decode to at least one character).
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Whether it equals `text` once decoded.
    #[inline]
    pub fn equals(&self, text: &str) -> bool {
        if !self.escaped {
            self.raw == text.as_bytes()
        } else {
            self.decode().is_some_and(|s| s == text)
        }
    }

    /// The decoded text; `None` only for an escape that is not a Unicode scalar (a lone surrogate).
    pub fn decode(&self) -> Option<Cow<'a, str>> {
        if !self.escaped {
            // The scanner checked every character, and a quote never splits one.
            return std::str::from_utf8(self.raw).ok().map(Cow::Borrowed);
        }
        let mut quoted = Vec::with_capacity(self.raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(self.raw);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted).ok().map(Cow::Owned)
    }
}

/// The members a resource line is checked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TopLevel<'a> {
    pub resource_type: Option<RawStr<'a>>,
    pub id: Option<RawStr<'a>>,
}

/// Why a line is not the JSON object it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanFault {
    /// Not JSON at all; the text says what was expected.
    #[error("{0}")]
    Grammar(&'static str),
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Valid JSON, but a watched member holds something other than a string or `null`.
    #[error("{0} must be a string")]
    NotString(&'static str),
    #[error("{0} appears twice")]
    Duplicate(&'static str),
}

/// A fault and where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{fault} at column {column}")]
pub struct ScanError {
    pub column: usize,
    pub fault: ScanFault,
}

/// Check that `line` is exactly one JSON object (surrounding whitespace allowed) and return its
/// top-level `resourceType` and `id`, which must be strings (`null` reads as absent, as serde reads
/// an `Option`) and appear at most once.
pub fn scan_object(line: &[u8]) -> Result<TopLevel<'_>, ScanError> {
    Scanner { b: line, i: 0, top: TopLevel::default(), seen: 0, stack: Stack::default() }.run()
}

/// A watched top-level member; the value is its bit in `Scanner::seen`.
#[derive(Clone, Copy)]
enum Field {
    ResourceType = 1,
    Id = 2,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::ResourceType => "resourceType",
            Field::Id => "id",
        }
    }
}

/// Open containers, one bit each: set for an object, clear for an array.
#[derive(Default)]
struct Stack {
    bits: [u64; MAX_DEPTH.div_ceil(64)],
    depth: usize,
}

impl Stack {
    fn push(&mut self, object: bool) -> bool {
        if self.depth == MAX_DEPTH {
            return false;
        }
        let (word, bit) = (self.depth / 64, self.depth % 64);
        if object {
            self.bits[word] |= 1 << bit;
        } else {
            self.bits[word] &= !(1 << bit);
        }
        self.depth += 1;
        true
    }

    fn pop(&mut self) {
        self.depth -= 1;
    }

    /// `Some(true)` inside an object, `Some(false)` inside an array, `None` at the top.
    fn top(&self) -> Option<bool> {
        let d = self.depth.checked_sub(1)?;
        Some(self.bits[d / 64] & (1 << (d % 64)) != 0)
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    top: TopLevel<'a>,
    /// Watched members met so far, `null` included, so a repeat is refused.
    seen: u8,
    stack: Stack,
}

impl<'a> Scanner<'a> {
    fn run(mut self) -> Result<TopLevel<'a>, ScanError> {
        self.skip_ws();
        if self.peek() != Some(b'{') {
            return Err(self.grammar("a resource line must be a JSON object"));
        }
        let mut field = None;
        // Each turn reads one value; containers are walked with the explicit stack, not recursion.
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'{') => {
                    self.reject_field(field)?;
                    self.open(true)?;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        self.stack.pop();
                    } else {
                        field = self.key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.reject_field(field)?;
                    self.open(false)?;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        self.stack.pop();
                    } else {
                        continue;
                    }
                }
                Some(b'"') => {
                    let s = self.string()?;
                    if let Some(f) = field {
                        self.keep(f, Some(s))?;
                    }
                }
                Some(b'-' | b'0'..=b'9') => {
                    self.reject_field(field)?;
                    self.number()?;
                }
                Some(b't') => {
                    self.reject_field(field)?;
                    self.literal(b"true")?;
                }
                Some(b'f') => {
                    self.reject_field(field)?;
                    self.literal(b"false")?;
                }
                Some(b'n') => {
                    self.literal(b"null")?;
                    if let Some(f) = field {
                        self.keep(f, None)?;
                    }
                }
                Some(_) => return Err(self.grammar("expected a JSON value")),
                None => return Err(self.grammar("the line ends where a value should be")),
            }
            field = None;
            // After a value: a separator, or closers until one is found.
            loop {
                self.skip_ws();
                let Some(object) = self.stack.top() else {
                    return if self.i == self.b.len() {
                        Ok(self.top)
                    } else {
                        Err(self.grammar("unexpected text after the JSON object"))
                    };
                };
                match (self.peek(), object) {
                    (Some(b','), true) => {
                        self.i += 1;
                        self.skip_ws();
                        field = self.key()?;
                        break;
                    }
                    (Some(b','), false) => {
                        self.i += 1;
                        break;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        self.i += 1;
                        self.stack.pop();
                    }
                    (_, true) => return Err(self.grammar("expected ',' or '}' after an object member")),
                    (_, false) => return Err(self.grammar("expected ',' or ']' after an array element")),
                }
            }
        }
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn fault(&self, fault: ScanFault) -> ScanError {
        ScanError { column: self.i + 1, fault }
    }

    fn grammar(&self, expected: &'static str) -> ScanError {
        self.fault(ScanFault::Grammar(expected))
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\r' | b'\n') = self.peek() {
            self.i += 1;
        }
    }

    fn open(&mut self, object: bool) -> Result<(), ScanError> {
        if !self.stack.push(object) {
            return Err(self.fault(ScanFault::TooDeep));
        }
        self.i += 1;
        Ok(())
    }

    /// An object key and its ':'; says which watched member follows, if at the top level.
    #[inline(always)]
    fn key(&mut self) -> Result<Option<Field>, ScanError> {
        if self.peek() != Some(b'"') {
            return Err(self.grammar("expected a string key"));
        }
        let key = self.string()?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.grammar("expected ':' after an object key"));
        }
        self.i += 1;
        if self.stack.depth != 1 {
            return Ok(None);
        }
        Ok(if key.equals("resourceType") {
            Some(Field::ResourceType)
        } else if key.equals("id") {
            Some(Field::Id)
        } else {
            None
        })
    }

    fn keep(&mut self, field: Field, value: Option<RawStr<'a>>) -> Result<(), ScanError> {
        if self.seen & field as u8 != 0 {
            return Err(self.fault(ScanFault::Duplicate(field.name())));
        }
        self.seen |= field as u8;
        match field {
            Field::ResourceType => self.top.resource_type = value,
            Field::Id => self.top.id = value,
        }
        Ok(())
    }

    fn reject_field(&self, field: Option<Field>) -> Result<(), ScanError> {
        match field {
            Some(f) => Err(self.fault(ScanFault::NotString(f.name()))),
            None => Ok(()),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ScanError> {
        if !self.b[self.i..].starts_with(word) {
            return Err(self.grammar("expected true, false or null"));
        }
        self.i += word.len();
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`; what follows is checked by the caller.
    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.grammar("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.grammar("expected a digit after the decimal point"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.grammar("expected a digit in the exponent"));
            }
        }
        Ok(())
    }

    /// A string starting at the opening quote; leaves `i` after the closing one.
    #[inline(always)]
    fn string(&mut self) -> Result<RawStr<'a>, ScanError> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i = next_special(self.b, self.i);
            match self.peek() {
                Some(b'"') => {
                    let raw = &self.b[start..self.i];
                    self.i += 1;
                    return Ok(RawStr { raw, escaped });
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(0x80..) => self.character()?,
                Some(_) => return Err(self.grammar("control character in a string")),
                None => return Err(self.grammar("the line ends inside a string")),
            }
        }
    }

    /// One multi-byte UTF-8 character. Outside strings any such byte is already a grammar error, so
    /// checking them here checks the whole line.
    fn character(&mut self) -> Result<(), ScanError> {
        let width = match self.b[self.i] {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 0,
        };
        // std rejects overlong forms, surrogates and code points past U+10FFFF.
        match self.b.get(self.i..self.i + width) {
            Some(c) if width > 0 && std::str::from_utf8(c).is_ok() => {
                self.i += width;
                Ok(())
            }
            _ => Err(self.fault(ScanFault::NotUtf8)),
        }
    }

    fn escape(&mut self) -> Result<(), ScanError> {
        match self.b.get(self.i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
            Some(b'u') => {
                let hex = self.b.get(self.i + 2..self.i + 6);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return Err(self.grammar("expected four hex digits after \\u"));
                }
                self.i += 6;
            }
            _ => return Err(self.grammar("invalid escape in a string")),
        }
        Ok(())
    }
}

/// Index of the first `"`, `\`, control character or non-ASCII byte at or after `i`, or the length.
#[inline(always)]
fn next_special(b: &[u8], mut i: usize) -> usize {
    while let Some(block) = b.get(i..i + 16) {
        let mask = special_mask(block.try_into().expect("a 16-byte slice"));
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    while let Some(&c) = b.get(i) {
        if is_special(c) {
            break;
        }
        i += 1;
    }
    i
}

fn is_special(c: u8) -> bool {
    c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c)
}

/// One bit per byte of `block` that `is_special`: a few SSE2 operations instead of sixteen bytes one by one.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn special_mask(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline, so these instructions always exist, and `loadu`
    // reads exactly the 16 bytes of `block` with no alignment requirement.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // c < 0x20 exactly when max(c, 0x1f) == 0x1f, unsigned.
        let control = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f));
        // The sign bit of each byte is set exactly for non-ASCII bytes, so `v` joins the mask as is.
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), _mm_or_si128(control, v))) as u32
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn special_mask(block: &[u8; 16]) -> u32 {
    block.iter().enumerate().fold(0, |mask, (k, &c)| mask | u32::from(is_special(c)) << k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule this scanner replaced: UTF-8 (std) and valid JSON (serde_json) whose first token is
    /// an object.
    fn oracle(line: &[u8]) -> bool {
        line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
            && std::str::from_utf8(line).is_ok()
            && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok()
    }

    fn accepts(line: &[u8]) -> bool {
        scan_object(line).is_ok()
    }

    #[test]
    fn it_agrees_with_serde_json_on_valid_and_invalid_grammar() {
        let cases: &[&[u8]] = &[
            br#"{}"#,
            br#" { } "#,
            br#"{"a":1}"#,
            br#"{"a":-0.5e+10,"b":[1,2,{"c":null}],"d":true,"e":false}"#,
            br#"{"a":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"}"#,
            br#"{"a":"\ud800"}"#,
            br#"{"a":[]}"#,
            br#"{"a":[[],[{}]]}"#,
            br#"{"a":1E5,"b":0,"c":-0,"d":1e-0}"#,
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":.1}"#,
            br#"{"a":-}"#,
            br#"{"a":+1}"#,
            br#"{"a":1e}"#,
            br#"{"a":1e+}"#,
            br#"{"a":0x1}"#,
            br#"{"a":NaN}"#,
            br#"{"a":tru}"#,
            br#"{"a":truee}"#,
            br#"{"a":nul}"#,
            br#"{"a":1,}"#,
            br#"{,"a":1}"#,
            br#"{"a" 1}"#,
            br#"{"a":}"#,
            br#"{a:1}"#,
            br#"{'a':1}"#,
            br#"{"a":[1,]}"#,
            br#"{"a":[,1]}"#,
            br#"{"a":[1 2]}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12"}"#,
            br#"{"a":"\u12G4"}"#,
            br#"{"a":"unterminated}"#,
            br#"{"a":1}}"#,
            br#"{"a":1} x"#,
            br#"{"a":1}{}"#,
            br#"{"a":{"b":1}"#,
            br#"{"a":[1}"#,
            br#"{"a":{]}"#,
            b"{\"a\":\"tab\there\"}",
            b"{\"a\":\"nul\x00\"}",
            b"{\"a\"\t:\r1 }",
            br#"[]"#,
            br#""x""#,
            br#"1"#,
            br#"{"#,
            br#""#,
            "{\"a\":\"é 😀 漢字 \u{10FFFF}\"}".as_bytes(),
            b"{\"a\":\"\x80\"}",
            b"{\"a\":\"\xC3\"}",
            b"{\"a\":\"\xC3\xA9\xA9\"}",
            b"{\"a\":\"\xC0\x80\"}",
            b"{\"a\":\"\xED\xA0\x80\"}",
            b"{\"a\":\"\xF4\x90\x80\x80\"}",
            b"{\"a\":\"\xE2\x82",
            b"{\"a\":\"\xFF\"}",
            b"{\"a\":1\xC3\xA9}",
            b"{\"\xC3\xA9\":1}",
        ];
        for case in cases {
            assert_eq!(accepts(case), oracle(case), "{}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn it_agrees_with_serde_json_on_thousands_of_mutated_lines() {
        let seeds: &[&[u8]] = &[
            br#"{"resourceType":"Observation","id":"o-1","valueQuantity":{"value":5.7e-1,"unit":"mg/dL"},"note":[{"text":"a \"quoted\" \u00e9 note"}],"flag":true,"n":null,"x":[-0,1E+2,[]]}"#,
            br#"{"resourceType":"Patient","id":"p","name":[{"given":["A","B"]}],"deceasedBoolean":false}"#,
        ];
        let alphabet = b"{}[]:,\"\\ 0123456789-+.eEtrufalsn\t\x01ux\xC3\xA9\xE2\x82\xAC\xF0\x9F\xFF\xED\xA0";
        // A fixed xorshift sequence: the same cases on every run.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut rejected = 0;
        for round in 0..20_000 {
            let mut line = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() % line.len() as u64) as usize;
                let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 => line[at] = byte,
                    1 => line.insert(at, byte),
                    _ => {
                        line.remove(at);
                    }
                }
                if line.is_empty() {
                    line.push(b'{');
                }
            }
            let expected = oracle(&line);
            rejected += usize::from(!expected);
            assert_eq!(accepts(&line), expected, "{}", String::from_utf8_lossy(&line));
        }
        // The mutations must exercise both answers, or the test proves little.
        assert!(rejected > 5_000 && rejected < 19_000, "{rejected} of 20000 rejected");
    }

    #[test]
    fn top_level_members_are_found_decoded_and_checked() {
        let top = scan_object(br#"{"meta":{"id":"inner"},"id":"p-1","resourceType":"Patient"}"#).unwrap();
        assert!(top.resource_type.unwrap().equals("Patient"));
        assert!(top.id.unwrap().equals("p-1"));

        let top = scan_object(br#"{"resourceType":"Pat\u0069ent","\u0069d":""}"#).unwrap();
        assert!(top.resource_type.unwrap().equals("Patient"));
        assert!(top.id.unwrap().is_empty());

        let nested_only = scan_object(br#"{"contained":[{"resourceType":"Patient","id":"x"}]}"#).unwrap();
        assert_eq!(nested_only, TopLevel::default());

        let fault = |line: &[u8]| scan_object(line).unwrap_err().fault;
        assert_eq!(
            fault(br#"{"resourceType":"A","resourceType":"B"}"#),
            ScanFault::Duplicate("resourceType")
        );
        assert_eq!(fault(br#"{"id":"1","id":"1"}"#), ScanFault::Duplicate("id"));
        assert_eq!(fault(br#"{"id":null,"id":"1"}"#), ScanFault::Duplicate("id"));
        assert_eq!(fault(br#"{"resourceType":1}"#), ScanFault::NotString("resourceType"));
        assert_eq!(fault(br#"{"id":{"a":1}}"#), ScanFault::NotString("id"));
        assert_eq!(fault(br#"{"id":true}"#), ScanFault::NotString("id"));
        // `null` reads as absent, as it did through serde's `Option`.
        assert_eq!(scan_object(br#"{"resourceType":null,"id":null}"#), Ok(TopLevel::default()));
        assert_eq!(fault(b"{\"a\":\"\xC3\"}"), ScanFault::NotUtf8);
        assert_eq!(scan_object(br#"{"a":1,}"#).unwrap_err().column, 8);
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let deep = |n: usize| {
            let mut line = b"{\"a\":".to_vec();
            line.extend(std::iter::repeat_n(b'[', n - 1));
            line.extend(std::iter::repeat_n(b']', n - 1));
            line.push(b'}');
            line
        };
        assert!(scan_object(&deep(MAX_DEPTH)).is_ok());
        assert_eq!(scan_object(&deep(MAX_DEPTH + 1)).unwrap_err().fault, ScanFault::TooDeep);
        // Far past the bound, on a line of a few hundred kilobytes, is an error and not a stack overflow.
        assert!(scan_object(&deep(200_000)).is_err());
    }

    #[test]
    fn the_fast_string_scan_finds_the_first_special_byte_in_every_position() {
        for len in 0..40 {
            for special in [b'"', b'\\', b'\n', 0x1f, 0x80, 0xff] {
                for at in 0..len {
                    let mut b = vec![b'a'; len];
                    b[at] = special;
                    assert_eq!(next_special(&b, 0), at);
                }
                assert_eq!(next_special(&vec![b'a'; len], 0), len);
            }
        }
    }
}
