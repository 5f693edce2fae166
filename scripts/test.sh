#!/usr/bin/env bash
# The whole test suite: Rust unit/property/corpus tests (optimised, with overflow checks and debug
# assertions on), clippy, a bounded coverage-guided fuzz run of the header parser, then pytest
# (CUDA tests skip, with the reason, where no GPU is present). Sets everything up first on a fresh
# machine. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
source "${SNAPLOAD_VENV:-.venv}/bin/activate"
# A second venv with the CPU build of vLLM (cached in ~/.cache/snapload; ~7 min from scratch):
# tests/test_vllm.py runs real engines in it, and fails rather than skips when CI=true.
bash scripts/setup_vllm.sh
echo "== cargo test (profile ci: release + overflow checks + debug assertions)"
cargo test --workspace --exclude snapload-python --profile ci -q
echo "== clippy"
# Lints are part of the suite: every unsafe block must carry a SAFETY comment (clippy).
cargo clippy --workspace --all-targets --release -q -- -D warnings
echo "== fuzz (header parser, ${SNAPLOAD_FUZZ_SECONDS:-60}s)"
bash scripts/fuzz_smoke.sh "${SNAPLOAD_FUZZ_SECONDS:-60}"
echo "== pytest"
python -m pytest -q "$@"
