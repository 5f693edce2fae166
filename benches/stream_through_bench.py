"""CUDA restore from S3 with a cache directory: streaming through the cache (the device copies
overlap the download, the cache file is written on the way) against downloading into the cache
first and restoring the local file afterwards (what snapload did before), and against a restore
without a cache. A real S3 server (SeaweedFS ``weed mini``) on 127.0.0.1; each trial starts with
an empty cache directory. Times are medians, in this process, after a warm-up of each mode.

On a machine without a GPU it runs the real CUDA restore code against the fake driver of
tests/fake_cuda.py ("device" memory is host memory, a copy is a memmove when its event is
waited on): the overlap of download and copies is real, the copy engine is not.

    python benches/stream_through_bench.py --size-mb 512 --trials 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from machine import provenance  # noqa: E402 - benches/machine.py: stdlib only

MODES = ("stream-through", "fetch-then-restore", "no-cache")


def restore_once(mode: str, url: str, cache: str) -> float:
    import torch

    import snapload
    from snapload import _remote, cuda

    t0 = time.perf_counter()
    if mode == "stream-through":
        tensors = snapload.restore(url, "cuda", cache_dir=cache)
    elif mode == "fetch-then-restore":
        tensors = cuda.restore(_remote.fetch_to_cache(url, cache)[0], "cuda")
    else:
        tensors = snapload.restore(url, "cuda")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    assert tensors
    return seconds


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mb", type=int, default=512)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import torch

    import snapload
    from _remote_servers import S3_ACCESS_KEY, S3_SECRET_KEY, seaweedfs

    fake = not torch.cuda.is_available()
    if fake:
        import _fake_cuda_device

        _fake_cuda_device.install_for_good()
    g = torch.Generator().manual_seed(0)
    per = args.size_mb * (1 << 20) // 16 // 2
    state = {f"layers.{i}.weight": torch.randn(per // 4096, 4096, generator=g).to(torch.bfloat16) for i in range(16)}
    rows: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="snapload-stream-bench-") as tmp, seaweedfs() as server:
        snap = Path(tmp) / "model.snap"
        snapload.snapshot(state, snap)
        size = snap.stat().st_size
        del state
        server.client().upload_file(str(snap), server.bucket, "bench/model.snap")
        os.environ.update(AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY,
                          AWS_ENDPOINT_URL=server.endpoint, AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        url = f"s3://{server.bucket}/bench/model.snap"
        for trial in range(args.trials + 1):  # trial 0 warms the server and this process up
            for mode in MODES:
                cache = os.path.join(tmp, f"cache-{mode}-{trial}")
                seconds = restore_once(mode, url, cache)
                shutil.rmtree(cache, ignore_errors=True)
                if trial:
                    rows[mode].append(seconds)
    result: dict[str, Any] = {"size_bytes": size, "trials": args.trials, "fake_cuda": fake, "modes": {}, **provenance()}
    for mode, times in rows.items():
        median = statistics.median(times)
        result["modes"][mode] = {"median_s": median, "gb_per_s": size / median / 1e9, "runs": times}
        print(f"{mode:20s} {median:7.3f} s  {size / median / 1e9:6.2f} GB/s  ({'fake' if fake else 'real'} CUDA)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
