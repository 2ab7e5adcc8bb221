//! Continuing a broken download where its bytes stopped (RFC 9110 §13.1.5, §14): the rest is asked
//! for with `Range: bytes=N-` and `If-Range`, so it comes from the same representation, or the
//! provider sends the whole file again (which then starts over). Only an answer that was not
//! content-encoded (offsets count the bytes we stored) and that carried a strong validator
//! qualifies: a strong `ETag`, else a `Last-Modified` at least a second before its `Date`.
use std::time::Duration;

use reqwest::{
    header::{
        HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_RANGE, DATE, ETAG, IF_RANGE,
        LAST_MODIFIED, RANGE,
    },
    RequestBuilder, Response, StatusCode,
};

/// What an `If-Range` sends back: the first answer's strong validator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validator(HeaderValue);

impl Validator {
    /// The validator of a whole-file answer, if the rest of it could be asked for later.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        if headers.get("accept-ranges").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"none")) {
            return None;
        }
        if headers.get(CONTENT_ENCODING).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity")) {
            return None;
        }
        if let Some(etag) = headers.get(ETAG) {
            // A weak ETag cannot be used in If-Range; an odd one is not trusted either.
            let raw = etag.as_bytes();
            let strong = raw.len() >= 2 && raw.starts_with(b"\"") && raw.ends_with(b"\"");
            return strong.then(|| Self(etag.clone()));
        }
        let date = |name| {
            let raw = headers.get(name)?.to_str().ok()?;
            httpdate::parse_http_date(raw).ok()
        };
        let (modified, sent) = (date(LAST_MODIFIED)?, date(DATE)?);
        // A date is strong only if the file could not have changed again within its second.
        let strong = sent.duration_since(modified).is_ok_and(|d| d >= Duration::from_secs(1));
        strong.then(|| Self(headers[LAST_MODIFIED].clone()))
    }
}

impl Validator {
    /// As a durable point keeps it; `None` for one that is not text.
    pub fn as_text(&self) -> Option<&str> {
        self.0.to_str().ok()
    }

    /// One a durable point kept.
    pub fn from_text(text: &str) -> Option<Self> {
        HeaderValue::from_str(text).ok().map(Self)
    }
}

/// Where a continuation starts, and what it must match.
#[derive(Debug, Clone)]
pub struct Continuation {
    pub from: u64,
    pub validator: Validator,
    /// The whole file's length, when the first answer gave it: the rest must end there.
    pub total: Option<u64>,
}

impl Continuation {
    /// Ask for the rest, unencoded (a byte range of a gzip stream would be of other bytes).
    pub fn ask(&self, req: RequestBuilder) -> RequestBuilder {
        req.header(RANGE, format!("bytes={}-", self.from))
            .header(IF_RANGE, self.validator.0.clone())
            .header(ACCEPT_ENCODING, "identity")
    }

    /// What the provider sent for a continuation.
    pub fn answered(&self, resp: &Response) -> Answer {
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let encoded = resp
                    .headers()
                    .get(CONTENT_ENCODING)
                    .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
                let range =
                    resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(parse_range);
                // From where we stopped to the end of the same file: a shorter range would end
                // cleanly and leave the file short.
                let ends_right = |r: ContentRange| {
                    r.total.is_some_and(|t| r.end + 1 == t && self.total.is_none_or(|want| want == t))
                };
                let whole_rest = range.is_some_and(|r| r.start == self.from && ends_right(r));
                if whole_rest && !encoded {
                    Answer::Rest
                } else {
                    Answer::Unusable
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => Answer::Unusable,
            _ => Answer::Whole,
        }
    }
}

/// How a provider answered a continuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 206 from where we stopped: append it.
    Rest,
    /// Not a usable range (another start, an encoding, 416): start the file over.
    Unusable,
    /// Anything else, handled as a first answer (200: the whole file again, it changed or the
    /// provider does not do ranges).
    Whole,
}

/// `bytes N-M/T` (T may be `*`, unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    end: u64,
    total: Option<u64>,
}

fn parse_range(content_range: &str) -> Option<ContentRange> {
    let spec = content_range.trim().strip_prefix("bytes ")?;
    let (span, total) = spec.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some(ContentRange { start: start.trim().parse().ok()?, end: end.trim().parse().ok()?, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_a_strong_validator_of_an_unencoded_answer_allows_a_continuation() {
        assert!(Validator::of(&headers(&[("etag", "\"abc\"")])).is_some());
        assert!(Validator::of(&headers(&[("etag", "W/\"abc\"")])).is_none(), "weak");
        assert!(Validator::of(&headers(&[("etag", "\"abc\""), ("content-encoding", "gzip")])).is_none());
        assert!(Validator::of(&headers(&[("etag", "\"abc\""), ("accept-ranges", "none")])).is_none());
        assert!(Validator::of(&headers(&[])).is_none());
        let dated = |modified, date| {
            Validator::of(&headers(&[("last-modified", modified), ("date", date)])).is_some()
        };
        assert!(dated("Tue, 01 Dec 2026 10:00:00 GMT", "Tue, 01 Dec 2026 10:00:05 GMT"));
        assert!(!dated("Tue, 01 Dec 2026 10:00:00 GMT", "Tue, 01 Dec 2026 10:00:00 GMT"), "same second");
        assert!(!dated("Tue, 01 Dec 2026 10:00:00 GMT", "garbage"));
    }

    #[test]
    fn content_ranges_are_read_whole() {
        let r = |start, end, total| Some(ContentRange { start, end, total });
        assert_eq!(parse_range("bytes 100-199/200"), r(100, 199, Some(200)));
        assert_eq!(parse_range("bytes 7-9/*"), r(7, 9, None));
        assert_eq!(parse_range("bytes */200"), None);
        assert_eq!(parse_range("items 1-2/3"), None);
        assert!(Validator::of(&headers(&[("etag", "\"abc")])).is_none(), "an unclosed ETag");
    }
}
