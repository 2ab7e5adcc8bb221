//! Per-core cost of the line guard and validation, without the network or the disk. Run with
//! `cargo bench --bench validate`. It reads a `make_ndjson.py` file (BENCH_FILE, default the
//! 100 MiB set the import benchmark makes) into memory once, then splits and validates it in
//! 64 KiB chunks, as a download does, BENCH_ROUNDS times (5) and prints the best MB/s. Timings on a
//! shared machine swing by half; for a steady comparison, count instructions instead:
//! `BENCH_ROUNDS=1 valgrind --tool=callgrind target/release/deps/validate-*`.
use std::{path::PathBuf, time::Instant};

use bulk_import::jobs::ndjson::{validate_line, LineKind, LineSplitter};

/// Network chunk size seen from hyper on loopback is 8–64 KiB; the larger end is kinder to carry.
const CHUNK: usize = 64 * 1024;

fn main() {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-data/100MiB-1/Observation.001.ndjson");
    let path = PathBuf::from(std::env::var("BENCH_FILE").unwrap_or_else(|_| default.into()));
    let data = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run `BENCH_SIZE=100MiB BENCH_FILES=1 cargo bench --bench import` once)",
            path.display()
        )
    });
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let mb = data.len() as f64 / 1e6;
    let mut best = f64::MAX;
    let mut resources = 0u64;
    for _ in 0..rounds {
        let started = Instant::now();
        resources = 0;
        let mut splitter = LineSplitter::new(1 << 20);
        let mut on_line = |n: u64, line: &[u8]| {
            if validate_line(n, line, "Observation", true)? == LineKind::Resource {
                resources += 1;
            }
            Ok(())
        };
        for chunk in data.chunks(CHUNK) {
            splitter.feed(chunk, &mut on_line).expect("the data set is valid");
        }
        splitter.finish(&mut on_line).expect("the data set is valid");
        best = best.min(started.elapsed().as_secs_f64());
    }
    println!(
        "{}: {mb:.0} MB, {resources} resources, best of {rounds}: {:.0} MB/s, {:.0} resources/s",
        path.display(),
        mb / best,
        resources as f64 / best
    );
}
