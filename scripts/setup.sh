#!/usr/bin/env bash
# Installs what lockledger's build and tests need on a fresh machine (idempotent).
# The Rust toolchain comes with the machine; everything else is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

need_python_pkgs=()
python3 -c 'import filelock' 2>/dev/null || need_python_pkgs+=("filelock>=3.12")
if [ "${#need_python_pkgs[@]}" -gt 0 ]; then
  echo "setup: installing Python packages: ${need_python_pkgs[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${need_python_pkgs[@]}"
fi

# Browser tests drive Debian's Chromium with playwright-core (no browser download).
if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "setup: installing playwright-core for the browser tests"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
  rustup component add clippy rustfmt
fi
