#!/usr/bin/env bash
# Fuzzes every target for a while: fuzz/run.sh [seconds-per-target] [target...]
#
# Works on stable Rust: cargo-fuzz needs nightly flags (-Zsanitizer, sancov passes), and
# RUSTC_BOOTSTRAP=1 lets the stable compiler accept them. Installs cargo-fuzz when it is
# missing, seeds each corpus (fuzz/corpus/<target>, not in git) from the hand-written
# fuzz/seeds/<target>, then runs each target for the given time (default 60 s).
# Exits non-zero if any target crashed, timed out or ran out of memory; the input that
# did it is left in fuzz/artifacts/<target>/ and the log in fuzz/target/fuzz-logs/.
#
# Environment: FUZZ_SANITIZER (address by default, as cargo-fuzz; `none` skips
# AddressSanitizer for more executions on this all-safe-Rust code), FUZZ_ARGS (extra
# libFuzzer flags, e.g. "-max_len=8192").
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-60}"
shift || true
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 [seconds-per-target] [target...]" >&2
    exit 2
fi

export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "== $(rustc --version), $(cargo fuzz --version), sanitizer: $sanitizer"
echo "== building ${targets[*]}"
cargo fuzz build --sanitizer "$sanitizer"

mkdir -p target/fuzz-logs
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    if [ -d "seeds/$t" ]; then
        cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true
    fi
    log="target/fuzz-logs/$t.log"
    echo "== $t for ${secs}s (log: fuzz/$log)"
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    if cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
        cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -1)
        echo "   ok: ${execs:-?} execs, ${rate:-?}/s, ${cov:-}"
    else
        failed+=("$t")
        echo "   FAILED: $t"
        grep -E -A1 "panicked at|ERROR: libFuzzer|Test unit written" "$log" |
            head -n 10 | sed 's/^/   /'
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "== crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/;" \
        "replay: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>)"
    exit 1
fi
echo "== all ${#targets[@]} targets ran ${secs}s without a crash"
