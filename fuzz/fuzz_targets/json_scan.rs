//! The JSON scanner against serde_json on arbitrary bytes: the same grammar accepted, and the same
//! top-level `resourceType` and `id` as the serde struct the scanner replaced.
#![no_main]
use bulk_import::jobs::json_scan::{scan_object, RawStr, MAX_DEPTH};
use libfuzzer_sys::fuzz_target;
use serde::{de::IgnoredAny, Deserialize};

/// The validator before the scanner: unknown members ignored, the watched two read as strings.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    id: Option<String>,
}

fn decoded(s: Option<RawStr>) -> Option<String> {
    s.and_then(|s| s.decode()).map(|c| c.into_owned())
}

fuzz_target!(|line: &[u8]| {
    // The scanner's caller checks UTF-8 for the whole line first.
    let Ok(text) = std::str::from_utf8(line) else { return };
    let ours = scan_object(line);
    if ours.as_ref().is_err_and(|e| e.reason.starts_with("nested deeper")) {
        assert!(line.iter().filter(|b| matches!(b, b'[' | b'{')).count() > MAX_DEPTH);
        return;
    }
    let object = text.trim_start_matches([' ', '\t', '\r', '\n']).starts_with('{');
    let grammar = object && serde_json::from_slice::<IgnoredAny>(line).is_ok();
    let head = serde_json::from_slice::<Head>(line).ok().filter(|_| object);
    match ours {
        Ok(top) => {
            assert!(grammar, "accepted what serde_json refuses: {text:?}");
            if let Some(head) = head {
                assert_eq!(decoded(top.resource_type), head.resource_type, "{text:?}");
                assert_eq!(decoded(top.id), head.id, "{text:?}");
            }
        }
        Err(e) if e.reason.ends_with("must be a string") => {
            // serde reads `null` as absent; anything else that is not a string fails it too.
            if let Some(head) = head {
                let field = if e.reason.starts_with("id") { head.id } else { head.resource_type };
                assert_eq!(field, None, "{e}: {text:?}");
            }
        }
        Err(e) => assert!(head.is_none() && (!grammar || e.reason.ends_with("appears twice")),
            "refused what serde_json accepts ({e}): {text:?}"),
    }
});
