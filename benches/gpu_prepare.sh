#!/usr/bin/env bash
# Here (no GPU needed): build the abi3 wheel and fetch the optional GPU peers' wheels into .whl/
# (gitignored), which the device call carries. Then: device run --carry .whl -- bash benches/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC1091
source "${SNAPLOAD_VENV:-.venv}/bin/activate"
maturin build --release -q --out .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
  fastsafetensors==0.5.0 instanttensor==0.2.2 || echo "peer wheels unavailable; the benchmark skips those loaders"
ls -la .whl
