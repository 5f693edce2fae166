"""snapload: page-aligned weight snapshots that restore at the speed of the hardware.

Importing ``snapload`` is light: torch is imported only when a function that needs it is first
used, so ``snapload.prefetch()`` can start pulling a snapshot into memory while ``import torch``
and model construction run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from snapload._native import FORMAT_VERSION
from snapload.errors import (
    BadMagicError,
    CancelledError,
    ChecksumMismatchError,
    ConversionError,
    CorruptHeaderError,
    CudaUnavailableError,
    MetaTensorError,
    ObjectChangedError,
    SnapshotError,
    StateDictMismatchError,
    TruncatedFileError,
    UnsafeCheckpointError,
    UnsupportedDtypeError,
    UnsupportedVersionError,
)

from snapload._remote import wait_for_cache
from snapload.prefetch import Residency, evict, prefetch, residency

__version__ = "0.1.0"

# name -> module that defines it; imported on first use (these modules import torch).
_LAZY = {
    "snapshot": "snapload._write",
    "restore": "snapload._restore",
    "open": "snapload._info",
    "SnapshotInfo": "snapload._info",
    "TensorInfo": "snapload._info",
    "restore_module": "snapload.module",
    "init_empty_weights": "snapload.module",
    "RestoreResult": "snapload.module",
    "convert": "snapload._convert",
    "plan": "snapload._plan.api",
}

if TYPE_CHECKING:
    from snapload._info import SnapshotInfo, TensorInfo, open
    from snapload._restore import restore
    from snapload._write import snapshot
    from snapload._convert import convert
    from snapload._plan.api import plan
    from snapload.module import RestoreResult, init_empty_weights, restore_module


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'snapload' has no attribute {name!r}")
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name not in ("torch", "numpy"):
            raise
        # An install without dependencies (pip install --no-deps, for a keep-warm sidecar):
        # say what is missing and what works without it, rather than a bare "No module named".
        raise ModuleNotFoundError(
            f"snapload.{name} needs {e.name}, which is not installed here (pip install torch numpy); "
            "without them, snapload.open, prefetch, residency, evict and the commands inspect, "
            "verify, warm and status still work",
            name=e.name,
        ) from e
    value = getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FORMAT_VERSION",
    "wait_for_cache",
    "Residency",
    "BadMagicError",
    "CancelledError",
    "ChecksumMismatchError",
    "ConversionError",
    "CorruptHeaderError",
    "CudaUnavailableError",
    "MetaTensorError",
    "ObjectChangedError",
    "RestoreResult",
    "SnapshotError",
    "SnapshotInfo",
    "StateDictMismatchError",
    "TensorInfo",
    "TruncatedFileError",
    "UnsafeCheckpointError",
    "UnsupportedDtypeError",
    "UnsupportedVersionError",
    "convert",
    "evict",
    "init_empty_weights",
    "open",
    "plan",
    "prefetch",
    "residency",
    "restore",
    "restore_module",
    "snapshot",
]
