"""What the hardware allows, measured in the same run as the loaders, on the same files.

- buffered: one thread reading the file front to back with 16 MiB ``pread`` calls through the
  page cache (what any loader that reads the file pays; cold or warm like the loader's trial).
- direct: O_DIRECT reads (bypassing the page cache) into page-aligned buffers, ``threads``
  stripes in parallel so the device sees a queue of requests, as a tuned loader would.
- memcpy: one large numpy copy between two pre-faulted 1 GiB buffers: the bandwidth a warm
  eager load (page cache -> private memory) cannot beat.
- memcpy_fresh: the same copy into freshly allocated memory, so every destination page faults
  on first write: what an eager loader that allocates its tensors really pays.

No torch here: the orchestrator calls these in its own process.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))  # a checkout without install

from snapload.bench import READ_CHUNK, sequential_read  # noqa: E402


def buffered_read_gbps(path: str) -> float:
    seconds, nbytes = sequential_read(path)
    return nbytes / seconds / 1e9


def direct_read_gbps(path: str, threads: int = 4, chunk: int = READ_CHUNK) -> float:
    """O_DIRECT, ``threads`` readers taking chunks round-robin; each has its own aligned buffer."""
    size = os.path.getsize(path)
    chunks = range(0, size, chunk)
    done = [0] * threads
    errors: list[BaseException] = []

    def reader(k: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, chunk)
        view = memoryview(buf)
        try:
            for off in chunks[k::threads]:
                done[k] += os.preadv(fd, [view], off)
        except BaseException as e:  # reported below, after every thread ended
            errors.append(e)
        finally:
            view.release()
            buf.close()
            os.close(fd)

    workers = [threading.Thread(target=reader, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    if sum(done) != size:
        raise OSError(f"{path}: O_DIRECT read {sum(done)} of {size} bytes")
    return size / seconds / 1e9


def memcpy_gbps(nbytes: int = 1 << 30, repeats: int = 3, *, fresh: bool = False) -> float:
    """Best of ``repeats`` copies of ``nbytes``: into one pre-faulted buffer, or (``fresh``) into
    a new allocation each time, whose pages fault in as the copy writes them."""
    import numpy as np

    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)  # zeros() may be lazily mapped: fault it in first
    dst[::4096] = 1
    best = 0.0
    for _ in range(repeats):
        if fresh:
            del dst
            dst = np.empty(nbytes, dtype=np.uint8)  # a fresh mmap from malloc: untouched pages
        start = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, nbytes / (time.perf_counter() - start) / 1e9)
    return best
