#!/usr/bin/env python3
"""End-to-end demo: make a small LLaMA-style model locally from a config, save it the Hugging
Face way, convert it to a snapload snapshot, then in fresh processes restore it with snapload and
load it with safetensors, run it, and print the restore times side by side."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("SNAPLOAD_DEMO_DIR", os.path.join(HERE, "..", "bench-data", "demo"))
PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch, transformers
import transformers.models.llama.modeling_llama  # transformers imports modeling lazily: not a load cost
import snapload
kind, folder, snap = sys.argv[1:4]
t_import = time.perf_counter()
# Both loaders build the model the same way: parameters on meta, buffers real.
config = transformers.AutoConfig.from_pretrained(folder)
with snapload.init_empty_weights():
    model = transformers.AutoModelForCausalLM.from_config(config)
t_build = time.perf_counter()
if kind == "snapload":
    snapload.restore_module(model, snap)
else:
    import safetensors.torch
    model.load_state_dict(safetensors.torch.load_file(folder + "/model.safetensors"), strict=False, assign=True)
    model.tie_weights()
model.eval()
t_restore = time.perf_counter()
ids = torch.tensor([[%s]])
with torch.no_grad():
    logits = model(ids).logits[0, -1].float()
t_forward = time.perf_counter()
print(json.dumps({"restore_s": t_restore - t_build, "build_s": t_build - t_import, "forward_s": t_forward - t_restore,
                  "import_s": t_import - t0, "top5": logits.topk(5).indices.tolist(),
                  "checksum": float(logits.double().sum())}))
""" % ",".join(map(str, PROMPT))


def build(folder: str, snap: str) -> dict:
    import torch
    import transformers

    import snapload

    config = transformers.LlamaConfig(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
        num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False, torch_dtype="bfloat16",
    )
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
        model.save_pretrained(folder, safe_serialization=True)
    t = time.perf_counter()
    info = snapload.convert(folder, snap)
    return {"convert_s": time.perf_counter() - t, "bytes": info.data_bytes, "tensors": len(info.tensors)}


def run_child(kind: str, folder: str, snap: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, folder, snap], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{kind} child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    os.makedirs(WORK, exist_ok=True)
    folder, snap = os.path.join(WORK, "hf-model"), os.path.join(WORK, "model.snap")
    built = build(folder, snap)
    print(f"model: {built['tensors']} tensors, {built['bytes'] / 1e6:.0f} MB bf16; converted to {snap} in {built['convert_s']:.2f}s")
    runs: dict[str, list[dict]] = {"snapload": [], "safetensors": []}
    for _ in range(3):
        for kind in runs:
            runs[kind].append(run_child(kind, folder, snap))
    same = runs["snapload"][0]["top5"] == runs["safetensors"][0]["top5"] and runs["snapload"][0]["checksum"] == runs["safetensors"][0]["checksum"]
    print("fresh process per run, warm page cache, median of 3 (same empty model built first in both):")
    print(f"{'loader':<12} {'weights in (usable)':>20} {'first forward':>15}")
    med = {k: statistics.median(r["restore_s"] for r in v) for k, v in runs.items()}
    for kind, rs in runs.items():
        fwd = statistics.median(r["forward_s"] for r in rs)
        print(f"{kind:<12} {med[kind] * 1000:>17.1f} ms {fwd * 1000:>12.1f} ms")
    print(f"snapload restore_module is {med['safetensors'] / med['snapload']:.1f}x faster than safetensors load_file + load_state_dict(assign=True)")
    print("(snapload's tensors are views of the mapping: pages are read on first touch, inside the forward pass;")
    print(" python benches/run.py measures restore plus touching every page, cold and warm, against every peer)")
    print(f"next-token top-5 {runs['snapload'][0]['top5']}: {'identical logits' if same else 'MISMATCH'} in both loaders")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
