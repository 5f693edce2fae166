"""Ctrl-C during a remote fetch: a process restoring from a server that stalls gets SIGINT and
must raise KeyboardInterrupt within a few seconds (the request timeout here is 60 s, so waiting
for it would take far longer), publish nothing in the cache, hold no lock, and leave no native
thread still fetching. Each case is a child process (signals go to a process's main thread)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from _remote_fixtures import http_server, local_snapshot, remote_env  # noqa: F401 - fixtures
from _remote_servers import FaultProxy, RangeServer

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
STALL_SECONDS = 60.0  # the server says nothing for this long; the client's timeout is as long
PROMPT_SECONDS = 10.0  # Ctrl-C to exit, interpreter teardown included: far below the stall

CHILD = r"""
import fcntl, glob, json, os, sys, threading
sys.path.insert(0, sys.argv[4])
mode, url, cache = sys.argv[1:4]
import snapload
if mode == "cuda_cache":
    import _fake_cuda_device
    _fake_cuda_device.install_for_good()

def run():
    if mode == "open":
        snapload.open(url)
    elif mode == "arena":
        snapload.restore(url)
    elif mode == "ring":
        from snapload._pipeline import restore_to_host
        restore_to_host(url, chunk_bytes=1 << 20, slots=2, threads=2)
    elif mode == "cpu_cache":
        snapload.restore(url, cache_dir=cache)
    elif mode == "cuda_cache":
        snapload.restore(url, "cuda", cache_dir=cache, chunk_bytes=1 << 20, slots=2, threads=2)
    elif mode == "fetch_to_cache":
        from snapload import _native
        _native.fetch_to_cache(url, cache)
    elif mode == "prefetch":
        snapload.prefetch(url, cache_dir=cache).wait()
    elif mode == "memory_prefetch":
        snapload.prefetch(url).wait()

def native_threads():
    names = []
    for comm in glob.glob("/proc/self/task/*/comm"):
        with open(comm) as f:
            names.append(f.read().strip())
    return sorted(n for n in names if n.startswith(("snapload-reader", "snapload-call")))

def lock_free(path):
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

try:
    run()
    print(json.dumps({"outcome": "finished"}))
except KeyboardInterrupt:
    print(json.dumps({
        "outcome": "KeyboardInterrupt",
        "native_threads": native_threads(),
        "python_threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("snapload")),
        "locks_held": [p for p in glob.glob(os.path.join(cache, "*.lock")) if not lock_free(p)],
    }))
"""


def interrupt_when(child: subprocess.Popen[str], reached: Callable[[], bool], what: str, settle_s: float) -> tuple[str, str, float]:
    """Wait (bounded) until `reached()`, let the child settle into its wait, send SIGINT, and return
    its stdout, stderr and how long it took to exit after the signal. The child never outlives this."""
    try:
        deadline = time.monotonic() + 120  # importing torch on a busy 2-core machine
        while not reached():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, f"the child never {what}"
            time.sleep(0.05)
        time.sleep(settle_s)
        child.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        out, err = child.communicate(timeout=60)
        return out, err, time.monotonic() - interrupted
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)


@pytest.mark.parametrize("mode", ["open", "arena", "ring", "cpu_cache", "cuda_cache", "fetch_to_cache", "prefetch", "memory_prefetch"])
def test_ctrl_c_during_a_stalled_fetch_ends_promptly_and_publishes_nothing(mode: str, http_server: RangeServer, local_snapshot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = local_snapshot
    http_server.put("/stalls/model.snap", data)
    cache = tmp_path / "cache"
    cache.mkdir()
    with FaultProxy(http_server.port, stall_seconds=STALL_SECONDS) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/stalls/model.snap"
        # The header read passes and data ranges stall; for `open`, the header read itself.
        proxy.min_offset = 0 if mode == "open" else 256 << 10
        proxy.always = "stall"
        env = dict(os.environ, SNAPLOAD_REMOTE_TIMEOUT=str(STALL_SECONDS), SNAPLOAD_REMOTE_RETRIES="0")
        child = subprocess.Popen([sys.executable, "-c", CHILD, mode, url, str(cache), TESTS_DIR], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        # Well inside the wait 0.3 s after the first stalled range.
        out, err, took = interrupt_when(child, lambda: proxy.data_gets > 0, "reached the stalled ranges", 0.3)
        gets_at_exit = proxy.data_gets
        time.sleep(0.5)
        assert proxy.data_gets == gets_at_exit, "requests went on after the process ended"
    assert out.strip(), err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["outcome"] == "KeyboardInterrupt", (report, err)
    assert took < PROMPT_SECONDS, f"Ctrl-C took {took:.1f} s to end a stalled {mode} fetch"
    assert report["native_threads"] == [], ("reader or helper threads outlived the interrupt", report)
    assert report["python_threads"] == [], "the prefetch thread outlived the interrupt"
    assert report["locks_held"] == []
    names = [p.name for p in cache.iterdir()]
    assert not [n for n in names if n.endswith(".snap") or ".tmp." in n], names


def test_ctrl_c_while_waiting_for_another_download_ends_promptly(http_server: RangeServer, local_snapshot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A restore waiting on the entry's lock (another process downloading it; here, this test
    holding the entry) is interrupted by Ctrl-C too, and leaves the holder's download alone."""
    from snapload import _native

    _, data, _ = local_snapshot
    url = http_server.put("/lock-wait/model.snap", data)
    cache = tmp_path / "cache"
    holder = _native.CacheEntry(url, str(cache))  # holds the lock, its temporary file in place
    try:
        assert holder.snapshot is not None
        heads = http_server.served.heads
        child = subprocess.Popen([sys.executable, "-c", CHILD, "cpu_cache", url, str(cache), TESTS_DIR], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # After the child's HEAD, next comes the lock.
        out, err, took = interrupt_when(child, lambda: http_server.served.heads != heads, "asked for the object", 0.5)
        report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"stderr": err}
        assert report.get("outcome") == "KeyboardInterrupt", report
        assert took < PROMPT_SECONDS, f"Ctrl-C took {took:.1f} s to end a wait on the cache lock"
        assert report["native_threads"] == [], report
        assert [n for n in os.listdir(cache) if ".tmp." in n], "the holder's download was left alone"
    finally:
        holder.abort()
    assert not [n for n in os.listdir(cache) if n.endswith(".snap") or ".tmp." in n]
