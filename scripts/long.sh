#!/usr/bin/env bash
# The long mode: everything the quick test run does, plus the long chaos run (10 min by
# default) and every fuzz target for a bounded time. Results belong in BENCHMARKS.md.
#   ./scripts/long.sh [chaos-seconds] [fuzz-seconds-per-target]
set -euo pipefail
cd "$(dirname "$0")/.."
chaos_seconds="${1:-600}"
fuzz_seconds="${2:-120}"
./scripts/test.sh
# test.sh built the service and the tools (workspace member lockledger-tools, in tools/)
# in release, side by side in target/release.
./target/release/lockledger-chaos --seconds "$chaos_seconds"
./fuzz/run.sh "$fuzz_seconds"
