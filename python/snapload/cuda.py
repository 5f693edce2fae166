"""GPU restore: the Rust read pipeline into one device allocation, copied with cuda-python.

Reader threads (Rust, GIL released) fill a bounded ring of page-locked host buffers; each filled
buffer is copied with ``cuMemcpyHtoDAsync`` on one of a few streams, an event is recorded after
it, and the buffer goes back to the readers only once that event has completed. All tensors are
views of one ``torch.empty`` device allocation (the arena), so no device-to-device copy follows
the DMA, and torch's allocator frees the arena when the last tensor using it is gone.

The reader threads start before CUDA is initialised, so context creation (hundreds of ms) and
the first reads overlap.

Ordering: the arena comes from torch's allocator on the current stream, and the copy streams are
non-blocking, so each copy stream first waits on an event recorded on the allocating stream (the
memory may still be in use by work queued there before it was freed and handed to us). The
tensors are handed out only after every copy's event has completed on the host, so any stream
may use them at once.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any

import torch

from snapload import _native
from snapload._info import tensor_table
from snapload._pipeline import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_SLOTS,
    PipelineStats,
    PooledRing,
    check_options,
    default_threads,
    drive,
    ring_pool,
)
from snapload._views import views_of
from snapload.errors import CudaUnavailableError, SnapshotError

DEFAULT_STREAMS = 2


class CudaError(SnapshotError):
    """A CUDA driver call failed during a restore."""


def load_driver() -> Any:
    """cuda-python's driver bindings (``cuda.bindings.driver``; ``cuda.cuda`` before 12.6)."""
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver
        except ImportError:
            raise CudaUnavailableError(
                "GPU restore needs cuda-python: pip install 'snapload[cuda]' (or cuda-python)"
            ) from None
    return driver


def check(cu: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(CUresult, *values)`` tuple, raising on failure."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cu.CUresult.CUDA_SUCCESS:
        _, name = cu.cuGetErrorName(err)
        raise CudaError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


class CudaCopyEngine:
    """Async host-to-device copies from ring slots into ``arena_address``, round-robin over a
    few streams, one event per slot. ``after_stream`` (a raw ``CUstream`` handle, such as torch's
    current stream that allocated the arena) must reach this point before any copy starts."""

    def __init__(
        self,
        cu: Any,
        arena_address: int,
        arena_size: int,
        slots: int,
        streams: int = DEFAULT_STREAMS,
        *,
        after_stream: int | None = None,
    ):
        self.cu = cu
        self.arena_address = arena_address
        self.arena_size = arena_size
        self.streams: list[Any] = []
        self.events: list[Any] = []
        self._in_flight: collections.deque[int] = collections.deque()
        self._next_stream = 0
        try:
            for _ in range(max(1, streams)):
                flags = cu.CUstream_flags.CU_STREAM_NON_BLOCKING
                self.streams.append(check(cu, cu.cuStreamCreate(flags), "cuStreamCreate"))
            for _ in range(slots + (after_stream is not None)):
                flags = cu.CUevent_flags.CU_EVENT_DISABLE_TIMING
                self.events.append(check(cu, cu.cuEventCreate(flags), "cuEventCreate"))
            if after_stream is not None:
                ready = self.events[slots]
                check(cu, cu.cuEventRecord(ready, cu.CUstream(after_stream)), "cuEventRecord")
                for stream in self.streams:
                    check(cu, cu.cuStreamWaitEvent(stream, ready, 0), "cuStreamWaitEvent")
        except BaseException:
            self.close()  # no stream or event outlives a failed setup
            raise

    def copy(self, slot: int, host_address: int, dst_offset: int, length: int) -> None:
        if dst_offset + length > self.arena_size:
            raise ValueError(f"copy of {length} bytes at {dst_offset} overruns the {self.arena_size}-byte arena")
        cu = self.cu
        stream = self.streams[self._next_stream]
        self._next_stream = (self._next_stream + 1) % len(self.streams)
        dst = cu.CUdeviceptr(self.arena_address + dst_offset)
        check(cu, cu.cuMemcpyHtoDAsync(dst, host_address, length, stream), "cuMemcpyHtoDAsync")
        check(cu, cu.cuEventRecord(self.events[slot], stream), "cuEventRecord")
        self._in_flight.append(slot)

    def completed(self) -> list[int]:
        cu = self.cu
        done = []
        while self._in_flight:
            (err,) = cu.cuEventQuery(self.events[self._in_flight[0]])
            if err == cu.CUresult.CUDA_ERROR_NOT_READY:
                break
            check(cu, (err,), "cuEventQuery")
            done.append(self._in_flight.popleft())
        return done

    def wait_oldest(self) -> int:
        slot = self._in_flight.popleft()
        check(self.cu, self.cu.cuEventSynchronize(self.events[slot]), "cuEventSynchronize")
        return slot

    def drain(self) -> list[int]:
        done = []
        while self._in_flight:
            done.append(self.wait_oldest())
        return done

    def close(self) -> None:
        cu = self.cu
        for e in self.events:
            cu.cuEventDestroy(e)
        for s in self.streams:
            cu.cuStreamDestroy(s)
        self.events, self.streams = [], []


def pin_ring(cu: Any, pooled: PooledRing) -> bool:
    """Page-lock a pooled ring's buffers once for its life (pinning is slow, so it is never
    redone per restore); the pool unpins them if it ever frees the ring. Returns False, copies
    then being pageable, if the driver refuses (what was registered is undone)."""
    if pooled.pinned:
        return True
    ring = pooled.ring
    flags = cu.CU_MEMHOSTREGISTER_PORTABLE if hasattr(cu, "CU_MEMHOSTREGISTER_PORTABLE") else 1
    registered: list[int] = []

    def unpin() -> None:
        for address in registered:
            cu.cuMemHostUnregister(address)
        registered.clear()

    for address in ring.addresses:
        (err,) = cu.cuMemHostRegister(address, ring.slot_size, flags)
        if err != cu.CUresult.CUDA_SUCCESS:
            unpin()
            return False
        registered.append(address)
    pooled.pinned, pooled.unpin = True, unpin
    return True


def _allocate_arena(nbytes: int, device: torch.device, path: object) -> torch.Tensor:
    try:
        return torch.empty(nbytes, dtype=torch.uint8, device=device)
    except torch.OutOfMemoryError:
        free, total = torch.cuda.mem_get_info(device)
        raise CudaUnavailableError(
            f"{path}: out of device memory on {device}: the snapshot needs {nbytes / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB of {total / 2**30:.2f} GiB are free"
        ) from None


def _resolve(device: torch.device) -> torch.device:
    if not torch.cuda.is_available():
        raise CudaUnavailableError(
            f"CUDA restore to {device} asked for, but torch sees no CUDA device "
            "(no NVIDIA driver, no GPU, or a CPU-only torch build)"
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise CudaUnavailableError(f"no CUDA device {index}: only {torch.cuda.device_count()} present")
    return torch.device("cuda", index)


def restore_with_stats(
    path: str | os.PathLike[str] | _native.Snapshot,
    device: str | torch.device = "cuda",
    *,
    verify: bool = False,
    threads: int = 0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    slots: int = DEFAULT_SLOTS,
    streams: int = DEFAULT_STREAMS,
    read_mode: str = "auto",
) -> tuple[dict[str, torch.Tensor], PipelineStats]:
    """``restore`` to a CUDA device, also returning what ran: bytes per read path, seconds, GB/s.
    ``path`` may also be a snapshot opened already (a URL read through its cache entry)."""
    check_options(chunk_bytes, slots, read_mode)
    start = time.perf_counter()
    cu = load_driver()
    dev = _resolve(torch.device(device))
    if isinstance(path, _native.Snapshot):
        snap, path = path, path.path
    else:
        snap = _native.Snapshot(os.fspath(path))
    with ring_pool().lease(slots, chunk_bytes) as lease:
        # Readers start now, while the CUDA context and the arena are being set up below.
        pipeline = _native.Pipeline(snap, lease.ring, threads or default_threads(), read_mode, verify)
        arena, stats, pinned = _stream_into_arena(cu, pipeline, lease, dev, streams, path)
    stats.extra.update(pinned=pinned, seconds=time.perf_counter() - start, device=str(dev))
    return views_of(arena, tensor_table(snap), pipeline.dst_offsets, path=path), stats


def _stream_into_arena(
    cu: Any, pipeline: _native.Pipeline, lease: PooledRing, dev: torch.device, streams: int, path: object
) -> tuple[torch.Tensor, PipelineStats, bool]:
    engine = None
    clock = time.perf_counter
    try:
        t0 = clock()
        arena = _allocate_arena(pipeline.arena_size, dev, path)
        with torch.cuda.device(dev):
            t1 = clock()
            pinned = pin_ring(cu, lease)
            t2 = clock()
            allocating_stream = torch.cuda.current_stream(dev).cuda_stream
            engine = CudaCopyEngine(
                cu, arena.data_ptr(), arena.numel(), lease.ring.slots, streams, after_stream=allocating_stream
            )
            t3 = clock()
            stats = drive(pipeline, lease.ring, engine, lease=lease)
            # Context creation is in the arena's first allocation; pinning only on a new ring.
            stats.phases.update(arena_alloc=t1 - t0, pin_ring=t2 - t1, engine_setup=t3 - t2)
    except BaseException:
        pipeline.cancel()  # joins the readers before the ring goes back to the pool
        raise
    finally:
        if engine is not None:
            engine.close()
    return arena, stats, pinned


def restore(
    path: str | os.PathLike[str] | _native.Snapshot, device: str | torch.device = "cuda", **options: Any
) -> dict[str, torch.Tensor]:
    """``restore_with_stats`` without the stats; the options are the same."""
    return restore_with_stats(path, device, **options)[0]
