"""Snapshots named by URL (``s3://bucket/key``, ``http(s)://host/path``): the one place that tells
URLs from paths and routes them, so that ``restore``, ``open``, ``prefetch`` and the CLI each need
one small hook. The bytes themselves are fetched by the Rust core (ranged GETs, version pinned,
checksums always verified).

With a cache directory (``cache_dir=`` or ``SNAPLOAD_CACHE_DIR``) a CPU restore first fetches
the URL into the entry's temporary file there (verified) and maps it like any file (zero-copy:
the tensors are views of the cache file's page cache pages); a CUDA restore streams through the
cache instead: its reader threads fetch ranges into the pinned ring and write each into the
entry's temporary file as it lands, so the device copies overlap the download. Either way the
restore returns as soon as its tensors are ready, and the entry is published (synced, renamed to
its final name) on a thread of the core's meanwhile: the ``fsync`` of a whole model stays off
the cold start's path. ``wait_for_cache()`` waits for that, and so does interpreter exit. Until
it is published the file keeps its temporary name, so a process killed meanwhile leaves nothing
that looks complete (the next restore fetches again). Without a cache directory, a CPU restore
fetches straight into one host arena and a CUDA restore streams through the ring.

Ctrl-C stops any of these within a moment (the native calls look for signals while they wait),
drops the requests in flight, and publishes nothing.
"""

from __future__ import annotations

import atexit
import mmap
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from snapload import _native

if TYPE_CHECKING:
    import torch

CACHE_ENV = "SNAPLOAD_CACHE_DIR"


def is_url(path: object) -> bool:
    """True for ``s3://``, ``http://`` and ``https://`` strings; paths (and PathLikes) are never
    URLs, so a local file named ``s3:`` keeps working when passed as a ``Path``."""
    return isinstance(path, str) and _native.is_url(path)


def cache_dir_for(cache_dir: str | os.PathLike[str] | None) -> str | None:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    return os.environ.get(CACHE_ENV) or None


def fetch_to_cache(url: str, cache_dir: str | os.PathLike[str]) -> tuple[str, bool]:
    """The local verified copy of ``url`` in ``cache_dir`` and whether this call downloaded it.
    Processes asking at once share one download."""
    path, downloaded = _native.fetch_to_cache(url, os.fspath(cache_dir))
    return os.fspath(path), downloaded


# Cache entries this process is publishing in the background (see the module doc).
_publishing: list[_native.CacheEntry] = []
_publishing_lock = threading.Lock()


def _forget_the_parents_publishing() -> None:
    # A forked child has none of its parent's threads: joining one would be undefined. The parent
    # publishes its entries; the child has nothing to wait for.
    global _publishing_lock
    _publishing.clear()
    _publishing_lock = threading.Lock()  # a copy of the lock may have been held mid-fork


os.register_at_fork(after_in_child=_forget_the_parents_publishing)


def _publish_in_background(entry: _native.CacheEntry) -> None:
    with _publishing_lock:
        entry.publish_in_background()
        _publishing.append(entry)


def wait_for_cache() -> list[str]:
    """Wait until every cache file that this process's restores are publishing in the background
    (see ``restore(url, cache_dir=...)``) is synced and under its final name; return those paths.
    Raises the first failure (``OSError`` naming the file; that entry was then removed, so the
    next restore of its URL fetches again). Interpreter exit does this too."""
    with _publishing_lock:
        entries = list(_publishing)
        _publishing.clear()
    paths: list[str] = []
    failure: BaseException | None = None
    for entry in entries:
        try:
            paths.append(entry.wait_published())
        except Exception as e:  # noqa: BLE001 - every entry is waited for; the first failure is raised
            failure = failure or e
    if failure is not None:
        raise failure
    return paths


def _publish_before_exit() -> None:
    try:
        wait_for_cache()
    except Exception as e:  # noqa: BLE001 - at exit a failure can only be reported
        print(f"snapload: a cache file was not published: {e}", file=sys.stderr)


atexit.register(_publish_before_exit)  # nothing to do, at once, when nothing is being published


def cached_snapshot(url: str, cache_dir: str) -> tuple[_native.Snapshot, str]:
    """The local snapshot of ``url`` in ``cache_dir`` and its final path: the published file, or
    the entry's temporary file just filled (verified), opened before its publishing starts in the
    background (the open file survives the rename)."""
    entry = _native.CacheEntry(url, cache_dir)
    if entry.snapshot is None:
        return _native.Snapshot(entry.path), entry.path
    try:
        local = entry.fill()
    except BaseException:
        entry.abort()  # the temporary file goes, the lock is released: the next process fetches
        raise
    _publish_in_background(entry)
    return local, entry.path


def restore_cpu(url: str) -> dict[str, torch.Tensor]:
    """Fetch the whole object into one host arena (many concurrent ranged GETs, checksums
    verified as the parts land); every tensor is a view of it, as with a mapped file. An
    in-memory ``prefetch(url)`` of this process hands over its memory instead."""
    import torch

    from snapload._restore import tensor_table, views_of

    prefetched = _take_prefetched(url)
    if prefetched is not None:
        snap, memory = prefetched
        # The tensors keep `memory` alive (torch.frombuffer holds a reference to it).
        arena = torch.frombuffer(memory, dtype=torch.uint8)
    else:  # none, or it failed (the fetch below raises what is wrong, if it still is)
        snap = _native.Snapshot(url)
        arena = torch.empty(snap.file_size, dtype=torch.uint8)
        snap.fetch_into(arena.numpy())
    return views_of(arena, tensor_table(snap), path=url)


def restore_cuda_through_cache(
    url: str, device: torch.device, cache_dir: str, *, verify: bool, threads: int, cuda_options: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """A CUDA restore of ``url`` that fills the cache entry as it reads (see the module doc). If
    the entry is published already, or another process publishes it while this one waits for
    the entry's lock, the local file is restored instead. Remote reads are always verified."""
    from snapload import cuda

    entry = _native.CacheEntry(url, cache_dir)
    snapshot = entry.snapshot
    if snapshot is None:
        return cuda.restore(entry.path, device, verify=verify, threads=threads, **cuda_options)
    try:
        tensors = cuda.restore(snapshot, device, threads=threads, **cuda_options)
    except BaseException:
        entry.abort()  # the temporary file goes, the lock is released: the next process fetches
        raise
    _publish_in_background(entry)  # every tensor was checked by the pipeline's finish()
    return tensors


def restore(url: str, device: torch.device, *, threads: int, cuda_options: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Restore a URL without a cache: CPU into a host arena, CUDA through the pinned ring (the
    pipeline reads remote snapshots with ranged GETs and always verifies them)."""
    if device.type == "cpu":  # restore() refused CUDA options for the CPU already
        return restore_cpu(url)
    from snapload import cuda

    return cuda.restore(url, device, threads=threads, **cuda_options)


def verify(url: str, threads: int = 0) -> tuple[int, int]:
    """Check every tensor's checksum of a remote snapshot without keeping it: the pipeline reads
    it through a small ring (ranged GETs, always verified) into a sink that drops each slot.
    Returns (tensors, data bytes). No torch."""
    from snapload._pipeline import default_threads

    snap = _native.Snapshot(url)
    ring = _native.Ring(4, 8 << 20)
    pipeline = _native.Pipeline(snap, ring, threads or default_threads(), "auto", True)
    try:
        while (filled := pipeline.next_filled()) is not None:
            pipeline.release(filled[0])
        counts = pipeline.finish()
    except BaseException:
        pipeline.cancel()
        raise
    return len(snap.tensors()), counts["bytes"]


class _BackgroundFetch:
    """A download on a daemon thread, for ``prefetch()`` of a URL. ``wait()`` re-raises what the
    download raised; ``cancel()`` stops it. A KeyboardInterrupt during ``wait()`` cancels the
    download before it propagates: only the main thread sees Ctrl-C, so the download must be told."""

    def __init__(self, url: str, thread_name: str) -> None:
        self.url = url
        self.error: BaseException | None = None
        self._cancel = _native.CancelToken()
        # Waited on instead of Thread.join: on Python 3.11 a join interrupted by Ctrl-C marks the
        # thread stopped while it still runs (bpo-45274's fix), so a second join returns at once.
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._main, name=thread_name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - handed to wait()
            self.error = e
        finally:
            self._finished.set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def _wait(self) -> None:
        try:
            self._finished.wait()
        except BaseException:
            self.cancel()
            raise
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        """Stop the download and wait for its thread (moments: requests in flight are dropped)."""
        self._cancel.cancel()
        self._finished.wait()

    def detach(self) -> None:
        """Let the download go on in the background (it always does; kept for parity)."""


class CachePrefetch(_BackgroundFetch):
    """``prefetch()`` of a URL with a cache directory: fetched into it (shared with any other
    process doing the same), so that a later ``restore(url, cache_dir=...)`` finds it local.
    ``wait()`` returns the published file's path; after ``cancel()`` no file is published."""

    def __init__(self, url: str, cache_dir: str) -> None:
        super().__init__(url, "snapload-cache-fetch")
        self.path: str | None = None
        self._cache_dir = cache_dir
        self._thread.start()

    def _run(self) -> None:
        self.path = _native.fetch_to_cache(self.url, self._cache_dir, self._cancel)[0]

    def wait(self) -> str:
        self._wait()
        assert self.path is not None
        return self.path


class MemoryPrefetch(_BackgroundFetch):
    """``prefetch()`` of a URL without a cache directory: the whole object fetched into an
    anonymous memory mapping (concurrent ranged GETs, every checksum verified), which the next CPU
    ``restore(url)`` in this process takes as its arena instead of fetching again (once: a second
    restore fetches anew, so two restores never share tensors). For a handler that starts the
    download before ``import torch`` and has no local disk worth caching on. ``wait()`` returns
    the URL; ``cancel()`` also drops the memory."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "snapload-memory-fetch")
        self._fetched: tuple[_native.Snapshot, mmap.mmap] | None = None
        self._thread.start()

    def _run(self) -> None:
        snap = _native.Snapshot(self.url)
        # Private anonymous memory, not yet touched: the fetch's copies fault it in as they land.
        memory = mmap.mmap(-1, snap.file_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        snap.fetch_into(memory, self._cancel)
        self._fetched = (snap, memory)

    def wait(self) -> str:
        self._wait()
        return self.url

    def cancel(self) -> None:
        super().cancel()
        self._fetched = None
        with _prefetched_lock:
            if _prefetched.get(self.url) is self:
                del _prefetched[self.url]

    def take(self) -> tuple[_native.Snapshot, mmap.mmap] | None:
        """The fetched snapshot and its memory, once; None if the fetch failed or was cancelled."""
        self._finished.wait()
        fetched, self._fetched = self._fetched, None
        return fetched


# URL -> its in-memory prefetch, until a CPU restore takes it.
_prefetched: dict[str, MemoryPrefetch] = {}
_prefetched_lock = threading.Lock()


def prefetch(url: str, cache_dir: str | os.PathLike[str] | None) -> CachePrefetch | MemoryPrefetch:
    directory = cache_dir_for(cache_dir)
    if directory is not None:
        return CachePrefetch(url, directory)
    pending = MemoryPrefetch(url)
    with _prefetched_lock:
        _prefetched[url] = pending
    return pending


def _take_prefetched(url: str) -> tuple[_native.Snapshot, mmap.mmap] | None:
    with _prefetched_lock:
        pending = _prefetched.pop(url, None)
    return pending.take() if pending is not None else None


def warm_url(url: str) -> str:
    """``snapload warm URL``: fetch into ``SNAPLOAD_CACHE_DIR`` (printing what happened) and
    return the local copy, whose residency is then reported like a file's."""
    import time

    from snapload._progress import format_bytes, format_rate

    directory = cache_dir_for(None)
    if directory is None:
        raise ValueError(f"{url}: warming a URL fills the local cache: set {CACHE_ENV}")
    start = time.perf_counter()
    path, downloaded = fetch_to_cache(url, directory)
    seconds = time.perf_counter() - start
    size = os.path.getsize(path)
    what = f"downloaded {format_bytes(size)} in {seconds:.2f} s ({format_rate(size, seconds)})" if downloaded else "already cached"
    print(f"{url}: {what} -> {path}")
    return path


_BENCH_CHILD = """
import json, resource, sys, time
import snapload
t0 = time.perf_counter()
tensors = snapload.restore(sys.argv[1])
seconds = time.perf_counter() - t0
nbytes = sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors.values()}.values())
print(json.dumps({"seconds": seconds, "bytes": nbytes, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_url(url: str, trials: int, as_json: bool) -> int:
    """``snapload bench URL``: restore to the CPU in ``trials`` fresh processes (no cache), timed
    after imports; GB/s and peak RSS. Cold/warm page-cache modes do not apply to a URL."""
    import json
    import statistics
    import subprocess
    import sys

    runs = []
    for _ in range(trials):
        out = subprocess.run([sys.executable, "-c", _BENCH_CHILD, url], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"snapload: error: a benchmark trial failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
            return 1
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    seconds = statistics.median(r["seconds"] for r in runs)
    result = {
        "path": url,
        "trials": trials,
        "payload_bytes": runs[0]["bytes"],
        "median_s": seconds,
        "gb_per_s": runs[0]["bytes"] / seconds / 1e9,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "runs": runs,
    }
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"snapload bench {url}: {result['payload_bytes'] / 1e9:.2f} GB, {trials} fresh process(es), CPU restore "
            f"from the URL: {seconds:.3f} s median ({result['gb_per_s']:.2f} GB/s), peak RSS {result['peak_rss_mb']:.0f} MB"
        )
    return 0
