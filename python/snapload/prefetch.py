"""Pulling snapshots into the page cache ahead of use, without importing torch.

``snapload.prefetch(path)`` returns at once; Rust threads read the file into the page cache
while the handler goes on with ``import torch`` and building its model, and ``restore`` then
finds the data resident.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from snapload import _native


def prefetch(path: str | os.PathLike[str], *, threads: int = 4, chunk_bytes: int = 64 << 20) -> _native.Prefetch:
    """Start background readahead of ``path``; ``.wait()`` blocks until done, ``.bytes_done``
    tells progress. Dropping the handle cancels what is left."""
    return _native.Prefetch(os.fspath(path), threads, chunk_bytes)


@dataclass(frozen=True)
class Residency:
    path: str
    resident_bytes: int
    size: int

    @property
    def fraction(self) -> float:
        return self.resident_bytes / self.size if self.size else 1.0


def residency(path: str | os.PathLike[str]) -> Residency:
    """How much of a file is in the page cache now (mincore; reads nothing)."""
    resident, size = _native.residency(os.fspath(path))
    return Residency(os.fspath(path), resident, size)


def evict(path: str | os.PathLike[str]) -> None:
    """Drop a file's clean pages from the page cache (for cold-start measurements)."""
    _native.evict(os.fspath(path))
