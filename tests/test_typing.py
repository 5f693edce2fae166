"""The typed surface is checked: the package passes mypy --strict, and the stubs of the compiled
module match what it really exports (mypy's stubtest)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("mypy", reason="mypy is not installed (pip install -r scripts/requirements-dev.txt)")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_package_passes_mypy_strict() -> None:
    out = _run("mypy", "--config-file", "pyproject.toml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_native_stubs_match_the_compiled_module() -> None:
    out = _run("mypy.stubtest", "snapload._native")
    assert out.returncode == 0, out.stdout + out.stderr
