#!/usr/bin/env bash
# Install the system packages the build needs (OpenSSL headers for josekit/reqwest, pkg-config)
# and the browser the UI test drives (Debian's chromium and chromium-driver), only when they are
# missing. Safe to run repeatedly.
set -euo pipefail

missing=()
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
dpkg -s pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
dpkg -s chromium >/dev/null 2>&1 || missing+=(chromium)
dpkg -s chromium-driver >/dev/null 2>&1 || missing+=(chromium-driver)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
