"""How much of the checkpoint each loader has really read when it returns, and what the first
forward pass pays for the rest: the "first response" column of docs/handlers.md, explained.

    python benches/lazy_loads.py --trials 4        # writes benches/results/lazy_loads.json

The model is the templates' benchmark model (bench-data/handlers-llama, ~1.55 GB fp32, built by
benches/handlers_bench.py's builder if absent). One trial is a fresh process on the CPU: evict the
snapshot and the safetensors file (mincore checked: 0 resident), import torch and transformers and
the Llama module, then time the loader, measure how much of the file it read is resident
(mincore), run one greedy forward pass (as the templates' first answer does), and record its time
and the page faults it took (getrusage: major = waited for the disk; minor includes pages the
readahead brought in). Loaders, as in benches/handlers_bench.py:

- ``from_pretrained``: ``AutoModelForCausalLM.from_pretrained(folder, dtype="auto")``;
- ``st_assign``: empty init + ``load_state_dict(safetensors load_file(...), assign=True)``;
- ``snapload``: ``snapload.hf.load_model`` with its default populate policy, no prefetch;
- ``snapload_prefetch``: ``snapload.prefetch(...).wait()`` first, as the templates do (the wait
  is counted in the load).

Imports are outside the clock for every loader alike. Trials run in one shuffled order.
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
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import machine  # noqa: E402 - benches/machine.py: stdlib only

LOADERS = ("from_pretrained", "st_assign", "snapload", "snapload_prefetch")


def faults() -> tuple[int, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_majflt, r.ru_minflt


def trial(loader: str, folder: Path) -> dict[str, Any]:
    """One trial in this fresh process."""
    import snapload
    from snapload.prefetch import evict, residency

    st, snap = folder / "model.safetensors", folder / "model.snap"
    read = snap if loader.startswith("snapload") else st
    for p in (st, snap):
        evict(p)
    cold = residency(read, validate=False)
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401 - the lazy class import, off the clock
    from transformers import AutoConfig, AutoModelForCausalLM

    import snapload.hf

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    t0, f0 = time.perf_counter(), faults()
    if loader == "from_pretrained":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    elif loader == "st_assign":
        import safetensors.torch

        config = AutoConfig.from_pretrained(folder)
        with snapload.init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(safetensors.torch.load_file(st), assign=True)
    else:
        if loader == "snapload_prefetch":
            snapload.prefetch(snap).wait()
        model = snapload.hf.load_model(snap, "cpu")
    model.eval()
    t1, f1 = time.perf_counter(), faults()
    after_load = residency(read, validate=False)
    with torch.inference_mode():
        model(input_ids=ids)
    t2, f2 = time.perf_counter(), faults()
    after_forward = residency(read, validate=False)
    return {
        "loader": loader,
        "cold_fraction": cold.resident_bytes / cold.size,
        "load_s": t1 - t0,
        "resident_after_load": after_load.resident_bytes / after_load.size,
        "forward_s": t2 - t1,
        "forward_major_faults": f2[0] - f1[0],
        "forward_minor_faults": f2[1] - f1[1],
        "resident_after_forward": after_forward.resident_bytes / after_forward.size,
        "load_avg": os.getloadavg()[0],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "lazy_loads.json")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: LOADER FOLDER, one trial
    args = ap.parse_args()
    if args.one:
        print(json.dumps(trial(args.one[0], Path(args.one[1]))))
        return 0
    import handlers_bench  # the model the templates' benchmark uses, built the same way

    folder = handlers_bench.build(handlers_bench.DATA, handlers_bench.make_demo_model.LARGE, "float32").parent
    plan = [loader for loader in LOADERS for _ in range(args.trials)]
    seed = random.randrange(1 << 30)
    random.Random(seed).shuffle(plan)
    rows: dict[str, list[dict[str, Any]]] = {loader: [] for loader in LOADERS}
    for loader in plan:
        out = subprocess.run([sys.executable, __file__, "--one", loader, str(folder)], check=True, capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        if row["cold_fraction"] > 0.01:
            raise SystemExit(f"{loader}: the file was {row['cold_fraction']:.0%} resident after eviction; not a cold trial")
        rows[loader].append(row)
    print(f"{args.trials} fresh processes per loader, weights cold (0% resident, mincore), seed {seed}; medians (min-max)")
    print("| loader | load (s) | resident when it returns | first forward (s) | its major / minor faults | resident after |")
    print("|---|---|---|---|---|---|")
    for loader, rs in rows.items():
        def med(key: str, rs: list[dict[str, Any]] = rs) -> str:
            xs = [r[key] for r in rs]
            return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"

        def pct(key: str, rs: list[dict[str, Any]] = rs) -> str:
            return f"{statistics.median(r[key] for r in rs):.0%}"

        flt = f"{statistics.median(r['forward_major_faults'] for r in rs):.0f} / {statistics.median(r['forward_minor_faults'] for r in rs):.0f}"
        print(f"| {loader} | {med('load_s')} | {pct('resident_after_load')} | {med('forward_s')} | {flt} | {pct('resident_after_forward')} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine.info(folder), "seed": seed, "trials": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
