#!/usr/bin/env bash
# Build the header fuzz target with coverage instrumentation on the stable toolchain (the same
# sancov passes cargo-fuzz uses, without AddressSanitizer, which needs nightly) and fuzz for a
# bounded time, starting from the saved corpus. A crash, a timeout or running out of memory fails
# the run and leaves its input in $WORK/artifacts. Usage: scripts/fuzz_smoke.sh [SECONDS]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-60}
WORK=${SNAPLOAD_FUZZ_DIR:-$(mktemp -d)}
mkdir -p "$WORK/corpus" "$WORK/artifacts"
cp rust/core/tests/corpus/* "$WORK/corpus/"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/fuzz/target}
# An explicit target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
  cargo build -q --release --manifest-path fuzz/Cargo.toml --bin header --target "$TRIPLE"
echo "fuzzing the header parser for ${SECONDS_TO_RUN}s from $(ls rust/core/tests/corpus | wc -l) saved inputs"
# The fuzzer's own exit status counts: libFuzzer exits non-zero on a crash, a timeout (a unit over
# -timeout seconds), running out of memory or a leak, and writes the input to $WORK/artifacts.
set +e
"$CARGO_TARGET_DIR/$TRIPLE/release/header" "$WORK/corpus" -max_len=16384 -max_total_time="$SECONDS_TO_RUN" \
  -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$WORK/artifacts/" -print_final_stats=1 >"$WORK/fuzz.log" 2>&1
status=$?
set -e
grep -E "^(#[0-9]+ +DONE|Done|stat::number_of_executed_units|stat::new_units_added|==|SUMMARY)" "$WORK/fuzz.log" || true
artifacts=$(ls "$WORK/artifacts")
if [ "$status" -ne 0 ] || [ -n "$artifacts" ]; then
  tail -n 40 "$WORK/fuzz.log" >&2
  echo "fuzzing failed (libFuzzer exit status $status); inputs kept in $WORK/artifacts: ${artifacts:-none}" >&2
  exit 1
fi
