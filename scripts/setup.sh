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

if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
  rustup component add clippy rustfmt
fi
