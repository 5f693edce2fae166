#!/usr/bin/env bash
# The GPU check for issue "GPU restore", run on the lent GPU machine in one call:
#   device run (carry .whl) -> bash benches/gpu_check.sh
# It builds nothing: it installs the carried abi3 wheel (and optional peer wheels) with pip
# --no-index, runs the CUDA tests and the pipeline tests, then the GPU benchmark, writing
# everything under $OUT. Prepare the wheels here first:  bash benches/gpu_prepare.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/snapload-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc; free -g | head -2; df -h /tmp | tail -1; python3 --version
} 2>&1 | tee "$OUT/machine.txt"

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -c "import snapload, torch, cuda.bindings; print('snapload', snapload.__version__, snapload.__file__, 'torch', torch.__version__)" | tee -a "$OUT/machine.txt"

echo "== tests"
# The repo's python/ source must not shadow the installed wheel (it has no compiled module).
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_pipeline.py 2>&1 | tee "$OUT/pytest.txt" | tail -15

echo "== benchmark"
timeout "${BENCH_TIMEOUT:-330}" python3 benches/gpu_bench.py --size-gb "${SIZE_GB:-8}" --trials "${TRIALS:-3}" \
  --budget-s "${BUDGET_S:-240}" --out "$OUT/gpu_bench.json" --markdown "$OUT/gpu_bench.md" 2>&1 | tee "$OUT/bench.txt" | tail -25
