#!/usr/bin/env bash
# Install the system packages building and running need (listed below), only when they are
# missing; with --tests also the browser the UI test drives (Debian's chromium and
# chromium-driver) and the PostgreSQL server the tests start throw-away clusters of. Safe to run
# repeatedly.
set -euo pipefail

tests=false
for arg in "$@"; do
  case "$arg" in
    --tests) tests=true ;;
    *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
  esac
done

missing=()
# A C toolchain (aws-lc-sys, libsqlite3-sys, openssl-sys and the linker), `kill` for the
# binary tests, curl for the README walkthrough and the benchmark, python3 for its data set.
for pkg in build-essential libssl-dev pkg-config procps curl python3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if $tests; then
  dpkg -s chromium >/dev/null 2>&1 || missing+=(chromium)
  dpkg -s chromium-driver >/dev/null 2>&1 || missing+=(chromium-driver)
  # The server's programs only: the tests run initdb/pg_ctl themselves (tests/api/postgres.rs).
  dpkg -s postgresql >/dev/null 2>&1 || missing+=(postgresql)
fi
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "run this script as root (no sudo here)" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
