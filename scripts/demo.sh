#!/usr/bin/env bash
# Quickstart, part one: set up (venv, torch, Rust build of snapload), make a small model locally,
# convert it, and time cold starts in fresh processes, snapload next to safetensors (see the
# docstring of scripts/demo.py for what is measured). A few minutes on 2 cores once set up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
source "${SNAPLOAD_VENV:-.venv}/bin/activate"
echo "[demo] running scripts/demo.py"
python scripts/demo.py
