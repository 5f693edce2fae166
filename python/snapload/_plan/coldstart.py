"""Cold-start times: a number of seconds, or a figure measured by snapload's own benchmarks.

Two report shapes are read:

- ``benches/coldstart.py`` (benches/results/coldstart.json): ``summary[VARIANT].phases.total``,
  the median time from spawning the handler process to its first forward pass with the weights
  out of the page cache. This is the whole cold start, and the figure to plan with. Name the
  variant as ``FILE:VARIANT`` (e.g. ``coldstart.json:st_assign`` and
  ``coldstart.json:snapload_prefetch_nowait``).
- ``snapload bench PATH --json``: the ``cold`` mode's (not eager) ``total_s.median``, the time to
  restore the snapshot and touch every page from a cold page cache. This is the weight load only;
  a real cold start adds container start, interpreter, imports and model construction.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

HELP = (
    "cold-start seconds, or a measured report: FILE:VARIANT from benches/coldstart.py "
    "(summary[VARIANT].phases.total: median spawn to first forward, weights not cached), or the "
    "JSON of `snapload bench PATH --json` (the cold, non-eager mode's total_s.median: restore plus "
    "touching every page; the weight load only)"
)


@dataclass(frozen=True)
class ColdStart:
    seconds: float
    label: str


def parse_cold_start(spec: str | float) -> ColdStart:
    """A number of seconds, or ``FILE`` / ``FILE:VARIANT`` naming a measured report."""
    if not isinstance(spec, str):
        return _checked(float(spec), f"{float(spec):g} s")
    text = spec.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return _checked(seconds, f"{seconds:g} s")
    path, variant = text, None
    if not os.path.exists(text) and ":" in text:
        path, _, variant = text.rpartition(":")
    with open(path) as f:  # FileNotFoundError names the file
        try:
            report = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: not a JSON report ({e})") from None
    if isinstance(report, dict) and isinstance(report.get("summary"), dict):
        return _from_coldstart_report(path, report["summary"], variant)
    if isinstance(report, dict) and isinstance(report.get("modes"), list):
        if variant is not None:
            raise ValueError(f"{path}: a `snapload bench` report has no variants (got {variant!r})")
        return _from_bench(path, report["modes"])
    raise ValueError(f"{path}: neither a benches/coldstart.py report (no 'summary') nor `snapload bench --json` output (no 'modes')")


def _checked(seconds: float, label: str) -> ColdStart:
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"cold start must be a number of seconds >= 0, got {seconds:g}")
    return ColdStart(seconds, label)


def _from_coldstart_report(path: str, summary: dict[str, Any], variant: str | None) -> ColdStart:
    totals = {
        name: v["phases"]["total"]
        for name, v in summary.items()
        if isinstance(v, dict) and isinstance(v.get("phases"), dict) and isinstance(v["phases"].get("total"), (int, float))
    }
    listing = ", ".join(f"{k} ({s:.2f} s)" for k, s in totals.items())
    if variant is None:
        raise ValueError(f"{path}: name the variant as {path}:VARIANT; this report has {listing}")
    if variant not in totals:
        raise ValueError(f"{path}: no variant {variant!r}; this report has {listing}")
    return _checked(float(totals[variant]), f"{variant} {totals[variant]:.2f} s")


def _from_bench(path: str, modes: list[Any]) -> ColdStart:
    for m in modes:
        if isinstance(m, dict) and m.get("mode") == "cold" and not m.get("eager"):
            seconds = float(m["total_s"]["median"])
            return _checked(seconds, f"snapload bench cold {seconds:.2f} s")
    raise ValueError(f"{path}: this `snapload bench` report has no cold (non-eager) mode; run it with --mode cold or both")
