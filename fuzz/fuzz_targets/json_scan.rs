//! The JSON scanner against std and serde_json on arbitrary bytes: the same lines accepted (UTF-8,
//! grammar, one object), each refusal for a true reason, and the same top-level `resourceType` and
//! `id` as the serde struct the scanner replaced.
#![no_main]
use bulk_import::jobs::json_scan::{scan_object, RawStr, ScanFault, MAX_DEPTH};
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
    let ours = scan_object(line);
    let utf8 = std::str::from_utf8(line).is_ok();
    let object = line.trim_ascii_start().starts_with(b"{");
    let grammar = utf8 && object && serde_json::from_slice::<IgnoredAny>(line).is_ok();
    let head = serde_json::from_slice::<Head>(line).ok().filter(|_| utf8 && object);
    match ours {
        Ok(top) => {
            assert!(grammar, "accepted what std or serde_json refuses: {line:?}");
            if let Some(head) = head {
                assert_eq!(decoded(top.resource_type), head.resource_type, "{line:?}");
                assert_eq!(decoded(top.id), head.id, "{line:?}");
            }
        }
        Err(e) => match e.fault {
            ScanFault::TooDeep => {
                assert!(line.iter().filter(|b| matches!(b, b'[' | b'{')).count() > MAX_DEPTH)
            }
            ScanFault::NotUtf8 => assert!(!utf8, "refused valid UTF-8 ({e}): {line:?}"),
            // Found before the rest of the line is read, so only serde's struct is sure to agree.
            ScanFault::NotString(_) | ScanFault::Duplicate(_) => {
                assert!(head.is_none(), "refused what serde reads ({e}): {line:?}")
            }
            ScanFault::Grammar(_) => assert!(!grammar, "refused what serde_json accepts ({e}): {line:?}"),
        },
    }
});
