#!/usr/bin/env bash
# Idempotent setup: a venv at .venv (or $SNAPLOAD_VENV) with torch and the test/bench tools, and
# snapload built from this checkout (release, abi3) and installed into it. Says what it is doing
# at each step: the first run downloads torch (several GB) and compiles the Rust crates, minutes
# during which a silent terminal would look hung.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SNAPLOAD_VENV:-.venv}
PY=${PYTHON:-python3}
step() { echo "[setup] $*"; }
if [ ! -x "$VENV/bin/python" ]; then
  step "creating the virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.snapload-deps"
want="$(sha256sum scripts/requirements-dev.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "installing torch, transformers and the test tools from scripts/requirements-dev.txt"
  step "(the first time this downloads several GB, the CUDA build of torch among them: minutes; pip shows each package)"
  python -m pip install -q --upgrade pip
  # Not -q: pip's "Collecting ..." / "Downloading ..." lines are the progress report.
  python -m pip install -r scripts/requirements-dev.txt
  echo "$want" > "$stamp"
else
  step "Python dependencies already installed (scripts/requirements-dev.txt unchanged)"
fi
step "building snapload (Rust, release; the first build compiles every crate: a minute or two)"
maturin develop --release -q >/dev/null
python -c "import snapload, snapload._native; print('[setup] snapload', snapload.__version__, 'built from', snapload.__file__)"
