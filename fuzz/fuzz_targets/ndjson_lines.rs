//! The line splitter and validator on arbitrary bytes in arbitrary chunks: never a panic, and
//! every complete line the splitter reports is exactly a line of the input.
#![no_main]
use bulk_import::jobs::ndjson::{validate_line, LineSplitter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else { return };
    let chunk = usize::from(cut % 64) + 1;
    let mut splitter = LineSplitter::new(256);
    let mut seen = Vec::new();
    let mut check = |n: u64, line: &[u8]| {
        let _ = validate_line(n, line, "Patient", n % 2 == 0);
        seen.push(line.to_vec());
        Ok(())
    };
    let mut failed = false;
    for piece in body.chunks(chunk) {
        if splitter.feed(piece, &mut check).is_err() {
            failed = true;
            break;
        }
    }
    if !failed && splitter.finish(&mut check).is_ok() {
        let expected: Vec<Vec<u8>> = body
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
            .collect();
        let expected = if body.ends_with(b"\n") { &expected[..expected.len() - 1] } else { &expected[..] };
        let expected = if body.is_empty() { &[][..] } else { expected };
        assert_eq!(seen, expected);
    }
});
