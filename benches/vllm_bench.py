"""vLLM engine start with each load format: a fresh process per trial, warm and cold page cache.

    python benches/vllm_bench.py [--trials 2] [--size bench] [--data bench-data/vllm]

Runs under any Python with snapload (the main venv); every engine runs in a fresh process of the
vLLM venv (scripts/setup_vllm.sh; or SNAPLOAD_VLLM_PYTHON) through tests/vllm_child.py, with
VLLM_ENABLE_V1_MULTIPROCESSING=0 so the worker's model loading can be timed in that process.

Formats: safetensors, runai_streamer (safetensors read by the Run:ai Model Streamer), snapload
(checkpoint snapshot, model.snap), snapload_nofreeze (the same with the loader's gc freeze off:
model_loader_extra_config {"freeze_gc": false}, to show what the file format alone does),
snapload_populate_none (populate "none": no background threads populating the mapping) and
snapload_processed (this rank's processed snapshot). The default --formats leaves
snapload_populate_none out (give it explicitly).
Measured per trial:
  load_s    the model runner's get_model(): build the model, load and process the weights
  ready_s   LLM(...) constructor: engine ready to serve (load + KV cache + warm-up)
  total_s   process start to engine ready (imports included)
  phases    inside load_model: create_model, load_weights (read + copy into the parameters),
            gc_collect (load_model's gc.collect() passes), process_weights
  loadavg   the machine's 1-minute load average before the trial (it is shared: say how busy)
Trials run in a shuffled order (all formats and both cache states interleaved), so a busy spell
of the machine hits every cell alike; the table gives median and min-max.
Cold: every weight file of the model folder is evicted from the page cache (snapload.evict) and
checked with mincore before the trial. Warm: the files are read once before the trial.

The model (random Llama, float32, ~0.7 GB for --size bench) is built once into --data.
Writes benches/results/vllm.json and prints a markdown table (copied into docs/vllm.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(HERE))

import machine  # noqa: E402 - benches/machine.py: stdlib only

from snapload.prefetch import evict, residency  # noqa: E402

CHILD = REPO / "tests" / "vllm_child.py"
DEFAULT_VENV = Path(os.environ.get("SNAPLOAD_VLLM_VENV") or Path.home() / ".cache" / "snapload" / "venv-vllm")
FORMATS = ("safetensors", "runai_streamer", "snapload", "snapload_nofreeze", "snapload_processed")
PHASES = ("create_model", "load_weights", "gc_collect", "process_weights")


def vllm_python() -> Path:
    p = Path(os.environ.get("SNAPLOAD_VLLM_PYTHON") or DEFAULT_VENV / "bin" / "python")
    if not p.is_file():
        raise SystemExit(f"{p} missing: run `bash scripts/setup_vllm.sh` (or set SNAPLOAD_VLLM_PYTHON)")
    return p


def log(msg: str) -> None:
    print(f"[vllm_bench {datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def run_child(py: Path, args: list[str], logfile: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    with open(logfile, "w") as out:
        proc = subprocess.run([str(py), str(CHILD), *args], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed; see {logfile}")


def engine(py: Path, data: Path, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    spec_path, out_path = data / f"{name}.spec.json", data / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    run_child(py, ["engine", str(spec_path), str(out_path)], data / f"{name}.log")
    result: dict[str, Any] = json.loads(out_path.read_text())
    if result["error"]:
        raise RuntimeError(f"{name}: {result['error']}\n{result.get('traceback')}")
    return result


def prepare(py: Path, data: Path, size: str) -> tuple[Path, Path]:
    model, processed = data / f"llama-{size}", data / f"llama-{size}-processed"
    if not (model / "model.snap").is_file():
        log(f"building the {size} model in {model}")
        run_child(py, ["make-model", str(model), size], data / "make-model.log")
        subprocess.run([str(py), "-m", "snapload.cli", "convert", str(model), str(model / "model.snap")], check=True)
    if not (processed / "processed-pp0-tp0.snap").is_file():
        log("saving the processed snapshot")
        engine(py, data, "save-processed", {"model": str(model), "load_format": "snapload", "save_processed": str(processed)})
    return model, processed


def spec_for(fmt: str, model: Path, processed: Path) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": str(model), "load_format": fmt, "phases": True}
    if fmt == "snapload_processed":
        spec.update(load_format="snapload", extra={"processed": str(processed)})
    elif fmt == "snapload_nofreeze":
        spec.update(load_format="snapload", extra={"freeze_gc": False})
    elif fmt == "snapload_populate_none":
        spec.update(load_format="snapload", extra={"populate": "none"})
    return spec


def files_of(fmt: str, model: Path, processed: Path) -> list[Path]:
    if fmt == "snapload_processed":
        return [processed / "processed-pp0-tp0.snap"]
    if fmt.startswith("snapload"):
        return [model / "model.snap"]
    return sorted(model.glob("*.safetensors"))


def set_cache(paths: list[Path], state: str) -> float:
    """Evict (cold) or read (warm) the files; return the fraction resident afterwards."""
    for p in paths:
        if state == "cold":
            evict(p)
        else:
            with open(p, "rb") as f:
                while f.read(64 << 20):
                    pass
    resident = [residency(p, validate=False) for p in paths]
    total = sum(r.size for r in resident)
    return sum(r.resident_bytes for r in resident) / total if total else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--size", default="bench", choices=("tiny", "bench"))
    ap.add_argument("--data", type=Path, default=REPO / "bench-data" / "vllm")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "vllm.json")
    args = ap.parse_args(argv)
    py = vllm_python()
    args.data.mkdir(parents=True, exist_ok=True)
    model, processed = prepare(py, args.data, args.size)
    formats = args.formats.split(",")
    plan = [(fmt, cache) for fmt in formats for cache in ("warm", "cold") for _ in range(args.trials)]
    random.Random(0).shuffle(plan)
    rows: list[dict[str, Any]] = []
    for i, (fmt, cache) in enumerate(plan):
        resident = set_cache(files_of(fmt, model, processed), cache)
        loadavg = os.getloadavg()[0]
        r = engine(py, args.data, f"trial-{fmt}-{cache}", spec_for(fmt, model, processed))
        row = {
            "format": fmt,
            "cache": cache,
            "resident_before": resident,
            "loadavg_before": loadavg,
            "load_s": r.get("load_s"),
            "ready_s": r["ready_s"],
            "total_s": r["process_to_ready_s"],
            "phases": r.get("phases", {}),
            "tokens": r["tokens"],
        }
        rows.append(row)
        phases = ", ".join(f"{k} {v:.3f}" for k, v in row["phases"].items())
        log(f"{i + 1}/{len(plan)} {fmt:18s} {cache}: load {row['load_s']:.3f} s ({phases}), ready {row['ready_s']:.2f} s, "
            f"process->ready {row['total_s']:.2f} s (resident before {resident:.0%}, load average {loadavg:.1f})")
    reference = next(r["tokens"] for r in rows if r["format"] == formats[0])
    for r in rows:
        assert r["tokens"] == reference, f"{r['format']} generated other tokens than {formats[0]}"
    summary = {f"{fmt}/{cache}": summarise([r for r in rows if r["format"] == fmt and r["cache"] == cache])
               for fmt in formats for cache in ("warm", "cold")}
    size_bytes = sum(p.stat().st_size for p in files_of("safetensors", model, processed))
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benches/vllm_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "git": machine.git_state()},
        # This machine is shared: say how busy it was (per trial in rows too).
        "loadavg_before_trials": [min(r["loadavg_before"] for r in rows), max(r["loadavg_before"] for r in rows)],
        "loadavg_end": os.getloadavg(),
        "model_bytes": size_bytes,
        "trials": args.trials,
        "rows": rows,
        "median": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


def summarise(cell: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of each timing over a cell's trials; medians of the phases."""
    out: dict[str, Any] = {}
    for key in ("load_s", "ready_s", "total_s"):
        values = [r[key] for r in cell]
        out[key] = statistics.median(values)
        out[key.removesuffix("_s") + "_range"] = [min(values), max(values)]
    out["phases"] = {p: statistics.median(r["phases"].get(p, 0.0) for r in cell) for p in PHASES}
    out["loadavg_before"] = [min(r["loadavg_before"] for r in cell), max(r["loadavg_before"] for r in cell)]
    return out


def markdown(res: dict[str, Any]) -> str:
    lo, hi = res["loadavg_before_trials"]
    lines = [
        f"Model: random Llama, float32, {res['model_bytes'] / 1e9:.2f} GB of safetensors; "
        f"{res['machine']['cpus']} CPUs; {res['trials']} fresh processes per cell, shuffled; load average "
        f"{lo:.1f}–{hi:.1f} before the trials; `{res['command']}`.",
        "",
        "| load format | cache | weight load (get_model): median (min–max) | of which load_weights | gc passes "
        "| process_weights | LLM() ready | process start → ready |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, m in res["median"].items():
        fmt, cache = key.split("/")
        (llo, lhi), ph = m["load_range"], m["phases"]
        lines.append(
            f"| {fmt} | {cache} | {m['load_s']:.2f} s ({llo:.2f}–{lhi:.2f}) | {ph['load_weights']:.2f} s "
            f"| {ph['gc_collect']:.2f} s | {ph['process_weights']:.2f} s | {m['ready_s']:.2f} s | {m['total_s']:.2f} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
