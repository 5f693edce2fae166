#!/usr/bin/env bash
# The whole test suite: Rust unit/property/corpus tests, then pytest (CUDA tests skip, with the
# reason, where no GPU is present). Sets everything up first on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
source "${SNAPLOAD_VENV:-.venv}/bin/activate"
cargo test --workspace --exclude snapload-python --release -q
# Lints are part of the suite: every unsafe block must carry a SAFETY comment (clippy).
cargo clippy --workspace --all-targets --release -q -- -D warnings
python -m pytest -q "$@"
