"""Pulling snapshots into the page cache ahead of use, without importing torch.

``snapload.prefetch(path)`` returns at once; Rust threads read the file into the page cache
while the handler goes on with ``import torch`` and building its model, and ``restore`` then
finds the data resident.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from snapload import _native, _remote


def validate_snapshot(path: str | os.PathLike[str]) -> None:
    """Check that ``path`` is a readable, complete snapshot from its header alone, as ``snapload
    inspect`` does: a folder raises ``IsADirectoryError``, a missing file ``FileNotFoundError``, a
    file that is not a snapshot ``BadMagicError``, a cut-off one ``TruncatedFileError`` (all
    naming ``path``). Reads only the header (a few KiB); no torch."""
    _native.Snapshot(os.fspath(path))


def prefetch(
    path: str | os.PathLike[str],
    *,
    threads: int = 1,
    chunk_bytes: int = 8 << 20,
    background: bool = True,
    validate: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> _native.Prefetch | _remote.CachePrefetch | _remote.MemoryPrefetch:
    """Start pulling ``path`` into the page cache and return at once; ``.wait()`` blocks until
    done, ``.bytes_done`` tells progress. Dropping the handle cancels what is left.

    ``validate=True`` (the default) first checks that ``path`` is a snapshot from its header (see
    ``validate_snapshot``), so a wrong path fails here with a clear error rather than warming the
    wrong bytes. ``validate=False`` prefetches any regular file (a safetensors file, a shared
    library): the benchmarks use it to give other loaders the same head start. A folder always
    raises ``IsADirectoryError``.

    ``background=True`` (the default) runs the reader threads at the lowest CPU priority (nice 19)
    and in the idle I/O class, so the work they overlap (``import torch`` and its library reads,
    building the model) goes first; ``snapload warm`` passes ``False`` because filling the cache is
    all it does. One thread reading 8 MiB at a time keeps few requests in the disk's queue, so the
    handler's own reads (its libraries, on a node that just pulled its image) wait behind little;
    that measured faster than two threads with 64 MiB. Each page is read once by the thread that
    brought it in, so that first-access costs (hypervisor faults in a microVM) are paid here rather
    than in the first forward pass. Measured in docs/benchmarks.md (end-to-end cold start).

    A URL (``s3://``, ``https://``) is downloaded by a background thread: into ``cache_dir`` (or
    ``SNAPLOAD_CACHE_DIR``), from where ``restore(url, cache_dir=...)`` then reads the local copy;
    without a cache directory, into memory, which the next CPU ``restore(url)`` of this process
    takes as its arena (docs/remote.md)."""
    if _remote.is_url(path):
        return _remote.prefetch(os.fspath(path), cache_dir)
    if validate:
        validate_snapshot(path)
    return _native.Prefetch(os.fspath(path), threads, chunk_bytes, background)


@dataclass(frozen=True)
class Residency:
    path: str
    resident_bytes: int
    size: int

    @property
    def fraction(self) -> float:
        return self.resident_bytes / self.size if self.size else 1.0


def residency(path: str | os.PathLike[str], *, validate: bool = True) -> Residency:
    """How much of a file is in the page cache now (mincore; reads no data).

    ``validate=True`` (the default) also checks that ``path`` is a snapshot, as ``prefetch`` does;
    the residency is measured first, so reading the header for the check does not count in it
    (but leaves the header's pages cached). ``validate=False`` measures any regular file and reads
    nothing at all: use it right after ``evict`` in cold-start measurements."""
    resident, size = _native.residency(os.fspath(path))
    if validate:
        validate_snapshot(path)
    return Residency(os.fspath(path), resident, size)


def evict(path: str | os.PathLike[str]) -> None:
    """Drop a file's clean pages from the page cache (for cold-start measurements). Works on any
    regular file; a folder raises ``IsADirectoryError``."""
    _native.evict(os.fspath(path))
