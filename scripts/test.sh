#!/usr/bin/env bash
# Sets up and runs every test: formatting, lints, unit and integration tests (real
# processes, signals and files).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --tests
# `python3` is the virtualenv's (filelock, Flask) for every test below.
export PATH="$PWD/.venv/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace --all-targets
# The HTTP API suite once more against the PostgreSQL backend (a throwaway cluster, a
# database per service storage); the PostgreSQL store, two-service and schema tests ran
# in the workspace run above.
LOCKLEDGER_TEST_POSTGRES=1 cargo test --locked --test http_service
# The web UI in real Chromium, against the real binary.
cargo build --locked
(cd tests/browser && LOCKLEDGER_BIN="$PWD/../../target/debug/lockledger" node run.mjs)
# The Python client for the chat app (installed in .venv by setup.sh), against the real
# service: leases, the drop-in FileLock, and a miniature chat app driven through Flask.
LOCKLEDGER_BIN="$PWD/target/debug/lockledger" .venv/bin/python -m pytest tests/python -q
# Chaos, quick mode: real crashes, pauses, revocations and service restarts, with the
# invariants checked at the end (see BENCHMARKS.md for the long run). The tools are the
# workspace member lockledger-tools (tools/); they run the service binary built beside them.
cargo build --locked --release -p lockledger -p lockledger-tools
./target/release/lockledger-chaos --quick
./target/release/lockledger-chaos --quick --postgres
