"""Optional test dependencies: skipped locally with the reason, a failure in CI (CI=true), where
scripts/requirements-dev.txt installs them, so a real check never goes missing silently."""

from __future__ import annotations

import importlib.util
import os
from typing import NoReturn

import pytest


def missing(message: str) -> NoReturn:
    """Skip (locally) or fail (in CI) for a dependency that is not there, saying which."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require(module: str) -> None:
    """Skip (locally) or fail (in CI) without ``module``."""
    if importlib.util.find_spec(module) is None:
        missing(f"{module} is not installed (pip install -r scripts/requirements-dev.txt)")
