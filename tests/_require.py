"""Optional test dependencies: skipped locally with the reason, a failure in CI (CI=true), where
scripts/requirements-dev.txt installs them, so a real check never goes missing silently."""

from __future__ import annotations

import importlib.util
import os

import pytest


def require(module: str) -> None:
    """Skip (locally) or fail (in CI) without ``module``."""
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed (pip install -r scripts/requirements-dev.txt)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
