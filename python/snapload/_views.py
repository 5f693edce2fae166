"""Tensors as views of one flat uint8 tensor: the file mapping (CPU) or a device arena.

Shared by the CPU restore (``_restore``), the host-sink pipeline (``_pipeline``) and the CUDA
restore (``cuda``); it sits below all three so none of them imports another for it.
"""

from __future__ import annotations

import torch

from snapload._info import TensorInfo
from snapload.dtypes import to_torch


def views_of(
    base: torch.Tensor, table: list[TensorInfo], offsets: list[int] | None = None, *, path: object = None
) -> dict[str, torch.Tensor]:
    """Tensors as views of ``base``, a flat uint8 tensor: at each tensor's file offset (``base``
    holds the whole file) or at ``offsets[i]`` (a device arena laid out by the pipeline). Aliases
    are the very same tensor object as their target, so tying survives."""
    out: dict[str, torch.Tensor] = {}
    for i, t in enumerate(table):
        if t.alias_of is not None:
            out[t.name] = out[t.alias_of]
            continue
        dtype = to_torch(t.dtype, path=path, tensor=t.name)
        if t.length == 0:
            out[t.name] = torch.empty(t.shape, dtype=dtype, device=base.device)
            continue
        start = t.offset if offsets is None else offsets[i]
        out[t.name] = base[start : start + t.length].view(dtype).view(t.shape)
    return out
