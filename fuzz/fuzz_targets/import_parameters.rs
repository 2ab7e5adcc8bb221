//! The `$import` Parameters parser on arbitrary bodies: an answer, never a panic.
#![no_main]
use bulk_import::fhir::parameters::ImportRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ImportRequest::parse(data);
});
