"""The stream-through cache of CUDA restores: with a cache directory, the bytes fetched into the
pinned ring are also written into the entry's temporary file as they land, so the device copies
overlap the download; the file is published (in the background, after the restore returned) once
the restore verified every tensor, and never on a failure. Runs the real CUDA restore code against the fake driver (no GPU here)."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import snapload
from snapload import _native

import _fake_cuda_device
from _remote_fixtures import assert_restored, http_server, local_snapshot, remote_env  # noqa: F401 - fixtures
from _remote_servers import FaultProxy, RangeServer
from fake_cuda import FakeDriver

HEADER_READ = 256 << 10  # the first ranged GET of every open (remote::FIRST_READ)
CUDA_OPTIONS: dict[str, Any] = {"chunk_bytes": 1 << 20, "slots": 2, "threads": 2}


class TimelineDriver(FakeDriver):
    """The fake driver, also appending each copy it is asked for to a shared timeline (which
    the HTTP server appends its GETs to, in the order they arrive)."""

    def __init__(self, timeline: list[tuple[str, int]]) -> None:
        super().__init__()
        self.timeline = timeline

    def cuMemcpyHtoDAsync(self, dst: Any, src: Any, n: Any, stream: Any) -> Any:
        self.timeline.append(("copy", int(n)))
        return super().cuMemcpyHtoDAsync(dst, src, n, stream)


def cache_files(cache: Path) -> dict[str, list[str]]:
    """The cache's files once this process's background publishing is done."""
    snapload.wait_for_cache()
    names = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    return {
        "published": [n for n in names if n.endswith(".snap")],
        "temporary": [n for n in names if ".tmp." in n],
        "locks": [n for n in names if n.endswith(".lock")],
    }


def assert_locks_free(cache: Path) -> None:
    """No process (this one included: a new open file description) holds an entry's lock."""
    for lock in cache.glob("*.lock"):
        with open(lock, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if held


def test_cuda_restore_streams_through_the_cache(http_server: RangeServer, local_snapshot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path, data, state = local_snapshot
    url = http_server.put("/stream/model.snap", data)
    timeline: list[tuple[str, int]] = []
    http_server.on_get = lambda p, rng: timeline.append(("get", rng[1] if rng else len(data)))
    _fake_cuda_device.install(monkeypatch, lambda: TimelineDriver(timeline))
    cache = tmp_path / "cache"
    before = http_server.served.body_bytes
    try:
        restored = snapload.restore(url, "cuda", cache_dir=cache, **CUDA_OPTIONS)
    finally:
        http_server.on_get = None
    assert_restored(restored, state)
    local = snapload.restore(path)
    assert all(torch.equal(restored[k], local[k]) for k in state), "bit-exact against the local file"

    # Overlap: a device copy was issued before the last range was even asked for. Download, then
    # restore would have every GET before the first copy. (Not a timing: the 2-slot ring cannot
    # take the last chunk before earlier slots were copied and released.)
    copies = [i for i, (what, _) in enumerate(timeline) if what == "copy"]
    gets = [i for i, (what, _) in enumerate(timeline) if what == "get"]
    assert copies and gets and copies[0] < gets[-1], timeline
    assert sum(1 for i in gets if i > copies[0]) >= 2, "several ranges came after the first copy"

    # Published, byte-identical to the object, and fetched once (plus the header's first read).
    files = cache_files(cache)
    assert len(files["published"]) == 1 and not files["temporary"], files
    assert (cache / files["published"][0]).read_bytes() == data
    time.sleep(0.2)  # the server counts after its write returns
    served = http_server.served.body_bytes - before
    assert len(data) <= served <= len(data) + HEADER_READ, served
    assert_locks_free(cache)

    # The next CUDA restore reads the published file: a HEAD, no data.
    before = http_server.served.body_bytes
    again = snapload.restore(url, "cuda", cache_dir=cache, **CUDA_OPTIONS)
    assert_restored(again, state)
    time.sleep(0.2)
    assert http_server.served.body_bytes == before


@pytest.mark.parametrize(("fault", "expected"), [("corrupt_byte", snapload.ChecksumMismatchError), ("status_403", PermissionError), ("reset_mid_body", None)])
def test_a_fault_mid_download_publishes_nothing(fault: str, expected: type[BaseException] | None, http_server: RangeServer, local_snapshot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    http_server.put("/stream-faults/model.snap", data)
    _fake_cuda_device.install(monkeypatch)
    cache = tmp_path / "cache"
    with FaultProxy(http_server.port, stall_seconds=5) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/stream-faults/model.snap"
        proxy.min_offset = HEADER_READ  # the header read passes; a later data range fails
        proxy.plan = [None, None, fault]
        if expected is None:  # retried and resumed by object_store: the right bytes, published
            assert_restored(snapload.restore(url, "cuda", cache_dir=cache, **CUDA_OPTIONS), state)
            assert len(cache_files(cache)["published"]) == 1
        else:
            with pytest.raises(expected) as e:
                snapload.restore(url, "cuda", cache_dir=cache, **CUDA_OPTIONS)
            assert "/stream-faults/model.snap" in str(e.value)
            files = cache_files(cache)
            assert not files["published"] and not files["temporary"], files
        assert proxy.injected == [fault]
        assert_locks_free(cache)
        # The entry is free for the next restore, which fetches and publishes it.
        assert_restored(snapload.restore(url, "cuda", cache_dir=cache, **CUDA_OPTIONS), state)
        files = cache_files(cache)
        assert len(files["published"]) == 1 and not files["temporary"], files
        assert (cache / files["published"][0]).read_bytes() == data


def test_concurrent_cuda_restores_share_one_download(http_server: RangeServer, local_snapshot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Four restores at once (threads: each opens the lock file itself, so the flock excludes them
    as it does processes): one holds the entry and streams through it, the others wait for the
    lock, then read the published file."""
    _, data, state = local_snapshot
    url = http_server.put("/stream-shared/model.snap", data)
    _fake_cuda_device.install(monkeypatch)
    cache = tmp_path / "cache"
    before = http_server.served.body_bytes
    results: list[dict[str, torch.Tensor]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(snapload.restore(url, "cuda", cache_dir=cache, **CUDA_OPTIONS))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 4
    for r in results:
        assert_restored(r, state)
    time.sleep(0.2)
    served = http_server.served.body_bytes - before
    # One download, plus at most every restore's header read (the waiters read theirs from disk).
    assert len(data) <= served <= len(data) + HEADER_READ, served
    files = cache_files(cache)
    assert len(files["published"]) == 1 and not files["temporary"], files
    assert (cache / files["published"][0]).read_bytes() == data


def test_publishing_before_every_tensor_was_read_is_refused(http_server: RangeServer, local_snapshot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The entry only fills gaps that hold no tensor bytes: tensor bytes must come through a read
    that verified them, so a publish before the restore read them fails and publishes nothing."""
    _, data, _ = local_snapshot
    url = http_server.put("/stream-early/model.snap", data)
    entry = _native.CacheEntry(url, str(tmp_path))
    assert entry.snapshot is not None and entry.bytes_written >= HEADER_READ
    with pytest.raises(ValueError, match="never read through it"):
        entry.publish()
    entry.abort()
    assert cache_files(tmp_path)["published"] == [] and cache_files(tmp_path)["temporary"] == []
    assert_locks_free(tmp_path)
