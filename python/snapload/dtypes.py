"""Torch dtypes by the names the format stores (torch's own names, without ``torch.``)."""

from __future__ import annotations

import torch

from snapload._native import DTYPES
from snapload.errors import UnsupportedDtypeError

# Names torch prints differently from the attribute that holds the dtype.
_ALIASES = {"complex32": "chalf"}


def _build() -> tuple[dict[str, torch.dtype], dict[torch.dtype, str]]:
    by_name: dict[str, torch.dtype] = {}
    for name in DTYPES:
        dt = getattr(torch, name, None) or getattr(torch, _ALIASES.get(name, ""), None)
        if isinstance(dt, torch.dtype):
            by_name[name] = dt
    return by_name, {dt: name for name, dt in by_name.items()}


TORCH_BY_NAME, NAME_BY_TORCH = _build()


def to_torch(name: str, *, path: object = None, tensor: str | None = None) -> torch.dtype:
    try:
        return TORCH_BY_NAME[name]
    except KeyError:
        where = f"{path}: tensor {tensor!r}: " if path is not None else ""
        raise UnsupportedDtypeError(
            f"{where}dtype {name!r} is not available in torch {torch.__version__}"
        ) from None


def to_name(dtype: torch.dtype, *, tensor: str | None = None) -> str:
    try:
        return NAME_BY_TORCH[dtype]
    except KeyError:
        raise UnsupportedDtypeError(
            f"tensor {tensor!r}: dtype {dtype} cannot be stored in a snapshot"
        ) from None
