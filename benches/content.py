"""What a loader produced, as one digest: the cross-loader check that every loader under test
returned the same bytes (a loader that is fast because it returns the wrong data must fail the
run, not top the table).

Each tensor's bytes are hashed with CRC32 (``zlib``, which releases the GIL, so tensors are hashed
on all cores); the digest covers every tensor's name, dtype, shape and CRC, in name order. Run
after the timed region: it reads every byte, so it adds nothing to the times it checks.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def tensor_crc32(t: Any) -> int:
    """CRC32 of a CPU tensor's bytes, in memory order (every loader returns contiguous tensors)."""
    import torch

    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() <= 1:  # torch refuses byte views of 0-d/1-element tensors with odd strides
        flat = flat.as_strided((flat.numel(),), (1,))
    return zlib.crc32(flat.view(torch.uint8).numpy())


def tensor_crcs(tensors: Mapping[str, Any]) -> dict[str, int]:
    names = sorted(tensors)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        crcs = list(pool.map(lambda n: tensor_crc32(tensors[n]), names))
    return dict(zip(names, crcs))


def digest(tensors: Mapping[str, Any], crcs: Mapping[str, int]) -> str:
    """One hex digest of every tensor's name, dtype, shape and CRC32."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0{crcs[name]:08x}\n".encode())
    return h.hexdigest()


def mismatches(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose content digest differs from the first row's (rows without one, failed trials,
    are skipped); each names the loader, the trial and up to five tensors that differ."""
    hashed = [r for r in rows if r.get("content_digest")]
    if not hashed:
        return []
    ref = hashed[0]
    out = []
    for r in hashed[1:]:
        if r["content_digest"] == ref["content_digest"]:
            continue
        a, b = ref.get("content_crcs", {}), r.get("content_crcs", {})
        differ = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
        out.append(
            {
                "loader": r["loader"],
                "mode": r.get("mode"),
                "trial": r.get("trial"),
                "reference_loader": ref["loader"],
                "tensors_differing": differ[:5],
                "count_differing": len(differ),
            }
        )
    return out
