"""CPU time of a prefetch from S3 into a cache directory, split between this process (snapload's
client: HTTP, checksums, copies, the cache file) and the S3 server (SeaweedFS on 127.0.0.1, which
shares this machine's cores). handlers_bench.py --source s3 runs the server on the same cores as
the template, so a prefetch that overlaps the imports slows them by both shares; with a remote
bucket only the client's would remain. This measures the two.

    python benches/s3_prefetch_cpu.py --trials 3     # the handlers model (bench-data/handlers-llama)
    python benches/s3_prefetch_cpu.py --into arena   # the same fetch into host memory, no cache file
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from machine import provenance  # noqa: E402

DATA = HERE.parent / "bench-data" / "handlers-llama" / "model.snap"


def cpu_self() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def cpu_of(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--snapshot", type=Path, default=DATA)
    p.add_argument("--into", choices=("cache", "arena"), default="cache",
                   help="arena: fetch into a pre-touched host buffer instead (what restore() does without a cache)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    from _remote_servers import S3_ACCESS_KEY, S3_SECRET_KEY, seaweedfs

    import snapload

    rows = []
    with seaweedfs() as server, tempfile.TemporaryDirectory(prefix="s3-prefetch-cpu-") as tmp:
        os.environ.update(AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY, AWS_ENDPOINT_URL=server.endpoint,
                          AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
        server.client().upload_file(str(args.snapshot), server.bucket, "cpu/model.snap")
        url = f"s3://{server.bucket}/cpu/model.snap"
        weed = psutil.Process(server.proc.pid)
        arena = None
        if args.into == "arena":
            import numpy as np

            from snapload import _native

            remote = _native.Snapshot(url)
            arena = np.ones(remote.file_size, dtype=np.uint8)  # its pages touched before the clock
        for trial in range(args.trials):
            cache = Path(tmp) / f"cache-{trial}"
            time.sleep(1.0)  # let the server settle
            c0, s0, t0 = cpu_self(), cpu_of(weed), time.perf_counter()
            if arena is not None:
                remote.fetch_into(arena)  # fetched and verified into host memory
            else:
                snapload.prefetch(url, cache_dir=cache).wait()  # fetched, verified, synced, published
            wall, client, srv = time.perf_counter() - t0, cpu_self() - c0, cpu_of(weed) - s0
            rows.append({"wall_s": wall, "client_cpu_s": client, "server_cpu_s": srv})
            print(f"trial {trial}: {wall:.2f} s wall, client {client:.2f} CPU-s, server {srv:.2f} CPU-s", file=sys.stderr)
            shutil.rmtree(cache, ignore_errors=True)
    size = args.snapshot.stat().st_size
    summary = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"{size / 1e9:.2f} GB: wall {summary['wall_s']:.2f} s, client {summary['client_cpu_s']:.2f} CPU-s, "
          f"server {summary['server_cpu_s']:.2f} CPU-s (medians of {args.trials})")  # fmt: skip
    out = args.out or HERE / "results" / f"s3_prefetch_cpu{'' if args.into == 'cache' else '-arena'}.json"
    out.write_text(json.dumps({"into": args.into, "bytes": size, "trials": rows, "median": summary, **provenance()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
