#!/usr/bin/env bash
# Sets up and runs the lockledger service on its embedded default: storage/ on
# http://127.0.0.1:8787. Extra arguments go to `lockledger serve` (e.g. --bind).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked
exec ./target/release/lockledger --storage "${LOCKLEDGER_STORAGE:-storage}" serve "$@"
