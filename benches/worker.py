"""One benchmark trial in a fresh process: ``python benches/worker.py LOADER PATH [--mode M]``.

Imports the loader's libraries, checks (mincore) how much of PATH is in the page cache, then
times the load until the tensors are usable and the touch of every page of every tensor (the
same ``snapload.bench.touch_pages`` for every loader), and prints one JSON line after
``snapload.bench.RESULT_PREFIX``. The parent prepares the page cache (evict or read) and spawns
this script; the resident fraction measured here, right before timing, is what the report trusts.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import content  # noqa: E402 - stdlib only
from loaders import LOADERS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("loader", choices=sorted(LOADERS))
    ap.add_argument("path")
    ap.add_argument("--mode", default="any", help="the cache state the parent prepared (recorded only)")
    args = ap.parse_args(argv)
    loader = LOADERS[args.loader]

    t_import = time.perf_counter()
    import torch

    loader.imports()
    from snapload.bench import emit, proc_memory, rusage_delta, tensor_bytes, touch_pages
    from snapload.prefetch import residency

    imports_s = time.perf_counter() - t_import
    fraction = residency(args.path, validate=False).fraction  # any loader's file
    mem0 = proc_memory()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    tensors, keepalive = loader.load(args.path)
    usable = time.perf_counter()
    checksum = touch_pages(tensors)
    done = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    count, nbytes = tensor_bytes(tensors)
    memory = proc_memory()  # before the content hash, which reads every byte again
    hash_start = time.perf_counter()
    crcs = content.tensor_crcs(tensors)
    extra = {
        "content_crcs": crcs,
        "content_digest": content.digest(tensors, crcs),
        "hash_s": time.perf_counter() - hash_start,
    }
    if args.loader == "snapload_eager":
        extra["read_paths"] = keepalive.read_paths
    emit(
        {
            "loader": args.loader,
            "path": args.path,
            "mode": args.mode,
            "resident_before": fraction,
            "usable_s": usable - start,
            "touch_s": done - usable,
            "total_s": done - start,
            "imports_s": imports_s,
            "process_s": done - _START,
            "tensors": count,
            "payload_bytes": nbytes,
            "touch_checksum": checksum,
            "torch_threads": torch.get_num_threads(),
            "rss_before_mb": mem0.get("rss_mb", 0.0),
            "anon_before_mb": mem0.get("rss_anon_mb", 0.0),
            **rusage_delta(ru0, ru1),
            **memory,
            **extra,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
