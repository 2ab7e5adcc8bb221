#!/usr/bin/env bash
# Run every fuzz target for a bounded time (default 60 s each). cargo-fuzz needs nightly flags;
# RUSTC_BOOTSTRAP lets the stable toolchain accept them (no other toolchain can be fetched here).
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
for target in ndjson_lines json_scan import_parameters export_manifest; do
  echo "== $target (${SECONDS_EACH}s)"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$SECONDS_EACH" -max_len=4096 2>&1 | tail -n 3
done
