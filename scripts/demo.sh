#!/usr/bin/env bash
# Quickstart, part one: set up (venv, torch, Rust build of snapload), make a small model locally,
# convert it, restore it in fresh processes and print the restore time next to safetensors'.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
source "${SNAPLOAD_VENV:-.venv}/bin/activate"
python scripts/demo.py
