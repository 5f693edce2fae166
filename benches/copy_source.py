"""What a weight loader's copies cost from each source, outside vLLM: open the checkpoint, then copy
every tensor into a freshly allocated tensor of its shape (as vLLM's weight loaders copy into the
parameters the model was built with), in a fresh process per trial.

    python benches/copy_source.py [--trials 8] [--model bench-data/vllm/llama-bench] [--cache warm]

Sources: safetensors (safe_open + get_tensor, as vLLM's safetensors iterator does) and the
snapshot model.snap restored with populate none / sync / background. Prints, per source, the
median and min-max of open+copy seconds, and the copy's minor faults (getrusage): the faults are
those of the destination pages (zero-filled on first write), not of the source.
Written for docs/vllm.md ("Reading the checkpoint is not where the time goes").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from vllm_bench import set_cache  # noqa: E402 - evicts or reads files, and checks residency

SOURCES = ("safetensors", "snapload-none", "snapload-sync", "snapload-background")


def trial(source: str, model: Path) -> dict[str, float]:
    """One trial, in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if source == "safetensors":
        from safetensors import safe_open

        (path,) = sorted(model.glob("*.safetensors"))
        f = safe_open(str(path), framework="pt")
        names = list(f.keys())
        items = ((k, f.get_tensor(k)) for k in names)
        shapes = {k: f.get_slice(k).get_shape() for k in names}
    else:
        import snapload

        tensors = snapload.restore(model / "model.snap", "cpu", populate=source.split("-", 1)[1])
        shapes = {k: list(v.shape) for k, v in tensors.items()}
        items = iter(tensors.items())
    dest = {k: torch.empty(s, dtype=torch.float32) for k, s in shapes.items()}
    t1 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for name, tensor in items:
        dest[name].copy_(tensor)
    t2 = time.perf_counter()
    return {"open_s": t1 - t0, "copy_s": t2 - t1, "minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--model", type=Path, default=REPO / "bench-data" / "vllm" / "llama-bench")
    ap.add_argument("--cache", choices=("warm", "cold"), default="warm")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one trial of this source
    args = ap.parse_args()
    if args.one:
        print(json.dumps(trial(args.one, args.model)))
        return 0
    plan = [s for s in SOURCES for _ in range(args.trials)]
    random.Random(0).shuffle(plan)
    rows: dict[str, list[dict[str, float]]] = {s: [] for s in SOURCES}
    for source in plan:
        set_cache([args.model / "model.snap", *args.model.glob("*.safetensors")], args.cache)
        out = subprocess.run(
            [sys.executable, __file__, "--model", str(args.model), "--one", source],
            check=True, capture_output=True, text=True,
        )
        rows[source].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.cache}, {args.trials} fresh processes per source, load average {os.getloadavg()[0]:.1f} at the end")
    for source, rs in rows.items():
        total = [r["open_s"] + r["copy_s"] for r in rs]
        print(
            f"{source:20s} open+copy median {statistics.median(total):.3f} s ({min(total):.3f}-{max(total):.3f}), "
            f"open {statistics.median(r['open_s'] for r in rs):.3f} s, "
            f"copy minor faults {statistics.median(r['minflt'] for r in rs):.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
