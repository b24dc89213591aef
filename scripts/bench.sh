#!/usr/bin/env bash
# Installs what the benchmark compares against (redis-server, Python filelock and redis,
# and Debian's postgresql for the `pg` group's throwaway cluster),
# builds release and runs lockledger-bench, passing every argument through:
#   ./scripts/bench.sh             # full run (about 6 minutes, a few GB in the temp dir)
#   ./scripts/bench.sh --quick     # short run
#   ./scripts/bench.sh --only http,concurrent
#   ./scripts/bench.sh --only limits   # the DESIGN.md §11 abuse cases (not part of --quick)
#   ./scripts/bench.sh --quick --json target/bench/results.json   # results also as JSON
# The exit code is the benchmark's: 0 all targets met, 1 a target missed, 2 harness error.
# See BENCHMARKS.md for what each number means.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "bench: installing redis-server"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
fi

# The `pg` group starts a throwaway PostgreSQL cluster of its own: only the server
# programs are needed (pg_install is a no-op when initdb is found).
. scripts/pg.sh
pg_install

echo "bench: installing Python packages filelock and redis"
pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@"; }
# A distribution's own python3 may refuse pip installs (PEP 668) unless told otherwise.
pip_install filelock redis || pip_install --break-system-packages filelock redis

# The benchmark is in the workspace member lockledger-tools (tools/); the service it
# measures is built beside it into the same target directory.
cargo build --release --locked -p lockledger -p lockledger-tools
exec "${CARGO_TARGET_DIR:-target}/release/lockledger-bench" "$@"
