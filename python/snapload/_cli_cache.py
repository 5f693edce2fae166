"""``snapload warm`` and ``snapload status``: page-cache residency of snapshots, for keep-warm
pings and container start scripts; and the registration of ``snapload bench``. No torch.

Every path is validated as a snapshot first (header only, as ``snapload inspect`` does), before
any file is warmed: a folder, a missing, truncated or foreign file fails with the same message
and exit status as ``inspect`` gives, instead of a residency report about the wrong bytes.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from snapload._progress import format_bytes, format_rate
from snapload._remote import is_url, warm_url
from snapload.prefetch import prefetch, residency

WARM_THREADS = 4


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (a usage error otherwise, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register_warm(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "warm",
        help="pull snapshots into the page cache and report residency",
        description="Check that each PATH is a snapshot (header only), then read it into the page cache "
        "with reader threads at normal priority and report how much of it is resident before and after. "
        "For keep-warm pings and container start scripts; does not import torch.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="snapshot files")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=WARM_THREADS,
        metavar="N",
        help=f"reader threads per file, at least 1 (default {WARM_THREADS})",
    )
    p.set_defaults(handler=run_warm)


def validate_all(paths: list[str]) -> None:
    """Every path must be a snapshot before any is touched; same messages as ``inspect``."""
    from snapload.cli import open_snapshot

    for path in paths:
        open_snapshot(path)


def run_warm(args: argparse.Namespace) -> int:
    validate_all(args.paths)
    for path in args.paths:
        if is_url(path):  # a URL warms the local cache (SNAPLOAD_CACHE_DIR) instead
            path = warm_url(path)
        before = residency(path, validate=False)
        start = time.perf_counter()
        prefetch(path, threads=args.threads, background=False, validate=False).wait()
        seconds = time.perf_counter() - start
        after = residency(path, validate=False)
        pulled = max(0, after.resident_bytes - before.resident_bytes)
        print(
            f"{path}: {after.fraction:.0%} resident ({format_bytes(after.resident_bytes)} of {format_bytes(after.size)}); "
            f"was {before.fraction:.0%}, pulled {format_bytes(pulled)} in {seconds:.2f} s ({format_rate(pulled, seconds)})"
        )
    return 0


def register_status(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="how much of each snapshot is in the page cache (reads only the header)",
        description="Report how much of each snapshot PATH is in the page cache, asked of the kernel with "
        "mincore. Measured before the header is read to check that PATH is a snapshot, so the check does "
        "not count. Does not import torch.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="snapshot files")
    p.set_defaults(handler=run_status)


def run_status(args: argparse.Namespace) -> int:
    from snapload.cli import reject_directory

    for path in args.paths:
        reject_directory(path)
    measured = [residency(path, validate=False) for path in args.paths]  # before the headers are read
    validate_all(args.paths)
    for r in measured:
        print(f"{r.path}: {r.fraction:.1%} resident ({format_bytes(r.resident_bytes)} of {format_bytes(r.size)})")
    return 0


def register_bench(subparsers: Any) -> None:
    from snapload import bench

    p = subparsers.add_parser(
        "bench",
        help="measure restore of a snapshot on this machine (cold and warm)",
        description="Time snapload.restore() of PATH plus a touch of every page, each trial in a fresh "
        "process, with the page cache evicted (cold) or filled (warm) first and checked with mincore; "
        "printed next to a plain sequential read of the same file. Needs torch.",
    )
    bench.add_arguments(p)
    p.set_defaults(handler=bench.run)
