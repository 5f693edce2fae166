"""The exception hierarchy. ``SnapshotError`` is the base of everything snapload raises about a
snapshot; file-system failures are the built-in ``OSError`` subclasses with ``filename`` set."""

from __future__ import annotations

from snapload._native import (
    BadMagicError,
    CancelledError,
    ChecksumMismatchError,
    CorruptHeaderError,
    ObjectChangedError,
    SnapshotError,
    TruncatedFileError,
    UnsupportedVersionError,
)


class StateDictMismatchError(SnapshotError):
    """A module and a snapshot disagree: missing or unexpected keys, or a shape mismatch."""


class MetaTensorError(SnapshotError):
    """Parameters or buffers are still on the meta device after a restore."""


class UnsafeCheckpointError(SnapshotError):
    """A checkpoint could not be loaded without running pickle code; it was refused."""


class UnsupportedDtypeError(SnapshotError):
    """A dtype this torch build does not have, or one the format cannot hold."""


class CudaUnavailableError(SnapshotError):
    """A CUDA restore was asked for but CUDA (driver, device, cuda-python) is not usable."""


class ConversionError(SnapshotError):
    """A source checkpoint could not be read or converted."""


__all__ = [
    "BadMagicError",
    "CancelledError",
    "ChecksumMismatchError",
    "ConversionError",
    "CorruptHeaderError",
    "CudaUnavailableError",
    "MetaTensorError",
    "ObjectChangedError",
    "SnapshotError",
    "StateDictMismatchError",
    "TruncatedFileError",
    "UnsafeCheckpointError",
    "UnsupportedDtypeError",
    "UnsupportedVersionError",
]
