"""Every blocking native call releases the GIL.

Two kinds of evidence: the glue counts each release site from inside the released section
(``_native._gil_releases()``), so a call that reaches a site provably ran without the GIL, and
the set of sites is checked against the list below (a new blocking call must be listed); and,
where a call can be made slow or blocked on purpose, another Python thread is shown to run while
it is inside (a thread holding the GIL would stop it)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import snapload
from snapload import _native
from snapload._pipeline import HostCopyEngine, drive

from _helpers import write_sparse_snapshot
from _remote_servers import RangeServer

# Every call into the core that may block, by the site name the glue gives it.
BLOCKING_SITES = {
    "Snapshot()": "open and validate: reads the preamble and header",
    "Snapshot.map": "mmap of the whole file",
    "Snapshot.verify": "hashes every tensor",
    "check_destination": "stat and access(2) of the destination's folder",
    "Writer()": "creates the temporary file",
    "Writer.write": "pwrite of one piece",
    "Writer.write_many": "parallel pwrite + hashing",
    "Writer.finish": "header, fsync, rename",
    "Writer.abort": "unlinks the temporary file",
    "Ring()": "allocates the ring's buffers",
    "Pipeline()": "opens the file (O_DIRECT) and starts readers",
    "Pipeline.next_filled": "waits for a reader",
    "Pipeline.cancel": "joins the readers",
    "Pipeline.finish": "joins the readers, checks checksums",
    "residency": "mincore over the file",
    "evict": "posix_fadvise(DONTNEED)",
    "Prefetch()": "opens the file and starts readers",
    "Prefetch.of_mapping": "starts populate threads on a mapping",
    "Prefetch.wait": "joins the readers",
    "Prefetch.cancel": "stops the readers",
    "plan_simulate": "snapload plan: the event loop over every policy, on threads",
    "plan_simulate_detail": "snapload plan: one policy's event loop",
    "Snapshot(url)": "HEAD and a ranged GET of the header",
    "Snapshot.fetch_into": "ranged GETs of the whole object, hashing",
    "fetch_to_cache": "lock, download, fsync, rename",
    "CacheEntry()": "HEAD, the entry's lock (another process may hold it), the header read",
    "CacheEntry.publish": "ranged GETs of the padding, fsync, rename",
    "CacheEntry.abort": "unlinks the temporary file",
    "CacheEntry.fill": "ranged GETs of the whole object into the entry's file, hashing",
    "CacheEntry.wait_published": "joins the thread that syncs and renames the entry's file",
}


def _exercise_every_site(tmp: Path) -> None:
    path = tmp / "m.snap"
    state = {f"t{i}": torch.randn(64, 64) for i in range(4)}
    snapload.snapshot(state, path)  # check_destination, Writer(), write_many/write, finish
    w = _native.SnapshotWriter(str(tmp / "aborted.snap"), [("a", "float32", [4], None)], 4096, {})
    w.write(0, 0, torch.zeros(4).numpy().view("uint8"))
    w.abort()
    snap = _native.Snapshot(str(path))
    mapping = snap.map()
    snap.verify(mapping, 1)
    _native.Prefetch.of_mapping(mapping, 1).wait()
    snapload.residency(path)
    snapload.evict(path)
    p = _native.Prefetch(str(path), 1)
    p.cancel()
    _native.Prefetch(str(path), 1).wait()
    ring = _native.Ring(2, 4096)
    pipe = _native.Pipeline(snap, ring, 1, "buffered", False)
    arena = torch.empty(pipe.arena_size, dtype=torch.uint8)
    drive(pipe, ring, HostCopyEngine(arena.data_ptr(), arena.numel()))  # next_filled, finish
    _native.Pipeline(snap, ring, 1, "buffered", False).cancel()
    times = torch.tensor([0.0, 1.0], dtype=torch.float64).numpy()
    _native.plan_simulate(times, times, 1.0, 1, 0.0, 2.0, [(1.0, 0, None, None)])
    _native.plan_simulate_detail(times, times, 1.0, 1, 0.0, 2.0, (1.0, 0, None, None))
    with RangeServer() as server:  # the remote entry points, against a loopback HTTP server
        url = server.put("/m.snap", path.read_bytes())
        remote = _native.Snapshot(url)
        remote.fetch_into(torch.empty(remote.file_size, dtype=torch.uint8).numpy())
        _native.fetch_to_cache(url, str(tmp / "cache"))
        entry = _native.CacheEntry(url, str(tmp / "stream-cache"))
        entry.abort()
        entry = _native.CacheEntry(url, str(tmp / "stream-cache"))
        filled = entry.snapshot
        assert filled is not None
        verify_ring = _native.Ring(2, 1 << 20)
        pipe = _native.Pipeline(filled, verify_ring, 1, "auto", True)
        arena = torch.empty(pipe.arena_size, dtype=torch.uint8)
        drive(pipe, verify_ring, HostCopyEngine(arena.data_ptr(), arena.numel()))
        entry.publish()
        entry = _native.CacheEntry(url, str(tmp / "cpu-cache"))
        entry.fill()
        entry.publish_in_background()
        entry.wait_published()


def test_every_blocking_call_passes_through_the_release_helper(tmp_path: Path) -> None:
    before = _native._gil_releases()
    _exercise_every_site(tmp_path)
    after = _native._gil_releases()
    ran = {site for site, n in after.items() if n > before.get(site, 0)}
    assert set(after) <= set(BLOCKING_SITES), f"sites missing from BLOCKING_SITES: {set(after) - set(BLOCKING_SITES)}"
    assert ran == set(BLOCKING_SITES), f"not reached without the GIL: {sorted(set(BLOCKING_SITES) - ran)}"


class Counter(threading.Thread):
    """Counts loop iterations; progress while the main thread is inside a native call proves
    that call released the GIL (a thread that holds it gets at most one switch interval)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.n = 0
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            self.n += 1


def progress_during(call: Callable[[], Any]) -> tuple[float, float]:
    """(iterations per second while ``call`` runs, iterations per second while idle)."""
    counter = Counter()
    counter.start()
    time.sleep(0.05)
    n0, t0 = counter.n, time.perf_counter()
    time.sleep(0.3)
    idle_rate = (counter.n - n0) / (time.perf_counter() - t0)
    n0, t0 = counter.n, time.perf_counter()
    call()
    busy_rate = (counter.n - n0) / (time.perf_counter() - t0)
    duration = time.perf_counter() - t0
    counter.stop = True
    counter.join()
    assert duration > 0.05, f"call took {duration:.3f}s: too short to tell anything"
    return busy_rate, idle_rate


def test_gil_released_during_verify(tmp_path: Path) -> None:
    path = tmp_path / "big.snap"
    # Sparse, so verify's reads fault in fresh zero pages: slow enough to measure.
    write_sparse_snapshot(path, [("w", "uint8", (256 << 20,))], itemsize={"uint8": 1})
    busy, idle = progress_during(lambda: snapload.restore(path, verify=True, threads=1))
    assert busy > 0.1 * idle, f"other threads ran at {busy:.0f}/s during verify vs {idle:.0f}/s idle"


def test_gil_released_during_write(tmp_path: Path) -> None:
    path = tmp_path / "big.snap"
    state = {"w": torch.ones(96 << 20, dtype=torch.uint8)}
    busy, idle = progress_during(lambda: snapload.snapshot(state, path, threads=1))
    assert busy > 0.1 * idle, f"other threads ran at {busy:.0f}/s during write vs {idle:.0f}/s idle"


OPENING_CALLS: dict[str, Callable[[str], Any]] = {
    "Snapshot()": lambda p: _native.Snapshot(p),
    "residency": lambda p: snapload.residency(p),
    "evict": lambda p: snapload.evict(p),
    "Prefetch()": lambda p: _native.Prefetch(p, 1),
}


@pytest.mark.parametrize("name", sorted(OPENING_CALLS))
def test_gil_released_while_a_call_is_blocked_opening_its_file(tmp_path: Path, name: str) -> None:
    # open(2) of a FIFO blocks until a writer opens the other end. A separate process does that
    # after a second, so the call is blocked for that second whatever it does with the GIL, and
    # the test cannot hang; meanwhile a Python thread must keep running.
    fifo = str(tmp_path / "blocking.snap")
    os.mkfifo(fifo)
    opener = subprocess.Popen(["sh", "-c", f"sleep 1; exec 3>'{fifo}'; sleep 0.2"])

    def call() -> None:
        try:
            OPENING_CALLS[name](fifo)
        except (OSError, snapload.SnapshotError, ValueError):
            pass  # a FIFO is no snapshot: only the wait matters here

    try:
        busy, idle = progress_during(call)
    finally:
        opener.wait(timeout=10)
    assert busy > 0.1 * idle, f"other threads ran at {busy:.0f}/s inside {name} vs {idle:.0f}/s idle"
