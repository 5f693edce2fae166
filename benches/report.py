"""Markdown tables and the PNG chart from a run's JSON (benches/results/latest.json).

``update_doc`` rewrites only the text between ``<!-- bench:NAME:start -->`` and
``<!-- bench:NAME:end -->`` in docs/benchmarks.md, so hand-written notes around the generated
tables survive a re-run. ``python benches/report.py`` regenerates both from the saved JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _s(d: dict[str, float] | None, digits: int = 3) -> str:
    if not d:
        return "-"
    return f"{d['median']:.{digits}f}"


def _range(d: dict[str, float] | None, digits: int = 3) -> str:
    if not d:
        return "-"
    return f"{d['median']:.{digits}f} ({d['min']:.{digits}f}–{d['max']:.{digits}f})"


def machine_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    fs = m.get("data_fs", {})
    v = m.get("versions", {})
    lines = [
        f"- Command: `{results['command']}` (shuffle seed {results['seed']})",
        f"- Date: {results['started']}; wall time {results.get('wall_s', 0) / 60:.1f} min",
        f"- Machine: {m['nproc']} cores ({m.get('cpu') or 'unknown CPU'}), {m.get('ram_gib')} GiB RAM, "
        f"kernel {m['kernel']}, Python {m['python']}, GPU: {'yes' if m.get('gpu') else 'none'}",
        f"- bench-data file system: {fs.get('fstype', '?')} on {fs.get('device', '?')} "
        f"(mounted at {fs.get('mount', '?')}, {fs.get('options', '')}; read_ahead_kb {fs.get('read_ahead_kb', '?')}); "
        f"transparent huge pages: {m.get('thp') or '?'}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Code: {format_git(m.get('git'))}",
        f"- Load average (1/5/15 min) at start {format_loadavg(results.get('loadavg_start'))}, "
        f"at end {format_loadavg(results.get('loadavg_end'))}",
    ]
    return "\n".join(lines)


def format_git(g: dict[str, Any] | None) -> str:
    if not g or not g.get("commit"):
        return "commit not recorded (results written before benches recorded it)"
    if g.get("from_env"):
        return f"commit {g['commit'][:12]} (given by SNAPLOAD_GIT_COMMIT; no git on the machine to check it)"
    return f"commit {g['commit'][:12]}" + (" with uncommitted changes" if g.get("dirty") else "")


def format_loadavg(x: Any) -> str:
    return "/".join(f"{v:.1f}" for v in x) if x else "?"


def size_markdown(results: dict[str, Any], size: dict[str, Any]) -> str:
    ck = size["checkpoint"]
    shape = ck["shape"]
    c = size["ceilings"]
    out = [
        f"### {size['payload_bytes'] / 1e9:.2f} GB ({ck['tensors']} bf16 tensors: {shape['layers']} layers, "
        f"hidden {shape['hidden']}, intermediate {shape['intermediate']}, vocab {shape['vocab']})",
        "",
        "Ceilings, same run, median (min–max) GB/s: "
        + "; ".join(
            f"{label} {_range(c.get(key), 2)}"
            for key, label in (
                ("buffered_cold", "buffered read cold"),
                ("direct_cold", "O_DIRECT read"),
                ("buffered_warm", "buffered read warm"),
                ("memcpy_warm", "memcpy"),
                ("memcpy_fresh_warm", "memcpy into fresh memory"),
            )
            if c.get(key)
        )
        + ".",
        "",
    ]
    summary = size["summary"]
    for mode in ("cold", "warm"):
        rows = [s for s in summary.values() if s["mode"] == mode]
        if not rows:
            continue
        ceiling = c.get(f"{mode}_ceiling")
        which = "the better of buffered and O_DIRECT read" if mode == "cold" else "memcpy"
        out += [
            f"**{mode}** (ceiling {ceiling:.2f} GB/s = {which}; times in seconds, median (min–max) of "
            f"{max(s['trials'] for s in rows)} trials)" if ceiling else f"**{mode}**",
            "",
            "| loader | cached before | usable | touch every page | total | GB/s | of ceiling | time ÷ snapload "
            "| peak RSS | RSS added | private added | faults minor / major |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in rows:
            label = results["loaders"][s["loader"]]["label"]
            if "total_s" not in s:
                out.append(f"| {label} | failed: {s['errors'][0].splitlines()[-1][:80]} |" + " |" * 10)
                continue
            state = f"{s['resident_before']['max']:.0%}" if mode == "cold" else f"{s['resident_before']['min']:.0%}"
            if not s["state_ok"]:
                state += f" **NOT {mode.upper()}**"
            out.append(
                f"| {label} | {state} | {_s(s['usable_s'])} | {_s(s['touch_s'])} | {_range(s['total_s'])} | "
                f"{s['gb_per_s']:.2f} | {s['of_ceiling']:.0%} | {s.get('vs_snapload', float('nan')):.2f}× | "
                f"{s['peak_rss_mb']:.0f} MB | {s['rss_added_mb']:.0f} MB | {s['anon_added_mb']:.0f} MB | "
                f"{s['minor_faults']:.0f} / {s['major_faults']:.0f} |"
            )
            if s["errors"]:
                out.append(f"| ↳ {len(s['errors'])} trial(s) failed | " + " |" * 11)
        out.append("")
    return "\n".join(out)


def content_markdown(results: dict[str, Any]) -> str:
    """The cross-loader check's verdict, as one line."""
    if "content_check" not in results:
        return "- Same bytes from every loader: not checked (results written before benches hashed every tensor)"
    bad = [m for s in results["sizes"] for m in s.get("content_mismatches", [])]
    if bad:
        return f"- **Loaders returned different bytes** ({len(bad)} trial(s)): " + "; ".join(
            f"{m['loader']} {m['mode']} trial {m['trial']}: {m['count_differing']} tensor(s) differ from {m['reference_loader']}"
            for m in bad[:5]
        )
    return "- Same bytes from every loader: every trial's tensors hashed (CRC32 of every byte), all digests equal"


def loaders_markdown(results: dict[str, Any]) -> str:
    parts = [machine_markdown(results), content_markdown(results)]
    if results.get("focused"):
        parts.append(f"- **Focused re-run** of {len(results['loaders'])} loader(s), not the full set")
    parts.append("")
    parts += [size_markdown(results, s) for s in results["sizes"]]
    return "\n".join(parts).rstrip() + "\n"


def update_doc(path: Path, name: str, body: str) -> None:
    """Replace the ``name`` section of ``path`` (created with both markers if missing)."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def chart(results: dict[str, Any], path: Path) -> None:
    """Per size and cache state: usable (dark) and touch (light) seconds per loader, with the
    min–max of the total as an error bar and the ceiling's time as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    modes = [m for m in ("cold", "warm") if any(s["mode"] == m for z in sizes for s in z["summary"].values())]
    fig, axes = plt.subplots(len(sizes), len(modes), figsize=(6.5 * len(modes), 0.45 * len(results["loaders"]) * len(sizes) + 1.5 * len(sizes)), squeeze=False)
    for i, size in enumerate(sizes):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            rows = [s for s in size["summary"].values() if s["mode"] == mode and "total_s" in s]
            labels = [results["loaders"][s["loader"]]["label"] for s in rows]
            usable = [s["usable_s"]["median"] for s in rows]
            touch = [s["touch_s"]["median"] for s in rows]
            tot = [s["total_s"] for s in rows]
            y = range(len(rows))
            ax.barh(y, usable, color="#1f4e79", label="until usable")
            ax.barh(y, touch, left=usable, color="#9dc3e6", label="touching every page")
            err = [
                [max(0.0, u + t - d["min"]) for u, t, d in zip(usable, touch, tot)],
                [max(0.0, d["max"] - u - t) for u, t, d in zip(usable, touch, tot)],
            ]
            ax.errorbar([u + t for u, t in zip(usable, touch)], list(y), xerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
            ceiling = size["ceilings"].get(f"{mode}_ceiling")
            if ceiling:
                ax.axvline(size["payload_bytes"] / ceiling / 1e9, color="red", ls="--", lw=1, label="ceiling (same bytes)")
            ax.set_yticks(list(y), labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel("seconds (median; bar = min–max of total)")
            ax.set_title(f"{size['payload_bytes'] / 1e9:.2f} GB, {mode} page cache", fontsize=10)
            if i == 0 and j == 0:
                ax.legend(fontsize=7, loc="lower right")
    m = results["machine"]
    fig.suptitle(f"Loading a bf16 LLaMA-shaped checkpoint to CPU tensors ({m['nproc']} cores, {m['kernel']})", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.975))  # room for the suptitle
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regenerate the tables and chart from a saved run.")
    ap.add_argument("json", type=Path, nargs="?", default=HERE / "results" / "latest.json")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--chart", type=Path, default=REPO / "docs" / "bench.png")
    args = ap.parse_args(argv)
    results = json.loads(args.json.read_text())
    update_doc(args.doc, "loaders", loaders_markdown(results))
    chart(results, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
