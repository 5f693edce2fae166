"""What a snapshot holds, from its header alone: no tensor data is read and torch is not imported,
so ``snapload.open`` and ``snapload inspect`` stay fast."""

from __future__ import annotations

import os
from dataclasses import dataclass

from snapload import _native


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    length: int
    crc32c: int
    alias_of: str | None


@dataclass(frozen=True)
class SnapshotInfo:
    """What a snapshot holds, read from its header alone (no tensor data is touched)."""

    path: str
    alignment: int
    file_size: int
    data_start: int
    metadata: dict[str, str]
    tensors: list[TensorInfo]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @property
    def data_bytes(self) -> int:
        return sum(t.length for t in self.tensors if t.alias_of is None)


def tensor_table(snap: _native.Snapshot) -> list[TensorInfo]:
    return [
        TensorInfo(name, dtype, tuple(shape), offset, length, crc, alias)
        for name, dtype, shape, offset, length, crc, alias in snap.tensors()
    ]


def open(path: str | os.PathLike[str]) -> SnapshotInfo:  # noqa: A001 - mirrors builtins.open
    """Read and validate a snapshot's header without loading any tensor."""
    snap = _native.Snapshot(os.fspath(path))
    return SnapshotInfo(
        path=os.fspath(path),
        alignment=snap.alignment,
        file_size=snap.file_size,
        data_start=snap.data_start,
        metadata=snap.metadata,
        tensors=tensor_table(snap),
    )
