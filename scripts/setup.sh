#!/usr/bin/env bash
# Idempotent setup: a venv at .venv (or $SNAPLOAD_VENV) with torch and the test/bench tools, and
# snapload built from this checkout (release, abi3) and installed into it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SNAPLOAD_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.snapload-deps"
want="$(sha256sum scripts/requirements-dev.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r scripts/requirements-dev.txt
  echo "$want" > "$stamp"
fi
maturin develop --release -q >/dev/null
python -c "import snapload, snapload._native; print('snapload', snapload.__version__, 'built from', snapload.__file__)"
