"""snapload against its peers, on the same weights, in one run.

    python benches/run.py --sizes 0.5,2,4 --trials 5

For each size, builds (or reuses) the synthetic checkpoint in every format (benches/checkpoints.py),
then runs every (loader, cache state, trial) in a fresh process (benches/worker.py), in a random
order shared with the ceiling measurements (benches/ceilings.py), so that drift and noise from
other work on the machine spread over every loader alike. Before each trial the file is evicted
(cold) or read (warm), and the worker checks with mincore, right before timing, that it really is;
a trial whose cache state was wrong is kept but marked.

Writes benches/results/latest.json, the loader tables of docs/benchmarks.md (between markers; the
rest of the document is kept) and docs/bench.png.
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
sys.path.insert(0, str(REPO / "python"))  # a checkout without install

import ceilings  # noqa: E402
import checkpoints  # noqa: E402
import content  # noqa: E402
import machine  # noqa: E402
import report  # noqa: E402
from loaders import LOADERS  # noqa: E402 - plain data; importing it imports no loader library

from snapload.bench import COLD_TOLERANCE, ChildFailed, is_state_ok, prepare_cache, spawn_json  # noqa: E402
from snapload.prefetch import evict  # noqa: E402

MODES = ("cold", "warm")
DEFAULT_JSON = HERE / "results" / "latest.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_trials(text: str, n_sizes: int) -> list[int]:
    """``5`` for every size, or one count per size (``5,3,2``)."""
    parts = [int(x) for x in text.split(",")]
    if len(parts) == 1:
        return parts * n_sizes
    if len(parts) != n_sizes:
        raise SystemExit(f"--trials: {len(parts)} counts for {n_sizes} sizes")
    return parts


def evict_others(data_dir: Path, keep: str) -> None:
    """Drop every other benchmark file from the page cache, so that the one under test is the only
    one cached and memory pressure from earlier trials cannot push it out before its check."""
    for f in data_dir.glob("*/model.*"):
        if str(f) != keep and f.is_file():
            evict(f)


def run_trial(loader: str, path: str, mode: str, data_dir: Path) -> dict[str, Any]:
    evict_others(data_dir, path)
    prepared = prepare_cache(path, mode)
    argv = [sys.executable, str(HERE / "worker.py"), loader, path, "--mode", mode]
    try:
        row = spawn_json(argv, timeout=900)
    except (ChildFailed, subprocess.TimeoutExpired) as e:
        return {"loader": loader, "mode": mode, "error": str(e)[-2000:], "prepared_fraction": prepared}
    row["prepared_fraction"] = prepared
    row["state_ok"] = is_state_ok(mode, row["resident_before"])
    return row


def run_ceiling(kind: str, path: str, mode: str, direct_threads: int, data_dir: Path) -> dict[str, Any]:
    evict_others(data_dir, path)
    before = prepare_cache(path, mode) if kind in ("buffered", "direct") else None
    if kind == "buffered":
        gbps = ceilings.buffered_read_gbps(path)
    elif kind == "direct":
        gbps = ceilings.direct_read_gbps(path, threads=direct_threads)
    else:
        gbps = ceilings.memcpy_gbps(fresh=kind == "memcpy_fresh")
    return {"kind": kind, "mode": mode, "gb_per_s": gbps, "resident_before": before}


def median_range(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ceiling_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(f"{r['kind']}_{r['mode']}", []).append(r["gb_per_s"])
    out: dict[str, Any] = {k: median_range(v) for k, v in sorted(by.items())}
    cold = [out[k]["median"] for k in ("buffered_cold", "direct_cold") if out.get(k)]
    out["cold_ceiling"] = max(cold) if cold else None
    out["warm_ceiling"] = out["memcpy_warm"]["median"] if out.get("memcpy_warm") else None
    return out


def summarize(rows: list[dict[str, Any]], payload: int, ceil: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for loader in LOADERS:
        for mode in MODES:
            mine = [r for r in rows if r["loader"] == loader and r["mode"] == mode]
            if not mine:
                continue
            ok = [r for r in mine if "error" not in r]
            s: dict[str, Any] = {
                "loader": loader,
                "mode": mode,
                "trials": len(mine),
                "errors": [r["error"] for r in mine if "error" in r],
            }
            if ok:
                total = median_range([r["total_s"] for r in ok])
                assert total is not None
                ceiling = ceil.get(f"{mode}_ceiling")
                gbps = payload / total["median"] / 1e9
                s.update(
                    {
                        "state_ok": all(r["state_ok"] for r in ok),
                        "resident_before": median_range([r["resident_before"] for r in ok]),
                        "usable_s": median_range([r["usable_s"] for r in ok]),
                        "touch_s": median_range([r["touch_s"] for r in ok]),
                        "total_s": total,
                        "gb_per_s": gbps,
                        "ceiling_gb_per_s": ceiling,
                        "of_ceiling": gbps / ceiling if ceiling else None,
                        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in ok),
                        "rss_added_mb": statistics.median(r["peak_rss_mb"] - r["rss_before_mb"] for r in ok),
                        "anon_added_mb": statistics.median(r["rss_anon_mb"] - r["anon_before_mb"] for r in ok),
                        "minor_faults": statistics.median(r["minor_faults"] for r in ok),
                        "major_faults": statistics.median(r["major_faults"] for r in ok),
                        "cpu_s": statistics.median(r["cpu_user_s"] + r["cpu_sys_s"] for r in ok),
                    }
                )
            out[f"{loader}/{mode}"] = s
    for key, s in out.items():
        base = out.get(f"snapload/{s['mode']}")
        if "total_s" in s and base and "total_s" in base:
            s["vs_snapload"] = s["total_s"]["median"] / base["total_s"]["median"]
    return out


def run_size(gb: float, trials: int, loaders: list[str], modes: list[str], rng: random.Random, args: argparse.Namespace) -> dict[str, Any]:
    if args.tiny:
        m = checkpoints.build("tiny", checkpoints.tiny_shape(), args.data_dir, log=log)
    else:
        m = checkpoints.build_size(gb, args.data_dir, log=log)
    paths = m["paths"]
    jobs: list[tuple[str, str, str, int]] = []
    for t in range(trials):
        for mode in modes:
            jobs += [("loader", name, mode, t) for name in loaders]
            jobs.append(("ceiling", "buffered", mode, t))
            if mode == "cold":
                jobs.append(("ceiling", "direct", mode, t))
            else:
                jobs += [("ceiling", "memcpy", mode, t), ("ceiling", "memcpy_fresh", mode, t)]
    rng.shuffle(jobs)
    rows: list[dict[str, Any]] = []
    ceil_rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i, (kind, name, mode, t) in enumerate(jobs):
        load1 = os.getloadavg()[0]
        if kind == "ceiling":
            r = run_ceiling(name, paths["snapload"], mode, args.direct_threads, args.data_dir)
            r["trial"] = t
            r["loadavg_1m"] = load1
            ceil_rows.append(r)
            log(f"{gb:g} GB [{i + 1}/{len(jobs)}] ceiling {name} {mode}: {r['gb_per_s']:.2f} GB/s")
            continue
        r = run_trial(name, paths[LOADERS[name].fmt], mode, args.data_dir)
        r["trial"] = t
        r["loadavg_1m"] = load1
        rows.append(r)
        if "error" in r:
            log(f"{gb:g} GB [{i + 1}/{len(jobs)}] {name} {mode}: FAILED {r['error'].splitlines()[-1]}")
        else:
            flag = "" if r["state_ok"] else f" NOT {mode.upper()}"
            log(
                f"{gb:g} GB [{i + 1}/{len(jobs)}] {name} {mode}: usable {r['usable_s']:.3f} s, "
                f"touch {r['touch_s']:.3f} s ({r['resident_before']:.0%} cached before){flag}"
            )
    ceil = ceiling_summary(ceil_rows)
    mismatches = content.mismatches(rows)
    for m in mismatches:
        log(f"{gb:g} GB: {m['loader']} {m['mode']} trial {m['trial']} returned different bytes from {m['reference_loader']}: {m['tensors_differing']}")
    for r in rows:  # the digest stays; per-tensor CRCs only served the comparison
        r.pop("content_crcs", None)
    return {
        "size_gb": gb,
        "checkpoint": {k: v for k, v in m.items() if k != "paths"},
        "paths": paths,
        "payload_bytes": m["payload_bytes"],
        "wall_s": time.perf_counter() - start,
        "ceilings": ceil,
        "ceiling_trials": ceil_rows,
        "summary": summarize(rows, m["payload_bytes"], ceil),
        "content_mismatches": mismatches,
        "trials": rows,
    }


def check_focused(args: argparse.Namespace, loaders: list[str]) -> None:
    """The rule (docs/benchmarks.md): whenever any loader is re-run, every loader is re-run, so
    that every row of a table comes from the same run, machine state and commit. A subset is a
    focused re-run: it must say so (--focused) and goes to its own results file only."""
    if set(loaders) == set(LOADERS):
        return
    missing = sorted(set(LOADERS) - set(loaders))
    if not args.focused:
        raise SystemExit(
            f"--loaders leaves out {missing}: re-run every loader, or pass --focused for a focused re-run "
            "(written to its own --json, never to the doc tables)"
        )
    if args.json == DEFAULT_JSON or str(args.doc) != "-" or str(args.chart) != "-":
        raise SystemExit("a focused re-run needs its own --json and --doc - --chart -: it must not replace the full tables")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.5,2,4", help="checkpoint sizes in GB, comma-separated (default 0.5,2,4)")
    ap.add_argument("--trials", default="5", help="trials per loader and cache state: N, or one N per size (5,3,2)")
    ap.add_argument("--loaders", default=",".join(LOADERS), help=f"comma-separated subset of {','.join(LOADERS)}")
    ap.add_argument(
        "--focused",
        action="store_true",
        help="allow a subset of --loaders (a focused re-run: written only to its own --json, never to the doc tables)",
    )
    ap.add_argument("--modes", default="cold,warm", help="cold, warm or both (default cold,warm)")
    ap.add_argument("--seed", type=int, default=None, help="shuffle seed (default: random, recorded)")
    ap.add_argument("--direct-threads", type=int, default=4, help="parallel O_DIRECT readers for the direct ceiling")
    ap.add_argument("--data-dir", type=Path, default=checkpoints.DEFAULT_DATA_DIR)
    ap.add_argument("--tiny", action="store_true", help="one checkpoint of a few MB instead of --sizes: checks the harness, measures nothing")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md", help="markdown to update ('-' for none)")
    ap.add_argument("--chart", type=Path, default=REPO / "docs" / "bench.png", help="PNG chart ('-' for none)")
    args = ap.parse_args(argv)

    sizes = [0.0] if args.tiny else [float(s) for s in args.sizes.split(",")]
    trials = parse_trials(args.trials, len(sizes))
    loaders = [x for x in args.loaders.split(",") if x]
    unknown = [x for x in loaders if x not in LOADERS]
    if unknown:
        raise SystemExit(f"unknown loaders {unknown}; known: {list(LOADERS)}")
    modes = [x for x in args.modes.split(",") if x]
    if any(x not in MODES for x in modes):
        raise SystemExit(f"--modes takes {MODES}")
    check_focused(args, loaders)
    if args.tiny and (args.json == DEFAULT_JSON or str(args.doc) != "-" or str(args.chart) != "-"):
        raise SystemExit("--tiny measures nothing: give it its own --json and --doc - --chart -")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    args.data_dir.mkdir(parents=True, exist_ok=True)

    command = "python benches/run.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    results: dict[str, Any] = {
        "command": command,
        "focused": args.focused,
        "content_check": "CRC32 of every byte of every tensor, per trial, digests compared across loaders (benches/content.py)",
        "seed": seed,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.info(args.data_dir),
        "loadavg_start": os.getloadavg(),
        "cold_tolerance": COLD_TOLERANCE,
        "loaders": {n: {"label": LOADERS[n].label, "format": LOADERS[n].fmt, "lazy": LOADERS[n].lazy} for n in loaders},
        "sizes": [],
    }
    start = time.perf_counter()
    for gb, n in zip(sizes, trials):
        log(f"size {gb:g} GB: {n} trial(s) x {len(loaders)} loaders x {modes}")
        results["sizes"].append(run_size(gb, n, loaders, modes, rng, args))
    results["wall_s"] = time.perf_counter() - start
    results["loadavg_end"] = os.getloadavg()

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.json}")
    mismatched = [m for size in results["sizes"] for m in size["content_mismatches"]]
    if str(args.doc) != "-":
        report.update_doc(args.doc, "loaders", report.loaders_markdown(results))
        log(f"updated {args.doc}")
    if str(args.chart) != "-":
        report.chart(results, args.chart)
        log(f"wrote {args.chart}")
    print(report.loaders_markdown(results))
    if mismatched:
        log(f"FAILED: {len(mismatched)} trial(s) returned different bytes from the other loaders")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
