"""``snapload warm`` and ``snapload status``: page-cache residency of snapshots, for keep-warm
pings and container start scripts; and the registration of ``snapload bench``. No torch."""

from __future__ import annotations

import argparse
import time
from typing import Any

from snapload._progress import format_bytes, format_rate
from snapload.prefetch import prefetch, residency


def register_warm(subparsers: Any) -> None:
    p = subparsers.add_parser("warm", help="pull snapshots into the page cache and report residency")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--threads", type=int, default=4, metavar="N", help="reader threads per file (default 4)")
    p.set_defaults(handler=run_warm)


def run_warm(args: argparse.Namespace) -> int:
    for path in args.paths:
        before = residency(path)
        start = time.perf_counter()
        prefetch(path, threads=max(1, args.threads), background=False).wait()
        seconds = time.perf_counter() - start
        after = residency(path)
        pulled = max(0, after.resident_bytes - before.resident_bytes)
        print(
            f"{path}: {after.fraction:.0%} resident ({format_bytes(after.resident_bytes)} of {format_bytes(after.size)}); "
            f"was {before.fraction:.0%}, pulled {format_bytes(pulled)} in {seconds:.2f} s ({format_rate(pulled, seconds)})"
        )
    return 0


def register_status(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="how much of each snapshot is in the page cache (reads nothing)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(handler=run_status)


def run_status(args: argparse.Namespace) -> int:
    for path in args.paths:
        r = residency(path)
        print(f"{path}: {r.fraction:.1%} resident ({format_bytes(r.resident_bytes)} of {format_bytes(r.size)})")
    return 0


def register_bench(subparsers: Any) -> None:
    from snapload import bench

    p = subparsers.add_parser("bench", help="measure restore of a snapshot on this machine (cold and warm)")
    bench.add_arguments(p)
    p.set_defaults(handler=bench.run)
