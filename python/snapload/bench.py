"""``snapload bench PATH``: how fast a snapshot restores on this machine, against the file's own
read ceiling measured in the same run.

Each trial runs in a fresh process (``python -m snapload.bench --child``), so no trial inherits
another's mappings, allocator state or imported modules. A trial times ``snapload.restore`` until
the tensors are usable, then the touch of one byte in every 4 KiB page of every tensor: a CPU
restore is a lazy mapping, so "usable" is nearly free and the touch is where the bytes are read.
Cold trials evict the file from the page cache first and then *check* with mincore that it is
gone (some file systems ignore the eviction; a run that was not cold says so). Next to each trial
runs a plain sequential read of the same file with large buffered ``pread`` calls, cold and warm
like the trials: cold it is the disk's rate, the ceiling of a cold restore; warm it is a copy out
of the page cache, which a mapped restore does not make, so the table calls it "pread", not a
ceiling. Results are medians (with min-max) over the trials; GB = 10^9 bytes.

Importing this module is light (no torch); the child imports torch.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from snapload import _remote

PAGE = 4096
READ_CHUNK = 16 << 20
# A file counts as cold when at most this fraction of it is resident before a trial, and warm
# when at least 1 - this is.
COLD_TOLERANCE = 0.02
RESULT_PREFIX = "SNAPLOAD_BENCH_RESULT "
# restore()'s populate modes (snapload._restore.POPULATE_MODES, which imports torch; a test keeps
# the two equal).
POPULATE_MODES = ("auto", "none", "background", "sync")


# --------------------------------------------------------------------------------------------
# Measurement primitives, shared with benches/ so every loader is measured the same way.


def touch_pages(tensors: Mapping[str, Any] | Iterable[Any]) -> int:
    """Read one byte in every 4 KiB page of every tensor (and each tensor's last byte), so that a
    lazily mapped tensor is faulted in completely; returns the sum of those bytes so the reads
    cannot be optimised away. Aliases (the same bytes under two names) are touched once."""
    import torch

    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in values:
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        key = (t.data_ptr(), t.numel() * t.element_size())
        if key in seen:
            continue
        seen.add(key)
        flat = t.detach().reshape(-1)  # a view for the contiguous tensors every loader returns
        if flat.numel() == 1:
            flat = flat.as_strided((1,), (1,))
        b = flat.view(torch.uint8)
        total += int(b[::PAGE].sum()) + int(b[-1])
    return total


def tensor_bytes(tensors: Mapping[str, Any]) -> tuple[int, int]:
    """(tensor count, payload bytes counting aliased bytes once)."""
    seen: set[tuple[int, int]] = set()
    nbytes = 0
    for t in tensors.values():
        key = (t.data_ptr(), t.numel() * t.element_size())
        if key not in seen:
            seen.add(key)
            nbytes += key[1]
    return len(tensors), nbytes


def proc_memory() -> dict[str, float]:
    """This process's memory from /proc/self/status, in MB: peak RSS, and the RSS split into
    anonymous (private copies) and file-backed (mapped page cache, shared with the kernel)."""
    want = {"VmHWM": "peak_rss_mb", "VmRSS": "rss_mb", "RssAnon": "rss_anon_mb", "RssFile": "rss_file_mb"}
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in want:
                    out[want[key]] = int(value.split()[0]) * 1024 / 1e6
    except OSError:
        pass
    return out


def rusage_delta(before: resource.struct_rusage, after: resource.struct_rusage) -> dict[str, Any]:
    return {
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "major_faults": after.ru_majflt - before.ru_majflt,
        "ru_maxrss_mb": after.ru_maxrss * 1024 / 1e6,  # Linux reports KiB
        "cpu_user_s": after.ru_utime - before.ru_utime,
        "cpu_sys_s": after.ru_stime - before.ru_stime,
    }


def sequential_read(path: str, *, direct: bool = False, chunk: int = READ_CHUNK) -> tuple[float, int]:
    """Read the whole file front to back with ``chunk``-sized preads into one reused buffer;
    (seconds, bytes). ``direct`` opens with O_DIRECT (bypassing the page cache) into a
    page-aligned buffer from an anonymous mapping."""
    import mmap

    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags)
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT requires
    view = memoryview(buf)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        start = time.perf_counter()
        while offset < size:
            n = os.preadv(fd, [view], offset)
            if n <= 0:
                break
            offset += n
        return time.perf_counter() - start, offset
    finally:
        view.release()
        buf.close()
        os.close(fd)


def prepare_cache(path: str, mode: str) -> float:
    """Evict (``cold``) or read in (``warm``) the file; return the resident fraction after."""
    from snapload.prefetch import evict, residency

    if mode == "cold":
        evict(path)
    elif mode == "warm":
        sequential_read(path)
    return residency(path, validate=False).fraction  # any loader's file; reads nothing


def is_state_ok(mode: str, fraction: float) -> bool:
    if mode == "cold":
        return fraction <= COLD_TOLERANCE
    if mode == "warm":
        return fraction >= 1 - COLD_TOLERANCE
    return True


def spawn_json(argv: list[str], *, env: Mapping[str, str] | None = None, timeout: float = 1800) -> dict[str, Any]:
    """Run ``argv`` in a fresh process and return the JSON it printed after RESULT_PREFIX."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(env) if env else None, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    raise ChildFailed(f"{' '.join(argv[:4])}... exited {proc.returncode}:\n" + "\n".join(tail))


class ChildFailed(RuntimeError):
    """A trial's process died or printed no result."""


def emit(result: Mapping[str, Any]) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# One trial (the child).


def child(path: str, mode: str, eager: bool, populate: str = "none") -> dict[str, Any]:
    import torch  # noqa: F401 - imported before timing, as in a real handler

    import snapload
    from snapload.prefetch import residency

    fraction = residency(path, validate=False).fraction  # checked right before timing, in the timing process
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if eager:
        from snapload._pipeline import restore_to_host

        tensors, _ = restore_to_host(path)
    else:
        tensors = snapload.restore(path, populate=populate)
    usable = time.perf_counter()
    touch_pages(tensors)
    done = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    count, nbytes = tensor_bytes(tensors)
    return {
        "mode": mode,
        "eager": eager,
        "populate": "-" if eager else populate,
        "resident_before": fraction,
        "usable_s": usable - start,
        "touch_s": done - usable,
        "total_s": done - start,
        "tensors": count,
        "payload_bytes": nbytes,
        **rusage_delta(ru0, ru1),
        **proc_memory(),
    }


# --------------------------------------------------------------------------------------------
# The subcommand.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="a snapshot file")
    parser.add_argument("--trials", type=int, default=5, metavar="N", help="trials per mode, at least 1 (default 5; median shown)")
    parser.add_argument(
        "--mode", choices=("both", "cold", "warm"), default="both", help="page-cache state before each trial (default both)"
    )
    parser.add_argument(
        "--eager", action="store_true", help="also time the eager restore (every byte copied into one host buffer)"
    )
    parser.add_argument(
        "--populate",
        choices=POPULATE_MODES,
        default="none",
        help="restore(populate=...): none leaves every page to fault in on first touch; background fills "
        "the mapping with threads while the touch runs; sync before restore() returns; auto (restore()'s "
        "own default) is background when the file fits in half the available memory (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def median_range(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_mode(path: str, mode: str, trials: int, eager: bool, log: Any, populate: str = "none") -> dict[str, Any]:
    """``trials`` fresh-process trials in ``mode``, each preceded by a ceiling read in the same
    cache state."""
    ceilings: list[float] = []
    rows: list[dict[str, Any]] = []
    fractions: list[float] = []
    for i in range(trials):
        before = prepare_cache(path, mode)
        seconds, nbytes = sequential_read(path)
        ceilings.append(nbytes / seconds / 1e9)
        fractions.append(before)
        prepare_cache(path, mode)
        argv = [sys.executable, "-m", "snapload.bench", "--child", path, "--child-mode", mode]
        if eager:
            argv.append("--child-eager")
        else:
            argv += ["--child-populate", populate]
        row = spawn_json(argv)
        rows.append(row)
        log(
            f"  {mode}{' eager' if eager else ''} trial {i + 1}/{trials}: usable {row['usable_s']:.3f} s, "
            f"touch {row['touch_s']:.3f} s ({row['resident_before']:.0%} resident before)"
        )
    payload = rows[0]["payload_bytes"]
    totals = [r["total_s"] for r in rows]
    resident = [r["resident_before"] for r in rows]
    return {
        "mode": mode,
        "eager": eager,
        "populate": "-" if eager else populate,
        "state_ok": all(is_state_ok(mode, f) for f in resident + fractions),
        "resident_before": median_range(resident),
        "usable_s": median_range([r["usable_s"] for r in rows]),
        "touch_s": median_range([r["touch_s"] for r in rows]),
        "total_s": median_range(totals),
        "gb_per_s": payload / statistics.median(totals) / 1e9,
        "ceiling_gb_per_s": median_range(ceilings),
        "peak_rss_mb": statistics.median(r.get("peak_rss_mb", 0.0) for r in rows),
        "rss_anon_mb": statistics.median(r.get("rss_anon_mb", 0.0) for r in rows),
        "major_faults": statistics.median(r["major_faults"] for r in rows),
        "minor_faults": statistics.median(r["minor_faults"] for r in rows),
        "trials": rows,
    }


def format_table(result: Mapping[str, Any]) -> str:
    lines = [
        f"snapload bench {result['path']}: {result['payload_bytes'] / 1e9:.3f} GB in {result['tensors']} tensors, "
        f"{result['trials']} trial(s) per mode, each in a fresh process; medians (min-max)",
        "",
    ]
    head = ("", "usable", "touch all pages", "total", "GB/s", "pread GB/s", "vs pread", "peak RSS")
    rows = [head]
    for m in result["modes"]:
        label = m["mode"] + (" eager" if m["eager"] else "")
        if m.get("populate", "none") not in ("none", "-"):
            label += f" populate={m['populate']}"
        res = m["resident_before"]["median"]
        label += f" ({res:.0%} cached)"
        if not m["state_ok"]:
            label += " NOT " + m["mode"].upper()

        def fmt(d: Mapping[str, float]) -> str:
            return f"{d['median']:.3f} s ({d['min']:.3f}-{d['max']:.3f})"

        ceil = m["ceiling_gb_per_s"]["median"]
        rows.append(
            (
                label,
                fmt(m["usable_s"]),
                fmt(m["touch_s"]),
                fmt(m["total_s"]),
                f"{m['gb_per_s']:.2f}",
                f"{ceil:.2f}",
                f"{m['gb_per_s'] / ceil:.0%}" if ceil else "-",
                f"{m['peak_rss_mb']:.0f} MB",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += ["", "usable: snapload.restore() returned (a lazy mapping: pages are read on first touch);"]
    if any(m["eager"] for m in result["modes"]):
        lines.append("  eager: every byte copied into one host buffer by the restore pipeline;")
    populate = {m.get("populate") for m in result["modes"]}
    if "sync" in populate:
        lines.append("  populate=sync: restore() returned once threads had read every page into the mapping;")
    if "background" in populate:
        lines.append("  populate=background: threads fill the mapping while the touch runs;")
    lines += [
        "touch all pages: one byte of every 4 KiB page of every tensor; total is what compares.",
        "pread GB/s: a buffered sequential pread of the same file into one 16 MiB buffer, in the same cache",
        "  state: cold, the rate the disk delivers, the ceiling for a cold restore; warm, a copy out of the page",
        "  cache, which a restore that maps the file never makes, so warm restores can exceed 100% of it.",
        "GB = 10^9 bytes, MB = 10^6 bytes.",
    ]
    if any(not m["state_ok"] for m in result["modes"]):
        lines.append(
            "NOT COLD/WARM: the page cache was not in the wanted state before a trial (eviction ignored by this "
            "file system, dirty pages, or another process mapping the file); those numbers do not mean what "
            "their label says."
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from snapload import _native

    path = os.fspath(args.path)
    if _remote.is_url(path):  # no page cache to make cold or warm: timed fresh-process restores
        return _remote.bench_url(path, max(1, args.trials), args.json)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a snapshot file", path)
    if args.trials < 1:
        print("snapload: error: --trials must be at least 1", file=sys.stderr)
        return 2
    _native.Snapshot(path)  # validates the header; raises a SnapshotError naming the file
    log = (lambda msg: print(msg, file=sys.stderr)) if not args.json else (lambda msg: None)
    modes = ("cold", "warm") if args.mode == "both" else (args.mode,)
    results = []
    try:
        for mode in modes:
            results.append(run_mode(path, mode, args.trials, False, log, args.populate))
            if args.eager:
                results.append(run_mode(path, mode, args.trials, True, log))
    except ChildFailed as e:
        print(f"snapload: error: a benchmark trial failed: {e}", file=sys.stderr)
        return 1
    first = results[0]["trials"][0]
    out = {
        "path": path,
        "payload_bytes": first["payload_bytes"],
        "tensors": first["tensors"],
        "trials": args.trials,
        "nproc": os.cpu_count(),
        "modes": results,
    }
    print(json.dumps(out, indent=2) if args.json else format_table(out))
    return 0


def _child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m snapload.bench")
    p.add_argument("--child", required=True, metavar="PATH")
    p.add_argument("--child-mode", default="any")
    p.add_argument("--child-eager", action="store_true")
    p.add_argument("--child-populate", default="none")
    a = p.parse_args(argv)
    emit(child(a.child, a.child_mode, a.child_eager, a.child_populate))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
