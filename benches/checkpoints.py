"""Synthetic LLaMA-shaped bf16 checkpoints, written in every peer's own format by its own writer.

``python benches/checkpoints.py --sizes 0.5,2`` builds (or finds, cached) one set per size under
``bench-data/ckpt-<size>g/``:

- ``model.snap``         snapload.snapshot
- ``model.safetensors``  safetensors.torch.save_file (also what Run:ai Model Streamer reads)
- ``model.pt``           torch.save (zip format)
- ``model.tensors``      tensorizer.TensorSerializer

The data is random (normal, std 0.02), not zeros: zeros compress, dedupe and can sit in sparse
files, all of which would flatter whoever benefits. Every tensor is generated on its own, from a
seed derived from its name, so the state dict is built layer by layer and two builds are
identical. safetensors and torch.save take a whole dict, so one copy of the state dict is held
while writing; sizes must fit in RAM with room for the page cache. Every file is fsynced, so its
pages are clean and ``posix_fadvise(DONTNEED)`` can evict them for cold runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO / "bench-data"
# Bump when the generator or the layout changes, so cached sets are rebuilt.
GENERATOR_VERSION = 1
FORMATS = {
    "snapload": "model.snap",
    "safetensors": "model.safetensors",
    "torch": "model.pt",
    "tensorizer": "model.tensors",
}
VOCAB = 32000


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    intermediate: int
    layers: int
    vocab: int = VOCAB

    def tensors(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """(name, shape) in the order a LLaMA state dict has them."""
        h, i = self.hidden, self.intermediate
        yield "model.embed_tokens.weight", (self.vocab, h)
        for n in range(self.layers):
            p = f"model.layers.{n}."
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                yield f"{p}self_attn.{proj}.weight", (h, h)
            yield f"{p}mlp.gate_proj.weight", (i, h)
            yield f"{p}mlp.up_proj.weight", (i, h)
            yield f"{p}mlp.down_proj.weight", (h, i)
            yield f"{p}input_layernorm.weight", (h,)
            yield f"{p}post_attention_layernorm.weight", (h,)
        yield "model.norm.weight", (h,)
        yield "lm_head.weight", (self.vocab, h)

    @property
    def nbytes(self) -> int:
        total = 0
        for _, shape in self.tensors():
            n = 2  # bf16
            for d in shape:
                n *= d
            total += n
        return total


def shape_for(target_gb: float) -> LlamaShape:
    """Hidden/intermediate sizes of real LLaMA-family models, and as many layers as reach the
    target (at least one)."""
    if target_gb < 1:
        hidden, inter = 1024, 2816
    elif target_gb < 3:
        hidden, inter = 2048, 5632
    else:
        hidden, inter = 3072, 8192
    fixed = LlamaShape(hidden, inter, 0).nbytes
    per_layer = LlamaShape(hidden, inter, 1).nbytes - fixed
    layers = max(1, round((target_gb * 1e9 - fixed) / per_layer))
    return LlamaShape(hidden, inter, layers)


def tiny_shape() -> LlamaShape:
    """A few MB, for smoke tests."""
    return LlamaShape(hidden=256, intermediate=512, layers=2, vocab=1024)


def generate(shape: LlamaShape, seed: int = 0) -> Iterator[tuple[str, Any]]:
    """Yield (name, bf16 tensor), each from its own seeded generator (norms near 1, like real
    checkpoints; weights normal with std 0.02)."""
    import torch

    for name, dims in shape.tensors():
        g = torch.Generator().manual_seed(seed ^ zlib.crc32(name.encode()))
        t = torch.empty(dims, dtype=torch.float32)
        if len(dims) == 1:
            t.uniform_(0.9, 1.1, generator=g)
        else:
            t.normal_(0.0, 0.02, generator=g)
        yield name, t.to(torch.bfloat16)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(state: dict[str, Any], out: Path) -> dict[str, float]:
    """Write ``state`` in every format with that format's own writer; seconds per format."""
    import safetensors.torch
    import torch
    from tensorizer import TensorSerializer

    import snapload

    seconds: dict[str, float] = {}

    def timed(fmt: str, write: Any) -> None:
        final = out / FORMATS[fmt]
        tmp = final.with_name(final.name + ".tmp")
        start = time.perf_counter()
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, final)
        seconds[fmt] = time.perf_counter() - start

    timed("snapload", lambda p: snapload.snapshot(state, p))
    timed("safetensors", lambda p: safetensors.torch.save_file(state, str(p)))
    timed("torch", lambda p: torch.save(state, p))

    def tensorize(p: Path) -> None:
        s = TensorSerializer(str(p))
        s.write_state_dict(state)
        s.close()

    timed("tensorizer", tensorize)
    return seconds


def manifest_path(out: Path) -> Path:
    return out / "manifest.json"


def load_manifest(out: Path) -> dict[str, Any] | None:
    try:
        m: dict[str, Any] = json.loads(manifest_path(out).read_text())
    except (OSError, ValueError):
        return None
    if m.get("generator_version") != GENERATOR_VERSION:
        return None
    if not all((out / f).is_file() for f in FORMATS.values()):
        return None
    return m


def build(name: str, shape: LlamaShape, data_dir: Path = DEFAULT_DATA_DIR, *, log: Any = print) -> dict[str, Any]:
    """Build (or reuse) the checkpoint set ``name``; returns its manifest with absolute paths."""
    out = data_dir / name
    m = load_manifest(out)
    if m is not None and m["shape"] == asdict(shape):
        m["paths"] = {fmt: str(out / f) for fmt, f in FORMATS.items()}
        return m
    out.mkdir(parents=True, exist_ok=True)
    log(f"building {out} ({shape.nbytes / 1e9:.2f} GB of bf16, {shape.layers} layers of hidden {shape.hidden})")
    start = time.perf_counter()
    state = dict(generate(shape))
    gen_s = time.perf_counter() - start
    write_s = write_all(state, out)
    del state
    m = {
        "generator_version": GENERATOR_VERSION,
        "name": name,
        "shape": asdict(shape),
        "payload_bytes": shape.nbytes,
        "tensors": sum(1 for _ in shape.tensors()),
        "file_bytes": {fmt: (out / f).stat().st_size for fmt, f in FORMATS.items()},
        "build_seconds": {"generate": gen_s, **write_s},
    }
    manifest_path(out).write_text(json.dumps(m, indent=2) + "\n")
    log(f"built {out} in {time.perf_counter() - start:.0f} s")
    m["paths"] = {fmt: str(out / f) for fmt, f in FORMATS.items()}
    return m


def size_name(gb: float) -> str:
    return f"ckpt-{gb:g}g"


def build_size(gb: float, data_dir: Path = DEFAULT_DATA_DIR, *, log: Any = print) -> dict[str, Any]:
    return build(size_name(gb), shape_for(gb), data_dir, log=log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.5,2,4", help="comma-separated target sizes in GB")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = ap.parse_args(argv)
    for gb in (float(s) for s in args.sizes.split(",")):
        m = build_size(gb, args.data_dir)
        print(json.dumps({k: m[k] for k in ("name", "payload_bytes", "tensors", "file_bytes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
