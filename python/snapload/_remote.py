"""Snapshots named by URL (``s3://bucket/key``, ``http(s)://host/path``): the one place that tells
URLs from paths and routes them, so that ``restore``, ``open``, ``prefetch`` and the CLI each need
one small hook. The bytes themselves are fetched by the Rust core (ranged GETs, version pinned,
checksums always verified).

With a cache directory (``cache_dir=`` or ``SNAPLOAD_CACHE_DIR``) a URL is first fetched into a
local file there, published only once complete and verified, and then restored like any file;
without one, a CPU restore fetches straight into one host arena and a CUDA restore streams
through the pinned ring.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from snapload import _native

if TYPE_CHECKING:
    import torch

CACHE_ENV = "SNAPLOAD_CACHE_DIR"


def is_url(path: object) -> bool:
    """True for ``s3://``, ``http://`` and ``https://`` strings; paths (and PathLikes) are never
    URLs, so a local file named ``s3:`` keeps working when passed as a ``Path``."""
    return isinstance(path, str) and _native.is_url(path)


def cache_dir_for(cache_dir: str | os.PathLike[str] | None) -> str | None:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    return os.environ.get(CACHE_ENV) or None


def fetch_to_cache(url: str, cache_dir: str | os.PathLike[str]) -> tuple[str, bool]:
    """The local verified copy of ``url`` in ``cache_dir`` and whether this call downloaded it.
    Processes asking at once share one download."""
    path, downloaded = _native.fetch_to_cache(url, os.fspath(cache_dir))
    return os.fspath(path), downloaded


def local_path(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    """``path`` itself, or for a URL with a cache directory, its cached local copy."""
    directory = cache_dir_for(cache_dir)
    if is_url(path) and directory is not None:
        return fetch_to_cache(os.fspath(path), directory)[0]
    return path


def restore_cpu(url: str) -> dict[str, torch.Tensor]:
    """Fetch the whole object into one host arena (many concurrent ranged GETs, checksums
    verified as the parts land); every tensor is a view of it, as with a mapped file."""
    import torch

    from snapload._restore import tensor_table, views_of

    snap = _native.Snapshot(url)
    arena = torch.empty(snap.file_size, dtype=torch.uint8)
    snap.fetch_into(arena.numpy())
    return views_of(arena, tensor_table(snap), path=url)


def restore(url: str, device: torch.device, *, threads: int, cuda_options: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Restore a URL without a cache: CPU into a host arena, CUDA through the pinned ring (the
    pipeline reads remote snapshots with ranged GETs and always verifies them)."""
    if device.type == "cpu":
        if cuda_options:
            raise TypeError(f"options {sorted(cuda_options)} apply to CUDA restores only")
        return restore_cpu(url)
    from snapload import cuda

    return cuda.restore(url, device, threads=threads, **cuda_options)
