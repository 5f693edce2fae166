"""``restore()``: tensors that are views of one mapping (CPU) or of one device arena."""

from __future__ import annotations

import os
from typing import Any

import torch

from snapload import _memory, _native, _remote
from snapload._info import SnapshotInfo, TensorInfo, open, tensor_table
from snapload._views import views_of

__all__ = ["SnapshotInfo", "TensorInfo", "open", "restore", "restore_cpu", "tensor_table", "views_of"]


POPULATE_MODES = ("auto", "none", "background", "sync")


def _auto_populate(file_size: int) -> str:
    """Background population won the benchmark cold and warm (docs/benchmarks.md); but a file
    that does not fit comfortably in memory would only be read to be evicted again. Memory means
    the least of the machine's and the memory cgroup's room (a container's cap, ``_memory``)."""
    available = _memory.available_bytes()
    if available is None:
        return "none"
    return "background" if file_size <= available // 2 else "none"


def restore_cpu(
    path: str | os.PathLike[str] | _native.Snapshot, *, verify: bool = False, threads: int = 0, populate: str = "auto", name: str | None = None
) -> dict[str, torch.Tensor]:
    """``path`` may be an open local snapshot (a cache entry's file, about to be renamed);
    ``name`` is the path that errors about its tensors give (default: ``path``)."""
    if populate not in POPULATE_MODES:
        raise ValueError(f"populate={populate!r} must be one of {POPULATE_MODES}")
    snap = path if isinstance(path, _native.Snapshot) else _native.Snapshot(os.fspath(path))
    name = name if name is not None else snap.path
    if populate == "auto":
        populate = _auto_populate(snap.file_size)
    mapping = snap.map()
    if verify:
        # Each verify worker reads a piece in (one batched MADV_POPULATE_READ) and hashes it
        # while the other workers' reads are in flight: hashing overlaps the I/O in one pass.
        snap.verify(mapping, threads)
    elif populate != "none":
        # Populate the mapping's page tables with Rust threads (MADV_POPULATE_READ): later
        # touches then neither fault nor read the disk. "background" returns at once.
        filling = _native.Prefetch.of_mapping(mapping, threads or 4)
        if populate == "sync":
            filling.wait()
        else:
            filling.detach()
    # One uint8 tensor over the whole mapping; it holds a reference to `mapping`, and every
    # tensor below is a view of it, so the mapping lives as long as any tensor does.
    base = torch.frombuffer(mapping, dtype=torch.uint8)
    return views_of(base, tensor_table(snap), path=name)


def restore(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    verify: bool = False,
    threads: int = 0,
    populate: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    **cuda_options: Any,
) -> dict[str, torch.Tensor]:
    """Restore every tensor of a snapshot onto ``device``.

    ``path`` may be a URL (``s3://bucket/key``, ``https://host/path``): see docs/remote.md. With
    ``cache_dir`` (or ``SNAPLOAD_CACHE_DIR``) it is also written once into a verified local file
    there (CPU: fetched first, then mapped; CUDA: written as the restore streams it to the
    device), published (synced and renamed) in the background after this returns
    (``snapload.wait_for_cache()``, or interpreter exit, waits for it); without, it is fetched
    straight into host memory or the device.

    On the CPU the file is mapped once, copy-on-write: each tensor is a view of the mapping (no
    byte is copied), writable, and keeps the mapping alive. On ``cuda``/``cuda:N`` the file is
    streamed through a bounded ring of pinned buffers into one device allocation (see
    ``snapload.cuda``). ``verify=True`` checks every tensor's CRC32C, in parallel.

    ``populate`` (CPU): ``"background"`` starts Rust threads that read the file into the
    mapping's page tables while the caller goes on (restore still returns in milliseconds, and
    the caller's first touches find the pages there); ``"sync"`` does that before returning;
    ``"none"`` leaves every page to fault in on first touch. ``"auto"`` (the default) is
    ``"background"`` when the file fits in half the available memory (the machine's, or the
    memory cgroup's room where a container is capped lower), else ``"none"``.
    ``verify=True`` reads every page anyway.
    """
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"restore() supports 'cpu' and 'cuda[:N]' devices, not {str(dev)!r}")
    if dev.type == "cpu" and cuda_options:
        raise TypeError(f"options {sorted(cuda_options)} apply to CUDA restores only")
    if dev.type == "cuda" and populate != "auto":
        raise TypeError("populate applies to CPU restores; CUDA restores read every byte")
    if _remote.is_url(path):
        url = os.fspath(path)
        directory = _remote.cache_dir_for(cache_dir)
        if directory is None:
            if populate != "auto":
                raise TypeError("populate applies to mapped files; a URL without a cache is fetched whole")
            return _remote.restore(url, dev, threads=threads, cuda_options=cuda_options)
        if dev.type == "cuda":
            # The device copies overlap the download; the cache file is written on the way.
            return _remote.restore_cuda_through_cache(url, dev, directory, verify=verify, threads=threads, cuda_options=cuda_options)
        # Fetched into the entry's file and mapped; published in the background meanwhile.
        local, final_path = _remote.cached_snapshot(url, directory)
        return restore_cpu(local, verify=verify, threads=threads, populate=populate, name=final_path)
    if dev.type == "cpu":
        return restore_cpu(path, verify=verify, threads=threads, populate=populate)
    from snapload import cuda

    return cuda.restore(path, dev, verify=verify, threads=threads, **cuda_options)
