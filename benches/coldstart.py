"""End-to-end handler cold start: a fresh Python process with the weights out of the page cache,
from spawn to the first forward pass of a transformers LlamaForCausalLM.

    python benches/coldstart.py --trials 3

Builds once (cached in bench-data/coldstart-llama/) a randomly initialised bf16 LLaMA from a
config, saved with ``save_pretrained`` (safetensors) and with ``snapload.snapshot``. Every trial
evicts both weight files, checks with mincore that they are gone, and spawns
benches/coldstart_child.py, which timestamps each phase. Variants run in a random order. Python
and library files stay in the page cache (as on a warm node) unless ``--cold-libs`` evicts the
site-packages of torch and transformers too (as on a node that just pulled the image; pages
another process has mapped cannot be evicted, so that is reported, not assumed).

Also times ``python -c "import snapload"`` and checks that it does not import torch.
Writes benches/results/coldstart.json and the coldstart section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "python"))

import checkpoints  # noqa: E402
import machine  # noqa: E402
import report  # noqa: E402

from snapload.bench import ChildFailed, spawn_json  # noqa: E402
from snapload.prefetch import evict, residency  # noqa: E402

VARIANTS = (
    "st_load_state_dict",
    "st_assign",
    "st_assign_prefetch",
    "from_pretrained",
    "snapload",
    "snapload_populate",
    "snapload_prefetch_wait",
    "snapload_prefetch_nowait",
    "snapload_hf_prefetch",
)
LABELS = {
    "st_load_state_dict": "safetensors: from_config + load_state_dict(load_file)",
    "st_assign": "safetensors: empty init + load_state_dict(load_file, assign=True)",
    "st_assign_prefetch": "safetensors + prefetch() first, wait(), then as above (assign=True)",
    "from_pretrained": "transformers from_pretrained",
    "snapload": "snapload: empty init + restore_module",
    "snapload_populate": "snapload: restore_module(populate='background')",
    "snapload_prefetch_wait": "snapload + prefetch() first, wait() before restore",
    "snapload_prefetch_nowait": "snapload + prefetch() first, not waited",
    "snapload_hf_prefetch": "README handler on CPU: prefetch(), wait(), snapload.hf.load_model(path, 'cpu')",
}
# (phase, start mark, end mark)
PHASES = (
    ("interpreter start", "spawn", "first_line"),
    ("import torch", "prefetch_started", "import_torch"),
    ("import transformers", "import_torch", "import_transformers"),
    ("build model", "import_transformers", "construct"),
    ("load weights", "construct", "load_weights"),
    ("first forward", "load_weights", "first_forward"),
    # What the overlap can shorten, without the import times that swing by seconds on a busy box.
    ("after imports", "import_transformers", "first_forward"),
    ("total", "spawn", "first_forward"),
)
BASELINE = "st_load_state_dict"
# About 1.5 GB of bf16: LLaMA-style, 12 layers of hidden 2048.
MODEL: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
# For the smoke test (tests/test_bench_smoke.py): the same pipeline in seconds.
TINY_MODEL: dict[str, Any] = {
    **MODEL,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 8192,  # the probe prompt uses token ids up to 6593
}
BUILD_VERSION = 2  # 2: the snapshot records config.json (hf.config) for snapload.hf.load_model


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(out: Path, spec: dict[str, Any]) -> dict[str, Any]:
    stamp = out / "coldstart.json"
    try:
        m: dict[str, Any] = json.loads(stamp.read_text())
        if m.get("version") == BUILD_VERSION and m.get("model") == spec and (out / "model.snap").is_file():
            return m
    except (OSError, ValueError):
        pass
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import snapload

    log(f"building {out}")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = LlamaConfig(**spec, dtype="bfloat16")
    start = time.perf_counter()
    with torch.device("cpu"):
        torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: no fp32 copy of the model
        model = LlamaForCausalLM(config)
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(out)  # transformers 5 always writes safetensors
    # The config in the metadata, as `snapload convert` records it, so snapload.hf.load_model works.
    snapload.snapshot(model, out / "model.snap", metadata={"hf.config": (out / "config.json").read_text()})
    for f in out.iterdir():
        if f.is_file():
            checkpoints.fsync_path(f)
    m = {
        "version": BUILD_VERSION,
        "model": spec,
        "params": sum(p.numel() for p in model.parameters()),
        "bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "files": {f.name: f.stat().st_size for f in sorted(out.iterdir()) if f.is_file()},
        "build_s": time.perf_counter() - start,
    }
    stamp.write_text(json.dumps(m, indent=2) + "\n")
    return m


def weight_files(out: Path) -> list[Path]:
    return [out / "model.snap", *sorted(out.glob("*.safetensors"))]


def lib_files() -> list[Path]:
    """Every file of the torch and transformers packages (found without importing them)."""
    import importlib.util

    files: list[Path] = []
    for name in ("torch", "transformers"):
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            for root in spec.submodule_search_locations:
                files += [p for p in Path(root).rglob("*") if p.is_file()]
    return files


def make_cold(out: Path, libs: list[Path]) -> dict[str, float]:
    """Evict the weights (and ``libs``); return the resident fractions measured afterwards."""
    fractions = {}
    for f in weight_files(out):
        evict(f)
        fractions[f.name] = residency(f, validate=False).fraction
    if libs:
        total = resident = 0
        for f in libs:
            try:
                evict(f)
                r = residency(f, validate=False)
            except OSError:
                continue
            total += r.size
            resident += r.resident_bytes
        fractions["libs"] = resident / total if total else 0.0
    return fractions


def import_snapload_check(n: int) -> dict[str, Any]:
    """Time a bare interpreter and ``import snapload`` in fresh processes; check torch stays out."""
    code = (
        "import time,sys,json; t=time.perf_counter(); import snapload; d=time.perf_counter()-t; "
        "print(json.dumps({'import_s': d, 'torch_imported': 'torch' in sys.modules}))"
    )
    bare, imp, torch_seen = [], [], []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        imp.append(time.perf_counter() - t)
        d = json.loads(p.stdout.strip().splitlines()[-1])
        torch_seen.append(d["torch_imported"])
    return {
        "python_c_pass_s": statistics.median(bare),
        "python_c_import_snapload_s": statistics.median(imp),
        "torch_imported": any(torch_seen),
    }


def phases(marks: dict[str, int]) -> dict[str, float]:
    return {name: (marks[b] - marks[a]) / 1e9 for name, a, b in PHASES}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in VARIANTS:
        mine = [r for r in rows if r["variant"] == v and "error" not in r]
        if not mine:
            continue
        ph = [phases(r["marks_ns"]) for r in mine]
        out[v] = {
            "trials": len(mine),
            "cold_ok": all(r["cold_ok"] for r in mine),
            "phases": {name: statistics.median(p[name] for p in ph) for name, _, _ in PHASES},
            "total_range": [min(p["total"] for p in ph), max(p["total"] for p in ph)],
            "peak_rss_mb": statistics.median(r.get("peak_rss_mb", 0.0) for r in mine),
            "prefetched_at_imports": (
                statistics.median(r["prefetched_at_imports"] for r in mine)
                if all(r.get("prefetched_at_imports") is not None for r in mine)
                else None
            ),
            "logits_probe": mine[0]["logits_probe"],
        }
    base = out.get(BASELINE)
    for s in out.values():
        if base:
            s["speedup_vs_baseline"] = base["phases"]["total"] / s["phases"]["total"]
            s["load_speedup_vs_baseline"] = base["phases"]["load weights"] / max(s["phases"]["load weights"], 1e-9)
    return out


def markdown(res: dict[str, Any]) -> str:
    mod = res["model"]
    imp = res["import_snapload"]
    lines = [
        report.machine_markdown(res),
        f"- Model: LlamaForCausalLM from a config ({mod['model']['num_hidden_layers']} layers, hidden "
        f"{mod['model']['hidden_size']}, intermediate {mod['model']['intermediate_size']}), "
        f"{mod['params'] / 1e6:.0f} M parameters, {mod['bytes'] / 1e9:.2f} GB bf16, random weights",
        f"- Page cache before each trial: weight files evicted and checked with mincore "
        f"(max resident fraction seen: {res['max_weight_residency']:.1%})"
        + (
            f"; torch and transformers package files evicted too (max still resident: {res['max_lib_residency']:.0%})"
            if res.get("cold_libs")
            else "; Python and library files left cached (a warm node)"
        ),
        f"- `python -c \"import snapload\"`: {imp['python_c_import_snapload_s']:.3f} s against "
        f"{imp['python_c_pass_s']:.3f} s for `python -c pass`; torch imported by it: "
        f"**{'yes' if imp['torch_imported'] else 'no'}**",
        "",
        f"Seconds, median of {res['trials']} trials per variant (total: min–max). Speedup = total of "
        f"\"{LABELS[BASELINE]}\" ÷ the variant's total. \"import transformers\" includes the import of the "
        "Llama modeling module (transformers imports it lazily); \"build model\" includes reading config.json. "
        "\"after imports\" = build + load + first forward: the part the overlap can shorten. \"prefetched\" = how "
        "much of the weight file (the snapshot, or the safetensors file) the prefetch had pulled in when the imports "
        "finished (median).",
        "",
        "| variant | " + " | ".join(name for name, _, _ in PHASES) + " | speedup | prefetched | peak RSS |",
        "|---|" + "---|" * (len(PHASES) + 3),
    ]
    for v, s in res["summary"].items():
        cells = []
        for name, _, _ in PHASES:
            val = s["phases"][name]
            cells.append(
                f"**{val:.2f}** ({s['total_range'][0]:.2f}–{s['total_range'][1]:.2f})" if name == "total" else f"{val:.2f}"
            )
        flag = "" if s["cold_ok"] else " **NOT COLD**"
        prefetched = "" if s.get("prefetched_at_imports") is None else f"{s['prefetched_at_imports']:.0%}"
        lines.append(
            f"| {LABELS[v]}{flag} | " + " | ".join(cells) + f" | {s.get('speedup_vs_baseline', float('nan')):.2f}× | "
            f"{prefetched} | {s['peak_rss_mb']:.0f} MB |"
        )
    probes = {round(s["logits_probe"], 3) for s in res["summary"].values()}
    lines += [
        "",
        "Every variant's first forward pass gave the same logits probe"
        if len(probes) == 1
        else f"Logits probes differ between variants ({sorted(probes)}): the variants did not load the same weights!",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--cold-libs", action="store_true", help="also evict the torch and transformers packages")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--data-dir", type=Path, default=checkpoints.DEFAULT_DATA_DIR)
    ap.add_argument("--json", type=Path, default=None, help="default benches/results/coldstart[-libs].json")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md", help="'-' for none")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy model: checks the harness, measures nothing")
    ap.add_argument("--section", default=None, help="the doc section to rewrite (default coldstart or coldstart-libs)")
    args = ap.parse_args(argv)
    if args.json is None:
        args.json = HERE / "results" / ("coldstart-libs.json" if args.cold_libs else "coldstart.json")
    variants = [v for v in args.variants.split(",") if v]
    if any(v not in VARIANTS for v in variants):
        raise SystemExit(f"--variants takes {VARIANTS}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    out = args.data_dir / ("coldstart-tiny" if args.tiny else "coldstart-llama")
    model = build(out, TINY_MODEL if args.tiny else MODEL)
    for f in args.data_dir.glob("*/model.*"):  # free the page cache the loader benchmark filled
        evict(f)
    libs = lib_files() if args.cold_libs else []

    res: dict[str, Any] = {
        "command": "python benches/coldstart.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "seed": seed,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.info(args.data_dir),
        "loadavg_start": os.getloadavg(),
        "model": model,
        "trials": args.trials,
        "cold_libs": args.cold_libs,
    }
    start = time.perf_counter()
    res["import_snapload"] = import_snapload_check(1 if args.tiny else 5)
    log(f"import snapload: {res['import_snapload']}")
    jobs = [v for _ in range(args.trials) for v in variants]
    rng.shuffle(jobs)
    rows: list[dict[str, Any]] = []
    for i, v in enumerate(jobs):
        fractions = make_cold(out, libs)
        load1 = os.getloadavg()[0]  # this shared machine's other work, recorded per trial
        env = dict(os.environ, SNAPLOAD_COLDSTART_SPAWN_NS=str(time.monotonic_ns()))
        argv_child = [sys.executable, str(HERE / "coldstart_child.py"), v, str(out)]
        try:
            row = spawn_json(argv_child, env=env, timeout=900)
        except (ChildFailed, subprocess.TimeoutExpired) as e:
            rows.append({"variant": v, "error": str(e)[-2000:]})
            log(f"[{i + 1}/{len(jobs)}] {v}: FAILED {str(e).splitlines()[-1]}")
            continue
        weights = [f for k, f in fractions.items() if k != "libs"]
        row["cold_fractions"] = fractions
        row["loadavg_1m"] = load1
        row["cold_ok"] = max(weights) <= 0.02
        rows.append(row)
        ph = phases(row["marks_ns"])
        log(f"[{i + 1}/{len(jobs)}] {v}: " + ", ".join(f"{k} {val:.2f}" for k, val in ph.items()))
    res["wall_s"] = time.perf_counter() - start
    res["loadavg_end"] = os.getloadavg()
    ok = [r for r in rows if "error" not in r]
    res["max_weight_residency"] = max((f for r in ok for k, f in r["cold_fractions"].items() if k != "libs"), default=0.0)
    if args.cold_libs:
        res["max_lib_residency"] = max((r["cold_fractions"].get("libs", 0.0) for r in ok), default=0.0)
    res["summary"] = summarize(rows)
    res["errors"] = [r for r in rows if "error" in r]
    res["rows"] = rows
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    if str(args.doc) != "-":
        section = args.section or ("coldstart-libs" if args.cold_libs else "coldstart")
        report.update_doc(args.doc, section, md)
    print(md)
    probes = {round(s["logits_probe"], 3) for s in res["summary"].values()}
    return 1 if res["errors"] or len(probes) > 1 else 0


if __name__ == "__main__":
    sys.exit(main())
