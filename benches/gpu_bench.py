#!/usr/bin/env python3
"""GPU restore benchmark (issue: GPU restore). Runs on the GPU machine from benches/gpu_check.sh.

Builds a synthetic LLaMA-shaped bf16 checkpoint once in three formats (snapload, safetensors,
torch.save), measures the machine's ceilings in the same run (pinned and pageable host-to-device
copies, O_DIRECT read of the file), then times each loader onto the GPU in a fresh process per
trial, cold and warm page cache (residency checked with mincore before every trial), with
``torch.cuda.synchronize()`` before the clock stops. Prints a markdown table and writes JSON.

``--device cpu`` rehearses the whole script on a machine without a GPU (the snapload loader then
runs the same pipeline into a host arena); its numbers are not GPU numbers.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.abspath(__file__)
GB = 1e9
# LLaMA-3-8B-like dimensions, and a toy set for rehearsing the script (--tiny).
DIMS = {"hidden": 4096, "inter": 14336, "vocab": 32000, "kv": 1024}
TINY_DIMS = {"hidden": 256, "inter": 512, "vocab": 1024, "kv": 64}


# ---------------------------------------------------------------- checkpoint
def llama_shapes(target_bytes: int, dims: dict[str, int] = DIMS) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a LLaMA-like model of about ``target_bytes`` in bf16."""
    hidden, inter, vocab, kv = dims["hidden"], dims["inter"], dims["vocab"], dims["kv"]
    per_layer = 2 * (hidden * hidden * 2 + hidden * kv * 2 + 3 * hidden * inter + 2 * hidden)
    fixed = 2 * (2 * vocab * hidden + hidden)
    layers = max(1, round((target_bytes - fixed) / per_layer))
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (kv, hidden)),
            (p + "self_attn.v_proj.weight", (kv, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
            (p + "input_layernorm.weight", (hidden,)),
            (p + "post_attention_layernorm.weight", (hidden,)),
        ]
    return shapes + [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def build_files(folder: str, size_gb: float, device: str, dims: dict[str, int] = DIMS) -> dict[str, str]:
    import safetensors.torch
    import torch

    import snapload

    os.makedirs(folder, exist_ok=True)
    tag = "" if dims == DIMS else "-tiny"
    paths = {k: os.path.join(folder, f"llama-{size_gb:g}gb{tag}.{k}") for k in ("snap", "safetensors", "pt")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    gen_device = "cuda" if device == "cuda" else "cpu"
    g = torch.Generator(device=gen_device).manual_seed(0)
    sd = {}
    for name, shape in llama_shapes(int(size_gb * GB), dims):
        sd[name] = (torch.randn(shape, generator=g, device=gen_device, dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()
    t = time.perf_counter()
    snapload.snapshot(sd, paths["snap"])
    print(f"# wrote snapload snapshot in {time.perf_counter() - t:.1f}s", flush=True)
    safetensors.torch.save_file(sd, paths["safetensors"])
    torch.save(sd, paths["pt"])
    for p in paths.values():
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return paths


# ---------------------------------------------------------------- ceilings
def h2d_ceiling(pinned: bool, nbytes: int = 2 << 30, reps: int = 5) -> float:
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    src.fill_(1)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src, non_blocking=pinned)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times[1:]) / GB


def direct_read_ceiling(path: str, threads: int = 8, block: int = 64 << 20) -> float:
    """O_DIRECT read of the whole file with ``threads`` readers over interleaved blocks."""
    size = os.path.getsize(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return float("nan")

    def reader(k: int) -> None:
        buf = mmap.mmap(-1, block)
        for off in range(k * block, size, threads * block):
            os.preadv(fd, [buf], off)

    t = time.perf_counter()
    workers = [threading.Thread(target=reader, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t
    os.close(fd)
    return size / seconds / GB


# ---------------------------------------------------------------- cache state
def set_cache(paths: list[str], state: str) -> float:
    """Make the files cold (evicted) or warm (read once); return the measured resident fraction."""
    import snapload

    for p in paths:
        if state == "cold":
            snapload.evict(p)
        else:
            snapload.prefetch(p, threads=8, background=False, validate=False).wait()
    res = [snapload.residency(p, validate=False) for p in paths]
    return sum(r.resident_bytes for r in res) / sum(r.size for r in res)


# ---------------------------------------------------------------- worker
def vm_hwm() -> int:
    """Peak RSS of this process image. Not ru_maxrss: Linux carries the pre-exec high-water mark
    of the forking parent into it."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def import_loader(loader: str, device: str) -> None:
    """Import everything ``loader`` needs, before the clock starts, for every loader alike (a
    handler imports its libraries first): the timed region measures loading, not imports."""
    import torch  # noqa: F401

    if loader in ("snapload", "snapload-verify"):
        import snapload._restore  # noqa: F401

        if device == "cuda":
            import snapload.cuda  # noqa: F401
        else:
            import snapload._pipeline  # noqa: F401
    elif loader == "safetensors":
        import safetensors.torch  # noqa: F401
    elif loader == "fastsafetensors":
        import fastsafetensors  # noqa: F401
    elif loader == "instanttensor":
        import instanttensor  # noqa: F401
    elif loader != "torch-mmap":
        raise SystemExit(f"unknown loader {loader}")


def load(loader: str, paths: dict[str, str], device: str) -> tuple[int, dict]:
    import torch

    extra: dict = {}
    if loader == "snapload":
        if device == "cuda":
            from snapload.cuda import restore_with_stats

            tensors, stats = restore_with_stats(paths["snap"], "cuda")
            extra = {"read_paths": stats.read_paths, "pinned": stats.extra.get("pinned")}
        else:
            from snapload._pipeline import restore_to_host

            tensors, stats = restore_to_host(paths["snap"])
            extra = {"read_paths": stats.read_paths}
    elif loader == "snapload-verify":
        import snapload

        tensors = snapload.restore(paths["snap"], device, verify=True)
    elif loader == "safetensors":
        import safetensors.torch

        tensors = safetensors.torch.load_file(paths["safetensors"], device=device)
    elif loader == "torch-mmap":
        sd = torch.load(paths["pt"], mmap=True, weights_only=True, map_location="cpu")
        tensors = {k: v.to(device) for k, v in sd.items()} if device == "cuda" else {k: v.clone() for k, v in sd.items()}
    elif loader == "fastsafetensors":
        from fastsafetensors import fastsafe_open

        with fastsafe_open(paths["safetensors"], device="cuda:0", nogds=True) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    elif loader == "instanttensor":
        from instanttensor import safe_open

        with safe_open(paths["safetensors"], framework="pt", device=0) as f:
            tensors = dict(f.tensors())
    else:
        raise SystemExit(f"unknown loader {loader}")
    if device == "cuda":
        torch.cuda.synchronize()
    nbytes = sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors.values()}.values())
    return nbytes, extra


def worker(loader: str, paths: dict[str, str], device: str, preinit: bool) -> None:
    import torch

    if preinit and device == "cuda":
        torch.empty(1, device="cuda")
        torch.cuda.synchronize()
    t = time.perf_counter()
    import_loader(loader, device)
    imports_s = time.perf_counter() - t
    rss0 = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGESIZE")
    modules = set(sys.modules)
    t = time.perf_counter()
    nbytes, extra = load(loader, paths, device)
    seconds = time.perf_counter() - t
    peak = vm_hwm()
    # Modules first imported inside the clock: none of the loader's libraries (see import_loader);
    # a library's own lazy submodules, if any, are part of its first load in a fresh process.
    late = sorted(set(sys.modules) - modules)
    row = {"loader": loader, "seconds": seconds, "bytes": nbytes, "rss_before": rss0, "rss_peak": peak}
    print(json.dumps({**row, "imports_s": imports_s, "imported_during_load": late, **extra}))


def run_trial(loader: str, paths: dict[str, str], device: str, preinit: bool, timeout: float) -> dict:
    cmd = [sys.executable, HERE, "--worker", loader, "--device", device, "--files", json.dumps(paths)]
    if preinit:
        cmd.append("--preinit")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"loader": loader, "error": f"timed out after {timeout}s"}
    if out.returncode != 0:
        return {"loader": loader, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main
def available_loaders(device: str) -> list[str]:
    loaders = ["snapload", "safetensors", "torch-mmap"]
    if device == "cuda":
        for mod, name in (("fastsafetensors", "fastsafetensors"), ("instanttensor", "instanttensor")):
            try:
                __import__(mod)
                loaders.append(name)
            except Exception as e:  # noqa: BLE001 - report any import failure and go on
                print(f"# {name} not available: {e}", flush=True)
    return loaders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=8.0)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/snapload-gpu-bench")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", default=None, help="JSON results path")
    ap.add_argument("--markdown", default=None, help="markdown table path")
    ap.add_argument("--budget-s", type=float, default=240, help="stop starting new trials after this long")
    ap.add_argument("--tiny", action="store_true", help="toy dimensions (a few MB): rehearses the script, measures nothing")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--preinit", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, json.loads(args.files), args.device, args.preinit)
        return

    started = time.perf_counter()
    import torch

    sys.path.insert(0, os.path.dirname(HERE))
    import machine  # benches/machine.py: no torch, stdlib only

    provenance = {"machine": machine.info(args.dir), "loadavg_start": os.getloadavg()}
    paths = build_files(args.dir, args.size_gb, args.device, TINY_DIMS if args.tiny else DIMS)
    size = os.path.getsize(paths["snap"])
    ceilings: dict[str, float] = {"direct_read_gbps": direct_read_ceiling(paths["snap"])}
    if args.device == "cuda":
        ceilings["pinned_h2d_gbps"] = h2d_ceiling(True)
        ceilings["pageable_h2d_gbps"] = h2d_ceiling(False)
        ceilings["gpu"] = torch.cuda.get_device_name()
    print("# ceilings:", json.dumps(ceilings), flush=True)

    loaders = available_loaders(args.device)
    results: list[dict] = []
    rng = random.Random(0)
    for state in ("warm", "cold"):
        for trial in range(args.trials):
            order = loaders[:]
            rng.shuffle(order)
            for loader in order:
                if time.perf_counter() - started > args.budget_s:
                    print(f"# budget spent: skipping {state} trial {trial} {loader}", flush=True)
                    results.append({"loader": loader, "state": state, "trial": trial, "skipped": "budget spent"})
                    continue
                needed = [paths[{"snapload": "snap", "torch-mmap": "pt"}.get(loader, "safetensors")]]
                fraction = set_cache(needed, state)
                r = run_trial(loader, paths, args.device, preinit=True, timeout=120)
                r.update(state=state, trial=trial, resident_fraction=round(fraction, 4))
                results.append(r)
                print("#", json.dumps(r), flush=True)

    table = summarize(results, ceilings, size, args)
    print(table)
    if args.out:
        provenance["loadavg_end"] = os.getloadavg()
        with open(args.out, "w") as f:
            out = {"ceilings": ceilings, "file_bytes": size, "results": results, "argv": sys.argv, **provenance}
            json.dump(out, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)


def summarize(results: list[dict], ceilings: dict, size: int, args: argparse.Namespace) -> str:
    """The table; every row says how many trials it is the median of, since the time budget can
    stop trials early (skipped trials are counted per row too)."""
    ceiling = ceilings.get("pinned_h2d_gbps")
    skipped = sum(1 for r in results if "skipped" in r)
    lines = [
        f"Checkpoint: {size / GB:.2f} GB bf16, LLaMA-shaped; device {args.device} "
        f"({ceilings.get('gpu', 'no GPU')}); medians of up to {args.trials} fresh-process trials per row "
        f"(the trials column gives the real count{f'; {skipped} trial(s) skipped when the time budget ran out' if skipped else ''}); "
        "CUDA context created and every library imported before the clock starts.",
        "",
        f"Ceilings (same run): pinned H2D {ceilings.get('pinned_h2d_gbps', float('nan')):.1f} GB/s, "
        f"pageable H2D {ceilings.get('pageable_h2d_gbps', float('nan')):.1f} GB/s, "
        f"O_DIRECT file read {ceilings['direct_read_gbps']:.1f} GB/s",
        "",
        "| cache | loader | trials | median s | GB/s | of pinned H2D | of direct read | vs safetensors | peak RSS growth GB | resident before |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for state in ("warm", "cold"):
        rows: dict[str, list[dict]] = {}
        for r in results:
            if r.get("state") == state and "seconds" in r:
                rows.setdefault(r["loader"], []).append(r)
        base = statistics.median(x["seconds"] for x in rows["safetensors"]) if "safetensors" in rows else None
        for loader, rs in sorted(rows.items(), key=lambda kv: statistics.median(x["seconds"] for x in kv[1])):
            s = statistics.median(x["seconds"] for x in rs)
            gbps = rs[0]["bytes"] / s / GB
            rss = statistics.median((x["rss_peak"] - x["rss_before"]) / GB for x in rs)
            frac = f"{gbps / ceiling:.0%}" if ceiling else "n/a"
            direct = ceilings["direct_read_gbps"]
            lines.append(
                f"| {state} | {loader} | {len(rs)} of {args.trials} | {s:.3f} | {gbps:.1f} | {frac} | {gbps / direct:.0%} | "
                f"{(base / s if base else float('nan')):.1f}x | {rss:.2f} | {max(x['resident_fraction'] for x in rs):.0%} |"
            )
        for r in results:
            if r.get("state") == state and "error" in r:
                lines.append(f"| {state} | {r['loader']} | | error: {r['error'][:80]} | | | | | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
