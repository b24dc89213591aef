#!/usr/bin/env bash
# Installs what lockledger needs on a fresh machine (idempotent).
#   ./scripts/setup.sh          what building and running the service needs
#   ./scripts/setup.sh --tests  also what the tests need (the virtualenv .venv with
#                               the Python client, filelock, Flask and pytest;
#                               Chromium, playwright-core, PostgreSQL)
# The Rust toolchain comes with the machine; everything else is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
  rustup component add clippy rustfmt
fi
[ "${1:-}" = "--tests" ] || exit 0

# Everything Python runs from a virtualenv, .venv (Debian's python3 refuses pip installs
# outside one: PEP 668): the client's tests, and the Rust tests and chaos run that start
# Python filelock holders (test.sh puts .venv/bin first on PATH). The client is
# reinstalled every time, so the tests always run what clients/python holds now.
if [ ! -x .venv/bin/pip ]; then
  rm -rf .venv
  if ! python3 -m venv .venv >/dev/null 2>&1; then
    echo "setup: installing python3-venv"
    rm -rf .venv
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  fi
  echo '*' > .venv/.gitignore
fi
.venv/bin/pip install --quiet --disable-pip-version-check "./clients/python[filelock,flask]" pytest
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps --force-reinstall ./clients/python

# Chaos steps the service's wall clock with libfaketime (its hostile mode; without it
# the run says clock_steps=0 and why).
if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 && [ ! -e /usr/lib64/faketime/libfaketime.so.1 ]; then
  echo "setup: installing faketime"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq faketime >/dev/null || echo "setup: faketime not installed; chaos runs without clock steps"
fi

# PostgreSQL: the tests start throwaway clusters of their own (tests/support's `pg`,
# scripts/pg.sh), so only the server programs are needed here (pg_install is a no-op
# when initdb is found).
. scripts/pg.sh
pg_install

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
