#!/usr/bin/env python3
"""What snapload is for, measured on this machine: the cold start of an inference process.

A small LLaMA-style model is made locally from a config (nothing is downloaded), saved the Hugging
Face way (model.safetensors) and converted to a snapshot. Then each run is a fresh process that
goes from nothing to the first forward pass, with the weights evicted from the page cache before
it (checked with mincore; a file system that ignores the eviction is reported, and those runs are
labelled as not cold). Torch's own files stay cached, as on a node that has run the image before.

Four ways, interleaved, median of a few runs each:

- snapload: ``snapload.hf.load_model(snap)`` (model rebuilt from the config in the snapshot);
- safetensors: the same empty model, ``load_file`` + ``load_state_dict(assign=True)``, its fastest;
- each again with a prefetch started on the first line of the process, before ``import torch``,
  so that reading the weights overlaps the imports. safetensors gets the very same prefetch
  (``snapload.prefetch(..., validate=False)`` on its file): the comparison is of the loaders.

Then the same two loaders with a warm page cache, where there is nothing to read: here the
difference is small either way, and the demo says which way.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("SNAPLOAD_DEMO_DIR", os.path.join(HERE, "..", "bench-data", "demo"))
TRIALS = int(os.environ.get("SNAPLOAD_DEMO_TRIALS", "3"))
TINY = os.environ.get("SNAPLOAD_DEMO_TINY") == "1"  # the test suite's smoke run
PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204]
COLD_TOLERANCE = 0.02  # at most this fraction resident after eviction counts as cold

VARIANTS = {
    "snapload": "snapload",
    "safetensors": "safetensors",
    "snapload+prefetch": "snapload, prefetch before import torch",
    "safetensors+prefetch": "safetensors, same prefetch",
}

# The child: one cold start. Its first lines start the prefetch, before torch is imported.
CHILD = r"""
import sys, time
T0 = time.time()
variant, folder, snap = sys.argv[1:4]
weights = snap if variant.startswith("snapload") else folder + "/model.safetensors"
handle = None
if variant.endswith("+prefetch"):
    import snapload  # light: does not import torch
    handle = snapload.prefetch(weights, validate=variant.startswith("snapload"))
import json
import torch, transformers
import transformers.models.llama.modeling_llama  # transformers imports model code lazily
import snapload, snapload.hf
T_IMPORTS = time.time()
prefetched = handle.bytes_done / handle.total if handle is not None else None
if variant.startswith("snapload"):
    model = snapload.hf.load_model(snap)  # builds from the snapshot's config, parameters on meta
else:
    import safetensors.torch
    config = transformers.AutoConfig.from_pretrained(folder)  # a local folder: nothing downloaded
    with snapload.init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(config)
    model.load_state_dict(safetensors.torch.load_file(weights), assign=True)
    model.eval()
T_LOADED = time.time()
with torch.no_grad():
    logits = model(torch.tensor([PROMPT])).logits[0, -1].float()
T_FORWARD = time.time()
print(json.dumps({"t0": T0, "imports": T_IMPORTS, "loaded": T_LOADED, "forward": T_FORWARD,
                  "prefetched_at_imports": prefetched, "top5": logits.topk(5).indices.tolist(),
                  "checksum": float(logits.double().sum())}))
""".replace("PROMPT", repr(PROMPT))


def say(message: str) -> None:
    print(message, flush=True)


def ratio(ours: float, theirs: float) -> str:
    """``"1.6x faster"`` when ``ours`` took less time than ``theirs``, ``"1.6x slower"`` when it
    took more: the word carries the direction, the number is always at least 1."""
    if ours <= 0 or theirs <= 0:
        raise ValueError("times must be positive")
    if abs(ours - theirs) / max(ours, theirs) < 0.02:
        return "about as fast as"
    if ours < theirs:
        return f"{theirs / ours:.1f}x faster than"
    return f"{ours / theirs:.1f}x slower than"


def build(folder: str, snap: str) -> dict[str, Any]:
    import torch
    import transformers

    import snapload

    if TINY:
        config = transformers.LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=False, dtype="bfloat16",
        )
    else:
        config = transformers.LlamaConfig(
            hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
            num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False, dtype="bfloat16",
        )
    if not os.path.exists(os.path.join(folder, "config.json")):
        say("making the model from a config (random weights, nothing downloaded) ...")
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
        model.save_pretrained(folder)
    say("converting model.safetensors to a snapshot ...")
    t = time.perf_counter()
    info = snapload.convert(folder, snap)
    return {"convert_s": time.perf_counter() - t, "bytes": info.data_bytes, "tensors": len(info.tensors)}


def make_cold(files: list[str]) -> float:
    """Evict ``files`` from the page cache; the largest fraction still resident afterwards."""
    import snapload

    for f in files:
        # Freshly written pages are dirty, and eviction drops only clean ones: write them back.
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        snapload.evict(f)
    return max(snapload.residency(f, validate=False).fraction for f in files)


def make_warm(files: list[str]) -> None:
    import snapload

    for f in files:
        snapload.prefetch(f, validate=False, background=False).wait()


def run_child(variant: str, folder: str, snap: str) -> dict[str, Any]:
    start = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, variant, folder, snap], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{variant} run failed:\n{out.stderr}")
    r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    r["start"] = start  # before the interpreter started: the process's whole cold start counts
    r["total_s"] = r["forward"] - start
    r["imports_s"] = r["imports"] - start
    r["load_s"] = r["loaded"] - r["imports"]
    r["forward_s"] = r["forward"] - r["loaded"]
    r["load_forward_s"] = r["forward"] - r["imports"]
    return r


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def table(runs: dict[str, list[dict[str, Any]]], labels: dict[str, str]) -> None:
    say(f"  {'':<40} {'start to first forward':>22} {'imports':>9} {'load':>9} {'first forward':>14}")
    for key, rows in runs.items():
        say(
            f"  {labels[key]:<40} {median(rows, 'total_s'):>20.2f} s {median(rows, 'imports_s'):>7.2f} s "
            f"{median(rows, 'load_s') * 1000:>6.0f} ms {median(rows, 'forward_s') * 1000:>11.0f} ms"
        )


def main() -> None:
    os.makedirs(WORK, exist_ok=True)
    folder, snap = os.path.join(WORK, "hf-model"), os.path.join(WORK, "model.snap")
    built = build(folder, snap)
    st_file = os.path.join(folder, "model.safetensors")
    say(
        f"model: LLaMA-style, {built['tensors']} tensors, {built['bytes'] / 1e6:.0f} MB bf16; "
        f"converted to {snap} in {built['convert_s']:.2f} s"
    )
    files = [snap, st_file]

    say(f"\ncold page cache: {len(VARIANTS)} ways x {TRIALS} run(s), each a fresh process, weights evicted first")
    cold: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    worst = 0.0
    for trial in range(TRIALS):
        for variant in VARIANTS:
            left = make_cold(files)
            worst = max(worst, left)
            r = run_child(variant, folder, snap)
            cold[variant].append(r)
            say(f"  run {trial + 1}/{TRIALS} {VARIANTS[variant]:<40} {r['total_s']:.2f} s ({left:.0%} of the weights cached before)")
    not_cold = worst > COLD_TOLERANCE
    say("")
    if not_cold:
        say(
            f"WARNING: eviction did not work on this file system ({worst:.0%} of a weights file stayed in the page "
            "cache); the runs above were NOT cold, so they show warm behaviour."
        )
    else:
        say(f"eviction checked with mincore before every run: at most {worst:.1%} of a weights file was cached")
    say(f"{'not really cold' if not_cold else 'cold'} page cache, median of {TRIALS}:")
    table(cold, VARIANTS)

    say(f"\nwarm page cache (weights already in memory): 2 ways x {TRIALS} run(s)")
    warm: dict[str, list[dict[str, Any]]] = {"snapload": [], "safetensors": []}
    for _ in range(TRIALS):
        for variant in warm:
            make_warm(files)
            warm[variant].append(run_child(variant, folder, snap))
    table(warm, VARIANTS)

    same = all(
        r["top5"] == cold["snapload"][0]["top5"] and r["checksum"] == cold["snapload"][0]["checksum"]
        for rows in [*cold.values(), *warm.values()]
        for r in rows
    )
    c = {v: median(rows, "total_s") for v, rows in cold.items()}
    lf_cold = {v: median(rows, "load_forward_s") for v, rows in cold.items()}
    lf_warm = {v: median(rows, "load_forward_s") for v, rows in warm.items()}
    state = "not-cold" if not_cold else "cold"
    say("\nsummary (medians; load + first forward is what the loader changes, start to first forward includes imports):")
    say(
        f"  {state}, load + first forward: snapload {lf_cold['snapload']:.2f} s is "
        f"{ratio(lf_cold['snapload'], lf_cold['safetensors'])} safetensors {lf_cold['safetensors']:.2f} s"
    )
    say(
        f"  {state}, start to first forward: snapload {c['snapload']:.2f} s is "
        f"{ratio(c['snapload'], c['safetensors'])} safetensors {c['safetensors']:.2f} s"
    )
    say(
        f"  {state}, with the prefetch before import torch: snapload {c['snapload+prefetch']:.2f} s is "
        f"{ratio(c['snapload+prefetch'], c['safetensors+prefetch'])} safetensors {c['safetensors+prefetch']:.2f} s; "
        f"the prefetch made snapload {ratio(c['snapload+prefetch'], c['snapload']).replace(' than', '')} "
        f"({c['snapload']:.2f} s without it)"
    )
    say(
        "  the prefetch had read {:.0%} of the snapshot and {:.0%} of model.safetensors by the time the imports "
        "were done".format(*(median(cold[v], "prefetched_at_imports") for v in ("snapload+prefetch", "safetensors+prefetch")))
    )
    say(
        f"  warm, load + first forward: snapload {lf_warm['snapload'] * 1000:.0f} ms is "
        f"{ratio(lf_warm['snapload'], lf_warm['safetensors'])} safetensors {lf_warm['safetensors'] * 1000:.0f} ms"
    )
    say(
        "  (snapload's tensors are views of the file's mapping: restore returns at once and pages are read on "
        "first touch, in the forward pass; on this small model the imports dominate. python benches/coldstart.py "
        "measures a 1.5 GB model, docs/benchmarks.md has the results)"
    )
    say(f"next-token top-5 {cold['snapload'][0]['top5']}: {'identical logits in every run' if same else 'MISMATCH'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
