"""``snapshot()``: write a module or a dict of tensors to a page-aligned snapshot.

Python decides what to write (aliases, contiguity, device staging); the Rust core lays the file
out, hashes and writes in parallel with the GIL released, and publishes it by rename.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from snapload import _native
from snapload._hf_metadata import model_metadata
from snapload.dtypes import to_name

DEFAULT_ALIGNMENT = 4096
# GPU tensors are copied to the host through one buffer of this size, never the whole model.
DEFAULT_STAGING_BYTES = 64 << 20
# Non-contiguous CPU tensors are made contiguous in batches of at most this many bytes.
_CONTIGUOUS_BATCH_BYTES = 1 << 30


@dataclass(frozen=True)
class PlannedTensor:
    """One entry to write: its name, the tensor (or a loader for it), and the alias it shares."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    alias_of: str | None
    tensor: torch.Tensor | None = None
    load: Callable[[], torch.Tensor] | None = None


def storage_key(t: torch.Tensor) -> tuple[Any, ...] | None:
    """Identity of a tensor's bytes: two tensors with the same key are the same view of the same
    storage (tied weights) and are written once. Empty tensors share nothing."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (
        str(t.device),
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        tuple(t.shape),
        t.stride(),
        t.dtype,
    )


def plan_tensors(items: Iterable[tuple[str, torch.Tensor]]) -> list[PlannedTensor]:
    """Turn (name, tensor) pairs into write entries, marking exact views of an earlier tensor's
    bytes as aliases of it. Partially overlapping views are written separately (contiguous)."""
    owner_by_key: dict[tuple[Any, ...], str] = {}
    planned = []
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name!r}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type == "meta":
            raise ValueError(f"tensor {name!r} is on the meta device and has no data to write")
        key = storage_key(t)
        alias = owner_by_key.get(key) if key is not None else None
        if key is not None and alias is None:
            owner_by_key[key] = name
        planned.append(
            PlannedTensor(name, to_name(t.dtype, tensor=name), tuple(t.shape), alias, tensor=t)
        )
    return planned


def flat_bytes(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's bytes as a flat uint8 tensor (a view, no copy)."""
    flat = t.detach().reshape(-1)
    if flat.numel() <= 1:
        # torch calls empty and one-element tensors contiguous whatever their stride (a row
        # sliced with a step keeps stride 2), and then refuses to view them as bytes; restride.
        flat = flat.as_strided((flat.numel(),), (1,))
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return flat


def as_bytes(t: torch.Tensor) -> Any:
    """A contiguous CPU tensor's bytes as a numpy uint8 array (a view, no copy)."""
    return flat_bytes(t).numpy()


def state_items(obj: torch.nn.Module | Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.nn.Module):
        return list(obj.state_dict(keep_vars=False).items())
    if isinstance(obj, Mapping):
        return [(str(k), v) for k, v in obj.items()]
    raise TypeError(f"snapshot() takes an nn.Module or a dict of tensors, not {type(obj).__name__}")


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(metadata or {})
    for k, v in out.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str; got {k!r}: {type(v).__name__}")
    return out


def write_planned(
    path: str | os.PathLike[str],
    planned: list[PlannedTensor],
    *,
    metadata: Mapping[str, str] | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
    threads: int = 0,
    staging_bytes: int = DEFAULT_STAGING_BYTES,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write planned entries. Tensors given by ``load`` are loaded one at a time (bounded memory)."""
    specs = [(p.name, p.dtype, list(p.shape), p.alias_of) for p in planned]
    writer = _native.SnapshotWriter(os.fspath(path), specs, alignment, check_metadata(metadata))
    try:
        _write_all(writer, planned, threads, staging_bytes, progress)
        writer.finish()
    except BaseException:
        writer.abort()
        raise


def _write_all(
    writer: Any,
    planned: list[PlannedTensor],
    threads: int,
    staging_bytes: int,
    progress: Callable[[int], None] | None,
) -> None:
    batch: list[tuple[int, int, Any]] = []
    keep: list[torch.Tensor] = []  # contiguous copies must outlive the batch write
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch, keep, batch_bytes
        if batch:
            writer.write_many(batch, threads)
            if progress:
                progress(batch_bytes)
        batch, keep, batch_bytes = [], [], 0

    staging: torch.Tensor | None = None
    for index, p in enumerate(planned):
        if p.alias_of is not None:
            continue
        t = p.tensor if p.tensor is not None else p.load() if p.load is not None else None
        if t is None:
            raise ValueError(f"tensor {p.name!r} has neither data nor a loader")
        nbytes = t.numel() * t.element_size()
        if t.device.type != "cpu":
            flush()
            staging = _write_staged(writer, index, t, staging, staging_bytes)
            if progress:
                progress(nbytes)
            continue
        if not t.is_contiguous():
            t = t.contiguous()
            keep.append(t)
        batch.append((index, 0, as_bytes(t)))
        batch_bytes += nbytes
        if p.load is not None or batch_bytes >= _CONTIGUOUS_BATCH_BYTES:
            flush()
    flush()


def _write_staged(
    writer: Any, index: int, t: torch.Tensor, staging: torch.Tensor | None, staging_bytes: int
) -> torch.Tensor:
    """Copy a device tensor to the host through one reusable (pinned, when CUDA is up) buffer."""
    flat = flat_bytes(t.contiguous())
    if staging is None:
        pin = t.device.type == "cuda"
        staging = torch.empty(staging_bytes, dtype=torch.uint8, pin_memory=pin)
    for start in range(0, flat.numel(), staging_bytes):
        n = min(staging_bytes, flat.numel() - start)
        staging[:n].copy_(flat[start : start + n])
        writer.write(index, start, staging[:n].numpy())
    return staging


def snapshot(
    obj: torch.nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
    threads: int = 0,
    staging_bytes: int = DEFAULT_STAGING_BYTES,
) -> None:
    """Write ``obj`` (an ``nn.Module``'s state dict, or a dict of tensors) to ``path``.

    Every tensor starts at a multiple of ``alignment`` bytes (4096 by default; 2 MiB suits huge
    pages). Tensors sharing storage exactly (tied weights) are written once and restored as
    aliases. The file appears at ``path`` only when complete (temporary file, fsync, rename).

    A transformers model's config (and generation config) is recorded in the metadata as
    ``hf.config`` and ``hf.generation_config``, as ``snapload convert`` records a model folder's,
    so that ``snapload.hf.load_model`` can rebuild it; keys given in ``metadata`` take precedence.
    ``path`` is checked first (its folder exists and is writable, it is not a folder), before any
    tensor is read; errors name ``path``.
    """
    _native.check_destination(os.fspath(path))
    recorded = {**model_metadata(obj), **check_metadata(metadata)}
    planned = plan_tensors(state_items(obj))
    write_planned(
        path, planned, metadata=recorded, alignment=alignment, threads=threads, staging_bytes=staging_bytes
    )
