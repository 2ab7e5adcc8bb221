//! The export manifest parser and planner on arbitrary bodies: an answer, never a panic.
#![no_main]
use bulk_import::fhir::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let _ = m.planned_files();
        let _ = m.next_page();
    }
});
